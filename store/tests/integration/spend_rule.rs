//! The spend rule exists twice: in Rust (`Scope::matches` and
//! `PeriodBounds::contains`, which the batch uses to add each new row's cost
//! to its budgets) and in SQL (`store::spend::from_audit`, which builds a
//! spend row for a whole period from the audit table, and which the status
//! endpoint reads). This test proves they agree on generated budgets and
//! audit rows against a real TimescaleDB (PostgreSQL + TimescaleDB through the
//! e2e harness): tenants, every-tenant budgets, provider, model and label
//! scopes, daily and monthly periods in time zones with odd offsets and DST,
//! and rows on both sides of every period boundary.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use e2e::Database;
use ledger::budget::{LabelMatch, Period, PeriodBounds, Scope, TenantScope, UserScope};
use ledger::{Budget, PriceBook, UsageEvent};
use rust_decimal::Decimal;
use serde_json::Value;
use store::spend::AuditKey;
use uuid::Uuid;

const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const USERS: [&str; 2] = ["alice", "bob"];
const API_KEYS: [&str; 2] = ["batch-jobs", "web"];
const PROVIDERS: [&str; 3] = ["openai", "anthropic", "google"];
/// Listed names, and names the price book prices as one of them (a dated snapshot).
const MODELS: [&str; 6] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4",
    "gemini-2.5-pro",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18",
];
const LABEL_KEYS: [&str; 3] = ["team", "use_case", "env"];
/// Values that differ only in case, a non-ASCII one and an empty one.
const LABEL_VALUES: [&str; 5] = ["support-bot", "Support-bot", "ü", "", "prod"];
/// Whole-hour, half- and quarter-hour offsets, DST on either hemisphere,
/// and a zone whose DST step is 30 minutes.
const ZONES: [Tz; 8] = [
    Tz::UTC,
    Tz::Europe__Berlin,
    Tz::America__New_York,
    Tz::Asia__Kolkata,
    Tz::Asia__Kathmandu,
    Tz::Australia__Lord_Howe,
    Tz::Pacific__Chatham,
    Tz::America__St_Johns,
];
const SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];
const EVENTS_PER_SEED: usize = 400;
const BUDGETS_PER_SEED: usize = 40;
const PROBES_PER_BUDGET_AND_TENANT: usize = 3;

/// SplitMix64: a seeded generator, so a failure reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("fits")
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The generated rows span a month boundary (and DST in March).
fn window_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 25, 0, 0, 0)
        .single()
        .expect("valid")
}

/// An instant in the window: a random minute, or one of the instants a
/// boundary mistake would get wrong (a local midnight, just before it, just
/// after it, one microsecond before it).
fn instant(rng: &mut Rng) -> DateTime<Utc> {
    let days = 66;
    if rng.chance(50) {
        let minutes = rng.below(days * 24 * 60);
        return window_start() + Duration::minutes(i64::try_from(minutes).expect("fits"));
    }
    let zone = rng.pick(&ZONES);
    let day = NaiveDate::from_ymd_opt(2026, 1, 25).expect("valid")
        + Duration::days(i64::try_from(rng.below(days)).expect("fits"));
    let midnight = ledger::budget::period_bounds(
        Period::Daily,
        zone,
        zone.from_utc_datetime(&day.and_hms_opt(12, 0, 0).expect("valid"))
            .with_timezone(&Utc),
    )
    .start;
    let offset = match rng.below(4) {
        0 => Duration::zero(),
        1 => Duration::seconds(-1),
        2 => Duration::seconds(1),
        _ => Duration::microseconds(-1),
    };
    midnight + offset
}

fn maybe<T: Copy>(rng: &mut Rng, percent: usize, items: &[T]) -> Option<T> {
    rng.chance(percent).then(|| rng.pick(items))
}

fn event(rng: &mut Rng) -> UsageEvent {
    let created_at = instant(rng);
    let mut labels = BTreeMap::new();
    for key in LABEL_KEYS {
        if rng.chance(50) {
            labels.insert(key.to_owned(), rng.pick(&LABEL_VALUES).to_owned());
        }
    }
    // Up to 10 decimal places, the column's scale.
    let cost = Decimal::new(
        i64::try_from(rng.next() % 10_000_000_000).expect("fits"),
        rng.pick(&[2_u32, 6, 10]),
    );
    UsageEvent {
        id: Uuid::from_u64_pair(rng.next(), rng.next()),
        created_at,
        tenant_id: rng.pick(&TENANTS).to_owned(),
        user_id: maybe(rng, 70, &USERS).map(str::to_owned),
        provider: rng.pick(&PROVIDERS).to_owned(),
        model: rng.pick(&MODELS).to_owned(),
        prompt_tokens: 1,
        completion_tokens: 1,
        total_tokens: 2,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: Some(cost),
        labels,
        received_at: created_at,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: maybe(rng, 70, &API_KEYS).map(str::to_owned),
    }
}

fn budget(rng: &mut Rng, index: usize) -> Budget {
    let label = rng.chance(40).then(|| LabelMatch {
        key: rng.pick(&LABEL_KEYS).to_owned(),
        value: rng.pick(&LABEL_VALUES).to_owned(),
    });
    Budget {
        id: Uuid::from_u64_pair(rng.next(), rng.next()),
        name: format!("generated-{index}"),
        scope: Scope {
            tenant: match maybe(rng, 70, &TENANTS) {
                Some(tenant) => TenantScope::One(tenant.to_owned()),
                None => TenantScope::Every,
            },
            user: if rng.chance(15) {
                UserScope::Each
            } else {
                maybe(rng, 30, &USERS).map_or(UserScope::All, |u| UserScope::One(u.to_owned()))
            },
            api_key: maybe(rng, 25, &API_KEYS).map(str::to_owned),
            provider: maybe(rng, 40, &PROVIDERS).map(str::to_owned),
            model: maybe(rng, 30, &MODELS).map(str::to_owned),
            label,
        },
        period: rng.pick(&[Period::Daily, Period::Monthly]),
        timezone: rng.pick(&ZONES),
        amount_usd: Decimal::ONE_HUNDRED,
        thresholds: vec![100],
        hard_limit: false,
        forecast_alert: false,
    }
}

/// The price entry the built-in book resolves `event`'s model to, as the processor stores it.
fn price_entry(book: &PriceBook, event: &UsageEvent) -> Option<String> {
    book.resolve(&event.provider, &event.model, event.created_at)
        .ok()
        .map(|resolution| resolution.entry.id())
}

async fn insert_audit_rows(database: &Database, events: &[UsageEvent]) {
    let book = PriceBook::builtin().expect("the built-in book parses");
    let mut client = database.client().await;
    let transaction = client.transaction().await.expect("begin");
    let statement = transaction
        .prepare(
            "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
                 completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
                 labels, received_at, payload_sha256, source_partition, source_offset, price_entry,
                 user_id, api_key)
             VALUES ($1, $2, $3, $4, 1, 1, 2, $5, $6, 'provided', $7, $6, '\\x00', 0, $8, $9, $10,
                     $11)",
        )
        .await
        .expect("prepare");
    for (offset, event) in (0_i64..).zip(events) {
        let labels: Value = serde_json::to_value(&event.labels).expect("labels");
        let entry = price_entry(&book, event);
        transaction
            .execute(
                &statement,
                &[
                    &event.id,
                    &event.tenant_id,
                    &event.provider,
                    &event.model,
                    &event.estimated_cost,
                    &event.created_at,
                    &labels,
                    &offset,
                    &entry,
                    &event.user_id,
                    &event.api_key,
                ],
            )
            .await
            .expect("audit row");
    }
    transaction.commit().await.expect("commit");
}

/// The Rust side of the rule: what the batch would have added to this key
/// row by row.
fn rust_spend(
    budget: &Budget,
    tenant: &str,
    user: &str,
    period: PeriodBounds,
    events: &[UsageEvent],
) -> Decimal {
    let book = PriceBook::builtin().expect("the built-in book parses");
    events
        .iter()
        .filter(|e| {
            e.tenant_id == tenant
                && budget.scope.user.spend_key(e.user_id.as_deref()) == user
                && budget.matches(e, &book)
                && period.contains(e.created_at)
        })
        .filter_map(|e| e.estimated_cost)
        .sum()
}

#[tokio::test]
async fn the_spend_rule_in_sql_agrees_with_scope_matches_on_generated_cases() {
    let database = Database::start().await;
    database.migrate().await;
    let client = database.client().await;
    let mut keys_checked = 0;
    let mut keys_with_spend = 0;
    let mut keys_without = 0;
    for seed in SEEDS {
        client
            .batch_execute("TRUNCATE gateway_mode_audit")
            .await
            .expect("truncate");
        let mut rng = Rng(seed);
        let events: Vec<UsageEvent> = (0..EVENTS_PER_SEED).map(|_| event(&mut rng)).collect();
        insert_audit_rows(&database, &events).await;
        let budgets: Vec<Budget> = (0..BUDGETS_PER_SEED)
            .map(|index| budget(&mut rng, index))
            .collect();

        // Keys as the batch makes them: a covered tenant and the period of
        // an instant (an event's own time, so most periods hold rows).
        let mut keys: Vec<(&Budget, &str, &str, PeriodBounds)> = Vec::new();
        for budget in &budgets {
            for tenant in TENANTS.iter().filter(|t| budget.scope.tenant.covers(t)) {
                for _ in 0..PROBES_PER_BUDGET_AND_TENANT {
                    let at = if rng.chance(80) {
                        events[rng.below(events.len())].created_at
                    } else {
                        instant(&mut rng)
                    };
                    // An each-user budget's key names a user, or "" for
                    // the usage naming none.
                    let user = if budget.scope.user.is_each() {
                        rng.pick(&["alice", "bob", ""])
                    } else {
                        ""
                    };
                    keys.push((budget, tenant, user, budget.period_of(at)));
                }
            }
        }
        let audit_keys: Vec<AuditKey<'_>> = keys
            .iter()
            .map(|(budget, tenant, user, period)| AuditKey {
                tenant_id: tenant,
                user_id: user,
                period: *period,
                scope: &budget.scope,
            })
            .collect();
        let from_sql = store::spend::from_audit(
            &client,
            &audit_keys,
            &PriceBook::builtin().expect("the built-in book parses"),
        )
        .await
        .expect("spend from the audit table");
        assert_eq!(from_sql.len(), keys.len());

        let mut disagreements = Vec::new();
        for ((budget, tenant, user, period), sql) in keys.iter().zip(&from_sql) {
            let rust = rust_spend(budget, tenant, user, *period, &events);
            if rust != *sql {
                disagreements.push(format!(
                    "seed {seed:#x}: {:?} tenant {tenant} {} {}..{}: Rust {rust}, SQL {sql}",
                    budget.scope,
                    budget.timezone.name(),
                    period.start,
                    period.end,
                ));
            }
            if rust.is_zero() {
                keys_without += 1;
            } else {
                keys_with_spend += 1;
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} of {} keys disagree:\n{}",
            disagreements.len(),
            keys.len(),
            disagreements.join("\n")
        );
        keys_checked += keys.len();
    }
    // The generated cases must exercise both answers, or agreement proves
    // nothing.
    assert!(
        keys_with_spend * 4 > keys_checked && keys_without * 10 > keys_checked,
        "{keys_with_spend} keys with spend and {keys_without} without, of {keys_checked}"
    );
}

/// A $1 budget on `gpt-4o` counts usage reported as `gpt-4o-2024-08-06` (which the price book
/// prices as `gpt-4o`), in the SQL the status endpoint and new spend rows read.
#[tokio::test]
async fn a_model_budget_counts_usage_sent_under_another_name_of_the_model() {
    let database = Database::start().await;
    database.migrate().await;
    let client = database.client().await;
    let mut rng = Rng(0x5eed_0004);
    let mut sent = event(&mut rng);
    sent.tenant_id = "acme".into();
    sent.provider = "openai".into();
    sent.model = "gpt-4o-2024-08-06".into();
    sent.estimated_cost = Some(Decimal::new(1250, 2));
    let mut other = event(&mut rng);
    other.tenant_id = "acme".into();
    other.provider = "openai".into();
    other.model = "gpt-4o-mini-2024-07-18".into();
    other.created_at = sent.created_at;
    insert_audit_rows(&database, &[sent.clone(), other]).await;
    let mut budget = budget(&mut rng, 0);
    budget.scope = Scope {
        tenant: TenantScope::One("acme".into()),
        user: UserScope::All,
        api_key: None,
        provider: None,
        model: Some("gpt-4o".into()),
        label: None,
    };
    budget.timezone = Tz::UTC;
    let period = budget.period_of(sent.created_at);
    let spend = store::spend::from_audit(
        &client,
        &[AuditKey {
            tenant_id: "acme",
            user_id: "",
            period,
            scope: &budget.scope,
        }],
        &PriceBook::builtin().expect("the built-in book parses"),
    )
    .await
    .expect("spend");
    assert_eq!(spend, vec![Decimal::new(1250, 2)]);
}
