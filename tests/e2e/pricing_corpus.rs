//! Priced to the cent through the running pipeline: a corpus of every model of the built-in price
//! book × {plain, cached, cache write 5 minutes, cache write 1 hour, reasoning, above each
//! long-context tier, batch} is posted to the real gateway, carried by the broker, priced and
//! stored by the real processor, and each stored `estimated_cost` must equal the published list
//! price to 1e-6 USD.
//!
//! The expected costs are worked out here from the book's TOML numbers with the book's documented
//! rules (a kind left out is billed at the input rate for cache reads and 5-minute writes, at the
//! 5-minute write rate for 1-hour writes, at the output rate for reasoning; a long-context tier
//! bills every token of a request whose prompt is above its threshold; batch is the entry's or
//! the provider's multiplier or rates), in integer arithmetic, never by calling the rating code.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::ledger_check::{rfc3339, text_rows, unix_now, Rng};
use e2e::{free_port, repo_root, wait_for, Binary, Broker, ChildProcess, Database};
use serde_json::{json, Value};
use toml::Value as Toml;

const TOPIC: &str = "usage-events";
const WAIT: Duration = Duration::from_secs(120);
/// Prices are USD per million tokens; costs are kept in units of 1e-15 USD, so a price with up
/// to 9 decimals times a token count is exact.
const PRICE_SCALE: i128 = 1_000_000_000;
const COST_UNITS_PER_USD: i128 = 1_000_000_000_000_000;
const TOLERANCE: i128 = COST_UNITS_PER_USD / 1_000_000;

/// A decimal string as an integer scaled by `scale`, exactly.
fn fixed(text: &str, scale: i128) -> i128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = scale.to_string().len() - 1;
    assert!(fraction.len() <= digits, "{text}: too many decimals");
    let padded = format!("{fraction:0<digits$}");
    let whole: i128 = whole.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
    let fraction: i128 = if padded.is_empty() {
        0
    } else {
        padded.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    whole * scale + fraction
}

/// Rates of one card, USD per million × PRICE_SCALE, fallbacks applied.
#[derive(Debug, Clone, Copy)]
struct Rates {
    input: i128,
    output: i128,
    cache_read: i128,
    cache_write_5m: i128,
    cache_write_1h: i128,
    reasoning: i128,
}

fn rates(table: &Toml) -> Rates {
    let get = |key: &str| {
        table
            .get(key)
            .and_then(Toml::as_str)
            .map(|t| fixed(t, PRICE_SCALE))
    };
    let input = get("input").expect("input rate");
    let output = get("output").expect("output rate");
    let cache_write_5m = get("cache_write_5m").unwrap_or(input);
    Rates {
        input,
        output,
        cache_read: get("cache_read").unwrap_or(input),
        cache_write_5m,
        cache_write_1h: get("cache_write_1h").unwrap_or(cache_write_5m),
        reasoning: get("reasoning").unwrap_or(output),
    }
}

/// One request of the corpus, in the event's fields.
#[derive(Debug, Clone, Default)]
struct Usage {
    prompt: i128,
    cached: i128,
    write_5m: i128,
    write_1h: i128,
    completion: i128,
    reasoning: i128,
    batch: bool,
}

impl Usage {
    /// Cost units under `r`, then × multiplier (per mille).
    fn cost(&self, r: &Rates, per_mille: i128) -> i128 {
        let uncached = self.prompt - self.cached - self.write_5m - self.write_1h;
        let output = self.completion - self.reasoning;
        let per_million = uncached * r.input
            + self.cached * r.cache_read
            + self.write_5m * r.cache_write_5m
            + self.write_1h * r.cache_write_1h
            + output * r.output
            + self.reasoning * r.reasoning;
        // per_million is USD × PRICE_SCALE × 1e6 per token count; to 1e-15 USD units:
        per_million * (COST_UNITS_PER_USD / PRICE_SCALE / 1_000_000) * per_mille / 1000
    }
}

struct Case {
    name: String,
    event: Value,
    expected: i128,
}

/// The entries in force now: the latest `effective_from` per (provider, model), not expired.
fn entries_in_force(book: &Toml, now: &str) -> Vec<Toml> {
    let mut latest: BTreeMap<(String, String), Toml> = BTreeMap::new();
    for entry in book["price"].as_array().expect("[[price]]") {
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(Toml::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let from = entry
            .get("effective_from")
            .map(|v| v.to_string().trim_matches('"').to_owned())
            .unwrap_or_default();
        if text("model") == "*" || from.as_str() > now {
            continue;
        }
        let key = (text("provider"), text("model"));
        let newer = latest.get(&key).is_none_or(|seen| {
            seen.get("effective_from")
                .map(|v| v.to_string())
                .unwrap_or_default()
                < entry
                    .get("effective_from")
                    .map(|v| v.to_string())
                    .unwrap_or_default()
        });
        if newer {
            latest.insert(key, entry.clone());
        }
    }
    latest
        .into_values()
        .filter(|entry| {
            entry
                .get("effective_until")
                .map(|v| v.to_string().trim_matches('"').to_owned())
                .is_none_or(|until| until.as_str() > now)
        })
        .collect()
}

fn corpus(book: &Toml, now_unix: i64, rng: &mut Rng) -> Vec<Case> {
    let now = rfc3339(now_unix);
    let providers: BTreeMap<String, Toml> = book["provider"]
        .as_array()
        .expect("[[provider]]")
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p.clone()))
        .collect();
    let mut cases = Vec::new();
    for entry in entries_in_force(book, &now) {
        let provider = entry["provider"].as_str().unwrap_or_default().to_owned();
        let model = entry["model"].as_str().unwrap_or_default().to_owned();
        let base = rates(&entry);
        let mut usages: Vec<(String, Usage, Rates, i128)> = vec![
            (
                "plain".into(),
                Usage {
                    prompt: 1_000,
                    completion: 500,
                    ..Usage::default()
                },
                base,
                1000,
            ),
            (
                "cached".into(),
                Usage {
                    prompt: 2_000,
                    cached: 1_500,
                    completion: 200,
                    ..Usage::default()
                },
                base,
                1000,
            ),
            (
                "cache write 5m".into(),
                Usage {
                    prompt: 3_000,
                    write_5m: 2_500,
                    completion: 100,
                    ..Usage::default()
                },
                base,
                1000,
            ),
            (
                "cache write 1h".into(),
                Usage {
                    prompt: 3_000,
                    write_1h: 2_500,
                    completion: 100,
                    ..Usage::default()
                },
                base,
                1000,
            ),
            (
                "reasoning".into(),
                Usage {
                    prompt: 1_000,
                    completion: 3_000,
                    reasoning: 2_400,
                    ..Usage::default()
                },
                base,
                1000,
            ),
        ];
        // Tiers sorted by threshold: a prompt just above each bills at that tier.
        let mut tiers: Vec<(i128, Rates)> = entry
            .get("long_context")
            .and_then(Toml::as_array)
            .into_iter()
            .flatten()
            .map(|tier| {
                (
                    i128::from(tier["above_input_tokens"].as_integer().expect("threshold")),
                    rates(tier),
                )
            })
            .collect();
        tiers.sort_by_key(|(above, _)| *above);
        for (above, tier_rates) in &tiers {
            usages.push((
                format!("above {above}"),
                Usage {
                    prompt: above + 1_000,
                    cached: 400,
                    completion: 700,
                    ..Usage::default()
                },
                *tier_rates,
                1000,
            ));
        }
        let batch = entry
            .get("service_tier")
            .and_then(|t| t.get("batch"))
            .or_else(|| {
                providers
                    .get(&provider)
                    .and_then(|p| p.get("service_tier"))
                    .and_then(|t| t.get("batch"))
            });
        if let Some(batch) = batch {
            let usage = Usage {
                prompt: 4_000,
                cached: 1_000,
                completion: 900,
                batch: true,
                ..Usage::default()
            };
            match batch.get("multiplier").and_then(Toml::as_str) {
                Some(multiplier) => {
                    usages.push(("batch".into(), usage, base, fixed(multiplier, 1000)))
                }
                None => usages.push(("batch".into(), usage, rates(batch), 1000)),
            }
        }
        for (kind, usage, card, per_mille) in usages {
            let mut event = json!({
                "id": rng.uuid(),
                "created_at": now,
                "tenant_id": "corpus",
                "provider": provider,
                "model": model,
                "prompt_tokens": usage.prompt,
                "completion_tokens": usage.completion,
                "cached_prompt_tokens": usage.cached,
                "cache_write_tokens": usage.write_5m,
                "cache_write_1h_tokens": usage.write_1h,
                "reasoning_tokens": usage.reasoning,
                "labels": {"case": kind},
            });
            if usage.batch {
                event["service_tier"] = json!("batch");
            }
            cases.push(Case {
                name: format!("{provider}/{model} {kind}"),
                event,
                expected: usage.cost(&card, per_mille),
            });
        }
    }
    cases
}

#[tokio::test]
async fn every_builtin_model_and_dimension_is_priced_to_the_list_price_through_the_pipeline() {
    let text =
        std::fs::read_to_string(repo_root().join("ledger/src/pricebook.toml")).expect("book");
    let book: Toml = toml::from_str(&text).expect("book parses as TOML");
    let mut rng = Rng::from_env("pricing_corpus");
    let cases = corpus(&book, unix_now(), &mut rng);
    let models = cases
        .iter()
        .map(|c| format!("{}/{}", c.event["provider"], c.event["model"]))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        cases.len() > 500,
        "corpus of {} cases is too small",
        cases.len()
    );

    let (broker, database) = tokio::join!(Broker::start(), Database::start());
    broker.create_topic(TOPIC, 2).await;
    let url = database.url();
    let mut migrate = ChildProcess::spawn(
        "processor-migrate",
        Binary::path("processor"),
        &["migrate"],
        &[("TOKENLEDGER_DATABASE__URL", url.as_str())],
    );
    assert!(
        migrate.wait_exit(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        migrate.log_contents()
    );
    let api = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let brokers = broker.bootstrap();
    let mut gateway = ChildProcess::spawn(
        "gateway",
        Binary::path("gateway"),
        &[] as &[&str],
        &[
            ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
            ("TOKENLEDGER_HTTP__LISTEN", api.as_str()),
            ("TOKENLEDGER_HTTP__ADMIN_LISTEN", admin.as_str()),
            ("TOKENLEDGER_AUTH__ENABLED", "false"),
        ],
    );
    let mut processor = ChildProcess::spawn(
        "processor",
        Binary::path("processor"),
        &["run"],
        &[
            ("TOKENLEDGER_KAFKA__BROKERS", brokers.as_str()),
            ("TOKENLEDGER_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TOKENLEDGER_KAFKA__TOPIC_PARTITIONS", "2"),
            ("TOKENLEDGER_DATABASE__URL", url.as_str()),
            ("TOKENLEDGER_METRICS__LISTEN", metrics.as_str()),
            ("TOKENLEDGER_BATCH__MAX_LATENCY_MS", "100"),
        ],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let ready_url = format!("http://{api}/readyz");
    let ready = wait_for(WAIT, || {
        let http = http.clone();
        let url = ready_url.clone();
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    if !ready {
        gateway.assert_running();
        panic!("the gateway was not ready within {WAIT:?}");
    }
    processor
        .wait_for_log("partitions assigned at stored offsets", WAIT)
        .await;

    for chunk in cases.chunks(200) {
        let body = Value::Array(chunk.iter().map(|c| c.event.clone()).collect());
        let response = http
            .post(format!("http://{api}/v1/usage"))
            .json(&body)
            .send()
            .await
            .expect("gateway answers");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "{answer}");
    }
    let client = database.client().await;
    let expected_rows = cases.len();
    let stored = wait_for(WAIT, || {
        let client = &client;
        async move {
            text_rows(
                client,
                "SELECT count(*) FROM gateway_mode_audit WHERE tenant_id = 'corpus'",
            )
            .await[0][0]
                .as_deref()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= expected_rows)
        }
    })
    .await;
    if !stored {
        processor.assert_running();
        panic!(
            "the corpus was not stored within {WAIT:?}:\n{}",
            processor.log_tail()
        );
    }

    let rows = text_rows(&client, "SELECT id::text, estimated_cost::text, pricing_status, pricing_rule FROM gateway_mode_audit WHERE tenant_id = 'corpus'").await;
    let by_id: BTreeMap<String, (String, String, String)> = rows
        .into_iter()
        .map(|r| {
            let cell = |i: usize| r[i].clone().unwrap_or_default();
            (cell(0), (cell(1), cell(2), cell(3)))
        })
        .collect();
    let mut disagreements = Vec::new();
    let mut largest = 0i128;
    for case in &cases {
        let id = case.event["id"].as_str().unwrap_or_default();
        let (cost, status, rule) = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{}: not stored", case.name));
        let stored = fixed(cost, COST_UNITS_PER_USD);
        let difference = (stored - case.expected).abs();
        largest = largest.max(difference);
        if status != "priced" || difference > TOLERANCE {
            disagreements.push(format!(
                "{}: stored {cost} ({status}: {rule}), expected {}.{:015}",
                case.name,
                case.expected / COST_UNITS_PER_USD,
                case.expected % COST_UNITS_PER_USD
            ));
        }
    }
    println!(
        "pricing corpus: {} requests over {models} models; {} agree to 1e-6 USD, {} disagree; largest difference {largest}e-15 USD",
        cases.len(),
        cases.len() - disagreements.len(),
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}
