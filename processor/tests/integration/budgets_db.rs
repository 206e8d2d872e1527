//! Budget spend and threshold crossings inside the batch transaction, and
//! `processor budgets apply`, against a real TimescaleDB (PostgreSQL +
//! TimescaleDB Community through the e2e harness).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use processor::budgets;
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::record::Record;
use processor::write::{AttemptState, Writer};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::support;
use crate::support::migrated_database;

/// These tests produce no dead letters; the sink refuses any.
#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!(
            "unexpected dead letter: {:?} {}",
            letter.reason, letter.detail
        );
    }
}

pub(crate) struct Fixture {
    pub(crate) database: Database,
    writer: Writer<NoDeadLetters>,
    next_offset: i64,
}

impl Fixture {
    pub(crate) async fn start() -> Fixture {
        let database = migrated_database().await;
        let pool = database::pool(&DatabaseConfig {
            url: database.url().into(),
            pool_size: 2,
            timeout_ms: 20_000,
        })
        .expect("pool");
        let writer = Writer::new(pool, "budgets-test", NoDeadLetters, Duration::from_secs(20));
        Fixture {
            database,
            writer,
            next_offset: 0,
        }
    }

    pub(crate) fn records(&mut self, events: &[UsageEvent]) -> Vec<Record> {
        events
            .iter()
            .map(|event| {
                self.next_offset += 1;
                support::event_record(0, self.next_offset, event)
            })
            .collect()
    }

    pub(crate) async fn write_records(&self, records: Vec<Record>) -> usize {
        let mut prepared = prepare::prepare(
            records,
            &PriceBook::builtin().expect("the built-in book parses"),
        );
        self.writer
            .write(&mut prepared, &mut AttemptState::default())
            .await
            .expect("batch commits")
            .new_rows
            .len()
    }

    pub(crate) async fn write(&mut self, events: &[UsageEvent]) -> usize {
        let records = self.records(events);
        self.write_records(records).await
    }

    pub(crate) async fn apply_budgets(&self, toml: &str, prune: bool) -> budgets::ApplyReport {
        let parsed = budgets::parse_file(Path::new("budgets.toml"), toml).expect("valid budgets");
        let mut client = self.database.client().await;
        budgets::apply(&mut client, &parsed, prune)
            .await
            .expect("budgets apply")
    }

    /// Spend per (budget name, tenant, period start).
    async fn spend(&self) -> BTreeMap<(String, String, DateTime<Utc>), Decimal> {
        self.database
            .client()
            .await
            .query(
                "SELECT b.name, s.tenant_id, s.period_start, s.spend_usd
                 FROM budget_spend s JOIN budgets b ON b.id = s.budget_id",
                &[],
            )
            .await
            .expect("spend")
            .iter()
            .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
            .collect()
    }

    /// Recorded crossings as (budget name, tenant, period start, threshold).
    async fn alerts(&self) -> Vec<(String, String, DateTime<Utc>, i16)> {
        self.database
            .client()
            .await
            .query(
                "SELECT budget_name, tenant_id, period_start, threshold FROM budget_alerts
                 ORDER BY budget_name, tenant_id, period_start, threshold",
                &[],
            )
            .await
            .expect("alerts")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect()
    }
}

pub(crate) fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0)
        .single()
        .expect("valid time")
}

/// An event with a caller-provided cost, so spend is exact and obvious.
pub(crate) fn event(tenant: &str, cost: &str, created_at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        id: Uuid::now_v7(),
        created_at,
        tenant_id: tenant.into(),
        user_id: None,
        provider: "openai".into(),
        model: "gpt-4o".into(),
        prompt_tokens: 100,
        completion_tokens: 10,
        total_tokens: 110,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: Some(cost.parse().expect("decimal")),
        labels: Default::default(),
        received_at: Utc::now(),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

pub(crate) fn usd(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

const ACME_MONTHLY: &str = r#"
[[budgets]]
name = "acme-monthly"
tenant_id = "acme"
period = "monthly"
amount_usd = "10.00"
"#;

#[tokio::test]
async fn spend_counts_once_through_redelivery_and_a_jump_records_every_threshold_passed() {
    let mut fixture = Fixture::start().await;
    fixture.apply_budgets(ACME_MONTHLY, false).await;
    let january = at(2026, 1, 10, 12);
    let january_start = at(2026, 1, 1, 0);

    // 40 %: crosses nothing.
    let first = vec![
        event("acme", "1.5", january),
        event("acme", "2.5", january),
        event("globex", "100", january), // another tenant: not in this budget
    ];
    let first_records = fixture.records(&first);
    assert_eq!(fixture.write_records(first_records.clone()).await, 3);
    let key = ("acme-monthly".to_owned(), "acme".to_owned(), january_start);
    assert_eq!(fixture.spend().await[&key], usd("4"));
    assert!(fixture.alerts().await.is_empty());

    // The same records delivered again (a crash before the Kafka commit, a
    // rebalance, a replay): nothing new, nothing added.
    assert_eq!(fixture.write_records(first_records).await, 0);
    assert_eq!(fixture.spend().await[&key], usd("4"));

    // 40 % → 95 % in one batch: 50, 75 and 90 at once, not 100.
    let second_records = fixture.records(&[event("acme", "5.5", january)]);
    fixture.write_records(second_records.clone()).await;
    assert_eq!(fixture.spend().await[&key], usd("9.5"));
    let thresholds: Vec<i16> = fixture.alerts().await.iter().map(|a| a.3).collect();
    assert_eq!(thresholds, vec![50, 75, 90]);

    // Redelivering the crossing batch records nothing twice.
    fixture.write_records(second_records).await;
    assert_eq!(fixture.spend().await[&key], usd("9.5"));
    assert_eq!(fixture.alerts().await.len(), 3);

    // Exactly reaching the amount is 100 %.
    fixture.write(&[event("acme", "0.5", january)]).await;
    let alerts = fixture.alerts().await;
    assert_eq!(alerts.len(), 4);
    assert_eq!(alerts[3].3, 100);
    let client = fixture.database.client().await;
    let row = client
        .query_one(
            "SELECT spend_usd, amount_usd, period_end, budget_name, period, timezone
             FROM budget_alerts WHERE threshold = 100",
            &[],
        )
        .await
        .expect("alert row");
    assert_eq!(row.get::<_, Decimal>(0), usd("10"));
    assert_eq!(row.get::<_, Decimal>(1), usd("10"));
    assert_eq!(row.get::<_, DateTime<Utc>>(2), at(2026, 2, 1, 0));
    assert_eq!(row.get::<_, String>(4), "monthly");
    assert_eq!(row.get::<_, String>(5), "UTC");
}

#[tokio::test]
async fn a_budget_created_mid_period_counts_from_the_period_start_and_late_events_count_toward_their_own_period(
) {
    let mut fixture = Fixture::start().await;
    // Traffic before the budget exists: January and February.
    fixture
        .write(&[
            event("acme", "3", at(2026, 1, 2, 9)),
            event("acme", "4", at(2026, 1, 20, 9)),
            event("acme", "1", at(2026, 2, 3, 9)),
        ])
        .await;
    fixture.apply_budgets(ACME_MONTHLY, false).await;
    // The first event after the budget exists: the February spend row is
    // built from the audit table for all of February, then this event is in it.
    fixture
        .write(&[event("acme", "2", at(2026, 2, 5, 9))])
        .await;
    let february = (
        "acme-monthly".to_owned(),
        "acme".to_owned(),
        at(2026, 2, 1, 0),
    );
    let january = (
        "acme-monthly".to_owned(),
        "acme".to_owned(),
        at(2026, 1, 1, 0),
    );
    let spend = fixture.spend().await;
    assert_eq!(spend[&february], usd("3"), "{spend:?}");
    assert!(!spend.contains_key(&january), "{spend:?}");
    assert!(fixture.alerts().await.is_empty());

    // A late January event arrives in February: January's row is built
    // from January's 7 USD plus it, and it crosses January's thresholds,
    // with January's period; February is untouched.
    fixture
        .write(&[event("acme", "1.5", at(2026, 1, 31, 23))])
        .await;
    let spend = fixture.spend().await;
    assert_eq!(spend[&january], usd("8.5"));
    assert_eq!(spend[&february], usd("3"));
    let alerts = fixture.alerts().await;
    assert_eq!(
        alerts,
        vec![
            ("acme-monthly".into(), "acme".into(), at(2026, 1, 1, 0), 50),
            ("acme-monthly".into(), "acme".into(), at(2026, 1, 1, 0), 75),
        ]
    );
}

#[tokio::test]
async fn daily_thresholds_re_arm_every_day_per_tenant_in_the_budgets_time_zone() {
    let mut fixture = Fixture::start().await;
    fixture
        .apply_budgets(
            r#"
            [[budgets]]
            name = "every-tenant-daily"
            tenant_id = "*"
            period = "daily"
            timezone = "America/New_York"
            amount_usd = "1"
            thresholds = [50, 100]
            "#,
            false,
        )
        .await;
    // 2026-01-05 03:00 UTC is still January 4th in New York.
    let jan4_ny_start = at(2026, 1, 4, 5);
    let jan5_ny_start = at(2026, 1, 5, 5);
    fixture
        .write(&[
            event("acme", "0.6", at(2026, 1, 5, 3)),
            event("acme", "0.6", at(2026, 1, 5, 4)),
            event("globex", "0.5", at(2026, 1, 5, 4)),
        ])
        .await;
    // The next New York day: acme's thresholds fire again.
    fixture
        .write(&[event("acme", "0.7", at(2026, 1, 5, 6))])
        .await;
    let alerts = fixture.alerts().await;
    let name = "every-tenant-daily".to_owned();
    assert_eq!(
        alerts,
        vec![
            (name.clone(), "acme".into(), jan4_ny_start, 50),
            (name.clone(), "acme".into(), jan4_ny_start, 100),
            (name.clone(), "acme".into(), jan5_ny_start, 50),
            (name.clone(), "globex".into(), jan4_ny_start, 50),
        ]
    );
    let spend = fixture.spend().await;
    assert_eq!(
        spend[&(name.clone(), "acme".into(), jan4_ny_start)],
        usd("1.2")
    );
    assert_eq!(
        spend[&(name.clone(), "acme".into(), jan5_ny_start)],
        usd("0.7")
    );
    assert_eq!(spend[&(name, "globex".into(), jan4_ny_start)], usd("0.5"));
}

#[tokio::test]
async fn edits_apply_to_the_next_batch_and_a_new_scope_rebuilds_spend() {
    let mut fixture = Fixture::start().await;
    let day = at(2026, 3, 10, 12);
    let mut support = event("acme", "2", day);
    support.labels = [("use_case".to_owned(), "support-bot".to_owned())].into();
    let mut codegen = event("acme", "3", day);
    codegen.labels = [("use_case".to_owned(), "code-gen".to_owned())].into();
    fixture.write(&[support, codegen]).await;

    let report = fixture
        .apply_budgets(
            r#"
            [[budgets]]
            name = "acme-support"
            tenant_id = "acme"
            period = "monthly"
            amount_usd = "100"
            label = { key = "use_case", value = "support-bot" }
            [[budgets]]
            name = "obsolete"
            tenant_id = "acme"
            period = "daily"
            amount_usd = "1"
            "#,
            false,
        )
        .await;
    assert_eq!(report.created, vec!["acme-support", "obsolete"]);
    fixture.write(&[event("acme", "1", day)]).await; // no label: not support
    assert!(fixture.spend().await.keys().all(|k| k.0 != "acme-support"));
    let mut free_support = event("acme", "0", day);
    free_support.labels = [("use_case".to_owned(), "support-bot".to_owned())].into();
    fixture.write(&[free_support.clone()]).await;
    let key = (
        "acme-support".to_owned(),
        "acme".to_owned(),
        at(2026, 3, 1, 0),
    );
    assert_eq!(
        fixture.spend().await[&key],
        usd("2"),
        "only the support-bot row"
    );

    // The amount drops under the spend: the next batch records the
    // thresholds now behind it, without a restart.
    let report = fixture
        .apply_budgets(
            r#"
            [[budgets]]
            name = "acme-support"
            tenant_id = "acme"
            period = "monthly"
            amount_usd = "2.5"
            label = { key = "use_case", value = "support-bot" }
            "#,
            true,
        )
        .await;
    assert_eq!(report.updated, vec!["acme-support"]);
    assert_eq!(report.deleted, vec!["obsolete"]);
    free_support.id = Uuid::now_v7();
    fixture.write(&[free_support]).await;
    let thresholds: Vec<i16> = fixture
        .alerts()
        .await
        .iter()
        .filter(|a| a.0 == "acme-support")
        .map(|a| a.3)
        .collect();
    assert_eq!(thresholds, vec![50, 75], "2 of 2.5 USD is 80 %");

    // A new scope (every use case) resets the stored spend; the next batch
    // rebuilds it from the audit table: 2 + 3 + 1 + 0 + 0 + 0.5.
    fixture
        .apply_budgets(
            r#"
            [[budgets]]
            name = "acme-support"
            tenant_id = "acme"
            period = "monthly"
            amount_usd = "2.5"
            "#,
            false,
        )
        .await;
    assert!(fixture.spend().await.is_empty(), "spend reset");
    fixture.write(&[event("acme", "0.5", day)]).await;
    assert_eq!(fixture.spend().await[&key], usd("6.5"));
    let unchanged = fixture
        .apply_budgets(
            r#"
            [[budgets]]
            name = "acme-support"
            tenant_id = "acme"
            period = "monthly"
            amount_usd = "2.50"
            "#,
            false,
        )
        .await;
    assert_eq!(unchanged.unchanged, vec!["acme-support"]);
    assert_eq!(
        fixture.spend().await[&key],
        usd("6.5"),
        "kept when nothing changed"
    );
}
