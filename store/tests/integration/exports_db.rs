//! The finance exports reconcile with the ledger: on generated traffic that
//! crosses a month boundary, with late events (stored after a first export
//! of their month), unpriced models, a tenant's negotiated rates and a model
//! whose reasoning tokens are priced apart, the FOCUS dataset's costs and
//! tokens and the statements' totals equal the raw table's sums exactly,
//! for every range and tenant asked. Runs against a real TimescaleDB
//! (PostgreSQL + TimescaleDB through the e2e harness).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use rust_decimal::Decimal;
use store::exports::focus::{write_focus, FocusRequest};
use store::exports::statement::{write_statement, StatementFormat, StatementRequest};
use tokio_postgres::Client;
use uuid::Uuid;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const MODELS: [(&str, &str); 5] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("acme-ai", "thinker"),
    ("homegrown", "unpriced-llm"),
];
const USE_CASES: [Option<&str>; 4] = [
    Some("support-bot"),
    Some("code-gen"),
    Some("a,b \"c\""),
    None,
];

const PRICES: &str = r#"
[[price]]
provider = "acme-ai"
model = "thinker"
effective_from = "2025-01-01T00:00:00Z"
input = "1.1"
output = "4.4"
reasoning = "9.9"

[[tenant]]
tenant = "acme"
provider = "openai"
effective_from = "2026-01-01T00:00:00Z"
contract = "MSA-1"
multiplier = "0.85"
"#;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::try_from(self.below(items.len() as u64)).expect("fits")]
    }
}

fn book() -> PriceBook {
    PriceBook::builtin()
        .expect("the built-in book parses")
        .with_overrides(PriceBook::from_toml(PRICES).expect("price file"))
}

/// Events between Jan 28 and Feb 3, 2026, some exactly at midnight.
fn events(rng: &mut Rng, count: usize, start: DateTime<Utc>, days: i64) -> Vec<UsageEvent> {
    (0..count)
        .map(|_| {
            let (provider, model) = rng.pick(&MODELS);
            let offset = if rng.below(10) == 0 {
                Duration::days(i64::try_from(rng.below(days as u64)).expect("fits"))
            } else {
                Duration::seconds(i64::try_from(rng.below(days as u64 * 86_400)).expect("fits"))
            };
            let prompt = u32::try_from(rng.below(200_000)).expect("fits");
            let cached = u32::try_from(rng.below(u64::from(prompt) / 2 + 1)).expect("fits");
            let cache_write =
                u32::try_from(rng.below(u64::from(prompt - cached) / 4 + 1)).expect("fits");
            let completion = u32::try_from(rng.below(20_000)).expect("fits");
            let reasoning = u32::try_from(rng.below(u64::from(completion) / 2 + 1)).expect("fits");
            let created_at = start + offset;
            UsageEvent {
                id: Uuid::new_v4(),
                created_at,
                tenant_id: rng.pick(&TENANTS).into(),
                user_id: None,
                provider: provider.into(),
                model: model.into(),
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                cached_prompt_tokens: cached,
                cache_write_tokens: cache_write,
                reasoning_tokens: reasoning,
                cache_write_1h_tokens: 0,
                service_tier: None,
                calls: Default::default(),
                unpriced_tokens: Default::default(),
                estimated_cost: (rng.below(20) == 0).then(|| Decimal::new(1_234_567, 9)),
                labels: rng
                    .pick(&USE_CASES)
                    .map(|v| [("use_case".to_owned(), v.to_owned())].into())
                    .unwrap_or_default(),
                received_at: created_at + Duration::seconds(1),
                request_id: None,
                call_identity: false,
                reservation_id: None,
                api_key: None,
            }
        })
        .collect()
}

async fn insert(client: &Client, book: &PriceBook, events: &[UsageEvent]) {
    for event in events {
        let cost = book.cost(event);
        let labels = serde_json::to_value(&event.labels).expect("labels");
        let count = |v: u32| i32::try_from(v).expect("fits");
        client
            .execute(
                "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
                     completion_tokens, total_tokens, estimated_cost, created_at,
                     cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status,
                     labels, received_at, payload_sha256, source_partition, source_offset)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                         '\\x00'::bytea, 0, 0)",
                &[
                    &event.id,
                    &event.tenant_id,
                    &event.provider,
                    &event.model,
                    &count(event.prompt_tokens),
                    &count(event.completion_tokens),
                    &count(event.total_tokens),
                    &cost.usd,
                    &event.created_at,
                    &count(event.cached_prompt_tokens),
                    &count(event.cache_write_tokens),
                    &count(event.reasoning_tokens),
                    &cost.status.as_str(),
                    &labels,
                    &event.received_at,
                ],
            )
            .await
            .expect("insert");
    }
}

/// RFC 4180 fields of one line.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().expect("field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().expect("field").push(c),
        }
    }
    out
}

fn csv(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = fields(lines.next().expect("header"));
    lines
        .map(|line| {
            let values = fields(line);
            assert_eq!(values.len(), header.len(), "{line}");
            header.iter().cloned().zip(values).collect()
        })
        .collect()
}

fn sum(rows: &[BTreeMap<String, String>], column: &str) -> Decimal {
    rows.iter()
        .map(|row| row[column].parse::<Decimal>().expect("decimal"))
        .sum()
}

async fn raw(
    client: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant: Option<&str>,
) -> (Decimal, i64, i64) {
    let row = client
        .query_one(
            "SELECT COALESCE(sum(estimated_cost), 0),
                    COALESCE(sum(prompt_tokens + completion_tokens), 0)::BIGINT,
                    count(*) FILTER (WHERE pricing_status = 'unpriced')
             FROM gateway_mode_audit
             WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR tenant_id = $3)",
            &[&from, &to, &tenant],
        )
        .await
        .expect("raw sums");
    (row.get(0), row.get(1), row.get(2))
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("day")
}

async fn focus(
    client: &Client,
    book: &PriceBook,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
) -> String {
    let request = FocusRequest {
        from,
        to,
        tenant: tenant.map(str::to_owned),
        label_keys: vec!["use_case".to_owned()],
    };
    let mut out = Vec::new();
    write_focus(client, book, &request, &mut out)
        .await
        .expect("focus export");
    String::from_utf8(out).expect("utf-8")
}

async fn statement(
    client: &Client,
    month: NaiveDate,
    tenant: Option<&str>,
    format: StatementFormat,
) -> String {
    let request = StatementRequest {
        month,
        tenant: tenant.map(str::to_owned),
        use_case_key: "use_case".to_owned(),
        format,
    };
    let mut out = Vec::new();
    write_statement(client, &request, &mut out)
        .await
        .expect("statement");
    String::from_utf8(out).expect("utf-8")
}

async fn assert_reconciles(client: &Client, book: &PriceBook, when: &str) {
    let ranges = [
        (day(2026, 1, 1), day(2026, 3, 1)),
        (day(2026, 1, 1), day(2026, 2, 1)),
        (day(2026, 2, 1), day(2026, 3, 1)),
        (day(2026, 1, 31), day(2026, 2, 2)),
    ];
    for (from, to) in ranges {
        for tenant in [None, Some("acme"), Some("globex")] {
            let what = format!("{when}: FOCUS {from}..{to} {tenant:?}");
            let rows = csv(&focus(client, book, from, to, tenant).await);
            let start = from.and_hms_opt(0, 0, 0).expect("t").and_utc();
            let end = to.and_hms_opt(0, 0, 0).expect("t").and_utc();
            let (cost, tokens, unpriced) = raw(client, start, end, tenant).await;
            assert!(cost > Decimal::ZERO, "{what}: no traffic");
            for column in ["BilledCost", "EffectiveCost", "ContractedCost", "ListCost"] {
                assert_eq!(sum(&rows, column), cost, "{what}: {column}");
            }
            assert_eq!(
                sum(&rows, "ConsumedQuantity"),
                Decimal::from(tokens),
                "{what}: tokens"
            );
            let unpriced_rows: Vec<_> = rows
                .iter()
                .filter(|r| r["x_PricingStatus"] == "unpriced")
                .collect();
            assert_eq!(
                unpriced > 0,
                !unpriced_rows.is_empty(),
                "{what}: unpriced kept"
            );
            assert!(unpriced_rows
                .iter()
                .all(|r| r["BilledCost"].parse::<Decimal>().expect("d").is_zero()));
            assert!(rows
                .iter()
                .all(|r| r["ChargePeriodStart"] >= format!("{from}")
                    && r["ChargePeriodEnd"] <= format!("{to}T00:00:00Z")));
        }
    }
    for month in [day(2026, 1, 1), day(2026, 2, 1)] {
        let end = store::exports::next_month(month);
        let start = month.and_hms_opt(0, 0, 0).expect("t").and_utc();
        let stop = end.and_hms_opt(0, 0, 0).expect("t").and_utc();
        let rows = csv(&statement(client, month, None, StatementFormat::Csv).await);
        let total = rows
            .iter()
            .find(|r| r["line"] == "total")
            .expect("total line");
        let (cost, _, _) = raw(client, start, stop, None).await;
        assert_eq!(
            total["billed_cost"].parse::<Decimal>().expect("d"),
            cost,
            "{when}: statement {month}"
        );
        let items: Vec<_> = rows
            .iter()
            .filter(|r| r["line"] == "item")
            .cloned()
            .collect();
        assert_eq!(
            sum(&items, "billed_cost"),
            cost,
            "{when}: statement items {month}"
        );
        for tenant in TENANTS {
            let (tenant_cost, _, _) = raw(client, start, stop, Some(tenant)).await;
            let line = rows
                .iter()
                .find(|r| r["line"] == "tenant_total" && r["tenant_id"] == tenant)
                .expect("tenant total");
            assert_eq!(
                line["billed_cost"].parse::<Decimal>().expect("d"),
                tenant_cost,
                "{when}: {tenant} {month}"
            );
            let json: serde_json::Value = serde_json::from_str(
                &statement(client, month, Some(tenant), StatementFormat::Json).await,
            )
            .expect("statement JSON");
            let billed = json["total"]["billed_cost"].as_str().expect("string cost");
            assert_eq!(
                billed.parse::<Decimal>().expect("d"),
                tenant_cost,
                "{when}: JSON {tenant} {month}"
            );
            assert_eq!(json["tenants"].as_array().map(Vec::len), Some(1));
        }
        assert!(
            rows.iter().any(|r| r["use_case"] == "(unlabelled)"),
            "unlabelled line"
        );
        assert!(
            rows.iter().any(|r| r["use_case"] == "a,b \"c\""),
            "quoted use case"
        );
    }
}

#[tokio::test]
async fn focus_and_statements_reconcile_with_the_raw_table_to_the_last_decimal() {
    let database = Database::start().await;
    database.migrate().await;
    let client = database.client().await;
    let book = book();
    let mut rng = Rng(0x5eed_f0c5);
    let start = Utc
        .with_ymd_and_hms(2026, 1, 28, 0, 0, 0)
        .single()
        .expect("t");
    insert(&client, &book, &events(&mut rng, 600, start, 7)).await;
    assert_reconciles(&client, &book, "first load").await;

    // Late events for January, stored after January was exported once.
    let late_start = Utc
        .with_ymd_and_hms(2026, 1, 30, 0, 0, 0)
        .single()
        .expect("t");
    insert(&client, &book, &events(&mut rng, 150, late_start, 2)).await;
    assert_reconciles(&client, &book, "after late events").await;

    let text = focus(&client, &book, day(2026, 1, 1), day(2026, 3, 1), None).await;
    let rows = csv(&text);
    let types: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["x_TokenType"].as_str()).collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["cache_read", "cache_write", "input", "output", "reasoning"]
    );
    // reasoning is its own row only for the model that prices it apart
    assert!(rows
        .iter()
        .filter(|r| r["x_TokenType"] == "reasoning")
        .all(|r| r["x_Model"] == "thinker"));
    let acme = rows
        .iter()
        .find(|r| {
            r["SubAccountId"] == "acme"
                && r["x_Provider"] == "openai"
                && r["x_PricingStatus"] == "priced"
        })
        .expect("acme openai row");
    assert_eq!(acme["ConsumedUnit"], "Tokens");
    assert_eq!(acme["PricingUnit"], "1M Tokens");
    assert!(rows
        .iter()
        .any(|r| r["Tags"].contains("support-bot") && r["x_Label_use_case"] == "support-bot"));
    // unpriced usage is there with its tokens
    let unpriced = rows
        .iter()
        .find(|r| r["x_Model"] == "unpriced-llm" && r["x_PricingStatus"] == "unpriced")
        .expect("unpriced model kept");
    assert_eq!(unpriced["x_PricingStatus"], "unpriced");
    assert!(unpriced["ConsumedQuantity"].parse::<Decimal>().expect("d") > Decimal::ZERO);
}
