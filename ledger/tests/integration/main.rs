//! The ledger's integration tests, one binary: pure, no I/O (the built-in price book, rating,
//! imports, the providers' usage formats against golden responses).

mod builtin_book;
mod event_pricing_fields;
mod litellm_import;
mod native_usage;
mod rating;
mod tenant_pricing;
mod usage_golden;
