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
//! - `a_crossing_of_an_ended_period_reaches_alertmanager_labelled_late`: events dated yesterday
//!   cross yesterday's daily threshold today; the real Alertmanager shows the crossing active and
//!   labelled `late="true"`, next to today's on-time crossing, and the outbox drains.
//! - `one_rejected_alert_does_not_block_its_batch_mates`: a receiver that answers 400 to any
//!   batch holding one tenant's alert; the other alerts of the batch are delivered, the rejected
//!   row records why and is never pushed again, the rejection is counted, the outbox drains.
//!
//! - `a_crossing_reaches_alertmanager_behind_tls`: Alertmanager behind a TLS terminator with a
//!   certificate from a CA made by the test; without that CA the push is refused and the row
//!   records the certificate error, with it (`alerting.tls_ca_path`) the crossing arrives.
//!
//! Daily re-arming, late events and redelivery are covered against the database in
//! processor/tests/integration/budgets_db.rs, where `created_at` can be chosen freely.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::ledger_check::{rfc3339, unix_now, utc_date};
use e2e::tls::{Stunnel, TestCa};
use e2e::usage::{answers_ok, hash_key};
use e2e::{
    free_port, wait_for, wait_for_some, Alertmanager, Binary, Broker, ChildProcess, Database,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPIC: &str = "usage-events";
const DLQ_TOPIC: &str = "usage-events.dlq";
const STARTUP: Duration = Duration::from_secs(60);
pub(crate) const ADMIN_KEY: &str = "budget-test-admin-key-0123456789";
const ACME_KEY: &str = "budget-test-acme-key-0123456789";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

pub(crate) struct Stack {
    broker: Broker,
    pub(crate) db: Database,
    pub(crate) alertmanager: Alertmanager,
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
    pub(crate) async fn start() -> Stack {
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
        self.processor_to(&self.alertmanager.url(), webhook, push_delay_ms)
            .await
    }

    /// Like [`Stack::processor`], with `alertmanager` as its Alertmanager URL.
    async fn processor_to(
        &self,
        alertmanager: &str,
        webhook: &str,
        push_delay_ms: u64,
    ) -> (ChildProcess, String) {
        self.processor_with(alertmanager, webhook, push_delay_ms, &[])
            .await
    }

    /// Like [`Stack::processor_to`], with `extra` settings.
    pub(crate) async fn processor_with(
        &self,
        alertmanager: &str,
        webhook: &str,
        push_delay_ms: u64,
        extra: &[(&str, &str)],
    ) -> (ChildProcess, String) {
        let metrics = format!("127.0.0.1:{}", free_port());
        let push_delay = push_delay_ms.to_string();
        let (brokers, db_url) = (self.broker.bootstrap(), self.db.url());
        let mut env = vec![
            ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
            ("TOKENLEDGER_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TOKENLEDGER_DATABASE__URL", db_url.as_str()),
            ("TOKENLEDGER_METRICS__LISTEN", metrics.as_str()),
            ("TOKENLEDGER_BATCH__MAX_LATENCY_MS", "100"),
            ("TOKENLEDGER_ALERTING__ALERTMANAGER_URL", alertmanager),
            ("TOKENLEDGER_ALERTING__POLL_INTERVAL_MS", "200"),
            ("TOKENLEDGER_ALERTING__MAX_BACKOFF_MS", "1000"),
            ("TOKENLEDGER_ALERTING__TIMEOUT_MS", "1000"),
            ("TOKENLEDGER_ALERTING__PUSH_DELAY_MS", push_delay.as_str()),
        ];
        if !webhook.is_empty() {
            env.push(("TOKENLEDGER_ALERTING__WEBHOOK_URL", webhook));
        }
        env.extend_from_slice(extra);
        let mut processor =
            ChildProcess::spawn("processor", Binary::path("processor"), &["run"], &env);
        let url = format!("http://{metrics}");
        wait_ready(&mut processor, &format!("{url}/readyz")).await;
        (processor, url)
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
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
        let events: Vec<Value> = costs.iter().map(|cost| event(tenant, cost)).collect();
        self.usage_events(events).await;
    }

    /// POSTs the given usage events with the admin key (which may backfill 35 days).
    pub(crate) async fn usage_events(&self, events: Vec<Value>) {
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

/// One usage event of `tenant` with a caller-known cost.
pub(crate) fn event(tenant: &str, cost: &str) -> Value {
    json!({
        "tenant_id": tenant, "provider": "openai", "model": "gpt-4o",
        "prompt_tokens": 1000, "completion_tokens": 100, "estimated_cost": cost,
    })
}

/// A minimal HTTP receiver for the webhook, or standing in for Alertmanager: records each
/// request body it accepts and answers 200; a body holding an alert of `reject_tenant` is
/// answered 400 as a whole (as a receiver that validates a batch at once does) and recorded in
/// `rejected`.
#[derive(Clone, Default)]
struct Webhook {
    bodies: Arc<Mutex<Vec<Value>>>,
    rejected: Arc<Mutex<Vec<Value>>>,
    reject_tenant: Option<String>,
}

impl Webhook {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("webhook binds");
        let address = listener.local_addr().expect("address");
        let receiver = self.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let receiver = receiver.clone();
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
                        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                        let reject = receiver.reject_tenant.as_deref().is_some_and(|tenant| {
                            value
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|alert| alert["labels"]["tenant_id"] == tenant)
                        });
                        let answer: &[u8] = if reject {
                            receiver.rejected.lock().expect("lock").push(value);
                            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 36\r\nconnection: close\r\n\r\n\"invalid alert: tenant not accepted\""
                        } else {
                            receiver.bodies.lock().expect("lock").push(value);
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        };
                        let _ = stream.write_all(answer).await;
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

    /// How often each tenant's alert was accepted.
    fn accepted_by_tenant(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for body in self.bodies.lock().expect("lock").iter() {
            for alert in body.as_array().into_iter().flatten() {
                let tenant = alert["labels"]["tenant_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                *counts.entry(tenant).or_default() += 1;
            }
        }
        counts
    }

    /// The rejected request bodies' sizes (alerts per request), in arrival order.
    fn rejected_sizes(&self) -> Vec<usize> {
        self.rejected
            .lock()
            .expect("lock")
            .iter()
            .map(|body| body.as_array().map_or(0, Vec::len))
            .collect()
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

    // Steady traffic for globex, before and after the budget exists: half of it is sent before,
    // the other half only once the budget was created, so the budget sees new rows whatever the
    // processor's pace.
    let (budget_created, mut budget_exists) = tokio::sync::oneshot::channel::<()>();
    let traffic = {
        let stack = stack.clone();
        tokio::spawn(async move {
            for pair in 0..30 {
                if pair == 15 {
                    (&mut budget_exists).await.expect("the budget is created");
                }
                stack.usage("globex", &["0.01", "0.02"]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Some of the traffic is stored before the budget exists.
    let stored_before = wait_for(Duration::from_secs(30), || async {
        stack
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM gateway_mode_audit WHERE tenant_id = 'globex'",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) >= 4)
    })
    .await;
    assert!(stored_before, "no globex traffic stored before the budget");
    assert!(
        !traffic.is_finished(),
        "the traffic ended before the budget was created"
    );
    let (status, body) = stack
        .call(
            "POST",
            "/v1/budgets",
            ADMIN_KEY,
            Some(json!({"name": "globex-monthly", "tenant_id": "globex", "period": "monthly", "amount_usd": "5"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    budget_created
        .send(())
        .expect("the traffic task waits for the budget");
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

/// The LLMBudgetThreshold alerts Alertmanager holds, by their `period_start` label.
async fn alerts_by_period(stack: &Stack) -> BTreeMap<String, Value> {
    stack
        .alertmanager
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "LLMBudgetThreshold")
        .map(|a| {
            (
                a["labels"]["period_start"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                a,
            )
        })
        .collect()
}

/// Rows of `budget_alerts` accepted by Alertmanager, and rows marked rejected.
async fn delivered_and_rejected(stack: &Stack) -> (i64, i64) {
    let row = stack
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE alertmanager_delivered_at IS NOT NULL),
                    count(*) FILTER (WHERE alertmanager_rejected_at IS NOT NULL
                                        OR rejection IS NOT NULL)
             FROM budget_alerts",
            &[],
        )
        .await
        .expect("budget_alerts");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_crossing_of_an_ended_period_reaches_alertmanager_labelled_late() {
    let stack = Stack::start().await;
    let (status, body) = stack
        .call(
            "POST",
            "/v1/budgets",
            ADMIN_KEY,
            Some(json!({
                "name": "acme-daily", "tenant_id": "acme", "period": "daily",
                "amount_usd": "10", "thresholds": [50],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (mut processor, metrics_url) = stack.processor("", 0).await;

    // Yesterday (UTC) has ended; an event dated yesterday noon crosses its 50 % now. An event of
    // today crosses today's 50 % in the same request, on time.
    let now = unix_now();
    let yesterday_noon = (now.div_euclid(86_400) - 1) * 86_400 + 12 * 3_600;
    let (yesterday, today) = (utc_date(yesterday_noon), utc_date(now));
    let mut late = event("acme", "6");
    late["created_at"] = json!(rfc3339(yesterday_noon));
    stack.usage_events(vec![late, event("acme", "6")]).await;

    let alerts = wait_for_some(STARTUP, || async {
        let alerts = alerts_by_period(&stack).await;
        (alerts.len() == 2).then_some(alerts)
    })
    .await;
    let Some(alerts) = alerts else {
        panic!(
            "Alertmanager holds {:?}; budget_alerts: {:?}; processor log:\n{}",
            alerts_by_period(&stack).await,
            stack.crossings().await,
            processor.log_tail()
        )
    };
    assert_eq!(
        alerts.keys().cloned().collect::<Vec<_>>(),
        [yesterday.clone(), today.clone()]
    );
    let late = &alerts[&yesterday];
    assert_eq!(late["labels"]["late"], "true", "{late}");
    assert_eq!(late["labels"]["threshold"], "50", "{late}");
    assert_eq!(late["labels"]["period"], "daily", "{late}");
    assert_eq!(late["status"]["state"], "active", "{late}");
    assert_eq!(
        late["annotations"]["summary"],
        "50% of the daily budget used: $5.00 of $10.00 (tenant acme)"
    );
    // Active for a while from now, not resolved at yesterday's midnight.
    let ends = late["endsAt"].as_str().expect("endsAt");
    let in_ten_minutes = rfc3339(unix_now() + 600);
    assert!(ends[..19] > in_ten_minutes[..19], "{late}");
    let on_time = &alerts[&today];
    assert!(on_time["labels"].get("late").is_none(), "{on_time}");
    assert_eq!(on_time["status"]["state"], "active", "{on_time}");

    let settled = wait_for(Duration::from_secs(15), || async {
        delivered_and_rejected(&stack).await == (2, 0)
    })
    .await;
    assert!(settled, "{:?}", stack.crossings().await);
    let drained = wait_for(Duration::from_secs(15), || async {
        metric(&metrics_url, "tokenledger_budget_alerts_pending").await == Some(0.0)
    })
    .await;
    assert!(
        drained,
        "pending: {:?}",
        metric(&metrics_url, "tokenledger_budget_alerts_pending").await
    );
    processor.assert_running();
}

#[tokio::test]
async fn one_rejected_alert_does_not_block_its_batch_mates() {
    let stack = Stack::start().await;
    let (status, body) = stack
        .call(
            "POST",
            "/v1/budgets",
            ADMIN_KEY,
            Some(json!({
                "name": "every-tenant", "tenant_id": "*", "period": "monthly",
                "amount_usd": "10", "thresholds": [50],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let receiver = Webhook {
        reject_tenant: Some("poison".to_owned()),
        ..Webhook::default()
    };
    let receiver_url = receiver.start().await;

    // A first processor records four crossings and holds every push back; the next one then
    // claims all four in one batch.
    let (mut recorder, _) = stack.processor_to(&receiver_url, "", 600_000).await;
    let tenants = ["alpha", "bravo", "poison", "delta"];
    stack
        .usage_events(tenants.iter().map(|t| event(t, "6")).collect())
        .await;
    let recorded = wait_for(STARTUP, || async { count_crossings(&stack).await == 4 }).await;
    assert!(
        recorded,
        "crossings: {}; processor log:\n{}",
        count_crossings(&stack).await,
        recorder.log_tail()
    );
    recorder.shutdown(Duration::from_secs(15)).await;
    assert!(receiver.accepted_by_tenant().is_empty() && receiver.rejected_sizes().is_empty());

    let (mut processor, metrics_url) = stack.processor_to(&receiver_url, "", 0).await;
    let expected: BTreeMap<String, usize> = ["alpha", "bravo", "delta"]
        .into_iter()
        .map(|t| (t.to_owned(), 1))
        .collect();
    let delivered = wait_for(STARTUP, || async {
        receiver.accepted_by_tenant() == expected
    })
    .await;
    assert!(
        delivered,
        "accepted {:?}, rejected requests of sizes {:?}; processor log:\n{}",
        receiver.accepted_by_tenant(),
        receiver.rejected_sizes(),
        processor.log_tail()
    );
    assert_eq!(
        receiver.rejected_sizes().first(),
        Some(&4),
        "the four crossings were pushed as one batch first"
    );

    // The rejected row says why, is no longer pending, and is counted.
    let client = stack.db.client().await;
    let marked = wait_for(Duration::from_secs(15), || async {
        delivered_and_rejected(&stack).await == (3, 1)
    })
    .await;
    assert!(marked, "{:?}", delivered_and_rejected(&stack).await);
    let poison = client
        .query_one(
            "SELECT alertmanager_delivered_at IS NULL, alertmanager_rejected_at IS NOT NULL,
                    rejection, attempts
             FROM budget_alerts WHERE tenant_id = 'poison'",
            &[],
        )
        .await
        .expect("the poison row");
    let reason: Option<String> = poison.get(2);
    assert!(poison.get::<_, bool>(0) && poison.get::<_, bool>(1));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("400") && r.contains("tenant not accepted")),
        "{reason:?}"
    );
    let attempts: i32 = poison.get(3);
    let drained = wait_for(Duration::from_secs(15), || async {
        metric(&metrics_url, "tokenledger_budget_alerts_pending").await == Some(0.0)
    })
    .await;
    assert!(
        drained,
        "pending: {:?}",
        metric(&metrics_url, "tokenledger_budget_alerts_pending").await
    );
    assert_eq!(
        metric(
            &metrics_url,
            r#"tokenledger_budget_alerts_rejected_total{target="alertmanager"}"#
        )
        .await,
        Some(1.0)
    );

    // A later crossing is delivered; by then the rejected one has not been pushed again.
    let rejected_requests = receiver.rejected_sizes();
    stack.usage("echo", &["6"]).await;
    let later = wait_for(STARTUP, || async {
        receiver.accepted_by_tenant().get("echo") == Some(&1)
    })
    .await;
    assert!(later, "processor log:\n{}", processor.log_tail());
    assert_eq!(receiver.rejected_sizes(), rejected_requests);
    let attempts_after: i32 = client
        .query_one(
            "SELECT attempts FROM budget_alerts WHERE tenant_id = 'poison'",
            &[],
        )
        .await
        .expect("the poison row")
        .get(0);
    assert_eq!(
        attempts_after, attempts,
        "the rejected row was claimed again"
    );
    processor.assert_running();
}

async fn count_crossings(stack: &Stack) -> i64 {
    stack
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM budget_alerts", &[])
        .await
        .expect("budget_alerts")
        .get(0)
}

#[tokio::test]
async fn a_crossing_reaches_alertmanager_behind_tls() {
    let stack = Stack::start().await;
    let ca = TestCa::new("alertmanager");
    let server = ca.issue("alertmanager", "localhost", &["localhost", "127.0.0.1"]);
    let tunnel = Stunnel::start(&server, stack.alertmanager.port()).await;
    let https = format!("https://localhost:{}", tunnel.port);
    let (status, body) = stack
        .call(
            "POST",
            "/v1/budgets",
            ADMIN_KEY,
            Some(json!({
                "name": "acme-daily", "tenant_id": "acme", "period": "daily",
                "amount_usd": "10", "thresholds": [50],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Without the test CA the certificate is not trusted: nothing is delivered, and the row says
    // why.
    let (mut untrusting, _) = stack.processor_to(&https, "", 0).await;
    stack.usage("acme", &["6"]).await;
    let refused = wait_for_some(STARTUP, || async {
        let crossings = stack.crossings().await;
        crossings
            .get(&50)
            .and_then(|(_, _, error)| error.clone())
            .filter(|error| error.contains("UnknownIssuer"))
    })
    .await;
    assert!(
        refused.is_some(),
        "budget_alerts: {:?}; processor log:\n{}",
        stack.crossings().await,
        untrusting.log_tail()
    );
    assert!(stack.budget_alerts().await.is_empty());
    untrusting.kill9();

    let ca_path = ca.ca_pem().display().to_string();
    let (mut processor, _) = stack
        .processor_with(
            &https,
            "",
            0,
            &[("TOKENLEDGER_ALERTING__TLS_CA_PATH", ca_path.as_str())],
        )
        .await;
    let arrived = wait_for(STARTUP, || async {
        stack.budget_alerts().await.contains_key("50")
    })
    .await;
    assert!(
        arrived,
        "budget_alerts: {:?}; processor log:\n{}\nstunnel log:\n{}",
        stack.crossings().await,
        processor.log_tail(),
        tunnel.log()
    );
    processor.assert_running();
}
