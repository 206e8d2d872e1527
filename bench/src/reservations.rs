//! The reservation scenario: clients reserve against a hard-limited budget
//! over HTTP (`POST /v1/budgets/reservations`) and cancel what they got
//! (`DELETE`), as fast as answers come, for a fixed time. Reported: grants
//! per second and the latency of each call, for one tenant (every grant
//! queues on the same spend row, the worst case) and for many tenants
//! under one every-tenant budget (rows of their own).

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::latency::LatencyMs;
use crate::stack::Stack;

/// One run of the scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ReservationRun {
    pub name: String,
    pub tenants: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub granted: u64,
    pub refused: u64,
    pub failed: u64,
    pub granted_per_second: f64,
    pub reserve_ms: LatencyMs,
    pub cancel_ms: LatencyMs,
}

/// Creates the budgets the runs reserve against: hard limits far above
/// what a run can hold, so every request is a full grant.
pub async fn create_budgets(stack: &Stack) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for budget in [
        json!({"name": "bench-reserve-one", "tenant_id": "bench-reserve", "period": "monthly",
               "amount_usd": "1000000", "hard_limit": true}),
        json!({"name": "bench-reserve-every", "tenant_id": "*", "period": "daily",
               "amount_usd": "1000000", "hard_limit": true}),
    ] {
        let response = client
            .post(format!("{}/v1/budgets", stack.gateway_url))
            .bearer_auth(&stack.api_key)
            .json(&budget)
            .send()
            .await
            .context("creating a bench budget")?;
        anyhow::ensure!(
            response.status().is_success(),
            "creating a bench budget: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// `concurrency` clients, each reserving $0.01 for one of `tenants`
/// tenants and cancelling it, for `duration`.
pub async fn run(
    stack: &Stack,
    name: &str,
    tenants: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ReservationRun> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let started = Instant::now();
    let clients = (0..concurrency).map(|worker| {
        let client = client.clone();
        let url = stack.gateway_url.clone();
        let key = stack.api_key.clone();
        async move {
            let mut reserve = Histogram::<u64>::new(3).expect("histogram");
            let mut cancel = Histogram::<u64>::new(3).expect("histogram");
            let (mut granted, mut refused, mut failed) = (0_u64, 0_u64, 0_u64);
            let mut call = worker;
            while started.elapsed() < duration {
                call += concurrency;
                let tenant = if tenants == 1 {
                    "bench-reserve".to_owned()
                } else {
                    format!("bench-tenant-{}", call % tenants)
                };
                let sent = Instant::now();
                let answer = client
                    .post(format!("{url}/v1/budgets/reservations"))
                    .bearer_auth(&key)
                    .json(&json!({"tenant_id": tenant, "amount_usd": "0.01", "ttl_s": 60}))
                    .send()
                    .await;
                let Ok(answer) = answer else {
                    failed += 1;
                    continue;
                };
                let status = answer.status().as_u16();
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                let _ = reserve.record(sent.elapsed().as_micros() as u64);
                match (status, body["id"].as_str()) {
                    (201, Some(id)) => {
                        granted += 1;
                        let sent = Instant::now();
                        let cancelled = client
                            .delete(format!("{url}/v1/budgets/reservations/{id}"))
                            .bearer_auth(&key)
                            .send()
                            .await;
                        if cancelled.is_ok_and(|c| c.status().as_u16() == 204) {
                            let _ = cancel.record(sent.elapsed().as_micros() as u64);
                        } else {
                            failed += 1;
                        }
                    }
                    (409, _) => refused += 1,
                    _ => failed += 1,
                }
            }
            (reserve, cancel, granted, refused, failed)
        }
    });
    let results = futures::future::join_all(clients).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut reserve = Histogram::<u64>::new(3)?;
    let mut cancel = Histogram::<u64>::new(3)?;
    let (mut granted, mut refused, mut failed) = (0, 0, 0);
    for (r, c, g, x, f) in results {
        reserve.add(&r)?;
        cancel.add(&c)?;
        granted += g;
        refused += x;
        failed += f;
    }
    Ok(ReservationRun {
        name: name.to_owned(),
        tenants,
        concurrency,
        seconds,
        granted,
        refused,
        failed,
        granted_per_second: granted as f64 / seconds,
        reserve_ms: LatencyMs::from_micros(&reserve),
        cancel_ms: LatencyMs::from_micros(&cancel),
    })
}

/// The runs as a Markdown table.
pub fn table(runs: &[ReservationRun]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n| reservations | clients | granted/s | reserve p50 ms | reserve p99 ms | cancel p50 ms | cancel p99 ms | refused | failed |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            run.name,
            run.concurrency,
            run.granted_per_second,
            run.reserve_ms.p50,
            run.reserve_ms.p99,
            run.cancel_ms.p50,
            run.cancel_ms.p99,
            run.refused,
            run.failed
        ));
    }
    out
}
