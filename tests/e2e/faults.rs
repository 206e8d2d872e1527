//! Faults under load, end to end: the real gateway and processor binaries against tansu and
//! PostgreSQL + TimescaleDB, with a fault-injecting proxy (tests/support/proxy.rs) on the broker's and
//! the database's links. Every scenario ends with one `check_ledger`: the database holds exactly
//! the events the gateway answered 202 for, once each; rollups, budget spend and crossings, and
//! the processors' counters agree (docs/design.md, "Guarantees and failure modes").
//!
//! - `broker_outage`: the broker's link refused, then blackholed, while clients keep sending.
//! - `database_outage`: the database stopped while events keep flowing.
//! - `processor_sigkill_under_load`: five SIGKILLs at seeded random points, two or more with the
//!   commit durable and its answer still on the wire.
//! - `rebalance_kill_and_join`: two processors, one SIGKILLed, a third joins.
//! - `slow_database_backpressure`: throttled database and broker links; bounded memory, 503 +
//!   Retry-After from the gateway.
//! - `graceful_shutdown_under_load`: SIGTERM to a gateway and a processor under load.

use std::time::{Duration, Instant, SystemTime};

use e2e::ledger_check::{check_ledger, wait_for_rows, CounterEvidence, Ledger, Rng};
use e2e::usage::{memory_kib, wait_for_flow, Load, LoadShape, Processor, Services, UsageClient};
use e2e::{wait_for, ProxyMode, Shaping};

const PARTITIONS: i32 = 4;
const STARTUP: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(90);

/// Attempts that started at or after `from` and finished before `until`, by status.
fn statuses_within(client: &UsageClient, from: Instant, until: Instant) -> Vec<Option<u16>> {
    client
        .attempts()
        .into_iter()
        .filter(|a| a.started >= from && a.finished < until)
        .map(|a| a.status)
        .collect()
}

/// Waits until some request that started after `after` was answered 202.
async fn wait_for_a_202(client: &UsageClient, after: Instant, timeout: Duration, what: &str) {
    let ok = wait_for(timeout, || async {
        client
            .attempts()
            .iter()
            .any(|a| a.started >= after && a.status == Some(202))
    })
    .await;
    assert!(ok, "no 202 within {timeout:?} after {what}");
}

/// Scenario 1: the broker becomes unreachable twice while four clients keep sending, first
/// refusing connections (a dead host), then swallowing them (a partition). While it is
/// unreachable the gateway answers 503 + Retry-After and never 202; it is not ready; it recovers
/// by itself; every 202'd event lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage() {
    let services = Services::start(PARTITIONS).await;
    let mut gateway = services
        .gateway(
            "gateway",
            &[("TOKENLEDGER_KAFKA__MESSAGE_TIMEOUT_MS", "3000")],
        )
        .await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;

    let ledger = Ledger::new();
    let mut client = UsageClient::new(&gateway.url, &ledger);
    client.max_retry_wait = Duration::from_secs(1);
    let mut rng = Rng::from_env("broker_outage");
    let load = Load::start(&client, &LoadShape::default(), &mut rng);
    wait_for_flow(&ledger, &[&processor], "before the outage").await;

    for mode in [ProxyMode::Refuse, ProxyMode::Blackhole] {
        let cut = Instant::now();
        services.broker_proxy.set_mode(mode);
        let readyz_url = format!("{}/readyz", gateway.url);
        let not_ready = wait_for(Duration::from_secs(15), || async {
            reqwest::get(&readyz_url)
                .await
                .is_ok_and(|r| r.status().as_u16() == 503)
        })
        .await;
        assert!(
            not_ready,
            "{mode:?}: /readyz did not answer 503 during the outage"
        );
        // The outage lasts until requests made during it have been answered 503.
        let refused = wait_for(Duration::from_secs(30), || async {
            statuses_within(&client, cut, Instant::now())
                .iter()
                .filter(|s| **s == Some(503))
                .count()
                >= 3
        })
        .await;
        assert!(refused, "{mode:?}: no 503 during the outage");
        let restored = Instant::now();
        services.broker_proxy.set_mode(ProxyMode::Forward);

        let during = statuses_within(&client, cut, restored);
        let accepted = during.iter().filter(|s| **s == Some(202)).count();
        let unavailable = during.iter().filter(|s| **s == Some(503)).count();
        assert_eq!(
            accepted, 0,
            "{mode:?}: requests sent and answered during the outage got 202: {during:?}"
        );
        assert!(
            unavailable > 0,
            "{mode:?}: no 503 during the outage: {during:?}"
        );
        assert!(
            during.iter().all(|s| *s == Some(503)),
            "{mode:?}: answers during the outage: {during:?}"
        );
        wait_for_a_202(
            &client,
            restored,
            Duration::from_secs(30),
            "the broker came back",
        )
        .await;
        gateway.wait_ready(Duration::from_secs(10)).await;
        wait_for_flow(&ledger, &[&processor], "after the outage").await;
    }
    let requests = load.stop().await;
    assert!(requests > 20, "only {requests} requests completed");
    let retry_after_ok = client
        .attempts()
        .iter()
        .filter(|a| a.status == Some(503))
        .all(|a| a.retry_after.is_some() && a.body["message"].is_string());
    assert!(
        retry_after_ok,
        "every 503 carries Retry-After and a message"
    );

    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    gateway.process.assert_running();
    processor.process.assert_running();
    let counters = CounterEvidence {
        complete: vec![processor.final_scrape().await],
        ..CounterEvidence::default()
    };
    check_ledger(&db, &ledger, &counters).await;
    eprintln!(
        "broker_outage: {} events in {requests} requests, {} attempts; producer replaced {} times",
        ledger.len(),
        client.attempts().len(),
        gateway
            .process
            .log_contents()
            .matches("replaced it with a new one")
            .count()
    );
}

/// Sum of the stored next offsets, read on a direct (unproxied) connection.
async fn stored_offsets(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT COALESCE(sum(next_offset), 0)::BIGINT FROM ingest_offsets",
        &[],
    )
    .await
    .map(|row| row.get(0))
    .unwrap_or(-1)
}

/// Scenario 2: the database stops while events keep flowing. The processor keeps running (same
/// process), retries the same batch with backoff instead of spinning, reports itself not ready,
/// stores nothing meanwhile, and catches up when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage() {
    let mut services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;

    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("database_outage");
    let shape = LoadShape {
        clients: 2,
        ..LoadShape::default()
    };
    let load = Load::start(&client, &shape, &mut rng);
    wait_for_flow(&ledger, &[&processor], "before the outage").await;

    let pid = processor.process.pid();
    let retries_logged = |p: &Processor| {
        p.process
            .log_contents()
            .matches("batch transaction failed; retrying the same batch")
            .count()
    };
    let before = stored_offsets(&services.database.client().await).await;
    services.database.stop().await;
    let outage = Duration::from_secs(12);
    let down_at = Instant::now();
    let readyz_url = format!("{}/readyz", processor.metrics_url);
    let not_ready = wait_for(outage, || async {
        reqwest::get(&readyz_url)
            .await
            .is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    assert!(
        not_ready,
        "the processor is not ready while it cannot commit"
    );
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    processor.process.assert_running();
    assert_eq!(processor.process.pid(), pid);
    let attempts = retries_logged(&processor);
    // 100 ms doubling to 10 s: about seven attempts in twelve seconds; a tight loop would log
    // hundreds.
    assert!(
        (2..=15).contains(&attempts),
        "{attempts} retries in {outage:?}: expected capped exponential backoff"
    );

    services.database.start_again().await;
    let db = services.database.client().await;
    let caught_up = wait_for(CATCH_UP, || async { stored_offsets(&db).await > before }).await;
    assert!(
        caught_up,
        "the processor did not commit after the database came back"
    );
    wait_for_flow(&ledger, &[&processor], "after the outage").await;
    let requests = load.stop().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    processor.process.assert_running();
    assert_eq!(
        processor.process.pid(),
        pid,
        "the processor never restarted"
    );
    let counters = processor.final_scrape().await;
    assert!(
        counters.db_retries > 0,
        "tokenledger_db_retries_total stayed 0"
    );
    // A commit whose answer was lost with the connection is stored but, retried, looks like
    // duplicates to the processor, so its counters can be short by that batch (see
    // docs/design.md); only then is the counter check a bound instead of an equality.
    let log = processor.process.log_contents();
    let ambiguous_commit = log.contains("during commit") || log.contains("step commit");
    let evidence = CounterEvidence {
        complete: vec![counters],
        partial: Vec::new(),
        complete_since: ambiguous_commit.then(SystemTime::now),
    };
    check_ledger(&db, &ledger, &evidence).await;
    eprintln!(
        "database_outage: {} events in {requests} requests, {attempts} batch retries, ambiguous commit: {ambiguous_commit}",
        ledger.len()
    );
}

const KILLS: usize = 5;

/// Scenario 3: the processor is SIGKILLed five times under load at seeded random points; at
/// least two kills land after a batch's commit is durable while its answer is still on the
/// wire (the database link holds the server's bytes back), so the process dies before anything
/// that follows the commit. Every restart resumes from the stored offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkill_under_load() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    // Small batches, so that a held-back answer delays a batch by a fraction of a second.
    let env = [("TOKENLEDGER_BATCH__MAX_EVENTS", "500")];
    let mut processor = services.processor("processor-0", &env);
    processor.wait_assigned(STARTUP).await;
    let db = services.database.client().await;

    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("processor_sigkill_under_load");
    let shape = LoadShape {
        clients: 3,
        ..LoadShape::default()
    };
    let load = Load::start(&client, &shape, &mut rng);
    let mut partial = Vec::new();
    let mut after_commit_kills = 0;
    for round in 1..=KILLS {
        let after_commit = round == 2 || round == 4 || rng.chance(1, 3);
        if after_commit {
            services.db_proxy.set_shaping(Shaping {
                downstream_delay: Duration::from_millis(150),
                ..Shaping::NONE
            });
            let baseline = stored_offsets(&db).await;
            // Poll the stored offsets on a direct connection: the first change is a commit
            // whose answer the proxy is still holding.
            let deadline = Instant::now() + Duration::from_secs(30);
            while stored_offsets(&db).await <= baseline {
                assert!(Instant::now() < deadline, "no commit within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            processor.process.kill9();
            services.db_proxy.set_shaping(Shaping::NONE);
            after_commit_kills += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.range(200, 3_000))).await;
            if let Some(counters) = processor.scrape().await {
                partial.push(counters);
            }
            processor.process.kill9();
        }
        eprintln!(
            "round {round}: SIGKILL {} after {} logged commits",
            if after_commit {
                "with a commit on the wire"
            } else {
                "at a random point"
            },
            processor.commits_logged()
        );
        processor = services.processor(&format!("processor-{round}"), &env);
        processor.wait_assigned(STARTUP).await;
    }
    wait_for_flow(&ledger, &[&processor], "after the last restart").await;
    let requests = load.stop().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    processor.process.assert_running();
    let evidence = CounterEvidence {
        complete: vec![processor.final_scrape().await],
        partial,
        complete_since: Some(processor.spawned_at),
    };
    check_ledger(&db, &ledger, &evidence).await;
    eprintln!(
        "processor_sigkill_under_load: {} events in {requests} requests, {KILLS} kills, {after_commit_kills} with a commit on the wire",
        ledger.len()
    );
}

/// The partitions of the last assignment `processor` logged, and how many it logged.
fn last_assignment(processor: &Processor) -> (usize, String) {
    let log = processor.process.log_contents();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("partitions assigned at stored offsets"))
        .collect();
    let partitions = lines
        .last()
        .and_then(|l| l.split("partitions=").nth(1))
        .and_then(|rest| rest.split(']').next())
        .map(|p| format!("{p}]"))
        .unwrap_or_default();
    (lines.len(), partitions)
}

async fn wait_for_assignment(processor: &mut Processor, after: usize, want: &str) {
    let ok = wait_for(STARTUP, || async {
        let (count, partitions) = last_assignment(processor);
        count > after && (want.is_empty() || partitions == want) && partitions != "[]"
    })
    .await;
    if !ok {
        processor.process.assert_running();
        panic!(
            "{} did not take partitions {want:?}; last assignment {:?}",
            processor.process.name(),
            last_assignment(processor)
        );
    }
}

/// Scenario 4: two processors share the group; one is SIGKILLed and the other takes over all
/// its partitions; later a third joins and takes some back. Nothing is lost or stored twice
/// across the rebalances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_kill_and_join() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut first = services.processor("processor-a", &[]);
    let mut second = services.processor("processor-b", &[]);
    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("rebalance_kill_and_join");
    let shape = LoadShape {
        clients: 3,
        ..LoadShape::default()
    };
    let load = Load::start(&client, &shape, &mut rng);
    // Both members hold partitions once the group has settled.
    let settled = wait_for(STARTUP, || async {
        let (a, pa) = last_assignment(&first);
        let (b, pb) = last_assignment(&second);
        a > 0 && b > 0 && pa != "[]" && pb != "[]" && pa != pb
    })
    .await;
    assert!(
        settled,
        "the two processors did not share the partitions: {:?} {:?}",
        last_assignment(&first),
        last_assignment(&second)
    );
    wait_for_flow(&ledger, &[&first, &second], "two members").await;

    let mut partial = Vec::new();
    partial.extend(first.scrape().await);
    first.process.kill9();
    let killed_at = SystemTime::now();
    let (assignments, _) = last_assignment(&second);
    wait_for_assignment(&mut second, assignments, "[0, 1, 2, 3]").await;
    wait_for_flow(&ledger, &[&second], "the survivor alone").await;

    let (assignments, _) = last_assignment(&second);
    let mut third = services.processor("processor-c", &[]);
    wait_for_assignment(&mut third, 0, "").await;
    wait_for_assignment(&mut second, assignments, "").await;
    let (_, kept) = last_assignment(&second);
    let (_, taken) = last_assignment(&third);
    assert_ne!(kept, "[0, 1, 2, 3]", "the third processor took nothing");
    wait_for_flow(&ledger, &[&second, &third], "after the join").await;

    let requests = load.stop().await;
    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    second.process.assert_running();
    third.process.assert_running();
    let evidence = CounterEvidence {
        complete: vec![second.final_scrape().await, third.final_scrape().await],
        partial,
        complete_since: Some(killed_at),
    };
    check_ledger(&db, &ledger, &evidence).await;
    eprintln!(
        "rebalance_kill_and_join: {} events in {requests} requests; after the join b={kept} c={taken}",
        ledger.len()
    );
}

/// Samples `(VmRSS, VmHWM)` of each pid every 500 ms until `stop` is set; returns the samples in
/// MiB per pid.
fn sample_memory(
    pids: Vec<u32>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Vec<(u64, u64)>>> {
    tokio::spawn(async move {
        let mut samples = vec![Vec::new(); pids.len()];
        for _ in 0..600 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            for (pid, series) in pids.iter().zip(&mut samples) {
                if let Some((rss, hwm)) = memory_kib(*pid) {
                    series.push((rss / 1024, hwm / 1024));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples
    })
}

/// Scenario 9: the database link is throttled (delay and bandwidth) so the processor falls far
/// behind, and the broker link is throttled too, so the gateway's bounded producer queue fills.
/// The gateway sheds the excess with 503 + Retry-After instead of queueing it; gateway and
/// processor memory stay under a ceiling and flat while the offered load keeps coming; every
/// 202'd event lands once the links are fast again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_database_backpressure() {
    let services = Services::start(PARTITIONS).await;
    let mut gateway = services
        .gateway(
            "gateway",
            &[
                ("TOKENLEDGER_KAFKA__QUEUE_MAX_MESSAGES", "1000"),
                ("TOKENLEDGER_KAFKA__MESSAGE_TIMEOUT_MS", "4000"),
            ],
        )
        .await;
    let mut processor =
        services.processor("processor", &[("TOKENLEDGER_BATCH__MAX_EVENTS", "1000")]);
    processor.wait_assigned(STARTUP).await;

    services.db_proxy.set_shaping(Shaping {
        upstream_delay: Duration::from_millis(20),
        downstream_delay: Duration::from_millis(20),
        bytes_per_second: 256 * 1024,
    });
    services.broker_proxy.set_shaping(Shaping {
        bytes_per_second: 96 * 1024,
        ..Shaping::NONE
    });
    let ledger = Ledger::new();
    let mut client = UsageClient::new(&gateway.url, &ledger);
    client.max_retry_wait = Duration::from_secs(1);
    let mut rng = Rng::from_env("slow_database_backpressure");
    let shape = LoadShape {
        clients: 8,
        batch_min: 50,
        batch_max: 400,
        pause: Duration::ZERO,
        ..LoadShape::default()
    };
    let stop_sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_memory(
        vec![gateway.process.pid(), processor.process.pid()],
        stop_sampling.clone(),
    );
    let overload = Instant::now();
    let load = Load::start(&client, &shape, &mut rng);
    tokio::time::sleep(Duration::from_secs(24)).await;
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.expect("memory sampler");

    services.db_proxy.set_shaping(Shaping::NONE);
    services.broker_proxy.set_shaping(Shaping::NONE);
    let requests = load.stop().await;

    let attempts = client.attempts();
    let during: Vec<_> = attempts.iter().filter(|a| a.started >= overload).collect();
    let shed: Vec<_> = during.iter().filter(|a| a.status == Some(503)).collect();
    let accepted = during.iter().filter(|a| a.status == Some(202)).count();
    assert!(
        !shed.is_empty(),
        "the gateway shed nothing under overload ({} attempts, {accepted} accepted)",
        during.len()
    );
    assert!(accepted > 0, "nothing was accepted under overload");
    for attempt in &shed {
        assert!(
            attempt.retry_after.is_some() && attempt.body["message"].is_string(),
            "a 503 without Retry-After or message: {}",
            attempt.body
        );
    }
    let queue_full = shed
        .iter()
        .filter(|a| a.body["reason"] == "queue_full")
        .count();
    assert!(
        queue_full > 0,
        "no 503 said the queue was full: {:?}",
        shed.first().map(|a| &a.body)
    );
    gateway.process.assert_running();
    processor.process.assert_running();

    // Memory: under a ceiling, and not growing with the load offered (the second half of the
    // overload may not end much higher than the first).
    for (name, series) in ["gateway", "processor"].iter().zip(&samples) {
        assert!(series.len() > 20, "{name}: too few memory samples");
        let peak = series.iter().map(|s| s.1).max().unwrap_or(0);
        let first_half = series[..series.len() / 2]
            .iter()
            .map(|s| s.0)
            .max()
            .unwrap_or(0);
        let second_half = series[series.len() / 2..]
            .iter()
            .map(|s| s.0)
            .max()
            .unwrap_or(0);
        eprintln!("{name}: VmHWM {peak} MiB, VmRSS max {first_half} MiB then {second_half} MiB");
        assert!(peak < 512, "{name}: VmHWM {peak} MiB");
        assert!(
            second_half <= first_half + first_half / 2 + 32,
            "{name}: memory grew from {first_half} MiB to {second_half} MiB under steady overload"
        );
    }

    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let evidence = CounterEvidence {
        complete: vec![processor.final_scrape().await],
        ..CounterEvidence::default()
    };
    check_ledger(&db, &ledger, &evidence).await;
    gateway.wait_ready(Duration::from_secs(5)).await;
    eprintln!(
        "slow_database_backpressure: {} events in {requests} requests; {} attempts under overload, {} shed ({queue_full} queue full)",
        ledger.len(),
        during.len(),
        shed.len()
    );
}

/// Scenario 10: under load, SIGTERM to one of two gateways (clients move to the other) and to the
/// processor (a new one takes over). Each exits successfully within its configured shutdown
/// timeout and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load() {
    const SHUTDOWN_MS: u64 = 5_000;
    let shutdown = SHUTDOWN_MS.to_string();
    let services = Services::start(PARTITIONS).await;
    let gateway_env = [("TOKENLEDGER_HTTP__SHUTDOWN_TIMEOUT_MS", shutdown.as_str())];
    let mut first = services.gateway("gateway-1", &gateway_env).await;
    let second = services.gateway("gateway-2", &gateway_env).await;
    let processor_env = [("TOKENLEDGER_SHUTDOWN_TIMEOUT_MS", shutdown.as_str())];
    let mut processor = services.processor("processor-1", &processor_env);
    processor.wait_assigned(STARTUP).await;

    let ledger = Ledger::new();
    let client = UsageClient::new(&first.url, &ledger);
    client.set_gateways(&[first.url.clone(), second.url.clone()]);
    let mut rng = Rng::from_env("graceful_shutdown_under_load");
    let shape = LoadShape {
        clients: 4,
        ..LoadShape::default()
    };
    let load = Load::start(&client, &shape, &mut rng);
    wait_for_flow(&ledger, &[&processor], "before the shutdowns").await;

    let limit = Duration::from_millis(SHUTDOWN_MS) + Duration::from_secs(2);
    let signalled = Instant::now();
    first.process.sigterm();
    let status = first.process.wait_exit(limit).await;
    let gateway_exit = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway-1 after SIGTERM: {status:?} within {limit:?}; log:\n{}",
        first.process.log_tail()
    );
    wait_for_a_202(
        &client,
        Instant::now(),
        Duration::from_secs(20),
        "gateway-1 stopped",
    )
    .await;

    let mut partial = Vec::new();
    partial.extend(processor.scrape().await);
    let signalled = Instant::now();
    processor.process.sigterm();
    let status = processor.process.wait_exit(limit).await;
    let processor_exit = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "processor-1 after SIGTERM: {status:?} within {limit:?}; log:\n{}",
        processor.process.log_tail()
    );
    assert!(
        processor
            .process
            .log_contents()
            .contains("processor stopped"),
        "processor-1 did not log a clean stop"
    );
    let mut successor = services.processor("processor-2", &processor_env);
    successor.wait_assigned(STARTUP).await;
    wait_for_flow(&ledger, &[&successor], "the successor").await;
    let requests = load.stop().await;

    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let evidence = CounterEvidence {
        complete: vec![successor.final_scrape().await],
        partial,
        complete_since: Some(successor.spawned_at),
    };
    check_ledger(&db, &ledger, &evidence).await;
    let refused_by_stopping = client
        .attempts()
        .iter()
        .filter(|a| a.status == Some(503) && a.body["reason"] == "shutting_down")
        .count();
    eprintln!(
        "graceful_shutdown_under_load: {} events in {requests} requests; gateway exit {gateway_exit:?}, processor exit {processor_exit:?}; {refused_by_stopping} requests refused while stopping",
        ledger.len()
    );
}
