//! Parallel writers (`batch.writers`): several batch transactions in flight at once, each over
//! its own partitions, must count every event exactly once even when one tenant's events are on
//! every partition, so that several writers add to the same budget spend and rollup rows at the
//! same time, and when a consumer-group rebalance moves partitions while batches are in flight.
//!
//! - `parallel_writers_count_a_tenant_spread_over_every_partition_once`: gateway traffic (keyed
//!   by tenant), then the same tenants' events produced straight to the topic round-robin over
//!   every partition, one in ten of them also to a second partition (the same event in two
//!   writers' batches at once), under budgets whose thresholds are crossed; a second processor
//!   joins half-way, so the group rebalances while the first one's writers commit. Then
//!   `check_ledger`: every event stored once with its content, rollups, budget spend and
//!   crossings equal to the raw sums, and the two processors' counters adding up exactly; and
//!   no deadlock, neither in the database's log nor as a batch the processors retried.
//!
//! The two producers take turns rather than writing at once: tansu, the test broker, can answer
//! a fetch with a record one connection appended while an earlier offset another connection is
//! appending is not yet readable, so a consumer at the end of the partition skips that record
//! (`tests/support/broker.rs`). That would test the broker, not the writers.

use std::time::Duration;

use e2e::ledger_check::{
    check_ledger, install_budgets, wait_for_rows, CounterEvidence, Expected, Ledger, Rng,
};
use e2e::usage::{Load, LoadShape, Services, UsageClient, USAGE_TOPIC};
use e2e::wait_for;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 4;
const STARTUP: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(120);
/// Events taken through the gateway before the direct producer starts: a fixed amount, so the
/// work (and the run time) does not grow with how long the rebalance takes on a slow machine.
const GATEWAY_EVENTS: usize = 4_000;

/// Writers and pool of the processors under test: more writers than one processor ends up
/// with partitions after the rebalance, small batches so that many transactions overlap.
const WRITER_ENV: [(&str, &str); 3] = [
    ("TOKENLEDGER_BATCH__WRITERS", "4"),
    ("TOKENLEDGER_DATABASE__POOL_SIZE", "6"),
    ("TOKENLEDGER_BATCH__MAX_EVENTS", "40"),
];

/// Produces `event` to `partition` in the Kafka contract's HTTP shape, as a producer other than
/// the gateway may (the record's timestamp stands in for `received_at`).
async fn produce(producer: &FutureProducer, event: &Expected, partition: i32) {
    let value = serde_json::to_vec(&event.json()).expect("json");
    producer
        .send(
            FutureRecord::<str, [u8]>::to(USAGE_TOPIC)
                .partition(partition)
                .key(event.tenant.as_str())
                .payload(value.as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "schema",
                    value: Some("usage.v1"),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("the broker takes the event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_count_a_tenant_spread_over_every_partition_once() {
    let mut services = Services::start(PARTITIONS).await;
    let db = services.database.client().await;
    install_budgets(&db).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut first = services.processor("first", &WRITER_ENV);
    first.wait_assigned(STARTUP).await;

    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("writers");
    let shape = LoadShape::default();
    let tenants: Vec<&str> = shape.tenants.iter().map(String::as_str).collect();
    let load = Load::start(&client, &shape, &mut rng);
    let enough = wait_for(STARTUP, || async { ledger.len() >= GATEWAY_EVENTS }).await;
    let requests = load.stop().await;
    assert!(
        enough,
        "the gateway acknowledged only {} events in {STARTUP:?}",
        ledger.len()
    );
    assert!(requests > 20, "only {requests} gateway requests completed");

    let producer: FutureProducer = services.broker.client_config().create().expect("producer");
    let mut second = None;
    let mut scattered = 0;
    for n in 0..1_200 {
        let event = Expected::random(&mut rng, &tenants);
        let partition = n % PARTITIONS;
        produce(&producer, &event, partition).await;
        if n % 10 == 0 {
            produce(&producer, &event, (partition + 1) % PARTITIONS).await;
        }
        ledger.acknowledge(std::slice::from_ref(&event));
        scattered += 1;
        if n == 600 {
            // The rebalance lands while the first processor's writers are committing.
            let mut joined = services.processor("second", &WRITER_ENV);
            joined.wait_assigned(STARTUP).await;
            second = Some(joined);
        }
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut second = second.expect("the second processor joined");
    assert_eq!(scattered, 1_200);

    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    // Both processors have counted every batch they committed before the scrapes below.
    let settled = wait_for(CATCH_UP, || async {
        let (Some(a), Some(b)) = (first.scrape().await, second.scrape().await) else {
            return false;
        };
        a.inserted + b.inserted == ledger.len() as i64
    })
    .await;
    assert!(
        settled,
        "inserted counters {:?} + {:?} never reached the {} acknowledged events",
        first.scrape().await.map(|c| c.inserted),
        second.scrape().await.map(|c| c.inserted),
        ledger.len()
    );
    let counters = CounterEvidence {
        complete: vec![first.final_scrape().await, second.final_scrape().await],
        ..CounterEvidence::default()
    };
    assert!(
        counters.complete.iter().map(|c| c.duplicates).sum::<i64>() >= 120,
        "the events produced to two partitions were not all found stored: {:?}",
        counters.complete
    );
    check_ledger(&db, &ledger, &counters).await;
    assert!(
        first.process.log_contents().contains("partitions revoked"),
        "the second processor's join did not move partitions away from the first"
    );

    // Shared rows are locked in one global order, so writers queue and never deadlock: a
    // deadlock the processor retried would leave the counts exact but is a latency bug.
    let server_deadlocks = services
        .database
        .process()
        .map(|postgres| postgres.log_contents().matches("deadlock detected").count())
        .unwrap_or_default();
    let retried: usize = [&first, &second]
        .iter()
        .map(|p| {
            p.process
                .log_contents()
                .lines()
                .filter(|l| l.contains("retrying the same batch") && l.contains("40P01"))
                .count()
        })
        .sum();
    eprintln!(
        "writers: {} events, deadlocks in the server log {server_deadlocks}, batches retried \
         after a deadlock {retried}",
        ledger.len()
    );
    assert_eq!(
        (server_deadlocks, retried),
        (0, 0),
        "deadlocks (server log, processor retries)"
    );
}
