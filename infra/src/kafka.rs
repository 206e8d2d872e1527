//! What every librdkafka client of both binaries shares: the client
//! context that routes librdkafka's logs and errors into tracing (one log
//! shape, target `librdkafka`), which errors mean the broker refuses a
//! producer itself, and the operator's extra `kafka.properties`, whose
//! credentials are never shown.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize, Serializer};

use crate::secret::{is_secret_name, REDACTED};

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
/// [`REDACTED`] when printed, debugged or serialized.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    fn shown(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| {
            let value = if is_secret_name(name) {
                REDACTED
            } else {
                value.as_str()
            };
            (name.as_str(), value)
        })
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
        Self(map)
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
}
