//! The budget API against a real TimescaleDB (PostgreSQL + TimescaleDB through
//! the e2e harness): what an edit does to the spend the processor keeps.

use std::sync::Arc;

use crate::support::{app, key_ring, send_json, ACME_KEY, ADMIN_KEY};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use e2e::Database;
use gateway::budgets::{self, BudgetStore};
use gateway::config::DatabaseConfig;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use store::SpendKey;
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
    let settings = gateway::admin::pool_settings(&config).expect("url set");
    let pool = infra::database::pool(&settings).expect("pool builds");
    let client = pool.get().await.expect("connection");
    let shown: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(shown, "1500ms");
}

fn acme_status() -> Request<Body> {
    Request::builder()
        .uri("/v1/budgets/status")
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .body(Body::empty())
        .expect("request builds")
}

const INSERT_AUDIT: &str = "
INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
     completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
     received_at, payload_sha256, source_partition, source_offset)
VALUES ($1, 'acme', $2, 'm', 1, 1, 2, $3, now(), 'provided', now(), '\\x00', 0, 0)";

/// Issue: a narrowed budget the tenant never matches had no spend row, so
/// every status call summed the tenant's whole period of the raw table. The
/// first call now stores what it computed (a zero is state too) and later
/// calls read that row; a batch that lands in between, its audit rows not
/// yet committed while the status call computes, still adds its delta once.
#[tokio::test]
async fn status_stores_the_spend_it_computes_so_later_calls_do_not_scan_the_audit_table() {
    let database = migrated_database().await;
    let mut client = database.client().await;
    let router = router(&database);
    let budget = json!({"name": "acme-anthropic", "tenant_id": "acme", "provider": "anthropic",
                        "period": "monthly", "amount_usd": "10"});
    let (status, _, created) =
        send_json(&router, admin_request("POST", "/v1/budgets", &budget)).await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id");
    // Usage the budget does not count.
    client
        .execute(
            INSERT_AUDIT,
            &[&Uuid::now_v7(), &"openai", &Decimal::from(5)],
        )
        .await
        .expect("audit row");

    // A batch that counts toward the budget, its audit row written but not
    // committed while the status call computes the missing spend.
    let batch = client.transaction().await.expect("begin");
    batch
        .execute(
            INSERT_AUDIT,
            &[&Uuid::now_v7(), &"anthropic", &Decimal::from(3)],
        )
        .await
        .expect("batch audit row");

    let (status, _, first) = send_json(&router, acme_status()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["budgets"][0]["spend_usd"], "0", "{first}");

    // The batch's spend step: the budget `FOR SHARE`, then add to the rows
    // that exist (the status call's row must be one of them).
    let locked = store::spend::lock_for_batch(&batch, &[id])
        .await
        .expect("lock");
    assert!(locked.contains_key(&id));
    let key = SpendKey {
        budget_id: id,
        tenant_id: "acme".into(),
        user_id: String::new(),
        period_start: batch
            .query_one(
                "SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                &[],
            )
            .await
            .expect("period")
            .get(0),
    };
    let added = store::spend::add(&batch, &[(&key, Decimal::from(3))])
        .await
        .expect("add");
    assert_eq!(
        added.get(&key),
        Some(&Decimal::from(3)),
        "the first status call stored no spend row for the batch to add to"
    );
    batch.commit().await.expect("commit");

    // Later calls read the row: a value only the row holds is what they show.
    let (status, _, second) = send_json(&router, acme_status()).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["budgets"][0]["spend_usd"], "3", "{second}");
    client
        .execute(
            "UPDATE budget_spend SET spend_usd = 7 WHERE budget_id = $1",
            &[&id],
        )
        .await
        .expect("mark the row");
    let (_, _, third) = send_json(&router, acme_status()).await;
    assert_eq!(
        third["budgets"][0]["spend_usd"], "7",
        "status summed the audit table again: {third}"
    );
}

/// The other order of the same race: the batch created the spend row first
/// (not yet committed) while a status call computes the row from audit rows
/// that lack the batch's. The status call's insert waits for the batch and
/// then answers the batch's row, not its own smaller sum.
#[tokio::test]
async fn status_racing_a_batch_that_created_the_row_answers_the_batchs_row() {
    let database = migrated_database().await;
    let mut client = database.client().await;
    let observer = database.client().await;
    let router = router(&database);
    let budget = json!({"name": "acme-anthropic", "tenant_id": "acme", "provider": "anthropic",
                        "period": "monthly", "amount_usd": "10"});
    let (status, _, created) =
        send_json(&router, admin_request("POST", "/v1/budgets", &budget)).await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id");
    client
        .execute(
            INSERT_AUDIT,
            &[&Uuid::now_v7(), &"anthropic", &Decimal::from(2)],
        )
        .await
        .expect("audit row");

    let batch = client.transaction().await.expect("begin");
    batch
        .execute(
            INSERT_AUDIT,
            &[&Uuid::now_v7(), &"anthropic", &Decimal::from(3)],
        )
        .await
        .expect("batch audit row");
    store::spend::lock_for_batch(&batch, &[id])
        .await
        .expect("lock");
    let start: chrono::DateTime<chrono::Utc> = batch
        .query_one(
            "SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
            &[],
        )
        .await
        .expect("period")
        .get(0);
    let end: chrono::DateTime<chrono::Utc> = batch
        .query_one("SELECT $1::timestamptz + interval '1 month'", &[&start])
        .await
        .expect("period end")
        .get(0);
    let key = SpendKey {
        budget_id: id,
        tenant_id: "acme".into(),
        user_id: String::new(),
        period_start: start,
    };
    let inserted = store::spend::insert(
        &batch,
        &[store::spend::NewSpend {
            key: &key,
            period_end: end,
            spend_usd: Decimal::from(5),
        }],
    )
    .await
    .expect("insert");
    assert_eq!(inserted.get(&key), Some(&Decimal::from(5)));

    let call = tokio::spawn({
        let router = router.clone();
        async move { send_json(&router, acme_status()).await }
    });
    // Wait (with a deadline) until the status call's insert waits on the
    // batch's row.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO budget_spend%'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status call never waited on the batch's spend row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    batch.commit().await.expect("commit");
    let (status, _, answer) = call.await.expect("status call");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["budgets"][0]["spend_usd"], "5", "{answer}");
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM budget_spend WHERE budget_id = $1",
            &[&id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1);
}
