//! The text form of a timestamp on the Kafka wire: RFC 3339 in UTC, exactly
//! as chrono's serde form writes and reads it, but without going through
//! `fmt::Display` or chrono's general parser. The gateway writes two
//! timestamps per event and the processor reads them back and hashes them
//! again; chrono's general formatter was a third of the content hash's
//! cost, and its relaxed RFC 3339 parser a fifth of decoding a record.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveTime, Timelike, Utc};
use serde::{Deserializer, Serialize, Serializer};

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

/// `deserialize_with` for `DateTime<Utc>`: what chrono's `Deserialize`
/// gives (any RFC 3339 offset, converted to UTC; the same errors), with the
/// form [`serialize`] writes read by hand.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = DateTime<Utc>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an RFC 3339 formatted date and time string")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match parse_utc(text) {
                Some(at) => Ok(at),
                None => text
                    .parse::<DateTime<FixedOffset>>()
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(E::custom),
            }
        }
    }
    deserializer.deserialize_str(Visitor)
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, the form [`serialize`] writes; `None`
/// for anything else (other offsets, lower-case separators, leap seconds,
/// more than nine fraction digits), which chrono parses instead.
fn parse_utc(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes.last() != Some(&b'Z') {
        return None;
    }
    let number = |from: usize, width: usize| -> Option<u32> {
        bytes[from..from + width]
            .iter()
            .try_fold(0u32, |value, byte| {
                byte.is_ascii_digit()
                    .then(|| value * 10 + u32::from(byte - b'0'))
            })
    };
    let punctuation = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if punctuation.iter().any(|&(at, byte)| bytes[at] != byte) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(0, 4)?).ok()?,
        number(5, 2)?,
        number(8, 2)?,
    )?;
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    let nanos = match &bytes[19..bytes.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            number(20, fraction.len())? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
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

    #[derive(Debug, serde::Deserialize)]
    struct Read(#[serde(deserialize_with = "deserialize")] DateTime<Utc>);

    /// Reads `text` both ways: the same time, or both refuse it with the
    /// same message.
    fn read_as_chrono(text: &str) {
        let json = serde_json::to_string(text).expect("a JSON string");
        let chrono = serde_json::from_str::<DateTime<Utc>>(&json).map_err(|e| e.to_string());
        let fast = serde_json::from_str::<Read>(&json)
            .map(|read| read.0)
            .map_err(|e| e.to_string());
        assert_eq!(fast, chrono, "{text:?}");
    }

    #[test]
    fn the_written_form_and_its_look_alikes_are_read_as_chrono_reads_them() {
        for text in [
            "2026-11-27T04:16:01Z",
            "2026-11-27T04:16:01.3Z",
            "2026-11-27T04:16:01.337870Z",
            "2026-11-27T04:16:01.337870001Z",
            "2026-11-27T04:16:01.3378700012Z",
            "2026-11-27T04:16:01.Z",
            "2026-11-27T04:16:60Z",
            "2026-11-27T23:59:60.5Z",
            "2026-11-27T24:00:00Z",
            "2026-02-29T04:16:01Z",
            "2024-02-29T04:16:01Z",
            "2026-13-27T04:16:01Z",
            "2026-11-27t04:16:01z",
            "2026-11-27 04:16:01Z",
            "2026-11-27T04:16:01+02:00",
            "2026-11-27T04:16:01.5-00:30",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "+2026-11-27T04:16:01Z",
            "2026-11-27T04:16:01",
            "2026-1-27T04:16:01Z",
            "2026-11-27T04:16:0aZ",
            "",
            "Z",
        ] {
            read_as_chrono(text);
        }
    }

    proptest! {
        #[test]
        fn any_written_timestamp_is_read_back_as_chrono_reads_it(
            seconds in -62_135_596_800i64..253_402_300_799i64,
            nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000, (0u32..1000).prop_map(|n| n * 1_000_000)],
            cut in 0usize..32,
            byte in any::<u8>(),
        ) {
            let at = DateTime::from_timestamp(seconds, nanos).expect("in range");
            let text = serde_json::to_value(Fast(at)).expect("written");
            let text = text.as_str().expect("a string").to_owned();
            read_as_chrono(&text);
            // and the same text with one byte changed
            let mut bytes = text.into_bytes();
            let at = cut % bytes.len();
            bytes[at] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                read_as_chrono(&changed);
            }
        }

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
