//! Rolling 30-day budgets against a real TimescaleDB: the window's spend
//! (what a grant and the status see) holds the last 30 local days only, a
//! late event reaches today's window, and open reservations keep holding
//! as the window moves.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use e2e::Database;
use ledger::{Budget, PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::write::{AttemptState, Writer};
use rust_decimal::Decimal;
use store::reservations::{ReservationRequest, Reserved};
use uuid::Uuid;

use crate::support::migrated_database;

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

struct Fixture {
    database: Database,
    writer: Writer<NoDeadLetters>,
    book: PriceBook,
    next_offset: AtomicI64,
}

impl Fixture {
    async fn start() -> Fixture {
        let database = migrated_database().await;
        let pool = database::pool(&DatabaseConfig {
            url: database.url().into(),
            pool_size: 2,
            timeout_ms: 60_000,
        })
        .expect("pool");
        let writer = Writer::new(pool, "rolling-test", NoDeadLetters, Duration::from_secs(60));
        Fixture {
            database,
            writer,
            book: PriceBook::builtin().expect("the built-in book parses"),
            next_offset: AtomicI64::new(0),
        }
    }

    async fn write(&self, event: &UsageEvent) {
        let offset = self.next_offset.fetch_add(1, Ordering::SeqCst);
        let records = vec![crate::support::event_record(0, offset, event)];
        let mut prepared = prepare::prepare(records, &self.book);
        let outcome = self
            .writer
            .write(&mut prepared, &mut AttemptState::default())
            .await
            .expect("batch commits");
        assert_eq!(outcome.new_rows.len(), 1, "the event is new");
    }

    /// Whether a grant of `amount` at `now` is made; when refused, the
    /// budget's window spend and open holds it saw.
    async fn reserve(&self, amount: Decimal, now: DateTime<Utc>) -> Result<(), (Decimal, Decimal)> {
        let mut client = self.database.client().await;
        let request = ReservationRequest {
            id: Uuid::now_v7(),
            tenant_id: "acme".into(),
            user_id: None,
            api_key: None,
            provider: None,
            model: None,
            labels: Default::default(),
            amount_usd: amount,
            ttl_seconds: 600,
            idempotency_key: None,
            request_sha256: vec![0; 32],
        };
        match store::reservations::reserve(&mut client, &request, now, &self.book)
            .await
            .expect("reserve")
        {
            Reserved::Granted { .. } => Ok(()),
            Reserved::Exhausted { budget } => Err((budget.spend_usd, budget.reserved_usd)),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn window_spend(&self, budget: &Budget, now: DateTime<Utc>) -> Decimal {
        self.database
            .client()
            .await
            .query_one(
                "SELECT spend_usd FROM budget_spend
                 WHERE budget_id = $1 AND tenant_id = 'acme' AND period_start = $2",
                &[&budget.id, &budget.period_of(now).start],
            )
            .await
            .expect("the window's spend row")
            .get("spend_usd")
    }
}

fn usage(cost: Decimal, created_at: DateTime<Utc>) -> UsageEvent {
    let created_at = created_at.trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at,
        tenant_id: "acme".into(),
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
        estimated_cost: Some(cost),
        labels: Default::default(),
        received_at: Utc::now().trunc_subsecs(6),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

fn usd(n: i64) -> Decimal {
    Decimal::new(n, 0)
}

/// $4 spent 40 days ago is outside the window, $3 20 days ago and $2 now
/// inside: $5 of a $10 budget is spent. A late event of yesterday, written
/// after today's window was computed, reaches it. A reservation made today
/// keeps holding tomorrow, and 21 days on the $3 has left the window.
#[tokio::test]
async fn a_rolling_budget_counts_the_last_thirty_days_and_its_holds_follow_the_window() {
    let fixture = Fixture::start().await;
    let client = fixture.database.client().await;
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO budgets (id, name, tenant_id, period, amount_usd, hard_limit)
             VALUES ($1, 'acme-rolling', 'acme', 'rolling_30d', 10, true)",
            &[&id],
        )
        .await
        .expect("a rolling_30d budget is accepted");
    let budget = store::budgets::list(&client)
        .await
        .expect("budgets")
        .into_iter()
        .find(|b| b.id == id)
        .expect("the budget");

    let now = Utc::now();
    let days = |n: i64| now - chrono::Duration::days(n);
    fixture.write(&usage(usd(4), days(40))).await;
    fixture.write(&usage(usd(3), days(20))).await;
    fixture.write(&usage(usd(2), now)).await;
    assert_eq!(fixture.window_spend(&budget, now).await, usd(5));
    assert_eq!(
        fixture.reserve(Decimal::new(501, 2), now).await,
        Err((usd(5), Decimal::ZERO)),
        "$5 left of the window"
    );
    assert_eq!(fixture.reserve(usd(4), now).await, Ok(()));

    // Yesterday's event arrives late: today's window (its row exists) gains it.
    fixture.write(&usage(usd(1), days(1))).await;
    assert_eq!(fixture.window_spend(&budget, now).await, usd(6));
    assert_eq!(
        fixture.reserve(Decimal::new(1, 2), now).await,
        Err((usd(6), usd(4))),
        "$6 spent and $4 held"
    );

    // The forecast projects today's window to its end, the next local
    // midnight, at the rate of the last 48 hours ($3: today's $2 and
    // yesterday's $1).
    let later = now + chrono::Duration::seconds(1);
    let spend = [(budget.id, usd(6))].into_iter().collect();
    let window = chrono::Duration::hours(48);
    let forecasts = store::forecasts::for_tenant(
        &client,
        "acme",
        None,
        std::slice::from_ref(&budget),
        &spend,
        later,
        window,
        &fixture.book,
    )
    .await
    .expect("forecast");
    let period = budget.period_of(later);
    assert_eq!(period.end, budget.period_of(now).end);
    let trailing = ledger::budget::forecast::trailing_window(period, later, window);
    assert_eq!(
        forecasts[&budget.id],
        ledger::budget::forecast::forecast(usd(10), usd(6), usd(3), trailing, period, later)
    );

    // Tomorrow's window holds the same spend and today's reservation.
    assert_eq!(
        fixture.reserve(Decimal::new(1, 2), days(-1)).await,
        Err((usd(6), usd(4)))
    );
    // In 21 days the $3 has left the window; the hold has not.
    assert_eq!(
        fixture.reserve(Decimal::new(301, 2), days(-21)).await,
        Err((usd(3), usd(4)))
    );
    assert_eq!(fixture.reserve(usd(3), days(-21)).await, Ok(()));
}
