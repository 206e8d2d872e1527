//! The price book both binaries rate with: the built-in one, with the
//! operator's price file (`pricing.pricebook_path`,
//! `exports.pricebook_path`, `reconciliation.pricebook_path`) laid over it.
//! `ledger` parses and checks; reading the file is here, since `ledger`
//! does no I/O.

use std::path::Path;

use ledger::{PriceBook, PriceBookError};

#[derive(Debug, thiserror::Error)]
pub enum PriceBookLoadError {
    #[error("cannot read the price book {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `path` is `(built in)` for the compiled-in book.
    #[error("invalid price book {path}: {source}")]
    Invalid {
        path: String,
        source: PriceBookError,
    },
}

/// The built-in price book, with the price file at `overlay` laid over it:
/// a provider/model in the file takes its whole price history from there.
pub fn load(overlay: Option<&Path>) -> Result<PriceBook, PriceBookLoadError> {
    let builtin = PriceBook::builtin().map_err(|source| PriceBookLoadError::Invalid {
        path: "(built in)".to_owned(),
        source,
    })?;
    let Some(path) = overlay else {
        return Ok(builtin);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PriceBookLoadError::Read {
        path: shown.clone(),
        source,
    })?;
    let overrides = PriceBook::from_toml(&text).map_err(|source| PriceBookLoadError::Invalid {
        path: shown,
        source,
    })?;
    Ok(builtin.with_overrides(overrides))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_file_the_book_is_the_built_in_one() {
        let book = load(None).expect("the built-in book loads");
        assert_eq!(
            book.version(),
            PriceBook::builtin().expect("parses").version()
        );
    }

    #[test]
    fn a_missing_or_invalid_file_is_an_error_naming_it() {
        let missing = load(Some(Path::new("/nonexistent/prices.toml"))).expect_err("missing");
        assert!(
            matches!(missing, PriceBookLoadError::Read { .. })
                && missing.to_string().contains("/nonexistent/prices.toml"),
            "{missing}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prices.toml");
        std::fs::write(&path, "not = [a price file").expect("write");
        let invalid = load(Some(&path)).expect_err("invalid");
        assert!(
            matches!(invalid, PriceBookLoadError::Invalid { .. })
                && invalid.to_string().contains("prices.toml"),
            "{invalid}"
        );
    }
}
