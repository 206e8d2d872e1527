//! The text form of a timestamp on the Kafka wire: RFC 3339 in UTC, exactly
//! as chrono's serde form writes it, but without going through
//! `fmt::Display`. The gateway writes two timestamps per event and the
//! processor hashes them again; chrono's general formatter was a third of
//! the content hash's cost.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// Longest text the fast path writes: `2026-11-27T04:16:01.337870001Z`.
const MAX_LEN: usize = 30;

/// `serialize_with` for `DateTime<Utc>`: the same bytes as chrono's
/// `Serialize` (seconds always, fraction in 3, 6 or 9 digits when not zero,
/// `Z`), written by hand for years 0–9999; anything else (and leap seconds)
/// goes through chrono itself.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; MAX_LEN];
    match write(at, &mut buffer) {
        // Only ASCII digits and punctuation were written.
        Some(len) => match std::str::from_utf8(&buffer[..len]) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => at.serialize(serializer),
        },
        None => at.serialize(serializer),
    }
}

fn write(at: &DateTime<Utc>, out: &mut [u8; MAX_LEN]) -> Option<usize> {
    let year = at.year();
    let nanos = at.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut digits = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, year as u32, 4);
    digits(5, at.month(), 2);
    digits(8, at.day(), 2);
    digits(11, at.hour(), 2);
    digits(14, at.minute(), 2);
    digits(17, at.second(), 2);
    let (fraction, width) = if nanos == 0 {
        (0, 0)
    } else if nanos % 1_000_000 == 0 {
        (nanos / 1_000_000, 3)
    } else if nanos % 1_000 == 0 {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if width > 0 {
        digits(20, fraction, width);
    }
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    let mut len = 19;
    if width > 0 {
        out[19] = b'.';
        len += 1 + width;
    }
    out[len] = b'Z';
    Some(len + 1)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[derive(Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn same_as_chrono(at: DateTime<Utc>) {
        let chrono = serde_json::to_string(&at).expect("chrono");
        let fast = serde_json::to_string(&Fast(at)).expect("fast");
        assert_eq!(fast, chrono, "{at:?}");
    }

    #[test]
    fn every_fraction_width_and_the_edges_match_chrono() {
        let base = Utc.with_ymd_and_hms(2026, 11, 27, 4, 16, 1).unwrap();
        for nanos in [
            0,
            1,
            10,
            999,
            1_000,
            337_870_000,
            337_870_001,
            5_000_000,
            999_999_999,
        ] {
            same_as_chrono(base + chrono::Duration::nanoseconds(nanos));
        }
        same_as_chrono(DateTime::<Utc>::UNIX_EPOCH);
        same_as_chrono(Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap());
        same_as_chrono(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap());
        // outside the fast path: chrono writes these itself
        same_as_chrono(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
        same_as_chrono(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap());
        same_as_chrono(DateTime::<Utc>::MAX_UTC);
        same_as_chrono(DateTime::<Utc>::MIN_UTC);
    }

    proptest! {
        #[test]
        fn any_timestamp_is_written_as_chrono_writes_it(
            seconds in -62_135_596_800i64..253_402_300_799i64,
            nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000, (0u32..1000).prop_map(|n| n * 1_000_000), (0u32..1_000_000).prop_map(|n| n * 1_000)],
        ) {
            let at = DateTime::from_timestamp(seconds, nanos).expect("in range");
            same_as_chrono(at);
        }
    }
}
