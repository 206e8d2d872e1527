//! Budget reservations on the HTTP API: `POST /v1/budgets/reservations`
//! holds a call's maximum cost against every budget that may count it, and
//! refuses with 409 `budget_exhausted` when a hard-limited budget has no
//! room; `DELETE /v1/budgets/reservations/{id}` releases one early. A usage
//! event carrying `reservation_id` settles it in the processor.
//!
//! The gateway keeps no reservation state: every decision is one
//! transaction on the shared database (`store::reservations`), so any
//! number of gateways behind one database grant exactly what one would.

mod request;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use store::reservations::{ReleaseReason, Released, ReservationRequest, Reserved};
use uuid::Uuid;

pub use crate::config::{ForecastConfig, ReservationsConfig};
pub use request::Planned;

use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::budgets::BudgetError;
use crate::budgets::BudgetStore;

/// SQLSTATE of a deadlock the database broke by aborting this transaction:
/// the request is tried again, it changed nothing.
const DEADLOCK_DETECTED: &str = "40P01";
const ATTEMPTS: usize = 3;

/// State of the reservation routes.
#[derive(Debug, Clone)]
pub struct ReservationApi {
    keys: Arc<KeyRing>,
    store: Option<BudgetStore>,
    config: ReservationsConfig,
}

impl FromRef<ReservationApi> for Arc<KeyRing> {
    fn from_ref(api: &ReservationApi) -> Self {
        api.keys.clone()
    }
}

/// The reservation routes, to be merged into the API router beside the
/// budget routes (the same store).
pub fn routes(
    keys: Arc<KeyRing>,
    store: Option<BudgetStore>,
    config: ReservationsConfig,
) -> Router<AppState> {
    Router::new()
        .route("/v1/budgets/reservations", post(reserve))
        .route("/v1/budgets/reservations/{id}", delete(cancel))
        .with_state(ReservationApi {
            keys,
            store,
            config,
        })
}

/// A refusal of a reservation request.
#[derive(Debug)]
enum Refusal {
    Budget(BudgetError),
    Invalid(String),
    Exhausted(Box<store::reservations::Room>),
    KeyReused(Uuid),
    Contended,
    NotFound(Uuid),
    Closed(Uuid, String),
}

impl From<BudgetError> for Refusal {
    fn from(error: BudgetError) -> Self {
        Refusal::Budget(error)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Refusal::Budget(error) => return error.into_response(),
            Refusal::Invalid(message) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_reservation", "message": message}),
            ),
            Refusal::Exhausted(room) => (
                StatusCode::CONFLICT,
                json!({
                    "error": "budget_exhausted",
                    "message": format!(
                        "budget {:?} has {} USD left of {} USD this period",
                        room.name,
                        room.remaining_usd().normalize(),
                        room.amount_usd.normalize()
                    ),
                    "budget": room.to_json(),
                }),
            ),
            Refusal::KeyReused(id) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": "idempotency_key_reused",
                    "message": format!("the idempotency key was used for reservation {id} with a different request; use a new key for a new request"),
                    "reservation_id": id,
                }),
            ),
            Refusal::Contended => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "message": "a request with the same idempotency key is in flight; retry"}),
            ),
            Refusal::NotFound(id) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": format!("no reservation {id}")}),
            ),
            Refusal::Closed(id, reason) => (
                StatusCode::CONFLICT,
                json!({
                    "error": "reservation_closed",
                    "message": format!("reservation {id} is already {reason}"),
                    "release_reason": reason,
                }),
            ),
        };
        (status, Json(body)).into_response()
    }
}

fn store_of(api: &ReservationApi) -> Result<&BudgetStore, Refusal> {
    api.store
        .as_ref()
        .ok_or(Refusal::Budget(BudgetError::Unconfigured))
}

fn is_deadlock(error: &store::DbError) -> bool {
    error.source.code().map(|code| code.code()) == Some(DEADLOCK_DETECTED)
}

fn database(error: store::DbError) -> Refusal {
    Refusal::Budget(BudgetError::Database(error.source.to_string()))
}

async fn reserve(
    State(api): State<ReservationApi>,
    who: Authenticated,
    body: Bytes,
) -> Result<Response, Refusal> {
    let planned = Planned::parse(&body, &api.config).map_err(Refusal::Invalid)?;
    let tenant = match (&planned.tenant_id, &who.tenant) {
        (Some(tenant), _) => tenant.clone(),
        (None, Some(own)) => own.clone(),
        (None, None) => return Err(BudgetError::MissingTenantId.into()),
    };
    if !who.may_access_tenant(&tenant) {
        return Err(BudgetError::OtherTenant.into());
    }
    let request = ReservationRequest {
        id: Uuid::now_v7(),
        request_sha256: planned.fingerprint(&tenant),
        tenant_id: tenant,
        user_id: planned.user_id,
        api_key: who.key_name.clone(),
        provider: planned.provider,
        model: planned.model,
        labels: planned.labels,
        amount_usd: planned.amount_usd,
        ttl_seconds: planned.ttl_s,
        idempotency_key: planned.idempotency_key,
    };
    let store = store_of(&api)?;
    let outcome = store
        .with_client(async |client| {
            let mut attempt = 1;
            loop {
                match store::reservations::reserve(client, &request, Utc::now(), store.book()).await
                {
                    Err(error) if is_deadlock(&error) && attempt < ATTEMPTS => attempt += 1,
                    other => return Ok(other),
                }
            }
        })
        .await?
        .map_err(database)?;
    match outcome {
        Reserved::Granted { answer } => Ok((StatusCode::CREATED, Json(answer)).into_response()),
        Reserved::Replayed { answer } => {
            let mut response = (StatusCode::CREATED, Json(answer)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Reserved::Exhausted { budget } => Err(Refusal::Exhausted(Box::new(budget))),
        Reserved::KeyReused { reservation_id } => Err(Refusal::KeyReused(reservation_id)),
        Reserved::Contended => Err(Refusal::Contended),
    }
}

async fn cancel(
    State(api): State<ReservationApi>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let id = Uuid::parse_str(&id).map_err(|_| BudgetError::BadId(id.chars().take(80).collect()))?;
    // A tenant key sees only its own reservations; another tenant's id is
    // not found, so ids reveal nothing.
    let tenant = if who.admin { None } else { who.tenant.clone() };
    if !who.admin && tenant.is_none() {
        return Err(BudgetError::OtherTenant.into());
    }
    let store = store_of(&api)?;
    let outcome = store
        .with_client(async |client| {
            let mut attempt = 1;
            loop {
                let result = async {
                    let transaction = client.transaction().await.map_err(|e| store::DbError {
                        step: "beginning",
                        source: e,
                    })?;
                    let released = store::reservations::release(
                        &transaction,
                        id,
                        tenant.as_deref(),
                        ReleaseReason::Cancelled,
                        None,
                        Utc::now(),
                        store.book(),
                    )
                    .await?;
                    transaction.commit().await.map_err(|e| store::DbError {
                        step: "committing",
                        source: e,
                    })?;
                    Ok::<_, store::DbError>(released)
                }
                .await;
                match result {
                    Err(error) if is_deadlock(&error) && attempt < ATTEMPTS => attempt += 1,
                    other => return Ok(other),
                }
            }
        })
        .await?
        .map_err(database)?;
    match outcome {
        Released::Now(_) => Ok(StatusCode::NO_CONTENT),
        Released::AlreadyClosed(reason) if reason == "cancelled" => Ok(StatusCode::NO_CONTENT),
        Released::AlreadyClosed(reason) => Err(Refusal::Closed(id, reason)),
        Released::NotFound => Err(Refusal::NotFound(id)),
    }
}
