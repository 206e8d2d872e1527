//! UTC days, the unit of every rollup, export, report and re-pricing range:
//! the day an instant falls on, and the midnight a day starts at.

use chrono::{DateTime, Duration, DurationRound, NaiveDate, NaiveTime, Utc};

/// The UTC day an instant falls on, as its midnight.
pub fn utc_day(at: DateTime<Utc>) -> DateTime<Utc> {
    // Truncation fails only past chrono's range, where the instant is its
    // own best answer.
    at.duration_trunc(Duration::days(1)).unwrap_or(at)
}

/// A UTC day's midnight.
pub fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_falls_on_the_day_whose_midnight_starts_it() {
        let day = NaiveDate::from_ymd_opt(2026, 3, 1).expect("day");
        let start = midnight(day);
        assert_eq!(start.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert_eq!(utc_day(start), start);
        let last_moment = start + Duration::days(1) - Duration::microseconds(1);
        assert_eq!(utc_day(last_moment), start);
        assert_eq!(
            utc_day(start + Duration::days(1)),
            midnight(day.succ_opt().expect("next"))
        );
    }
}
