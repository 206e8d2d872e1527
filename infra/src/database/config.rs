//! The `[database]` section both binaries read: where Postgres is, how
//! many connections to keep, how long any wait on it may take. The
//! processor cannot run without its database (`DatabaseConfig<Secret>`);
//! the gateway's admin APIs run only when one is named
//! (`DatabaseConfig<Option<Secret>>`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DatabaseSettings;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    bound(serialize = "Url: Serialize + DatabaseUrl")
)]
pub struct DatabaseConfig<Url = Secret> {
    /// A libpq-style connection string: `host=… port=… user=…` or
    /// `postgres://…`. Without one (the gateway's default) the gateway's
    /// admin endpoints answer 503 and everything else works.
    #[serde(skip_serializing_if = "DatabaseUrl::is_unset")]
    pub url: Url,
    pub pool_size: usize,
    /// Upper bound on connecting and on any one query or transaction step;
    /// a database that hangs becomes an error.
    #[serde(alias = "timeout", deserialize_with = "crate::duration::millis")]
    pub timeout_ms: u64,
}

/// The stream's database: a local one by default, and a long bound, since
/// a batch's transaction and an operator's report may rightly take seconds.
impl Default for DatabaseConfig<Secret> {
    fn default() -> Self {
        Self {
            // No password: defaults are serialized by the layering, and a
            // Secret serializes redacted.
            url: "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into(),
            pool_size: 4,
            timeout_ms: 30_000,
        }
    }
}

/// A database that serves requests (the gateway's admin APIs): none by
/// default, and a bound a client waits out.
impl Default for DatabaseConfig<Option<Secret>> {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 4,
            timeout_ms: 2_000,
        }
    }
}

impl<Url> DatabaseConfig<Url> {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn settings_for<'a>(
        &'a self,
        url: &'a Secret,
        application_name: &'static str,
    ) -> DatabaseSettings<'a> {
        DatabaseSettings {
            url,
            pool_size: self.pool_size,
            timeout: self.timeout(),
            application_name,
            session_setup: None,
            statement_timeout: None,
        }
    }
}

impl DatabaseConfig<Secret> {
    /// How to connect, shown as `application_name` in `pg_stat_activity`.
    pub fn settings(&self, application_name: &'static str) -> DatabaseSettings<'_> {
        self.settings_for(&self.url, application_name)
    }
}

impl DatabaseConfig<Option<Secret>> {
    /// How to connect, when `url` is set.
    pub fn settings(&self, application_name: &'static str) -> Option<DatabaseSettings<'_>> {
        Some(self.settings_for(self.url.as_ref()?, application_name))
    }
}

/// A connection string that must be given, or one that may be absent (and
/// is then left out of the printed configuration).
pub trait DatabaseUrl {
    fn is_unset(&self) -> bool;
}

impl DatabaseUrl for Secret {
    fn is_unset(&self) -> bool {
        false
    }
}

impl DatabaseUrl for Option<Secret> {
    fn is_unset(&self) -> bool {
        self.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Optional {
        database: DatabaseConfig<Option<Secret>>,
    }

    #[test]
    fn an_absent_url_is_left_out_and_reads_back_absent() {
        let printed = toml::to_string(&Optional::default()).expect("renders");
        assert!(!printed.contains("url"), "{printed}");
        let parsed: Optional = toml::from_str(&printed).expect("parses back");
        assert_eq!(parsed, Optional::default());
    }

    #[test]
    fn a_timeout_reads_as_a_duration_or_milliseconds() {
        let parsed: Optional =
            toml::from_str("[database]\nurl = \"host=db\"\ntimeout = \"3s\"\n").expect("parses");
        assert_eq!(parsed.database.timeout_ms, 3_000);
        let settings = parsed.database.settings("test").expect("url set");
        assert_eq!(settings.timeout, Duration::from_secs(3));
        assert_eq!(settings.url.expose(), "host=db");
    }
}
