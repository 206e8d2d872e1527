//! Reading grafana/: the dashboards, their panels' queries, the provisioned datasources, and the
//! substitution of Grafana's template variables and SQL macros so that a test can run a panel's
//! query against the real Prometheus or TimescaleDB.
//!
//! Shared by the `dashboards` (structure) and `observability` (live) modules of the e2e tests.
//!
//! The dashboards use a small, fixed set of Grafana macros, and nothing else:
//!
//! | macro | where | Grafana expands it to | tests substitute |
//! |---|---|---|---|
//! | `$__rate_interval` | PromQL | max(4 × scrape interval, step + scrape interval) | a fixed duration |
//! | `$tenant_id`, `$provider`, `$model` | PromQL, inside `=~"…"` | the selection as a regex; All = `.*` | `.*` or a value |
//! | `$__timeFilter(col)` | SQL | `col BETWEEN '<from>' AND '<to>'` (RFC 3339, UTC) | the same |
//! | `$__timeFrom()`, `$__timeTo()` | SQL | `'<from>'`, `'<to>'` | the same |
//! | `$tenant_id` | SQL, inside `IN (…)` | the selected tenants, quoted, comma-separated; All = every tenant | the same |
//! | `${tenant_id:regex}`, `${provider:regex}`, `${model:regex}` | SQL, inside `~ '^(…)$'` | the selection as an escaped regex; All = `.*` | the same |
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The two datasource uids every dashboard uses, as provisioned in
/// grafana/provisioning/datasources/tokenledger.yml.
pub const PROMETHEUS_UID: &str = "tokenledger-prometheus";
pub const TIMESCALEDB_UID: &str = "tokenledger-timescaledb";

/// The usage guide's PromQL, kept verbatim in the dashboards: exempt from the
/// `$__rate_interval` rule.
pub const GUIDE_PANEL_QUERIES: &[&str] = &[
    "sum(rate(axonflow_orchestrator_provider_total_tokens[5m])) * 60",
    "sum by (provider) (increase(axonflow_orchestrator_provider_total_cost[7d]))",
];

/// The SQL macros and variables the dashboards may use (see the module documentation).
pub const SQL_MACROS: &[&str] = &[
    "$__timeFilter(",
    "$__timeFrom()",
    "$__timeTo()",
    "${tenant_id:regex}",
    "${provider:regex}",
    "${model:regex}",
    "$tenant_id",
];

/// The PromQL variables the dashboards may use.
pub const PROMQL_VARIABLES: &[&str] = &["$__rate_interval", "$tenant_id", "$provider", "$model"];

pub fn repo_root() -> PathBuf {
    // Prefer the directory cargo/nextest name at run time: a test binary
    // reused from a build of the same sources in another checkout (a shared
    // target directory) still has that checkout's path compiled in.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// A dashboard file and its parsed JSON.
#[derive(Debug)]
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

impl Dashboard {
    pub fn uid(&self) -> &str {
        self.json["uid"].as_str().unwrap_or_default()
    }

    /// Every panel, with the panels nested in collapsed rows, in file order.
    pub fn panels(&self) -> Vec<&Value> {
        let mut out = Vec::new();
        for panel in self.json["panels"].as_array().into_iter().flatten() {
            out.push(panel);
            for nested in panel["panels"].as_array().into_iter().flatten() {
                out.push(nested);
            }
        }
        out
    }

    /// Every query of every panel.
    pub fn queries(&self) -> Vec<PanelQuery> {
        let mut out = Vec::new();
        for panel in self.panels() {
            let panel_ds_uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let ds_uid = target["datasource"]["uid"]
                    .as_str()
                    .unwrap_or(panel_ds_uid)
                    .to_owned();
                let kind = if let Some(expr) = target["expr"].as_str() {
                    QueryKind::PromQl {
                        expr: expr.to_owned(),
                        instant: target["instant"].as_bool().unwrap_or(false),
                    }
                } else if let Some(sql) = target["rawSql"].as_str() {
                    QueryKind::Sql {
                        sql: sql.to_owned(),
                        format: target["format"].as_str().unwrap_or("table").to_owned(),
                    }
                } else {
                    QueryKind::Other(target.clone())
                };
                out.push(PanelQuery {
                    dashboard: self.file.clone(),
                    panel_id: panel["id"].as_i64().unwrap_or(-1),
                    panel_title: panel["title"].as_str().unwrap_or_default().to_owned(),
                    panel_type: panel["type"].as_str().unwrap_or_default().to_owned(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                    datasource_uid: ds_uid,
                    kind,
                });
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub enum QueryKind {
    PromQl { expr: String, instant: bool },
    Sql { sql: String, format: String },
    Other(Value),
}

/// One target of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel_id: i64,
    pub panel_title: String,
    pub panel_type: String,
    pub ref_id: String,
    pub datasource_uid: String,
    pub kind: QueryKind,
}

impl PanelQuery {
    /// "file / title (id) / refId", for failure messages.
    pub fn name(&self) -> String {
        format!(
            "{} / {:?} (panel {}) / {}",
            self.dashboard, self.panel_title, self.panel_id, self.ref_id
        )
    }
}

pub fn dashboards_dir() -> PathBuf {
    repo_root().join("grafana").join("dashboards")
}

/// Every `grafana/dashboards/*.json`, sorted by file name; panics on unreadable or invalid JSON.
pub fn load_dashboards() -> Vec<Dashboard> {
    let dir = dashboards_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Dashboard { file, json }
        })
        .collect()
}

/// A datasource of grafana/provisioning/datasources/*.yml.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ProvisionedDatasource {
    pub name: String,
    pub uid: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The datasources of every provisioning file.
pub fn provisioned_datasources() -> Vec<ProvisionedDatasource> {
    let dir = repo_root()
        .join("grafana")
        .join("provisioning")
        .join("datasources");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml")
        })
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        out.extend(parse_datasources(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    out
}

pub fn parse_datasources(text: &str) -> Result<Vec<ProvisionedDatasource>, serde_yaml_ng::Error> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        datasources: Vec<ProvisionedDatasource>,
    }
    serde_yaml_ng::from_str::<File>(text).map(|file| file.datasources)
}

/// Every `datasource` object anywhere in `value` (panels, targets, template variables), as
/// (JSON pointer, datasource value).
pub fn datasource_refs(value: &Value) -> Vec<(String, Value)> {
    fn walk(value: &Value, pointer: String, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let child_pointer = format!("{pointer}/{key}");
                    if key == "datasource" {
                        out.push((child_pointer.clone(), child.clone()));
                    }
                    walk(child, child_pointer, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{pointer}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

/// The range selectors (`[...]` contents) of every `rate(`, `irate(` and `increase(` call in
/// `expr`.
pub fn rate_ranges(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for function in ["rate(", "increase("] {
        let mut from = 0;
        while let Some(found) = expr[from..].find(function) {
            let start = from + found + function.len();
            from = start;
            // the call's argument: up to the matching closing parenthesis
            let mut depth = 1usize;
            let mut end = start;
            for (offset, c) in expr[start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = start + offset;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let argument = &expr[start..end];
            if let (Some(open), Some(close)) = (argument.rfind('['), argument.rfind(']')) {
                if open < close {
                    out.push(argument[open + 1..close].to_owned());
                }
            }
        }
    }
    out
}

/// Values for the dashboards' PromQL variables.
#[derive(Debug, Clone)]
pub struct PromVars {
    pub rate_interval: String,
    pub tenant_id: String,
    pub provider: String,
    pub model: String,
}

impl PromVars {
    /// Grafana's "All" selection (`allValue` is `.*`) and a rate interval for a fast scrape.
    pub fn all(rate_interval: &str) -> PromVars {
        PromVars {
            rate_interval: rate_interval.to_owned(),
            tenant_id: ".*".to_owned(),
            provider: ".*".to_owned(),
            model: ".*".to_owned(),
        }
    }
}

/// `expr` with Grafana's variables replaced; panics if a `$` is left.
pub fn substitute_promql(expr: &str, vars: &PromVars) -> String {
    let out = expr
        .replace("$__rate_interval", &vars.rate_interval)
        .replace("$tenant_id", &vars.tenant_id)
        .replace("$provider", &vars.provider)
        .replace("$model", &vars.model);
    assert!(
        !out.contains('$'),
        "unknown Grafana variable left in {out:?} (from {expr:?})"
    );
    out
}

/// Values for the dashboards' SQL macros. `from`/`to` are RFC 3339 timestamps, as Grafana
/// renders them; an empty selection list stands for "All" in the regex variables.
#[derive(Debug, Clone)]
pub struct SqlVars {
    pub from: String,
    pub to: String,
    pub tenant_ids: Vec<String>,
    pub regex_tenant_ids: Vec<String>,
    pub regex_providers: Vec<String>,
    pub regex_models: Vec<String>,
}

fn sql_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Grafana's `:regex` format: each value regex-escaped, several joined as `(a|b)`; "All" is the
/// variable's custom all value `.*`, unescaped.
fn regex_format(values: &[String]) -> String {
    const SPECIAL: &[char] = &[
        '\\', '/', '^', '$', '*', '+', '?', '.', '(', ')', '|', '[', ']', '{', '}',
    ];
    let escape = |v: &String| -> String {
        v.chars()
            .flat_map(|c| {
                let escaped = SPECIAL.contains(&c);
                escaped
                    .then_some('\\')
                    .into_iter()
                    .chain(std::iter::once(c))
            })
            .collect()
    };
    match values {
        [] => ".*".to_owned(),
        [one] => escape(one),
        many => format!(
            "({})",
            many.iter().map(escape).collect::<Vec<_>>().join("|")
        ),
    }
}

/// `sql` with the dashboards' macros expanded the way Grafana's PostgreSQL datasource does;
/// panics if an unknown `$` macro is left.
pub fn substitute_sql(sql: &str, vars: &SqlVars) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("$__timeFilter(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "$__timeFilter(".len()..];
        let close = after
            .find(')')
            .unwrap_or_else(|| panic!("unclosed $__timeFilter( in {sql:?}"));
        let column = after[..close].trim();
        out.push_str(&format!(
            "{column} BETWEEN {} AND {}",
            sql_quote(&vars.from),
            sql_quote(&vars.to)
        ));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    let tenants = vars
        .tenant_ids
        .iter()
        .map(|t| sql_quote(t))
        .collect::<Vec<_>>()
        .join(",");
    let out = out
        .replace("$__timeFrom()", &sql_quote(&vars.from))
        .replace("$__timeTo()", &sql_quote(&vars.to))
        .replace("${tenant_id:regex}", &regex_format(&vars.regex_tenant_ids))
        .replace("${provider:regex}", &regex_format(&vars.regex_providers))
        .replace("${model:regex}", &regex_format(&vars.regex_models))
        .replace("$tenant_id", &tenants);
    // `$` may remain legitimately only as the regex anchor `$'`.
    let stray = out
        .match_indices('$')
        .any(|(i, _)| !out[i + 1..].starts_with('\''));
    assert!(
        !stray,
        "unknown Grafana macro left in {out:?} (from {sql:?})"
    );
    out
}
