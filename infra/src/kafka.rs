//! What every librdkafka client of both binaries shares: the client
//! context that routes librdkafka's logs and errors into tracing (one log
//! shape, target `librdkafka`), which errors mean the broker refuses a
//! producer itself, and the operator's extra `kafka.properties`, whose
//! credentials are never shown.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::{is_secret_name, read_secret_file, REDACTED};

mod replaceable;
mod section;

pub use replaceable::Replaceable;
pub use section::{DEFAULT_BROKERS, DEFAULT_TOPIC};

/// Forwards one librdkafka log line to tracing at its level. Clients with
/// a context of their own call this from their `ClientContext::log`.
pub fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Logs a client-level error librdkafka reports and says whether it is
/// fatal (after which the client can do nothing more).
pub fn report_error(error: &KafkaError, reason: &str) -> bool {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => {
            tracing::error!(%error, reason, "kafka client hit a fatal error; it cannot deliver or consume any more records");
            true
        }
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
            // librdkafka repeats these on every reconnect attempt and has
            // already logged the underlying connection failure itself.
            tracing::debug!(%error, reason, "kafka client error");
            false
        }
        _ => {
            tracing::warn!(%error, reason, "kafka client error");
            false
        }
    }
}

/// A client context that logs through [`forward_log`] and
/// [`report_error`] and remembers a fatal error, after which an idempotent
/// producer can deliver nothing more.
#[derive(Debug, Default)]
pub struct LogContext {
    fatal: Arc<AtomicBool>,
}

impl LogContext {
    /// The flag [`LogContext`] raises on a fatal error, to watch after the
    /// context has moved into its client.
    pub fn fatal_flag(&self) -> Arc<AtomicBool> {
        self.fatal.clone()
    }
}

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if report_error(&error, reason) {
            self.fatal.store(true, Ordering::Relaxed);
        }
    }
}

/// An idempotent producer whose records timed out bumps its epoch
/// (KIP-360); a broker that refuses the bumped epoch, or has forgotten the
/// producer id (after losing its state), answers every later record of that
/// producer with one of these. Both binaries' producers replace themselves
/// on them, or every later record would fail alike.
pub fn producer_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// Extra librdkafka settings (`kafka.properties`), applied verbatim. The
/// value of a property whose name marks a credential (`sasl.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, …) is shown as
/// [`REDACTED`] when printed, debugged or serialized. `<name>_file` (no
/// librdkafka property ends so) sets `<name>` from that file's content, as
/// a secret setting's `_file` twin does, and is shown as the file's path.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>, BTreeMap<String, PathBuf>);

impl Properties {
    fn shown(&self) -> impl Iterator<Item = (&str, String)> {
        self.0.iter().map(|(name, value)| {
            let value = if let Some(path) = self.1.get(name) {
                format!("<read from file {}>", path.display())
            } else if is_secret_name(name) {
                REDACTED.to_owned()
            } else {
                value.clone()
            };
            (name.as_str(), value)
        })
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let given = BTreeMap::<String, String>::deserialize(deserializer)?;
        let mut properties = Self::default();
        for (name, value) in given {
            let Some(target) = name.strip_suffix("_file") else {
                if properties.1.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "kafka.properties: {name:?} and {name}_file are both set: keep one"
                    )));
                }
                properties.0.insert(name, value);
                continue;
            };
            if properties.0.contains_key(target) {
                return Err(serde::de::Error::custom(format!(
                    "kafka.properties: {target:?} and {name:?} are both set: keep one"
                )));
            }
            let secret = read_secret_file(PathBuf::from(value)).map_err(|error| {
                serde::de::Error::custom(format!("kafka.properties.{name:?}: {error}"))
            })?;
            properties
                .0
                .insert(target.to_owned(), secret.expose().to_owned());
            if let Some(path) = secret.file() {
                properties.1.insert(target.to_owned(), path.to_owned());
            }
        }
        Ok(properties)
    }
}

impl Deref for Properties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<BTreeMap<String, String>> for Properties {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map, BTreeMap::new())
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.shown()).finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_is_told_apart_from_record_errors() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::UnknownProducerId,
            RDKafkaErrorCode::InvalidProducerIdMapping,
        ] {
            assert!(
                producer_fenced(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(
                !producer_fenced(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_fatal_error_raises_the_flag_and_others_do_not() {
        use rdkafka::ClientContext;
        let context = LogContext::default();
        let fatal = context.fatal_flag();
        context.error(
            KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown),
            "down",
        );
        assert!(!fatal.load(Ordering::Relaxed));
        context.error(
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal),
            "fenced",
        );
        assert!(fatal.load(Ordering::Relaxed));
    }

    #[test]
    fn credential_properties_are_never_shown() {
        let properties = Properties::from(BTreeMap::from([
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("ssl.key.pem".to_owned(), "-----BEGIN hunter2".to_owned()),
            ("client.id".to_owned(), "gateway-1".to_owned()),
        ]));
        let printed = toml::to_string(&properties).expect("serializes");
        let debugged = format!("{properties:?}");
        for shown in [&printed, &debugged] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("gateway-1"), "{shown}");
        }
        let applied: Vec<(&String, &String)> = properties.into_iter().collect();
        assert!(applied.iter().any(|(_, value)| *value == "hunter2"));
    }

    #[test]
    fn a_property_is_read_from_its_file_and_shown_as_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sasl_password");
        std::fs::write(&path, "hunter2\n").expect("write");
        let text = format!(
            "\"sasl.password_file\" = \"{}\"\n\"sasl.username\" = \"svc\"\n",
            path.display()
        );
        let properties: Properties = toml::from_str(&text).expect("parses");
        assert_eq!(
            properties.get("sasl.password").map(String::as_str),
            Some("hunter2")
        );
        assert!(!properties.contains_key("sasl.password_file"));
        let shown = toml::to_string(&properties).expect("renders");
        assert!(
            shown.contains(&format!("<read from file {}>", path.display())),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let missing = "\"sasl.password_file\" = \"/nonexistent/pw\"\n";
        let error = toml::from_str::<Properties>(missing).expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/pw"), "{error}");
    }
}
