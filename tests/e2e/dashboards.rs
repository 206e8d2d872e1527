//! Structure of the observability files that Grafana and Prometheus load but no service here can
//! run: the dashboards in grafana/dashboards/ against the provisioning in grafana/provisioning/,
//! and the alert rules' runbook links against docs/runbooks.md. No services needed.
//!
//! Executing every panel's query against real Prometheus and TimescaleDB is the job of
//! tests/e2e/observability.rs.

use crate::grafana;

use std::collections::{BTreeMap, BTreeSet};

use grafana::{
    datasource_refs, load_dashboards, provisioned_datasources, rate_ranges, repo_root, Dashboard,
    QueryKind, GUIDE_PANEL_QUERIES, PROMETHEUS_UID, PROMQL_VARIABLES, SQL_MACROS, TIMESCALEDB_UID,
};
use serde_json::{json, Value};

const GRID_COLUMNS: i64 = 24;

/// The dashboards the project ships, by file, with their stable uids.
const EXPECTED_DASHBOARDS: &[(&str, &str)] = &[
    ("optimization.json", "tokenledger-optimization"),
    ("pipeline-health.json", "tokenledger-pipeline-health"),
    ("tenant-reporting.json", "tokenledger-tenant-reporting"),
    ("token-usage-cost.json", "tokenledger-usage-cost"),
];

fn dashboard<'a>(dashboards: &'a [Dashboard], file: &str) -> &'a Dashboard {
    dashboards
        .iter()
        .find(|d| d.file == file)
        .unwrap_or_else(|| panic!("grafana/dashboards/{file} is missing"))
}

#[test]
fn every_dashboard_parses_with_a_stable_unique_uid() {
    let dashboards = load_dashboards();
    let found: Vec<(&str, &str)> = dashboards
        .iter()
        .map(|d| (d.file.as_str(), d.uid()))
        .collect();
    for expected in EXPECTED_DASHBOARDS {
        assert!(
            found.contains(expected),
            "expected {expected:?} among {found:?}"
        );
    }
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for d in &dashboards {
        let uid = d.uid();
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{}: uid {uid:?} must be set and at most 40 characters",
            d.file
        );
        assert!(
            uids.insert(uid.to_owned()),
            "{}: duplicate uid {uid}",
            d.file
        );
        let title = d.json["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "{}: no title", d.file);
        assert!(
            titles.insert(title.to_owned()),
            "{}: duplicate title",
            d.file
        );
        let schema = d.json["schemaVersion"].as_i64().unwrap_or(0);
        assert!(
            (36..=41).contains(&schema),
            "{}: schemaVersion {schema}, expected a Grafana 10/11 schema (~39)",
            d.file
        );
        // Provisioned dashboards carry no numeric id; Grafana assigns one.
        assert!(
            d.json.get("id").is_none_or(Value::is_null),
            "{}: remove the top-level id",
            d.file
        );
    }
}

#[test]
fn panel_ids_are_unique_within_each_dashboard() {
    for d in load_dashboards() {
        let mut ids = BTreeSet::new();
        for panel in d.panels() {
            let id = panel["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{}: panel {:?} has no id", d.file, panel["title"]));
            assert!(ids.insert(id), "{}: panel id {id} is used twice", d.file);
            assert!(
                panel["title"].as_str().is_some_and(|t| !t.is_empty()),
                "{}: panel {id} has no title",
                d.file
            );
        }
        assert!(!ids.is_empty(), "{}: no panels", d.file);
    }
}

#[test]
fn datasources_are_the_provisioned_ones_by_fixed_uid() {
    let provisioned = provisioned_datasources();
    let by_uid: BTreeMap<&str, &str> = provisioned
        .iter()
        .map(|ds| (ds.uid.as_str(), ds.kind.as_str()))
        .collect();
    assert_eq!(
        by_uid.len(),
        provisioned.len(),
        "duplicate datasource uids in {provisioned:?}"
    );
    assert_eq!(by_uid.get(PROMETHEUS_UID), Some(&"prometheus"));
    assert_eq!(
        by_uid.get(TIMESCALEDB_UID),
        Some(&"grafana-postgresql-datasource")
    );

    let mut used = BTreeSet::new();
    for d in load_dashboards() {
        let refs = datasource_refs(&d.json);
        assert!(!refs.is_empty(), "{}: no datasource references", d.file);
        for (pointer, reference) in refs {
            let uid = reference["uid"].as_str().unwrap_or_else(|| {
                panic!(
                    "{}{pointer}: datasource {reference} is not an object with a fixed uid \
                     (names and ${{DS_…}} inputs only work in the UI import flow)",
                    d.file
                )
            });
            let kind = reference["type"].as_str().unwrap_or_default();
            match by_uid.get(uid) {
                Some(provisioned_kind) => assert_eq!(
                    kind, *provisioned_kind,
                    "{}{pointer}: datasource {uid} has type {kind}, provisioned as {provisioned_kind}",
                    d.file
                ),
                None => panic!(
                    "{}{pointer}: datasource uid {uid:?} is not provisioned (have {:?})",
                    d.file,
                    by_uid.keys().collect::<Vec<_>>()
                ),
            }
            used.insert(uid.to_owned());
        }
        // Every target names its datasource, or inherits its panel's.
        for query in d.queries() {
            assert!(
                by_uid.contains_key(query.datasource_uid.as_str()),
                "{}: no provisioned datasource",
                query.name()
            );
        }
    }
    assert!(used.contains(PROMETHEUS_UID) && used.contains(TIMESCALEDB_UID));
}

#[test]
fn no_import_only_inputs() {
    for d in load_dashboards() {
        assert!(
            d.json.get("__inputs").is_none() && d.json.get("__requires").is_none(),
            "{}: __inputs/__requires only work in the UI import flow",
            d.file
        );
        let text = d.json.to_string();
        assert!(
            !text.contains("${DS_"),
            "{}: ${{DS_…}} datasource inputs only work in the UI import flow",
            d.file
        );
    }
}

#[derive(Debug, Clone, Copy)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

impl Rect {
    fn overlaps(&self, other: &Rect) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }
}

#[test]
fn panels_do_not_overlap_and_fit_the_grid() {
    for d in load_dashboards() {
        let mut placed: Vec<(String, Rect)> = Vec::new();
        // Panels inside a collapsed row are laid out when it expands; only top-level panels
        // share the grid.
        for panel in d.json["panels"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let g = &panel["gridPos"];
            let field = |k: &str| {
                g[k].as_i64()
                    .unwrap_or_else(|| panic!("{}: panel {title:?} has no gridPos.{k}", d.file))
            };
            let rect = Rect {
                x: field("x"),
                y: field("y"),
                w: field("w"),
                h: field("h"),
            };
            assert!(
                rect.x >= 0 && rect.y >= 0 && rect.w > 0 && rect.h > 0,
                "{}: panel {title:?} has gridPos {g}",
                d.file
            );
            assert!(
                rect.x + rect.w <= GRID_COLUMNS,
                "{}: panel {title:?} is wider than the grid: {g}",
                d.file
            );
            for (other_title, other) in &placed {
                assert!(
                    !rect.overlaps(other),
                    "{}: panels {title:?} {rect:?} and {other_title:?} {other:?} overlap",
                    d.file
                );
            }
            placed.push((title, rect));
        }
    }
}

/// Range queries (graphs over time) use `$__rate_interval`, so that a rate never spans less than
/// four scrapes whatever the zoom. Instant queries (stat, pie and bar totals such as "cost over
/// the last 7 days") are window totals by design and may use a fixed window. The guide's own two
/// panels keep their queries verbatim.
#[test]
fn range_queries_use_rate_interval() {
    let mut checked = 0;
    for d in load_dashboards() {
        for query in d.queries() {
            let QueryKind::PromQl { expr, instant } = &query.kind else {
                continue;
            };
            for variable in expr.match_indices('$').map(|(i, _)| &expr[i..]) {
                assert!(
                    PROMQL_VARIABLES.iter().any(|v| variable.starts_with(v)),
                    "{}: unknown variable at {variable:?}",
                    query.name()
                );
            }
            if GUIDE_PANEL_QUERIES.contains(&expr.as_str()) || *instant {
                continue;
            }
            for range in rate_ranges(expr) {
                checked += 1;
                assert_eq!(
                    range,
                    "$__rate_interval",
                    "{}: use [$__rate_interval] in {expr:?}",
                    query.name()
                );
            }
        }
    }
    assert!(checked > 10, "only {checked} rate ranges checked");
}

#[test]
fn sql_panels_use_only_the_documented_macros() {
    let mut sql_panels = 0;
    for d in load_dashboards() {
        for query in d.queries() {
            let QueryKind::Sql { sql, format } = &query.kind else {
                continue;
            };
            sql_panels += 1;
            assert_eq!(
                query.datasource_uid,
                TIMESCALEDB_UID,
                "{}: SQL on a non-SQL datasource",
                query.name()
            );
            assert!(
                format == "table" || format == "time_series",
                "{}: format {format}",
                query.name()
            );
            for (i, _) in sql.match_indices('$') {
                let rest = &sql[i..];
                let regex_anchor = rest.starts_with("$'");
                assert!(
                    regex_anchor || SQL_MACROS.iter().any(|m| rest.starts_with(m)),
                    "{}: undocumented macro at {:?}",
                    query.name(),
                    &rest[..rest.len().min(30)]
                );
            }
            if format == "time_series" {
                assert!(
                    sql.contains(" AS time") && sql.contains(" AS value"),
                    "{}: a time_series query needs time and value columns",
                    query.name()
                );
            }
        }
    }
    assert!(sql_panels >= 8, "only {sql_panels} SQL queries");
}

/// The guide's two sample panels, field for field.
#[test]
fn the_guides_panels_are_verbatim() {
    let dashboards = load_dashboards();
    let usage = dashboard(&dashboards, "token-usage-cost.json");
    let guide_panels = [
        json!({
            "title": "Token Usage (24h)",
            "type": "timeseries",
            "targets": [{
                "expr": "sum(rate(axonflow_orchestrator_provider_total_tokens[5m])) * 60",
                "legendFormat": "Tokens/min"
            }]
        }),
        json!({
            "title": "Cost by Provider",
            "type": "piechart",
            "targets": [{
                "expr": "sum by (provider) (increase(axonflow_orchestrator_provider_total_cost[7d]))",
                "legendFormat": "{{provider}}"
            }]
        }),
    ];
    for guide in guide_panels {
        let title = guide["title"].as_str().unwrap_or_default();
        let panel = usage
            .panels()
            .into_iter()
            .find(|p| p["title"] == guide["title"])
            .unwrap_or_else(|| panic!("the guide's panel {title:?} is missing"));
        assert_eq!(panel["type"], guide["type"], "{title}: type");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert_eq!(targets.len(), 1, "{title}: one target");
        for key in ["expr", "legendFormat"] {
            assert_eq!(targets[0][key], guide["targets"][0][key], "{title}: {key}");
        }
    }
}

#[test]
fn the_executive_summary_is_complete_and_filtered_by_the_variables() {
    let dashboards = load_dashboards();
    let usage = dashboard(&dashboards, "token-usage-cost.json");
    let titles: Vec<&str> = usage
        .panels()
        .into_iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for title in [
        "LLM Cost (7d)",
        "Total Tokens Used",
        "Cost per 1K Tokens",
        "Average Cost per Request",
        "Cost by LLM Provider",
    ] {
        assert!(titles.contains(&title), "missing {title:?} in {titles:?}");
    }
    let variables: Vec<&str> = usage.json["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["tenant_id", "provider", "model"]);
    for query in usage.queries() {
        let text = match &query.kind {
            QueryKind::PromQl { expr, .. } if GUIDE_PANEL_QUERIES.contains(&expr.as_str()) => {
                continue
            }
            QueryKind::PromQl { expr, .. } => expr.clone(),
            QueryKind::Sql { sql, .. } => sql.clone(),
            QueryKind::Other(v) => panic!("{}: unexpected target {v}", query.name()),
        };
        // Usage queries take all three filters; the budget gauges have only a tenant, the
        // reconciliation gauges a tenant and a provider.
        let filters: &[&str] = if text.contains("tokenledger_budget_spend_ratio")
            || text.contains("tokenledger_budget_forecast_ratio")
        {
            &["tenant_id"]
        } else if text.contains("tokenledger_reconciliation_") {
            &["tenant_id", "provider"]
        } else {
            &["tenant_id", "provider", "model"]
        };
        for variable in filters {
            assert!(
                text.contains(&format!("${variable}")) || text.contains(&format!("${{{variable}")),
                "{}: not filtered by ${variable}",
                query.name()
            );
        }
    }
    let tenant = dashboard(&dashboards, "tenant-reporting.json");
    for query in tenant.queries() {
        let QueryKind::Sql { sql, .. } = &query.kind else {
            panic!("{}: the tenant report is SQL only", query.name());
        };
        assert!(
            sql.contains("tenant_id IN ($tenant_id)"),
            "{}: not filtered by $tenant_id",
            query.name()
        );
    }
}

#[test]
fn template_variables_use_provisioned_datasources_and_refresh() {
    for d in load_dashboards() {
        for variable in d.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variable["name"].as_str().unwrap_or_default();
            assert_eq!(variable["type"], "query", "{}: ${name}", d.file);
            assert!(
                variable["datasource"]["uid"].is_string(),
                "{}: ${name} has no fixed datasource",
                d.file
            );
            assert_eq!(
                variable["refresh"], 2,
                "{}: ${name} must refresh on time range change",
                d.file
            );
        }
    }
}

/// Every alert's runbook_url points at its own section of docs/runbooks.md.
#[test]
fn every_alert_links_to_its_runbook_section() {
    let rules_path = repo_root().join("alerts").join("tokenledger.rules.yml");
    let rules = std::fs::read_to_string(&rules_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", rules_path.display()));
    let runbooks_path = repo_root().join("docs").join("runbooks.md");
    let runbooks = std::fs::read_to_string(&runbooks_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", runbooks_path.display()));
    let headings: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();

    let mut alerts: Vec<(String, Option<String>)> = Vec::new();
    for line in rules.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            alerts.push((name.trim().to_owned(), None));
        } else if let Some(url) = line.strip_prefix("runbook_url:") {
            let url = url.trim().trim_matches('"').to_owned();
            if let Some(last) = alerts.last_mut() {
                last.1 = Some(url);
            }
        }
    }
    assert!(alerts.len() >= 12, "only {} alerts found", alerts.len());
    for (name, url) in alerts {
        let url = url.unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let (page, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} has no anchor"));
        assert!(page.ends_with("docs/runbooks.md"), "{name}: {url}");
        assert_eq!(anchor, name.to_lowercase(), "{name}: anchor of {url}");
        assert!(
            headings.contains(anchor),
            "{name}: docs/runbooks.md has no section \"## {name}\""
        );
    }
}
