//! Provider usage objects built by the providers' own Python SDKs (tests/python/sdk_usage.py:
//! openai, anthropic, google-genai, botocore), sent as `usage` + `usage_format` to a real gateway
//! and stored by a real processor in TimescaleDB: every case is stored with the token counts the
//! SDK object says and priced from the book; tokens the book has no rate for are stored, named in
//! `pricing_rule`, counted in `tokenledger_tokens_unpriced_total` and shown by `processor
//! report`; the mistakes an application makes (another format's object, an empty one) are 400s
//! that name the format expected and the one the object looks like, and nothing of them is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::ledger_check::{text_rows, wait_for_rows};
use e2e::usage::{http_client, Services};
use e2e::{required_path, wait_for_some, Binary, ChildProcess};
use ledger::{PriceBook, UsageEvent};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

/// An hour ago, to the second: inside the gateway's window, and one price in force for the
/// stored row and the book's own rating of the expected counts.
fn created_at() -> DateTime<Utc> {
    let now = Utc::now().timestamp() - 3600;
    DateTime::from_timestamp(now, 0).expect("time")
}

async fn sdk_objects() -> Value {
    let python = required_path("TOKENLEDGER_PYTHON_BIN");
    let script = e2e::repo_root().join("tests/python/sdk_usage.py");
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(python)
            .arg(script)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sdk_usage.py finishes in time")
    .expect("sdk_usage.py runs");
    assert!(
        output.status.success(),
        "sdk_usage.py failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("sdk_usage.py prints JSON")
}

fn event(index: usize, case: &Value, at: DateTime<Utc>) -> Value {
    json!({
        "id": format!("0195d1a0-0000-7000-8000-{index:012}"),
        "created_at": at.to_rfc3339(),
        "tenant_id": "sdk",
        "provider": case["provider"],
        "model": case["model"],
        "usage_format": case["usage_format"],
        "usage": case["usage"],
        "labels": {"case": case["name"]},
    })
}

/// The case's expected counts as an event of their own, sent without `usage`: what the
/// stored row must cost, rated by the book independently of the usage mapping.
fn expected_event(case: &Value, at: DateTime<Utc>) -> UsageEvent {
    let expect = &case["expect"];
    let mut value = json!({
        "id": "0195d1a0-0000-7000-8000-000000000000",
        "created_at": at.to_rfc3339(),
        "tenant_id": "sdk",
        "provider": case["provider"],
        "model": case["model"],
    });
    for field in [
        "prompt_tokens",
        "completion_tokens",
        "cached_prompt_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "reasoning_tokens",
        "calls",
    ] {
        value[field] = expect[field].clone();
    }
    let mut event = UsageEvent::from_request_value(&value, Utc::now(), &Default::default())
        .unwrap_or_else(|err| panic!("{}: {err}", case["name"]));
    event.unpriced_tokens =
        serde_json::from_value(expect["unpriced_tokens"].clone()).expect("unpriced tokens");
    event
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = http_client()
        .post(format!("{url}/v1/usage"))
        .json(body)
        .send()
        .await
        .expect("gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sdk_built_usage_is_stored_with_its_counts_and_cost() {
    let objects = sdk_objects().await;
    let cases = objects["cases"].as_array().expect("cases").clone();
    let refused = objects["refused"].as_array().expect("refused").clone();
    assert!(cases.len() >= 30, "{}", objects["versions"]);

    let services = Services::start(1).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(WAIT).await;

    let at = created_at();
    for (index, case) in refused.iter().enumerate() {
        let (status, body) = post(&gateway.url, &event(1000 + index, case, at)).await;
        assert_eq!(status, 400, "{}: {body}", case["name"]);
        let text = body.to_string();
        for word in case["mentions"].as_array().expect("mentions") {
            let word = word.as_str().expect("text");
            assert!(text.contains(word), "{}: {word} in {text}", case["name"]);
        }
    }

    let batch: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(index, case)| event(index, case, at))
        .collect();
    let (status, body) = post(&gateway.url, &Value::Array(batch)).await;
    assert_eq!(status, 202, "{body}");

    let client = services.database.client().await;
    wait_for_rows(&client, cases.len(), WAIT).await;
    let rows = text_rows(
        &client,
        "SELECT labels->>'case', prompt_tokens::text, completion_tokens::text, \
         total_tokens::text, cached_prompt_tokens::text, cache_write_tokens::text, \
         COALESCE(cache_write_1h_tokens, 0)::text, reasoning_tokens::text, \
         COALESCE(calls, '{}')::text, COALESCE(unpriced_tokens, '{}')::text, pricing_status, \
         estimated_cost::text, pricing_rule FROM gateway_mode_audit",
    )
    .await;
    let stored: BTreeMap<String, Vec<String>> = rows
        .into_iter()
        .map(|row| {
            let row: Vec<String> = row.into_iter().map(Option::unwrap_or_default).collect();
            (row[0].clone(), row[1..].to_vec())
        })
        .collect();
    assert_eq!(stored.len(), cases.len(), "one row per case, none refused");

    let book = PriceBook::builtin().expect("the built-in book parses");
    let mut unpriced_total: BTreeMap<String, u64> = BTreeMap::new();
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let row = &stored[name];
        let expect = &case["expect"];
        let counts: Vec<String> = [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_prompt_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "reasoning_tokens",
        ]
        .iter()
        .map(|field| expect[field].to_string())
        .collect();
        assert_eq!(row[..7], counts[..], "{name}: {}", case["usage"]);
        let json_of = |text: &str| serde_json::from_str::<Value>(text).expect("jsonb");
        assert_eq!(json_of(&row[7]), expect["calls"], "{name}");
        assert_eq!(json_of(&row[8]), expect["unpriced_tokens"], "{name}");
        assert_eq!(row[9], "priced", "{name}");

        let rating = book.rate_event(&expected_event(case, at));
        let cost: Decimal = row[10].parse().expect("cost");
        assert_eq!(cost.normalize(), rating.cost, "{name}: {}", row[11]);
        let zero = expect["total_tokens"] == 0;
        assert_eq!(cost.is_zero(), zero, "{name}: only a real zero is free");

        let unpriced = expect["unpriced_tokens"].as_object().expect("object");
        assert_eq!(
            row[11].contains("not priced:"),
            !unpriced.is_empty(),
            "{name}: {}",
            row[11]
        );
        for (component, n) in unpriced {
            let n = n.as_u64().expect("count");
            assert!(
                row[11].contains(&format!("{component} {n} tokens")),
                "{name}: {}",
                row[11]
            );
            *unpriced_total.entry(component.clone()).or_default() += n;
        }
    }
    assert!(
        !unpriced_total.is_empty(),
        "the fixtures exercise unpriced tokens"
    );

    let metrics = wait_for_some(WAIT, || async {
        let response = http_client()
            .get(format!("{}/metrics", processor.metrics_url))
            .send()
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        text.contains("tokenledger_tokens_unpriced_total")
            .then_some(text)
    })
    .await
    .expect("the processor counts unpriced tokens");
    for (component, n) in &unpriced_total {
        let line = metrics
            .lines()
            .find(|line| {
                line.starts_with("tokenledger_tokens_unpriced_total")
                    && line.contains(&format!("component=\"{component}\""))
            })
            .unwrap_or_else(|| panic!("{component} in\n{metrics}"));
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert_eq!(value, *n as f64, "{line}");
    }

    let url = services.database.url();
    let mut report = ChildProcess::spawn(
        "processor-report",
        Binary::path("processor"),
        &["report"],
        &[("TOKENLEDGER_DATABASE__URL", url.as_str())],
    );
    let status = report.wait_exit(WAIT).await;
    let text = report.log_contents();
    assert!(status.is_some_and(|s| s.success()), "{text}");
    assert!(text.contains("tokens not priced"), "{text}");
    for (component, n) in &unpriced_total {
        assert!(
            text.lines()
                .any(|line| line.contains(component.as_str()) && line.contains(&n.to_string())),
            "{component} {n} in\n{text}"
        );
    }
}
