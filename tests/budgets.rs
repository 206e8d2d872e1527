//! Budgets end to end: the real gateway and processor binaries against a broker, TimescaleDB and
//! a real Alertmanager.
//!
//! - `threshold_alerts_reach_alertmanager_once_through_a_crash_and_an_outage`: the admin API
//!   (tenant keys refused, validation, duplicate names), traffic crossing 50 % with the processor
//!   SIGKILLed after the crossing committed and before it was pushed (a test-only push delay
//!   holds the push back), a restarted processor delivering it once, then Alertmanager down
//!   while 75 % and 90 % are crossed and receiving them when it is back; Alertmanager's API shows
//!   exactly the expected alerts, labels and annotations; the webhook receives each crossing once;
//!   the status endpoint and the spend-ratio gauge agree.
//! - `a_budget_created_while_traffic_flows_counts_from_the_period_start`: spend of a budget
//!   created mid-traffic equals the whole period's cost in the audit table.
//!
//! Daily re-arming, late events and redelivery are covered against the database in
//! processor/tests/budgets_db.rs, where `created_at` can be chosen freely.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::usage::{answers_ok, hash_key};
use e2e::{
    free_port, wait_for, wait_for_some, Alertmanager, Binary, Broker, ChildProcess, Database,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPIC: &str = "usage-events";
const DLQ_TOPIC: &str = "usage-events.dlq";
const STARTUP: Duration = Duration::from_secs(60);
const ADMIN_KEY: &str = "budget-test-admin-key-0123456789";
const ACME_KEY: &str = "budget-test-acme-key-0123456789";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

struct Stack {
    broker: Broker,
    db: Database,
    alertmanager: Alertmanager,
    gateway: ChildProcess,
    gateway_url: String,
    _config_dir: tempfile::TempDir,
}

async fn wait_ready(process: &mut ChildProcess, url: &str) {
    let ok = wait_for(STARTUP, || answers_ok(url, Duration::from_secs(10))).await;
    if !ok {
        process.assert_running();
        panic!(
            "{} not ready at {url}; log:\n{}",
            process.name(),
            process.log_tail()
        );
    }
}

impl Stack {
    async fn start() -> Stack {
        let broker = Broker::start().await;
        broker.create_topic(TOPIC, 3).await;
        broker.create_topic(DLQ_TOPIC, 1).await;
        let db = Database::start().await;
        let db_url = db.url();
        let mut migrate = ChildProcess::spawn(
            "processor-migrate",
            Binary::path("processor"),
            &["migrate"],
            &[("TOKENLEDGER_DATABASE__URL", db_url.as_str())],
        );
        let status = migrate.wait_exit(STARTUP).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "processor migrate failed; log:\n{}",
            migrate.log_tail()
        );
        let alertmanager = Alertmanager::start().await;

        let config_dir = tempfile::tempdir().expect("tempdir");
        let config = config_dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[[auth.keys]]\nsha256 = \"{}\"\nadmin = true\n\n\
                 [[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"acme\"\n",
                hash_key(ADMIN_KEY),
                hash_key(ACME_KEY)
            ),
        )
        .expect("gateway config");
        let listen = format!("127.0.0.1:{}", free_port());
        let admin_listen = format!("127.0.0.1:{}", free_port());
        let config_path = config.display().to_string();
        let (brokers, db_url) = (broker.bootstrap(), db.url());
        let mut gateway = ChildProcess::spawn(
            "gateway",
            Binary::path("gateway"),
            &["--config", config_path.as_str()],
            &[
                ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
                ("TOKENLEDGER_HTTP__LISTEN", listen.as_str()),
                ("TOKENLEDGER_HTTP__ADMIN_LISTEN", admin_listen.as_str()),
                ("TOKENLEDGER_DATABASE__URL", db_url.as_str()),
            ],
        );
        let gateway_url = format!("http://{listen}");
        wait_ready(&mut gateway, &format!("{gateway_url}/readyz")).await;
        Stack {
            broker,
            db,
            alertmanager,
            gateway,
            gateway_url,
            _config_dir: config_dir,
        }
    }

    /// A processor pushing to this stack's Alertmanager and to `webhook`, holding every push
    /// back by `push_delay_ms`. Returns it with its metrics URL, once ready.
    async fn processor(&self, webhook: &str, push_delay_ms: u64) -> (ChildProcess, String) {
        let metrics = format!("127.0.0.1:{}", free_port());
        let push_delay = push_delay_ms.to_string();
        let (brokers, db_url, alertmanager) = (
            self.broker.bootstrap(),
            self.db.url(),
            self.alertmanager.url(),
        );
        let mut env = vec![
            ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
            ("TOKENLEDGER_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TOKENLEDGER_DATABASE__URL", db_url.as_str()),
            ("TOKENLEDGER_METRICS__LISTEN", metrics.as_str()),
            ("TOKENLEDGER_BATCH__MAX_LATENCY_MS", "100"),
            (
                "TOKENLEDGER_ALERTING__ALERTMANAGER_URL",
                alertmanager.as_str(),
            ),
            ("TOKENLEDGER_ALERTING__POLL_INTERVAL_MS", "200"),
            ("TOKENLEDGER_ALERTING__MAX_BACKOFF_MS", "1000"),
            ("TOKENLEDGER_ALERTING__TIMEOUT_MS", "1000"),
            ("TOKENLEDGER_ALERTING__PUSH_DELAY_MS", push_delay.as_str()),
        ];
        if !webhook.is_empty() {
            env.push(("TOKENLEDGER_ALERTING__WEBHOOK_URL", webhook));
        }
        let mut processor =
            ChildProcess::spawn("processor", Binary::path("processor"), &["run"], &env);
        let url = format!("http://{metrics}");
        wait_ready(&mut processor, &format!("{url}/readyz")).await;
        (processor, url)
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.gateway_url);
        let mut request = http()
            .request(method.parse().expect("method"), &url)
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// POSTs usage events of `tenant`, each with the given caller-known cost.
    async fn usage(&self, tenant: &str, costs: &[&str]) {
        let events: Vec<Value> = costs
            .iter()
            .map(|cost| {
                json!({
                    "tenant_id": tenant, "provider": "openai", "model": "gpt-4o",
                    "prompt_tokens": 1000, "completion_tokens": 100, "estimated_cost": cost,
                })
            })
            .collect();
        let (status, body) = self
            .call("POST", "/v1/usage", ADMIN_KEY, Some(Value::Array(events)))
            .await;
        assert_eq!(status, 202, "{body}");
    }

    /// Recorded crossings: threshold → (attempts, delivered to Alertmanager, last error).
    async fn crossings(&self) -> BTreeMap<i16, (i32, bool, Option<String>)> {
        self.db
            .client()
            .await
            .query(
                "SELECT threshold, attempts, alertmanager_delivered_at IS NOT NULL, last_error
                 FROM budget_alerts",
                &[],
            )
            .await
            .expect("budget_alerts")
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
            .collect()
    }

    /// The LLMBudgetThreshold alerts Alertmanager holds, by threshold.
    async fn budget_alerts(&self) -> BTreeMap<String, Value> {
        self.alertmanager
            .alerts()
            .await
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == "LLMBudgetThreshold")
            .map(|a| {
                (
                    a["labels"]["threshold"].as_str().unwrap_or("").to_owned(),
                    a,
                )
            })
            .collect()
    }
}

/// A minimal HTTP receiver for the webhook: records each request body, answers 200.
#[derive(Clone, Default)]
struct Webhook {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("webhook binds");
        let address = listener.local_addr().expect("address");
        let bodies = self.bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0_u8; 8192];
                    loop {
                        let Ok(read) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                        let text = String::from_utf8_lossy(&buffer).into_owned();
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buffer.len() < head_end + 4 + length {
                            continue;
                        }
                        let body = &buffer[head_end + 4..head_end + 4 + length];
                        if let Ok(value) = serde_json::from_slice(body) {
                            bodies.lock().expect("lock").push(value);
                        }
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                });
            }
        });
        format!("http://{address}/hook")
    }

    /// How often each threshold was received.
    fn deliveries(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for body in self.bodies.lock().expect("lock").iter() {
            for alert in body.as_array().into_iter().flatten() {
                let threshold = alert["labels"]["threshold"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                *counts.entry(threshold).or_default() += 1;
            }
        }
        counts
    }
}

async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn month_start_label() -> String {
    let now = chrono_like_today();
    format!("{}-01", &now[..7])
}

/// Today's UTC date as `YYYY-MM-DD`, from the system clock (the test crate has no chrono).
fn chrono_like_today() -> String {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("date runs");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn threshold_alerts_reach_alertmanager_once_through_a_crash_and_an_outage() {
    let mut stack = Stack::start().await;
    let webhook = Webhook::default();
    let webhook_url = webhook.start().await;

    // The admin API: tenant keys may not manage budgets; validation names fields.
    let budget = json!({
        "name": "acme-monthly", "tenant_id": "acme", "period": "monthly",
        "amount_usd": "10.00", "hard_limit": true,
    });
    let (status, _) = stack
        .call("POST", "/v1/budgets", ACME_KEY, Some(budget.clone()))
        .await;
    assert_eq!(status, 403);
    let (status, body) = stack
        .call(
            "POST",
            "/v1/budgets",
            ADMIN_KEY,
            Some(json!({"name": "x", "tenant_id": "acme", "period": "monthly", "amount_usd": "0"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "amount_usd");
    let (status, created) = stack
        .call("POST", "/v1/budgets", ADMIN_KEY, Some(budget.clone()))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, _) = stack
        .call("POST", "/v1/budgets", ADMIN_KEY, Some(budget.clone()))
        .await;
    assert_eq!(status, 409, "duplicate name");
    let (status, listed) = stack.call("GET", "/v1/budgets", ADMIN_KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["budgets"][0]["name"], "acme-monthly");
    let mut edited = budget.clone();
    edited["thresholds"] = json!([50, 75, 90, 100]);
    let (status, replaced) = stack
        .call("PUT", &format!("/v1/budgets/{id}"), ADMIN_KEY, Some(edited))
        .await;
    assert_eq!(status, 200, "{replaced}");

    // A processor whose pushes wait 3 s: the crossing commits, then it is killed before pushing.
    let (mut first, _) = stack.processor(&webhook_url, 3_000).await;
    stack.usage("acme", &["2.5", "3.0"]).await; // 5.5 of 10: 50 %
    let recorded = wait_for(STARTUP, || async {
        stack.crossings().await.contains_key(&50)
    })
    .await;
    assert!(
        recorded,
        "the 50 % crossing was not recorded; processor log:\n{}",
        first.log_tail()
    );
    first.kill9();
    assert!(
        stack.budget_alerts().await.is_empty(),
        "pushed before the kill"
    );
    assert!(webhook.deliveries().is_empty());
    assert_eq!(stack.crossings().await[&50].0, 0, "never attempted");

    // A restarted processor delivers it: once, with the exact labels and text.
    let (mut second, metrics_url) = stack.processor(&webhook_url, 0).await;
    let alerts = wait_for_some(STARTUP, || async {
        let alerts = stack.budget_alerts().await;
        (!alerts.is_empty()).then_some(alerts)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no alert in Alertmanager; processor log:\n{}",
            second.log_tail()
        )
    });
    assert_eq!(alerts.keys().collect::<Vec<_>>(), ["50"]);
    let alert = &alerts["50"];
    let labels: BTreeMap<String, String> =
        serde_json::from_value(alert["labels"].clone()).expect("labels");
    let expected: BTreeMap<String, String> = [
        ("alertname", "LLMBudgetThreshold"),
        ("tenant_id", "acme"),
        ("budget", "acme-monthly"),
        ("threshold", "50"),
        ("period", "monthly"),
        ("period_start", month_start_label().as_str()),
        ("severity", "warning"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(labels, expected);
    assert_eq!(
        alert["annotations"]["summary"],
        "50% of the monthly budget used: $5.00 of $10.00 (tenant acme)"
    );
    let description = alert["annotations"]["description"]
        .as_str()
        .expect("description");
    assert!(
        description
            .starts_with("Budget acme-monthly of tenant acme: $5.50 spent of $10.00 (55.0%)"),
        "{description}"
    );
    assert_eq!(alert["status"]["state"], "active");
    assert!(
        alert["endsAt"]
            .as_str()
            .is_some_and(|e| e.contains("-01T00:00:00")),
        "{alert}"
    );
    let delivered = wait_for(Duration::from_secs(10), || async {
        stack.crossings().await[&50] == (1, true, None)
    })
    .await;
    assert!(delivered, "{:?}", stack.crossings().await);
    let webhook_once = wait_for(Duration::from_secs(10), || async {
        webhook.deliveries() == BTreeMap::from([("50".to_owned(), 1)])
    })
    .await;
    assert!(
        webhook_once,
        "webhook deliveries: {:?}",
        webhook.deliveries()
    );

    // Alertmanager is down while 75 % and 90 % are crossed in one batch.
    stack.alertmanager.stop();
    stack.usage("acme", &["4.1"]).await; // 9.6 of 10: 96 %
    let retried = wait_for(STARTUP, || async {
        let crossings = stack.crossings().await;
        [75, 90].iter().all(|t| {
            crossings
                .get(t)
                .is_some_and(|(attempts, delivered, error)| {
                    *attempts >= 2 && !delivered && error.is_some()
                })
        })
    })
    .await;
    assert!(retried, "{:?}", stack.crossings().await);
    stack.alertmanager.start_again().await;
    let both = wait_for_some(STARTUP, || async {
        let alerts = stack.budget_alerts().await;
        (alerts.len() == 2).then_some(alerts)
    })
    .await;
    let Some(both) = both else {
        panic!(
            "75/90 not delivered after the outage: {:?}",
            stack.crossings().await
        )
    };
    assert_eq!(both.keys().collect::<Vec<_>>(), ["75", "90"]);
    assert_eq!(
        both["90"]["annotations"]["summary"],
        "90% of the monthly budget used: $9.00 of $10.00 (tenant acme)"
    );
    assert_eq!(both["90"]["labels"]["severity"], "warning");
    let webhook_all = wait_for(Duration::from_secs(10), || async {
        webhook.deliveries()
            == BTreeMap::from([
                ("50".to_owned(), 1),
                ("75".to_owned(), 1),
                ("90".to_owned(), 1),
            ])
    })
    .await;
    assert!(
        webhook_all,
        "webhook deliveries: {:?}",
        webhook.deliveries()
    );

    // The enforcement hook and the gauge.
    let (status, own) = stack
        .call("GET", "/v1/budgets/status", ACME_KEY, None)
        .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["tenant_id"], "acme");
    assert_eq!(own["budgets"][0]["spend_usd"], "9.6");
    assert_eq!(own["budgets"][0]["thresholds_reached"], json!([50, 75, 90]));
    assert_eq!(own["hard_limit_exceeded"], false);
    let (status, _) = stack
        .call("GET", "/v1/budgets/status?tenant_id=globex", ACME_KEY, None)
        .await;
    assert_eq!(status, 403);
    let gauge = r#"tokenledger_budget_spend_ratio{budget="acme-monthly",period="monthly",tenant_id="acme"}"#;
    let ratio = wait_for_some(Duration::from_secs(15), || async {
        metric(&metrics_url, gauge)
            .await
            .filter(|v| (v - 0.96).abs() < 1e-9)
    })
    .await;
    assert!(
        ratio.is_some(),
        "gauge: {:?}",
        metric(&metrics_url, gauge).await
    );

    stack.usage("acme", &["0.4"]).await; // exactly 10: 100 %, hard limit reached
    let critical = wait_for_some(STARTUP, || async {
        stack.budget_alerts().await.remove("100")
    })
    .await
    .expect("the 100 % alert");
    assert_eq!(critical["labels"]["severity"], "critical");
    let (_, own) = stack
        .call("GET", "/v1/budgets/status", ACME_KEY, None)
        .await;
    assert_eq!(own["hard_limit_exceeded"], true, "{own}");
    assert_eq!(own["budgets"][0]["remaining_usd"], "0");
    assert_eq!(
        stack.budget_alerts().await.len(),
        3,
        "75, 90 and 100 since the restart"
    );
    second.assert_running();
    stack.gateway.assert_running();
}

#[tokio::test]
async fn a_budget_created_while_traffic_flows_counts_from_the_period_start() {
    let stack = Stack::start().await;
    let (mut processor, metrics_url) = stack.processor("", 0).await;
    let stack = Arc::new(stack);

    // Steady traffic for globex, before and after the budget exists.
    let traffic = {
        let stack = stack.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                stack.usage("globex", &["0.01", "0.02"]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = stack
        .call(
            "POST",
            "/v1/budgets",
            ADMIN_KEY,
            Some(json!({"name": "globex-monthly", "tenant_id": "globex", "period": "monthly", "amount_usd": "5"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    traffic.await.expect("traffic task");

    // 60 events of 0.03 per pair: the budget's spend is the whole month's, not only what
    // streamed after it was created.
    let expected = "0.9";
    let client = stack.db.client().await;
    let settled = wait_for(STARTUP, || async {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM gateway_mode_audit WHERE tenant_id = 'globex'),
                        (SELECT spend_usd::text FROM budget_spend
                         WHERE tenant_id = 'globex' AND period_end > now())",
                &[],
            )
            .await
            .expect("query");
        row.get::<_, i64>(0) == 60
            && row
                .get::<_, Option<String>>(1)
                .is_some_and(|s| s.parse::<f64>().ok() == expected.parse::<f64>().ok())
    })
    .await;
    let spend: Option<String> = client
        .query_one(
            "SELECT spend_usd::text FROM budget_spend WHERE tenant_id = 'globex'",
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.get(0));
    assert!(
        settled,
        "spend {spend:?}; processor log:\n{}",
        processor.log_tail()
    );
    let (status, status_body) = stack
        .call(
            "GET",
            "/v1/budgets/status?tenant_id=globex",
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        status_body["budgets"][0]["spend_usd"], expected,
        "{status_body}"
    );
    let gauge = r#"tokenledger_budget_spend_ratio{budget="globex-monthly",period="monthly",tenant_id="globex"}"#;
    let ratio = wait_for_some(Duration::from_secs(15), || async {
        metric(&metrics_url, gauge)
            .await
            .filter(|v| (v - 0.18).abs() < 1e-9)
    })
    .await;
    assert!(
        ratio.is_some(),
        "gauge: {:?}",
        metric(&metrics_url, gauge).await
    );
    processor.assert_running();
}
