//! `processor reconcile` against a fake of the providers' report APIs and
//! the real database: each injected difference is found and attributed to
//! its cause, the totals reconcile to the cent, revisions are kept, and a
//! fetch that fails half-way records nothing as complete.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::reconcile::compare::UNMAPPED;
use processor::reconcile::config::{AnthropicSettings, OpenAiSettings};
use processor::reconcile::http::FetchError;
use processor::reconcile::{
    self, Bounds, Format, Provider, Range, ReconcileCommand, ReconcileConfig, ReconcileError,
    ReportArgs,
};
use processor::record::Record;
use processor::write::{AttemptState, Writer};
use processor::{database, prepare};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::support::fake_providers::*;
use crate::support::migrated_database;

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

/// gpt-4o-mini's input is listed at $0.30 per million: wrong, OpenAI bills
/// $0.15. Everything else is right.
const BOOK: &str = r#"
[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = "2024-05-13T00:00:00Z"
input = "2.5"
cache_read = "1.25"
output = "10"

[[price]]
provider = "openai"
model = "gpt-4o-mini"
effective_from = "2024-07-18T00:00:00Z"
input = "0.30"
cache_read = "0.075"
output = "0.6"

[[price]]
provider = "anthropic"
model = "claude-sonnet-4-5"
effective_from = "2025-09-29T00:00:00Z"
input = "3"
output = "15"
cache_read = "0.3"
cache_write_5m = "3.75"
cache_write_1h = "6"
"#;

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, d).expect("valid day")
}

fn at(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, 10, 0, 0)
        .single()
        .expect("valid time")
}

fn usd(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

#[derive(Default)]
struct Tokens {
    uncached: u32,
    cached: u32,
    write_5m: u32,
    write_1h: u32,
    completion: u32,
}

fn event(provider: &str, tenant: &str, model: &str, d: u32, t: Tokens) -> UsageEvent {
    let prompt = t.uncached + t.cached + t.write_5m + t.write_1h;
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: at(d),
        tenant_id: tenant.into(),
        user_id: None,
        provider: provider.into(),
        model: model.into(),
        prompt_tokens: prompt,
        completion_tokens: t.completion,
        total_tokens: prompt + t.completion,
        cached_prompt_tokens: t.cached,
        cache_write_tokens: t.write_5m,
        reasoning_tokens: 0,
        cache_write_1h_tokens: t.write_1h,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: Default::default(),
        received_at: Utc::now().trunc_subsecs(6),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

/// Writes `events` the way the pipeline does, priced with [`BOOK`].
async fn ingest(database: &e2e::Database, book: &PriceBook, events: &[UsageEvent]) {
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(
        pool,
        "reconcile-test",
        NoDeadLetters,
        Duration::from_secs(20),
    );
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(offset, e)| Record {
            topic: "usage-events".into(),
            partition: 0,
            offset: offset as i64,
            key: None,
            value: Some(e.to_kafka_value()),
            schema: Some(ledger::KAFKA_SCHEMA.as_bytes().to_vec()),
            timestamp_ms: None,
        })
        .collect();
    let mut prepared = prepare::prepare(records, book);
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");
}

fn config(base_url: &str) -> ReconcileConfig {
    ReconcileConfig {
        retry_base_ms: 10,
        max_attempts: 3,
        openai: OpenAiSettings {
            base_url: base_url.into(),
            admin_key: Some(OPENAI_KEY.into()),
            project_tenants: BTreeMap::from([
                ("proj_acme".into(), "acme".into()),
                ("proj_globex".into(), "globex".into()),
            ]),
        },
        anthropic: AnthropicSettings {
            base_url: base_url.into(),
            admin_key: Some(ANTHROPIC_KEY.into()),
            workspace_tenants: BTreeMap::from([
                ("wrkspc_acme".into(), "acme".into()),
                ("default".into(), "globex".into()),
            ]),
            ..AnthropicSettings::default()
        },
        ..ReconcileConfig::default()
    }
}

fn openai_usage(
    project: &str,
    model: &str,
    input: i64,
    cached: i64,
    output: i64,
) -> serde_json::Value {
    json!({
        "object": "organization.usage.completions.result",
        "input_tokens": input, "input_cached_tokens": cached, "output_tokens": output,
        "input_audio_tokens": 0, "output_audio_tokens": 0, "num_model_requests": 3,
        "project_id": project, "user_id": null, "api_key_id": null,
        "model": model, "batch": null,
    })
}

/// `value` as OpenAI sends it: a number, or (as seen in the wild) a string.
fn openai_cost(project: &str, line_item: &str, value: serde_json::Value) -> serde_json::Value {
    json!({
        "object": "organization.costs.result",
        "amount": {"value": value, "currency": "usd"},
        "line_item": line_item, "project_id": project,
    })
}

fn openai_range() -> Range {
    Range {
        provider: Provider::Openai,
        from: day(1),
        to: day(4),
    }
}

/// Day 2 of acme as the provider first reports it, and as revised later.
fn openai_day2(fake: &FakeProviders, input: i64, input_cost: &str) {
    fake.set_day(
        OPENAI_USAGE,
        day(2),
        vec![openai_usage(
            "proj_acme",
            "gpt-4o-2024-08-06",
            input,
            0,
            50_000,
        )],
    );
    fake.set_day(
        OPENAI_COSTS,
        day(2),
        vec![
            openai_cost("proj_acme", "gpt-4o-2024-08-06, input", json!(input_cost)),
            openai_cost("proj_acme", "gpt-4o-2024-08-06, output", json!(0.5)),
        ],
    );
}

#[tokio::test]
async fn openai_differences_are_found_attributed_and_reconcile_to_the_cent() {
    let database = migrated_database().await;
    let book = PriceBook::from_toml(BOOK).expect("book");
    let fake = FakeProviders::default();
    let base_url = fake.start().await;

    // The ledger: acme day 1 matches the bill; acme never metered day 2;
    // globex's gpt-4o-mini is priced wrong in the book (day 1); globex's
    // day 3 events reported no cached tokens (the cache discount missing);
    // acme's gpt-4o-mini on day 3 is nothing OpenAI billed.
    let events = [
        event(
            "openai",
            "acme",
            "gpt-4o",
            1,
            Tokens {
                uncached: 600_000,
                cached: 400_000,
                completion: 100_000,
                ..Tokens::default()
            },
        ),
        event(
            "openai",
            "globex",
            "gpt-4o-mini",
            1,
            Tokens {
                uncached: 2_000_000,
                completion: 1_000_000,
                ..Tokens::default()
            },
        ),
        event(
            "openai",
            "globex",
            "gpt-4o",
            3,
            Tokens {
                uncached: 1_000_000,
                ..Tokens::default()
            },
        ),
        event(
            "openai",
            "acme",
            "gpt-4o-mini",
            3,
            Tokens {
                uncached: 1_000_000,
                ..Tokens::default()
            },
        ),
    ];
    ingest(&database, &book, &events).await;

    // The bill.
    fake.set_day(
        OPENAI_USAGE,
        day(1),
        vec![
            openai_usage(
                "proj_acme",
                "gpt-4o-2024-08-06",
                1_000_000,
                400_000,
                100_000,
            ),
            openai_usage(
                "proj_globex",
                "gpt-4o-mini-2024-07-18",
                2_000_000,
                0,
                1_000_000,
            ),
        ],
    );
    fake.set_day(
        OPENAI_COSTS,
        day(1),
        vec![
            openai_cost("proj_acme", "gpt-4o-2024-08-06, input", json!("1.50")),
            openai_cost("proj_acme", "gpt-4o-2024-08-06, cached input", json!(0.5)),
            openai_cost("proj_acme", "gpt-4o-2024-08-06, output", json!("1.0")),
            openai_cost(
                "proj_globex",
                "gpt-4o-mini-2024-07-18, input",
                json!("0.30"),
            ),
            openai_cost("proj_globex", "gpt-4o-mini-2024-07-18, output", json!(0.6)),
        ],
    );
    openai_day2(&fake, 400_000, "1.00");
    fake.set_day(
        OPENAI_USAGE,
        day(3),
        vec![
            openai_usage("proj_globex", "gpt-4o-2024-08-06", 1_000_000, 800_000, 0),
            openai_usage("proj_stray", "gpt-4o-2024-08-06", 100_000, 0, 0),
        ],
    );
    fake.set_day(
        OPENAI_COSTS,
        day(3),
        vec![
            openai_cost("proj_globex", "gpt-4o-2024-08-06, input", json!("0.50")),
            openai_cost(
                "proj_globex",
                "gpt-4o-2024-08-06, cached input",
                json!("1.00"),
            ),
            openai_cost("proj_stray", "gpt-4o-2024-08-06, input", json!(0.25)),
        ],
    );
    fake.fault(
        OPENAI_USAGE,
        Fault::TooManyRequests {
            retry_after_seconds: 1,
        },
    );
    fake.fault(OPENAI_COSTS, Fault::ServerError);

    let config = config(&base_url);
    let mut client = database.client().await;
    let first = reconcile::fetch(&mut client, &config, &openai_range())
        .await
        .expect("fetch after a 429 and a 500");
    assert_eq!(first.len(), 2);
    for outcome in &first {
        assert_eq!(outcome.pages, 3, "one page per day");
        assert!(outcome
            .days
            .iter()
            .all(|d| d.new_revision && d.revision == 1));
    }
    let usage_requests = fake.requests_to(OPENAI_USAGE);
    assert_eq!(
        usage_requests.len(),
        4,
        "the 429 retried: {usage_requests:?}"
    );
    assert!(usage_requests[0].contains("group_by=project_id&group_by=model"));
    assert!(usage_requests[0].contains("bucket_width=1d"));
    assert!(usage_requests.iter().any(|q| q.contains("page=page_2")));

    // OpenAI revises day 2 upwards; a second fetch keeps both revisions.
    openai_day2(&fake, 500_000, "1.25");
    let second = reconcile::fetch(&mut client, &config, &openai_range())
        .await
        .expect("second fetch");
    for outcome in &second {
        let revised: Vec<_> = outcome.days.iter().filter(|d| d.new_revision).collect();
        assert_eq!(revised.len(), 1, "{:?}", outcome.days);
        assert_eq!((revised[0].day, revised[0].revision), (day(2), 2));
    }
    let stored: i64 = client
        .query_one(
            "SELECT count(*) AS n FROM provider_report_revisions WHERE provider = 'openai'",
            &[],
        )
        .await
        .expect("count")
        .get("n");
    assert_eq!(
        stored, 8,
        "3 days × 2 reports, plus day 2's revision of each"
    );
    let refused = client
        .execute("UPDATE provider_cost_rows SET amount_usd = 0", &[])
        .await
        .expect_err("stored reports are immutable");
    let refusal = refused
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(refusal.contains("immutable"), "{refused:?}");

    let result = reconcile::reconcile(&client, &config, &book, &openai_range(), None)
        .await
        .expect("reconciliation");
    let group = |d: u32, tenant: &str, model: &str| {
        result
            .groups
            .iter()
            .find(|g| g.day == day(d) && g.tenant_id == tenant && g.model == model)
            .unwrap_or_else(|| panic!("no group {d} {tenant} {model}: {:#?}", result.groups))
    };

    let matched = group(1, "acme", "gpt-4o");
    assert_eq!(matched.variance_usd, Decimal::ZERO, "{matched:#?}");
    assert!(matched.kind_deltas.is_empty());

    let unmetered = group(2, "acme", "gpt-4o");
    assert_eq!(
        unmetered.provider_cost_usd,
        usd("1.75"),
        "the latest revision"
    );
    assert_eq!(unmetered.causes.unseen_by_ledger, usd("-1.75"));
    assert_eq!(unmetered.causes.sum(), unmetered.variance_usd);

    let mispriced = group(1, "globex", "gpt-4o-mini");
    assert_eq!(
        mispriced.causes.price_difference,
        usd("0.30"),
        "{mispriced:#?}"
    );
    assert_eq!(mispriced.causes.token_kind_mismatch, Decimal::ZERO);
    assert_eq!(
        mispriced.price_entries,
        vec!["openai/gpt-4o-mini@2024-07-18".to_string()]
    );
    let input_rate = mispriced
        .rates
        .iter()
        .find(|r| r.kind == "input_uncached")
        .expect("the input rate is named");
    assert_eq!(input_rate.provider_usd_per_million, usd("0.15"));
    assert_eq!(input_rate.book_usd_per_million, Some(usd("0.30")));

    let no_discount = group(3, "globex", "gpt-4o");
    assert_eq!(
        no_discount.causes.token_kind_mismatch,
        usd("1.00"),
        "{no_discount:#?}"
    );
    assert_eq!(no_discount.causes.price_difference, Decimal::ZERO);
    assert_eq!(no_discount.causes.unseen_by_ledger, Decimal::ZERO);
    assert!(no_discount
        .kind_deltas
        .iter()
        .any(|d| d.kind == "cache_read" && d.provider == 800_000 && d.ledger == 0));

    let unmapped = group(3, UNMAPPED, "gpt-4o");
    assert_eq!(unmapped.causes.unseen_by_ledger, usd("-0.25"));
    assert_eq!(result.unmapped_scopes.get("proj_stray"), Some(&100_000));

    let unbilled = group(3, "acme", "gpt-4o-mini");
    assert_eq!(unbilled.causes.unseen_by_provider, usd("0.30"));

    // To the cent: the provider total is what the fake billed, the ledger
    // total is the audit table's, and the causes add up to the difference.
    let ledger_total: Decimal = client
        .query_one(
            "SELECT sum(estimated_cost) AS total FROM gateway_mode_audit WHERE provider = 'openai'",
            &[],
        )
        .await
        .expect("sum")
        .get("total");
    let total = &result.total.summary;
    assert_eq!(total.provider_cost_usd, usd("7.40"));
    assert_eq!(total.ledger_cost_usd, ledger_total);
    assert_eq!(total.ledger_cost_usd, usd("7.00"));
    assert_eq!(total.variance_usd, usd("-0.40"));
    assert_eq!(total.causes.unseen_by_ledger, usd("-2.00"));
    assert_eq!(total.causes.unseen_by_provider, usd("0.30"));
    assert_eq!(total.causes.price_difference, usd("0.30"));
    assert_eq!(total.causes.token_kind_mismatch, usd("1.00"));
    assert_eq!(total.causes.sum(), total.variance_usd);
    assert!(!result.within_bounds);
    assert!(result
        .revised_days
        .iter()
        .any(|r| r.day == day(2) && r.revisions == 2));

    // The command: table, JSON, gauges, and "out of bounds" for cron.
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("reconciliation.prom");
    let mut out = Vec::new();
    let within = reconcile::run(
        &mut client,
        &config,
        &book,
        &ReconcileCommand::Report(ReportArgs {
            range: openai_range(),
            fetch: false,
            tenant: None,
            format: Format::Table,
            metrics_file: Some(metrics.clone()),
            bounds: Bounds::default(),
        }),
        &mut out,
    )
    .await
    .expect("report");
    assert!(!within);
    let table = String::from_utf8(out).expect("utf-8");
    assert!(table.contains("price_difference"), "{table}");
    assert!(
        table.contains("provider implies 0.15/M, book 0.30/M (openai/gpt-4o-mini@2024-07-18)"),
        "{table}"
    );
    assert!(table.contains("unmapped: proj_stray"), "{table}");
    assert!(table.contains("OUT OF BOUNDS"), "{table}");
    let gauges = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(gauges.contains(
        r#"tokenledger_reconciliation_cost_variance_usd{cause="price_difference",provider="openai",tenant_id="globex"} 0.3"#
    ), "{gauges}");
    assert!(
        gauges.contains(
            r#"tokenledger_reconciliation_coverage_ratio{provider="openai",tenant_id="globex"}"#
        ),
        "{gauges}"
    );

    let mut out = Vec::new();
    reconcile::run(
        &mut client,
        &config,
        &book,
        &ReconcileCommand::Report(ReportArgs {
            range: openai_range(),
            fetch: false,
            tenant: Some("globex".into()),
            format: Format::Json,
            metrics_file: None,
            bounds: Bounds::default(),
        }),
        &mut out,
    )
    .await
    .expect("json report");
    let parsed: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert!(parsed["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .all(|g| g["tenant_id"] == "globex"));
    let price_difference = parsed["total"]["causes"]["price_difference"]
        .as_str()
        .expect("amounts are decimal strings");
    assert_eq!(usd(price_difference), usd("0.30"));

    // The binary, as cron runs it: exit status 2 when out of bounds, 1 on
    // a refused key, with the reason on stderr.
    let book_file = dir.path().join("prices.toml");
    std::fs::write(&book_file, BOOK).expect("price file");
    let config_file = dir.path().join("processor.toml");
    let write_config = |key: &str| {
        std::fs::write(
            &config_file,
            format!(
                "[database]\nurl = {url:?}\n[pricing]\npricebook_path = {book:?}\n\
                 [reconcile.openai]\nbase_url = {base_url:?}\nadmin_key = {key:?}\n\
                 project_tenants = {{ proj_acme = \"acme\", proj_globex = \"globex\" }}\n",
                url = database.url(),
                book = book_file.display().to_string(),
            ),
        )
        .expect("config file")
    };
    // Asynchronously: the fake providers answer on this test's runtime.
    let processor = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_processor"))
            .arg("--config")
            .arg(&config_file)
            .args(args)
            .env_remove("TOKENLEDGER_CONFIG")
            .output()
    };
    write_config(OPENAI_KEY);
    let range_args = [
        "--provider",
        "openai",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-04",
    ];
    let mut report_args = vec!["reconcile", "report", "--format", "json"];
    report_args.extend(range_args);
    let report = processor(&report_args).await.expect("processor runs");
    assert_eq!(
        report.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    assert_eq!(parsed["within_bounds"], json!(false));
    assert!(String::from_utf8_lossy(&report.stderr).contains("coverage_floor"));

    // The issue's form: one command fetches, stores and prints; its JSON is
    // the stored comparison's.
    let completed_runs = || async {
        let row = client
            .query_one(
                "SELECT count(*) AS runs FROM provider_fetch_runs
                 WHERE provider = 'openai' AND completed_at IS NOT NULL",
                &[],
            )
            .await
            .expect("count runs");
        row.try_get::<_, i64>("runs").expect("runs")
    };
    let runs_before = completed_runs().await;
    let one = processor(&[
        "reconcile",
        "openai",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-04",
        "--format",
        "json",
    ])
    .await
    .expect("processor runs");
    assert_eq!(
        one.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(
        completed_runs().await,
        runs_before + 2,
        "usage and cost fetched"
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&one.stdout).expect("JSON"),
        parsed
    );
    let within = processor(&[
        "reconcile",
        "openai",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-04",
        "--tenant",
        "acme",
        "--coverage-floor",
        "0",
        "--variance-ceiling",
        "1",
    ])
    .await
    .expect("processor runs");
    let table = String::from_utf8_lossy(&within.stdout);
    assert_eq!(
        within.status.code(),
        Some(0),
        "{table}{}",
        String::from_utf8_lossy(&within.stderr)
    );
    assert!(table.contains("fetched openai usage report"), "{table}");
    assert!(
        table.contains("within bounds (coverage floor 0.00%, variance ceiling 100.00%)"),
        "{table}"
    );
    let bad_floor = processor(&[
        "reconcile",
        "openai",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-04",
        "--coverage-floor",
        "1.5",
    ])
    .await
    .expect("processor runs");
    assert_eq!(bad_floor.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_floor.stderr)
        .contains("reconcile.coverage_floor must be between 0 and 1"));
    for subcommand in ["openai", "anthropic", "fetch", "report"] {
        let help = processor(&["reconcile", subcommand, "--help"])
            .await
            .expect("processor runs");
        let text = String::from_utf8_lossy(&help.stdout);
        assert_eq!(help.status.code(), Some(0), "{text}");
        assert!(text.contains("--from") && text.contains("--to"), "{text}");
    }

    write_config("sk-admin-revoked");
    let mut fetch_args = vec!["reconcile", "fetch"];
    fetch_args.extend(range_args);
    let fetch = processor(&fetch_args).await.expect("processor runs");
    let stderr = String::from_utf8_lossy(&fetch.stderr);
    assert_eq!(fetch.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("openai refused the admin key (401 Unauthorized)"),
        "{stderr}"
    );
    assert!(!stderr.contains("revoked"), "{stderr}");
}

fn anthropic_usage(
    workspace: Option<&str>,
    uncached: i64,
    read: i64,
    w5m: i64,
    w1h: i64,
    output: i64,
) -> serde_json::Value {
    json!({
        "uncached_input_tokens": uncached,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5m, "ephemeral_1h_input_tokens": w1h},
        "output_tokens": output,
        "server_tool_use": {"web_search_requests": 0},
        "api_key_id": null, "workspace_id": workspace, "model": "claude-sonnet-4-5-20250929",
        "service_tier": null, "context_window": null,
    })
}

fn anthropic_cost(workspace: Option<&str>, token_type: &str, cents: &str) -> serde_json::Value {
    json!({
        "currency": "USD", "amount": cents, "workspace_id": workspace,
        "description": format!("Claude Sonnet 4.5 Usage - {token_type}"),
        "cost_type": "tokens", "context_window": "0-200k",
        "model": "claude-sonnet-4-5-20250929", "service_tier": "standard",
        "token_type": token_type,
    })
}

#[tokio::test]
async fn anthropic_cache_kinds_and_cents_reconcile_and_a_missing_discount_is_a_kind_mismatch() {
    let database = migrated_database().await;
    let book = PriceBook::from_toml(BOOK).expect("book");
    let fake = FakeProviders::default();
    let base_url = fake.start().await;
    let events = [
        event(
            "anthropic",
            "acme",
            "claude-sonnet-4-5",
            1,
            Tokens {
                uncached: 100_000,
                cached: 200_000,
                write_5m: 40_000,
                write_1h: 10_000,
                completion: 20_000,
            },
        ),
        event(
            "anthropic",
            "globex",
            "claude-sonnet-4-5",
            2,
            Tokens {
                uncached: 1_000_000,
                ..Tokens::default()
            },
        ),
    ];
    ingest(&database, &book, &events).await;
    fake.set_day(
        ANTHROPIC_USAGE,
        day(1),
        vec![anthropic_usage(
            Some("wrkspc_acme"),
            100_000,
            200_000,
            40_000,
            10_000,
            20_000,
        )],
    );
    fake.set_day(
        ANTHROPIC_COSTS,
        day(1),
        vec![
            anthropic_cost(Some("wrkspc_acme"), "uncached_input_tokens", "30.00"),
            anthropic_cost(Some("wrkspc_acme"), "cache_read_input_tokens", "6"),
            anthropic_cost(
                Some("wrkspc_acme"),
                "cache_creation.ephemeral_5m_input_tokens",
                "15.000",
            ),
            anthropic_cost(
                Some("wrkspc_acme"),
                "cache_creation.ephemeral_1h_input_tokens",
                "6.00",
            ),
            anthropic_cost(Some("wrkspc_acme"), "output_tokens", "30.00"),
        ],
    );
    fake.set_day(
        ANTHROPIC_USAGE,
        day(2),
        vec![anthropic_usage(None, 100_000, 900_000, 0, 0, 0)],
    );
    fake.set_day(
        ANTHROPIC_COSTS,
        day(2),
        vec![
            anthropic_cost(None, "uncached_input_tokens", "30"),
            anthropic_cost(None, "cache_read_input_tokens", "27.00"),
        ],
    );
    fake.fault(
        ANTHROPIC_COSTS,
        Fault::TooManyRequests {
            retry_after_seconds: 1,
        },
    );
    let config = config(&base_url);
    let range = Range {
        provider: Provider::Anthropic,
        from: day(1),
        to: day(3),
    };
    let mut client = database.client().await;
    reconcile::fetch(&mut client, &config, &range)
        .await
        .expect("fetch");
    let requests = fake.requests_to(ANTHROPIC_USAGE);
    assert!(
        requests[0].contains("group_by%5B%5D=workspace_id"),
        "{requests:?}"
    );
    assert!(
        requests[0].contains("starting_at=2026-03-01T00%3A00%3A00Z"),
        "{requests:?}"
    );

    let result = reconcile::reconcile(&client, &config, &book, &range, None)
        .await
        .expect("reconciliation");
    let acme = result
        .groups
        .iter()
        .find(|g| g.tenant_id == "acme")
        .expect("acme");
    assert_eq!(acme.provider_cost_usd, usd("0.87"));
    assert_eq!(acme.variance_usd, Decimal::ZERO, "{acme:#?}");
    assert!(acme.kind_deltas.is_empty(), "{acme:#?}");
    let globex = result
        .groups
        .iter()
        .find(|g| g.tenant_id == "globex")
        .expect("default workspace");
    assert_eq!(globex.provider_cost_usd, usd("0.57"));
    assert_eq!(
        globex.causes.token_kind_mismatch,
        usd("2.43"),
        "{globex:#?}"
    );
    assert_eq!(globex.causes.sum(), globex.variance_usd);
    assert_eq!(result.total.summary.variance_usd, usd("2.43"));
}

#[tokio::test]
async fn a_bad_key_is_a_clear_error_and_a_failed_page_leaves_nothing_complete() {
    let database = migrated_database().await;
    let fake = FakeProviders::default();
    let base_url = fake.start().await;
    let mut config = config(&base_url);
    let mut client = database.client().await;

    config.openai.admin_key = Some("sk-proj-not-an-admin-key".into());
    let error = reconcile::fetch(&mut client, &config, &openai_range())
        .await
        .expect_err("refused key");
    assert!(
        matches!(error, ReconcileError::Fetch(FetchError::BadKey { .. })),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("admin key") && message.contains("401"),
        "{message}"
    );
    assert!(
        !message.contains("sk-proj-not"),
        "the key is never shown: {message}"
    );
    assert_eq!(
        fake.requests_to(OPENAI_USAGE).len(),
        1,
        "a refused key is not retried"
    );

    // Page 2 of the usage report fails every attempt: the run is recorded
    // as failed, and no day of it is stored.
    config.openai.admin_key = Some(OPENAI_KEY.into());
    fake.break_page(OPENAI_USAGE, 2);
    let error = reconcile::fetch(&mut client, &config, &openai_range())
        .await
        .expect_err("page 2 never arrives");
    assert!(
        matches!(
            error,
            ReconcileError::Fetch(FetchError::GaveUp { attempts: 3, .. })
        ),
        "{error}"
    );
    let runs = client
        .query(
            "SELECT completed_at IS NOT NULL AS complete, error, query FROM provider_fetch_runs",
            &[],
        )
        .await
        .expect("runs");
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| !r.get::<_, bool>("complete")));
    assert!(runs
        .iter()
        .all(|r| r.get::<_, Option<String>>("error").is_some()));
    for run in &runs {
        let query: String = run.get("query");
        assert!(
            query.starts_with(
                "/v1/organization/usage/completions?start_time=1772323200&end_time=1772582400"
            ),
            "the query of a run is kept: {query}"
        );
    }
    let revisions: i64 = client
        .query_one("SELECT count(*) AS n FROM provider_report_revisions", &[])
        .await
        .expect("count")
        .get("n");
    assert_eq!(revisions, 0);

    let book = PriceBook::from_toml(BOOK).expect("book");
    let result = reconcile::reconcile(&client, &config, &book, &openai_range(), None)
        .await
        .expect("reconciliation of nothing");
    assert_eq!(result.uncompared_days, vec![day(1), day(2), day(3)]);
    assert!(result.groups.is_empty());
}
