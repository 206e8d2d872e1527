//! Column values a row mapping parses rather than takes as stored: a text
//! column holding one of a domain type's names, a small integer holding a
//! percentage. A value the domain type does not know is an error of the
//! row's read, naming the column's value, never a default: the tables'
//! checks refuse such values, so meeting one means the code and the schema
//! disagree, and an alert or a budget read with a made-up period or zone
//! would be wrong without anyone seeing it.

use std::error::Error;
use std::fmt::Display;
use std::str::FromStr;

use ledger::budget::AlertKind;
use tokio_postgres::types::{FromSql, Type};

/// A text column parsed with `T`'s [`FromStr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<T>(pub T);

impl<'a, T> FromSql<'a> for Parsed<T>
where
    T: FromStr,
    T::Err: Display,
{
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        text.parse()
            .map(Parsed)
            .map_err(|e| format!("{text:?} is not a known value: {e}").into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// The `kind` column of `budget_alerts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind(pub AlertKind);

impl FromStr for Kind {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "threshold" => Ok(Kind(AlertKind::Threshold)),
            "forecast" => Ok(Kind(AlertKind::Forecast)),
            _ => Err("an alert is a threshold or a forecast"),
        }
    }
}

/// A `SMALLINT` percentage, which cannot be negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u16);

impl<'a> FromSql<'a> for Percent {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let value = i16::from_sql(ty, raw)?;
        u16::try_from(value)
            .map(Percent)
            .map_err(|_| format!("{value} is not a percentage").into())
    }

    fn accepts(ty: &Type) -> bool {
        <i16 as FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use chrono_tz::Tz;
    use ledger::Period;
    use tokio_postgres::types::ToSql;

    use super::*;

    fn text(value: &str) -> Vec<u8> {
        value.as_bytes().to_vec()
    }

    #[test]
    fn known_names_parse_and_unknown_ones_are_errors_naming_the_value() {
        let period = Parsed::<Period>::from_sql(&Type::TEXT, &text("weekly")).expect("parses");
        assert_eq!(period.0, Period::Weekly);
        let zone = Parsed::<Tz>::from_sql(&Type::VARCHAR, &text("Europe/Paris")).expect("parses");
        assert_eq!(zone.0, Tz::Europe__Paris);
        let kind = Parsed::<Kind>::from_sql(&Type::TEXT, &text("forecast")).expect("parses");
        assert_eq!(kind.0 .0, AlertKind::Forecast);

        let wrong = Parsed::<Period>::from_sql(&Type::TEXT, &text("fortnightly"))
            .expect_err("not a period");
        assert!(wrong.to_string().contains("\"fortnightly\""), "{wrong}");
        assert!(Parsed::<Tz>::from_sql(&Type::TEXT, &text("Mars/Olympus")).is_err());
        assert!(Parsed::<Kind>::from_sql(&Type::TEXT, &text("thresold")).is_err());
    }

    #[test]
    fn a_negative_percentage_is_an_error() {
        let mut raw = bytes::BytesMut::new();
        (-5i16).to_sql(&Type::INT2, &mut raw).expect("encodes");
        assert!(Percent::from_sql(&Type::INT2, &raw).is_err());
        let mut raw = bytes::BytesMut::new();
        80i16.to_sql(&Type::INT2, &mut raw).expect("encodes");
        assert_eq!(Percent::from_sql(&Type::INT2, &raw).expect("reads").0, 80);
    }
}
