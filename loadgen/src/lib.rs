//! tokenledger's traffic generator: realistic multi-tenant usage sent to a
//! gateway, for the demo and the benchmark.
//!
//! - [`traffic`]: what the events look like (tenants, models, tokens).
//! - [`drive`]: how they are sent (rate, concurrency, retries) and measured.

pub mod drive;
pub mod traffic;
