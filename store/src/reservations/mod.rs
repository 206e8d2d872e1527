//! Budget reservations: money set aside against every budget a planned call
//! could count toward, before the call is made (`budget_reservations`,
//! `budget_reservation_holds`, `budget_reservation_log`;
//! sql/V15__budget_reservations.sql).
//!
//! Exactness comes from the lock order every budget writer shares (see the
//! crate docs): the budgets `FOR SHARE`, then their current `budget_spend`
//! rows `FOR UPDATE` in key order. A grant reads the spend and the open
//! holds only once it holds those rows, so two grants on one budget, or a
//! grant and a batch adding spend, run one after the other whichever
//! gateway or processor runs them, and the second sees what the first
//! committed. The same lock makes each log entry's `seq` the order of the
//! changes for that budget and tenant.
//!
//! - [`reserve`]: the grant (this file).
//! - [`release`]: cancellation, settlement by a usage event and expiry.

mod release;
mod sql;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use ledger::budget::reservation::PlannedCall;
use ledger::{Budget, PeriodBounds, PriceBook};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio_postgres::{Client, GenericClient, Row, Transaction};
use uuid::Uuid;

use crate::{db, DbError};

pub use release::{release, settle, ReleaseReason, Released, Settlement};

/// A reservation to grant.
#[derive(Debug, Clone)]
pub struct ReservationRequest {
    pub id: Uuid,
    pub tenant_id: String,
    pub user_id: Option<String>,
    /// The name (never the hash) of the API key that asked.
    pub api_key: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub amount_usd: Decimal,
    pub ttl_seconds: u32,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request, to tell a retry from another request
    /// reusing the idempotency key.
    pub request_sha256: Vec<u8>,
}

/// Where one budget stands for the reservation's tenant (and user, for an
/// each-user budget).
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub budget_id: Uuid,
    /// The user key of the budget's spend row (`UserScope::spend_key`).
    pub user_id: String,
    pub name: String,
    pub hard_limit: bool,
    pub amount_usd: Decimal,
    pub period: PeriodBounds,
    pub spend_usd: Decimal,
    /// Open holds, this reservation's included once granted.
    pub reserved_usd: Decimal,
}

impl Room {
    pub fn remaining_usd(&self) -> Decimal {
        (self.amount_usd - self.spend_usd - self.reserved_usd).max(Decimal::ZERO)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.budget_id,
            "name": self.name,
            "user_id": self.user_id,
            "hard_limit": self.hard_limit,
            "amount_usd": self.amount_usd.normalize().to_string(),
            "period_start": self.period.start,
            "period_end": self.period.end,
            "spend_usd": self.spend_usd.normalize().to_string(),
            "reserved_usd": self.reserved_usd.normalize().to_string(),
            "remaining_usd": self.remaining_usd().normalize().to_string(),
        })
    }
}

/// What became of a reservation request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// Granted now; `answer` is the grant's JSON body.
    Granted { answer: Value },
    /// The same request was granted before under its idempotency key; its
    /// answer then.
    Replayed { answer: Value },
    /// A hard-limited budget has less room than the amount: nothing held.
    Exhausted { budget: Room },
    /// The idempotency key names a reservation made for a different
    /// request.
    KeyReused { reservation_id: Uuid },
    /// The idempotency key was taken and then not found: the caller may
    /// retry.
    Contended,
}

/// Grants `request` if every hard-limited budget that may count the call
/// has room for it, in one transaction on `client` (see the module docs for
/// the locks). `now` picks each budget's current period.
pub async fn reserve(
    client: &mut Client,
    request: &ReservationRequest,
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Reserved, DbError> {
    // A second pass only when a request with the same key committed
    // between the first look-up and the insert: it then finds that one.
    for _ in 0..2 {
        if let Some(earlier) = by_idempotency_key(&*client, request).await? {
            return Ok(earlier);
        }
        let transaction = client.transaction().await.map_err(db("beginning"))?;
        match reserve_in(&transaction, request, now, book).await? {
            // A refusal commits too: it holds nothing, and keeps the
            // releases of expired holds it made under the lock.
            Some(outcome) => {
                transaction.commit().await.map_err(db("committing"))?;
                return Ok(outcome);
            }
            None => transaction.rollback().await.map_err(db("rolling back"))?,
        }
    }
    Ok(by_idempotency_key(&*client, request)
        .await?
        .unwrap_or(Reserved::Contended))
}

/// `None` when the insert found the idempotency key taken.
async fn reserve_in(
    transaction: &Transaction<'_>,
    request: &ReservationRequest,
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Option<Reserved>, DbError> {
    let tenant = request.tenant_id.as_str();
    let call = PlannedCall {
        tenant_id: tenant,
        user_id: request.user_id.as_deref(),
        api_key: request.api_key.as_deref(),
        provider: request.provider.as_deref(),
        model: request.model.as_deref(),
        labels: &request.labels,
    };
    let budgets = locked_budgets(transaction, tenant, |b| b.scope.may_count(&call, book)).await?;
    let rooms = lock_rooms(
        transaction,
        tenant,
        request.user_id.as_deref(),
        &budgets,
        now,
        book,
    )
    .await?;

    if let Some(short) = rooms.iter().find(|room| {
        room.hard_limit && room.amount_usd < room.spend_usd + room.reserved_usd + request.amount_usd
    }) {
        return Ok(Some(Reserved::Exhausted {
            budget: short.clone(),
        }));
    }

    let granted: Vec<Room> = rooms
        .into_iter()
        .map(|room| Room {
            reserved_usd: room.reserved_usd + request.amount_usd,
            ..room
        })
        .collect();
    let labels = serde_json::to_value(&request.labels).unwrap_or_default();
    // `expires_at` is the database's and joins the answer once inserted.
    let mut answer = json!({
        "id": request.id,
        "tenant_id": request.tenant_id,
        "amount_usd": request.amount_usd.normalize().to_string(),
        "budgets": granted.iter().map(Room::to_json).collect::<Vec<_>>(),
    });
    let ids: Vec<Uuid> = granted.iter().map(|room| room.budget_id).collect();
    let users: Vec<&str> = granted.iter().map(|room| room.user_id.as_str()).collect();
    let hard: Vec<&Room> = granted.iter().filter(|room| room.hard_limit).collect();
    let log_users: Vec<&str> = hard.iter().map(|room| room.user_id.as_str()).collect();
    let log_ids: Vec<Uuid> = hard.iter().map(|room| room.budget_id).collect();
    let log_starts: Vec<DateTime<Utc>> = hard.iter().map(|room| room.period.start).collect();
    let log_spend: Vec<Decimal> = hard.iter().map(|room| room.spend_usd).collect();
    let log_reserved: Vec<Decimal> = hard.iter().map(|room| room.reserved_usd).collect();
    let log_amounts: Vec<Decimal> = hard.iter().map(|room| room.amount_usd).collect();
    let inserted = transaction
        .query_opt(
            sql::INSERT_RESERVATION,
            &[
                &request.id,
                &request.tenant_id,
                &request.user_id,
                &request.api_key,
                &request.provider,
                &request.model,
                &labels,
                &request.amount_usd,
                &request.idempotency_key,
                &request.request_sha256,
                &f64::from(request.ttl_seconds),
                &answer,
                &ids,
                &log_ids,
                &log_starts,
                &log_spend,
                &log_reserved,
                &log_amounts,
                &users,
                &log_users,
            ],
        )
        .await
        .map_err(db("inserting a reservation"))?;
    let Some(inserted) = inserted else {
        return Ok(None);
    };
    let expires_at: DateTime<Utc> = inserted
        .try_get("expires_at")
        .map_err(db("reading a reservation"))?;
    answer["expires_at"] = json!(expires_at);
    Ok(Some(Reserved::Granted { answer }))
}

/// The answer to a request whose idempotency key was used before, if it
/// was.
async fn by_idempotency_key(
    client: &impl GenericClient,
    request: &ReservationRequest,
) -> Result<Option<Reserved>, DbError> {
    let Some(key) = &request.idempotency_key else {
        return Ok(None);
    };
    let Some(row) = client
        .query_opt(sql::BY_IDEMPOTENCY_KEY, &[&request.tenant_id, key])
        .await
        .map_err(db("reading a reservation"))?
    else {
        return Ok(None);
    };
    let get = db("reading a reservation");
    let sha: Vec<u8> = row.try_get("request_sha256").map_err(&get)?;
    let id: Uuid = row.try_get("id").map_err(&get)?;
    if sha != request.request_sha256 {
        return Ok(Some(Reserved::KeyReused { reservation_id: id }));
    }
    let mut answer: Value = row.try_get("answer").map_err(&get)?;
    let expires_at: DateTime<Utc> = row.try_get("expires_at").map_err(&get)?;
    answer["expires_at"] = json!(expires_at);
    Ok(Some(Reserved::Replayed { answer }))
}

/// The budgets of `tenant` that `applies` keeps, locked `FOR SHARE` (an
/// edit waits for this transaction), read again under the lock so that the
/// definitions used are the ones that stay.
async fn locked_budgets(
    transaction: &Transaction<'_>,
    tenant: &str,
    applies: impl Fn(&Budget) -> bool,
) -> Result<Vec<Budget>, DbError> {
    let mut ids: Vec<Uuid> = crate::budgets::covering_tenant(transaction, tenant)
        .await?
        .into_iter()
        .filter(&applies)
        .map(|b| b.id)
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    crate::spend::lock_for_batch(transaction, &ids).await?;
    let mut budgets: Vec<Budget> = crate::budgets::covering_tenant(transaction, tenant)
        .await?
        .into_iter()
        .filter(|b| ids.binary_search(&b.id).is_ok() && applies(b))
        .collect();
    budgets.sort_by_key(|b| b.id);
    Ok(budgets)
}

/// Each budget's current spend row for `tenant` (and `user`, for an
/// each-user budget), created if missing and locked `FOR UPDATE` in key
/// order, with the open holds read under that
/// lock after the expired ones are released. The budgets are locked by the
/// caller.
async fn lock_rooms(
    transaction: &Transaction<'_>,
    tenant: &str,
    user: Option<&str>,
    budgets: &[Budget],
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Vec<Room>, DbError> {
    if budgets.is_empty() {
        return Ok(Vec::new());
    }
    crate::spend::current(transaction, tenant, user, budgets, now, book).await?;
    let ids: Vec<Uuid> = budgets.iter().map(|b| b.id).collect();
    let starts: Vec<DateTime<Utc>> = budgets.iter().map(|b| b.period_of(now).start).collect();
    let users: Vec<String> = budgets
        .iter()
        .map(|b| b.scope.user.spend_key(user))
        .collect();
    let spend: HashMap<Uuid, Decimal> = transaction
        .query(sql::LOCK_SPEND_ROWS, &[&tenant, &ids, &starts, &users])
        .await
        .map_err(db("locking spend rows"))?
        .iter()
        .map(|row| Ok((row.try_get("budget_id")?, row.try_get("spend_usd")?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db("reading spend rows"))?;
    let mut rooms: Vec<Room> = budgets
        .iter()
        .map(|budget| Room {
            budget_id: budget.id,
            user_id: budget.scope.user.spend_key(user),
            name: budget.name.clone(),
            hard_limit: budget.hard_limit,
            amount_usd: budget.amount_usd,
            period: budget.period_of(now),
            spend_usd: spend.get(&budget.id).copied().unwrap_or(Decimal::ZERO),
            reserved_usd: Decimal::ZERO,
        })
        .collect();
    let expired = release::expire_holds(transaction, tenant, &rooms).await?;
    let held = held(transaction, tenant, &ids, &users).await?;
    for room in &mut rooms {
        room.reserved_usd = held.get(&room.budget_id).copied().unwrap_or(Decimal::ZERO);
    }
    let entries: Vec<LogEntry<'_>> = expired
        .iter()
        .filter_map(|(budget_id, reservation_id, amount)| {
            let room = rooms
                .iter()
                .find(|room| room.budget_id == *budget_id && room.hard_limit)?;
            Some(LogEntry {
                room,
                kind: "expired",
                reservation_id: *reservation_id,
                delta_reserved: -*amount,
            })
        })
        .collect();
    log(transaction, tenant, &entries).await?;
    Ok(rooms)
}

/// The open holds of `tenant` on each budget of `ids`, under the user key
/// beside it in `users`.
async fn held(
    client: &impl GenericClient,
    tenant: &str,
    ids: &[Uuid],
    users: &[String],
) -> Result<HashMap<Uuid, Decimal>, DbError> {
    client
        .query(sql::HELD, &[&tenant, &ids, &users])
        .await
        .map_err(db("reading holds"))?
        .iter()
        .map(|row| Ok((row.try_get("budget_id")?, row.try_get("held_usd")?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db("reading holds"))
}

/// What each budget of `tenant` holds in open reservations at `now` (the
/// status endpoint's `reserved_usd`), for `user` on each-user budgets.
pub async fn open_holds(
    client: &impl GenericClient,
    tenant: &str,
    user: Option<&str>,
    budgets: &[Budget],
) -> Result<HashMap<Uuid, Decimal>, DbError> {
    let ids: Vec<Uuid> = budgets.iter().map(|b| b.id).collect();
    let users: Vec<String> = budgets
        .iter()
        .map(|b| b.scope.user.spend_key(user))
        .collect();
    client
        .query(sql::OPEN_HOLDS, &[&tenant, &ids, &users])
        .await
        .map_err(db("reading holds"))?
        .iter()
        .map(|row| Ok((row.try_get("budget_id")?, row.try_get("held_usd")?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db("reading holds"))
}

/// One change to a budget's holds, for `budget_reservation_log`. The room
/// shows the budget after the change.
struct LogEntry<'a> {
    room: &'a Room,
    kind: &'static str,
    reservation_id: Uuid,
    delta_reserved: Decimal,
}

async fn log(
    transaction: &Transaction<'_>,
    tenant: &str,
    entries: &[LogEntry<'_>],
) -> Result<(), DbError> {
    if entries.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = entries.iter().map(|e| e.room.budget_id).collect();
    let starts: Vec<DateTime<Utc>> = entries.iter().map(|e| e.room.period.start).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind).collect();
    let reservations: Vec<Uuid> = entries.iter().map(|e| e.reservation_id).collect();
    let deltas: Vec<Decimal> = entries.iter().map(|e| e.delta_reserved).collect();
    let spend: Vec<Decimal> = entries.iter().map(|e| e.room.spend_usd).collect();
    let reserved: Vec<Decimal> = entries.iter().map(|e| e.room.reserved_usd).collect();
    let amounts: Vec<Decimal> = entries.iter().map(|e| e.room.amount_usd).collect();
    let users: Vec<&str> = entries.iter().map(|e| e.room.user_id.as_str()).collect();
    transaction
        .execute(
            sql::LOG,
            &[
                &tenant,
                &ids,
                &starts,
                &kinds,
                &reservations,
                &deltas,
                &spend,
                &reserved,
                &amounts,
                &users,
            ],
        )
        .await
        .map_err(db("logging reservations"))?;
    Ok(())
}

fn reservation_id(row: &Row) -> Result<Uuid, DbError> {
    row.try_get("reservation_id")
        .map_err(db("reading a reservation"))
}
