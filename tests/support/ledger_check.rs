//! What a fault test knows it sent, and the one check every fault scenario ends with: the
//! database holds exactly the events the gateway answered 202 for, once each and with the
//! content that was sent; the rollups agree with the raw table and with those events; budget
//! spend and threshold crossings agree with the raw table; and the processors' counters agree
//! with the rows they stored.
//!
//! Counters restart at zero with their process and a SIGKILL loses what a process counted after
//! its last scrape, so the counter check takes [`CounterEvidence`]: the final scrapes of processes
//! that were never killed (exact for their lifetime), the last scrapes of killed ones, and the
//! instant from which only the former inserted rows. It then checks that nothing was counted
//! twice and that nothing stored after that instant went uncounted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::{wait_for, Database};

/// A small, fast, seedable generator (SplitMix64): tests log their seed so a failure can be
/// replayed with `FAULTS_SEED=<seed>`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed from `FAULTS_SEED` or the clock, printed so a failing run can be repeated.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: FAULTS_SEED={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high` (`high > low`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }

    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.range(0, denominator) < numerator
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }

    /// A version-4 UUID in text form.
    pub fn uuid(&mut self) -> String {
        uuid_v4(self.next_u64(), self.next_u64())
    }
}

/// The version-4 UUID text made from 128 random bits, given as two halves: the version and
/// variant bits are set, the rest is kept.
pub fn uuid_v4(random_high: u64, random_low: u64) -> String {
    let high = (random_high & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let low = (random_low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The UTC date of a Unix time, `YYYY-MM-DD`.
pub fn utc_date(unix_seconds: i64) -> String {
    let (y, m, d) = civil_from_days(unix_seconds.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn rfc3339(unix_seconds: i64) -> String {
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        utc_date(unix_seconds),
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60,
        seconds_of_day % 60
    )
}

/// A decimal string as an integer count of 1e-10 (the audit table's cost scale).
pub fn tenth_nanos(text: &str) -> i128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(10)
        .collect();
    let whole: i128 = whole.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let fraction: i128 = fraction.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    whole * 10_000_000_000 + fraction
}

/// One usage event as a test sends it, and what its row must then hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub id: String,
    pub created_at: i64,
    pub tenant: String,
    pub provider: String,
    pub model: String,
    pub prompt: i64,
    pub completion: i64,
    /// `estimated_cost` in micro-dollars (always sent, so the cost is known exactly).
    pub cost_micros: i64,
}

const PROVIDERS: [(&str, &str); 4] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet"),
    ("bedrock", "amazon.nova-pro-v1:0"),
];

impl Expected {
    /// A random event of one of `tenants`, created in the last ten minutes.
    pub fn random(rng: &mut Rng, tenants: &[&str]) -> Expected {
        let (provider, model) = *rng.pick(&PROVIDERS);
        Expected {
            id: rng.uuid(),
            created_at: unix_now() - rng.range(0, 600) as i64,
            tenant: (*rng.pick(tenants)).to_owned(),
            provider: provider.into(),
            model: model.into(),
            prompt: rng.range(1, 5_000) as i64,
            completion: rng.range(0, 2_000) as i64,
            cost_micros: rng.range(1, 20_000) as i64,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "created_at": rfc3339(self.created_at),
            "tenant_id": self.tenant,
            "provider": self.provider,
            "model": self.model,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "estimated_cost": format!("{}.{:06}", self.cost_micros / 1_000_000, self.cost_micros % 1_000_000),
        })
    }

    pub fn total(&self) -> i64 {
        self.prompt + self.completion
    }

    /// What the ledger files the event under: ids are unique per tenant only, so the same id
    /// sent by two tenants is two events.
    pub fn key(&self) -> EventKey {
        (self.tenant.clone(), self.id.clone())
    }

    pub fn cost(&self) -> i128 {
        i128::from(self.cost_micros) * 10_000
    }
}

/// `(tenant, id)`: how the ledger and `check_ledger` tell events apart. Stricter than the
/// database's key `(tenant_id, id, created_at)`: one tenant's id stored under two times is
/// reported as stored more than once.
pub type EventKey = (String, String);

/// The events a test saw acknowledged with 202 (shared between client tasks).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<BTreeMap<EventKey, Expected>>>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records a 202: every event of the request is acknowledged. A tenant's id acknowledged
    /// before keeps its first content (a conflicting reuse must not replace it).
    pub fn acknowledge(&self, events: &[Expected]) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            map.entry(event.key()).or_insert_with(|| event.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> BTreeMap<EventKey, Expected> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Counter values of one processor scrape, summed per tenant over providers and models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// tenant → (prompt, completion, total tokens, cost in USD)
    pub per_tenant: BTreeMap<String, (i64, i64, i64, f64)>,
    pub inserted: i64,
    pub duplicates: i64,
    pub conflicts: i64,
    /// reason → count
    pub dead_lettered: BTreeMap<String, i64>,
    pub db_retries: i64,
}

impl Counters {
    /// Parses the Prometheus text exposition of a processor's `/metrics`.
    pub fn parse(text: &str) -> Counters {
        let mut counters = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let label = |key: &str| label_value(labels, key).unwrap_or_default();
            let usage_index = match name {
                "axonflow_orchestrator_provider_prompt_tokens" => Some(0),
                "axonflow_orchestrator_provider_completion_tokens" => Some(1),
                "axonflow_orchestrator_provider_total_tokens" => Some(2),
                "axonflow_orchestrator_provider_total_cost" => Some(3),
                _ => None,
            };
            if let Some(index) = usage_index {
                let entry = counters
                    .per_tenant
                    .entry(label("tenant_id"))
                    .or_insert((0, 0, 0, 0.0));
                match index {
                    0 => entry.0 += value as i64,
                    1 => entry.1 += value as i64,
                    2 => entry.2 += value as i64,
                    _ => entry.3 += value,
                }
                continue;
            }
            match name {
                "tokenledger_events_inserted_total" => counters.inserted += value as i64,
                "tokenledger_events_duplicate_total" => counters.duplicates += value as i64,
                "tokenledger_events_conflict_total" => counters.conflicts += value as i64,
                "tokenledger_db_retries_total" => counters.db_retries += value as i64,
                "tokenledger_events_dead_lettered_total" => {
                    *counters.dead_lettered.entry(label("reason")).or_default() += value as i64
                }
                _ => {}
            }
        }
        counters
    }

    pub fn add(&mut self, other: &Counters) {
        for (tenant, (p, c, t, cost)) in &other.per_tenant {
            let entry = self
                .per_tenant
                .entry(tenant.clone())
                .or_insert((0, 0, 0, 0.0));
            entry.0 += p;
            entry.1 += c;
            entry.2 += t;
            entry.3 += cost;
        }
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        self.conflicts += other.conflicts;
        self.db_retries += other.db_retries;
        for (reason, n) in &other.dead_lettered {
            *self.dead_lettered.entry(reason.clone()).or_default() += n;
        }
    }

    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Counters {
        let mut total = Counters::default();
        for counters in all {
            total.add(counters);
        }
        total
    }
}

fn label_value(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// What the processors' counters must be checked against.
#[derive(Debug, Clone, Default)]
pub struct CounterEvidence {
    /// Final scrapes of processors that were never killed, taken after their last commit (still
    /// running, or idle at the end of the test).
    pub complete: Vec<Counters>,
    /// The last scrape of each killed (or otherwise stopped) processor; whatever it counted
    /// afterwards is lost with the process.
    pub partial: Vec<Counters>,
    /// Every row ingested at or after this instant was inserted by a `complete` processor. None:
    /// every row was (then the check is an equality).
    pub complete_since: Option<SystemTime>,
}

/// Budgets every fault test installs so that budget spend and threshold crossings are checked
/// under the fault: one per tenant per month over everything, one per tenant per day narrowed
/// to a provider. Small amounts, so thresholds are crossed during the test.
pub async fn install_budgets(client: &Client) {
    client
        .batch_execute(
            "INSERT INTO budgets (id, name, tenant_id, period, amount_usd, thresholds)
             VALUES (gen_random_uuid(), 'faults-monthly', '*', 'monthly', 0.5, '{10,50,90,100,500}'),
                    (gen_random_uuid(), 'faults-openai-daily', '*', 'daily', 0.2, '{25,50,75,100}')
             ON CONFLICT (name) DO NOTHING;
             UPDATE budgets SET provider = 'openai' WHERE name = 'faults-openai-daily';",
        )
        .await
        .unwrap_or_else(|e| panic!("cannot install the test budgets: {e}"));
}

/// The rows of a simple query as text (NULL as None).
pub async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"))
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A [`text_rows`] cell as an integer (NULL as 0).
pub fn int(cell: &Option<String>) -> i64 {
    cell.as_deref()
        .map(|t| t.parse().unwrap_or_else(|e| panic!("{t:?}: {e}")))
        .unwrap_or(0)
}

fn cost_cell(cell: &Option<String>) -> i128 {
    cell.as_deref().map(tenth_nanos).unwrap_or(0)
}

pub async fn row_count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM gateway_mode_audit", &[])
        .await
        .map(|row| row.get(0))
        .unwrap_or(-1)
}

/// Refreshes the four continuous aggregates over all time.
pub async fn refresh_rollups(client: &Client) {
    for view in ["usage_hourly", "usage_daily", "tenant_daily", "model_daily"] {
        refresh(
            client,
            &format!("CALL refresh_continuous_aggregate('{view}', NULL, NULL)"),
        )
        .await;
    }
}

/// Runs a refresh `call`. TimescaleDB refuses a refresh (55P03) while its scheduler refreshes an
/// overlapping window in the background, instead of waiting: the call is repeated until it runs.
pub async fn refresh(client: &Client, call: &str) {
    let ran = wait_for(Duration::from_secs(120), || async {
        match client.batch_execute(call).await {
            Ok(()) => true,
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => false,
            Err(e) => panic!("{call}: {e:?}"),
        }
    })
    .await;
    assert!(ran, "{call}: refused for 120 s by a concurrent refresh");
}

/// The rows in the raw table, on a new connection; unlike [`row_count`], a failed query panics.
pub async fn stored_row_count(database: &Database) -> i64 {
    database
        .client()
        .await
        .query_one("SELECT count(*) FROM gateway_mode_audit", &[])
        .await
        .expect("count")
        .get(0)
}

/// Waits (at most `timeout`) until the table holds at least `expected` rows, then a little longer
/// so that a late duplicate would show.
pub async fn wait_for_rows(client: &Client, expected: usize, timeout: Duration) {
    let reached = wait_for(timeout, || async {
        row_count(client).await >= expected as i64
    })
    .await;
    assert!(
        reached,
        "the table holds {} rows, {expected} expected, after {timeout:?}",
        row_count(client).await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// The check every fault scenario ends with; panics with everything that disagrees.
pub async fn check_ledger(client: &Client, ledger: &Ledger, counters: &CounterEvidence) {
    let expected = ledger.snapshot();
    assert!(!expected.is_empty(), "the test acknowledged no events");
    let mut problems = String::new();

    // 1. Exactly the acknowledged events, once each, with their content.
    let rows = text_rows(
        client,
        "SELECT id::text, tenant_id, provider, model, prompt_tokens, completion_tokens,
                total_tokens, estimated_cost::text, extract(epoch FROM created_at)::bigint
         FROM gateway_mode_audit",
    )
    .await;
    let mut stored: BTreeMap<EventKey, Vec<&Vec<Option<String>>>> = BTreeMap::new();
    for row in &rows {
        let key = (
            row[1].clone().unwrap_or_default(),
            row[0].clone().unwrap_or_default(),
        );
        stored.entry(key).or_default().push(row);
    }
    let missing: Vec<&EventKey> = expected
        .keys()
        .filter(|key| !stored.contains_key(*key))
        .collect();
    let extra: Vec<&EventKey> = stored
        .keys()
        .filter(|key| !expected.contains_key(*key))
        .collect();
    let repeated: Vec<(&EventKey, usize)> = stored
        .iter()
        .filter(|(_, rows)| rows.len() != 1)
        .map(|(key, rows)| (key, rows.len()))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            problems,
            "{} acknowledged events are missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    if !extra.is_empty() {
        let _ = writeln!(
            problems,
            "{} stored events were never acknowledged, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(5)]
        );
    }
    if !repeated.is_empty() {
        let _ = writeln!(problems, "stored more than once: {repeated:?}");
    }
    let mut wrong_content = 0;
    for (key, event) in &expected {
        let Some(row) = stored.get(key).and_then(|rows| rows.first()) else {
            continue;
        };
        let matches = row[1].as_deref() == Some(&event.tenant)
            && row[2].as_deref() == Some(&event.provider)
            && row[3].as_deref() == Some(&event.model)
            && int(&row[4]) == event.prompt
            && int(&row[5]) == event.completion
            && int(&row[6]) == event.total()
            && cost_cell(&row[7]) == event.cost()
            && int(&row[8]) == event.created_at;
        if !matches {
            wrong_content += 1;
            if wrong_content <= 3 {
                let _ = writeln!(
                    problems,
                    "row {row:?} differs from what was sent: {event:?}"
                );
            }
        }
    }
    if wrong_content > 3 {
        let _ = writeln!(problems, "... {wrong_content} rows differ in all");
    }

    // 2. Rollups, refreshed, agree with the raw table, and their totals with the events.
    for (aggregate, width) in [
        ("usage_hourly", "1 hour"),
        ("usage_daily", "1 day"),
        ("tenant_daily", "1 day"),
        ("model_daily", "1 day"),
    ] {
        refresh(
            client,
            &format!(
                "CALL refresh_continuous_aggregate('{aggregate}', NULL, time_bucket(INTERVAL '{width}', now()))"
            ),
        )
        .await;
    }
    for (view, bucket, keys) in [
        ("usage_hourly", "1 hour", "tenant_id, provider, model"),
        ("usage_daily", "1 day", "tenant_id, provider, model"),
        ("tenant_daily", "1 day", "tenant_id"),
        ("model_daily", "1 day", "provider, model"),
    ] {
        let differing = rollup_disagreement(client, view, bucket, keys).await;
        if differing != 0 {
            let _ = writeln!(
                problems,
                "{view}: {differing} rows disagree with the raw table"
            );
        }
    }
    let want_requests = expected.len() as i64;
    let want_tokens: i64 = expected.values().map(Expected::total).sum();
    let want_cost: i128 = expected.values().map(Expected::cost).sum();
    for view in ["usage_daily", "tenant_daily", "model_daily"] {
        let totals = text_rows(
            client,
            &format!(
                "SELECT COALESCE(sum(requests), 0), COALESCE(sum(total_tokens), 0), COALESCE(sum(cost), 0)::text FROM {view}"
            ),
        )
        .await;
        let got = (
            int(&totals[0][0]),
            int(&totals[0][1]),
            cost_cell(&totals[0][2]),
        );
        if got != (want_requests, want_tokens, want_cost) {
            let _ = writeln!(
                problems,
                "{view} totals (requests, tokens, cost) {got:?}, acknowledged events {:?}",
                (want_requests, want_tokens, want_cost)
            );
        }
    }

    // 3. Budget spend and crossings agree with the raw table.
    problems.push_str(&budget_disagreements(client).await);

    // 4. Counters agree with the stored rows.
    problems.push_str(&counter_disagreements(client, counters).await);

    assert!(
        problems.is_empty(),
        "the database does not hold exactly the acknowledged events ({} acknowledged, {} rows):\n{problems}",
        expected.len(),
        rows.len()
    );
}

/// Rows where `view` and the same sums over the raw table differ, both directions.
async fn rollup_disagreement(client: &Client, view: &str, bucket: &str, keys: &str) -> i64 {
    let time = if view == "usage_hourly" {
        "bucket"
    } else {
        "day"
    };
    let sql = format!(
        "WITH raw AS (
            SELECT time_bucket(INTERVAL '{bucket}', created_at) AS {time}, {keys},
                   count(*) AS requests,
                   sum(prompt_tokens)::BIGINT AS prompt_tokens,
                   sum(completion_tokens)::BIGINT AS completion_tokens,
                   sum(total_tokens)::BIGINT AS total_tokens,
                   sum(estimated_cost) AS cost
            FROM gateway_mode_audit GROUP BY {time}, {keys}),
         rollup AS (
            SELECT {time}, {keys}, requests, prompt_tokens, completion_tokens, total_tokens, cost
            FROM {view})
         SELECT (SELECT count(*) FROM (SELECT * FROM raw EXCEPT SELECT * FROM rollup) a)
              + (SELECT count(*) FROM (SELECT * FROM rollup EXCEPT SELECT * FROM raw) b)"
    );
    int(&text_rows(client, &sql).await[0][0])
}

/// Every budget_spend row equals the raw sum of its scope and period; every (budget, tenant,
/// period) with matching rows has a spend row; recorded crossings are exactly the thresholds the
/// spend has reached.
async fn budget_disagreements(client: &Client) -> String {
    let mut problems = String::new();
    let matching = "a.created_at >= s.period_start AND a.created_at < s.period_end
                    AND a.tenant_id = s.tenant_id
                    AND (b.provider IS NULL OR a.provider = b.provider)
                    AND (b.model IS NULL OR a.model = b.model)
                    AND (b.label_key IS NULL OR a.labels ->> b.label_key = b.label_value)";
    let wrong_spend = text_rows(
        client,
        &format!(
            "SELECT b.name, s.tenant_id, s.period_start::text, s.spend_usd::text,
                    (SELECT COALESCE(sum(a.estimated_cost), 0) FROM gateway_mode_audit a WHERE {matching})::text
             FROM budget_spend s JOIN budgets b ON b.id = s.budget_id
             WHERE s.spend_usd <> (SELECT COALESCE(sum(a.estimated_cost), 0) FROM gateway_mode_audit a WHERE {matching})"
        ),
    )
    .await;
    if !wrong_spend.is_empty() {
        let _ = writeln!(
            problems,
            "budget spend differs from the raw table (budget, tenant, period, spend, raw): {wrong_spend:?}"
        );
    }
    // Tenants with usage this period but no spend row, for the budgets installed by the tests
    // (their periods are UTC months and days).
    let missing_spend = text_rows(
        client,
        "SELECT b.name, a.tenant_id, count(*)
         FROM gateway_mode_audit a JOIN budgets b
           ON (b.tenant_id = '*' OR b.tenant_id = a.tenant_id)
          AND (b.provider IS NULL OR a.provider = b.provider)
          AND (b.model IS NULL OR a.model = b.model)
          AND b.label_key IS NULL AND b.timezone = 'UTC'
         WHERE NOT EXISTS (
             SELECT 1 FROM budget_spend s
             WHERE s.budget_id = b.id AND s.tenant_id = a.tenant_id
               AND a.created_at >= s.period_start AND a.created_at < s.period_end)
         GROUP BY b.name, a.tenant_id",
    )
    .await;
    if !missing_spend.is_empty() {
        let _ = writeln!(
            problems,
            "usage without a budget spend row (budget, tenant, rows): {missing_spend:?}"
        );
    }
    let wrong_crossings = text_rows(
        client,
        "WITH reached AS (
             SELECT s.budget_id, s.tenant_id, s.period_start, t AS threshold
             FROM budget_spend s JOIN budgets b ON b.id = s.budget_id, unnest(b.thresholds) t
             WHERE s.spend_usd * 100 >= b.amount_usd * t),
         recorded AS (
             SELECT budget_id, tenant_id, period_start, threshold FROM budget_alerts)
         SELECT 'not recorded', * FROM (SELECT * FROM reached EXCEPT SELECT * FROM recorded) x
         UNION ALL
         SELECT 'not reached', * FROM (SELECT * FROM recorded EXCEPT SELECT * FROM reached) y",
    )
    .await;
    if !wrong_crossings.is_empty() {
        let _ = writeln!(
            problems,
            "threshold crossings disagree with the spend: {wrong_crossings:?}"
        );
    }
    let crossings = text_rows(client, "SELECT count(*) FROM budget_alerts").await;
    if int(&crossings[0][0]) == 0 {
        let _ = writeln!(
            problems,
            "no budget threshold was crossed: the test budgets saw no spend"
        );
    }
    problems
}

/// Per tenant: (rows, prompt, completion, total, cost) of rows ingested since `since`.
async fn stored_per_tenant(
    client: &Client,
    since: Option<SystemTime>,
) -> BTreeMap<String, (i64, i64, i64, i64, i128)> {
    let filter = match since {
        Some(since) => {
            let unix = since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            format!("WHERE ingested_at >= to_timestamp({unix})")
        }
        None => String::new(),
    };
    text_rows(
        client,
        &format!(
            "SELECT tenant_id, count(*), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
                    sum(estimated_cost)::text
             FROM gateway_mode_audit {filter} GROUP BY tenant_id"
        ),
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap_or_default(),
            (int(&r[1]), int(&r[2]), int(&r[3]), int(&r[4]), cost_cell(&r[5])),
        )
    })
    .collect()
}

async fn counter_disagreements(client: &Client, evidence: &CounterEvidence) -> String {
    let mut problems = String::new();
    if evidence.complete.is_empty() {
        return "no final processor scrape was given to the check\n".into();
    }
    let all_rows = stored_per_tenant(client, None).await;
    let complete = Counters::sum(&evidence.complete);
    let counted = Counters::sum(evidence.complete.iter().chain(&evidence.partial));
    let exact = evidence.partial.is_empty() && evidence.complete_since.is_none();
    let tenants: BTreeSet<&String> = all_rows.keys().chain(counted.per_tenant.keys()).collect();
    let usd = |tenth_nanos: i128| tenth_nanos as f64 / 1e10;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
    let zero = (0, 0, 0, 0, 0);

    // Never counted twice: everything counted is at most what is stored.
    for tenant in &tenants {
        let stored = all_rows.get(*tenant).copied().unwrap_or(zero);
        let (p, c, t, cost) = counted
            .per_tenant
            .get(*tenant)
            .copied()
            .unwrap_or((0, 0, 0, 0.0));
        let over = p > stored.1 || c > stored.2 || t > stored.3 || cost > usd(stored.4) + 1e-6;
        let differs =
            p != stored.1 || c != stored.2 || t != stored.3 || !close(cost, usd(stored.4));
        if over || (exact && differs) {
            let _ = writeln!(
                problems,
                "tenant {tenant}: counters (prompt, completion, total, cost) {:?}, stored {:?}",
                (p, c, t, cost),
                (stored.1, stored.2, stored.3, usd(stored.4))
            );
        }
    }
    let stored_rows: i64 = all_rows.values().map(|v| v.0).sum();
    if counted.inserted > stored_rows || (exact && counted.inserted != stored_rows) {
        let _ = writeln!(
            problems,
            "tokenledger_events_inserted_total {} for {stored_rows} stored rows",
            counted.inserted
        );
    }
    // Nothing stored after `complete_since` went uncounted.
    if let Some(since) = evidence.complete_since {
        let recent = stored_per_tenant(client, Some(since)).await;
        let recent_rows: i64 = recent.values().map(|v| v.0).sum();
        if recent_rows == 0 {
            let _ = writeln!(problems, "no row was stored by the final processors");
        }
        if complete.inserted < recent_rows {
            let _ = writeln!(
                problems,
                "final processors counted {} inserted events, stored {recent_rows} since they took over",
                complete.inserted
            );
        }
        for (tenant, stored) in &recent {
            let (p, c, t, cost) = complete
                .per_tenant
                .get(tenant)
                .copied()
                .unwrap_or((0, 0, 0, 0.0));
            if p < stored.1 || c < stored.2 || t < stored.3 || cost + 1e-6 < usd(stored.4) {
                let _ = writeln!(
                    problems,
                    "tenant {tenant}: final processors counted {:?}, stored since they took over {:?}",
                    (p, c, t, cost),
                    (stored.1, stored.2, stored.3, usd(stored.4))
                );
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_per_tenant() {
        let text = "# HELP x\n\
            axonflow_orchestrator_provider_total_tokens{model=\"m\",provider=\"p\",tenant_id=\"a\"} 10\n\
            axonflow_orchestrator_provider_total_tokens{model=\"n\",provider=\"p\",tenant_id=\"a\"} 5\n\
            axonflow_orchestrator_provider_total_cost{model=\"n\",provider=\"p\",tenant_id=\"b\"} 0.25\n\
            tokenledger_events_inserted_total 3\n\
            tokenledger_events_dead_lettered_total{reason=\"conflict\"} 2\n";
        let counters = Counters::parse(text);
        assert_eq!(counters.per_tenant["a"], (0, 0, 15, 0.0));
        assert_eq!(counters.per_tenant["b"].3, 0.25);
        assert_eq!(counters.inserted, 3);
        assert_eq!(counters.dead_lettered["conflict"], 2);
    }

    #[test]
    fn rng_is_reproducible_and_uuids_are_v4() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(a.uuid(), b.uuid());
        let id = a.uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(tenth_nanos("0.000123"), 1_230_000);
    }
}
