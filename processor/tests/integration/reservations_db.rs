//! Budget reservations against a real TimescaleDB, with the processor's
//! batch transaction settling them: the hard-limit invariant checked from
//! the database's own history while grants, settlements, cancellations,
//! expiries and unreserved usage interleave; settlement only by the
//! reservation's own tenant; settlement after expiry.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::write::{AttemptState, Writer};
use rust_decimal::Decimal;
use store::reservations::{ReleaseReason, Released, ReservationRequest, Reserved};
use tokio_postgres::Client;
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
    async fn start() -> Arc<Fixture> {
        let database = migrated_database().await;
        let pool = database::pool(&DatabaseConfig {
            url: database.url().into(),
            pool_size: 4,
            timeout_ms: 60_000,
        })
        .expect("pool");
        let writer = Writer::new(
            pool,
            "reservations-test",
            NoDeadLetters,
            Duration::from_secs(60),
        );
        Arc::new(Fixture {
            database,
            writer,
            book: PriceBook::builtin().expect("the built-in book parses"),
            next_offset: AtomicI64::new(0),
        })
    }

    /// Writes `event` in a batch of its own on `partition` (one per
    /// worker, so concurrent batches do not race for offsets).
    async fn write(&self, partition: i32, event: &UsageEvent) {
        let offset = self.next_offset.fetch_add(1, Ordering::SeqCst);
        let records = vec![crate::support::event_record(partition, offset, event)];
        let mut prepared = prepare::prepare(records, &self.book);
        let outcome = self
            .writer
            .write(&mut prepared, &mut AttemptState::default())
            .await
            .expect("batch commits");
        assert_eq!(outcome.new_rows.len(), 1, "the event is new");
    }

    async fn budget(&self, name: &str, tenant: &str, amount: &str) -> Uuid {
        let id = Uuid::now_v7();
        self.database
            .client()
            .await
            .execute(
                "INSERT INTO budgets (id, name, tenant_id, period, amount_usd, hard_limit)
                 VALUES ($1, $2, $3, 'monthly', $4::text::numeric, true)",
                &[&id, &name, &tenant, &amount],
            )
            .await
            .expect("budget");
        id
    }
}

fn request(tenant: &str, amount: Decimal, ttl_seconds: u32) -> ReservationRequest {
    ReservationRequest {
        id: Uuid::now_v7(),
        tenant_id: tenant.into(),
        user_id: None,
        api_key: None,
        provider: None,
        model: None,
        labels: Default::default(),
        amount_usd: amount,
        ttl_seconds,
        idempotency_key: None,
        request_sha256: vec![0; 32],
    }
}

async fn reserve(client: &mut Client, fixture: &Fixture, request: &ReservationRequest) -> bool {
    match store::reservations::reserve(client, request, Utc::now(), &fixture.book)
        .await
        .expect("reserve")
    {
        Reserved::Granted { .. } => true,
        Reserved::Exhausted { .. } => false,
        other => panic!("unexpected {other:?}"),
    }
}

async fn cancel(client: &mut Client, fixture: &Fixture, id: Uuid) -> Released {
    let transaction = client.transaction().await.expect("begin");
    let released = store::reservations::release(
        &transaction,
        id,
        None,
        ReleaseReason::Cancelled,
        None,
        Utc::now(),
        &fixture.book,
    )
    .await
    .expect("release");
    transaction.commit().await.expect("commit");
    released
}

/// A usage event of `tenant` costing `cost`, under `reservation`.
fn usage(tenant: &str, cost: Decimal, reservation: Option<Uuid>) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now,
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
        estimated_cost: Some(cost),
        labels: Default::default(),
        received_at: now,
        request_id: None,
        call_identity: false,
        reservation_id: reservation,
        api_key: None,
    }
}

fn cents(n: i64) -> Decimal {
    Decimal::new(n, 2)
}

/// One entry of `budget_reservation_log`.
#[derive(Debug)]
struct Entry {
    xact: i64,
    kind: String,
    period_start: DateTime<Utc>,
    delta_spend: Decimal,
    delta_reserved: Decimal,
}

async fn history(client: &Client, budget: Uuid) -> Vec<Entry> {
    client
        .query(
            "SELECT xact, kind, period_start, delta_spend_usd, delta_reserved_usd
             FROM budget_reservation_log WHERE budget_id = $1 AND tenant_id = 'acme'
             ORDER BY seq",
            &[&budget],
        )
        .await
        .expect("log")
        .iter()
        .map(|row| Entry {
            xact: row.get("xact"),
            kind: row.get("kind"),
            period_start: row.get("period_start"),
            delta_spend: row.get("delta_spend_usd"),
            delta_reserved: row.get("delta_reserved_usd"),
        })
        .collect()
}

/// Issue: a hard limit was advice; nothing stopped spend + outstanding
/// calls from passing it. Six workers with their own connections reserve
/// $2 at a time against a $30 hard budget and then settle (a usage event
/// costing up to the amount, through the processor's batch), cancel, or
/// leave the reservation to expire, while unreserved usage arrives too.
/// Replaying the database's log in its order, at the end of every
/// transaction: a grant leaves spend + held within the budget, and nothing
/// else takes the total past the budget by more than the unreserved usage
/// recorded so far. The replay also ends where the tables are, so the log
/// misses nothing.
#[tokio::test]
async fn no_instant_of_the_logged_history_holds_more_than_the_budget() {
    let fixture = Fixture::start().await;
    let budget = fixture.budget("acme-hard", "acme", "30").await;
    let limit = Decimal::new(30, 0);
    let unreserved_cost = cents(5);

    let workers = (0..6).map(|worker: i32| {
        let fixture = fixture.clone();
        tokio::spawn(async move {
            let mut client = fixture.database.client().await;
            let (mut granted, mut refused, mut unreserved) = (0, 0, Decimal::ZERO);
            for step in 0..20_i32 {
                let ttl = if step % 5 == 0 { 1 } else { 120 };
                let request = request("acme", Decimal::new(2, 0), ttl);
                if !reserve(&mut client, &fixture, &request).await {
                    refused += 1;
                } else {
                    granted += 1;
                    match (worker + step) % 4 {
                        1 => {
                            cancel(&mut client, &fixture, request.id).await;
                        }
                        _ if ttl == 1 => {} // left to expire
                        _ => {
                            let cost = cents(i64::from(50 + (worker * 7 + step * 13) % 151));
                            fixture
                                .write(worker, &usage("acme", cost, Some(request.id)))
                                .await;
                        }
                    }
                }
                if step % 7 == 3 {
                    fixture
                        .write(worker, &usage("acme", unreserved_cost, None))
                        .await;
                    unreserved += unreserved_cost;
                }
            }
            (granted, refused, unreserved)
        })
    });
    let mut totals = (0, 0, Decimal::ZERO);
    for worker in futures::future::join_all(workers).await {
        let (granted, refused, unreserved) = worker.expect("worker completes");
        totals = (
            totals.0 + granted,
            totals.1 + refused,
            totals.2 + unreserved,
        );
    }
    let (granted, refused, unreserved_total) = totals;
    assert!(
        granted > 0 && refused > 0,
        "granted {granted}, refused {refused}"
    );

    // Holds left to expire are released by the next grant or refusal that
    // finds them expired; make one once they all have.
    let client = fixture.database.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open_expired: i64 = client
            .query_one(
                "SELECT count(*) AS n FROM budget_reservation_holds WHERE expires_at > now()
                   AND expires_at < now() + interval '2 seconds'",
                &[],
            )
            .await
            .expect("count")
            .get("n");
        if open_expired == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "holds never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sweeper = fixture.database.client().await;
    reserve(&mut sweeper, &fixture, &request("acme", cents(1), 1)).await;

    let log = history(&client, budget).await;
    for kind in ["grant", "settled", "cancelled", "expired", "spend"] {
        assert!(
            log.iter().any(|entry| entry.kind == kind),
            "no {kind} in the history"
        );
    }
    let mut spend: std::collections::BTreeMap<DateTime<Utc>, Decimal> = Default::default();
    let mut held = Decimal::ZERO;
    let mut unreserved_so_far = Decimal::ZERO;
    let mut index = 0;
    while index < log.len() {
        let xact = log[index].xact;
        let mut grants = false;
        let mut period = log[index].period_start;
        let (mut spent, mut released_or_settled) = (Decimal::ZERO, false);
        while index < log.len() && log[index].xact == xact {
            let entry = &log[index];
            *spend.entry(entry.period_start).or_default() += entry.delta_spend;
            held += entry.delta_reserved;
            grants |= entry.kind == "grant";
            released_or_settled |= entry.kind == "settled";
            spent += entry.delta_spend;
            period = entry.period_start;
            index += 1;
        }
        if spent > Decimal::ZERO && !released_or_settled {
            unreserved_so_far += spent;
        }
        let total = spend.get(&period).copied().unwrap_or_default() + held;
        assert!(held >= Decimal::ZERO, "negative holds at xact {xact}");
        if grants {
            assert!(
                total <= limit,
                "a grant took the total to {total} (xact {xact})"
            );
        }
        assert!(
            total <= limit + unreserved_so_far,
            "total {total} over {limit} + unreserved {unreserved_so_far} at xact {xact}"
        );
    }
    assert_eq!(
        unreserved_so_far, unreserved_total,
        "every unreserved event is in the log"
    );

    let stored_spend: Decimal = client
        .query_one(
            "SELECT spend_usd FROM budget_spend WHERE budget_id = $1 AND tenant_id = 'acme'",
            &[&budget],
        )
        .await
        .expect("spend row")
        .get("spend_usd");
    let stored_held: Decimal = client
        .query_one(
            "SELECT coalesce(sum(amount_usd), 0) AS held FROM budget_reservation_holds
             WHERE budget_id = $1",
            &[&budget],
        )
        .await
        .expect("holds")
        .get("held");
    assert_eq!(spend.values().copied().sum::<Decimal>(), stored_spend);
    assert_eq!(held, stored_held);
    let unsettled: i64 = client
        .query_one(
            "SELECT count(*) AS n FROM budget_reservations
             WHERE release_reason = 'settled' AND settled_by IS NULL",
            &[],
        )
        .await
        .expect("count")
        .get("n");
    assert_eq!(unsettled, 0, "a settled reservation names its event");
}

/// The release reason of reservation `id` and how many holds it has.
async fn reservation_state(client: &Client, id: Uuid) -> (Option<String>, i64) {
    let row = client
        .query_one(
            "SELECT release_reason,
                    (SELECT count(*) FROM budget_reservation_holds
                     WHERE reservation_id = $1) AS holds
             FROM budget_reservations WHERE id = $1",
            &[&id],
        )
        .await
        .expect("reservation");
    (row.get("release_reason"), row.get("holds"))
}

/// A reservation id is only settled by its own tenant's usage: another
/// tenant reusing it releases nothing, and its cost counts for its tenant.
#[tokio::test]
async fn a_reservation_id_reused_by_another_tenant_releases_nothing() {
    let fixture = Fixture::start().await;
    fixture.budget("acme-hard", "acme", "10").await;
    let mut client = fixture.database.client().await;
    let reservation = request("acme", Decimal::new(4, 0), 120);
    assert!(reserve(&mut client, &fixture, &reservation).await);

    fixture
        .write(0, &usage("globex", cents(100), Some(reservation.id)))
        .await;
    assert_eq!(
        reservation_state(&client, reservation.id).await,
        (None, 1),
        "globex released acme's hold"
    );

    let settling = usage("acme", cents(300), Some(reservation.id));
    fixture.write(0, &settling).await;
    assert_eq!(
        reservation_state(&client, reservation.id).await,
        (Some("settled".into()), 0)
    );
    let settled_by: Option<Uuid> = client
        .query_one(
            "SELECT settled_by FROM budget_reservations WHERE id = $1",
            &[&reservation.id],
        )
        .await
        .expect("reservation")
        .get("settled_by");
    assert_eq!(settled_by, Some(settling.id));
    // $3 spent, nothing held: $7 of room.
    assert!(
        reserve(
            &mut client,
            &fixture,
            &request("acme", Decimal::new(7, 0), 60)
        )
        .await
    );
}

/// Usage that arrives after its reservation expired is spend like any
/// other; the reservation stays expired (its hold stopped counting at its
/// expiry), and cancelling it then is refused as closed.
#[tokio::test]
async fn a_settlement_after_expiry_counts_the_cost_and_leaves_the_reservation_expired() {
    let fixture = Fixture::start().await;
    let budget = fixture.budget("acme-hard", "acme", "10").await;
    let mut client = fixture.database.client().await;
    let reservation = request("acme", Decimal::new(8, 0), 1);
    assert!(reserve(&mut client, &fixture, &reservation).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let expired: bool = client
            .query_one(
                "SELECT expires_at <= now() AS expired FROM budget_reservations WHERE id = $1",
                &[&reservation.id],
            )
            .await
            .expect("reservation")
            .get("expired");
        if expired {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fixture
        .write(0, &usage("acme", cents(500), Some(reservation.id)))
        .await;
    let reason: Option<String> = client
        .query_one(
            "SELECT release_reason FROM budget_reservations WHERE id = $1",
            &[&reservation.id],
        )
        .await
        .expect("reservation")
        .get("release_reason");
    assert_eq!(reason.as_deref(), Some("expired"));
    assert_eq!(
        cancel(&mut client, &fixture, reservation.id).await,
        Released::AlreadyClosed("expired".into())
    );
    let spend: Decimal = client
        .query_one(
            "SELECT spend_usd FROM budget_spend WHERE budget_id = $1",
            &[&budget],
        )
        .await
        .expect("spend")
        .get("spend_usd");
    assert_eq!(spend, Decimal::new(5, 0));
    assert!(
        !reserve(
            &mut client,
            &fixture,
            &request("acme", Decimal::new(6, 0), 60)
        )
        .await
    );
    assert!(
        reserve(
            &mut client,
            &fixture,
            &request("acme", Decimal::new(5, 0), 60)
        )
        .await
    );

    // An edit that resets the budget's spend is in the history too: the replayed spend
    // follows the table down to nothing.
    client
        .execute("DELETE FROM budget_spend WHERE budget_id = $1", &[&budget])
        .await
        .expect("reset");
    let replayed: Decimal = history(&client, budget)
        .await
        .iter()
        .map(|entry| entry.delta_spend)
        .sum();
    assert_eq!(replayed, Decimal::ZERO);
}
