//! Log-bucketed histograms: each bucket holds the values between two
//! consecutive powers of [`GAMMA`], so the bucket's midpoint is within
//! [`RELATIVE_ERROR`] of every value in it, whatever the value's size. A
//! percentile read from the counts is the midpoint of the bucket that holds
//! the exact nearest-rank percentile, hence within that error of it.

/// The stated precision of every percentile the optimization report shows.
pub const RELATIVE_ERROR: f64 = 0.01;

/// The ratio between bucket bounds: (1 + e) / (1 - e).
pub const GAMMA: f64 = (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR);

/// The bucket of the value 0 (and of nothing else).
pub const ZERO_BUCKET: i32 = i32::MIN;

/// The bucket of `value`: `b` with `GAMMA^(b-1) < value <= GAMMA^b`. Values
/// that are not positive and finite count as 0.
pub fn bucket(value: f64) -> i32 {
    if !(value.is_finite() && value > 0.0) {
        return ZERO_BUCKET;
    }
    // clamped: the smallest cost (1e-10) and the largest token count are
    // both some thousand buckets from 1, far inside i32
    (value.ln() / GAMMA.ln()).ceil().clamp(-1.0e9, 1.0e9) as i32
}

/// The value a bucket stands for: the point equally far, relatively, from
/// both bounds.
pub fn midpoint(bucket: i32) -> f64 {
    if bucket == ZERO_BUCKET {
        return 0.0;
    }
    2.0 * GAMMA.powi(bucket) / (GAMMA + 1.0)
}

/// The nearest-rank `p`-quantile (0 < p <= 1) of the values counted in
/// `buckets` (bucket, count; any order): the midpoint of the bucket holding
/// the value of rank ceil(p * n), as `percentile_disc(p)` ranks them.
/// `None` when nothing is counted.
pub fn quantile(buckets: &[(i32, i64)], p: f64) -> Option<f64> {
    let mut sorted: Vec<(i32, i64)> = buckets.iter().copied().filter(|b| b.1 > 0).collect();
    sorted.sort_unstable();
    let total: i64 = sorted.iter().map(|b| b.1).sum();
    if total == 0 {
        return None;
    }
    let rank = ((p * total as f64).ceil() as i64).clamp(1, total);
    let mut seen = 0;
    for (bucket, count) in sorted {
        seen += count;
        if seen >= rank {
            return Some(midpoint(bucket));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_within_the_stated_error_of_its_midpoint() {
        let mut value = 1.0e-10_f64;
        while value < 1.0e9 {
            let estimate = midpoint(bucket(value));
            assert!(
                (estimate - value).abs() <= RELATIVE_ERROR * value * (1.0 + 1e-9),
                "{value} -> {estimate}"
            );
            value *= 1.37;
        }
        for tokens in 1..5_000_u32 {
            let value = f64::from(tokens);
            let estimate = midpoint(bucket(value));
            assert!((estimate - value).abs() <= RELATIVE_ERROR * value * (1.0 + 1e-9));
        }
        assert_eq!(midpoint(bucket(0.0)), 0.0);
    }

    #[test]
    fn quantiles_rank_as_percentile_disc() {
        // 1..=100: p50 is 50, p95 is 95, p100 is 100
        let mut counts = std::collections::BTreeMap::new();
        for v in 1..=100 {
            *counts.entry(bucket(f64::from(v))).or_insert(0_i64) += 1;
        }
        let buckets: Vec<(i32, i64)> = counts.into_iter().collect();
        for (p, exact) in [(0.5, 50.0), (0.95, 95.0), (1.0, 100.0), (0.01, 1.0)] {
            let estimate = quantile(&buckets, p).expect("counted");
            assert!((estimate - exact).abs() <= RELATIVE_ERROR * exact * (1.0 + 1e-9));
        }
        assert_eq!(quantile(&[], 0.5), None);
    }
}
