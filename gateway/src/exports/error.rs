//! [`ExportApiError`]: the admin API error named after the exports, and
//! what the export code's own failures answer.

use store::exports::ExportError;

use crate::admin::{AdminApi, AdminApiError};

/// The exports, as their refusals name them.
#[derive(Debug)]
pub enum Exports {}

impl AdminApi for Exports {
    const NAME: &'static str = "exports";
    const VERB: &'static str = "are";
    const INVALID: &'static str = "invalid_export";
    const UNAVAILABLE: &'static str = "exports_unavailable";
}

pub type ExportApiError = AdminApiError<Exports>;

impl From<ExportError> for ExportApiError {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::Invalid(message) => Self::invalid(message),
            other => Self::unavailable(other),
        }
    }
}
