//! One tenant at every input limit cannot stop the others, end to end through the real gateway,
//! processor, broker and database (docs/design.md, "Guarantees and failure modes").
//!
//! - `an_adversary_at_every_limit_does_not_stop_other_tenants`: while a `*` budget exists, an
//!   adversarial tenant sends everything the gateway accepts at its limits: the largest cost
//!   (11,000 events of 1,000,000 USD, more than a NUMERIC(20,10) budget spend can hold), the
//!   finest cost, the largest token counts, the longest identifiers and the most, longest labels.
//!   Other tenants send normal traffic behind it on the same partition. Their events must land
//!   within a deadline, and every adversarial event must be stored exactly as sent or
//!   dead-lettered with a reason: none is silently lost.
//! - `a_tenant_sending_conflicts_does_not_stall_other_tenants`: an adversarial tenant sends
//!   conflicts (the same `(tenant, id, created_at)` again with other content) as fast as the
//!   gateway accepts them, on the partition another tenant uses; each of that tenant's events,
//!   sent every half second throughout, must land within [`CONFLICT_LANDING`] of its 202, and
//!   every conflict must be dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::header_strings;
use e2e::ledger_check::{rfc3339, text_rows, unix_now, Expected, Ledger, Rng};
use e2e::usage::{http_client, Services, UsageClient, DLQ_TOPIC};
use e2e::wait_for;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

/// One partition: every tenant's events queue behind the adversary's.
const PARTITIONS: i32 = 1;
const STARTUP: Duration = Duration::from_secs(60);
/// How long other tenants' events may take to land once sent.
const LANDING: Duration = Duration::from_secs(60);
/// The largest token count the event rules accept (`ledger::event::MAX_TOKEN_COUNT`).
const MAX_COUNT: u64 = 2_147_483_647;
const OTHERS: [&str; 2] = ["acme", "globex"];
/// The bound on another tenant's landing time while conflicts flood its partition: a few
/// batches' worth of database work on a loaded test machine. With each conflict dead-lettered
/// one acknowledgement at a time inside the batch transaction (about 6 ms each against the test
/// broker) the flood's 10,000 conflicts alone held the partition for a minute.
const CONFLICT_LANDING: Duration = Duration::from_secs(30);
/// Requests of 1,000 events the conflicting tenant sends, each followed by the same ids
/// with other content.
const CONFLICT_PAIRS: usize = 10;

/// The adversary's tenant id: 255 characters, the longest accepted.
fn adversary() -> String {
    format!("adversary-{}", "x".repeat(255 - "adversary-".len()))
}

/// One adversarial event: the `variant` picks which limits it sits at.
fn adversarial_event(rng: &mut Rng, variant: usize, with_labels: bool) -> Value {
    let half = MAX_COUNT / 2;
    // (prompt, completion, cached, cache_write, reasoning)
    let counts = match variant % 3 {
        0 => (MAX_COUNT, 0, half, MAX_COUNT - half, 0),
        1 => (0, MAX_COUNT, 0, 0, MAX_COUNT),
        _ => (half, MAX_COUNT - half, half, 0, MAX_COUNT - half),
    };
    // Events without labels all cost the most one event may: their sum is what must not
    // overflow. Those with labels sit at the other cost limits.
    let cost = match (with_labels, variant % 3) {
        (false, _) | (true, 0) => "1000000",
        (true, 1) => "999999.9999999999",
        (true, _) => "0.0000000001",
    };
    let mut event = json!({
        "id": rng.uuid(),
        "created_at": rfc3339(unix_now() - 60),
        "tenant_id": adversary(),
        "user_id": format!("u{}", "é".repeat(254)),
        "provider": format!("p{}", "z".repeat(99)),
        "model": format!("m{}", "ü".repeat(99)),
        "prompt_tokens": counts.0,
        "completion_tokens": counts.1,
        "total_tokens": counts.0 + counts.1,
        "cached_prompt_tokens": counts.2,
        "cache_write_tokens": counts.3,
        "reasoning_tokens": counts.4,
        "estimated_cost": cost,
    });
    if with_labels {
        let labels: serde_json::Map<String, Value> = (0..16)
            .map(|index| {
                let key = format!("{index:02}{}", "k".repeat(62));
                (key, json!("€".repeat(255)))
            })
            .collect();
        event["labels"] = Value::Object(labels);
    }
    event
}

/// POSTs `events` until a 202 (retrying 503s); any other answer fails the test.
async fn post_accepted(http: &reqwest::Client, url: &str, events: &[Value]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = http
            .post(format!("{url}/v1/usage"))
            .json(&events)
            .send()
            .await;
        match response {
            Ok(response) if response.status().as_u16() == 202 => return,
            Ok(response) if response.status().as_u16() == 503 && Instant::now() < deadline => {}
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                panic!("the gateway answered {status} to events at the limits: {body}");
            }
            Err(error) if Instant::now() < deadline => eprintln!("retrying: {error}"),
            Err(error) => panic!("no answer from the gateway: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The dead letters of the adversary: event id → the `error` header.
async fn adversary_dead_letters(services: &Services) -> BTreeMap<String, String> {
    dead_letters_of(services, adversary()).await
}

/// The dead letters of `tenant`: event id → the `error` header.
async fn dead_letters_of(services: &Services, tenant: String) -> BTreeMap<String, String> {
    let consumer: BaseConsumer = services
        .broker
        .client_config()
        .set("group.id", "adversarial-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(DLQ_TOPIC, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    tokio::task::spawn_blocking(move || {
        let mut letters = BTreeMap::new();
        let mut last_new = Instant::now();
        while last_new.elapsed() < Duration::from_secs(5) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                last_new = Instant::now();
                let headers = header_strings(&message);
                let event: Value = message
                    .payload()
                    .and_then(|payload| serde_json::from_slice(payload).ok())
                    .unwrap_or(Value::Null);
                if event["tenant_id"] == tenant.as_str() {
                    let id = event["id"].as_str().unwrap_or_default().to_owned();
                    letters.insert(id, headers.get("error").cloned().unwrap_or_default());
                }
            }
        }
        letters
    })
    .await
    .expect("dead-letter reader")
}

/// A decimal's text without trailing zeros, so "1000000.0000000000" equals "1000000".
fn plain(decimal: &str) -> String {
    if decimal.contains('.') {
        decimal
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else {
        decimal.to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adversary_at_every_limit_does_not_stop_other_tenants() {
    let services = Services::start(PARTITIONS).await;
    let client = services.database.client().await;
    let budgets = text_rows(
        &client,
        "SELECT count(*) FROM budgets WHERE tenant_id = '*'",
    )
    .await;
    assert_ne!(budgets[0][0].as_deref(), Some("0"), "a `*` budget exists");
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;

    let http = http_client();
    let ledger = Ledger::new();
    let others = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("an_adversary_at_every_limit_does_not_stop_other_tenants");
    let mut sent: BTreeMap<String, Value> = BTreeMap::new();
    let send_others = |rng: &mut Rng| {
        let events: Vec<Expected> = (0..20).map(|_| Expected::random(rng, &OTHERS)).collect();
        let others = others.clone();
        async move {
            others
                .send_until_accepted(&events, Duration::from_secs(30))
                .await
                .expect("202 for normal traffic");
        }
    };

    // 11 requests of 1,000 events at 1,000,000 USD and the largest counts: 11e9 USD of spend
    // for the `*` budget, beyond NUMERIC(20,10). Then events with the most and longest labels.
    for request in 0..11 {
        let events: Vec<Value> = (0..1000)
            .map(|index| adversarial_event(&mut rng, request * 1000 + index, false))
            .collect();
        post_accepted(&http, &gateway.url, &events).await;
        for event in events {
            sent.insert(event["id"].as_str().expect("id").to_owned(), event);
        }
        send_others(&mut rng).await;
    }
    for _ in 0..3 {
        let events: Vec<Value> = (0..100)
            .map(|index| adversarial_event(&mut rng, index, true))
            .collect();
        post_accepted(&http, &gateway.url, &events).await;
        for event in events {
            sent.insert(event["id"].as_str().expect("id").to_owned(), event);
        }
    }

    // Other tenants' events sent after all of it land within the deadline.
    send_others(&mut rng).await;
    let expected_others = ledger.len() as i64;
    let others_sql =
        "SELECT count(*) FROM gateway_mode_audit WHERE tenant_id IN ('acme', 'globex')";
    let started = Instant::now();
    let landed = wait_for(LANDING, || async {
        count_rows(&client, others_sql).await == expected_others
    })
    .await;
    assert!(
        landed,
        "{} of {expected_others} events of other tenants stored {LANDING:?} after they were \
         accepted: one tenant stopped the others\n{}",
        count_rows(&client, others_sql).await,
        processor.process.log_tail()
    );
    eprintln!(
        "other tenants' events landed {:?} after the last was accepted",
        started.elapsed()
    );

    // Every adversarial event is stored exactly as sent or dead-lettered with a reason.
    let adversary_sql = format!(
        "SELECT id::text, user_id, provider, model, prompt_tokens, completion_tokens, \
         total_tokens, cached_prompt_tokens, cache_write_tokens, reasoning_tokens, \
         estimated_cost::text, labels::text FROM gateway_mode_audit WHERE tenant_id = '{}'",
        adversary()
    );
    // Settled when every event is stored, or the count stopped moving (the rest is then
    // expected among the dead letters).
    let adversary_count = format!("SELECT count(*) FROM ({adversary_sql}) AS rows");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut previous = -1;
    let mut unchanged_since = Instant::now();
    loop {
        let now = count_rows(&client, &adversary_count).await;
        if now == sent.len() as i64 {
            break;
        }
        if now != previous {
            previous = now;
            unchanged_since = Instant::now();
        } else if unchanged_since.elapsed() > Duration::from_secs(5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the adversary's rows kept changing"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stored: BTreeMap<String, Vec<Option<String>>> = text_rows(&client, &adversary_sql)
        .await
        .into_iter()
        .map(|row| (row[0].clone().unwrap_or_default(), row))
        .collect();
    let dead = adversary_dead_letters(&services).await;
    let mut lost = BTreeSet::new();
    for (id, event) in &sent {
        match (stored.get(id), dead.get(id)) {
            (Some(row), None) => {
                let text = |value: &Value| match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let want = [
                    "user_id",
                    "provider",
                    "model",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "cached_prompt_tokens",
                    "cache_write_tokens",
                    "reasoning_tokens",
                ];
                for (column, field) in want.iter().enumerate() {
                    assert_eq!(
                        row[column + 1].as_deref(),
                        Some(text(&event[*field]).as_str()),
                        "{field} of {id} stored exactly"
                    );
                }
                assert_eq!(
                    plain(row[10].as_deref().unwrap_or_default()),
                    text(&event["estimated_cost"]),
                    "estimated_cost of {id} stored exactly"
                );
                let labels: Value =
                    serde_json::from_str(row[11].as_deref().unwrap_or("{}")).expect("labels");
                let sent_labels = event.get("labels").cloned().unwrap_or(json!({}));
                assert_eq!(labels, sent_labels, "labels of {id} stored exactly");
            }
            (None, Some(reason)) => assert!(!reason.is_empty(), "{id} dead-lettered with a reason"),
            (Some(_), Some(reason)) => panic!("{id} both stored and dead-lettered ({reason})"),
            (None, None) => {
                lost.insert(id.clone());
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} adversarial events neither stored nor dead-lettered, e.g. {:?}\n{}",
        lost.len(),
        sent.len(),
        lost.iter().next(),
        processor.process.log_tail()
    );
    eprintln!(
        "adversary: {} stored, {} dead-lettered ({:?})",
        stored.len(),
        dead.len(),
        dead.values().collect::<BTreeSet<_>>()
    );

    // The budget's spend for the adversary is the sum of what was stored.
    let spend = text_rows(
        &client,
        &format!(
            "SELECT (SELECT sum(spend_usd) FROM budget_spend s JOIN budgets b ON b.id = s.budget_id \
               WHERE b.name = 'faults-monthly' AND s.tenant_id = '{tenant}')::text, \
             (SELECT sum(estimated_cost) FROM gateway_mode_audit WHERE tenant_id = '{tenant}')::text",
            tenant = adversary()
        ),
    )
    .await;
    assert_eq!(
        spend[0][0].as_deref().map(plain),
        spend[0][1].as_deref().map(plain),
        "the `*` budget's spend for the adversary equals its stored cost"
    );
    processor.process.assert_running();
}

async fn count_rows(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(-1)
}

/// One event of the conflicting tenant; `variant` changes its content, not its key.
fn conflicting_event(id: &str, created_at: &str, variant: u32) -> Value {
    json!({
        "id": id,
        "created_at": created_at,
        "tenant_id": "conflicter",
        "provider": "openai",
        "model": "gpt-4o",
        "prompt_tokens": 10 + variant,
        "completion_tokens": 1,
        "estimated_cost": format!("0.00{}", 1 + variant),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sending_conflicts_does_not_stall_other_tenants() {
    let services = Services::start(PARTITIONS).await;
    let client = services.database.client().await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let http = http_client();
    let mut rng = Rng::from_env("a_tenant_sending_conflicts_does_not_stall_other_tenants");

    // The adversary: pairs of requests, the second repeating the first's keys with other content.
    let flood = {
        let http = http.clone();
        let url = gateway.url.clone();
        let mut rng = Rng::from_env("conflicter");
        tokio::spawn(async move {
            let created_at = rfc3339(unix_now() - 60);
            let mut conflicts = BTreeSet::new();
            for _ in 0..CONFLICT_PAIRS {
                let ids: Vec<String> = (0..1000).map(|_| rng.uuid()).collect();
                for variant in 0..2 {
                    let events: Vec<Value> = ids
                        .iter()
                        .map(|id| conflicting_event(id, &created_at, variant))
                        .collect();
                    post_accepted(&http, &url, &events).await;
                }
                conflicts.extend(ids);
            }
            conflicts
        })
    };

    // The other tenant, throughout: one event every half second, each timed from its 202.
    let ledger = Ledger::new();
    let other = UsageClient::new(&gateway.url, &ledger);
    let mut probes = Vec::new();
    while !flood.is_finished() || probes.len() < 4 {
        let event = Expected::random(&mut rng, &["bystander"]);
        other
            .send_until_accepted(std::slice::from_ref(&event), Duration::from_secs(30))
            .await
            .expect("202 for the other tenant");
        let accepted = Instant::now();
        let client = services.database.client().await;
        probes.push(tokio::spawn(async move {
            let sql = format!(
                "SELECT count(*) FROM gateway_mode_audit WHERE tenant_id = 'bystander' AND id = '{}'",
                event.id
            );
            let landed = wait_for(CONFLICT_LANDING, || async {
                count_rows(&client, &sql).await == 1
            })
            .await;
            (landed, accepted.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let conflicts = flood.await.expect("the adversary's requests");
    // One more event of the other tenant, sent after the adversary's last 202: on the same
    // (single) partition, so once it has landed the processor has moved past every conflict.
    let last = Expected::random(&mut rng, &["bystander"]);
    other
        .send_until_accepted(std::slice::from_ref(&last), Duration::from_secs(30))
        .await
        .expect("202 for the other tenant");
    let last_sql = format!(
        "SELECT count(*) FROM gateway_mode_audit WHERE tenant_id = 'bystander' AND id = '{}'",
        last.id
    );
    assert!(
        wait_for(CONFLICT_LANDING, || async {
            count_rows(&client, &last_sql).await == 1
        })
        .await,
        "the other tenant's event sent after the flood did not land within {CONFLICT_LANDING:?}"
    );
    let mut slowest = Duration::ZERO;
    let mut late = 0;
    for probe in probes.iter_mut() {
        let (landed, took) = probe.await.expect("probe");
        eprintln!("another tenant's event: landed {landed}, {took:?} after its 202");
        slowest = slowest.max(took);
        late += usize::from(!landed);
    }
    assert_eq!(
        late,
        0,
        "{late} of {} events of another tenant did not land within {CONFLICT_LANDING:?} of \
         their 202 while a tenant sent conflicts\n{}",
        probes.len(),
        processor.process.log_tail()
    );
    eprintln!(
        "{} events of another tenant landed, the slowest {slowest:?} after its 202",
        probes.len()
    );

    // Every conflict is dead-lettered as one: the partition has moved past all of them (above).
    let stored = "SELECT count(*) FROM gateway_mode_audit WHERE tenant_id = 'conflicter'";
    assert_eq!(count_rows(&client, stored).await, conflicts.len() as i64);
    let letters = dead_letters_of(&services, "conflicter".into()).await;
    assert_eq!(
        letters.len(),
        conflicts.len(),
        "every conflict dead-lettered"
    );
    assert!(letters.values().all(|reason| reason == "conflict"));
    assert!(letters.keys().all(|id| conflicts.contains(id)));
    processor.process.assert_running();
}
