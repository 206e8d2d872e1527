//! `[exports]`: what the finance exports need besides the database.

use std::path::PathBuf;

use ledger::PriceBook;
use serde::{Deserialize, Serialize};

/// `[exports]`: what the exports need besides the database. Set both as
/// the processor has them (`pricing.pricebook_path`, `attribution.labels`)
/// and the gateway's exports equal `processor export`'s byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportsConfig {
    /// The price file laid over the built-in book; it divides a day's cost
    /// between token types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricebook_path: Option<PathBuf>,
    /// The attribution label keys; the first is the statements' use case.
    pub attribution_labels: Vec<String>,
}

impl Default for ExportsConfig {
    fn default() -> Self {
        Self {
            pricebook_path: None,
            attribution_labels: vec!["use_case".to_owned()],
        }
    }
}

impl ExportsConfig {
    /// The built-in price book with the configured file laid over it.
    pub fn price_book(&self) -> Result<PriceBook, String> {
        infra::pricebook::load(self.pricebook_path.as_deref()).map_err(|error| error.to_string())
    }

    pub fn validate(&self) -> Result<(), super::ConfigError> {
        store::attribution::validate_label_keys(
            "exports.attribution_labels",
            &self.attribution_labels,
        )
        .map_err(super::ConfigError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Env;

    use crate::config::{Config, ConfigError};

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).expect("write");
        Config::load_from(Some(&path), Env::prefixed("TOKENLEDGER_TEST_UNSET_"))
    }

    /// The processor refuses these label keys in `attribution.labels`; the
    /// gateway's exports read the same rollup and refuse them alike.
    #[test]
    fn attribution_labels_follow_the_processors_rule() {
        for (labels, refused) in [
            (r#"["use_case", "use_case"]"#, "twice"),
            (r#"["use case"]"#, "is not a label key"),
            (r#"[""]"#, "is not a label key"),
            (r#"["a","b","c","d","e","f","g","h","i"]"#, "at most 8"),
        ] {
            let error = load(&format!("[exports]\nattribution_labels = {labels}\n"))
                .expect_err(labels)
                .to_string();
            assert!(error.contains("exports.attribution_labels"), "{error}");
            assert!(error.contains(refused), "{labels}: {error}");
        }
        load("[exports]\nattribution_labels = [\"use_case\", \"team.name\"]\n")
            .expect("valid keys load");
    }
}
