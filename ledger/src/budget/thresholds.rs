//! Thresholds: the percentages of a budget's amount that raise an alert,
//! which of them a spend has reached, and which a change of spend crosses.
//! Exact decimal arithmetic, no floats.

use rust_decimal::Decimal;

/// Thresholds of a budget that does not name its own, in percent.
pub const DEFAULT_THRESHOLDS: [u16; 4] = [50, 75, 90, 100];
/// Highest threshold: overrun alerts up to 10× the amount.
pub const MAX_THRESHOLD_PERCENT: u16 = 1000;
pub const MAX_THRESHOLDS: usize = 20;

/// The spend at which threshold `percent` of `amount` is reached.
pub fn threshold_amount(amount: Decimal, percent: u16) -> Decimal {
    amount * Decimal::from(percent) / Decimal::ONE_HUNDRED
}

/// Whether `spend` has reached `percent` of `amount` (`spend × 100 >=
/// amount × percent`, exact).
pub fn has_reached(spend: Decimal, amount: Decimal, percent: u16) -> bool {
    spend * Decimal::ONE_HUNDRED >= amount * Decimal::from(percent)
}

/// The thresholds `spend` has reached, ascending.
pub fn reached(spend: Decimal, amount: Decimal, thresholds: &[u16]) -> Vec<u16> {
    thresholds
        .iter()
        .copied()
        .filter(|percent| has_reached(spend, amount, *percent))
        .collect()
}

/// The thresholds a spend moving from `old` to `new` crosses: reached at
/// `new` but not at `old`, ascending. A jump from 40 % to 95 % crosses 50,
/// 75 and 90 at once.
pub fn crossed(old: Decimal, new: Decimal, amount: Decimal, thresholds: &[u16]) -> Vec<u16> {
    thresholds
        .iter()
        .copied()
        .filter(|percent| has_reached(new, amount, *percent) && !has_reached(old, amount, *percent))
        .collect()
}

/// `spend / amount` (0 for a non-positive amount), for gauges and status.
pub fn spend_ratio(spend: Decimal, amount: Decimal) -> Decimal {
    if amount <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    spend / amount
}
