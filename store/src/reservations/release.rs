//! Releasing a reservation's holds: cancelled by its caller, settled by the
//! usage event that names it (in the batch transaction that records the
//! event's cost), or expired. Every release takes the same locks as a grant
//! (the budgets `FOR SHARE`, their current spend rows `FOR UPDATE`, in key
//! order) before it deletes holds, so the log shows it in its place among
//! the grants and spend of each budget.

use chrono::{DateTime, Utc};
use ledger::PriceBook;
use rust_decimal::Decimal;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{lock_rooms, locked_budgets, log, sql, LogEntry, Room};
use crate::{db, DbError};

/// Why a caller releases a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// A usage event carrying its id recorded the call's real cost.
    Settled,
    /// `DELETE /v1/budgets/reservations/{id}`.
    Cancelled,
}

impl ReleaseReason {
    fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Settled => "settled",
            ReleaseReason::Cancelled => "cancelled",
        }
    }
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Closed now, for this reason (`expired` when its time had passed).
    Now(String),
    /// It was closed before, for this reason.
    AlreadyClosed(String),
    /// No such reservation (for that tenant).
    NotFound,
}

/// A usage event that names a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub tenant_id: String,
    pub reservation_id: Uuid,
    pub event_id: Uuid,
}

/// Releases the expired holds of `tenant` on the budgets of `rooms`, whose
/// spend rows the caller holds; returns them as (budget, reservation,
/// amount).
pub(super) async fn expire_holds(
    transaction: &Transaction<'_>,
    tenant: &str,
    rooms: &[Room],
) -> Result<Vec<(Uuid, Uuid, Decimal)>, DbError> {
    let ids: Vec<Uuid> = rooms.iter().map(|room| room.budget_id).collect();
    let users: Vec<&str> = rooms.iter().map(|room| room.user_id.as_str()).collect();
    transaction
        .query(sql::EXPIRE_HOLDS, &[&tenant, &ids, &users])
        .await
        .map_err(db("expiring holds"))?
        .iter()
        .map(|row| {
            let get = db("reading expired holds");
            Ok((
                row.try_get("budget_id").map_err(&get)?,
                super::reservation_id(row)?,
                row.try_get("amount_usd").map_err(&get)?,
            ))
        })
        .collect()
}

/// Releases reservation `id` (of `tenant` when given; any tenant's for an
/// admin) in `transaction`, which the caller commits.
pub async fn release(
    transaction: &Transaction<'_>,
    id: Uuid,
    tenant: Option<&str>,
    reason: ReleaseReason,
    settled_by: Option<Uuid>,
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Released, DbError> {
    let get = db("reading a reservation");
    let Some(found) = transaction
        .query_opt(sql::FIND, &[&id, &tenant])
        .await
        .map_err(&get)?
    else {
        return Ok(Released::NotFound);
    };
    if let Some(closed) = found
        .try_get::<_, Option<String>>("release_reason")
        .map_err(&get)?
    {
        return Ok(Released::AlreadyClosed(closed));
    }
    let owner: String = found.try_get("tenant_id").map_err(&get)?;
    let user: Option<String> = found.try_get("user_id").map_err(&get)?;
    let held_on: Vec<Uuid> = transaction
        .query(sql::HOLD_BUDGETS, &[&id])
        .await
        .map_err(&get)?
        .iter()
        .map(|row| row.try_get("budget_id"))
        .collect::<Result<_, _>>()
        .map_err(&get)?;
    let budgets = locked_budgets(transaction, &owner, |b| held_on.contains(&b.id)).await?;
    let mut rooms = lock_rooms(transaction, &owner, user.as_deref(), &budgets, now, book).await?;

    let Some(closed) = transaction
        .query_opt(sql::CLOSE, &[&id, &reason.as_str(), &settled_by])
        .await
        .map_err(db("closing a reservation"))?
    else {
        // Expired by the sweep under the lock just taken.
        return Ok(Released::AlreadyClosed("expired".to_owned()));
    };
    let closed_as: String = closed.try_get("release_reason").map_err(&get)?;
    let kind: &'static str = match closed_as.as_str() {
        "settled" => "settled",
        "cancelled" => "cancelled",
        _ => "expired",
    };
    let gone = transaction
        .query(sql::DELETE_HOLDS, &[&id])
        .await
        .map_err(db("deleting holds"))?;
    let mut released: Vec<(Uuid, Decimal)> = Vec::with_capacity(gone.len());
    for row in &gone {
        released.push((
            row.try_get("budget_id").map_err(&get)?,
            row.try_get("amount_usd").map_err(&get)?,
        ));
    }
    for room in &mut rooms {
        if let Some((_, amount)) = released.iter().find(|(b, _)| *b == room.budget_id) {
            room.reserved_usd -= *amount;
        }
    }
    let entries: Vec<LogEntry<'_>> = rooms
        .iter()
        .filter(|room| room.hard_limit)
        .filter_map(|room| {
            let (_, amount) = released.iter().find(|(b, _)| *b == room.budget_id)?;
            Some(LogEntry {
                room,
                kind,
                reservation_id: id,
                delta_reserved: -*amount,
            })
        })
        .collect();
    log(transaction, &owner, &entries).await?;
    Ok(Released::Now(closed_as))
}

/// Settles the reservations that new usage events name, in the batch
/// transaction that records their cost. A reservation is only ever settled
/// by an event of its own tenant: an id another tenant reuses releases
/// nothing. Returns how many were released now.
pub async fn settle(
    transaction: &Transaction<'_>,
    settlements: &[Settlement],
    book: &PriceBook,
) -> Result<usize, DbError> {
    let mut ordered: Vec<&Settlement> = settlements.iter().collect();
    ordered.sort_by_key(|s| s.reservation_id);
    ordered.dedup_by_key(|s| s.reservation_id);
    let now = Utc::now();
    let mut released = 0;
    for settlement in ordered {
        let outcome = release(
            transaction,
            settlement.reservation_id,
            Some(&settlement.tenant_id),
            ReleaseReason::Settled,
            Some(settlement.event_id),
            now,
            book,
        )
        .await?;
        match outcome {
            Released::Now(_) => released += 1,
            Released::AlreadyClosed(reason) => tracing::debug!(
                reservation = %settlement.reservation_id,
                reason,
                "usage for a reservation already closed; its cost counts as spend"
            ),
            Released::NotFound => tracing::warn!(
                reservation = %settlement.reservation_id,
                tenant = settlement.tenant_id,
                "a usage event names a reservation its tenant does not have; nothing released"
            ),
        }
    }
    Ok(released)
}
