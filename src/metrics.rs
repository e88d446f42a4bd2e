//! Prometheus metrics. Names and labels are a public contract: add, never rename.
//!
//! Labels never carry an IP, a delivery id or a raw event type (unbounded cardinality);
//! sources and routes are named in the config, so their label values are bounded.
//! Each gateway owns its registry, so several gateways in one process do not collide.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every `outcome` label value of `hookgate_requests_total`, pre-created at zero so a
/// dashboard's `rate()` works from the first event.
pub const OUTCOMES: &[&str] = &[
    "forwarded",
    "duplicate",
    "in_flight",
    "invalid_signature",
    "stale",
    "invalid_payload",
    "unrouted",
    "rate_limited",
    "too_large",
    "upstream_error",
    "upstream_timeout",
    "not_found",
    "method_not_allowed",
    "bad_request",
    "store_error",
];

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
    store_fail_open: IntCounterVec,
}

/// The `op` label values of the store metrics.
pub const STORE_OPS: &[&str] = &["claim", "commit", "release", "rate_check", "ping"];

const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

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

        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_duration.clone()),
            Box::new(store_fail_open.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for source in sources.into_iter().chain([NO_SOURCE]) {
            for outcome in OUTCOMES {
                requests.with_label_values(&[source, outcome]);
            }
        }
        for op in STORE_OPS {
            store_errors.with_label_values(&[op]);
            store_fail_open.with_label_values(&[op]);
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_responses,
            store_errors,
            store_duration,
            store_fail_open,
        }
    }

    pub fn request(&self, source: &str, outcome: &str, elapsed: Duration) {
        self.requests.with_label_values(&[source, outcome]).inc();
        self.request_duration
            .with_label_values(&[source])
            .observe(elapsed.as_secs_f64());
    }

    pub fn upstream(&self, route: &str, class: &str, elapsed: Duration) {
        self.upstream_responses
            .with_label_values(&[route, class])
            .inc();
        self.upstream_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// One store round trip: its latency, and whether it failed.
    pub fn store_op(&self, op: &str, elapsed: Duration, ok: bool) {
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
        m.request("openai", "forwarded", Duration::from_millis(3));
        m.upstream("openai/0", "2xx", Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains(r#"hookgate_requests_total{outcome="forwarded",source="openai"} 1"#));
        assert!(
            text.contains(r#"hookgate_upstream_responses_total{class="2xx",route="openai/0"} 1"#)
        );
        assert!(text.contains("hookgate_request_duration_seconds_bucket"));
        assert!(text.contains("hookgate_upstream_duration_seconds_count{route=\"openai/0\"} 1"));
    }
}
