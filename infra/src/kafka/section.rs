//! The `[kafka]` section both binaries read. Its shared settings (where the
//! brokers are, which topic carries usage events, the operator's extra
//! librdkafka properties) are declared once, by [`kafka_config!`]; each
//! binary adds the settings of its own clients (the gateway's producer, the
//! processor's consumer and admin client).
//!
//! A macro rather than a struct the binaries flatten into theirs: through
//! `#[serde(flatten)]` figment reports an error in a flattened setting
//! against the section instead of the key, and against the last layer
//! that touched the section instead of the file or variable at fault.

/// Where both binaries look for the brokers by default.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// The topic the gateway appends to and the processor consumes.
pub const DEFAULT_TOPIC: &str = "usage-events";

/// Declares a binary's `[kafka]` section: `brokers`, `topic` and
/// `properties`, then the fields given, with the section's serde rules
/// (unknown keys refused, a missing key takes its default).
#[macro_export]
macro_rules! kafka_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Bootstrap servers, comma-separated `host:port`.
            pub brokers: String,
            /// The topic of usage events.
            pub topic: String,
            $( $(#[$field_meta])* pub $field: $ty, )*
            /// Extra librdkafka settings (security, tuning) for every
            /// client, applied verbatim.
            pub properties: $crate::kafka::Properties,
        }
    };
}
