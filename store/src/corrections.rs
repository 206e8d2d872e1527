//! `cost_corrections`: what `processor reprice` changed in stored costs, one row per corrected
//! event, append-only (sql/V8). Here: the totals per series that the running processor exports
//! as `tokenledger_cost_corrections_usd_total`.

use rust_decimal::Decimal;
use tokio_postgres::Client;

use crate::{db, DbError};

const TOTALS: &str = "
SELECT provider, model, tenant_id,
       CASE WHEN new_cost >= old_cost THEN 'up' ELSE 'down' END AS direction,
       sum(abs(new_cost - old_cost)) AS usd
FROM cost_corrections
GROUP BY 1, 2, 3, 4";

/// Every correction of one provider, model and tenant in one direction, summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionTotal {
    pub provider: String,
    pub model: String,
    pub tenant_id: String,
    /// `up` or `down`.
    pub direction: String,
    pub usd: Decimal,
}

/// The totals of every series, read in one statement.
pub async fn totals(client: &Client) -> Result<Vec<CorrectionTotal>, DbError> {
    let step = "reading cost corrections";
    let rows = client.query(TOTALS, &[]).await.map_err(db(step))?;
    rows.iter()
        .map(|row| {
            Ok(CorrectionTotal {
                provider: row.try_get("provider").map_err(db(step))?,
                model: row.try_get("model").map_err(db(step))?,
                tenant_id: row.try_get("tenant_id").map_err(db(step))?,
                direction: row.try_get("direction").map_err(db(step))?,
                usd: row.try_get("usd").map_err(db(step))?,
            })
        })
        .collect()
}
