//! The totals of `cost_corrections` against a real TimescaleDB: one per provider, model, tenant
//! and direction, summed over every run, read by column name.

use e2e::Database;
use rust_decimal::Decimal;
use store::corrections::{totals, CorrectionTotal};
use uuid::Uuid;

async fn correct(client: &tokio_postgres::Client, run: Uuid, tenant: &str, old: &str, new: &str) {
    client
        .execute(
            "INSERT INTO cost_corrections (run_id, id, created_at, tenant_id, provider, model,
                 old_cost, new_cost, old_status, new_status, new_price_book_version,
                 new_pricing_rule)
             VALUES ($1, $2, now(), $3, 'openai', 'gpt-4o', $4, $5,
                 'priced', 'priced', 'v2', 'rule')",
            &[&run, &Uuid::now_v7(), &tenant, &usd(old), &usd(new)],
        )
        .await
        .expect("correction inserted");
}

fn usd(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

fn total(tenant: &str, direction: &str, amount: &str) -> CorrectionTotal {
    CorrectionTotal {
        provider: "openai".to_owned(),
        model: "gpt-4o".to_owned(),
        tenant_id: tenant.to_owned(),
        direction: direction.to_owned(),
        usd: usd(amount),
    }
}

#[tokio::test]
async fn totals_sum_each_series_over_runs_and_split_up_from_down() {
    let database = Database::start().await;
    database.migrate().await;
    let client = database.client().await;
    assert_eq!(totals(&client).await.expect("totals"), vec![]);

    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    correct(&client, first, "acme", "1.00", "1.25").await;
    correct(&client, second, "acme", "2.00", "2.50").await;
    correct(&client, second, "acme", "3.00", "2.90").await;
    correct(&client, first, "globex", "0.10", "0.10").await;

    let mut read = totals(&client).await.expect("totals");
    read.sort_by(|a, b| (&a.tenant_id, &a.direction).cmp(&(&b.tenant_id, &b.direction)));
    let expected = [
        total("acme", "down", "0.10"),
        total("acme", "up", "0.75"),
        total("globex", "up", "0"),
    ];
    assert_eq!(read.len(), expected.len(), "{read:?}");
    for (got, want) in read.iter().zip(&expected) {
        assert_eq!(
            (&got.tenant_id, &got.direction, got.usd.normalize()),
            (&want.tenant_id, &want.direction, want.usd.normalize()),
            "{read:?}"
        );
        assert_eq!((&got.provider, &got.model), (&want.provider, &want.model));
    }
}
