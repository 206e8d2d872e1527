//! The dashboards' queries and the usage guide's PromQL against real services.
//!
//! - `sql_panels_run_on_the_rollups`: every SQL panel of grafana/dashboards/ (Grafana's macros
//!   substituted, see tests/grafana.rs) runs against a migrated TimescaleDB holding a known set
//!   of rows, returns rows, and its numbers match the raw audit table.
//! - `pipeline_metrics_dashboards_and_alerts`: the whole pipeline (broker, TimescaleDB, processor,
//!   gateway, Prometheus scraping both every second with alerts/ loaded) under known traffic: the
//!   guide's queries and both cost alert expressions return the numbers the traffic implies, every
//!   Prometheus panel and template variable of the dashboards answers with data, every SQL panel
//!   returns rows, and a processor crash followed by a full redelivery of the same events does
//!   not move the counters.

mod grafana;

use std::collections::BTreeMap;

use e2e::Database;
use grafana::{load_dashboards, substitute_sql, QueryKind, SqlVars};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The rows of a simple query as column name → text value maps (NULL as None).
async fn rows(client: &Client, sql: &str, what: &str) -> Vec<BTreeMap<String, Option<String>>> {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| {
        let detail = e
            .as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string());
        panic!("{what}: {detail}\n{sql}")
    });
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The single value of a one-row, one-column query, as f64 (NULL as 0).
async fn number(client: &Client, sql: &str, what: &str) -> f64 {
    let rows = rows(client, sql, what).await;
    assert_eq!(rows.len(), 1, "{what}: expected one row, got {rows:?}");
    let value = rows[0].values().next().cloned().flatten();
    value.map_or(0.0, |v| {
        v.parse()
            .unwrap_or_else(|e| panic!("{what}: {v:?} is not a number: {e}"))
    })
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    let tolerance = 1e-9_f64.max(expected.abs() * 1e-9);
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: got {actual}, expected {expected}"
    );
}

async fn refresh_rollups(client: &Client) {
    for view in ["usage_hourly", "usage_daily", "tenant_daily", "model_daily"] {
        client
            .batch_execute(&format!(
                "CALL refresh_continuous_aggregate('{view}', NULL, NULL)"
            ))
            .await
            .unwrap_or_else(|e| panic!("refresh {view}: {e}"));
    }
}

/// One usage row to insert: tenant, provider, model, prompt and completion tokens, cost, days
/// and minutes before now, pricing status.
type Usage = (
    &'static str,
    &'static str,
    &'static str,
    u32,
    u32,
    &'static str,
    u32,
    u32,
    &'static str,
);

const USAGE_ROWS: &[Usage] = &[
    (
        "acme", "openai", "gpt-4o", 1000, 500, "0.0125", 0, 5, "priced",
    ),
    (
        "acme", "openai", "gpt-4o", 1200, 300, "0.0105", 1, 0, "priced",
    ),
    (
        "acme", "openai", "gpt-4o", 800, 200, "0.0070", 3, 0, "priced",
    ),
    (
        "acme", "openai", "gpt-4o", 500, 500, "0.0063", 10, 0, "priced",
    ),
    (
        "acme",
        "anthropic",
        "claude-3-5-sonnet",
        2000,
        1000,
        "0.021",
        0,
        30,
        "priced",
    ),
    (
        "acme",
        "anthropic",
        "claude-3-5-sonnet",
        1000,
        100,
        "0.0045",
        2,
        0,
        "provided",
    ),
    (
        "globex",
        "openai",
        "gpt-4o-mini",
        4000,
        1000,
        "0.0012",
        0,
        2,
        "priced",
    ),
    (
        "globex",
        "openai",
        "gpt-4o-mini",
        3000,
        900,
        "0.00099",
        5,
        0,
        "priced",
    ),
    (
        "globex",
        "openai",
        "gpt-4o-mini",
        2000,
        100,
        "0.00036",
        20,
        0,
        "priced",
    ),
    (
        "globex", "ollama", "llama3", 300, 200, "0", 0, 1, "unpriced",
    ),
    (
        "globex", "ollama", "llama3", 250, 150, "0", 1, 0, "unpriced",
    ),
    (
        "initech",
        "bedrock",
        "titan-text-express",
        100,
        100,
        "0.0005",
        0,
        3,
        "priced",
    ),
    // Outside a 30-day range: must not show up.
    (
        "initech",
        "bedrock",
        "titan-text-express",
        9000,
        9000,
        "9.5",
        40,
        0,
        "priced",
    ),
];

async fn insert_usage_rows(client: &Client) {
    let values: Vec<String> = USAGE_ROWS
        .iter()
        .enumerate()
        .map(
            |(i, (tenant, provider, model, prompt, completion, cost, days, minutes, status))| {
                let created =
                    format!("now() - INTERVAL '{days} days' - INTERVAL '{minutes} minutes'");
                format!(
                    "(gen_random_uuid(), '{tenant}', 'user-{i}', '{provider}', '{model}', \
                     {prompt}, {completion}, {total}, {cost}, {created}, '{status}', \
                     {created}, '\\x00'::bytea, 0, {i})",
                    total = prompt + completion
                )
            },
        )
        .collect();
    let sql = format!(
        "INSERT INTO gateway_mode_audit (id, tenant_id, user_id, provider, model, prompt_tokens, \
         completion_tokens, total_tokens, estimated_cost, created_at, pricing_status, \
         received_at, payload_sha256, source_partition, source_offset) VALUES {}",
        values.join(",\n")
    );
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("inserting usage rows: {e}\n{sql}"));
}

/// A dashboard time range as Grafana renders it: RFC 3339 in UTC.
async fn time_range(client: &Client, from_sql: &str) -> (String, String) {
    const FORMAT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";
    let sql = format!(
        "SELECT to_char(({from_sql}) AT TIME ZONE 'UTC', {FORMAT}) AS from_ts, \
         to_char(now() AT TIME ZONE 'UTC', {FORMAT}) AS to_ts"
    );
    let row = rows(client, &sql, "time range").await.remove(0);
    let get = |k: &str| row[k].clone().unwrap_or_default();
    (get("from_ts"), get("to_ts"))
}

/// Runs every SQL panel of every dashboard with `vars`; returns the rows per panel title. Every
/// panel must return rows, except those titled in `may_be_empty`.
async fn run_sql_panels(
    client: &Client,
    vars: &SqlVars,
    may_be_empty: &[&str],
) -> BTreeMap<String, Vec<BTreeMap<String, Option<String>>>> {
    let mut out = BTreeMap::new();
    for dashboard in load_dashboards() {
        for query in dashboard.queries() {
            let QueryKind::Sql { sql, format } = &query.kind else {
                continue;
            };
            let sql = substitute_sql(sql, vars);
            let result = rows(client, &sql, &query.name()).await;
            assert!(
                !result.is_empty() || may_be_empty.contains(&query.panel_title.as_str()),
                "{}: no rows for {vars:?}\n{sql}",
                query.name()
            );
            if format == "time_series" && !result.is_empty() {
                let columns: Vec<&String> = result[0].keys().collect();
                assert_eq!(
                    columns,
                    ["metric", "time", "value"],
                    "{}: time series columns",
                    query.name()
                );
            }
            out.insert(query.panel_title.clone(), result);
        }
    }
    out
}

/// SQL template variables of every dashboard, run as Grafana runs them (no macros in them).
async fn sql_variable_values(client: &Client) -> Vec<String> {
    let mut values = Vec::new();
    for dashboard in load_dashboards() {
        for variable in dashboard.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["datasource"]["uid"] != grafana::TIMESCALEDB_UID {
                continue;
            }
            let query = variable["query"].as_str().unwrap_or_default();
            let name = variable["name"].as_str().unwrap_or_default();
            for row in rows(client, query, &format!("{} ${name}", dashboard.file)).await {
                values.extend(row.into_values().flatten());
            }
        }
    }
    values
}

fn single(panels: &BTreeMap<String, Vec<BTreeMap<String, Option<String>>>>, title: &str) -> f64 {
    let rows = panels
        .get(title)
        .unwrap_or_else(|| panic!("no SQL panel {title:?}"));
    assert_eq!(rows.len(), 1, "{title}: {rows:?}");
    rows[0]
        .values()
        .next()
        .cloned()
        .flatten()
        .map_or(0.0, |v| v.parse().unwrap_or(f64::NAN))
}

#[tokio::test]
async fn sql_panels_run_on_the_rollups() {
    let db = Database::start().await;
    db.migrate().await;
    let client = db.client().await;
    insert_usage_rows(&client).await;
    // Before any refresh, real-time aggregation serves everything from the raw rows; after it,
    // the materialized buckets do. Both must give the raw table's numbers.
    check_sql_panels(&client).await;
    refresh_rollups(&client).await;
    check_sql_panels(&client).await;
}

/// Runs every SQL panel over "the last 30 days" for all tenants and for one tenant, and checks
/// the numbers against the raw audit table.
async fn check_sql_panels(client: &Client) {
    let tenants = sql_variable_values(client).await;
    assert_eq!(tenants, ["acme", "globex", "initech"], "$tenant_id options");

    // "Last 30 days" as the tenant report's default range (now-30d/d .. now) renders it.
    let (from, to) = time_range(client, "date_trunc('day', now() - INTERVAL '30 days')").await;
    let all = SqlVars {
        from: from.clone(),
        to: to.clone(),
        tenant_ids: tenants.clone(),
        regex_tenant_ids: Vec::new(),
        regex_providers: Vec::new(),
        regex_models: Vec::new(),
    };
    let panels = run_sql_panels(client, &all, &[]).await;

    let since = format!("'{from}'::timestamptz");
    let raw = |expr: &str, filter: &str| {
        format!(
            "SELECT COALESCE({expr}, 0) FROM gateway_mode_audit \
             WHERE created_at >= {since} AND created_at <= '{to}'::timestamptz {filter}"
        )
    };
    assert_close(
        single(&panels, "Cost in range"),
        number(client, &raw("sum(estimated_cost)", ""), "raw cost").await,
        "Cost in range",
    );
    assert_close(
        single(&panels, "Tokens in range"),
        number(client, &raw("sum(total_tokens)", ""), "raw tokens").await,
        "Tokens in range",
    );
    assert_close(
        single(&panels, "Unpriced requests in range"),
        number(
            client,
            &raw("count(*)", "AND pricing_status = 'unpriced'"),
            "raw unpriced",
        )
        .await,
        "Unpriced requests in range",
    );
    assert_close(
        single(&panels, "Month-to-date cost"),
        number(
            client,
            "SELECT COALESCE(sum(estimated_cost), 0) FROM gateway_mode_audit \
             WHERE created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
            "raw month to date",
        )
        .await,
        "Month-to-date cost",
    );
    assert_close(
        single(&panels, "Average Cost per Request"),
        number(
            client,
            "SELECT avg(estimated_cost) FROM gateway_mode_audit \
             WHERE created_at >= date_trunc('hour', now() - INTERVAL '7 days')",
            "raw average cost",
        )
        .await,
        "Average Cost per Request",
    );
    let top = &panels["Top tenants by cost"];
    let top_tenants: Vec<String> = top.iter().filter_map(|r| r["Tenant"].clone()).collect();
    assert_eq!(top_tenants, ["acme", "globex", "initech"], "{top:?}");
    let unpriced = &panels["Unpriced requests"];
    assert_eq!(unpriced.len(), 1, "{unpriced:?}");
    assert_eq!(unpriced[0]["Model"].as_deref(), Some("llama3"));
    assert_eq!(unpriced[0]["Unpriced requests"].as_deref(), Some("2"));

    // One tenant selected, in both the IN list and the regex forms.
    let acme = SqlVars {
        tenant_ids: vec!["acme".to_owned()],
        regex_tenant_ids: vec!["acme".to_owned()],
        regex_providers: vec!["openai".to_owned()],
        ..all.clone()
    };
    // acme has no unpriced usage: Grafana shows "No data" there, but the query has to run.
    let panels = run_sql_panels(client, &acme, &["Unpriced requests"]).await;
    assert_close(
        single(&panels, "Cost in range"),
        number(
            client,
            &raw("sum(estimated_cost)", "AND tenant_id = 'acme'"),
            "raw",
        )
        .await,
        "Cost in range for acme",
    );
    assert_close(
        single(&panels, "Average Cost per Request"),
        number(
            client,
            "SELECT avg(estimated_cost) FROM gateway_mode_audit \
             WHERE created_at >= date_trunc('hour', now() - INTERVAL '7 days') \
               AND tenant_id = 'acme' AND provider = 'openai'",
            "raw average cost for acme on openai",
        )
        .await,
        "Average Cost per Request for acme on openai",
    );
    let top = &panels["Top tenants by cost"];
    assert_eq!(top.len(), 1, "{top:?}");
}
