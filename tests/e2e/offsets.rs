//! Stored offsets that the log no longer reaches, end to end: the real gateway and processor
//! against tansu and PostgreSQL + TimescaleDB (docs/design.md, "Guarantees and failure modes").
//!
//! - `a_recreated_topic_is_held_until_an_operator_resets_its_offsets`: the usage topic is deleted
//!   and recreated under a running processor, so the offsets stored in the database are beyond
//!   the new log's end. The processor must not consume those partitions (which would skip or drop
//!   the new records below the stored offsets): it logs an error naming topic, partition, stored
//!   offset and watermarks, exports `tokenledger_partition_blocked`, and stores nothing. `processor
//!   offsets show` reports it; `processor offsets reset --to earliest --dry-run` changes nothing;
//!   `processor offsets reset --to earliest` moves the stored offsets back, the running processor
//!   picks that up, and every event accepted after the recreation lands exactly once.
//! - `a_stored_offset_beyond_the_log_holds_only_its_partition_until_reset`: one partition's stored
//!   offset is moved past the log's end (a database restored from a newer backup) under a running
//!   processor; at its next assignment it holds that partition only, the other keeps flowing, and
//!   a reset releases it in place, without a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::ledger_check::{check_ledger, wait_for_rows, CounterEvidence, Expected, Ledger, Rng};
use e2e::usage::{http_client, Processor, Services, UsageClient, USAGE_TOPIC};
use e2e::{wait_for, Binary, ChildProcess};

const PARTITIONS: i32 = 2;
const STARTUP: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(90);
const AHEAD: &str = "stored offset is ahead of the log";
const TENANTS: [&str; 6] = ["t-a", "t-b", "t-c", "t-d", "t-e", "t-f"];

/// Sends `count` random events in requests of 10, each retried until accepted.
async fn send(client: &UsageClient, rng: &mut Rng, count: usize) {
    for _ in 0..count / 10 {
        let events: Vec<Expected> = (0..10).map(|_| Expected::random(rng, &TENANTS)).collect();
        client
            .send_until_accepted(&events, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("sending events: {e}"));
    }
}

/// `ingest_offsets` of the usage topic: partition → next offset.
async fn stored_offsets(db: &tokio_postgres::Client) -> BTreeMap<i32, i64> {
    db.query(
        "SELECT partition, next_offset FROM ingest_offsets WHERE topic = $1",
        &[&USAGE_TOPIC],
    )
    .await
    .expect("read ingest_offsets")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// The value of one series of the processor's metrics, if exported.
async fn metric(processor: &Processor, series: &str) -> Option<f64> {
    let text = http_client()
        .get(format!("{}/metrics", processor.metrics_url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn blocked_series(partition: i32) -> String {
    format!(
        "tokenledger_partition_blocked{{partition=\"{partition}\",reason=\"offset_ahead_of_log\"}}"
    )
}

/// Runs `processor <args>` against the services and returns its output; panics on failure.
async fn processor_command(services: &Services, args: &[&str]) -> String {
    let mut command = ChildProcess::spawn(
        "processor-offsets",
        Binary::path("processor"),
        args,
        &[
            ("TOKENLEDGER_KAFKA__BROKERS", services.brokers.as_str()),
            ("TOKENLEDGER_DATABASE__URL", services.db_url.as_str()),
        ],
    );
    let status = command.wait_exit(Duration::from_secs(60)).await;
    let output = command.log_contents();
    assert!(
        status.is_some_and(|s| s.success()),
        "processor {args:?}: {status:?}; output:\n{output}"
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_held_until_an_operator_resets_its_offsets() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let db = services.database.client().await;

    // Before: enough events that each partition's stored offset is well past what the new
    // topic will hold.
    let before = Ledger::new();
    let mut rng = Rng::from_env("a_recreated_topic_is_held");
    send(&UsageClient::new(&gateway.url, &before), &mut rng, 120).await;
    wait_for_rows(&db, before.len(), CATCH_UP).await;
    let stored_before = stored_offsets(&db).await;
    assert_eq!(
        stored_before.len(),
        PARTITIONS as usize,
        "every partition has a stored offset: {stored_before:?}"
    );

    let scraped_before = processor.final_scrape().await;
    services.broker.delete_topic(USAGE_TOPIC).await;
    services.broker.create_topic(USAGE_TOPIC, PARTITIONS).await;

    // After: fewer events than any partition's stored offset, all accepted.
    let after = Ledger::new();
    send(&UsageClient::new(&gateway.url, &after), &mut rng, 20).await;

    // The processor notices, says so, and holds the partitions. With the test broker, librdkafka
    // can crash (SIGSEGV in its metadata cache) on the fetch answers for the deleted topic; a
    // supervisor would start the processor again, and so does this test. The restarted one must
    // hold the partitions just the same.
    let mut restarted = false;
    let found = wait_for(STARTUP, || {
        let log = processor.process.log_contents();
        let running = processor.process.is_running();
        async move { log.contains(AHEAD) || !running }
    })
    .await;
    assert!(
        found,
        "no error within {STARTUP:?}:\n{}",
        processor.process.log_tail()
    );
    if !processor.process.is_running() {
        eprintln!(
            "the processor exited ({:?}) after the topic was deleted; starting it again",
            processor.process.try_status()
        );
        processor = services.processor("processor-restarted", &[]);
        restarted = true;
    }
    let log = processor.process.wait_for_log(AHEAD, STARTUP).await;
    for partition in 0..PARTITIONS {
        let series = blocked_series(partition);
        let blocked = wait_for(STARTUP, || async {
            metric(&processor, &series).await == Some(1.0)
        })
        .await;
        assert!(
            blocked,
            "{series} is not 1; log:\n{}",
            processor.process.log_tail()
        );
    }
    let error_line = log
        .lines()
        .find(|line| line.contains(AHEAD))
        .unwrap_or_default();
    for field in [
        "topic=usage-events",
        "partition=",
        "stored_offset=",
        "low_watermark=",
        "high_watermark=",
    ] {
        assert!(
            error_line.contains(field),
            "{field} missing in {error_line}"
        );
    }
    assert!(
        error_line.contains("ERROR"),
        "logged as an error: {error_line}"
    );
    assert_eq!(
        stored_offsets(&db).await,
        stored_before,
        "nothing consumed from the recreated topic moved the stored offsets"
    );
    assert_eq!(
        e2e::ledger_check::row_count(&db).await,
        before.len() as i64,
        "nothing from the recreated topic was stored"
    );

    // The operator's view and a dry run.
    let shown = processor_command(&services, &["offsets", "show"]).await;
    for partition in 0..PARTITIONS {
        let stored = stored_before[&partition];
        assert!(
            shown.lines().any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.first() == Some(&USAGE_TOPIC)
                    && words.get(1) == Some(&partition.to_string().as_str())
                    && words.get(2) == Some(&stored.to_string().as_str())
                    && line.contains("ahead of the log")
            }),
            "offsets show lists partition {partition} at {stored}, ahead of the log:\n{shown}"
        );
    }
    let dry_run = processor_command(
        &services,
        &["offsets", "reset", "--to", "earliest", "--dry-run"],
    )
    .await;
    assert!(dry_run.contains("dry run"), "{dry_run}");
    assert_eq!(
        stored_offsets(&db).await,
        stored_before,
        "a dry run changes nothing"
    );

    // The reset: the running processor resumes from the new log's start.
    let reset = processor_command(&services, &["offsets", "reset", "--to", "earliest"]).await;
    eprintln!("offsets reset:\n{reset}");
    let everything = Ledger::new();
    everything.acknowledge(&before.snapshot().into_values().collect::<Vec<_>>());
    everything.acknowledge(&after.snapshot().into_values().collect::<Vec<_>>());
    wait_for_rows(&db, everything.len(), CATCH_UP).await;
    for partition in 0..PARTITIONS {
        let series = blocked_series(partition);
        let released = wait_for(STARTUP, || async {
            metric(&processor, &series).await == Some(0.0)
        })
        .await;
        assert!(released, "{series} is back to 0");
    }
    processor.process.assert_running();
    let counters = if restarted {
        CounterEvidence {
            complete: vec![processor.final_scrape().await],
            partial: vec![scraped_before],
            complete_since: Some(processor.spawned_at),
        }
    } else {
        CounterEvidence {
            complete: vec![processor.final_scrape().await],
            ..CounterEvidence::default()
        }
    };
    check_ledger(&db, &everything, &counters).await;
}

/// Tenant → partition, from the rows stored so far (the record key is the tenant).
async fn tenant_partitions(db: &tokio_postgres::Client) -> BTreeMap<String, i32> {
    db.query(
        "SELECT DISTINCT tenant_id::text, source_partition FROM gateway_mode_audit",
        &[],
    )
    .await
    .expect("read tenants")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// How many of `ids` are stored.
async fn stored_among(db: &tokio_postgres::Client, ids: &[String]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM gateway_mode_audit WHERE id::text = ANY($1)",
        &[&ids],
    )
    .await
    .expect("count ids")
    .get(0)
}

/// A database restored from a backup newer than the log (simulated by moving one partition's
/// stored offset past the log's end) while a processor runs: at the next assignment the running
/// processor holds exactly that partition, keeps consuming the other one, and resumes the held
/// one in place once an operator resets it; every event lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_beyond_the_log_holds_only_its_partition_until_reset() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let db = services.database.client().await;
    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("a_stored_offset_beyond_the_log");
    send(&client, &mut rng, 60).await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let partitions = tenant_partitions(&db).await;
    assert!(
        (0..PARTITIONS).all(|p| partitions.values().any(|v| *v == p)),
        "both partitions carry tenants: {partitions:?}"
    );
    let held = 0;

    db.execute(
        "UPDATE ingest_offsets SET next_offset = next_offset + 1000 WHERE partition = $1",
        &[&held],
    )
    .await
    .expect("move the stored offset past the log");
    // A second member joins and leaves: two rebalances, after which the running processor owns
    // both partitions again, assigned from the database.
    let assignments = |p: &Processor| {
        p.process
            .log_contents()
            .matches("partitions assigned at stored offsets")
            .count()
    };
    let before = assignments(&processor);
    let mut second = services.processor("processor-2", &[]);
    second.wait_assigned(STARTUP).await;
    let second_counters = second.final_scrape().await;
    second.process.shutdown(Duration::from_secs(20)).await;
    let reassigned = wait_for(STARTUP, || {
        let count = assignments(&processor);
        async move { count >= before + 2 }
    })
    .await;
    assert!(
        reassigned,
        "no new assignment:\n{}",
        processor.process.log_tail()
    );
    let series = blocked_series(held);
    let blocked = wait_for(STARTUP, || async {
        metric(&processor, &series).await == Some(1.0)
    })
    .await;
    assert!(
        blocked,
        "{series} is not 1:\n{}",
        processor.process.log_tail()
    );
    assert_eq!(
        metric(&processor, &blocked_series(1)).await,
        Some(0.0),
        "the other partition is consumed"
    );

    // New events: those on the consumed partition land, those on the held one wait.
    let sent_before = ledger.snapshot();
    send(&client, &mut rng, 40).await;
    let new: Vec<Expected> = ledger
        .snapshot()
        .into_values()
        .filter(|e| !sent_before.contains_key(&e.key()))
        .collect();
    let on = |partition: i32| -> Vec<String> {
        new.iter()
            .filter(|e| partitions.get(&e.tenant) == Some(&partition))
            .map(|e| e.id.clone())
            .collect()
    };
    let (held_ids, flowing_ids) = (on(held), on(1));
    assert!(
        !held_ids.is_empty() && !flowing_ids.is_empty(),
        "new events on both partitions"
    );
    let flowing = wait_for(CATCH_UP, || async {
        stored_among(&db, &flowing_ids).await == flowing_ids.len() as i64
    })
    .await;
    assert!(flowing, "the consumed partition's events landed");
    assert_eq!(
        stored_among(&db, &held_ids).await,
        0,
        "nothing of the held partition was stored"
    );

    // The reset releases it in place: no restart, the other partition keeps its position.
    processor_command(
        &services,
        &["offsets", "reset", "--to", "earliest", "--partition", "0"],
    )
    .await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let released = wait_for(STARTUP, || async {
        metric(&processor, &series).await == Some(0.0)
    })
    .await;
    assert!(released, "{series} back to 0");
    processor
        .process
        .wait_for_log("consuming the partition", STARTUP)
        .await;
    processor.process.assert_running();
    let counters = CounterEvidence {
        complete: vec![processor.final_scrape().await],
        partial: vec![second_counters],
        complete_since: None,
    };
    check_ledger(&db, &ledger, &counters).await;
}

const REPLACED: &str = "the log holds another record where the last stored one was";

/// The topic deleted and recreated while no processor runs, and the new log already past the
/// stored offset when a processor is assigned it (events of one tenant arrive while the new
/// processor joins the group): the watermarks agree with the stored offset, so only the record
/// the stored offset passed, read back, tells the logs apart. The partition must be held with an
/// error line, and nothing of the new log counted as processed; a reset then brings in all 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_recreated_while_stopped_and_refilled_first_is_held_not_skipped() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let db = services.database.client().await;
    let mut rng = Rng::from_env("a_topic_recreated_while_stopped");
    let one_tenant = ["t-solo"];
    let send_solo = |ledger: &Ledger, rng: &mut Rng, requests: usize| {
        let batches: Vec<Vec<Expected>> = (0..requests)
            .map(|_| {
                (0..10)
                    .map(|_| Expected::random(rng, &one_tenant))
                    .collect()
            })
            .collect();
        let client = UsageClient::new(&gateway.url, ledger);
        async move {
            for events in batches {
                client
                    .send_until_accepted(&events, Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| panic!("sending events: {e}"));
            }
        }
    };

    let before = Ledger::new();
    send_solo(&before, &mut rng, 1).await;
    wait_for_rows(&db, before.len(), CATCH_UP).await;
    let partition = tenant_partitions(&db).await["t-solo"];
    let stored_before = stored_offsets(&db).await;
    assert_eq!(
        stored_before.get(&partition),
        Some(&10),
        "{stored_before:?}"
    );
    let scraped_before = processor.final_scrape().await;
    processor.process.shutdown(Duration::from_secs(30)).await;

    services.broker.delete_topic(USAGE_TOPIC).await;
    services.broker.create_topic(USAGE_TOPIC, PARTITIONS).await;
    let mut processor = services.processor("processor-after", &[]);
    // 50 events of the tenant while the processor joins the group: its partition's new log
    // reaches past the stored offset 10 before it is assigned.
    let after = Ledger::new();
    send_solo(&after, &mut rng, 5).await;

    let everything = Ledger::new();
    everything.acknowledge(&before.snapshot().into_values().collect::<Vec<_>>());
    everything.acknowledge(&after.snapshot().into_values().collect::<Vec<_>>());
    let settled = wait_for(CATCH_UP, || {
        let log = processor.process.log_contents();
        let db = &db;
        let expected = everything.len() as i64;
        async move { log.contains(REPLACED) || e2e::ledger_check::row_count(db).await == expected }
    })
    .await;
    assert!(
        settled,
        "neither all {} events stored nor the partition held: {} rows; log:\n{}",
        everything.len(),
        e2e::ledger_check::row_count(&db).await,
        processor.process.log_tail()
    );
    if processor.process.log_contents().contains(REPLACED) {
        let line = processor
            .process
            .log_contents()
            .lines()
            .find(|line| line.contains(REPLACED))
            .unwrap_or_default()
            .to_owned();
        assert!(line.contains("ERROR"), "logged as an error: {line}");
        assert!(
            line.contains(&format!("partition={partition}")),
            "names the partition: {line}"
        );
        let series = format!(
            "tokenledger_partition_blocked{{partition=\"{partition}\",reason=\"log_replaced\"}}"
        );
        let blocked = wait_for(STARTUP, || async {
            metric(&processor, &series).await == Some(1.0)
        })
        .await;
        assert!(blocked, "{series} is not 1");
        assert_eq!(
            e2e::ledger_check::row_count(&db).await,
            before.len() as i64,
            "nothing of the new log was stored"
        );
        assert_eq!(
            stored_offsets(&db).await,
            stored_before,
            "nothing of the new log was counted as processed"
        );
        let shown = processor_command(&services, &["offsets", "show"]).await;
        assert!(shown.contains("log replaced"), "{shown}");
        processor_command(&services, &["offsets", "reset", "--to", "earliest"]).await;
    }
    wait_for_rows(&db, everything.len(), CATCH_UP).await;
    processor.process.assert_running();
    let counters = CounterEvidence {
        complete: vec![processor.final_scrape().await],
        partial: vec![scraped_before],
        complete_since: Some(processor.spawned_at),
    };
    check_ledger(&db, &everything, &counters).await;
}
