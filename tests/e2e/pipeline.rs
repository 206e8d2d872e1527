//! The pipeline end to end: the real `gateway` and `processor` binaries against a real broker
//! (tansu) and a real TimescaleDB (PostgreSQL + TimescaleDB), proven by querying the database.
//!
//! - `every_accepted_event_lands_exactly_once`: client retries of the same `(id, created_at)`,
//!   an event twice in one request, a processor SIGKILLed mid-stream and restarted, and poison
//!   produced straight onto the topic: every accepted event is stored exactly once, rejected
//!   requests leave nothing behind, and the poison goes to the dead-letter topic without
//!   blocking the events behind it.
//! - `rollups_and_guide_reports_match_the_raw_table`: the four continuous aggregates agree exactly
//!   with sums over the raw table before a refresh (real-time aggregation), after `processor
//!   report --refresh`, and for rows that arrive after the refresh; the guide's three
//!   queries, run verbatim from sql/reports/guide/, return the numbers the events imply.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::ledger_check::{self, int, rfc3339, row_count, text_rows, unix_now, utc_date, uuid_v4};
use e2e::{free_port, repo_root, wait_for, Binary, Broker, ChildProcess, Database};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio_postgres::Client;

const TOPIC: &str = "usage-events";
const DLQ_TOPIC: &str = "usage-events.dlq";
const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(90);

/// Broker, database, gateway and processor, wired together.
struct Stack {
    broker: Broker,
    database: Database,
    gateway: ChildProcess,
    processor: ChildProcess,
    processor_metrics: String,
    gateway_url: String,
    http: reqwest::Client,
}

impl Stack {
    async fn start() -> Stack {
        let (broker, database) = tokio::join!(Broker::start(), Database::start());
        broker.create_topic(TOPIC, PARTITIONS).await;
        run_processor_command(&database, &["migrate"]).await;

        let api = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let brokers = broker.bootstrap();
        let gateway = ChildProcess::spawn(
            "gateway",
            Binary::path("gateway"),
            &[] as &[&str],
            &[
                ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
                ("TOKENLEDGER_HTTP__LISTEN", api.as_str()),
                ("TOKENLEDGER_HTTP__ADMIN_LISTEN", admin.as_str()),
                ("TOKENLEDGER_AUTH__ENABLED", "false"),
            ],
        );
        let (processor, processor_metrics) = spawn_processor(&broker, &database);
        let mut stack = Stack {
            broker,
            database,
            gateway,
            processor,
            processor_metrics,
            gateway_url: format!("http://{api}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        let ready_url = format!("{}/readyz", stack.gateway_url);
        let http = stack.http.clone();
        let ready = wait_for(WAIT, || {
            let http = http.clone();
            let url = ready_url.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        if !ready {
            stack.gateway.assert_running();
            panic!("the gateway was not ready within {WAIT:?}");
        }
        stack.wait_for_assignment().await;
        stack
    }

    /// Waits until the processor has joined the group and holds partitions.
    async fn wait_for_assignment(&mut self) {
        self.processor
            .wait_for_log("partitions assigned at stored offsets", WAIT)
            .await;
    }

    async fn post(&self, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/usage", self.gateway_url))
            .json(body)
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Posts `events` and asserts 202 with every id accepted.
    async fn post_accepted(&self, events: &[Value]) {
        let (status, body) = self.post(&Value::Array(events.to_vec())).await;
        assert_eq!(status, 202, "POST /v1/usage answered {status}: {body}");
        assert_eq!(body["accepted"], json!(events.len()), "{body}");
        let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
        let returned: Vec<&str> = body["ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(returned, ids, "the gateway returns the ids it was given");
    }

    async fn client(&self) -> Client {
        self.database.client().await
    }

    async fn wait_for_rows(&mut self, expected: i64) {
        let client = self.client().await;
        let reached = wait_for(WAIT, || {
            let client = &client;
            async move { row_count(client).await >= expected }
        })
        .await;
        if !reached {
            self.processor.assert_running();
            panic!(
                "expected {expected} rows within {WAIT:?}, have {}; processor log:\n{}",
                row_count(&client).await,
                self.processor.log_tail()
            );
        }
    }
}

/// The processor and the address of its metrics listener.
fn spawn_processor(broker: &Broker, database: &Database) -> (ChildProcess, String) {
    let brokers = broker.bootstrap();
    let url = database.url();
    let metrics = format!("127.0.0.1:{}", free_port());
    let process = ChildProcess::spawn(
        "processor",
        Binary::path("processor"),
        &["run"],
        &[
            ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
            // tansu completes a group join in about half the session timeout
            ("TOKENLEDGER_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TOKENLEDGER_KAFKA__TOPIC_PARTITIONS", "2"),
            ("TOKENLEDGER_DATABASE__URL", url.as_str()),
            ("TOKENLEDGER_METRICS__LISTEN", metrics.as_str()),
            ("TOKENLEDGER_BATCH__MAX_LATENCY_MS", "100"),
            // the optimization deltas are applied only when the processor stops
            ("TOKENLEDGER_OPTIMIZE__APPLY_INTERVAL_MS", "3600000"),
            ("TOKENLEDGER_LOG", "info"),
        ],
    );
    (process, metrics)
}

/// Runs `processor <args>` to completion and returns its output; panics unless it succeeds.
async fn run_processor_command(database: &Database, args: &[&str]) -> String {
    let url = database.url();
    let mut command = ChildProcess::spawn(
        "processor-command",
        Binary::path("processor"),
        args,
        &[("TOKENLEDGER_DATABASE__URL", url.as_str())],
    );
    let status = command.wait_exit(WAIT).await;
    let output = command.log_contents();
    assert!(
        status.is_some_and(|s| s.success()),
        "processor {args:?}: {status:?}; output:\n{output}"
    );
    output
}

/// A random version-4 UUID in its text form (the e2e crate has no uuid dependency).
fn new_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    };
    uuid_v4(random(1), random(2))
}

/// A decimal string as an integer count of 1e-10 (the audit table's cost scale).
/// Panics on a value with more than 10 significant decimal places rather than cutting it.
fn tenth_nanos(text: &str) -> i128 {
    let fraction = text.split_once('.').map_or("", |(_, fraction)| fraction);
    assert!(
        fraction.len() <= 10 || fraction[10..].bytes().all(|b| b == b'0'),
        "{text:?} has more than 10 decimal places"
    );
    ledger_check::tenth_nanos(text)
}

/// One event as the test sends it, with what the database must then hold.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    created_at: i64,
    tenant: String,
    provider: String,
    model: String,
    prompt: i64,
    completion: i64,
    /// estimated_cost in micro-dollars; 0 = unpriced (no estimated_cost sent)
    cost_micros: i64,
}

impl Sent {
    fn new(n: u32, tenant: &str, provider: &str, model: &str, age_seconds: i64) -> Sent {
        Sent {
            id: new_uuid(),
            created_at: unix_now() - age_seconds,
            tenant: tenant.into(),
            provider: provider.into(),
            model: model.into(),
            prompt: 100 + i64::from(n),
            completion: 20 + i64::from(n % 13),
            // distinct per event so that sums, and the guide's ORDER BY cost, are unambiguous
            cost_micros: 1_000 + i64::from(n) * 7,
        }
    }

    /// Unpriced: no estimated_cost and a model no price book lists.
    fn unpriced(n: u32, tenant: &str, age_seconds: i64) -> Sent {
        Sent {
            cost_micros: 0,
            ..Sent::new(n, tenant, "inhouse", "private-model-x", age_seconds)
        }
    }

    fn json(&self) -> Value {
        let mut event = json!({
            "id": self.id,
            "created_at": rfc3339(self.created_at),
            "tenant_id": self.tenant,
            "provider": self.provider,
            "model": self.model,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
        });
        if self.cost_micros != 0 {
            event["estimated_cost"] = json!(format!(
                "{}.{:06}",
                self.cost_micros / 1_000_000,
                self.cost_micros % 1_000_000
            ));
        }
        event
    }

    fn total(&self) -> i64 {
        self.prompt + self.completion
    }

    fn cost(&self) -> i128 {
        i128::from(self.cost_micros) * 10_000
    }
}

async fn stored_ids(client: &Client) -> BTreeSet<String> {
    client
        .query("SELECT id::text FROM gateway_mode_audit", &[])
        .await
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Waits until the stored offsets of every partition of the usage topic reach the log's end:
/// the processor has committed every record there is, so anything it would count twice has
/// been counted by now.
async fn wait_for_offsets_at_log_end(stack: &Stack) {
    let mut ends = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let (_, high) = stack
            .broker
            .watermarks(TOPIC, partition)
            .await
            .expect("watermarks");
        ends.insert(partition, high);
    }
    let client = stack.client().await;
    let stored = || async {
        client
            .query(
                "SELECT partition, next_offset FROM ingest_offsets WHERE topic = $1",
                &[&TOPIC],
            )
            .await
            .expect("ingest_offsets")
            .iter()
            .map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1)))
            .collect::<BTreeMap<i32, i64>>()
    };
    let reached = wait_for(WAIT, || async {
        let stored = stored().await;
        ends.iter()
            .all(|(partition, end)| stored.get(partition).is_some_and(|s| s >= end))
    })
    .await;
    assert!(
        reached,
        "stored offsets {:?}, log ends {ends:?}",
        stored().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_lands_exactly_once() {
    let mut stack = Stack::start().await;
    let mut accepted: Vec<Sent> = Vec::new();

    // A batch, then the client's retry of the same batch.
    let batch: Vec<Sent> = (0..40)
        .map(|n| Sent::new(n, &format!("tenant-{}", n % 4), "openai", "gpt-4o", 600))
        .collect();
    let body: Vec<Value> = batch.iter().map(Sent::json).collect();
    stack.post_accepted(&body).await;
    stack.post_accepted(&body).await;
    accepted.extend(batch);

    // The same event twice in one request.
    let twice = Sent::new(100, "tenant-0", "anthropic", "claude-3-5-haiku", 300);
    stack.post_accepted(&[twice.json(), twice.json()]).await;
    accepted.push(twice);

    // Rejected requests: all-or-nothing, so their valid events must not land either.
    let valid_in_rejected = Sent::new(200, "tenant-1", "openai", "gpt-4o", 60);
    let mut wrong_total = Sent::new(201, "tenant-1", "openai", "gpt-4o", 60).json();
    wrong_total["total_tokens"] = json!(1);
    let (status, body) = stack
        .post(&json!([valid_in_rejected.json(), wrong_total]))
        .await;
    assert_eq!(status, 400, "{body}");
    let mut unknown_field = Sent::new(202, "tenant-1", "openai", "gpt-4o", 60).json();
    unknown_field["colour"] = json!("blue");
    let (status, body) = stack.post(&unknown_field).await;
    assert_eq!(status, 400, "{body}");
    let rejected_ids = [
        valid_in_rejected.id.clone(),
        wrong_total["id"].as_str().unwrap_or_default().to_owned(),
        unknown_field["id"].as_str().unwrap_or_default().to_owned(),
    ];

    stack.wait_for_rows(accepted.len() as i64).await;

    // A processor crash mid-stream: batches keep arriving (some retried by the client) while
    // the processor is SIGKILLed and started again.
    let streamed: Vec<Vec<Sent>> = (0..24)
        .map(|b| {
            (0..20)
                .map(|n| {
                    Sent::new(
                        1000 + b * 20 + n,
                        &format!("tenant-{}", n % 5),
                        "openai",
                        "gpt-4o-mini",
                        120,
                    )
                })
                .collect()
        })
        .collect();
    for (index, batch) in streamed.iter().enumerate() {
        let body: Vec<Value> = batch.iter().map(Sent::json).collect();
        stack.post_accepted(&body).await;
        if index % 5 == 0 {
            stack.post_accepted(&body).await; // a client retry
        }
        if index == 8 {
            stack.processor.kill9();
            (stack.processor, stack.processor_metrics) =
                spawn_processor(&stack.broker, &stack.database);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    accepted.extend(streamed.into_iter().flatten());
    stack.wait_for_assignment().await;

    // Poison straight onto both partitions, then events behind it.
    let producer: FutureProducer = stack.broker.client_config().create().expect("producer");
    for partition in 0..PARTITIONS {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(TOPIC)
                    .partition(partition)
                    .key("tenant-0")
                    .payload(b"\x00 not a usage event".as_slice()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("the broker takes the poison");
    }
    let behind: Vec<Sent> = (0..30)
        .map(|n| {
            Sent::new(
                5000 + n,
                &format!("tenant-{}", n % 6),
                "openai",
                "gpt-4o",
                30,
            )
        })
        .collect();
    stack
        .post_accepted(&behind.iter().map(Sent::json).collect::<Vec<_>>())
        .await;
    accepted.extend(behind);

    stack.wait_for_rows(accepted.len() as i64).await;
    wait_for_offsets_at_log_end(&stack).await;
    stack.processor.assert_running();

    let client = stack.client().await;
    let stored = stored_ids(&client).await;
    let expected: BTreeSet<String> = accepted.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        stored, expected,
        "every accepted event is stored, nothing else"
    );
    assert_eq!(
        row_count(&client).await,
        expected.len() as i64,
        "one row per accepted event"
    );
    for id in rejected_ids {
        assert!(!stored.contains(&id), "rejected event {id} was stored");
    }
    let tokens: i64 = client
        .query_one(
            "SELECT COALESCE(sum(total_tokens), 0)::BIGINT FROM gateway_mode_audit",
            &[],
        )
        .await
        .expect("sum")
        .get(0);
    assert_eq!(tokens, accepted.iter().map(Sent::total).sum::<i64>());

    // Both poison records reached the dead-letter topic with the reason.
    let dlq: BaseConsumer = stack
        .broker
        .client_config()
        .set("group.id", "dlq-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dlq consumer");
    dlq.subscribe(&[DLQ_TOPIC]).expect("subscribe");
    let letters = tokio::task::spawn_blocking(move || {
        let mut letters = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while letters.len() < PARTITIONS as usize && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = dlq.poll(Duration::from_millis(200)) {
                let header = |name: &str| {
                    message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                letters.push((
                    header("error"),
                    header("source_partition"),
                    message.payload().map(<[u8]>::to_vec),
                ));
            }
        }
        letters
    })
    .await
    .expect("dlq reader");
    let mut partitions: Vec<String> = letters
        .iter()
        .filter(|(error, _, payload)| {
            error.as_deref() == Some("undecodable")
                && payload.as_deref() == Some(b"\x00 not a usage event".as_slice())
        })
        .filter_map(|(_, partition, _)| partition.clone())
        .collect();
    partitions.sort();
    assert_eq!(partitions, ["0", "1"], "dead letters: {letters:?}");

    // The restarted processor counted both dead letters, and says it is healthy and ready.
    let base = format!("http://{}", stack.processor_metrics);
    for path in ["/healthz", "/readyz"] {
        let response = stack
            .http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("metrics listener answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
    let metrics = stack
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|line| line == "tokenledger_events_dead_lettered_total{reason=\"undecodable\"} 2"),
        "{metrics}"
    );

    // The optimization rollup's deltas of every batch so far wait for the applier.
    let client = stack.client().await;
    let count = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect(sql)
                .get::<_, i64>("n")
        }
    };
    let pending = "SELECT count(*) AS n FROM usage_optimize_pending";
    let stored = "SELECT count(*) AS n FROM gateway_mode_audit";
    let rolled_up = "SELECT COALESCE(sum(requests), 0)::int8 AS n FROM usage_optimize_daily";
    assert!(count(pending).await > 0, "deltas pending before the stop");

    // SIGTERM: a graceful stop well within shutdown_timeout_ms (10 s by default).
    stack.processor.sigterm();
    let status = stack.processor.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "processor exit after SIGTERM: {status:?}; log:\n{}",
        stack.processor.log_tail()
    );
    // The stop applied them all, each once (the processor that was killed
    // earlier left its own for this one).
    assert_eq!(count(pending).await, 0, "deltas applied on the way out");
    assert_eq!(count(rolled_up).await, count(stored).await);
}

fn cost(cell: &Option<String>) -> i128 {
    cell.as_deref().map(tenth_nanos).unwrap_or_default()
}

/// Rows where `view` and the same sums over the raw table differ (both directions), and the
/// number of rows in `view`.
async fn rollup_disagreement(client: &Client, view: &str, bucket: &str, keys: &str) -> (i64, i64) {
    let time = if view == "usage_hourly" {
        "bucket"
    } else {
        "day"
    };
    let sql = format!(
        "WITH raw AS (
            SELECT time_bucket(INTERVAL '{bucket}', created_at) AS {time}, {keys},
                   count(*) AS requests,
                   sum(prompt_tokens)::BIGINT AS prompt_tokens,
                   sum(completion_tokens)::BIGINT AS completion_tokens,
                   sum(total_tokens)::BIGINT AS total_tokens,
                   sum(estimated_cost) AS cost,
                   count(*) FILTER (WHERE pricing_status = 'unpriced') AS unpriced_requests
            FROM gateway_mode_audit GROUP BY {time}, {keys}),
         rollup AS (
            SELECT {time}, {keys}, requests, prompt_tokens, completion_tokens, total_tokens,
                   cost, unpriced_requests
            FROM {view})
         SELECT (SELECT count(*) FROM (SELECT * FROM raw EXCEPT SELECT * FROM rollup) a)
              + (SELECT count(*) FROM (SELECT * FROM rollup EXCEPT SELECT * FROM raw) b),
                (SELECT count(*) FROM rollup)"
    );
    let rows = text_rows(client, &sql).await;
    (int(&rows[0][0]), int(&rows[0][1]))
}

async fn assert_rollups_match_raw(client: &Client, when: &str) {
    let raw_rows = row_count(client).await;
    for (view, bucket, keys) in [
        ("usage_hourly", "1 hour", "tenant_id, provider, model"),
        ("usage_daily", "1 day", "tenant_id, provider, model"),
        ("tenant_daily", "1 day", "tenant_id"),
        ("model_daily", "1 day", "provider, model"),
    ] {
        let (differing, rollup_rows) = rollup_disagreement(client, view, bucket, keys).await;
        assert_eq!(differing, 0, "{when}: {view} disagrees with the raw table");
        assert!(rollup_rows > 0 || raw_rows == 0, "{when}: {view} is empty");
    }
}

async fn guide_query(client: &Client, file: &str) -> Vec<Vec<Option<String>>> {
    let path = repo_root().join("sql/reports/guide").join(file);
    let sql = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text_rows(client, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_and_guide_reports_match_the_raw_table() {
    let mut stack = Stack::start().await;
    const DAY: i64 = 86_400;
    let mut sent: Vec<Sent> = Vec::new();
    let mut n = 0;
    // ages: recent (inside 7 days), 10 days (inside 30, outside 7), 32 days (outside 30)
    for (age, count) in [
        (300, 12),
        (3 * DAY + 700, 10),
        (10 * DAY + 1_000, 8),
        (32 * DAY, 5),
    ] {
        for i in 0..count {
            n += 1;
            let tenant = format!("tenant-{}", i % 3);
            let (provider, model) = match i % 3 {
                0 => ("openai", "gpt-4o"),
                1 => ("anthropic", "claude-3-5-sonnet"),
                _ => ("bedrock", "amazon.nova-pro-v1:0"),
            };
            sent.push(Sent::new(n, &tenant, provider, model, age + i64::from(i)));
        }
    }
    sent.push(Sent::unpriced(900, "tenant-9", 400));
    sent.push(Sent::unpriced(901, "tenant-9", 4 * DAY));
    stack
        .post_accepted(&sent.iter().map(Sent::json).collect::<Vec<_>>())
        .await;
    stack.wait_for_rows(sent.len() as i64).await;
    let client = stack.client().await;

    // Nothing is materialized yet: real-time aggregation alone must agree with the raw rows.
    assert_rollups_match_raw(&client, "before any refresh").await;

    let output = run_processor_command(
        &stack.database,
        &["report", "--refresh", "--format", "json", "--days", "40"],
    )
    .await;
    // stdout (the pretty-printed JSON) and stderr (logs) share the log file
    let json: String = output
        .lines()
        .skip_while(|line| *line != "{")
        .take_while(|line| *line != "}")
        .chain(["}"])
        .collect::<Vec<_>>()
        .join("\n");
    let report: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("report JSON: {e}\n{output}"));
    assert_eq!(report["totals"]["rows"], json!(sent.len()));
    assert_eq!(report["totals"]["unpriced_rows"], json!(2));
    let report_cost = tenth_nanos(
        report["totals"]["cost_usd"]
            .as_str()
            .expect("cost is a decimal string"),
    );
    assert_eq!(report_cost, sent.iter().map(Sent::cost).sum::<i128>());
    // The refresh stops at the start of the current hour (the open bucket is left to real-time
    // aggregation), so whether the 5-minute-old events are materialized depends on the clock;
    // the 3-day-old ones always are, which moves the watermark past them.
    let watermark = text_rows(
        &client,
        "SELECT _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(mat_hypertable_id)) > now() - INTERVAL '3 days 1 hour'
         FROM _timescaledb_catalog.continuous_agg WHERE user_view_name = 'usage_hourly'",
    )
    .await;
    assert_eq!(
        watermark[0][0].as_deref(),
        Some("t"),
        "--refresh materialized usage_hourly"
    );
    assert_rollups_match_raw(&client, "after the refresh").await;

    // Rows after the refresh: shown by real-time aggregation, no refresh needed.
    let late: Vec<Sent> = (0..6)
        .map(|i| Sent::new(950 + i, "tenant-late", "openai", "gpt-4o", 0))
        .collect();
    stack
        .post_accepted(&late.iter().map(Sent::json).collect::<Vec<_>>())
        .await;
    sent.extend(late);
    stack.wait_for_rows(sent.len() as i64).await;
    assert_rollups_match_raw(&client, "rows newer than the refresh").await;
    let late_requests = text_rows(
        &client,
        "SELECT COALESCE(sum(requests), 0) FROM tenant_daily WHERE tenant_id = 'tenant-late'",
    )
    .await;
    assert_eq!(int(&late_requests[0][0]), 6);

    // The guide's queries, verbatim.
    let now = unix_now();
    let within = |s: &&Sent, days: i64| s.created_at > now - days * DAY;

    let mut daily: BTreeMap<String, (i64, i128)> = BTreeMap::new();
    for s in sent.iter().filter(|s| within(s, 30)) {
        let entry = daily.entry(utc_date(s.created_at)).or_default();
        entry.0 += s.total();
        entry.1 += s.cost();
    }
    let rows = guide_query(&client, "daily_token_usage.sql").await;
    let got: Vec<(String, i64, i128)> = rows
        .iter()
        .map(|r| (r[0].clone().unwrap_or_default(), int(&r[1]), cost(&r[2])))
        .collect();
    let want: Vec<(String, i64, i128)> = daily.into_iter().map(|(d, (t, c))| (d, t, c)).collect();
    assert_eq!(got, want, "daily token usage");

    let mut by_tenant: BTreeMap<String, (i64, i128)> = BTreeMap::new();
    for s in sent.iter().filter(|s| within(s, 30)) {
        let entry = by_tenant.entry(s.tenant.clone()).or_default();
        entry.0 += s.total();
        entry.1 += s.cost();
    }
    let mut want: Vec<(String, i64, i128)> =
        by_tenant.into_iter().map(|(k, (t, c))| (k, t, c)).collect();
    want.sort_by_key(|row| std::cmp::Reverse(row.2));
    let rows = guide_query(&client, "usage_by_tenant.sql").await;
    let got: Vec<(String, i64, i128)> = rows
        .iter()
        .map(|r| (r[0].clone().unwrap_or_default(), int(&r[1]), cost(&r[2])))
        .collect();
    assert_eq!(got, want, "usage by tenant");

    let mut by_model: BTreeMap<(String, String), (i64, i128, i64)> = BTreeMap::new();
    for s in sent.iter().filter(|s| within(s, 7)) {
        let entry = by_model
            .entry((s.provider.clone(), s.model.clone()))
            .or_default();
        entry.0 += s.total();
        entry.1 += s.cost();
        entry.2 += 1;
    }
    let mut want: Vec<(String, String, i64, i128, f64)> = by_model
        .into_iter()
        .map(|((p, m), (t, c, count))| (p, m, t, c, t as f64 / count as f64))
        .collect();
    want.sort_by_key(|row| std::cmp::Reverse(row.3));
    let rows = guide_query(&client, "most_expensive_models.sql").await;
    let got: Vec<(String, String, i64, i128, f64)> = rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                int(&r[2]),
                cost(&r[3]),
                r[4].as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "most expensive models: {got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.0, &g.1, g.2, g.3),
            (&w.0, &w.1, w.2, w.3),
            "most expensive models"
        );
        assert!(
            (g.4 - w.4).abs() < 1e-9,
            "average tokens of {}/{}: {} vs {}",
            w.0,
            w.1,
            g.4,
            w.4
        );
    }
    stack.processor.assert_running();
}
