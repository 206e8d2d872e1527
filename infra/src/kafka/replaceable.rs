//! [`Replaceable`]: a producer that is made anew when the broker fences it.
//!
//! An idempotent producer whose records timed out bumps its epoch
//! (KIP-360). A broker that refuses the bumped epoch, or has forgotten the
//! producer id, answers every later record of that producer with the same
//! error ([`super::producer_fenced`]), so without a new producer every
//! later send would fail alike, even after the broker came back.

use std::sync::{Arc, PoisonError, RwLock};

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

/// How to make a client from its settings.
pub type Make<T> = fn(&ClientConfig) -> Result<T, KafkaError>;

/// The client in use and what it takes to make another. Sends in flight
/// keep the client they started with.
pub struct Replaceable<T> {
    config: ClientConfig,
    make: Make<T>,
    /// How log lines name it: "Kafka producer", "dead-letter producer".
    what: &'static str,
    current: RwLock<Arc<T>>,
}

impl<T> std::fmt::Debug for Replaceable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replaceable")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Replaceable<T> {
    /// The first client, made from `config` by `make`.
    pub fn new(
        config: ClientConfig,
        make: Make<T>,
        what: &'static str,
    ) -> Result<Self, KafkaError> {
        let first = make(&config)?;
        Ok(Self {
            config,
            make,
            what,
            current: RwLock::new(Arc::new(first)),
        })
    }

    /// The client to send with now.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `fenced` with a new client (a new producer id), unless
    /// another send already did. Records the old client still holds fail
    /// and are reported as not delivered; their retries go through the new
    /// one.
    pub fn replace(&self, fenced: &Arc<T>) {
        let what = self.what;
        let replacement = match (self.make)(&self.config) {
            Ok(client) => Arc::new(client),
            Err(error) => {
                tracing::error!(%error, "cannot create a replacement {what}");
                return;
            }
        };
        let old = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&current, fenced) {
                return;
            }
            std::mem::replace(&mut *current, replacement)
        };
        tracing::warn!("the broker fenced the {what}; replaced it with a new one");
        // Destroying a librdkafka handle blocks until its threads stop.
        tokio::task::spawn_blocking(move || drop(old));
    }
}
