//! The connections a listener accepts: how many may be open at once, and
//! how long a client may take to send its headers or leave a kept-alive
//! connection idle.

use std::time::Duration;

use crate::config::HttpConfig;

/// The limits each listener enforces on its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(http: &HttpConfig) -> Self {
        Self {
            header_read_timeout: http.header_read_timeout(),
            idle_timeout: http.idle_timeout(),
            max_connections: http.max_connections,
        }
    }
}
