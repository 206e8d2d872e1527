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
//! traffic since) the status computes it from the audit table once and
//! stores it, so later calls read the row. Every
//! statement is the `store` crate's; failures are [`BudgetError`]s.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use ledger::budget::forecast::Forecast;
use ledger::budget::{reached, spend_ratio, UserScope};
use ledger::{Budget, PriceBook};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::admin::{require_admin, AdminDatabase};
use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::DatabaseConfig;

mod error;
pub use error::BudgetError;

/// The database side of the budget API: the admin APIs' shared database
/// and the price book whose names of a model a budget counts. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct BudgetStore {
    database: AdminDatabase,
    /// Which names a model budget counts (`Scope::matches_model`): the
    /// processor's book, so status agrees with the spend it keeps.
    book: Arc<PriceBook>,
    /// The trailing window whose spend rate the forecasts carry forward.
    forecast_window: chrono::Duration,
}

impl BudgetStore {
    /// The budget side of `database`, counting model names with the
    /// built-in price book until [`Self::with_price_book`] says otherwise.
    pub fn new(database: AdminDatabase) -> Result<Self, String> {
        let book = PriceBook::builtin().map_err(|error| error.to_string())?;
        Ok(Self {
            database,
            book: Arc::new(book),
            forecast_window: chrono::Duration::seconds(i64::from(
                crate::config::ForecastConfig::default().window_s,
            )),
        })
    }

    /// A store on a pool of its own for `config.url` (`None` without one).
    pub fn connect_lazily(config: &DatabaseConfig) -> Result<Option<Self>, String> {
        AdminDatabase::connect_lazily(config)?
            .map(Self::new)
            .transpose()
    }

    /// The price book whose names of a model the budget scope uses (the
    /// built-in one by default).
    pub fn with_price_book(mut self, book: Arc<PriceBook>) -> Self {
        self.book = book;
        self
    }

    /// The trailing window of the burn-rate forecasts.
    pub fn with_forecast_window(mut self, window: chrono::Duration) -> Self {
        self.forecast_window = window;
        self
    }

    /// The price book the budget scopes use.
    pub(crate) fn book(&self) -> &PriceBook {
        &self.book
    }

    /// Runs `work` on the admin APIs' database within its timeout.
    pub(crate) async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, BudgetError>,
    ) -> Result<T, BudgetError> {
        self.database.with_client(work).await
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
    fn store(&self) -> Result<&BudgetStore, BudgetError> {
        self.store.as_ref().ok_or(BudgetError::Unconfigured)
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

fn parse_id(text: &str) -> Result<Uuid, BudgetError> {
    Uuid::parse_str(text).map_err(|_| BudgetError::BadId(text.chars().take(80).collect()))
}

/// The budget in a request body. Read-only fields a client got from GET
/// (`id` when it names this budget) are accepted and ignored.
fn budget_from_body(id: Uuid, body: &Bytes) -> Result<Budget, BudgetError> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|error| BudgetError::Malformed(error.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        if object.get("id").and_then(Value::as_str) == Some(id.to_string().as_str()) {
            object.remove("id");
        }
    }
    Budget::from_json(id, &value).map_err(BudgetError::Invalid)
}

/// Refuses a budget of an API key that no configured key is named: its
/// spend would stay zero and its limit never act (a typo, or a key not yet
/// given its name).
fn check_key_name(keys: &KeyRing, budget: &Budget) -> Result<(), BudgetError> {
    match &budget.scope.api_key {
        Some(name) if !keys.has_key_named(name) => {
            Err(BudgetError::Invalid(vec![ledger::FieldError {
                field: "api_key".into(),
                message: format!(
                    "no configured API key is named {name:?}: name the key in auth.keys or \
                     auth.keys_file first"
                ),
            }]))
        }
        _ => Ok(()),
    }
}

async fn list(
    State(api): State<BudgetApi>,
    who: Authenticated,
) -> Result<Json<Value>, BudgetError> {
    require_admin(&who)?;
    let store = api.store()?;
    let budgets = store
        .database
        .with_client(async |client| {
            store::budgets::list(&***client)
                .await
                .map_err(BudgetError::from)
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
) -> Result<Response, BudgetError> {
    require_admin(&who)?;
    let budget = budget_from_body(Uuid::now_v7(), &body)?;
    check_key_name(&api.keys, &budget)?;
    let store = api.store()?;
    store
        .database
        .with_client(async |client| {
            store::budgets::create(&***client, &budget)
                .await
                .map_err(BudgetError::from)
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
) -> Result<Json<Value>, BudgetError> {
    require_admin(&who)?;
    let id = parse_id(&id)?;
    let store = api.store()?;
    let budget = store
        .database
        .with_client(async |client| {
            store::budgets::get(&***client, id)
                .await
                .map_err(BudgetError::from)?
                .ok_or(BudgetError::NotFound(id))
        })
        .await?;
    Ok(Json(budget.to_json()))
}

async fn replace(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, BudgetError> {
    require_admin(&who)?;
    let id = parse_id(&id)?;
    let budget = budget_from_body(id, &body)?;
    check_key_name(&api.keys, &budget)?;
    let store = api.store()?;
    store
        .database
        .with_client(async |client| {
            store::budgets::replace(client, &budget)
                .await
                .map_err(BudgetError::from)
        })
        .await?;
    tracing::info!(%id, name = budget.name, "budget replaced");
    Ok(Json(budget.to_json()))
}

async fn remove(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, BudgetError> {
    require_admin(&who)?;
    let id = parse_id(&id)?;
    let store = api.store()?;
    store
        .database
        .with_client(async |client| {
            store::budgets::delete(&***client, id)
                .await
                .map_err(BudgetError::from)
        })
        .await?;
    tracing::info!(%id, "budget deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    tenant_id: Option<String>,
    /// Only budgets that would count this user's calls (the tenant's, this
    /// user's own, and each-user budgets for this user); without it, every
    /// budget of the tenant, each-user ones once per user with spend.
    user_id: Option<String>,
    /// Only budgets that would count this API key's calls (by the key's
    /// name: the tenant's and this key's own, not other keys').
    api_key: Option<String>,
    /// Only budgets that would count a call to this provider / model.
    provider: Option<String>,
    model: Option<String>,
}

/// The most users of an each-user budget one status answer lists (those
/// with spend this period, by name); ask with `user_id` for any one.
const MAX_USERS_SHOWN: usize = 1000;

type Evaluated = (
    Vec<Budget>,
    HashMap<Uuid, Decimal>,
    HashMap<Uuid, Decimal>,
    HashMap<Uuid, Forecast>,
);

/// The spend, open holds and forecast of `budgets` for `tenant` (and
/// `user` on each-user budgets).
async fn evaluate(
    transaction: &deadpool_postgres::Transaction<'_>,
    store: &BudgetStore,
    tenant: &str,
    user: Option<&str>,
    budgets: Vec<Budget>,
    now: chrono::DateTime<Utc>,
) -> Result<Evaluated, BudgetError> {
    let spend =
        store::spend::current(transaction, tenant, user, &budgets, now, &store.book).await?;
    let held = store::reservations::open_holds(&**transaction, tenant, user, &budgets).await?;
    let forecasts = store::forecasts::for_tenant(
        &**transaction,
        tenant,
        user,
        &budgets,
        &spend,
        now,
        store.forecast_window,
        &store.book,
    )
    .await?;
    Ok((budgets, spend, held, forecasts))
}

async fn status(
    State(api): State<BudgetApi>,
    who: Authenticated,
    Query(query): Query<StatusQuery>,
) -> Result<Json<Value>, BudgetError> {
    let tenant = match (&query.tenant_id, &who.tenant) {
        (Some(tenant), _) => tenant.clone(),
        (None, Some(own)) => own.clone(),
        (None, None) => return Err(BudgetError::MissingTenantId),
    };
    if !who.may_access_tenant(&tenant) {
        return Err(BudgetError::OtherTenant);
    }
    let store = api.store()?;
    let now = Utc::now();
    let provider = query.provider.as_deref().map(str::to_ascii_lowercase);
    let user = query.user_id.as_deref();
    let evaluated = store
        .database
        .with_client(async |client| {
            let budgets: Vec<Budget> = store::budgets::covering_tenant(&***client, &tenant)
                .await
                .map_err(BudgetError::from)?
                .into_iter()
                .filter(|b| match (&b.scope.user, user) {
                    (UserScope::One(own), Some(asked)) => own == asked,
                    _ => true,
                })
                .filter(|b| {
                    query
                        .api_key
                        .as_ref()
                        .is_none_or(|k| b.scope.api_key.as_ref().is_none_or(|bk| bk == k))
                })
                .filter(|b| {
                    provider
                        .as_ref()
                        .is_none_or(|p| b.scope.provider.as_ref().is_none_or(|bp| bp == p))
                })
                .filter(|b| {
                    // The same rule as the spend: a budget on `gpt-4o`
                    // counts a call to `gpt-4o-2024-08-06`.
                    query.model.as_ref().is_none_or(|model| {
                        let provider = provider.as_deref().or(b.scope.provider.as_deref());
                        b.scope
                            .matches_model(provider.unwrap_or_default(), model, &store.book)
                    })
                })
                .collect();
            // A transaction: a missing spend row is computed once and stored.
            let transaction = client.transaction().await.map_err(BudgetError::from)?;
            // Without a user, an each-user budget is shown once per user
            // with spend this period; with one, for that user.
            let (each, shared): (Vec<Budget>, Vec<Budget>) = budgets
                .into_iter()
                .partition(|b| user.is_none() && b.scope.user.is_each());
            let mut subjects: Vec<(Option<String>, Vec<Budget>)> =
                vec![(user.map(str::to_owned), shared)];
            let each_refs: Vec<&Budget> = each.iter().collect();
            let mut users: Vec<String> =
                store::spend::users_with_spend(&*transaction, &tenant, &each_refs, now)
                    .await
                    .map_err(BudgetError::from)?
                    .into_iter()
                    .map(|(_, user, _)| user)
                    .collect();
            users.sort();
            users.dedup();
            users.truncate(MAX_USERS_SHOWN);
            for shown_user in users {
                subjects.push((Some(shown_user), each.clone()));
            }
            let mut evaluated = Vec::new();
            for (subject, budgets) in subjects {
                let one = evaluate(
                    &transaction,
                    store,
                    &tenant,
                    subject.as_deref(),
                    budgets,
                    now,
                )
                .await?;
                evaluated.push((subject, one));
            }
            transaction.commit().await.map_err(BudgetError::from)?;
            Ok::<_, BudgetError>(evaluated)
        })
        .await?;

    let mut any_hard_limit_exceeded = false;
    let mut entries: Vec<Value> = Vec::new();
    for (subject, (budgets, spend, held, forecasts)) in &evaluated {
        for budget in budgets {
            let bounds = budget.period_of(now);
            let spent = spend.get(&budget.id).copied().unwrap_or(Decimal::ZERO);
            let exceeded = budget.hard_limit && spent >= budget.amount_usd;
            any_hard_limit_exceeded |= exceeded;
            let mut shown = budget.to_json();
            if budget.scope.user.is_each() {
                // Whose spend this entry is ("" for usage naming no user).
                shown["spend_user_id"] = json!(subject.as_deref().unwrap_or_default());
            }
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
            // Open reservations (`POST /v1/budgets/reservations`) and what
            // a new one could still get.
            let reserved = held.get(&budget.id).copied().unwrap_or(Decimal::ZERO);
            shown["reserved_usd"] = json!(reserved.normalize().to_string());
            shown["available_usd"] = json!((budget.amount_usd - spent - reserved)
                .max(Decimal::ZERO)
                .normalize()
                .to_string());
            if let Some(forecast) = forecasts.get(&budget.id) {
                shown["forecast_usd"] = json!(forecast.forecast_usd.normalize().to_string());
                shown["projected_exhaustion_at"] = json!(forecast.projected_exhaustion_at);
            }
            entries.push(shown);
        }
    }
    Ok(Json(json!({
        "tenant_id": tenant,
        "as_of": now,
        "hard_limit_exceeded": any_hard_limit_exceeded,
        "budgets": entries,
    })))
}
