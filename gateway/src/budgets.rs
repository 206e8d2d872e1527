//! The budget API: admin-only management of budgets (`/v1/budgets`, list,
//! create, read, replace, delete) and the enforcement hook
//! `GET /v1/budgets/status?tenant_id=…`, which answers how much of each
//! budget that applies to a tenant is used in its current period and
//! whether a hard limit is exceeded, so an application can refuse a call
//! before spending.
//!
//! The budgets live in the processor's database (`sql/V3__budgets.sql`);
//! the processor reads them in every batch transaction, so a change here
//! applies to the next batch without a restart. Spend comes from
//! `budget_spend`, which the processor maintains exactly once per event;
//! for a budget with no spend row in the current period yet (new budget, no
//! traffic since) the status is computed from the audit table.
//!
//! Every query takes bound parameters; nothing from a request is formatted
//! into SQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use ledger::budget::{reached, spend_ratio, EVERY_TENANT};
use ledger::budget_row::{BudgetColumns, RESET_SPEND_IF_SCOPE_CHANGED};
use ledger::{Budget, FieldError};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::DatabaseConfig;

const COLUMNS: &str = "id, name, tenant_id, provider, model, label_key, label_value, period, \
                       timezone, amount_usd, thresholds, hard_limit";

const INSERT: &str = "
INSERT INTO budgets (id, name, tenant_id, provider, model, label_key, label_value, period,
                     timezone, amount_usd, thresholds, hard_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

const UPDATE: &str = "
UPDATE budgets SET name = $2, tenant_id = $3, provider = $4, model = $5, label_key = $6,
       label_value = $7, period = $8, timezone = $9, amount_usd = $10, thresholds = $11,
       hard_limit = $12, updated_at = now()
WHERE id = $1";

const SPEND_FOR_PERIODS: &str = "
SELECT s.budget_id, s.spend_usd
FROM budget_spend AS s
JOIN UNNEST($2::uuid[], $3::timestamptz[]) AS k(budget_id, period_start)
  ON s.budget_id = k.budget_id AND s.period_start = k.period_start
WHERE s.tenant_id = $1";

const SPEND_FROM_AUDIT: &str = "
SELECT COALESCE(sum(estimated_cost), 0)
FROM gateway_mode_audit
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
  AND ($4::text IS NULL OR provider = $4)
  AND ($5::text IS NULL OR model = $5)
  AND ($6::text IS NULL OR labels ->> $6 = $7)";

/// SQLSTATE of a unique violation (a budget name taken).
const UNIQUE_VIOLATION: &str = "23505";

#[derive(Debug, thiserror::Error)]
pub enum BudgetApiError {
    #[error("budgets are managed with an admin API key")]
    AdminOnly,
    #[error("this API key may only read the budget status of its own tenant")]
    OtherTenant,
    #[error("budgets need database.url in the gateway's configuration")]
    NoDatabase,
    #[error("invalid budget: {}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("{0:?} is not a budget id (a UUID)")]
    BadId(String),
    #[error("no budget with id {0}")]
    NotFound(Uuid),
    #[error("a budget named {0:?} already exists")]
    DuplicateName(String),
    #[error("query parameter tenant_id is required with an admin key")]
    MissingTenant,
    #[error("the database is unavailable: {0}")]
    Database(String),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<tokio_postgres::Error> for BudgetApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        BudgetApiError::Database(error.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for BudgetApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        BudgetApiError::Database(error.to_string())
    }
}

impl IntoResponse for BudgetApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code) = match &self {
            Self::AdminOnly | Self::OtherTenant => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NoDatabase => (StatusCode::SERVICE_UNAVAILABLE, "budgets_unavailable"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_budget"),
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::BadId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::MissingTenant => (StatusCode::BAD_REQUEST, "missing_tenant_id"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::DuplicateName(_) => (StatusCode::CONFLICT, "duplicate_name"),
            Self::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %message, "budget API unavailable");
        }
        let mut body = json!({ "error": code, "message": message });
        if let Self::Invalid(errors) = &self {
            body["errors"] = json!(errors);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// The database side of the budget API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BudgetStore {
    pool: Pool,
    timeout: Duration,
}

impl BudgetStore {
    /// A pool for `config.url`; connections are made lazily, so a database
    /// that is down at startup only fails budget requests, not the gateway.
    pub fn connect_lazily(config: &DatabaseConfig) -> Result<Option<Self>, String> {
        let Some(settings) = config.settings() else {
            return Ok(None);
        };
        let pool = infra::database::pool(&settings).map_err(|error| error.to_string())?;
        Ok(Some(Self {
            pool,
            timeout: config.timeout(),
        }))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, BudgetApiError> {
        Ok(self.pool.get().await?)
    }

    async fn bounded<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, BudgetApiError>>,
    ) -> Result<T, BudgetApiError> {
        tokio::time::timeout(self.timeout, future)
            .await
            .unwrap_or_else(|_| {
                Err(BudgetApiError::Database(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            })
    }
}

/// State of the budget routes: the key ring (for [`Authenticated`]) and the
/// store, absent without `database.url`.
#[derive(Debug, Clone)]
pub struct BudgetApi {
    keys: Arc<KeyRing>,
    store: Option<BudgetStore>,
}

impl FromRef<BudgetApi> for Arc<KeyRing> {
    fn from_ref(api: &BudgetApi) -> Self {
        api.keys.clone()
    }
}

impl BudgetApi {
    fn store(&self) -> Result<&BudgetStore, BudgetApiError> {
        self.store.as_ref().ok_or(BudgetApiError::NoDatabase)
    }
}

/// The budget routes, to be merged into the API router
/// ([`crate::app::router_with`]) so they share its layers.
pub fn routes(keys: Arc<KeyRing>, store: Option<BudgetStore>) -> Router<AppState> {
    Router::new()
        .route("/v1/budgets", get(list).post(create))
        .route("/v1/budgets/status", get(status))
        .route("/v1/budgets/{id}", get(read).put(replace).delete(remove))
        .with_state(BudgetApi { keys, store })
}

fn require_admin(who: &Authenticated) -> Result<(), BudgetApiError> {
    if who.admin {
        Ok(())
    } else {
        Err(BudgetApiError::AdminOnly)
    }
}

fn parse_id(text: &str) -> Result<Uuid, BudgetApiError> {
    Uuid::parse_str(text).map_err(|_| BudgetApiError::BadId(text.chars().take(80).collect()))
}

/// The budget in a request body. Read-only fields a client got from GET
/// (`id` when it names this budget) are accepted and ignored.
fn budget_from_body(id: Uuid, body: &Bytes) -> Result<Budget, BudgetApiError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|error| BudgetApiError::Malformed(error.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        if object.get("id").and_then(Value::as_str) == Some(id.to_string().as_str()) {
            object.remove("id");
        }
    }
    Budget::from_json(id, &value).map_err(BudgetApiError::Invalid)
}

async fn list(
    State(api): State<BudgetApi>,
    who: Authenticated,
) -> Result<Json<Value>, BudgetApiError> {
    require_admin(&who)?;
    let store = api.store()?;
    let budgets = store
        .bounded(async {
            let client = store.client().await?;
            let rows = client
                .query(&format!("SELECT {COLUMNS} FROM budgets ORDER BY name"), &[])
                .await?;
            Ok(rows.iter().filter_map(budget_from_row).collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(json!({
        "budgets": budgets.iter().map(Budget::to_json).collect::<Vec<_>>()
    })))
}

async fn create(
    State(api): State<BudgetApi>,
    who: Authenticated,
    body: Bytes,
) -> Result<Response, BudgetApiError> {
    require_admin(&who)?;
    let budget = budget_from_body(Uuid::now_v7(), &body)?;
    let store = api.store()?;
    store
        .bounded(async {
            let client = store.client().await?;
            let columns = BudgetColumns::of(&budget);
            client
                .execute(INSERT, &columns.params(&budget.id, &budget))
                .await
                .map_err(|error| duplicate_or(error, &budget.name))?;
            Ok(())
        })
        .await?;
    tracing::info!(id = %budget.id, name = budget.name, "budget created");
    let location = HeaderValue::from_str(&format!("/v1/budgets/{}", budget.id))
        .unwrap_or_else(|_| HeaderValue::from_static("/v1/budgets"));
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(budget.to_json()),
    )
        .into_response())
}

async fn read(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, BudgetApiError> {
    require_admin(&who)?;
    let id = parse_id(&id)?;
    let store = api.store()?;
    let budget = store
        .bounded(async {
            let client = store.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM budgets WHERE id = $1"),
                    &[&id],
                )
                .await?;
            row.as_ref()
                .and_then(budget_from_row)
                .ok_or(BudgetApiError::NotFound(id))
        })
        .await?;
    Ok(Json(budget.to_json()))
}

async fn replace(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, BudgetApiError> {
    require_admin(&who)?;
    let id = parse_id(&id)?;
    let budget = budget_from_body(id, &body)?;
    let store = api.store()?;
    store
        .bounded(async {
            let mut client = store.client().await?;
            let transaction = client.transaction().await?;
            let columns = BudgetColumns::of(&budget);
            transaction
                .execute(RESET_SPEND_IF_SCOPE_CHANGED, &columns.scope_params(&id))
                .await?;
            let updated = transaction
                .execute(UPDATE, &columns.params(&budget.id, &budget))
                .await
                .map_err(|error| duplicate_or(error, &budget.name))?;
            if updated == 0 {
                return Err(BudgetApiError::NotFound(id));
            }
            transaction.commit().await?;
            Ok(())
        })
        .await?;
    tracing::info!(%id, name = budget.name, "budget replaced");
    Ok(Json(budget.to_json()))
}

async fn remove(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, BudgetApiError> {
    require_admin(&who)?;
    let id = parse_id(&id)?;
    let store = api.store()?;
    store
        .bounded(async {
            let client = store.client().await?;
            let deleted = client
                .execute("DELETE FROM budgets WHERE id = $1", &[&id])
                .await?;
            if deleted == 0 {
                return Err(BudgetApiError::NotFound(id));
            }
            Ok(())
        })
        .await?;
    tracing::info!(%id, "budget deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    tenant_id: Option<String>,
    /// Only budgets that would count a call to this provider / model.
    provider: Option<String>,
    model: Option<String>,
}

async fn status(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Query(query): Query<StatusQuery>,
) -> Result<Json<Value>, BudgetApiError> {
    let tenant = match (&query.tenant_id, &who.tenant) {
        (Some(tenant), _) => tenant.clone(),
        (None, Some(own)) => own.clone(),
        (None, None) => return Err(BudgetApiError::MissingTenant),
    };
    if !who.may_access_tenant(&tenant) {
        return Err(BudgetApiError::OtherTenant);
    }
    let store = api.store()?;
    let now = Utc::now();
    let provider = query.provider.as_deref().map(str::to_ascii_lowercase);
    let (budgets, spend) = store
        .bounded(async {
            let client = store.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM budgets WHERE tenant_id = $1 OR tenant_id = $2 \
                         ORDER BY name"
                    ),
                    &[&tenant, &EVERY_TENANT],
                )
                .await?;
            let budgets: Vec<Budget> = rows
                .iter()
                .filter_map(budget_from_row)
                .filter(|b| {
                    provider
                        .as_ref()
                        .is_none_or(|p| b.scope.provider.as_ref().is_none_or(|bp| bp == p))
                })
                .filter(|b| {
                    query
                        .model
                        .as_ref()
                        .is_none_or(|m| b.scope.model.as_ref().is_none_or(|bm| bm == m))
                })
                .collect();
            let ids: Vec<Uuid> = budgets.iter().map(|b| b.id).collect();
            let starts: Vec<DateTime<Utc>> =
                budgets.iter().map(|b| b.period_of(now).start).collect();
            let mut spend: HashMap<Uuid, Decimal> = client
                .query(SPEND_FOR_PERIODS, &[&tenant, &ids, &starts])
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            for budget in &budgets {
                if spend.contains_key(&budget.id) {
                    continue;
                }
                // No spend row yet this period: from the audit table.
                let bounds = budget.period_of(now);
                let label = budget.scope.label.as_ref();
                let row = client
                    .query_one(
                        SPEND_FROM_AUDIT,
                        &[
                            &tenant,
                            &bounds.start,
                            &bounds.end,
                            &budget.scope.provider,
                            &budget.scope.model,
                            &label.map(|l| l.key.as_str()),
                            &label.map(|l| l.value.as_str()),
                        ],
                    )
                    .await?;
                spend.insert(budget.id, row.get(0));
            }
            Ok((budgets, spend))
        })
        .await?;

    let mut any_hard_limit_exceeded = false;
    let entries: Vec<Value> = budgets
        .iter()
        .map(|budget| {
            let bounds = budget.period_of(now);
            let spent = spend.get(&budget.id).copied().unwrap_or(Decimal::ZERO);
            let exceeded = budget.hard_limit && spent >= budget.amount_usd;
            any_hard_limit_exceeded |= exceeded;
            let mut shown = budget.to_json();
            shown["period_start"] = json!(bounds.start);
            shown["period_end"] = json!(bounds.end);
            shown["spend_usd"] = json!(spent.normalize().to_string());
            shown["remaining_usd"] = json!((budget.amount_usd - spent)
                .max(Decimal::ZERO)
                .normalize()
                .to_string());
            shown["ratio"] = json!(spend_ratio(spent, budget.amount_usd)
                .round_dp(6)
                .to_f64()
                .unwrap_or(0.0));
            shown["thresholds_reached"] =
                json!(reached(spent, budget.amount_usd, &budget.thresholds));
            shown["hard_limit_exceeded"] = json!(exceeded);
            shown
        })
        .collect();
    Ok(Json(json!({
        "tenant_id": tenant,
        "as_of": now,
        "hard_limit_exceeded": any_hard_limit_exceeded,
        "budgets": entries,
    })))
}

fn duplicate_or(error: tokio_postgres::Error, name: &str) -> BudgetApiError {
    if error.code().map(|code| code.code()) == Some(UNIQUE_VIOLATION) {
        BudgetApiError::DuplicateName(name.to_owned())
    } else {
        error.into()
    }
}

/// The budget a `budgets` row describes; `None` (with a warning) for a row
/// the API would not have written.
fn budget_from_row(row: &tokio_postgres::Row) -> Option<Budget> {
    ledger::budget_row::budget_from_row(row)
        .map_err(|problem| tracing::warn!(problem, "skipping a budgets row"))
        .ok()
}
