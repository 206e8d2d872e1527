//! A budget of one API key on a real TimescaleDB: the audit row keeps the
//! key's name the gateway stamped on the event, and only that key's usage
//! counts toward the key's budget, beside the tenant's budget.

use rust_decimal::Decimal;

use crate::budgets_db::{at, event, usd, Fixture};

const BUDGETS: &str = r#"
[[budgets]]
name = "acme-batch-key"
tenant_id = "acme"
api_key = "acme-batch"
period = "monthly"
amount_usd = "100"

[[budgets]]
name = "acme-all"
tenant_id = "acme"
period = "monthly"
amount_usd = "100"
"#;

#[tokio::test]
async fn only_the_keys_usage_counts_toward_a_key_budget_and_the_audit_row_names_the_key() {
    let mut fixture = Fixture::start().await;
    fixture.apply_budgets(BUDGETS, false).await;
    let day = at(2026, 1, 10, 12);
    let with_key = |key: Option<&str>, cost: &str| {
        let mut usage = event("acme", cost, day);
        usage.api_key = key.map(str::to_owned);
        usage
    };
    fixture
        .write(&[
            with_key(Some("acme-batch"), "3"),
            with_key(None, "2"),
            with_key(Some("acme-web"), "1"),
        ])
        .await;
    let client = fixture.database.client().await;
    let spend = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT s.spend_usd FROM budget_spend s JOIN budgets b ON b.id = s.budget_id
                     WHERE b.name = $1",
                    &[&name],
                )
                .await
                .expect("spend row")
                .get::<_, Decimal>("spend_usd")
        }
    };
    assert_eq!(spend("acme-batch-key").await, usd("3"));
    assert_eq!(spend("acme-all").await, usd("6"));
    let mut keys: Vec<Option<String>> = client
        .query("SELECT api_key FROM gateway_mode_audit", &[])
        .await
        .expect("audit rows")
        .iter()
        .map(|row| row.get("api_key"))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            None,
            Some("acme-batch".to_owned()),
            Some("acme-web".to_owned())
        ]
    );
}

/// V19 adds `api_key` to the audit hypertable after chunks were compressed:
/// the column appears on every row, NULL on the old ones, and the rows stay
/// readable and writable.
#[tokio::test]
async fn the_api_key_column_is_added_over_compressed_chunks() {
    use processor::migrate;

    let database = e2e::Database::start().await;
    let mut client = database.client().await;
    let all = migrate::embedded().expect("embedded");
    let before: Vec<migrate::Migration> = all.iter().filter(|m| m.version < 19).cloned().collect();
    migrate::apply(&mut client, &before)
        .await
        .expect("migrations before V19");
    client
        .batch_execute(
            "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
                 completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
                 labels, received_at, payload_sha256, source_partition, source_offset)
             VALUES (gen_random_uuid(), 'acme', 'openai', 'gpt-4o', 1, 1, 2, 1,
                     now() - INTERVAL '20 days', 'provided', '{}', now(), '\\x00', 0, 0);
             SELECT compress_chunk(c, if_not_compressed => true)
             FROM show_chunks('gateway_mode_audit') AS c;",
        )
        .await
        .expect("a compressed chunk");
    let compressed: i64 = client
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks
             WHERE hypertable_name = 'gateway_mode_audit' AND is_compressed",
            &[],
        )
        .await
        .expect("chunks")
        .get(0);
    assert!(compressed > 0, "no chunk was compressed");
    migrate::apply(&mut client, &all)
        .await
        .expect("V19 applies");
    let rows = client
        .query("SELECT api_key FROM gateway_mode_audit", &[])
        .await
        .expect("read");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, Option<String>>("api_key"), None);
}
