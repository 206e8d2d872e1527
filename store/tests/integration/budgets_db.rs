//! Budget definitions and spend against a real TimescaleDB (PostgreSQL +
//! TimescaleDB through the e2e harness): the edits both binaries use, their
//! lock order, and the current spend the status endpoint shows.

use chrono::{DateTime, TimeZone, Utc};
use e2e::Database;
use ledger::Budget;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use store::EditError;
use tokio_postgres::Client;
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

fn budget(value: Value) -> Budget {
    Budget::from_json(Uuid::now_v7(), &value).unwrap_or_else(|e| panic!("{value}: {e:?}"))
}

fn at(y: i32, mo: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, 0, 0, 0)
        .single()
        .expect("valid time")
}

async fn add_spend(client: &Client, budget: &Budget, tenant: &str, start: DateTime<Utc>, usd: i64) {
    client
        .execute(
            "INSERT INTO budget_spend (budget_id, tenant_id, period_start, period_end, spend_usd)
             VALUES ($1, $2, $3, $3::timestamptz + interval '1 month', $4)",
            &[&budget.id, &tenant, &start, &Decimal::from(usd)],
        )
        .await
        .expect("spend row");
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect("count").get(0)
}

#[tokio::test]
async fn edits_round_trip_and_name_missing_and_duplicate_budgets() {
    let database = migrated_database().await;
    let mut client = database.client().await;
    let acme = budget(
        json!({"name": "acme", "tenant_id": "acme", "period": "monthly",
        "amount_usd": "10.5", "thresholds": [80, 100], "label": {"key": "team", "value": "a"}}),
    );
    let every = budget(json!({"name": "every", "tenant_id": "*", "period": "daily",
        "timezone": "Asia/Kolkata", "amount_usd": "1", "provider": "openai", "hard_limit": true}));
    let globex = budget(
        json!({"name": "globex", "tenant_id": "globex", "period": "daily",
        "amount_usd": "2"}),
    );
    for b in [&globex, &every, &acme] {
        store::budgets::create(&client, b).await.expect("create");
    }
    // A row the API would not have written is skipped, not an error.
    client
        .execute(
            "INSERT INTO budgets (id, name, tenant_id, period, timezone, amount_usd)
             VALUES ($1, 'typed-by-hand', 'acme', 'monthly', 'Mars/Olympus', 1)",
            &[&Uuid::now_v7()],
        )
        .await
        .expect("hand-typed row");

    let listed = store::budgets::list(&client).await.expect("list");
    assert_eq!(listed, vec![acme.clone(), every.clone(), globex.clone()]);
    let for_acme = store::budgets::covering_tenant(&client, "acme")
        .await
        .expect("covering");
    assert_eq!(for_acme, vec![acme.clone(), every.clone()]);
    assert_eq!(
        store::budgets::get(&client, acme.id).await.expect("get"),
        Some(acme.clone())
    );

    let mut taken =
        budget(json!({"name": "acme", "tenant_id": "x", "period": "daily", "amount_usd": "1"}));
    assert!(matches!(
        store::budgets::create(&client, &taken).await,
        Err(EditError::DuplicateName(name)) if name == "acme"
    ));
    assert!(matches!(
        store::budgets::replace(&mut client, &taken).await,
        Err(EditError::NotFound(id)) if id == taken.id
    ));
    taken.id = globex.id;
    assert!(matches!(
        store::budgets::replace(&mut client, &taken).await,
        Err(EditError::DuplicateName(name)) if name == "acme"
    ));
    assert_eq!(
        store::budgets::get(&client, globex.id).await.expect("get"),
        Some(globex.clone()),
        "a refused edit changes nothing"
    );

    store::budgets::delete(&client, globex.id)
        .await
        .expect("delete");
    assert_eq!(
        store::budgets::get(&client, globex.id).await.expect("get"),
        None
    );
    assert!(matches!(
        store::budgets::delete(&client, globex.id).await,
        Err(EditError::NotFound(_))
    ));
}

/// Both edits (the API's replace and `processor budgets apply`) hold the
/// budget's row lock whenever they delete its spend: the order a batch
/// takes its locks in, so an edit and a batch wait for each other instead
/// of interleaving. This test checks the lock is held; the overlap itself
/// is staged by the concurrency tests.
#[tokio::test]
async fn both_edits_lock_the_budget_before_they_reset_its_spend() {
    let database = migrated_database().await;
    let mut client = database.client().await;
    client
        .batch_execute(OBSERVE_SPEND_RESETS)
        .await
        .expect("trigger installs");
    let mut by_api = budget(
        json!({"name": "by-api", "tenant_id": "acme", "period": "monthly", "amount_usd": "10"}),
    );
    let mut by_file = budget(
        json!({"name": "by-file", "tenant_id": "*", "period": "monthly", "amount_usd": "10"}),
    );
    store::budgets::create(&client, &by_api)
        .await
        .expect("create");
    let report = store::budgets::apply(&mut client, std::slice::from_ref(&by_file), false)
        .await
        .expect("apply");
    assert_eq!(report.created, vec!["by-file"]);
    for (b, tenant) in [(&by_api, "acme"), (&by_file, "acme"), (&by_file, "globex")] {
        add_spend(&client, b, tenant, at(2026, 1, 1), 4).await;
    }

    // Same scope, new amount: the spend stays.
    by_api.amount_usd = Decimal::from(20);
    store::budgets::replace(&mut client, &by_api)
        .await
        .expect("replace");
    let unchanged = store::budgets::apply(&mut client, std::slice::from_ref(&by_file), false)
        .await
        .expect("apply");
    assert_eq!(unchanged.unchanged, vec!["by-file"]);
    assert_eq!(count(&client, "SELECT count(*) FROM budget_spend").await, 3);

    // New scopes: the spend goes, under the lock.
    by_api.scope.model = Some("gpt-4o".into());
    store::budgets::replace(&mut client, &by_api)
        .await
        .expect("replace");
    by_file.timezone = chrono_tz::Tz::Europe__Berlin;
    let report = store::budgets::apply(&mut client, &[by_file.clone()], false)
        .await
        .expect("apply");
    assert_eq!(report.updated, vec!["by-file"]);
    assert_eq!(count(&client, "SELECT count(*) FROM budget_spend").await, 0);

    let observed: Vec<(Uuid, bool)> = client
        .query(
            "SELECT budget_id, budget_locked FROM observed_spend_resets ORDER BY budget_id",
            &[],
        )
        .await
        .expect("observations")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let stored_file_id: Uuid = client
        .query_one("SELECT id FROM budgets WHERE name = 'by-file'", &[])
        .await
        .expect("id")
        .get(0);
    let mut expected = vec![
        (by_api.id, true),
        (stored_file_id, true),
        (stored_file_id, true),
    ];
    expected.sort();
    assert_eq!(observed, expected);
}

#[tokio::test]
async fn current_spend_is_the_stored_row_or_else_the_audit_table() {
    let database = migrated_database().await;
    let mut client = database.client().await;
    let stored = budget(
        json!({"name": "stored", "tenant_id": "acme", "period": "monthly", "amount_usd": "10"}),
    );
    let fresh = budget(
        json!({"name": "fresh", "tenant_id": "*", "period": "monthly",
        "amount_usd": "10", "model": "gpt-4o"}),
    );
    for b in [&stored, &fresh] {
        store::budgets::create(&client, b).await.expect("create");
    }
    let now = Utc
        .with_ymd_and_hms(2026, 2, 10, 12, 0, 0)
        .single()
        .expect("valid");
    add_spend(&client, &stored, "acme", at(2026, 2, 1), 7).await;
    add_spend(&client, &stored, "acme", at(2026, 1, 1), 100).await; // last month
    for (model, tenant, created, cost) in [
        ("gpt-4o", "acme", at(2026, 2, 3), 2),
        ("gpt-4o", "acme", at(2026, 1, 31), 50), // last month
        ("gpt-4o", "globex", at(2026, 2, 3), 50), // another tenant
        ("claude-sonnet-4", "acme", at(2026, 2, 3), 50), // another model
    ] {
        client
            .execute(
                "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
                     completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
                     received_at, payload_sha256, source_partition, source_offset)
                 VALUES ($1, $2, 'openai', $3, 1, 1, 2, $4, $5, 'provided', $5, '\\x00', 0, 0)",
                &[
                    &Uuid::now_v7(),
                    &tenant,
                    &model,
                    &Decimal::from(cost),
                    &created,
                ],
            )
            .await
            .expect("audit row");
    }
    let book = ledger::PriceBook::builtin().expect("the built-in book parses");
    let transaction = client.transaction().await.expect("begin");
    let spend = store::spend::current(
        &transaction,
        "acme",
        None,
        &[stored.clone(), fresh.clone()],
        now,
        &book,
    )
    .await
    .expect("current spend");
    transaction.commit().await.expect("commit");
    assert_eq!(spend[&stored.id], Decimal::from(7));
    assert_eq!(spend[&fresh.id], Decimal::from(2));
    // The computed spend is now a row of its own.
    let fresh_row: Decimal = client
        .query_one(
            "SELECT spend_usd FROM budget_spend WHERE budget_id = $1 AND tenant_id = 'acme'",
            &[&fresh.id],
        )
        .await
        .expect("the status read stored the spend it computed")
        .get(0);
    assert_eq!(fresh_row, Decimal::from(2));
}
