//! The periods of a budget: a day, a week (Monday to Sunday), a month or a
//! rolling window of the last 30 days, in the budget's own IANA time zone,
//! as a half-open UTC interval.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::event::printable;

/// A budget's calendar period kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Daily,
    /// Monday 00:00 to the next Monday 00:00, local time (ISO weeks).
    Weekly,
    Monthly,
    /// The trailing 30 local days, today included: `[local midnight 29
    /// days ago, next local midnight)`. The window moves by whole local
    /// days (the granularity the spend rows can represent exactly), so
    /// "the last 30 days" of a rolling budget drops one day at each local
    /// midnight rather than one event at a time.
    Rolling30d,
}

/// How many local days a rolling window spans.
pub const ROLLING_DAYS: u64 = 30;

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Rolling30d => "rolling_30d",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "daily" => Ok(Period::Daily),
            "weekly" => Ok(Period::Weekly),
            "monthly" => Ok(Period::Monthly),
            "rolling_30d" => Ok(Period::Rolling30d),
            _ => Err(format!(
                "must be \"daily\", \"weekly\", \"monthly\" or \"rolling_30d\", got {:?}",
                printable(text)
            )),
        }
    }
}

/// The half-open UTC interval `[start, end)` of one period of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeriodBounds {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl PeriodBounds {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

/// The calendar period of kind `period` in `timezone` that contains `at`.
///
/// A period starts at the first instant of its first local day. Where a DST
/// change skips local midnight (some zones switch at 00:00), the day starts
/// when the clocks resume; where midnight happens twice, at the first.
pub fn period_bounds(period: Period, timezone: Tz, at: DateTime<Utc>) -> PeriodBounds {
    let local_date = at.with_timezone(&timezone).date_naive();
    let (first_day, next_first_day) = match period {
        Period::Daily => (local_date, local_date.succ_opt()),
        Period::Weekly => {
            let monday = local_date
                - chrono::Days::new(u64::from(local_date.weekday().num_days_from_monday()));
            (monday, monday.checked_add_days(chrono::Days::new(7)))
        }
        Period::Monthly => {
            let first = local_date.with_day(1).unwrap_or(local_date);
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            };
            (first, next)
        }
        Period::Rolling30d => (
            local_date - chrono::Days::new(ROLLING_DAYS - 1),
            local_date.succ_opt(),
        ),
    };
    PeriodBounds {
        start: start_of_local_day(timezone, first_day),
        end: next_first_day.map_or(DateTime::<Utc>::MAX_UTC, |day| {
            start_of_local_day(timezone, day)
        }),
    }
}

/// Every period of kind `period` that contains `at` and has begun its last
/// day by `now`, oldest first: the one calendar period containing `at`, or
/// for a rolling window the windows ending on `at`'s local day and on each
/// later day up to `now`'s (at most 30). A late event counts toward each
/// of them, so today's window, whose spend row may have been computed
/// before the event arrived, gains it too; windows ending after `now`'s
/// day have no rows yet and are computed from the audit table when their
/// day comes.
pub fn periods_containing(
    period: Period,
    timezone: Tz,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<PeriodBounds> {
    let first = period_bounds(period, timezone, at);
    if period != Period::Rolling30d {
        return vec![first];
    }
    let mut windows = vec![first];
    let mut last = first;
    while windows.len() < ROLLING_DAYS as usize && last.end <= now {
        last = period_bounds(period, timezone, last.end);
        windows.push(last);
    }
    windows
}

/// The first instant whose local date in `timezone` is `day`.
fn start_of_local_day(timezone: Tz, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(NaiveTime::MIN);
    if let Some(start) = timezone.from_local_datetime(&midnight).earliest() {
        return start.with_timezone(&Utc);
    }
    // Midnight falls into a DST gap: the day begins where the gap ends.
    // Gaps are whole minutes long and never longer than a day.
    for minutes in 1..=24 * 60 {
        let candidate = midnight + Duration::minutes(minutes);
        if let Some(start) = timezone.from_local_datetime(&candidate).earliest() {
            return start.with_timezone(&Utc);
        }
    }
    // Unreachable for any real zone; fall back to the UTC reading.
    Utc.from_utc_datetime(&midnight)
}
