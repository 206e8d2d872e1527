//! Durations in configuration: a setting named `…_ms` (or `…_secs`, `…_s`) reads
//! a whole number in its unit, as it always did, or a duration written as
//! one (`"30s"`, `"250ms"`, `"2m 30s"`); each such setting also answers to
//! its name without the unit (`request_timeout = "30s"`). The value is kept
//! in the unit of the name, so the code and the printed configuration stay
//! as they were.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A `…_ms` setting: a number of milliseconds or a duration.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(InUnit { unit: Unit::Millis })
}

/// A `…_secs` setting: a number of seconds or a duration.
pub fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(InUnit { unit: Unit::Secs })
}

/// A `…_s` setting held as `u32`: a number of seconds or a duration.
pub fn secs_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let secs = secs(deserializer)?;
    u32::try_from(secs).map_err(|_| de::Error::custom(format!("{secs} seconds is too long")))
}

/// An optional `…_ms` setting.
pub fn option_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    millis(deserializer).map(Some)
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Millis,
    Secs,
}

impl Unit {
    fn of(self, duration: Duration) -> Result<u64, String> {
        let (whole, name, exact) = match self {
            Unit::Millis => (
                duration.as_millis(),
                "milliseconds",
                duration.subsec_nanos() % 1_000_000 == 0,
            ),
            Unit::Secs => (
                u128::from(duration.as_secs()),
                "seconds",
                duration.subsec_nanos() == 0,
            ),
        };
        if !exact {
            return Err(format!("must be a whole number of {name}"));
        }
        u64::try_from(whole).map_err(|_| "is too long".to_owned())
    }
}

struct InUnit {
    unit: Unit,
}

impl Visitor<'_> for InUnit {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Millis => "milliseconds",
            Unit::Secs => "seconds",
        };
        write!(
            f,
            "a whole number of {unit} or a duration such as \"30s\" or \"250ms\""
        )
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        // An environment variable may carry a plain number as text.
        if let Ok(value) = text.trim().parse::<u64>() {
            return Ok(value);
        }
        let duration = humantime::parse_duration(text.trim())
            .map_err(|error| E::custom(format!("{text:?} is not a duration: {error}")))?;
        self.unit
            .of(duration)
            .map_err(|message| E::custom(format!("{text:?} {message}")))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Settings {
        #[serde(alias = "timeout", deserialize_with = "super::millis")]
        timeout_ms: u64,
        #[serde(alias = "skew", deserialize_with = "super::secs")]
        skew_secs: u64,
        #[serde(default, alias = "lateness", deserialize_with = "super::option_millis")]
        lateness_ms: Option<u64>,
    }

    fn read(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    #[test]
    fn numbers_keep_their_unit_and_durations_convert() {
        let old = read("timeout_ms = 2500\nskew_secs = 300\nlateness_ms = 10").expect("old keys");
        assert_eq!(
            (old.timeout_ms, old.skew_secs, old.lateness_ms),
            (2500, 300, Some(10))
        );
        let new =
            read("timeout = \"2.5s\"\nskew = \"5m\"\nlateness = \"250ms\"").expect("durations");
        assert_eq!(
            (new.timeout_ms, new.skew_secs, new.lateness_ms),
            (2500, 300, Some(250))
        );
        let mixed =
            read("timeout_ms = \"1m 30s\"\nskew_secs = \"2h\"").expect("durations under old keys");
        assert_eq!(
            (mixed.timeout_ms, mixed.skew_secs, mixed.lateness_ms),
            (90_000, 7200, None)
        );
    }

    #[test]
    fn what_is_not_a_duration_in_the_unit_is_refused_clearly() {
        for (text, said) in [
            ("timeout = \"soon\"\nskew = 1", "is not a duration"),
            (
                "timeout = \"1500us\"\nskew = 1",
                "whole number of milliseconds",
            ),
            ("timeout = 1\nskew = \"1500ms\"", "whole number of seconds"),
            ("timeout = -5\nskew = 1", "invalid value"),
            ("timeout = 1\ntimeout_ms = 2\nskew = 1", "duplicate"),
        ] {
            let error = read(text).expect_err(text);
            assert!(error.contains(said), "{text}: {error}");
        }
    }
}
