//! Prometheus metrics. Names and labels are a public contract: add, never rename.
//!
//! Labels never carry an IP, a delivery id or a raw event type (unbounded cardinality);
//! sources and routes are named in the config, so their label values are bounded.
//! Each gateway owns its registry, so several gateways in one process do not collide.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::queue::record::State;

/// The `outcome` label of `hookgate_requests_total`: what happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Duplicate,
    InFlight,
    InvalidSignature,
    Stale,
    InvalidPayload,
    Unrouted,
    RateLimited,
    TooLarge,
    UpstreamError,
    UpstreamTimeout,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    StoreError,
    HeadersTooLarge,
    IpNotAllowed,
    PenaltyBox,
    /// Queue mode: stored, answered 202.
    Queued,
    /// Queue mode: the delivery could not be stored, answered 503.
    QueueError,
    /// The client's or the process's body budget stayed full, answered 503.
    BodyBufferFull,
    /// Proxy mode: the upstream's circuit breaker is open, answered 503.
    CircuitOpen,
}

impl Outcome {
    /// Every outcome, pre-created at zero so a dashboard's `rate()` works from the first event.
    pub const ALL: [Outcome; 22] = [
        Outcome::Forwarded,
        Outcome::Duplicate,
        Outcome::InFlight,
        Outcome::InvalidSignature,
        Outcome::Stale,
        Outcome::InvalidPayload,
        Outcome::Unrouted,
        Outcome::RateLimited,
        Outcome::TooLarge,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::BadRequest,
        Outcome::StoreError,
        Outcome::HeadersTooLarge,
        Outcome::IpNotAllowed,
        Outcome::PenaltyBox,
        Outcome::Queued,
        Outcome::QueueError,
        Outcome::BodyBufferFull,
        Outcome::CircuitOpen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Duplicate => "duplicate",
            Outcome::InFlight => "in_flight",
            Outcome::InvalidSignature => "invalid_signature",
            Outcome::Stale => "stale",
            Outcome::InvalidPayload => "invalid_payload",
            Outcome::Unrouted => "unrouted",
            Outcome::RateLimited => "rate_limited",
            Outcome::TooLarge => "too_large",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::BadRequest => "bad_request",
            Outcome::StoreError => "store_error",
            Outcome::HeadersTooLarge => "headers_too_large",
            Outcome::IpNotAllowed => "ip_not_allowed",
            Outcome::PenaltyBox => "penalty_box",
            Outcome::Queued => "queued",
            Outcome::QueueError => "queue_error",
            Outcome::BodyBufferFull => "body_buffer_full",
            Outcome::CircuitOpen => "circuit_open",
        }
    }
}

/// A gauge that state rebuilt by each reload reports: only the latest owner writes it.
/// (A penalty box still used by requests from before a reload kept moving the gauge the
/// new box had reset, leaving an offset for good.)
pub struct LatestGauge {
    gauge: IntGauge,
    owner: Arc<AtomicU64>,
    generation: u64,
}

impl LatestGauge {
    /// A gauge with no other owner.
    pub fn alone(gauge: IntGauge) -> LatestGauge {
        LatestGauge {
            gauge,
            owner: Arc::new(AtomicU64::new(0)),
            generation: 0,
        }
    }

    pub fn set(&self, value: i64) {
        if self.owner.load(Ordering::Relaxed) == self.generation {
            self.gauge.set(value);
        }
    }
}

/// The `class` label of `hookgate_upstream_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// No answer: the connection failed.
    Error,
    /// No answer within `limits.upstream_timeout`.
    Timeout,
    /// A status from 600 to 999: no class of HTTP's.
    Other,
}

impl UpstreamClass {
    const ALL: [UpstreamClass; 8] = [
        UpstreamClass::Informational,
        UpstreamClass::Success,
        UpstreamClass::Redirect,
        UpstreamClass::ClientError,
        UpstreamClass::ServerError,
        UpstreamClass::Error,
        UpstreamClass::Timeout,
        UpstreamClass::Other,
    ];

    pub fn of(status: http::StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => UpstreamClass::Success,
            300..=399 => UpstreamClass::Redirect,
            400..=499 => UpstreamClass::ClientError,
            500..=599 => UpstreamClass::ServerError,
            100..=199 => UpstreamClass::Informational,
            _ => UpstreamClass::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            UpstreamClass::Informational => "1xx",
            UpstreamClass::Success => "2xx",
            UpstreamClass::Redirect => "3xx",
            UpstreamClass::ClientError => "4xx",
            UpstreamClass::ServerError => "5xx",
            UpstreamClass::Error => "error",
            UpstreamClass::Timeout => "timeout",
            UpstreamClass::Other => "other",
        }
    }
}

/// The `reason` label of `hookgate_connections_refused_total`: why a connection was
/// closed at accept, before a byte was read (the client sees a reset, no HTTP answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    PerIpLimit,
}

impl Refused {
    const ALL: [Refused; 2] = [Refused::MaxConnections, Refused::PerIpLimit];

    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::PerIpLimit => "per_ip_limit",
        }
    }
}

/// The `reason` label of `hookgate_connections_closed_total`: why hookgate ended a
/// connection it had accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No complete request head within `limits.header_read_timeout`.
    HeaderTimeout,
    /// No request in progress for `limits.idle_timeout`.
    IdleTimeout,
    TlsHandshakeTimeout,
    TlsHandshakeFailed,
    /// A request head beyond the parser's hard limit (twice the configured limits).
    HeadersTooLarge,
    /// HTTP/2 GOAWAY `ENHANCE_YOUR_CALM`: too many streams reset (rapid reset).
    Http2ResetFlood,
    /// Its client IP had as many answers unsent as it may have connections: a client
    /// that does not read them (an HTTP/2 window of 0) holds them open otherwise.
    AnswersUnread,
    /// An HTTP/1 head the parser could not read (no colon in a header, a bad
    /// `Content-Length`, an unknown version): answered 400 by the parser, before there is
    /// a request to count.
    MalformedRequest,
}

impl Closed {
    const ALL: [Closed; 8] = [
        Closed::HeaderTimeout,
        Closed::IdleTimeout,
        Closed::TlsHandshakeTimeout,
        Closed::TlsHandshakeFailed,
        Closed::HeadersTooLarge,
        Closed::Http2ResetFlood,
        Closed::AnswersUnread,
        Closed::MalformedRequest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::TlsHandshakeTimeout => "tls_handshake_timeout",
            Closed::TlsHandshakeFailed => "tls_handshake_failed",
            Closed::HeadersTooLarge => "headers_too_large",
            Closed::Http2ResetFlood => "http2_reset_flood",
            Closed::AnswersUnread => "answers_unread",
            Closed::MalformedRequest => "malformed_request",
        }
    }
}

/// The `result` label of `hookgate_enrich_requests_total`: what one fetch of the object
/// behind an event (`enrich`) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrichResult {
    /// The API answered the object.
    Fetched,
    /// 429: retried after `Retry-After` (at least the queue's backoff).
    RateLimited,
    /// 5xx, 408 or 409: retried with the queue's backoff.
    ServerError,
    /// No answer within `enrich.timeout`: retried.
    Timeout,
    /// No connection, or it broke before an answer: retried.
    Unreachable,
    /// A 2xx that was not the object (not JSON, cut short): retried.
    InvalidAnswer,
    /// 401 or 403: the API key (or its organization or project) was refused; final.
    KeyRefused,
    /// 404: the object expired or belongs to another project; final.
    NotFound,
    /// Any other answer (400, a redirect ...), or an event without an id to fetch; final.
    Refused,
}

impl EnrichResult {
    pub const ALL: [EnrichResult; 9] = [
        EnrichResult::Fetched,
        EnrichResult::RateLimited,
        EnrichResult::ServerError,
        EnrichResult::Timeout,
        EnrichResult::Unreachable,
        EnrichResult::InvalidAnswer,
        EnrichResult::KeyRefused,
        EnrichResult::NotFound,
        EnrichResult::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EnrichResult::Fetched => "fetched",
            EnrichResult::RateLimited => "rate_limited",
            EnrichResult::ServerError => "server_error",
            EnrichResult::Timeout => "timeout",
            EnrichResult::Unreachable => "unreachable",
            EnrichResult::InvalidAnswer => "invalid_answer",
            EnrichResult::KeyRefused => "key_refused",
            EnrichResult::NotFound => "not_found",
            EnrichResult::Refused => "refused",
        }
    }
}

/// Pre-resolved `enrich` series of one route.
#[derive(Clone)]
pub struct EnrichMetrics {
    results: [IntCounter; EnrichResult::ALL.len()],
    duration: Histogram,
}

impl EnrichMetrics {
    /// One request to the API (none is made for an event without an id: not timed).
    pub fn observe(&self, result: EnrichResult, elapsed: Option<Duration>) {
        self.results[result as usize].inc();
        if let Some(elapsed) = elapsed {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }
}

/// Pre-resolved connection series of one listener (`server` or `admin`).
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: IntGauge,
    refused: [IntCounter; Refused::ALL.len()],
    closed: [IntCounter; Closed::ALL.len()],
}

impl ConnectionMetrics {
    pub fn refused(&self, reason: Refused) {
        self.refused[reason as usize].inc();
    }

    pub fn closed(&self, reason: Closed) {
        self.closed[reason as usize].inc();
    }
}

/// The `source` label for requests that match no source.
pub const NO_SOURCE: &str = "none";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_responses: IntCounterVec,
    store_errors: IntCounterVec,
    store_duration: HistogramVec,
    /// The duration and error series of each of `STORE_OPS`, resolved once: a store
    /// operation runs several times per request.
    store_series: Vec<(&'static str, Histogram, IntCounter)>,
    store_fail_open: IntCounterVec,
    connections_open: IntGaugeVec,
    connections_refused: IntCounterVec,
    connections_closed: IntCounterVec,
    penalty_box: IntCounter,
    penalty_box_clients: IntGauge,
    /// Which `LatestGauge` of `penalty_box_clients` may write it.
    penalty_box_owner: Arc<AtomicU64>,
    tls_certificate_expiry: IntGaugeVec,
    admin_unauthorized: IntCounter,
    config_reloads: IntCounterVec,
    verified: IntCounterVec,
    queue_depth: IntGauge,
    queue_oldest_age: Gauge,
    queue_counted_at: Gauge,
    queue_persistence: IntGaugeVec,
    deliveries: IntCounterVec,
    delivery_attempts: HistogramVec,
    enrich_requests: IntCounterVec,
    enrich_duration: HistogramVec,
    telemetry_spans_dropped: IntCounter,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    /// The route labels series were made for (`route`, `delivery`, `enrich`), for
    /// `keep_routes`.
    route_labels: Mutex<HashSet<String>>,
    /// The sources series were made for, each with the most secrets it had
    /// (`hookgate_verified_total{secret}`), for `keep_sources`.
    source_labels: Mutex<HashMap<String, usize>>,
}

/// The series of one upstream's circuit breaker (`breaker::Breaker`).
#[derive(Clone)]
pub struct BreakerMetrics {
    /// 0 closed, 1 open, 2 half-open.
    pub state: IntGauge,
    /// Transitions to closed, open, half-open (in that order).
    pub transitions: [IntCounter; 3],
}

/// The `to` label values of `hookgate_breaker_transitions_total`, in `BreakerMetrics` order.
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// The `result` label values of `hookgate_deliveries_total`: the state an attempt left
/// its delivery in.
const DELIVERY_RESULTS: [State; 3] = [State::Processed, State::FailedRetryable, State::FailedFinal];

const ATTEMPT_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 30.0,
];

/// Pre-resolved queue-mode series of one route.
#[derive(Clone)]
pub struct DeliveryMetrics {
    results: [IntCounter; DELIVERY_RESULTS.len()],
    attempts: Histogram,
}

impl DeliveryMetrics {
    /// One settled attempt; a delivery that became final also records its attempt count.
    pub fn observe(&self, result: State, attempts: u32) {
        if let Some(i) = DELIVERY_RESULTS.iter().position(|r| *r == result) {
            self.results[i].inc();
        }
        if result.is_final() {
            self.attempts.observe(f64::from(attempts));
        }
    }
}

/// The `listener` label values.
pub const LISTENERS: &[&str] = &["server", "admin"];

/// The `op` label values of the store metrics.
pub const STORE_OPS: &[&str] = &["claim", "commit", "release", "rate_check", "ping"];

const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Pre-resolved series of one source.
#[derive(Clone)]
pub struct SourceMetrics {
    requests: [IntCounter; Outcome::ALL.len()],
    duration: Histogram,
}

impl SourceMetrics {
    pub fn observe(&self, outcome: Outcome, elapsed: Duration) {
        self.requests[outcome as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Pre-resolved series of one route.
#[derive(Clone)]
pub struct RouteMetrics {
    responses: [IntCounter; UpstreamClass::ALL.len()],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn observe(&self, class: UpstreamClass, elapsed: Duration) {
        self.responses[class as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

impl Metrics {
    /// Registers every metric and pre-creates the series for the configured names.
    pub fn new<'a>(sources: impl IntoIterator<Item = &'a str>) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("hookgate_requests_total", "Requests by source and outcome."),
            &["source", "outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookgate_request_duration_seconds",
                "Time from request head to response, by source.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["source"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookgate_upstream_duration_seconds",
                "Time the upstream took to answer, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "hookgate_upstream_responses_total",
                "Upstream answers by route and status class (2xx..5xx, or error/timeout when there was none).",
            ),
            &["route", "class"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "hookgate_store_errors_total",
                "Store operations that failed or timed out, by operation.",
            ),
            &["op"],
        )
        .expect("valid metric");
        let store_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookgate_store_duration_seconds",
                "Latency of store operations (Redis round trips), by operation.",
            )
            .buckets(STORE_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let store_fail_open = IntCounterVec::new(
            Opts::new(
                "hookgate_store_fail_open_total",
                "Requests let through without dedupe or rate limit because the store failed and store.on_error = \"allow\".",
            ),
            &["op"],
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new(
            "hookgate_queue_depth",
            "Queue mode: deliveries not yet final (waiting, being attempted, or scheduled for a retry).",
        )
        .expect("valid metric");
        let queue_persistence = IntGaugeVec::new(
            Opts::new(
                "hookgate_queue_persistence",
                "Queue mode: what the queue's backend promises for a delivery answered 202: 0 lost on a restart of the backend, 1 survives a restart, 2 survives a host crash too, -1 unknown.",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let queue_oldest_age = Gauge::new(
            "hookgate_queue_oldest_age_seconds",
            "Queue mode: how long the oldest delivery ready for an attempt has been waiting.",
        )
        .expect("valid metric");
        let queue_counted_at = Gauge::new(
            "hookgate_queue_stats_timestamp_seconds",
            "Queue mode: when the queue gauges were last counted (Unix time); they keep that count while the queue cannot be counted.",
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new(
                "hookgate_deliveries_total",
                "Queue mode: settled attempts by route and the state they left the delivery in (processed, failed_retryable, failed_final).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let delivery_attempts = HistogramVec::new(
            HistogramOpts::new(
                "hookgate_delivery_attempts",
                "Queue mode: attempts a delivery took until it became final (processed or failed_final), by route.",
            )
            .buckets(ATTEMPT_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let enrich_requests = IntCounterVec::new(
            Opts::new(
                "hookgate_enrich_requests_total",
                "Queue mode, enrich routes: fetches of the object behind an event, by route and result.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let enrich_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookgate_enrich_duration_seconds",
                "Queue mode, enrich routes: time the sender's API took to answer a fetch, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "hookgate_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "hookgate_connections_open",
                "Connections open now, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "hookgate_connections_refused_total",
                "Connections closed at accept, before any byte was read, by listener and reason.",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "hookgate_connections_closed_total",
                "Connections hookgate ended early (timeouts, TLS failures, abuse), by listener and reason.",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let penalty_box = IntCounter::new(
            "hookgate_penalty_box_total",
            "Times a client IP was put in the penalty box for failing verification too often.",
        )
        .expect("valid metric");
        // A vector without labels: its one series exists only once a certificate is
        // loaded, so a gateway without TLS has none (a 0 would read as long expired).
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "hookgate_tls_certificate_expiry_timestamp_seconds",
                "When the webhook listener's TLS certificate expires (its notAfter, Unix seconds), as loaded at start or by the last reload.",
            ),
            &[],
        )
        .expect("valid metric");
        let penalty_box_clients = IntGauge::new(
            "hookgate_penalty_box_clients",
            "Client IPs the penalty box tracks now, counting failures or boxed (at most penalty_box.max_clients).",
        )
        .expect("valid metric");
        let admin_unauthorized = IntCounter::new(
            "hookgate_admin_unauthorized_total",
            "Admin requests refused 401 for a missing or wrong bearer token.",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "hookgate_config_reloads_total",
                "Configuration reloads (SIGHUP or POST /reload) by result: success, or error (the running configuration stayed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["success", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let verified = IntCounterVec::new(
            Opts::new(
                "hookgate_verified_total",
                "Verified deliveries by source and the position of the secret that matched.",
            ),
            &["source", "secret"],
        )
        .expect("valid metric");

        let telemetry_spans_dropped = IntCounter::new(
            "hookgate_telemetry_spans_dropped_total",
            "Trace spans not exported: the export queue was full or the collector failed or was too slow.",
        )
        .expect("valid metric");

        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "hookgate_breaker_state",
                "Circuit breaker of each upstream of a route with a breaker: 0 closed, 1 open, 2 half-open (this instance).",
            ),
            &["route", "upstream"],
        )
        .expect("valid metric");
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "hookgate_breaker_transitions_total",
                "Circuit breaker transitions by route, upstream and the state entered.",
            ),
            &["route", "upstream", "to"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(telemetry_spans_dropped.clone()),
            Box::new(breaker_state.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(config_reloads.clone()),
            Box::new(verified.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_duration.clone()),
            Box::new(store_fail_open.clone()),
            Box::new(queue_depth.clone()),
            Box::new(queue_oldest_age.clone()),
            Box::new(queue_counted_at.clone()),
            Box::new(queue_persistence.clone()),
            Box::new(deliveries.clone()),
            Box::new(delivery_attempts.clone()),
            Box::new(enrich_requests.clone()),
            Box::new(enrich_duration.clone()),
            Box::new(build_info),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_closed.clone()),
            Box::new(penalty_box.clone()),
            Box::new(penalty_box_clients.clone()),
            Box::new(tls_certificate_expiry.clone()),
            Box::new(admin_unauthorized.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for source in sources.into_iter().chain([NO_SOURCE]) {
            for outcome in Outcome::ALL {
                requests.with_label_values(&[source, outcome.label()]);
            }
        }
        let store_series = STORE_OPS
            .iter()
            .map(|&op| {
                store_fail_open.with_label_values(&[op]);
                (
                    op,
                    store_duration.with_label_values(&[op]),
                    store_errors.with_label_values(&[op]),
                )
            })
            .collect();
        for listener in LISTENERS {
            connections_open.with_label_values(&[listener]);
            for reason in Refused::ALL {
                connections_refused.with_label_values(&[listener, reason.label()]);
            }
            for reason in Closed::ALL {
                connections_closed.with_label_values(&[listener, reason.label()]);
            }
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_responses,
            store_errors,
            store_duration,
            store_series,
            store_fail_open,
            connections_open,
            connections_refused,
            connections_closed,
            penalty_box,
            penalty_box_clients,
            penalty_box_owner: Arc::new(AtomicU64::new(0)),
            tls_certificate_expiry,
            admin_unauthorized,
            config_reloads,
            verified,
            queue_depth,
            queue_oldest_age,
            queue_counted_at,
            queue_persistence,
            deliveries,
            delivery_attempts,
            enrich_requests,
            enrich_duration,
            telemetry_spans_dropped,
            breaker_state,
            breaker_transitions,
            route_labels: Mutex::default(),
            source_labels: Mutex::default(),
        }
    }

    fn route_made(&self, label: &str) {
        let mut labels = self.route_labels.lock().unwrap_or_else(|p| p.into_inner());
        if !labels.contains(label) {
            labels.insert(label.to_owned());
        }
    }

    /// Ends the series of every route label but `kept` (a reload's routes, their
    /// fan-out copies included). Kept, a renamed or removed route's series stayed for
    /// good, frozen: with route names that change (versions, dates in them), the
    /// series grew with every name the process had ever had. Requests and attempts
    /// still running on the configuration before count into series no longer exported.
    pub fn keep_routes(&self, kept: &HashSet<String>) {
        let mut labels = self.route_labels.lock().unwrap_or_else(|p| p.into_inner());
        labels.retain(|label| {
            if kept.contains(label) {
                return true;
            }
            for class in UpstreamClass::ALL {
                let _ = self
                    .upstream_responses
                    .remove_label_values(&[label, class.label()]);
            }
            for result in DELIVERY_RESULTS {
                let _ = self
                    .deliveries
                    .remove_label_values(&[label, result.as_str()]);
            }
            for result in EnrichResult::ALL {
                let _ = self
                    .enrich_requests
                    .remove_label_values(&[label, result.label()]);
            }
            let _ = self.upstream_duration.remove_label_values(&[label]);
            let _ = self.delivery_attempts.remove_label_values(&[label]);
            let _ = self.enrich_duration.remove_label_values(&[label]);
            false
        });
    }

    /// Ends the series of every source but `kept` (name and number of secrets: a
    /// secret removed from a source ends its `hookgate_verified_total` series too), as
    /// `keep_routes` does for routes: a renamed source's series stayed for good, 42
    /// frozen lines a name.
    pub fn keep_sources(&self, kept: &HashMap<String, usize>) {
        let mut labels = self.source_labels.lock().unwrap_or_else(|p| p.into_inner());
        labels.retain(|source, secrets| {
            let keep = match kept.get(source) {
                Some(&now) => now,
                None if source == NO_SOURCE => return true,
                None => 0,
            };
            for i in keep..*secrets {
                let _ = self.verified.remove_label_values(&[source, &i.to_string()]);
            }
            *secrets = keep.min(*secrets);
            if kept.contains_key(source) {
                return true;
            }
            for outcome in Outcome::ALL {
                let _ = self
                    .requests
                    .remove_label_values(&[source, outcome.label()]);
            }
            let _ = self.request_duration.remove_label_values(&[source]);
            false
        });
    }

    /// The breaker series of one upstream of a route: `upstream` is its name or index,
    /// never its URL.
    pub fn breaker(&self, route: &str, upstream: &str) -> BreakerMetrics {
        BreakerMetrics {
            state: self.breaker_state.with_label_values(&[route, upstream]),
            transitions: BREAKER_STATES.map(|to| {
                self.breaker_transitions
                    .with_label_values(&[route, upstream, to])
            }),
        }
    }

    /// Ends the breaker series of an upstream a reload removed (`Breakers::keep_only`).
    pub fn forget_breaker(&self, route: &str, upstream: &str) {
        let _ = self.breaker_state.remove_label_values(&[route, upstream]);
        for to in BREAKER_STATES {
            let _ = self
                .breaker_transitions
                .remove_label_values(&[route, upstream, to]);
        }
    }

    /// The connection series of one listener (`server` or `admin`), resolved once.
    pub fn connections(&self, listener: &str) -> ConnectionMetrics {
        ConnectionMetrics {
            open: self.connections_open.with_label_values(&[listener]),
            refused: Refused::ALL.map(|r| {
                self.connections_refused
                    .with_label_values(&[listener, r.label()])
            }),
            closed: Closed::ALL.map(|c| {
                self.connections_closed
                    .with_label_values(&[listener, c.label()])
            }),
        }
    }

    /// A client IP was put in the penalty box.
    pub fn penalty_boxed(&self) {
        self.penalty_box.inc();
    }

    /// The webhook listener's certificate now served expires at `at`.
    pub fn tls_certificate_expires(&self, at: std::time::SystemTime) {
        let seconds = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.tls_certificate_expiry
            .with_label_values::<&str>(&[])
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    /// `hookgate_penalty_box_clients`, for the penalty box of the gateway being built
    /// (a reload starts a new, empty one): from now on only that box writes it.
    pub fn penalty_box_clients(&self) -> LatestGauge {
        let generation = self.penalty_box_owner.fetch_add(1, Ordering::Relaxed) + 1;
        self.penalty_box_clients.set(0);
        LatestGauge {
            gauge: self.penalty_box_clients.clone(),
            owner: self.penalty_box_owner.clone(),
            generation,
        }
    }

    /// An admin request without the right bearer token.
    /// `hookgate_verified_total{source,secret}`: one counter per secret of a source,
    /// indexed like its `secrets`, labelled by position (`0`, `1`, ...), never by value.
    /// When a rotated-out secret's series stops growing, the sender no longer uses it.
    pub fn verified(&self, source: &str, secrets: usize) -> Vec<IntCounter> {
        let mut labels = self.source_labels.lock().unwrap_or_else(|p| p.into_inner());
        let most = labels.entry(source.to_owned()).or_default();
        *most = (*most).max(secrets);
        drop(labels);
        (0..secrets)
            .map(|i| self.verified.with_label_values(&[source, &i.to_string()]))
            .collect()
    }

    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// `hookgate_telemetry_spans_dropped_total`, for the span exporter.
    pub fn telemetry_spans_dropped(&self) -> IntCounter {
        self.telemetry_spans_dropped.clone()
    }

    pub fn admin_unauthorized(&self) {
        self.admin_unauthorized.inc();
    }

    /// The queue-mode series of one route (`<source>/<route name>`), created at zero.
    pub fn delivery(&self, label: &str) -> DeliveryMetrics {
        self.route_made(label);
        DeliveryMetrics {
            results: DELIVERY_RESULTS
                .map(|r| self.deliveries.with_label_values(&[label, r.as_str()])),
            attempts: self.delivery_attempts.with_label_values(&[label]),
        }
    }

    /// The `enrich` series of one route (`<source>/<route name>`), created at zero.
    pub fn enrich(&self, label: &str) -> EnrichMetrics {
        self.route_made(label);
        EnrichMetrics {
            results: EnrichResult::ALL
                .map(|r| self.enrich_requests.with_label_values(&[label, r.label()])),
            duration: self.enrich_duration.with_label_values(&[label]),
        }
    }

    pub fn queue_persistence(&self, backend: &str, level: i64) {
        self.queue_persistence
            .with_label_values(&[backend])
            .set(level);
    }

    /// A new count of the queue. When the queue cannot be counted (its store failing) the
    /// gauges keep the last count, which looks healthy; the count's time tells them apart
    /// (the `HookgateQueueUncounted` alert).
    pub fn queue_stats(&self, depth: u64, oldest_age: Duration) {
        self.queue_depth.set(depth.min(i64::MAX as u64) as i64);
        self.queue_oldest_age.set(oldest_age.as_secs_f64());
        self.queue_counted_at
            .set(crate::queue::record::now_millis() as f64 / 1000.0);
    }

    /// The queue's workers start: until their first count, the gauges are dated from
    /// now, so that an instance whose store fails from its start (or that restarted
    /// during the outage) is not taken for one without a queue (0) by the alert.
    pub fn queue_counting(&self) {
        if self.queue_counted_at.get() == 0.0 {
            self.queue_counted_at
                .set(crate::queue::record::now_millis() as f64 / 1000.0);
        }
    }

    /// The series of one source, resolved once: the request path then touches no
    /// label map (prometheus hashes label values on every `with_label_values`).
    pub fn source(&self, source: &str) -> SourceMetrics {
        (self.source_labels.lock().unwrap_or_else(|p| p.into_inner()))
            .entry(source.to_owned())
            .or_default();
        SourceMetrics {
            requests: Outcome::ALL.map(|o| self.requests.with_label_values(&[source, o.label()])),
            duration: self.request_duration.with_label_values(&[source]),
        }
    }

    /// The series of one route (`<source>/<route name>`), resolved once.
    pub fn route(&self, label: &str) -> RouteMetrics {
        self.route_made(label);
        RouteMetrics {
            responses: UpstreamClass::ALL.map(|c| {
                self.upstream_responses
                    .with_label_values(&[label, c.label()])
            }),
            duration: self.upstream_duration.with_label_values(&[label]),
        }
    }

    /// One store round trip: its latency, and whether it failed.
    pub fn store_op(&self, op: &str, elapsed: Duration, ok: bool) {
        if let Some((_, duration, errors)) = self.store_series.iter().find(|(o, ..)| *o == op) {
            duration.observe(elapsed.as_secs_f64());
            if !ok {
                errors.inc();
            }
            return;
        }
        self.store_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[op]).inc();
        }
    }

    /// A request let through without the store because of `on_error = "allow"`.
    pub fn store_fail_open(&self, op: &str) {
        self.store_fail_open.with_label_values(&[op]).inc();
    }

    /// Other modules register their own collectors here (store, rotation, ...).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_pre_created_and_counted() {
        let m = Metrics::new(["openai"]);
        let text = m.render();
        assert!(text.contains(r#"hookgate_requests_total{outcome="forwarded",source="openai"} 0"#));
        assert!(text.contains(r#"hookgate_build_info{version=""#));
        m.source("openai")
            .observe(Outcome::Forwarded, Duration::from_millis(3));
        m.route("openai/0")
            .observe(UpstreamClass::Success, Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains(r#"hookgate_requests_total{outcome="forwarded",source="openai"} 1"#));
        assert!(
            text.contains(r#"hookgate_upstream_responses_total{class="2xx",route="openai/0"} 1"#)
        );
        assert!(text.contains("hookgate_request_duration_seconds_bucket"));
        assert!(text.contains("hookgate_upstream_duration_seconds_count{route=\"openai/0\"} 1"));
    }

    #[test]
    fn a_queue_count_is_dated_and_none_is_dated_never() {
        let m = Metrics::new(["openai"]);
        assert!(
            m.render()
                .contains("\nhookgate_queue_stats_timestamp_seconds 0\n")
        );
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        m.queue_counting();
        let started = m.queue_counted_at.get();
        assert!(started >= before.floor(), "{started}");
        m.queue_stats(3, Duration::from_secs(2));
        let counted = m.queue_counted_at.get();
        assert!(
            counted >= before.floor() && counted < before + 60.0,
            "{counted}"
        );
    }

    #[test]
    fn every_outcome_sits_at_its_own_index() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
        for (i, class) in UpstreamClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
        for (i, reason) in Refused::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        for (i, reason) in Closed::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        for (i, result) in EnrichResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, i);
        }
        assert_eq!(UpstreamClass::of(http::StatusCode::GONE).label(), "4xx");
        assert_eq!(UpstreamClass::of(http::StatusCode::FOUND).label(), "3xx");
    }
}
