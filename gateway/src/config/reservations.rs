//! The `[reservations]` section (how long an unsettled reservation holds
//! its money) and the `[forecasts]` section (the window of the burn-rate
//! forecasts the budget status shows).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReservationsConfig {
    /// The hold's lifetime when a request names none: long enough for one
    /// LLM call and its usage report to arrive.
    #[serde(alias = "default_ttl", deserialize_with = "infra::duration::secs_u32")]
    pub default_ttl_s: u32,
    /// The longest lifetime a request may ask for; a hold that outlives its
    /// call only keeps other calls from the budget.
    #[serde(alias = "max_ttl", deserialize_with = "infra::duration::secs_u32")]
    pub max_ttl_s: u32,
}

impl Default for ReservationsConfig {
    fn default() -> Self {
        Self {
            default_ttl_s: 300,
            max_ttl_s: 3600,
        }
    }
}

/// The `[forecasts]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastConfig {
    /// Seconds of the trailing window whose spend rate a forecast carries
    /// to the end of the period (cut to the period's start).
    #[serde(alias = "window", deserialize_with = "infra::duration::secs_u32")]
    pub window_s: u32,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self { window_s: 86_400 }
    }
}

impl ReservationsConfig {
    /// The problem with the section, if any.
    pub fn check(&self) -> Result<(), String> {
        if self.max_ttl_s == 0 {
            return Err("reservations.max_ttl_s must be at least 1".to_owned());
        }
        if self.default_ttl_s == 0 || self.default_ttl_s > self.max_ttl_s {
            return Err(format!(
                "reservations.default_ttl_s must be between 1 and max_ttl_s ({})",
                self.max_ttl_s
            ));
        }
        Ok(())
    }
}
