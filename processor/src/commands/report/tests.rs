use super::*;

#[test]
fn tables_align_and_json_keeps_decimals_exact() {
    let report = Report {
        days: 30,
        totals: Totals {
            rows: 3,
            tenants: 2,
            models: 1,
            total_tokens: 300,
            cost_usd: Decimal::new(12_345, 7),
            unpriced_rows: 0,
            partly_priced_rows: 0,
            unpriced_tokens: vec![],
            first_created_at: None,
            last_created_at: None,
        },
        tenant_daily: vec![DailyRow {
            day: "2026-01-05".into(),
            tenant_id: Some("acme".into()),
            provider: None,
            model: None,
            requests: 3,
            prompt_tokens: 200,
            completion_tokens: 100,
            total_tokens: 300,
            cost_usd: Decimal::new(12_345, 7),
            unpriced_requests: 0,
        }],
        model_daily: vec![],
        usage_daily: vec![],
        cost_by_use_case: vec![],
    };
    let table = report.to_detail_table();
    assert!(table.contains("tenant_daily (last 30 days)"), "{table}");
    assert!(table.contains("2026-01-05  acme"), "{table}");
    assert!(table.contains("(no rows)"), "{table}");
    let json = report.to_json().expect("json");
    assert!(json.contains("\"0.0012345\""), "{json}");
    assert!(!json.contains("\"provider\": null"), "{json}");
}

fn row(day: &str, tenant: &str, requests: i64, cost: i64) -> DailyRow {
    DailyRow {
        day: day.into(),
        tenant_id: Some(tenant.into()),
        provider: None,
        model: None,
        requests,
        prompt_tokens: requests * 10,
        completion_tokens: 0,
        total_tokens: requests * 10,
        cost_usd: Decimal::new(cost, 2),
        unpriced_requests: 0,
    }
}

#[test]
fn summary_ranks_tenants_by_cost_and_folds_the_tail() {
    let mut tenant_daily = Vec::new();
    for i in 0..12 {
        tenant_daily.push(row("2026-01-05", &format!("t{i:02}"), 1, i + 1));
        tenant_daily.push(row("2026-01-06", &format!("t{i:02}"), 1, i + 1));
    }
    let report = Report {
        days: 7,
        totals: Totals {
            rows: 24,
            tenants: 12,
            models: 0,
            total_tokens: 240,
            cost_usd: Decimal::new(156, 0),
            unpriced_rows: 0,
            partly_priced_rows: 0,
            unpriced_tokens: vec![],
            first_created_at: None,
            last_created_at: None,
        },
        tenant_daily,
        model_daily: vec![],
        usage_daily: vec![],
        cost_by_use_case: vec![],
    };
    let table = report.to_table();
    // per day: 12 tenants x (1..=12 cents) = 0.78 each day
    let day = table
        .lines()
        .find(|l| l.starts_with("2026-01-05"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        day,
        ["2026-01-05", "12", "120", "0.78", "6.50", "0"],
        "{table}"
    );
    let tenants = table
        .split("top tenants")
        .nth(1)
        .and_then(|rest| rest.split("top models").next())
        .unwrap_or_default();
    let first = tenants.lines().nth(3).unwrap_or_default();
    assert!(first.starts_with("t11"), "highest cost first: {tenants}");
    // t00 and t01 fold into one row: 2 tenants x 2 days, 0.01+0.02 twice
    assert!(tenants.contains("(2 more)"), "{tenants}");
    assert!(
        tenants
            .lines()
            .any(|l| l.starts_with("(2 more)") && l.contains("0.06")),
        "{tenants}"
    );
    assert!(table.contains("top models by cost"), "{table}");
}
