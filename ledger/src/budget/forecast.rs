//! Burn-rate forecasts: where a budget's spend will stand at the end of its
//! current period, and when it will reach the amount, from the rate of
//! spend over a trailing window. The window never reaches back before the
//! period's start (the budget's own period in its own time zone, not the
//! calendar month), so a new period starts from its own spend.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use super::PeriodBounds;

/// A budget's projection for its current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forecast {
    /// Spend at the period's end if the window's rate continues.
    pub forecast_usd: Decimal,
    /// When spend reaches the amount at that rate, if within the period;
    /// `now` when it already has.
    pub projected_exhaustion_at: Option<DateTime<Utc>>,
}

/// The trailing window of length `window` that ends at `now`, cut to the
/// period: the interval whose spend gives the rate.
pub fn trailing_window(period: PeriodBounds, now: DateTime<Utc>, window: Duration) -> PeriodBounds {
    let start = (now - window).max(period.start).min(now);
    PeriodBounds { start, end: now }
}

/// The forecast of a budget of `amount` that has `spend` so far this
/// `period` and spent `window_spend` in `window` (from
/// [`trailing_window`]).
pub fn forecast(
    amount: Decimal,
    spend: Decimal,
    window_spend: Decimal,
    window: PeriodBounds,
    period: PeriodBounds,
    now: DateTime<Utc>,
) -> Forecast {
    let window_seconds = Decimal::from((window.end - window.start).num_seconds());
    let left_seconds = Decimal::from((period.end - now).num_seconds().max(0));
    if window_seconds <= Decimal::ZERO || window_spend <= Decimal::ZERO {
        return Forecast {
            forecast_usd: spend,
            projected_exhaustion_at: (spend >= amount).then_some(now),
        };
    }
    let rate = window_spend / window_seconds;
    let forecast_usd = (spend + rate * left_seconds).round_dp(10);
    let projected_exhaustion_at = if spend >= amount {
        Some(now)
    } else {
        let seconds = ((amount - spend) / rate).ceil();
        i64::try_from(seconds)
            .ok()
            .and_then(|s| now.checked_add_signed(Duration::seconds(s)))
            .filter(|at| *at < period.end)
    };
    Forecast {
        forecast_usd,
        projected_exhaustion_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 4, day, hour, 0, 0)
            .single()
            .expect("valid")
    }

    fn april() -> PeriodBounds {
        PeriodBounds {
            start: at(1, 0),
            end: Utc
                .with_ymd_and_hms(2026, 5, 1, 0, 0, 0)
                .single()
                .expect("valid"),
        }
    }

    #[test]
    fn the_rate_of_the_window_is_carried_to_the_end_of_the_period() {
        // $24 in the last day, $100 so far, 10 days left: $340.
        let now = at(21, 0);
        let window = trailing_window(april(), now, Duration::days(1));
        assert_eq!(window.start, at(20, 0));
        let f = forecast(
            Decimal::from(300),
            Decimal::from(100),
            Decimal::from(24),
            window,
            april(),
            now,
        );
        assert_eq!(f.forecast_usd, Decimal::from(340));
        // $200 left at $1/h: in 200 hours, inside the period.
        assert_eq!(f.projected_exhaustion_at, Some(now + Duration::hours(200)));
    }

    #[test]
    fn the_window_does_not_reach_before_the_period_and_a_slow_rate_never_exhausts() {
        let now = at(1, 6);
        let window = trailing_window(april(), now, Duration::days(7));
        assert_eq!(window.start, april().start, "cut to the period's start");
        let f = forecast(
            Decimal::from(1000),
            Decimal::from(6),
            Decimal::from(6),
            window,
            april(),
            now,
        );
        // $1/h for the 714 hours left.
        assert_eq!(f.forecast_usd, Decimal::from(720));
        assert_eq!(f.projected_exhaustion_at, None);
    }

    #[test]
    fn no_spend_in_the_window_forecasts_the_spend_so_far() {
        let now = at(15, 0);
        let window = trailing_window(april(), now, Duration::days(1));
        let idle = forecast(
            Decimal::from(10),
            Decimal::from(4),
            Decimal::ZERO,
            window,
            april(),
            now,
        );
        assert_eq!(idle.forecast_usd, Decimal::from(4));
        assert_eq!(idle.projected_exhaustion_at, None);
        let spent = forecast(
            Decimal::from(10),
            Decimal::from(12),
            Decimal::ZERO,
            window,
            april(),
            now,
        );
        assert_eq!(spent.projected_exhaustion_at, Some(now));
    }
}
