//! `tokenledger-work`: the processor's own work per event, without I/O:
//! what the batch preparation (decode, re-validate, price, content hash,
//! in-batch dedupe), the COPY encoder and the optimization rollup's rows
//! (`store::optimize::rollup`) cost on the benchmark's events, in
//! CPU time of the one thread doing it, with the processor's allocator.
//! Apart from librdkafka (the raw-consume floor) and the database, this is
//! the processor's CPU per event; it is also a steady target for a
//! profiler (`perf record -g tokenledger-work`), which the whole stack on
//! shared cores is not.

use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use chrono::Utc;
use clap::Parser;
use ledger::{PriceBook, PricingStatus, UsageEvent, ValidationLimits, KAFKA_SCHEMA};
use loadgen::traffic::{TrafficConfig, TrafficGenerator};
use processor::prepare::{Preparer, PricedEvent};
use processor::record::Record;
use store::optimize::rollup::{rollup, StoredRow};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure the processor's CPU per event without I/O.
#[derive(Debug, Parser)]
struct Args {
    /// Events per repeat.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Repeats; the median is reported.
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Records per batch, as `batch.max_events`.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
}

/// CPU time of the calling thread (scheduler statistics, nanoseconds).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Events as the gateway produces them (the load generator's traffic,
/// validated by the gateway's parser), as Kafka records.
fn records(count: usize) -> anyhow::Result<Vec<Record>> {
    let mut generator = TrafficGenerator::new(TrafficConfig {
        seed: 7,
        ..TrafficConfig::default()
    })?;
    let limits = ValidationLimits::default();
    let mut events: Vec<UsageEvent> = Vec::with_capacity(count);
    while events.len() < count {
        let now = Utc::now();
        let batch: Vec<serde_json::Value> = (0..100).map(|_| generator.next_event(now)).collect();
        let body = serde_json::to_vec(&batch)?;
        let mut parsed = ledger::event::parse_batch(&body, now, &limits)
            .map_err(|error| anyhow::anyhow!("generated traffic does not validate: {error}"))?;
        for event in &mut parsed {
            event.request_id = Some(uuid::Uuid::now_v7().to_string());
            event.received_at = now;
        }
        events.extend(parsed);
    }
    events.truncate(count);
    Ok(events
        .iter()
        .enumerate()
        .map(|(index, event)| Record {
            topic: "usage-events".into(),
            partition: (index % 12) as i32,
            offset: (index / 12) as i64,
            key: Some(event.tenant_id.as_bytes().to_vec()),
            value: Some(event.to_kafka_value()),
            schema: Some(KAFKA_SCHEMA.as_bytes().to_vec()),
            timestamp_ms: Some(event.received_at.timestamp_millis()),
        })
        .collect())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let book = PriceBook::builtin().context("the built-in price book")?;
    let template = records(args.events)?;
    let per_100k = |elapsed: Duration| elapsed.as_secs_f64() / args.events as f64 * 100_000.0;
    let (mut prepare_s, mut encode_s, mut optimize_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut preparer = Preparer::with_capacity(&book, args.batch);
    let mut buffer = BytesMut::new();
    for _ in 0..args.repeats {
        // The copy of the records is the consumer thread's, not measured.
        let mut input = template.clone().into_iter();
        let (mut preparing, mut encoding, mut optimizing) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        loop {
            let chunk: Vec<Record> = input.by_ref().take(args.batch).collect();
            if chunk.is_empty() {
                break;
            }
            let started = thread_cpu();
            for record in chunk {
                preparer.push(record);
            }
            let batch = preparer.take();
            let prepared = thread_cpu();
            let rows: Vec<&PricedEvent> = batch.unique.iter().collect();
            buffer.clear();
            processor::write::copy::encode_rows(&rows, &mut buffer)
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            std::hint::black_box(&buffer);
            let encoded = thread_cpu();
            let stored: Vec<StoredRow<'_>> = rows
                .iter()
                .map(|row| StoredRow {
                    event: &row.event,
                    cost: row.cost.usd,
                    unpriced: row.cost.status == PricingStatus::Unpriced,
                })
                .collect();
            std::hint::black_box(rollup(&book, &stored));
            drop(stored);
            drop(rows);
            drop(batch);
            let optimized = thread_cpu();
            preparing += prepared - started;
            encoding += encoded - prepared;
            optimizing += optimized - encoded;
        }
        prepare_s.push(per_100k(preparing));
        encode_s.push(per_100k(encoding));
        optimize_s.push(per_100k(optimizing));
    }
    let (prepare, encode, optimize) = (
        median(prepare_s.clone()),
        median(encode_s.clone()),
        median(optimize_s.clone()),
    );
    println!(
        "processor work without I/O, {} events × {} repeats, batches of {}: \
         prepare {prepare:.3} + encode {encode:.3} + optimization rows {optimize:.3} \
         = {:.3} CPU-s per 100k events (medians)",
        args.events,
        args.repeats,
        args.batch,
        prepare + encode + optimize
    );
    println!("prepare per repeat: {prepare_s:.3?}");
    println!("encode per repeat: {encode_s:.3?}");
    println!("optimization rows per repeat: {optimize_s:.3?}");
    Ok(())
}
