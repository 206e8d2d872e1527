//! The optimization report and the what-if against a real TimescaleDB:
//! generated traffic (several tenants and use cases, cached and uncached,
//! cache writes, reasoning, long context, service tiers, caller-supplied
//! and unpriced costs, across a month boundary) goes through the batch
//! writer, and every figure of `store::optimize` is recomputed here from the
//! raw table and the price book's rates (the oracle below prices each row
//! itself from the entry's rate cards, not through `PriceBook::rate`) and
//! compared to the last decimal; percentiles are compared with the raw
//! table's exact ones within the stated 1%.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ledger::pricebook::{Price, ServiceTier, TierPricing};
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::record::Record;
use processor::write::{AttemptState, Writer};
use processor::{database, prepare};
use rust_decimal::Decimal;
use store::optimize::histogram::RELATIVE_ERROR;
use store::optimize::report::{optimize_report, Dims, OptimizeReport, PromptLength};
use store::optimize::whatif::{what_if, WhatIfRequest};
use store::optimize::Range;
use uuid::Uuid;

use crate::support::{event_record, migrated_database};

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

/// Adds every batch's optimization deltas to the rollup tables, as the
/// processor's applier does every `optimize.apply_interval`.
async fn apply_deltas(pool: &deadpool_postgres::Pool) {
    processor::optimize_apply::drain(pool, Duration::from_secs(30))
        .await
        .expect("the deltas apply");
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn at(day: u32, month: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, hour, minute, 0)
        .single()
        .expect("valid time")
}

fn traffic(count: usize) -> Vec<UsageEvent> {
    let mut rng = Lcg(24);
    let tenants = ["acme", "globex", "initech"];
    let use_cases = [Some("chat"), Some("summarize"), Some("rag"), None];
    let times = [
        at(30, 1, 9, 0),
        at(31, 1, 23, 30),
        at(1, 2, 0, 15),
        at(2, 2, 12, 0),
    ];
    (0..count)
        .map(|i| {
            let kind = rng.next(6);
            let (provider, model) = match kind {
                0 | 1 => ("anthropic", "claude-sonnet-4-5"),
                2 => ("openai", "gpt-5"),
                3 => ("openai", "gpt-4o-mini"),
                4 => ("openai", "gpt-4o"),
                _ => ("mystery", "unknown-model"),
            };
            let long = kind == 0 && rng.next(4) == 0;
            let prompt = if long {
                200_001 + rng.next(60_000) as u32
            } else {
                50 + rng.next(20_000) as u32
            };
            let cached = match rng.next(3) {
                0 => 0,
                _ => rng.next(u64::from(prompt) / 2) as u32,
            };
            let (write_5m, write_1h) = if provider == "anthropic" && rng.next(2) == 0 {
                let left = u64::from(prompt - cached);
                (rng.next(left / 3) as u32, rng.next(left / 3) as u32)
            } else {
                (0, 0)
            };
            let completion = 10 + rng.next(3_000) as u32;
            let reasoning = if model == "gpt-5" {
                rng.next(u64::from(completion)) as u32
            } else {
                0
            };
            let service_tier = match (provider, rng.next(5)) {
                ("anthropic", 0) => Some(ServiceTier::Batch),
                ("openai", 0) if model == "gpt-5" => Some(ServiceTier::Flex),
                ("openai", 1) if model != "gpt-4o" => Some(ServiceTier::Priority),
                _ => None,
            };
            UsageEvent {
                id: Uuid::now_v7(),
                created_at: times[i % times.len()] + chrono::Duration::seconds(i as i64),
                tenant_id: tenants[i % tenants.len()].into(),
                user_id: None,
                provider: provider.into(),
                model: model.into(),
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                cached_prompt_tokens: cached,
                cache_write_tokens: write_5m,
                reasoning_tokens: reasoning,
                cache_write_1h_tokens: write_1h,
                service_tier,
                // per-call charges on some gpt-4o-mini requests (OpenAI's web search)
                calls: if model == "gpt-4o-mini" && i % 4 == 0 {
                    [("web_search".to_owned(), 2)].into()
                } else {
                    Default::default()
                },
                unpriced_tokens: Default::default(),
                // the caller's own cost on gpt-4o, as a client with a contract sends it
                estimated_cost: (model == "gpt-4o")
                    .then(|| Decimal::new(i64::from(prompt) * 3 + 7, 7)),
                labels: use_cases[(i / 3) % use_cases.len()]
                    .map(|u| [("use_case".to_owned(), u.to_owned())].into())
                    .unwrap_or_default(),
                received_at: Utc::now(),
                request_id: None,
                call_identity: false,
                reservation_id: None,
                api_key: None,
            }
        })
        .collect()
}

/// One stored row, read back from the raw table.
#[derive(Debug, Clone)]
struct Raw {
    day: NaiveDate,
    created_at: DateTime<Utc>,
    tenant: String,
    provider: String,
    model: String,
    use_case: String,
    prompt: i64,
    completion: i64,
    total: i64,
    cached: i64,
    write_5m: i64,
    write_1h: i64,
    reasoning: i64,
    tier: ServiceTier,
    web_search: i64,
    cost: Decimal,
    unpriced: bool,
    stored_list_cost: Option<Decimal>,
}

async fn raw_rows(client: &tokio_postgres::Client) -> Vec<Raw> {
    client
        .query(
            "SELECT created_at, tenant_id::text AS tenant, provider::text AS provider,
                    model::text AS model, COALESCE(labels ->> 'use_case', '(unlabelled)') AS uc,
                    prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
                    cache_write_tokens, COALESCE(cache_write_1h_tokens, 0) AS w1h,
                    reasoning_tokens, COALESCE(service_tier, 'standard') AS tier,
                    COALESCE((calls ->> 'web_search')::int, 0) AS web_search,
                    estimated_cost, pricing_status, list_cost
             FROM gateway_mode_audit",
            &[],
        )
        .await
        .expect("raw rows")
        .iter()
        .map(|r| {
            let created_at: DateTime<Utc> = r.get("created_at");
            let int = |name: &str| i64::from(r.get::<_, i32>(name));
            Raw {
                day: created_at.date_naive(),
                created_at,
                tenant: r.get("tenant"),
                provider: r.get("provider"),
                model: r.get("model"),
                use_case: r.get("uc"),
                prompt: int("prompt_tokens"),
                completion: int("completion_tokens"),
                total: int("total_tokens"),
                cached: int("cached_prompt_tokens"),
                write_5m: int("cache_write_tokens"),
                write_1h: int("w1h"),
                reasoning: int("reasoning_tokens"),
                tier: r.get::<_, String>("tier").parse().expect("tier"),
                web_search: int("web_search"),
                cost: r.get("estimated_cost"),
                unpriced: r.get::<_, String>("pricing_status") == "unpriced",
                stored_list_cost: r.get("list_cost"),
            }
        })
        .collect()
}

/// What a row's tokens cost per kind at `provider`/`model`'s price in force
/// at `when`, priced here from the entry's cards: the card by prompt length,
/// the service tier's multiplier or card. `None`: not priced.
#[derive(Debug, Clone, Copy, Default)]
struct Oracle {
    uncached: Decimal,
    cache_read: Decimal,
    cache_read_at_input: Decimal,
    writes: Decimal,
    writes_at_input: Decimal,
    output: Decimal,
    /// per-call charges: no service-tier multiplier applies to them
    calls: Decimal,
}

impl Oracle {
    fn input(&self) -> Decimal {
        self.uncached + self.cache_read + self.writes
    }
    fn total(&self) -> Decimal {
        self.input() + self.output + self.calls
    }
}

fn oracle(
    book: &PriceBook,
    row: &Raw,
    provider: &str,
    model: &str,
    when: DateTime<Utc>,
) -> Option<Oracle> {
    let resolution = book.resolve(provider, model, when).ok()?;
    let tariff = &resolution.entry.tariff;
    let (card, multiplier) = match row.tier {
        ServiceTier::Standard => (&tariff.standard, Decimal::ONE),
        tier => match tariff
            .service_tiers
            .get(&tier)
            .or_else(|| resolution.defaults?.service_tiers.get(&tier))?
        {
            TierPricing::Multiplier(m) => (&tariff.standard, *m),
            TierPricing::Rates(card) => (card, Decimal::ONE),
        },
    };
    let mut price: &Price = &card.base;
    for tier in &card.long_context {
        if row.prompt as u64 > tier.above_input_tokens {
            price = &tier.price;
        }
    }
    let per = |tokens: i64, rate: Decimal| {
        Decimal::from(tokens) * rate * multiplier / Decimal::from(1_000_000)
    };
    let uncached = row.prompt - row.cached - row.write_5m - row.write_1h;
    let write_1h_rate = price
        .cache_write_1h
        .or(price.cache_write_5m)
        .unwrap_or(price.input);
    let calls = if row.web_search > 0 {
        let rate = tariff
            .per_1k_calls
            .get("web_search")
            .or_else(|| resolution.defaults?.per_1k_calls.get("web_search"))?;
        Decimal::from(row.web_search) * *rate / Decimal::ONE_THOUSAND
    } else {
        Decimal::ZERO
    };
    Some(Oracle {
        calls,
        uncached: per(uncached, price.input),
        cache_read: per(row.cached, price.cache_read.unwrap_or(price.input)),
        cache_read_at_input: per(row.cached, price.input),
        writes: per(row.write_5m, price.cache_write_5m.unwrap_or(price.input))
            + per(row.write_1h, write_1h_rate),
        writes_at_input: per(row.write_5m + row.write_1h, price.input),
        output: per(row.completion - row.reasoning, price.output)
            + per(row.reasoning, price.reasoning.unwrap_or(price.output)),
    })
}

fn ratio(a: Decimal, b: Decimal, places: u32) -> Option<Decimal> {
    (!b.is_zero()).then(|| (a / b).round_dp(places).normalize())
}

/// The nearest-rank percentile, as `percentile_disc` ranks.
fn exact_percentile(mut values: Vec<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

fn assert_close(what: &str, estimate: Option<f64>, exact: Option<f64>) {
    match (estimate, exact) {
        (Some(e), Some(x)) => assert!(
            (e - x).abs() <= RELATIVE_ERROR * x.abs() * (1.0 + 1e-9),
            "{what}: {e} is not within 1% of the exact {x}"
        ),
        (e, x) => assert_eq!(e.is_some(), x.is_some(), "{what}: {e:?} vs {x:?}"),
    }
}

fn dims_of(row: &Raw, by: &str) -> Dims {
    let mut d = Dims::default();
    match by {
        "model" => (d.provider, d.model) = (Some(row.provider.clone()), Some(row.model.clone())),
        "use_case" => d.use_case = Some(row.use_case.clone()),
        "tenant" => d.tenant_id = Some(row.tenant.clone()),
        "day" => d.day = Some(row.day),
        _ => {
            d.provider = Some(row.provider.clone());
            d.model = Some(row.model.clone());
            d.use_case = Some(row.use_case.clone());
        }
    }
    d
}

fn groups<'a>(rows: &'a [Raw], by: &str) -> BTreeMap<Dims, Vec<&'a Raw>> {
    let mut out: BTreeMap<Dims, Vec<&Raw>> = BTreeMap::new();
    for row in rows {
        out.entry(dims_of(row, by)).or_default().push(row);
    }
    out
}

fn check_prompt_length(book: &PriceBook, rows: &[Raw], by: &str, report: &[PromptLength]) {
    let expected = groups(rows, by);
    assert_eq!(report.len(), expected.len(), "groups by {by}");
    for line in report {
        let group = &expected[&line.dims];
        let what = format!("prompt length by {by} {:?}", line.dims);
        let prompt: i64 = group.iter().map(|r| r.prompt).sum();
        assert_eq!(line.requests, group.len() as i64, "{what}");
        assert_eq!(line.prompt_tokens, prompt, "{what}");
        assert_eq!(
            Some(line.prompt_tokens_mean),
            ratio(prompt.into(), Decimal::from(group.len()), 4),
            "{what}"
        );
        assert_eq!(
            line.prompt_tokens_max,
            group.iter().map(|r| r.prompt).max().unwrap_or(0),
            "{what}"
        );
        let values: Vec<f64> = group.iter().map(|r| r.prompt as f64).collect();
        assert_close(
            &what,
            line.prompt_tokens_p50,
            exact_percentile(values.clone(), 0.5),
        );
        assert_close(
            &what,
            line.prompt_tokens_p95,
            exact_percentile(values, 0.95),
        );
        let parts: Vec<Oracle> = group
            .iter()
            .filter_map(|r| oracle(book, r, &r.provider, &r.model, r.created_at))
            .collect();
        let list: Decimal = parts.iter().map(Oracle::total).sum();
        let input: Decimal = parts.iter().map(Oracle::input).sum();
        let output: Decimal = parts.iter().map(|p| p.output).sum();
        assert_eq!(line.list_cost, list, "{what}");
        assert_eq!(line.input_list_cost, input, "{what}");
        assert_eq!(line.output_list_cost, output, "{what}");
        let calls: Decimal = parts.iter().map(|p| p.calls).sum();
        assert_eq!(line.other_list_cost, calls, "{what}");
        assert_eq!(line.input_share, ratio(input, list, 4), "{what}");
        assert_eq!(line.output_share, ratio(output, list, 4), "{what}");
    }
}

fn check_report(book: &PriceBook, rows: &[Raw], report: &OptimizeReport) {
    assert!(!rows.is_empty());
    check_prompt_length(book, rows, "model", &report.prompt_length_by_model);
    check_prompt_length(book, rows, "use_case", &report.prompt_length_by_use_case);
    check_prompt_length(book, rows, "tenant", &report.prompt_length_by_tenant);
    check_prompt_length(book, rows, "day", &report.prompt_length_by_day);

    let per = groups(rows, "model_use_case");
    assert_eq!(report.cost_per_request.len(), per.len());
    for line in &report.cost_per_request {
        let what = format!("cost per request {:?}", line.dims);
        let priced: Vec<&&Raw> = per[&line.dims].iter().filter(|r| !r.unpriced).collect();
        let cost: Decimal = priced.iter().map(|r| r.cost).sum();
        let tokens: i64 = priced.iter().map(|r| r.total).sum();
        assert_eq!(line.priced_requests, priced.len() as i64, "{what}");
        assert_eq!(line.cost, cost, "{what}");
        assert_eq!(
            line.cost_per_request_mean,
            ratio(cost, Decimal::from(priced.len()), 10),
            "{what}"
        );
        assert_eq!(
            line.cost_per_1k_tokens_mean,
            ratio(cost * Decimal::ONE_THOUSAND, tokens.into(), 10),
            "{what}"
        );
        let costs: Vec<f64> = priced
            .iter()
            .map(|r| r.cost.to_string().parse().expect("f64"))
            .collect();
        let per_1k: Vec<f64> = priced
            .iter()
            .filter(|r| r.total > 0)
            .map(|r| r.cost.to_string().parse::<f64>().expect("f64") * 1000.0 / r.total as f64)
            .collect();
        assert_close(
            &what,
            line.cost_per_request_p50,
            exact_percentile(costs.clone(), 0.5),
        );
        assert_close(
            &what,
            line.cost_per_request_p95,
            exact_percentile(costs, 0.95),
        );
        assert_close(
            &what,
            line.cost_per_1k_tokens_p50,
            exact_percentile(per_1k.clone(), 0.5),
        );
        assert_close(
            &what,
            line.cost_per_1k_tokens_p95,
            exact_percentile(per_1k, 0.95),
        );
    }

    assert_eq!(report.caching.len(), per.len());
    for line in &report.caching {
        let what = format!("caching {:?}", line.dims);
        let group = &per[&line.dims];
        let prompt: i64 = group.iter().map(|r| r.prompt).sum();
        let cached: i64 = group.iter().map(|r| r.cached).sum();
        let parts: Vec<Oracle> = group
            .iter()
            .filter_map(|r| oracle(book, r, &r.provider, &r.model, r.created_at))
            .collect();
        let at_input: Decimal = parts.iter().map(|p| p.cache_read_at_input).sum();
        let cached_cost: Decimal = parts.iter().map(|p| p.cache_read).sum();
        let writes: Decimal = parts.iter().map(|p| p.writes).sum();
        let writes_at_input: Decimal = parts.iter().map(|p| p.writes_at_input).sum();
        assert_eq!(line.cached_prompt_tokens, cached, "{what}");
        assert_eq!(
            line.cache_hit_ratio,
            ratio(cached.into(), prompt.into(), 4),
            "{what}"
        );
        assert_eq!(line.cached_at_input_cost, at_input, "{what}");
        assert_eq!(line.cached_cost, cached_cost, "{what}");
        assert_eq!(line.cache_write_cost, writes, "{what}");
        assert_eq!(
            line.cache_write_overhead,
            writes - writes_at_input,
            "{what}"
        );
        assert_eq!(
            line.net_saving,
            (at_input - cached_cost) - (writes - writes_at_input),
            "{what}"
        );
    }

    let mut no_cache: BTreeMap<Dims, (i64, i64, i64, Decimal)> = BTreeMap::new();
    for (dims, group) in groups(rows, "model") {
        for row in group {
            let entry = no_cache.entry(dims.clone()).or_default();
            entry.0 += 1;
            let caching = book
                .resolve(&row.provider, &row.model, row.created_at)
                .is_ok_and(|r| r.entry.tariff.standard.base.cache_read.is_some());
            if row.cached == 0 && caching {
                let parts =
                    oracle(book, row, &row.provider, &row.model, row.created_at).expect("priced");
                entry.1 += 1;
                entry.2 += row.prompt;
                entry.3 += parts.input();
            }
        }
    }
    no_cache.retain(|_, v| v.1 > 0);
    assert_eq!(report.no_cache.len(), no_cache.len());
    for line in &report.no_cache {
        let (all, n, prompt, input) = no_cache[&line.dims];
        assert_eq!(
            (line.requests, line.prompt_tokens, line.input_list_cost),
            (n, prompt, input),
            "{:?}",
            line.dims
        );
        assert_eq!(Some(line.share_of_requests), ratio(n.into(), all.into(), 4));
    }
}

type Table = Vec<BTreeMap<String, Option<String>>>;

async fn run_sql(client: &tokio_postgres::Client, sql: &str) -> Table {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn number(row: &BTreeMap<String, Option<String>>, column: &str) -> f64 {
    row[column]
        .as_deref()
        .unwrap_or_else(|| panic!("{column} is NULL in {row:?}"))
        .parse()
        .expect("a number")
}

fn text<'a>(row: &'a BTreeMap<String, Option<String>>, column: &str) -> &'a str {
    row[column].as_deref().expect("a value")
}

fn model_of(d: &Dims) -> String {
    format!(
        "{}/{}",
        d.provider.as_deref().unwrap_or("?"),
        d.model.as_deref().unwrap_or("?")
    )
}

/// Every panel of the Optimization dashboard, and the sql/reports/ files, run on the rollup the
/// batches wrote, answer what the report answers.
async fn check_dashboard_and_sql_reports(client: &tokio_postgres::Client, report: &OptimizeReport) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/optimization.json"))
            .expect("the dashboard"),
    )
    .expect("JSON");
    assert_eq!(dashboard["title"], "tokenledger / Optimization");
    let time_filter = "day BETWEEN '2026-01-30T00:00:00Z' AND '2026-02-02T23:59:59Z'";
    let mut panels: BTreeMap<String, Table> = BTreeMap::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let sql = panel["targets"][0]["rawSql"].as_str().expect("rawSql");
        let rows = run_sql(client, &sql.replace("$__timeFilter(day)", time_filter)).await;
        let title = panel["title"].as_str().expect("title").to_owned();
        assert!(!rows.is_empty(), "{title}: no rows");
        panels.insert(title, rows);
    }
    assert_eq!(panels.len(), 10);
    let total = |f: fn(&store::optimize::report::Caching) -> Decimal| -> f64 {
        report
            .caching
            .iter()
            .map(f)
            .sum::<Decimal>()
            .to_string()
            .parse()
            .expect("f64")
    };
    let saving = number(&panels["Net caching saving"][0], "Net caching saving");
    assert!(
        (saving - total(|c| c.net_saving)).abs() < 1e-9,
        "net saving {saving}"
    );
    let requests: i64 = report
        .prompt_length_by_model
        .iter()
        .map(|r| r.requests)
        .sum();
    let prompt: i64 = report
        .prompt_length_by_model
        .iter()
        .map(|r| r.prompt_tokens)
        .sum();
    let mean = number(
        &panels["Prompt tokens per request"][0],
        "Prompt tokens per request",
    );
    assert!((mean - (prompt as f64 / requests as f64 * 10.0).round() / 10.0).abs() < 1e-9);

    for line in &report.prompt_length_by_model {
        let row = panels["Prompt tokens per request by model"]
            .iter()
            .find(|r| text(r, "Model") == model_of(&line.dims))
            .expect("the model's row");
        assert_eq!(
            number(row, "p50"),
            line.prompt_tokens_p50.expect("p50").round()
        );
        assert_eq!(
            number(row, "p95"),
            line.prompt_tokens_p95.expect("p95").round()
        );
        assert_eq!(number(row, "Max"), line.prompt_tokens_max as f64);
    }
    for line in &report.cost_per_request {
        let row = panels["Cost per request by model and use case"]
            .iter()
            .find(|r| {
                text(r, "Model") == model_of(&line.dims)
                    && Some(text(r, "Use case")) == line.dims.use_case.as_deref()
            })
            .expect("the row");
        if let Some(p95) = line.cost_per_request_p95 {
            assert!((number(row, "p95") - p95).abs() <= p95 * 1e-9, "{row:?}");
        }
    }
    for line in &report.caching {
        let row = panels["What caching saved by model and use case"]
            .iter()
            .find(|r| {
                text(r, "Model") == model_of(&line.dims)
                    && Some(text(r, "Use case")) == line.dims.use_case.as_deref()
            })
            .expect("the row");
        assert_eq!(
            text(row, "Net saving").parse::<Decimal>().ok(),
            Some(line.net_saving)
        );
    }
    let no_cache = &panels["No cached tokens on models that support caching"];
    assert_eq!(no_cache.len(), report.no_cache.len());

    // sql/reports/ are the panels' queries over [from, to)
    for (file, title) in [
        (
            "optimize_prompt_length.sql",
            "Prompt tokens per request by model",
        ),
        (
            "optimize_cost_per_request.sql",
            "Cost per request by model and use case",
        ),
        (
            "optimize_caching.sql",
            "What caching saved by model and use case",
        ),
    ] {
        let sql = std::fs::read_to_string(root.join("sql/reports").join(file)).expect("report");
        let sql = sql
            .replace(":'from'", "'2026-01-30'")
            .replace(":'to'", "'2026-02-03'");
        assert_eq!(run_sql(client, &sql).await, panels[title], "{file}");
    }
}

/// requests, compared, current cost, what-if cost, unpriced now, unpriced at the target
type Expected = (i64, i64, Decimal, Decimal, i64, i64);

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("date")
}

#[tokio::test]
async fn every_figure_agrees_with_the_raw_table_and_the_price_book() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(
        pool.clone(),
        "optimize-test",
        NoDeadLetters,
        Duration::from_secs(30),
    )
    .with_attribution_keys(vec!["use_case".to_owned()]);
    let book = PriceBook::builtin().expect("the built-in book parses");
    let events = traffic(360);
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| event_record(0, i as i64, e))
        .collect();
    for (index, chunk) in records.chunks(90).enumerate() {
        // the first chunk is delivered twice: the rollup counts it once
        for _ in 0..if index == 0 { 2 } else { 1 } {
            let mut prepared = prepare::prepare(chunk.to_vec(), &book);
            writer
                .write(&mut prepared, &mut AttemptState::default())
                .await
                .expect("batch commits");
        }
    }

    let client = database.client().await;
    let rows = raw_rows(&client).await;
    assert_eq!(rows.len(), events.len());
    // the oracle prices each row as ingestion did
    for row in &rows {
        let oracle = oracle(&book, row, &row.provider, &row.model, row.created_at);
        assert_eq!(
            oracle.map(|o| o.total()),
            row.stored_list_cost,
            "oracle vs stored list cost of {row:?}"
        );
    }
    // the traffic has what the report must get right
    assert!(rows
        .iter()
        .any(|r| r.prompt > 200_000 && r.provider == "anthropic"));
    assert!(rows.iter().any(|r| r.reasoning > 0));
    assert!(rows.iter().any(|r| r.write_1h > 0) && rows.iter().any(|r| r.write_5m > 0));
    assert!(rows.iter().any(|r| r.unpriced));
    assert!(rows.iter().any(|r| r.tier == ServiceTier::Flex));
    assert!(rows.iter().any(|r| r.tier == ServiceTier::Batch));
    assert!(rows
        .iter()
        .any(|r| r.web_search > 0 && r.tier == ServiceTier::Priority));

    // percentiles from the raw table in SQL rank as the oracle's
    let sql: f64 = client
        .query_one(
            "SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY prompt_tokens)::float8
             FROM gateway_mode_audit WHERE model = 'claude-sonnet-4-5'",
            &[],
        )
        .await
        .expect("percentile_disc")
        .get(0);
    let sonnet: Vec<f64> = rows
        .iter()
        .filter(|r| r.model == "claude-sonnet-4-5")
        .map(|r| r.prompt as f64)
        .collect();
    assert_eq!(exact_percentile(sonnet, 0.95), Some(sql));

    let everything = Range {
        from: day(2026, 1, 30),
        to: day(2026, 2, 3),
        tenant: None,
    };
    let report = optimize_report(&client, &everything).await.expect("report");
    check_report(&book, &rows, &report);
    assert_eq!(report.prompt_length_by_day.len(), 4);
    // the dashboard reads the tables, which the applier fills
    apply_deltas(&pool).await;
    check_dashboard_and_sql_reports(&client, &report).await;

    // across the month boundary: February only, one tenant
    let february = Range {
        from: day(2026, 2, 1),
        to: day(2026, 2, 3),
        tenant: Some("acme".into()),
    };
    let acme_february: Vec<Raw> = rows
        .iter()
        .filter(|r| r.tenant == "acme" && r.day >= february.from)
        .cloned()
        .collect();
    let report = optimize_report(&client, &february).await.expect("report");
    check_report(&book, &acme_february, &report);

    // what-if: chat usage at gpt-4o-mini's price in force now
    let now = Utc::now();
    let request = WhatIfRequest {
        range: everything.clone(),
        use_case: Some("chat".into()),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
    };
    let answer = what_if(&client, &book, &request, now)
        .await
        .expect("what-if");
    let mut expected: BTreeMap<(String, String), Expected> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.use_case == "chat") {
        let e = expected
            .entry((row.provider.clone(), row.model.clone()))
            .or_default();
        e.0 += 1;
        match (
            row.unpriced,
            oracle(&book, row, "openai", "gpt-4o-mini", now),
        ) {
            (true, _) => e.4 += 1,
            (false, None) => e.5 += 1,
            (false, Some(target)) => {
                e.1 += 1;
                e.2 += row.cost;
                e.3 += target.total();
            }
        }
    }
    assert_eq!(answer.models.len(), expected.len());
    for line in &answer.models {
        let e = expected[&(line.provider.clone(), line.model.clone())];
        assert_eq!(
            (
                line.requests,
                line.compared_requests,
                line.current_cost,
                line.what_if_cost,
                line.difference,
                line.unpriced_now,
                line.unpriced_at_target
            ),
            (e.0, e.1, e.2, e.3, e.3 - e.2, e.4, e.5),
            "what-if of {}/{}",
            line.provider,
            line.model
        );
    }
    assert!(
        answer.total.unpriced_now > 0,
        "unknown-model rows are reported"
    );
    assert!(
        answer.total.unpriced_at_target > 0,
        "flex has no gpt-4o-mini price"
    );
    assert!(answer.notes.iter().any(|n| n.contains("tokenizers")));
    assert!(answer
        .notes
        .iter()
        .any(|n| n.contains("quality is not measured")));

    // a model the book does not price is refused, not guessed
    let unknown = WhatIfRequest {
        model: "no-such-model".into(),
        ..request
    };
    assert!(what_if(&client, &book, &unknown, now).await.is_err());
}

/// A use case the attribution rollup folded into `(other)` (past `max_values_per_day`) is
/// folded the same way here, so both rollups name the same use cases.
#[tokio::test]
async fn use_cases_past_the_attribution_bound_fold_into_other() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(
        pool.clone(),
        "optimize-fold",
        NoDeadLetters,
        Duration::from_secs(30),
    )
    .with_attribution_keys(vec!["use_case".to_owned()])
    .with_attribution_bound(1);
    let book = PriceBook::builtin().expect("the built-in book parses");
    let mut events = traffic(12);
    for (i, event) in events.iter_mut().enumerate() {
        event.tenant_id = "acme".into();
        event.created_at = at(2, 2, 10, 0) + chrono::Duration::seconds(i as i64);
        event.labels = [("use_case".to_owned(), format!("case-{}", i % 3))].into();
    }
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| event_record(0, i as i64, e))
        .collect();
    let mut prepared = prepare::prepare(records, &book);
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");
    apply_deltas(&pool).await;
    let client = database.client().await;
    let names = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(sql, &[])
                .await
                .expect("use cases")
                .iter()
                .map(|r| (r.get::<_, String>("v"), r.get::<_, i64>("n")))
                .collect::<Vec<(String, i64)>>()
        }
    };
    let attribution = names(
        "SELECT label_value AS v, sum(requests)::int8 AS n FROM usage_attribution_daily
         GROUP BY 1 ORDER BY 1",
    )
    .await;
    let optimize = names(
        "SELECT use_case AS v, sum(requests)::int8 AS n FROM usage_optimize_daily
         GROUP BY 1 ORDER BY 1",
    )
    .await;
    let histogram = names(
        "SELECT use_case AS v, sum(requests)::int8 AS n FROM usage_optimize_histogram
         WHERE metric = 'prompt_tokens' GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        attribution.len(),
        2,
        "one value admitted, the rest (other): {attribution:?}"
    );
    assert_eq!(optimize, attribution);
    assert_eq!(histogram, attribution);
}
