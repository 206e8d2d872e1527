//! The optimization reports as an operator reaches them: `processor report optimize` and
//! `processor what-if` print the same JSON the gateway's `GET /v1/reports/optimize` and
//! `GET /v1/reports/what-if` answer admin keys; tenant keys, bad dates and models that are not
//! `PROVIDER/MODEL` or not in the price book are refused with a clear 4xx. The figures themselves
//! are checked against the raw table in processor/tests/optimize_db.rs.

use std::process::Output;
use std::time::Duration;

use crate::admin_gateway::{self, get};
use e2e::{Binary, Database};
use serde_json::Value;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const ADMIN_KEY: &str = "optimize-test-admin-key-0123456789";
const ACME_KEY: &str = "optimize-test-acme-key-0123456789";

/// Raw rows for the what-if, and the rollup rows the processor's batches would have written for
/// them (one per row: each row has its own day or use case).
async fn insert_usage(db: &Database) {
    let client = db.client().await;
    let rows = [
        (
            "acme",
            "anthropic",
            "claude-sonnet-4-5",
            "chat",
            12_000,
            800,
            4_000,
            "2026-01-31 23:00",
        ),
        (
            "acme",
            "openai",
            "gpt-5",
            "rag",
            30_000,
            2_000,
            0,
            "2026-02-01 01:00",
        ),
        (
            "globex",
            "openai",
            "gpt-4o",
            "chat",
            2_000,
            300,
            1_024,
            "2026-02-02 10:00",
        ),
    ];
    for (i, (tenant, provider, model, use_case, prompt, completion, cached, at)) in
        rows.iter().enumerate()
    {
        client
            .execute(
                "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
                     completion_tokens, total_tokens, cached_prompt_tokens, estimated_cost,
                     created_at, pricing_status, labels, received_at, payload_sha256,
                     source_partition, source_offset)
                 VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $4::int + $5::int, $6, 0.0123,
                         $7::text::timestamptz, 'priced', jsonb_build_object('use_case', $8::text),
                         now(), '\\x00'::bytea, 0, $9)",
                &[
                    tenant,
                    provider,
                    model,
                    prompt,
                    completion,
                    cached,
                    &format!("{at}+00"),
                    use_case,
                    &(i as i64),
                ],
            )
            .await
            .expect("insert a usage row");
        client
            .execute(
                "INSERT INTO usage_optimize_daily (day, tenant_id, provider, model, use_case,
                     requests, prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
                     max_prompt_tokens, cost, priced_requests, priced_tokens)
                 VALUES (date_trunc('day', $7::text::timestamptz), $1, $2, $3, $8, 1, $4::int,
                         $5::int, $4::int + $5::int, $6::int, $4::int, 0.0123, 1,
                         $4::int + $5::int)",
                &[
                    tenant,
                    provider,
                    model,
                    prompt,
                    completion,
                    cached,
                    &format!("{at}+00"),
                    use_case,
                ],
            )
            .await
            .expect("insert a rollup row");
        client
            .execute(
                "INSERT INTO usage_optimize_histogram (day, tenant_id, provider, model, use_case,
                     metric, bucket, requests)
                 VALUES (date_trunc('day', $5::text::timestamptz), $1, $2, $3, $6, 'prompt_tokens',
                         ceil(ln($4::float8) / ln(1.01 / 0.99))::int, 1)",
                &[
                    tenant,
                    provider,
                    model,
                    &f64::from(*prompt),
                    &format!("{at}+00"),
                    use_case,
                ],
            )
            .await
            .expect("insert a histogram row");
    }
}

async fn processor(db: &Database, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(Binary::path("processor"));
    command
        .args(args)
        .env("TOKENLEDGER_DATABASE__URL", db.url())
        .env("TOKENLEDGER_LOG", "warn")
        .kill_on_drop(true);
    tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("processor {args:?} did not finish in {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run processor {args:?}: {e}"))
}

async fn processor_ok(db: &Database, args: &[&str]) -> Vec<u8> {
    let output = processor(db, args).await;
    assert!(
        output.status.success(),
        "processor {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// The what-if without the instant it was priced at, which differs between two calls.
fn without_priced_at(mut value: Value) -> Value {
    assert!(value["priced_at"].is_string(), "{value}");
    value["priced_at"] = Value::Null;
    value
}

#[tokio::test]
async fn the_cli_and_the_gateway_answer_the_same_reports_to_admins_only() {
    let db = Database::start().await;
    processor_ok(&db, &["migrate"]).await;
    insert_usage(&db).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_gateway, base) = admin_gateway::start(&db, dir.path(), "", ADMIN_KEY, ACME_KEY).await;

    let range = ["--from", "2026-01-31", "--to", "2026-02-03"];
    let cli = processor_ok(
        &db,
        &[&["report", "optimize"][..], &range, &["--format", "json"]].concat(),
    )
    .await;
    let url = format!("{base}/v1/reports/optimize?from=2026-01-31&to=2026-02-03");
    let (status, http) = get(&url, ADMIN_KEY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&http));
    let report = json(&cli);
    assert_eq!(
        report,
        json(&http),
        "CLI and HTTP optimization reports differ"
    );
    assert_eq!(
        report["prompt_length_by_model"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(report["percentile_relative_error"], 0.01);

    // one tenant, February only: the January row is left out
    let cli = processor_ok(
        &db,
        &[
            "report",
            "optimize",
            "--from",
            "2026-02-01",
            "--to",
            "2026-02-03",
            "--tenant",
            "acme",
            "--format",
            "json",
        ],
    )
    .await;
    let (_, http) = get(
        &format!("{base}/v1/reports/optimize?from=2026-02-01&to=2026-02-03&tenant=acme"),
        ADMIN_KEY,
    )
    .await;
    let acme = json(&cli);
    assert_eq!(acme, json(&http));
    assert_eq!(acme["prompt_length_by_model"][0]["model"], "gpt-5");
    assert_eq!(
        acme["prompt_length_by_model"].as_array().map(Vec::len),
        Some(1)
    );

    let what_if = [
        &["what-if"][..],
        &range,
        &[
            "--model",
            "openai/gpt-4o-mini",
            "--use-case",
            "chat",
            "--format",
            "json",
        ],
    ]
    .concat();
    let cli = json(&processor_ok(&db, &what_if).await);
    let (status, http) = get(
        &format!(
            "{base}/v1/reports/what-if?from=2026-01-31&to=2026-02-03&model=openai/gpt-4o-mini&use_case=chat"
        ),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&http));
    assert_eq!(
        without_priced_at(cli.clone()),
        without_priced_at(json(&http))
    );
    assert_eq!(cli["total"]["requests"], 2, "the two chat rows: {cli}");
    assert_eq!(cli["models"].as_array().map(Vec::len), Some(2));

    // the tables say what the numbers are not
    let table = processor_ok(
        &db,
        &[&["what-if"][..], &range, &["--model", "openai/gpt-4o-mini"]].concat(),
    )
    .await;
    let table = String::from_utf8_lossy(&table);
    for line in [
        "tokenizers",
        "quality is not measured",
        "anthropic/claude-sonnet-4-5",
        "total",
    ] {
        assert!(table.contains(line), "{line} missing:\n{table}");
    }
    let table = processor_ok(&db, &[&["report", "optimize"][..], &range].concat()).await;
    let table = String::from_utf8_lossy(&table);
    for line in [
        "prompt tokens per request",
        "within 1%",
        "what caching saved",
        "openai/gpt-5",
    ] {
        assert!(table.contains(line), "{line} missing:\n{table}");
    }

    // refusals
    let (status, _) = get(&url, ACME_KEY).await;
    assert_eq!(status, 403, "a tenant key is refused");
    let (status, _) = get(&url, "not-a-key").await;
    assert_eq!(status, 401);
    for query in [
        "optimize?from=2026-02-03&to=2026-02-01",
        "optimize?from=yesterday&to=2026-02-01",
        "optimize?from=2020-01-01&to=2026-02-01",
        "what-if?from=2026-01-31&to=2026-02-03&model=gpt-4o-mini",
        "what-if?from=2026-01-31&to=2026-02-03&model=openai/no-such-model",
    ] {
        let (status, body) = get(&format!("{base}/v1/reports/{query}"), ADMIN_KEY).await;
        assert_eq!(status, 400, "{query}: {}", String::from_utf8_lossy(&body));
        assert!(json(&body)["message"].is_string(), "{query}");
    }
    let refused = processor(
        &db,
        &[
            &["what-if"][..],
            &range,
            &["--model", "openai/no-such-model"],
        ]
        .concat(),
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no list price"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
