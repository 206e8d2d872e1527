//! Proves the end-to-end harness against the real services: a Kafka round trip through tansu,
//! the sql/ migrations and reports on TimescaleDB, and Prometheus and Alertmanager answering.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use e2e::ledger_check::refresh_rollups;
use e2e::{repo_root, wait_until, Alertmanager, Broker, Database, Prometheus};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use tokio_postgres::Client;

#[tokio::test]
async fn broker_round_trip() {
    let broker = Broker::start().await;
    broker.create_topic("harness-roundtrip", 3).await;

    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..10 {
        let key = format!("tenant-{}", i % 3);
        let payload = format!("message {i}");
        producer
            .send(
                FutureRecord::to("harness-roundtrip")
                    .key(&key)
                    .payload(&payload),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {i}: {e}"));
    }

    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", "harness-roundtrip")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&["harness-roundtrip"])
        .expect("subscribe");
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 10 {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("consumed only {got:?} within 30 s"))
            .expect("consume");
        let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        got.insert(payload);
    }
    let want: BTreeSet<String> = (0..10).map(|i| format!("message {i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn broker_restarts_on_the_same_port() {
    let mut broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    broker.stop();
    assert!(!broker.is_running());
    broker.start_again().await;
    assert_eq!(broker.bootstrap(), bootstrap);
    // Memory storage: the topic must be created again after a restart.
    broker.create_topic("after-restart", 1).await;
}

/// Rows spread over the last 40 days (every 7 minutes, three tenants, four models), including
/// rows around the 7- and 30-day window edges and two minutes into the future.
const INSERT_ROWS: &str = "
INSERT INTO gateway_mode_audit (id, tenant_id, user_id, provider, model, prompt_tokens,
    completion_tokens, total_tokens, estimated_cost, created_at, pricing_status, received_at,
    payload_sha256, source_partition, source_offset)
SELECT gen_random_uuid(), 'tenant-' || (i % 3), NULL,
    (ARRAY['openai','anthropic','openai','bedrock'])[1 + i % 4],
    (ARRAY['gpt-4','claude-3-sonnet','gpt-3.5-turbo','titan'])[1 + i % 4],
    100 + i % 50, 20 + i % 17, 120 + i % 50 + i % 17,
    ((i % 1000) * 0.0000001234)::numeric(20,10),
    now() - i * INTERVAL '7 minutes' + INTERVAL '2 minutes',
    CASE WHEN i % 11 = 0 THEN 'unpriced' ELSE 'priced' END, now(), '\\x00'::bytea, i % 3, i
FROM generate_series(0, 40 * 24 * 60 / 7) AS i";

/// A report's rows as text, sorted (ties in cost may come in any order in the guide queries).
async fn report_rows(client: &Client, path: &Path) -> Vec<Vec<String>> {
    let sql = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let messages = client
        .simple_query(&sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows: Vec<Vec<String>> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

async fn assert_reports_agree(client: &Client, when: &str) {
    let reports = repo_root().join("sql/reports");
    for name in [
        "daily_token_usage",
        "usage_by_tenant",
        "most_expensive_models",
    ] {
        let guide = report_rows(client, &reports.join(format!("guide/{name}.sql"))).await;
        let rollup = report_rows(client, &reports.join(format!("{name}.sql"))).await;
        assert!(
            !guide.is_empty(),
            "{name}: the guide query returned no rows"
        );
        assert_eq!(
            guide, rollup,
            "{name}: guide query and rollup report differ {when}"
        );
    }
}

/// The tests' database is TimescaleDB Community (the TSL part: continuous aggregates,
/// compression, policies), its job scheduler runs in the background, and it serves concurrent
/// transactions: a lock one connection holds is seen by another.
#[tokio::test]
async fn database_is_timescaledb_community_with_workers_and_real_locks() {
    let db = Database::start().await;
    let client = db.client().await;
    // The setting exists once the extension's versioned library is loaded in the session.
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
        .expect("extension");
    let license: String = client
        .query_one("SHOW timescaledb.license", &[])
        .await
        .expect("license")
        .get(0);
    assert_eq!(license, "timescale");
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, "2.28.3");
    wait_until(
        "TimescaleDB's background job scheduler",
        Duration::from_secs(30),
        || async {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type LIKE 'TimescaleDB Background Worker%'",
                    &[],
                )
                .await
                .map(|row| row.get::<_, i64>(0) > 0)
                .unwrap_or(false)
        },
    )
    .await;

    let other = db.client().await;
    client
        .batch_execute("SELECT pg_advisory_lock(20)")
        .await
        .expect("lock");
    let taken: bool = other
        .query_one("SELECT pg_try_advisory_lock(20)", &[])
        .await
        .expect("try lock")
        .get(0);
    assert!(!taken, "a second connection took a lock the first holds");
}

#[tokio::test]
async fn database_migrations_rollups_and_reports() {
    let mut db = Database::start().await;
    // Twice: migrations are idempotent.
    db.migrate().await;
    db.migrate().await;

    let client = db.client().await;
    let inserted = client.execute(INSERT_ROWS, &[]).await.expect("insert");
    assert!(inserted > 8000);

    // Real-time aggregation: correct before any refresh.
    assert_reports_agree(&client, "before a refresh").await;
    refresh_rollups(&client).await;
    assert_reports_agree(&client, "after a refresh").await;

    // Compress the chunks older than 7 days with the policy's own job, then insert a duplicate
    // (skipped) and a late event (kept) into a compressed chunk.
    let job: i32 = client
        .query_one(
            "SELECT job_id FROM timescaledb_information.jobs
             WHERE hypertable_name = 'gateway_mode_audit' AND proc_name = 'policy_compression'",
            &[],
        )
        .await
        .expect("compression job")
        .get(0);
    client
        .batch_execute(&format!("CALL run_job({job})"))
        .await
        .expect("run compression job");
    let compressed: i64 = client
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks
             WHERE hypertable_name = 'gateway_mode_audit' AND is_compressed",
            &[],
        )
        .await
        .expect("chunks")
        .get(0);
    assert!(compressed > 20, "only {compressed} chunks compressed");
    let late = "
        INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
            completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
            received_at, payload_sha256, source_partition, source_offset)
        SELECT id, tenant_id, 'openai', 'gpt-4', 10, 5, 15, 0.5, created_at, 'provided',
            now(), '\\x01'::bytea, 0, 0
        FROM (SELECT id, tenant_id, created_at FROM gateway_mode_audit
              WHERE created_at < now() - INTERVAL '20 days' ORDER BY created_at LIMIT 1) dup
        UNION ALL
        SELECT gen_random_uuid(), 'tenant-late', 'openai', 'gpt-4', 10, 5, 15, 0.5,
            now() - INTERVAL '20 days', 'provided', now(), '\\x01'::bytea, 0, 1
        ON CONFLICT DO NOTHING";
    let new_rows = client.execute(late, &[]).await.expect("late insert");
    assert_eq!(
        new_rows, 1,
        "the duplicate must be skipped, the late event kept"
    );
    refresh_rollups(&client).await;
    assert_reports_agree(&client, "after a late event into a compressed chunk").await;

    // The data survives a stop and start on the same port.
    drop(client);
    let port = db.port();
    db.stop().await;
    db.start_again().await;
    assert_eq!(db.port(), port);
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM gateway_mode_audit", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(u64::try_from(n).ok(), Some(inserted + 1));
}

#[tokio::test]
async fn prometheus_and_alertmanager_answer() {
    let alertmanager = Alertmanager::start().await;
    let prometheus =
        Prometheus::start_with_alertmanager(&[], &[], Some(&alertmanager.address())).await;
    // Prometheus scrapes itself as a target here, to prove scraping works end to end.
    let own = format!("127.0.0.1:{}", prometheus.port());
    let scraper = Prometheus::start(&[&own], &[]).await;
    scraper.wait_target_up(&own, Duration::from_secs(20)).await;
    let up = scraper.query_f64("up{job=\"tokenledger\"}").await;
    assert_eq!(up, Some(1.0));
    assert_eq!(scraper.query("vector(42)").await[0]["value"][1], "42");

    assert!(alertmanager.alerts().await.is_empty());
    alertmanager
        .post_alerts(&json!([{
            "labels": {"alertname": "HarnessCheck", "tenant_id": "tenant-0"},
            "annotations": {"summary": "harness"}
        }]))
        .await;
    wait_until(
        "the posted alert in Alertmanager",
        Duration::from_secs(10),
        || async {
            alertmanager
                .alerts()
                .await
                .iter()
                .any(|a| a["labels"]["alertname"] == "HarnessCheck")
        },
    )
    .await;
}
