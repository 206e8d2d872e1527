//! What tokenledger's gateway and processor both run on, written once.
//!
//! Layout:
//! - [`cli`]: the flags both command lines take (`--config`,
//!   `--print-config`, `--log-format`).
//! - [`config`]: the configuration layering (defaults → TOML file →
//!   `TOKENLEDGER_<SECTION>__<KEY>` variables filtered to the binary's own
//!   sections) and the `--print-config` path; each binary keeps its typed
//!   `Config`.
//! - [`secret`]: [`secret::Secret`], the type of every credential-bearing
//!   setting, and [`secret::redact`], the one rule for showing one.
//! - [`database`]: the `[database]` section, the bounded Postgres pool and
//!   single connections.
//! - [`pricebook`]: the built-in price book with the operator's file laid
//!   over it.
//! - [`logging`]: log lines on stderr, text or JSON, `TOKENLEDGER_LOG`.
//! - [`signals`]: SIGTERM / SIGINT to a graceful shutdown, twice to exit.
//! - [`kafka`]: the librdkafka client context (log hook, fatal errors),
//!   producer fencing and the producer replaced when fenced, `kafka.properties` with hidden credentials, and the
//!   `[kafka]` settings both binaries share ([`kafka_config!`]).

pub mod cli;
pub mod config;
pub mod database;
pub mod duration;
pub mod kafka;
pub mod logging;
pub mod pricebook;
pub mod secret;
pub mod signals;

pub use secret::Secret;
