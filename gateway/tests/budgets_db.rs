//! The budget API against a real TimescaleDB (PostgreSQL + TimescaleDB through
//! the e2e harness): what an edit does to the spend the processor keeps.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use e2e::Database;
use gateway::budgets::{self, BudgetStore};
use gateway::config::DatabaseConfig;
use serde_json::{json, Value};
use support::{app, key_ring, send_json, ADMIN_KEY};
use uuid::Uuid;

/// A trigger that notes, for every `budget_spend` row a transaction
/// deletes, whether that transaction holds the row lock of the row's budget
/// at that moment: a locked row's `xmax` is the locker's transaction id.
const OBSERVE_SPEND_RESETS: &str = "
CREATE TABLE observed_spend_resets (budget_id UUID NOT NULL, budget_locked BOOLEAN NOT NULL);
CREATE FUNCTION observe_spend_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO observed_spend_resets (budget_id, budget_locked)
    SELECT OLD.budget_id,
           b.xmax::text = (pg_current_xact_id()::text::bigint % 4294967296)::text
    FROM budgets AS b WHERE b.id = OLD.budget_id;
    RETURN OLD;
END $$;
CREATE TRIGGER observe_spend_reset BEFORE DELETE ON budget_spend
    FOR EACH ROW EXECUTE FUNCTION observe_spend_reset();";

async fn migrated_database() -> Database {
    let database = Database::start().await;
    database.migrate().await;
    database
}

fn router(database: &Database) -> Router {
    let store = BudgetStore::connect_lazily(&DatabaseConfig {
        url: Some(database.url().into()),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool builds");
    gateway::router_with(app().state, budgets::routes(Arc::new(key_ring()), store))
}

fn admin_request(method: &str, path: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Body::from(body.to_string()))
        .expect("request builds")
}

/// Issue: a batch holds its budgets `FOR SHARE` while it inserts spend; an
/// edit that deletes spend before it locks the budget lets such a batch
/// insert a row computed under the old scope after the delete, and that
/// row survives the whole period. This test checks what makes the overlap
/// harmless (the overlap itself is staged by the concurrency tests): the
/// edit holds the budget's row lock (the
/// lock a batch's `FOR SHARE` waits for, and waits on) whenever it deletes
/// spend.
#[tokio::test]
async fn a_budget_edit_locks_the_budget_before_it_resets_its_spend() {
    let database = migrated_database().await;
    let client = database.client().await;
    client
        .batch_execute(OBSERVE_SPEND_RESETS)
        .await
        .expect("trigger installs");
    let router = router(&database);

    let budget = json!({"name": "acme-monthly", "tenant_id": "acme", "period": "monthly", "amount_usd": "10"});
    let (status, _, created) =
        send_json(&router, admin_request("POST", "/v1/budgets", &budget)).await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id");
    // Spend a batch recorded under the budget's scope.
    client
        .execute(
            "INSERT INTO budget_spend (budget_id, tenant_id, period_start, period_end, spend_usd)
             VALUES ($1, 'acme', date_trunc('month', now()),
                     date_trunc('month', now()) + interval '1 month', 4)",
            &[&id],
        )
        .await
        .expect("spend row");

    // A narrower scope: the stored spend no longer describes the budget.
    let mut edited = budget.clone();
    edited["provider"] = json!("openai");
    let (status, _, answer) = send_json(
        &router,
        admin_request("PUT", &format!("/v1/budgets/{id}"), &edited),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["provider"], "openai");

    let spend_rows: i64 = client
        .query_one("SELECT count(*) FROM budget_spend", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(spend_rows, 0, "the edit resets the spend");
    let observed: Vec<(Uuid, bool)> = client
        .query(
            "SELECT budget_id, budget_locked FROM observed_spend_resets",
            &[],
        )
        .await
        .expect("observations")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        observed,
        vec![(id, true)],
        "the spend row was deleted without the budget's row lock held"
    );
}

/// Every connection the gateway's pool hands out carries `statement_timeout` (the configured
/// database timeout), so a query the gateway gave up on stops in the database too instead of
/// holding a backend.
#[tokio::test]
async fn every_gateway_connection_carries_a_statement_timeout() {
    let database = migrated_database().await;
    let config = DatabaseConfig {
        url: Some(database.url().into()),
        pool_size: 2,
        timeout_ms: 1_500,
    };
    let settings = config.settings().expect("url set");
    let pool = infra::database::pool(&settings).expect("pool builds");
    let client = pool.get().await.expect("connection");
    let shown: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(shown, "1500ms");
}
