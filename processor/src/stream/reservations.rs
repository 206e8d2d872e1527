//! Settling budget reservations: a new usage event that carries a
//! `reservation_id` releases that reservation in the batch transaction that
//! records its cost, so the money moves from held to spent in one commit
//! and no instant counts it twice or not at all. Only rows the transaction
//! inserted settle (a redelivered event settles nothing again), and only a
//! reservation of the event's own tenant (`store::reservations::settle`).

use deadpool_postgres::Transaction;
use ledger::PriceBook;
use store::reservations::Settlement;

use crate::budget_spend::BudgetSpendError;
use crate::stream::prepare::PricedEvent;

/// Releases the reservations `new_rows` name; returns how many it
/// released.
pub async fn settle(
    transaction: &Transaction<'_>,
    new_rows: &[&PricedEvent],
    book: &PriceBook,
) -> Result<usize, BudgetSpendError> {
    let settlements: Vec<Settlement> = new_rows
        .iter()
        .filter_map(|row| {
            Some(Settlement {
                tenant_id: row.event.tenant_id.clone(),
                reservation_id: row.event.reservation_id?,
                event_id: row.event.id,
            })
        })
        .collect();
    if settlements.is_empty() {
        return Ok(0);
    }
    Ok(store::reservations::settle(transaction, &settlements, book).await?)
}
