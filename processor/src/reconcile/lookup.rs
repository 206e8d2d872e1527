//! What the comparison asks of the configuration and the price book: the
//! tenant of a provider project or workspace, the one name a model goes by
//! on both sides, and the book's rate of a token kind.

use chrono::{Duration, NaiveDate};
use ledger::PriceBook;
use rust_decimal::Decimal;

use super::compare::Lookup;
use super::{midnight, Provider, ReconcileConfig};

pub(super) struct ConfigLookup<'a> {
    config: &'a ReconcileConfig,
    book: &'a PriceBook,
    provider: Provider,
}

impl<'a> ConfigLookup<'a> {
    pub(super) fn new(
        config: &'a ReconcileConfig,
        book: &'a PriceBook,
        provider: Provider,
    ) -> Self {
        Self {
            config,
            book,
            provider,
        }
    }
}

impl Lookup for ConfigLookup<'_> {
    fn tenant(&self, scope_id: &str) -> Option<String> {
        match self.provider {
            Provider::Openai => self.config.openai.project_tenants.get(scope_id).cloned(),
            Provider::Anthropic => {
                let key = if scope_id.is_empty() {
                    "default"
                } else {
                    scope_id
                };
                self.config.anthropic.workspace_tenants.get(key).cloned()
            }
        }
    }

    /// The book entry's model name when the book knows the model (so
    /// `gpt-4o` sent by a caller and `gpt-4o-2024-08-06` in the report
    /// compare as one), else the name as given.
    fn model_key(&self, model: &str, day: NaiveDate) -> String {
        let noon = midnight(day) + Duration::hours(12);
        match self.book.resolve(self.provider.as_str(), model, noon) {
            Ok(resolution) if resolution.entry.model != "*" => resolution.entry.model.clone(),
            _ => model.to_owned(),
        }
    }

    fn book_rate(&self, model: &str, kind: &str, day: NaiveDate) -> Option<Decimal> {
        let noon = midnight(day) + Duration::hours(12);
        let price = self.book.lookup(self.provider.as_str(), model, noon)?;
        Some(match kind {
            "input_uncached" => price.input,
            "cache_read" => price.cache_read_rate(),
            "cache_write_5m" => price.cache_write_5m_rate(),
            "cache_write_1h" => price.cache_write_1h_rate(),
            "output" => price.output,
            _ => return None,
        })
    }

    fn reports_cache_writes(&self) -> bool {
        self.provider == Provider::Anthropic
    }
}
