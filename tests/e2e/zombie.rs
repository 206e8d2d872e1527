//! A live zombie, made deterministic: two processors consume and write the same partitions at
//! the same time, under load through the real gateway, with budgets whose thresholds are crossed,
//! a real Alertmanager and poison records on every partition.
//!
//! One processor is the consumer group's only member and owns every partition; the other is
//! given the same partitions by `kafka.manual_assignment`, outside the group, so nothing ever
//! takes them from either. (Stopping a member past its session timeout is not a reliable way to
//! get the overlap: whether and when the broker reassigns its partitions varies.) Both start at
//! the offsets stored in the database and both commit batches covering every partition; the
//! test shows that from their logs and counters before it checks anything else.
//!
//! - `two_processors_on_the_same_partitions_count_everything_once`: `check_ledger` (every
//!   acknowledged event stored once with its content, rollups equal to the raw sums, budget
//!   spend equal to the raw sums, each reached threshold recorded once, the two processors'
//!   inserted counters adding up to the stored rows exactly); each crossing accepted by
//!   Alertmanager once in all (the delivered counters of both processors add up to the recorded
//!   crossings, and Alertmanager shows exactly those alerts); every poison record dead-lettered
//!   at least once and at most once per processor (docs/design.md, "Guarantees and failure
//!   modes": the dead-letter topic is at least once).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::ledger_check::{check_ledger, text_rows, wait_for_rows, CounterEvidence, Ledger, Rng};
use e2e::usage::{Load, LoadShape, Processor, Services, UsageClient, DLQ_TOPIC, USAGE_TOPIC};
use e2e::{header_strings, wait_for, wait_for_some, Alertmanager};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;

const PARTITIONS: i32 = 4;
const STARTUP: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(120);

/// Per partition, the highest next offset of the batches `processor` logged as committed.
fn committed_through(processor: &Processor) -> BTreeMap<i32, i64> {
    let needle = format!("(\"{USAGE_TOPIC}\", ");
    let mut through = BTreeMap::new();
    for line in processor.process.log_contents().lines() {
        if !line.contains("batch committed") {
            continue;
        }
        let Some(start) = line.find("next_offsets=") else {
            continue;
        };
        let mut rest = &line[start..];
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            let partition: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Some(colon) = rest.find("): ") else { break };
            let offset: String = rest[colon + 3..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let (Ok(partition), Ok(offset)) = (partition.parse(), offset.parse::<i64>()) {
                let entry = through.entry(partition).or_insert(offset);
                *entry = (*entry).max(offset);
            }
        }
    }
    through
}

/// The sum of a counter's series (all labels matching `labels`) in a Prometheus text page.
fn counter_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_text(processor: &Processor) -> String {
    reqwest::get(format!("{}/metrics", processor.metrics_url))
        .await
        .unwrap_or_else(|e| panic!("{}: /metrics: {e}", processor.process.name()))
        .text()
        .await
        .unwrap_or_default()
}

/// Every record of the (single-partition) dead-letter topic, as its headers, once `expected`
/// have arrived and no more came for `quiet`.
async fn dead_letters(
    services: &Services,
    expected: usize,
    quiet: Duration,
) -> Vec<BTreeMap<String, String>> {
    let consumer: BaseConsumer = services
        .broker
        .client_config()
        .set("group.id", "zombie-dlq-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(DLQ_TOPIC, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        let mut last_new = std::time::Instant::now();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (records.len() < expected || last_new.elapsed() < quiet)
            && std::time::Instant::now() < deadline
        {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                records.push(header_strings(&message));
                last_new = std::time::Instant::now();
            }
        }
        records
    })
    .await
    .expect("dead-letter reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_on_the_same_partitions_count_everything_once() {
    let services = Services::start(PARTITIONS).await;
    let alertmanager = Alertmanager::start().await;
    let alertmanager_url = alertmanager.url();
    let gateway = services.gateway("gateway", &[]).await;
    let alerting = [
        (
            "TOKENLEDGER_ALERTING__ALERTMANAGER_URL",
            alertmanager_url.as_str(),
        ),
        ("TOKENLEDGER_ALERTING__POLL_INTERVAL_MS", "200"),
    ];
    let mut member = services.processor("member", &alerting);
    member.wait_assigned(STARTUP).await;
    let all_partitions = format!(
        "[{}]",
        (0..PARTITIONS)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut zombie_env = alerting.to_vec();
    zombie_env.push((
        "TOKENLEDGER_KAFKA__MANUAL_ASSIGNMENT",
        all_partitions.as_str(),
    ));
    let mut zombie = services.processor("zombie", &zombie_env);
    zombie.wait_assigned(STARTUP).await;

    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("zombie");
    let mut requests = 0;

    // Poison on every partition, twice, between the load's events: both processors fetch each.
    // The load pauses while the poison is produced: two producers appending to one partition at
    // once can make the test broker skip a record (tests/support/broker.rs).
    let producer: FutureProducer = services.broker.client_config().create().expect("producer");
    let mut poison: BTreeSet<(i32, i64)> = BTreeSet::new();
    let garbage = b"\x00\xff not json at all".to_vec();
    let invalid =
        serde_json::to_vec(&json!({"id": "00000000-0000-0000-0000-000000000000"})).expect("json");
    for round in 0..2 {
        // Between the load's events: poison after some traffic, again after more.
        let load = Load::start(&client, &LoadShape::default(), &mut rng);
        let traffic = wait_for(Duration::from_secs(30), || async {
            ledger.len() > 200 * (round + 1)
        })
        .await;
        requests += load.stop().await;
        assert!(traffic, "only {} events acknowledged", ledger.len());
        for partition in 0..PARTITIONS {
            for (payload, schema) in [(&garbage, None), (&invalid, Some("usage.v2"))] {
                let mut record = FutureRecord::<str, [u8]>::to(USAGE_TOPIC)
                    .partition(partition)
                    .key("poison")
                    .payload(payload.as_slice());
                if let Some(schema) = schema {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: "schema",
                        value: Some(schema),
                    }));
                }
                let delivered = producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(error, _)| error)
                    .expect("the broker takes the poison");
                poison.insert((delivered.partition, delivered.offset));
            }
        }
    }
    let load = Load::start(&client, &LoadShape::default(), &mut rng);

    // The overlap, shown before anything is checked: each processor has committed batches on
    // every partition, and records were found already stored by the other.
    let overlapped = wait_for(CATCH_UP, || async {
        let (a, b) = (committed_through(&member), committed_through(&zombie));
        let (Some(ca), Some(cb)) = (member.scrape().await, zombie.scrape().await) else {
            return false;
        };
        a.len() == PARTITIONS as usize
            && b.len() == PARTITIONS as usize
            && ca.duplicates + cb.duplicates > 0
    })
    .await;
    requests += load.stop().await;
    assert!(
        overlapped,
        "the two processors did not both write every partition: member committed through {:?} \
         ({:?}), zombie through {:?} ({:?})",
        committed_through(&member),
        member.scrape().await,
        committed_through(&zombie),
        zombie.scrape().await
    );
    assert!(requests > 20, "only {requests} requests completed");

    // Both processors have committed through the end of every partition: nothing they fetched
    // is still on its way to the database or to their counters.
    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let mut ends = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let (_, high) = services
            .broker
            .watermarks(USAGE_TOPIC, partition)
            .await
            .expect("watermarks");
        ends.insert(partition, high);
    }
    let caught_up = wait_for(CATCH_UP, || async {
        [&member, &zombie].iter().all(|p| {
            let through = committed_through(p);
            ends.iter()
                .all(|(partition, end)| through.get(partition).is_some_and(|t| t >= end))
        })
    })
    .await;
    assert!(
        caught_up,
        "log ends {ends:?}; member committed through {:?}, zombie through {:?}",
        committed_through(&member),
        committed_through(&zombie)
    );

    // Rows, rollups, budget spend and crossings, and the counters of both, exactly once.
    let counters = CounterEvidence {
        complete: vec![member.final_scrape().await, zombie.final_scrape().await],
        ..CounterEvidence::default()
    };
    check_ledger(&db, &ledger, &counters).await;

    // Each crossing accepted by Alertmanager once, by one of the two.
    let crossings = text_rows(
        &db,
        "SELECT b.name, a.tenant_id, a.threshold::text FROM budget_alerts a
         JOIN budgets b ON b.id = a.budget_id",
    )
    .await;
    let recorded: BTreeSet<(String, String, String)> = crossings
        .iter()
        .map(|r| {
            let cell = |i: usize| r[i].clone().unwrap_or_default();
            (cell(0), cell(1), cell(2))
        })
        .collect();
    let delivered = wait_for_some(Duration::from_secs(30), || async {
        let undelivered = text_rows(
            &db,
            "SELECT count(*) FROM budget_alerts WHERE alertmanager_delivered_at IS NULL",
        )
        .await;
        if undelivered[0][0].as_deref() != Some("0") {
            return None;
        }
        let mut total = 0.0;
        for processor in [&member, &zombie] {
            total += counter_sum(
                &metrics_text(processor).await,
                "tokenledger_budget_alerts_delivered_total",
                "target=\"alertmanager\"",
            );
        }
        Some(total)
    })
    .await
    .expect("every crossing was delivered");
    assert_eq!(
        delivered,
        recorded.len() as f64,
        "alerts accepted by Alertmanager, both processors together, for {} crossings",
        recorded.len()
    );
    let shown: Vec<(String, String, String)> = alertmanager
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "LLMBudgetThreshold")
        .map(|a| {
            let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_owned();
            (label("budget"), label("tenant_id"), label("threshold"))
        })
        .collect();
    assert_eq!(
        shown.iter().cloned().collect::<BTreeSet<_>>(),
        recorded,
        "Alertmanager's alerts"
    );
    assert_eq!(shown.len(), recorded.len(), "one alert per crossing");

    // Every poison record dead-lettered at least once, and at most once by each processor.
    let scrapes = &counters.complete;
    let counted: i64 = scrapes
        .iter()
        .map(|c| c.dead_lettered.values().sum::<i64>())
        .sum();
    let letters = dead_letters(&services, poison.len(), Duration::from_secs(3)).await;
    let mut copies: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for headers in &letters {
        let at = |k: &str| headers.get(k).and_then(|v| v.parse::<i64>().ok());
        let (Some(partition), Some(offset)) = (at("source_partition"), at("source_offset")) else {
            panic!("a dead letter without its source: {headers:?}");
        };
        *copies.entry((partition as i32, offset)).or_default() += 1;
    }
    let lettered: BTreeSet<(i32, i64)> = copies.keys().copied().collect();
    assert_eq!(lettered, poison, "dead-lettered source records");
    assert!(
        copies.values().all(|n| *n <= 2),
        "a poison record dead-lettered more than once per processor: {copies:?}"
    );
    assert_eq!(
        counted as usize,
        letters.len(),
        "dead-letter counters of both processors and the dead-letter topic"
    );
    eprintln!(
        "zombie: {} events in {requests} requests, {} crossings, {} poison records dead-lettered \
         {} times; (inserted, duplicates) member {:?}, zombie {:?}",
        ledger.len(),
        recorded.len(),
        poison.len(),
        letters.len(),
        (scrapes[0].inserted, scrapes[0].duplicates),
        (scrapes[1].inserted, scrapes[1].duplicates),
    );
    member.process.assert_running();
    zombie.process.assert_running();
}
