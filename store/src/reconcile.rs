//! The providers' own usage and cost reports as stored (sql/V16): fetch
//! runs, immutable day revisions and their rows; and the ledger's side of a
//! reconciliation, the audit rows summed per day, tenant and model in the
//! same disjoint token kinds; and the comparison of the two
//! ([`reconciliation`]), shared by `processor reconcile` and the gateway.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::{db, DbError};

pub mod compare;
mod comparison;
mod ledger_side;

pub use comparison::{reconciliation, Reconciliation, Revised, TenantSummary, Terms, PROVIDERS};
pub use ledger_side::{ledger_groups, LedgerGroup};

/// The token kinds both sides are compared in: disjoint, so their sum is
/// every token billed (reasoning is inside `output`, as both providers'
/// reports count it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub input_uncached: i64,
    pub cache_read: i64,
    pub cache_write_5m: i64,
    pub cache_write_1h: i64,
    pub output: i64,
}

/// The kinds' names, as `provider_cost_rows.token_kind` and reports spell them.
pub const TOKEN_KINDS: [&str; 5] = [
    "input_uncached",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
    "output",
];

impl TokenCounts {
    pub fn get(&self, kind: &str) -> i64 {
        match kind {
            "input_uncached" => self.input_uncached,
            "cache_read" => self.cache_read,
            "cache_write_5m" => self.cache_write_5m,
            "cache_write_1h" => self.cache_write_1h,
            "output" => self.output,
            _ => 0,
        }
    }

    pub fn total(&self) -> i64 {
        TOKEN_KINDS.iter().map(|kind| self.get(kind)).sum()
    }

    pub fn add(&mut self, other: &TokenCounts) {
        self.input_uncached += other.input_uncached;
        self.cache_read += other.cache_read;
        self.cache_write_5m += other.cache_write_5m;
        self.cache_write_1h += other.cache_write_1h;
        self.output += other.output;
    }
}

/// Which of a provider's two reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Usage,
    Cost,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Cost => "cost",
        }
    }
}

/// One result of a usage report, for one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageLine {
    pub scope_id: String,
    pub api_key_id: Option<String>,
    pub model: String,
    pub service_tier: Option<String>,
    pub tokens: TokenCounts,
    pub requests: Option<i64>,
    pub raw: serde_json::Value,
}

/// One result of a cost report, for one day, in USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostLine {
    pub scope_id: String,
    pub model: Option<String>,
    pub token_kind: Option<String>,
    pub line_item: Option<String>,
    pub amount_usd: Decimal,
    pub raw: serde_json::Value,
}

/// What a report said about one day.
#[derive(Debug, Clone, PartialEq)]
pub enum DayLines {
    Usage(Vec<UsageLine>),
    Cost(Vec<CostLine>),
}

impl DayLines {
    fn len(&self) -> usize {
        match self {
            Self::Usage(lines) => lines.len(),
            Self::Cost(lines) => lines.len(),
        }
    }

    /// SHA-256 of the lines in a canonical order, so a report that lists
    /// the same results in another order is not a revision.
    fn content_sha256(&self) -> Vec<u8> {
        let mut serialized: Vec<String> = match self {
            Self::Usage(lines) => lines.iter().map(canonical_json).collect(),
            Self::Cost(lines) => lines.iter().map(canonical_json).collect(),
        };
        serialized.sort_unstable();
        let mut hasher = Sha256::new();
        for line in &serialized {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
        hasher.finalize().to_vec()
    }
}

fn canonical_json<T: Serialize>(line: &T) -> String {
    // serde_json's Value keeps object keys sorted (no preserve_order), so
    // going through it gives one spelling per content.
    serde_json::to_value(line)
        .map(|value| value.to_string())
        .unwrap_or_default()
}

/// What storing one day of a completed fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayOutcome {
    pub day: NaiveDate,
    /// The revision now latest for the day.
    pub revision: i32,
    /// False when the day's content equals its latest revision's.
    pub new_revision: bool,
    pub rows: usize,
}

/// Records the start of a fetch, in its own statement: a fetch that fails
/// later leaves this row, never marked complete.
pub async fn start_run(
    client: &impl GenericClient,
    run_id: Uuid,
    provider: &str,
    report: ReportKind,
    from: NaiveDate,
    to: NaiveDate,
    query: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO provider_fetch_runs (run_id, provider, report, from_day, to_day, query)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&run_id, &provider, &report.as_str(), &from, &to, &query],
        )
        .await
        .map_err(db("recording the start of a provider report fetch"))?;
    Ok(())
}

/// Records why a fetch stopped; its run stays incomplete.
pub async fn fail_run(
    client: &impl GenericClient,
    run_id: Uuid,
    error: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE provider_fetch_runs SET error = $2
             WHERE run_id = $1 AND completed_at IS NULL",
            &[&run_id, &error],
        )
        .await
        .map_err(db("recording a failed provider report fetch"))?;
    Ok(())
}

/// Stores every day of a fetch whose pages all arrived, and marks the run
/// complete, in the caller's transaction: either all of it lands or none.
/// A day whose content differs from its latest revision (or has none yet)
/// gets the next revision; an unchanged day gets nothing new.
pub async fn complete_run(
    transaction: &Transaction<'_>,
    run_id: Uuid,
    provider: &str,
    pages: i32,
    days: &[(NaiveDate, DayLines)],
) -> Result<Vec<DayOutcome>, DbError> {
    let mut outcomes = Vec::with_capacity(days.len());
    for (day, lines) in days {
        let report = match lines {
            DayLines::Usage(_) => ReportKind::Usage,
            DayLines::Cost(_) => ReportKind::Cost,
        };
        let sha = lines.content_sha256();
        // Two fetches of the same day racing: the lock makes the second see
        // the first's revision instead of both claiming the same number.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text || '/' || $3::date::text, 0))",
                &[&provider, &report.as_str(), day],
            )
            .await
            .map_err(db("locking a provider report day"))?;
        let latest = transaction
            .query_opt(
                "SELECT revision, content_sha256 FROM provider_report_revisions
                 WHERE provider = $1 AND report = $2 AND day = $3
                 ORDER BY revision DESC LIMIT 1",
                &[&provider, &report.as_str(), day],
            )
            .await
            .map_err(db("reading a provider report day's latest revision"))?;
        let (latest_revision, latest_sha) = match &latest {
            Some(row) => (
                row.try_get::<_, i32>("revision")
                    .map_err(db("reading a revision number"))?,
                row.try_get::<_, Vec<u8>>("content_sha256")
                    .map_err(db("reading a revision hash"))?,
            ),
            None => (0, Vec::new()),
        };
        if latest.is_some() && latest_sha == sha {
            outcomes.push(DayOutcome {
                day: *day,
                revision: latest_revision,
                new_revision: false,
                rows: lines.len(),
            });
            continue;
        }
        let revision = latest_revision + 1;
        let row_count = i32::try_from(lines.len()).unwrap_or(i32::MAX);
        transaction
            .execute(
                "INSERT INTO provider_report_revisions
                     (provider, report, day, revision, run_id, fetched_at, content_sha256, row_count)
                 VALUES ($1, $2, $3, $4, $5, now(), $6, $7)",
                &[&provider, &report.as_str(), day, &revision, &run_id, &sha, &row_count],
            )
            .await
            .map_err(db("storing a provider report revision"))?;
        insert_lines(transaction, provider, *day, revision, lines).await?;
        outcomes.push(DayOutcome {
            day: *day,
            revision,
            new_revision: true,
            rows: lines.len(),
        });
    }
    transaction
        .execute(
            "UPDATE provider_fetch_runs SET completed_at = now(), pages = $2, error = NULL
             WHERE run_id = $1",
            &[&run_id, &pages],
        )
        .await
        .map_err(db("marking a provider report fetch complete"))?;
    Ok(outcomes)
}

async fn insert_lines(
    transaction: &Transaction<'_>,
    provider: &str,
    day: NaiveDate,
    revision: i32,
    lines: &DayLines,
) -> Result<(), DbError> {
    match lines {
        DayLines::Usage(lines) => {
            let statement = transaction
                .prepare(
                    "INSERT INTO provider_usage_rows
                         (provider, day, revision, ordinal, scope_id, api_key_id, model,
                          service_tier, input_uncached, cache_read, cache_write_5m,
                          cache_write_1h, output, requests, raw)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .await
                .map_err(db("preparing the usage report insert"))?;
            for (ordinal, line) in (0i32..).zip(lines) {
                let t = &line.tokens;
                transaction
                    .execute(
                        &statement,
                        &[
                            &provider,
                            &day,
                            &revision,
                            &ordinal,
                            &line.scope_id,
                            &line.api_key_id,
                            &line.model,
                            &line.service_tier,
                            &t.input_uncached,
                            &t.cache_read,
                            &t.cache_write_5m,
                            &t.cache_write_1h,
                            &t.output,
                            &line.requests,
                            &line.raw,
                        ],
                    )
                    .await
                    .map_err(db("storing a usage report row"))?;
            }
        }
        DayLines::Cost(lines) => {
            let statement = transaction
                .prepare(
                    "INSERT INTO provider_cost_rows
                         (provider, day, revision, ordinal, scope_id, model, token_kind,
                          line_item, amount_usd, raw)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .await
                .map_err(db("preparing the cost report insert"))?;
            for (ordinal, line) in (0i32..).zip(lines) {
                transaction
                    .execute(
                        &statement,
                        &[
                            &provider,
                            &day,
                            &revision,
                            &ordinal,
                            &line.scope_id,
                            &line.model,
                            &line.token_kind,
                            &line.line_item,
                            &line.amount_usd,
                            &line.raw,
                        ],
                    )
                    .await
                    .map_err(db("storing a cost report row"))?;
            }
        }
    }
    Ok(())
}

/// The days in `[from, to)` that `report` of `provider` has a stored
/// revision for: the days a comparison can speak about.
pub async fn covered_days(
    client: &impl GenericClient,
    provider: &str,
    report: ReportKind,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<NaiveDate>, DbError> {
    let rows = client
        .query(
            "SELECT DISTINCT day FROM provider_report_revisions
             WHERE provider = $1 AND report = $2 AND day >= $3 AND day < $4 ORDER BY day",
            &[&provider, &report.as_str(), &from, &to],
        )
        .await
        .map_err(db("reading the days a provider report covers"))?;
    rows.iter()
        .map(|row| row.try_get("day").map_err(db("reading a covered day")))
        .collect()
}

/// The latest revision's usage rows of each day in `[from, to)`.
pub async fn latest_usage(
    client: &impl GenericClient,
    provider: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(NaiveDate, UsageLine)>, DbError> {
    let rows = client
        .query(
            "SELECT u.day, u.scope_id, u.api_key_id, u.model, u.service_tier, u.input_uncached,
                    u.cache_read, u.cache_write_5m, u.cache_write_1h, u.output, u.requests, u.raw
             FROM provider_usage_rows u
             JOIN (SELECT day, max(revision) AS revision FROM provider_report_revisions
                   WHERE provider = $1 AND report = 'usage' AND day >= $2 AND day < $3
                   GROUP BY day) latest USING (day, revision)
             WHERE u.provider = $1
             ORDER BY u.day, u.ordinal",
            &[&provider, &from, &to],
        )
        .await
        .map_err(db("reading the latest usage report rows"))?;
    let read = db("reading a usage report row");
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("day").map_err(&read)?,
                UsageLine {
                    scope_id: row.try_get("scope_id").map_err(&read)?,
                    api_key_id: row.try_get("api_key_id").map_err(&read)?,
                    model: row.try_get("model").map_err(&read)?,
                    service_tier: row.try_get("service_tier").map_err(&read)?,
                    tokens: TokenCounts {
                        input_uncached: row.try_get("input_uncached").map_err(&read)?,
                        cache_read: row.try_get("cache_read").map_err(&read)?,
                        cache_write_5m: row.try_get("cache_write_5m").map_err(&read)?,
                        cache_write_1h: row.try_get("cache_write_1h").map_err(&read)?,
                        output: row.try_get("output").map_err(&read)?,
                    },
                    requests: row.try_get("requests").map_err(&read)?,
                    raw: row.try_get("raw").map_err(&read)?,
                },
            ))
        })
        .collect()
}

/// The latest revision's cost rows of each day in `[from, to)`.
pub async fn latest_cost(
    client: &impl GenericClient,
    provider: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(NaiveDate, CostLine)>, DbError> {
    let rows = client
        .query(
            "SELECT c.day, c.scope_id, c.model, c.token_kind, c.line_item, c.amount_usd, c.raw
             FROM provider_cost_rows c
             JOIN (SELECT day, max(revision) AS revision FROM provider_report_revisions
                   WHERE provider = $1 AND report = 'cost' AND day >= $2 AND day < $3
                   GROUP BY day) latest USING (day, revision)
             WHERE c.provider = $1
             ORDER BY c.day, c.ordinal",
            &[&provider, &from, &to],
        )
        .await
        .map_err(db("reading the latest cost report rows"))?;
    let read = db("reading a cost report row");
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("day").map_err(&read)?,
                CostLine {
                    scope_id: row.try_get("scope_id").map_err(&read)?,
                    model: row.try_get("model").map_err(&read)?,
                    token_kind: row.try_get("token_kind").map_err(&read)?,
                    line_item: row.try_get("line_item").map_err(&read)?,
                    amount_usd: row.try_get("amount_usd").map_err(&read)?,
                    raw: row.try_get("raw").map_err(&read)?,
                },
            ))
        })
        .collect()
}

/// How many revisions each day of `report` has had, for the report's
/// "revised" note.
pub async fn revision_counts(
    client: &impl GenericClient,
    provider: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(NaiveDate, String, i32)>, DbError> {
    let rows = client
        .query(
            "SELECT day, report, max(revision) AS revisions FROM provider_report_revisions
             WHERE provider = $1 AND day >= $2 AND day < $3
             GROUP BY day, report ORDER BY day, report",
            &[&provider, &from, &to],
        )
        .await
        .map_err(db("counting provider report revisions"))?;
    let read = db("reading a revision count");
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("day").map_err(&read)?,
                row.try_get("report").map_err(&read)?,
                row.try_get("revisions").map_err(&read)?,
            ))
        })
        .collect()
}
