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
