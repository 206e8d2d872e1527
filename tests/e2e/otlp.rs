//! OpenTelemetry in, ledger rows out: the real OpenTelemetry Python SDK with the official OpenAI
//! instrumentation drives the real `openai` client against a local fake of the Chat Completions
//! API (tests/python/otlp_openai.py) and exports its spans to a gateway over OTLP/HTTP (gzip,
//! protobuf), then exports the same spans again as an exporter retry would. The processor writes
//! them to TimescaleDB: one priced row per call, rollups and counters to match, and the retry
//! changes nothing.

use std::time::Duration;

use e2e::ledger_check::{int, refresh_rollups, text_rows, wait_for_rows};
use e2e::usage::Services;
use e2e::{required_path, wait_for_some};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Runs the Python exporter against `endpoint` with the resource attribute `tenant.id=tenant`.
async fn run_python(endpoint: &str, tenant: &str, env: &[(&str, &str)]) -> Value {
    let python = required_path("TOKENLEDGER_PYTHON_BIN");
    let script = e2e::repo_root().join("tests/python/otlp_openai.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args(["--endpoint", endpoint, "--tenant", tenant])
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the Python exporter finishes in time")
        .expect("the Python exporter runs");
    assert!(
        output.status.success(),
        "otlp_openai.py failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints a JSON summary")
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
}

#[tokio::test]
async fn openai_instrumentation_spans_become_one_priced_row_per_call() {
    let services = Services::start(1).await;
    // Authentication off: the caller is an admin, so the tenant comes from `tenant.id`.
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(WAIT).await;
    let endpoint = format!("{}/v1/traces", gateway.url);

    // The instrumentation's default attributes (gen_ai.system), then the current conventions'
    // (gen_ai.provider.name).
    let legacy = run_python(&endpoint, "otel-legacy", &[]).await;
    let current = run_python(
        &endpoint,
        "otel-current",
        &[(
            "OTEL_SEMCONV_STABILITY_OPT_IN",
            "gen_ai_latest_experimental",
        )],
    )
    .await;
    for summary in [&legacy, &current] {
        assert_eq!(summary["spans"], 2, "{summary}");
        assert_eq!(summary["retry"], "SUCCESS", "{summary}");
    }
    assert!(legacy["attributes"][0].get("gen_ai.system").is_some());
    assert!(current["attributes"][0]
        .get("gen_ai.provider.name")
        .is_some());

    let client = services.database.client().await;
    wait_for_rows(&client, 4, WAIT).await;
    // Every span reached the log twice (export and retry); the processor keeps one row each.
    let counters = wait_for_some(WAIT, || async {
        let counters = processor.scrape().await?;
        (counters.inserted + counters.duplicates >= 8).then_some(counters)
    })
    .await
    .expect("the processor reads all eight records");
    assert_eq!(
        (counters.inserted, counters.duplicates),
        (4, 4),
        "{counters:?}"
    );
    assert_eq!(counters.conflicts, 0);
    // The guide's counters, per tenant: prompt, completion, total tokens and cost.
    for tenant in ["otel-legacy", "otel-current"] {
        let (prompt, completion, total, cost) = counters.per_tenant[tenant];
        assert_eq!((prompt, completion, total), (2000, 340, 2340), "{tenant}");
        assert!((cost - 0.000504).abs() < 1e-9, "{tenant}: {cost}");
    }
    assert!(
        counters.dead_lettered.values().all(|n| *n == 0),
        "{counters:?}"
    );

    let rows = text_rows(
        &client,
        "SELECT tenant_id, provider, model, prompt_tokens::text AS prompt, \
         completion_tokens::text AS completion, total_tokens::text AS total, pricing_status, \
         estimated_cost::text AS cost, (request_id IS NOT NULL)::text AS has_request_id \
         FROM gateway_mode_audit ORDER BY tenant_id, gateway_mode_audit.prompt_tokens DESC",
    )
    .await;
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(Option::unwrap_or_default).collect())
        .collect();
    let expected = |tenant: &str, prompt: &str, completion: &str, total: &str, cost: &str| {
        vec![
            tenant.to_owned(),
            "openai".into(),
            "gpt-4o-mini".into(),
            prompt.into(),
            completion.into(),
            total.into(),
            "priced".into(),
            cost.into(),
            "true".into(),
        ]
    };
    // gpt-4o-mini lists at $0.15 input and $0.60 output per million tokens. The
    // instrumentation does not report the cached or reasoning details, so none are stored.
    let mut want = Vec::new();
    for tenant in ["otel-current", "otel-legacy"] {
        want.push(expected(tenant, "1200", "300", "1500", "0.0003600000"));
        want.push(expected(tenant, "800", "40", "840", "0.0001440000"));
    }
    assert_eq!(rows, want);

    refresh_rollups(&client).await;
    let rollup = text_rows(
        &client,
        "SELECT tenant_id, sum(requests)::text, sum(prompt_tokens)::text, \
         sum(completion_tokens)::text, sum(cost)::text \
         FROM usage_hourly GROUP BY tenant_id ORDER BY tenant_id",
    )
    .await;
    for row in &rollup {
        assert_eq!(int(&row[1]), 2, "{rollup:?}");
        assert_eq!(int(&row[2]), 2000, "{rollup:?}");
        assert_eq!(int(&row[3]), 340, "{rollup:?}");
        assert_eq!(row[4].as_deref(), Some("0.0005040000"), "{rollup:?}");
    }
    assert_eq!(rollup.len(), 2);

    let text = gateway.metrics().await;
    assert_eq!(
        metric(
            &text,
            "tokenledger_gateway_otlp_spans_total{outcome=\"event\"}"
        ),
        8.0
    );
    assert_eq!(
        metric(
            &text,
            "tokenledger_gateway_otlp_spans_total{outcome=\"refused\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(&text, "tokenledger_gateway_events_accepted_total"),
        8.0
    );
}
