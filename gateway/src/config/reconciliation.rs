//! `[reconciliation]`: what the gateway's reconciliation answer needs
//! besides the stored provider reports.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ledger::PriceBook;
use serde::{Deserialize, Serialize};
use store::reconcile::Terms;

/// `[reconciliation]`: what the comparison takes besides the stored rows.
/// Set it as the processor's `[reconcile]` (the same price file, bounds and
/// tenant maps; no admin keys) and the answer equals the processor's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconciliationConfig {
    /// The price file laid over the built-in book (the processor's
    /// `pricing.pricebook_path`): it names models and implied rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricebook_path: Option<PathBuf>,
    pub coverage_floor: f64,
    pub variance_ceiling: f64,
    pub openai: OpenAiTenants,
    pub anthropic: AnthropicTenants,
}

/// The bounds are checked finite at startup, so equality is total.
impl Eq for ReconciliationConfig {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiTenants {
    /// `proj_…` → tenant.
    pub project_tenants: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnthropicTenants {
    /// `wrkspc_…` → tenant; `"default"` is the default workspace.
    pub workspace_tenants: BTreeMap<String, String>,
}

impl Default for ReconciliationConfig {
    fn default() -> Self {
        Self {
            pricebook_path: None,
            coverage_floor: 0.99,
            variance_ceiling: 0.01,
            openai: OpenAiTenants::default(),
            anthropic: AnthropicTenants::default(),
        }
    }
}

impl ReconciliationConfig {
    pub fn terms(&self, provider: &str) -> Terms {
        Terms {
            coverage_floor: self.coverage_floor,
            variance_ceiling: self.variance_ceiling,
            tenants: if provider == "openai" {
                self.openai.project_tenants.clone()
            } else {
                self.anthropic.workspace_tenants.clone()
            },
        }
    }

    pub fn price_book(&self) -> Result<PriceBook, String> {
        infra::pricebook::load(self.pricebook_path.as_deref()).map_err(|error| error.to_string())
    }
}
