//! The gateway's Prometheus metrics, in a registry of their own, and their
//! text exposition for `/metrics`.
//!
//! Label values are always drawn from small fixed sets (route templates,
//! status codes, rejection reasons); tenant ids and keys never become
//! labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric")]
    Register(#[from] prometheus::Error),
    #[error("metrics text is not UTF-8")]
    Encoding(#[from] std::string::FromUtf8Error),
}

/// Why events were refused. A request refused before its body was parsed
/// (unauthorized, too large, wrong media type, malformed) counts once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Invalid,
    Malformed,
    UnsupportedMediaType,
    Unauthorized,
    Forbidden,
    /// A key not trusted with `estimated_cost` sent one.
    CallerCost,
    /// Dated further back than the key's lateness allows.
    TooLate,
    TooLarge,
    QueueFull,
    Timeout,
    Unavailable,
    ShuttingDown,
}

impl RejectReason {
    pub const ALL: [Self; 12] = [
        Self::Invalid,
        Self::Malformed,
        Self::UnsupportedMediaType,
        Self::Unauthorized,
        Self::Forbidden,
        Self::CallerCost,
        Self::TooLate,
        Self::TooLarge,
        Self::QueueFull,
        Self::Timeout,
        Self::Unavailable,
        Self::ShuttingDown,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Malformed => "malformed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::CallerCost => "caller_cost",
            Self::TooLate => "too_late",
            Self::TooLarge => "too_large",
            Self::QueueFull => "queue_full",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// The port a connection came in on, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Api,
    Admin,
}

impl Port {
    pub const ALL: [Self; 2] = [Self::Api, Self::Admin];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Admin => "admin",
        }
    }
}

/// Events a response refused, attached to the response by the error that
/// refused them and counted once, by the middleware every route shares, so
/// no handler counts refusals itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub events: usize,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    events_accepted_total: IntCounter,
    events_rejected_total: IntCounterVec,
    request_duration_seconds: HistogramVec,
    produce_duration_seconds: Histogram,
    inflight_requests: IntGauge,
    connections_open: IntGaugeVec,
    connections_refused_total: IntCounterVec,
    header_read_timeouts_total: IntCounterVec,
    otlp_spans_total: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "tokenledger_gateway_requests_total",
                "HTTP requests answered, by route template and status code.",
            ),
            &["route", "status"],
        )?;
        let events_accepted_total = IntCounter::new(
            "tokenledger_gateway_events_accepted_total",
            "Usage events answered 202: acknowledged by Kafka.",
        )?;
        let events_rejected_total = IntCounterVec::new(
            Opts::new(
                "tokenledger_gateway_events_rejected_total",
                "Usage events refused, by reason; a request refused before its body was parsed counts once.",
            ),
            &["reason"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tokenledger_gateway_request_duration_seconds",
                "Time from receiving a request to answering it, by route template.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        let produce_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tokenledger_gateway_produce_duration_seconds",
                "Time to append one request's events to Kafka, until every record is acknowledged or failed.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let inflight_requests = IntGauge::new(
            "tokenledger_gateway_inflight_requests",
            "HTTP requests being handled right now.",
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "tokenledger_gateway_connections_open",
                "Client connections open, by port.",
            ),
            &["listener"],
        )?;
        let connections_refused_total = IntCounterVec::new(
            Opts::new(
                "tokenledger_gateway_connections_refused_total",
                "Connections refused because the port had http.max_connections open.",
            ),
            &["listener"],
        )?;
        let header_read_timeouts_total = IntCounterVec::new(
            Opts::new(
                "tokenledger_gateway_header_read_timeouts_total",
                "Connections closed because a request's headers took longer than http.header_read_timeout_ms.",
            ),
            &["listener"],
        )?;
        let otlp_spans_total = IntCounterVec::new(
            Opts::new(
                "tokenledger_gateway_otlp_spans_total",
                "Spans received on POST /v1/traces, by outcome: event (became a usage event), without_usage (ignored), duplicate (a call another span of the request reported), refused (usage that could not be attributed or read).",
            ),
            &["outcome"],
        )?;
        let up = IntGauge::new(
            "tokenledger_gateway_up",
            "1 while the gateway process runs.",
        )?;
        up.set(1);

        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(events_accepted_total.clone()))?;
        registry.register(Box::new(events_rejected_total.clone()))?;
        // Every reason is exported from the start at 0: a series that first
        // appears at 1 hides that increment from rate() and increase(), and
        // the first 503s are the ones an alert should see.
        for reason in RejectReason::ALL {
            events_rejected_total.with_label_values(&[reason.as_label()]);
        }
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(produce_duration_seconds.clone()))?;
        registry.register(Box::new(inflight_requests.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_refused_total.clone()))?;
        registry.register(Box::new(header_read_timeouts_total.clone()))?;
        for port in Port::ALL {
            connections_open.with_label_values(&[port.as_label()]);
            connections_refused_total.with_label_values(&[port.as_label()]);
            header_read_timeouts_total.with_label_values(&[port.as_label()]);
        }
        registry.register(Box::new(otlp_spans_total.clone()))?;
        for outcome in ["event", "without_usage", "duplicate", "refused"] {
            otlp_spans_total.with_label_values(&[outcome]);
        }
        registry.register(Box::new(up))?;
        Ok(Self {
            registry,
            requests_total,
            events_accepted_total,
            events_rejected_total,
            request_duration_seconds,
            produce_duration_seconds,
            inflight_requests,
            connections_open,
            connections_refused_total,
            header_read_timeouts_total,
            otlp_spans_total,
        })
    }

    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        self.requests_total
            .with_label_values(&[route, status_label(status)])
            .inc();
        self.request_duration_seconds
            .with_label_values(&[route])
            .observe(seconds);
    }

    pub fn accepted(&self, events: usize) {
        self.events_accepted_total.inc_by(events as u64);
    }

    pub fn rejected(&self, reason: RejectReason, events: usize) {
        self.events_rejected_total
            .with_label_values(&[reason.as_label()])
            .inc_by(events as u64);
    }

    /// Spans of `POST /v1/traces` by outcome (a fixed set of labels).
    pub fn otlp_spans(&self, outcome: &'static str, spans: usize) {
        self.otlp_spans_total
            .with_label_values(&[outcome])
            .inc_by(spans as u64);
    }

    pub fn observe_produce(&self, seconds: f64) {
        self.produce_duration_seconds.observe(seconds);
    }

    /// Counts a request as in flight until the guard is dropped, so a
    /// request abandoned mid-way (client gone, timeout) is still released.
    pub fn inflight_guard(&self) -> InflightGuard {
        self.inflight_requests.inc();
        InflightGuard {
            gauge: self.inflight_requests.clone(),
        }
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection_guard(&self, port: Port) -> ConnectionGuard {
        let gauge = self.connections_open.with_label_values(&[port.as_label()]);
        gauge.inc();
        ConnectionGuard { gauge }
    }

    pub fn connection_refused(&self, port: Port) {
        self.connections_refused_total
            .with_label_values(&[port.as_label()])
            .inc();
    }

    pub fn header_read_timed_out(&self, port: Port) {
        self.header_read_timeouts_total
            .with_label_values(&[port.as_label()])
            .inc();
    }

    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8(buffer)?)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[derive(Debug)]
pub struct InflightGuard {
    gauge: IntGauge,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Status codes as static strings, so label values stay bounded even if a
/// handler invents an unusual code.
fn status_label(status: u16) -> &'static str {
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (202, "202"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (413, "413"),
        (415, "415"),
        (500, "500"),
        (503, "503"),
    ];
    if let Some((_, label)) = KNOWN.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_family() {
        let metrics = Metrics::new().expect("metrics");
        metrics.observe_request("/v1/usage", 202, 0.01);
        metrics.accepted(3);
        metrics.rejected(RejectReason::Invalid, 2);
        metrics.observe_produce(0.002);
        let guard = metrics.inflight_guard();
        let connection = metrics.connection_guard(Port::Api);
        metrics.connection_refused(Port::Admin);
        let text = metrics.render().expect("render");
        drop(guard);
        drop(connection);
        for name in [
            "tokenledger_gateway_requests_total{route=\"/v1/usage\",status=\"202\"} 1",
            "tokenledger_gateway_events_accepted_total 3",
            "tokenledger_gateway_events_rejected_total{reason=\"invalid\"} 2",
            "tokenledger_gateway_request_duration_seconds_bucket",
            "tokenledger_gateway_produce_duration_seconds_bucket",
            "tokenledger_gateway_inflight_requests 1",
            "tokenledger_gateway_up 1",
            "tokenledger_gateway_events_rejected_total{reason=\"unavailable\"} 0",
            "tokenledger_gateway_events_rejected_total{reason=\"queue_full\"} 0",
            "tokenledger_gateway_connections_open{listener=\"api\"} 1",
            "tokenledger_gateway_connections_refused_total{listener=\"admin\"} 1",
            "tokenledger_gateway_header_read_timeouts_total{listener=\"api\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        let text = metrics.render().expect("render");
        assert!(text.contains("tokenledger_gateway_inflight_requests 0"));
        assert!(text.contains("tokenledger_gateway_connections_open{listener=\"api\"} 0"));
    }
}
