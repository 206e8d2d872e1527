//! The `optimize` section: how often the optimization rollup's applier
//! adds the batches' deltas to the tables.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizeConfig {
    /// How often the deltas batches stored are added to
    /// `usage_optimize_daily` and `usage_optimize_histogram`: what readers
    /// of the tables themselves (the Optimization dashboard,
    /// `sql/reports/optimize_*.sql`) may lag by. The report and
    /// `/v1/reports/optimize` also read the deltas, so they do not lag.
    /// Longer gathers more batches per apply, which is what makes it cheap.
    #[serde(alias = "apply_interval", deserialize_with = "infra::duration::millis")]
    pub apply_interval_ms: u64,
}

impl Default for OptimizeConfig {
    fn default() -> Self {
        Self {
            apply_interval_ms: 2_000,
        }
    }
}

impl OptimizeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.apply_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "optimize.apply_interval_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn apply_interval(&self) -> Duration {
        Duration::from_millis(self.apply_interval_ms)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use std::path::Path;

    use figment::Jail;

    use crate::config::Config;

    #[test]
    fn the_apply_interval_is_a_duration_from_the_file_or_the_environment() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            assert_eq!(Config::default().optimize.apply_interval_ms, 2_000);
            jail.create_file("processor.toml", "[optimize]\napply_interval = \"5s\"\n")?;
            let config =
                Config::load(Some(Path::new("processor.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.optimize.apply_interval_ms, 5_000);
            jail.set_env("TOKENLEDGER_OPTIMIZE__APPLY_INTERVAL_MS", "750");
            let config =
                Config::load(Some(Path::new("processor.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.optimize.apply_interval_ms, 750);
            jail.set_env("TOKENLEDGER_OPTIMIZE__APPLY_INTERVAL_MS", "0");
            let error = Config::load(Some(Path::new("processor.toml")))
                .expect_err("an interval of 0 is refused");
            assert!(
                error.to_string().contains("optimize.apply_interval_ms"),
                "{error}"
            );
            Ok(())
        });
    }
}
