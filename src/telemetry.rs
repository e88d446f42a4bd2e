//! OpenTelemetry traces: one trace per delivery, from the sender's request through every
//! attempt to the backend, exported over OTLP/HTTP (protobuf) to `[telemetry]`.
//!
//! `Telemetry` makes the spans; `Span` is one of them, or nothing at all when tracing is
//! off (no `[telemetry]`): then every method returns at once, allocating nothing, so the
//! request path pays a branch per stage. The protocol is the OpenTelemetry crates' work:
//! the SDK makes and samples spans, `TraceContextPropagator` reads a sender's W3C
//! `traceparent`/`tracestate`, the OTLP exporter encodes and POSTs the batches through
//! opentelemetry-http's hyper client (rustls, trusting what `[upstream_tls]` trusts).
//! The `traceparent` hookgate sends is written here (`traceparent_of`), byte for byte as
//! the propagator writes it, without its formatting: every forwarded request carries one.
//!
//! The one part written here is the batching: the SDK's batch processor exports from a
//! thread of its own, outside tokio (where the hyper client cannot run), and counts its
//! drops where no metric can see them. `Batcher` hands each ended span to a bounded
//! queue with `try_send` (never waiting) and a tokio task exports what it holds as soon
//! as a batch is full, and every `export_interval`, each export bounded by
//! `export_timeout`. A full queue or a failed
//! or late export drops those spans and counts them (`hookgate_telemetry_spans_dropped_total`),
//! with a warning at most once a minute: a collector that is down or slow never slows a
//! request. Nothing here records a body, a signature, a secret or a client IP.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

use crate::config::{TelemetrySettings, UpstreamTrust};
use crate::log_gate::LogGate;
use crate::metrics::Metrics;
use crate::upstream::UpstreamOutcome;
use crate::verify::{hex_encode, push_hex};

/// Spans in one export request at most.
const MAX_BATCH: usize = 512;
/// The warning about dropped spans comes at most this often.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

#[derive(Debug, thiserror::Error)]
#[error("telemetry: cannot build the OTLP exporter: {0}")]
pub struct TelemetryError(String);

/// Makes the spans of this process; `Telemetry::off()` makes none.
#[derive(Clone, Default)]
pub struct Telemetry {
    on: Option<Arc<On>>,
}

struct On {
    tracer: SdkTracer,
    /// Kept so the tracer's processor lives as long as the tracer.
    _provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
    trust_incoming_traceparent: bool,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    export_timeout: Duration,
}

impl Telemetry {
    pub fn off() -> Telemetry {
        Telemetry::default()
    }

    /// Starts the exporter task (inside a tokio runtime) when `settings` is present.
    pub fn start(
        settings: Option<&TelemetrySettings>,
        trust: &UpstreamTrust,
        metrics: &Metrics,
    ) -> Result<Telemetry, TelemetryError> {
        let Some(settings) = settings else {
            return Ok(Telemetry::off());
        };
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.export_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::upstream_client_config_for(trust))
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let cause = Arc::new(std::sync::Mutex::new(None));
        let client = Explained {
            client: opentelemetry_http::hyper::HyperClient::new(
                connector,
                settings.export_timeout,
                None,
            ),
            cause: cause.clone(),
        };
        let headers = settings
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.expose().to_owned()))
            .collect();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(settings.traces_url.to_string())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(settings.export_timeout)
            .with_headers(headers)
            // Dropped and counted instead: a retry would hold spans a down collector
            // will not take, while new ones queue up behind them.
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);

        let (spans, queued) = mpsc::channel(settings.max_queued_spans);
        let batch_full = Arc::new(tokio::sync::Notify::new());
        let (flush, flushes) = mpsc::channel(1);
        let dropped = Dropped {
            counter: metrics.telemetry_spans_dropped(),
            gate: Arc::new(LogGate::new(DROP_WARNING_INTERVAL)),
            cause,
        };
        tokio::spawn(export_forever(
            queued,
            batch_full.clone(),
            flushes,
            exporter,
            settings.export_interval,
            settings.export_timeout,
            dropped.clone(),
        ));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Batcher {
                spans,
                batch_full,
                dropped,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Telemetry {
            on: Some(Arc::new(On {
                tracer: provider.tracer("hookgate"),
                _provider: provider,
                propagator: TraceContextPropagator::new(),
                trust_incoming_traceparent: settings.trust_incoming_traceparent,
                flush,
                export_timeout: settings.export_timeout,
            })),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// The server span of one request (`hookgate.request`). A sender's well-formed
    /// `traceparent` is its parent when `trust_incoming_traceparent` is set, else a link
    /// from a new trace; a malformed one is ignored.
    pub fn request(&self, method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
        let Some(on) = &self.on else {
            return Span::none();
        };
        // Most senders send none: then there is nothing to parse.
        let incoming = match sender_context(headers) {
            Some(carrier) => on.propagator.extract(&carrier),
            None => Context::new(),
        };
        let sender = incoming.span().span_context().clone();
        let (parent, links) = match (sender.is_valid(), on.trust_incoming_traceparent) {
            (true, true) => (incoming, Vec::new()),
            // The link names the sender's span and keeps its sampled flag, not its
            // `tracestate`: up to 32 members of sender-chosen text in every span.
            (true, false) => {
                let linked = SpanContext::new(
                    sender.trace_id(),
                    sender.span_id(),
                    sender.trace_flags(),
                    true,
                    TraceState::NONE,
                );
                (Context::new(), vec![Link::with_context(linked)])
            }
            (false, _) => (Context::new(), Vec::new()),
        };
        let mut span = on
            .tracer
            .span_builder("hookgate.request")
            .with_kind(SpanKind::Server)
            .with_links(links)
            .start_with_context(&on.tracer, &parent);
        // Set after the sampler decided, so a trace sampled out copies nothing.
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", method_name(method)));
            span.set_attribute(KeyValue::new("url.path", path_shown(path).into_owned()));
        }
        Span::started(on, parent.with_span(span))
    }

    /// The span of one queued attempt (`hookgate.attempt`), in the trace whose context
    /// the delivery was stored with (`stored`, a W3C `traceparent`); a new trace when
    /// it has none (tracing was off at ingress) or it does not parse.
    pub fn attempt(&self, stored: Option<&str>) -> Span {
        let Some(on) = &self.on else {
            return Span::none();
        };
        let parent = match stored.filter(|t| well_formed_traceparent(t.as_bytes())) {
            Some(traceparent) => {
                let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
                on.propagator.extract(&carrier)
            }
            None => Context::new(),
        };
        let span = on
            .tracer
            .span_builder("hookgate.attempt")
            .with_kind(SpanKind::Consumer)
            .start_with_context(&on.tracer, &parent);
        Span::started(on, parent.with_span(span))
    }

    /// Exports what is queued (at shutdown), waiting at most the export timeout.
    pub async fn flush(&self) {
        let Some(on) = &self.on else { return };
        // Bounded as a whole: the export task may still be sending a batch to a slow
        // collector, and waiting for that and then the final export took twice as long.
        let flushed = async {
            let (done, exported) = oneshot::channel();
            if on.flush.send(done).await.is_ok() {
                let _ = exported.await;
            }
        };
        let _ = tokio::time::timeout(on.export_timeout, flushed).await;
    }
}

/// One span, or none (tracing off). Ends when `end` is called or when dropped.
#[derive(Default)]
pub struct Span {
    on: Option<(Arc<On>, Context)>,
    /// Whether the span is sampled, read once: asking the SDK's span takes its lock,
    /// and every stage asks.
    recording: bool,
}

impl Span {
    /// The span of nothing: every method is a no-op.
    pub fn none() -> Span {
        Span::default()
    }

    fn started(on: &Arc<On>, cx: Context) -> Span {
        Span {
            recording: cx.span().is_recording(),
            on: Some((on.clone(), cx)),
        }
    }

    /// A child span, internal or (`SpanKind::Client`) a call to another service.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        let Some((on, cx)) = &self.on else {
            return Span::none();
        };
        let span = on
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&on.tracer, cx);
        Span::started(on, cx.with_span(span))
    }

    /// Runs one stage of the request path in a child span of its own; an `Err` marks
    /// the span failed (without its text: only the stage's name says what failed). In a
    /// trace sampled out, the stage just runs: its span would record nothing.
    pub async fn stage<F>(&self, name: &'static str, stage: F) -> F::Output
    where
        F: Future,
        F::Output: Failed,
    {
        if !self.is_recording() {
            return stage.await;
        }
        let span = self.child(name, SpanKind::Internal);
        let result = stage.await;
        if result.failed() {
            span.fail("");
        }
        span.end();
        result
    }

    /// `stage` for a stage that does no I/O.
    pub fn stage_sync<R: Failed>(&self, name: &'static str, stage: impl FnOnce() -> R) -> R {
        if !self.is_recording() {
            return stage();
        }
        let span = self.child(name, SpanKind::Internal);
        let result = stage();
        if result.failed() {
            span.fail("");
        }
        span.end();
        result
    }

    /// The client span of a request to `upstream` (`hookgate.upstream`), named by its
    /// host and port only: a URL may carry credentials or a token in its query.
    ///
    /// In a trace sampled out, no span is made: the upstream gets this span's context
    /// (sampled flag off), which is all a backend does anything with.
    pub fn upstream_call(&self, upstream: &http::Uri) -> Span {
        if !self.is_recording() {
            return Span {
                on: self.on.clone(),
                recording: false,
            };
        }
        let span = self.child("hookgate.upstream", SpanKind::Client);
        let (host, port) = server_address(upstream);
        span.set("http.request.method", "POST");
        span.set("server.address", host);
        span.set("server.port", port);
        span
    }

    /// Whether this span is sampled: attributes set on any other are thrown away.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// The span's context when it is sampled: nothing is recorded on any other.
    fn recorded(&self) -> Option<&Context> {
        self.on
            .as_ref()
            .filter(|_| self.recording)
            .map(|(_, cx)| cx)
    }

    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = self.recorded() {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed; `why` must hold no body, secret or signature.
    pub fn fail(&self, why: &str) {
        if let Some(cx) = self.recorded() {
            cx.span().set_status(Status::error(why.to_owned()));
        }
    }

    /// Ends the span (a span sampled out has nothing to end or export).
    pub fn end(&self) {
        if let Some(cx) = self.recorded() {
            cx.span().end();
        }
    }

    /// With tracing on, removes the sender's `traceparent` and `tracestate` from headers
    /// a queued delivery keeps: its trace is the record's `trace_context`, and each
    /// attempt sets its own. Kept, an instance delivering it with tracing off forwarded
    /// the sender's untrusted context, and the record held the sender's `tracestate`.
    pub fn forget_sender_context(&self, headers: &mut HeaderMap) {
        if self.is_on() {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
        }
    }

    /// Whether tracing is on (the span may still be sampled out).
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Sets `traceparent` (and `tracestate`, when there is one) to this span's, in
    /// place of whatever the sender sent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let Some((_, cx)) = &self.on else { return };
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let span = cx.span();
        let context = span.span_context();
        let Some(traceparent) = traceparent_of(context) else {
            return;
        };
        if let Ok(value) = HeaderValue::try_from(traceparent) {
            headers.insert(TRACEPARENT, value);
        }
        if *context.trace_state() != TraceState::NONE
            && let Ok(value) = HeaderValue::try_from(context.trace_state().header())
        {
            headers.insert(TRACESTATE, value);
        }
    }

    /// This span's W3C `traceparent`, for a queued delivery's record.
    pub fn traceparent(&self) -> Option<String> {
        let (_, cx) = self.on.as_ref()?;
        traceparent_of(cx.span().span_context())
    }

    /// The trace id (32 hex digits) for log lines and attempt records.
    pub fn trace_id(&self) -> Option<String> {
        let (_, cx) = self.on.as_ref()?;
        let span = cx.span();
        let context: &SpanContext = span.span_context();
        context
            .is_valid()
            .then(|| hex_encode(&context.trace_id().to_bytes()))
    }

    /// The upstream's answer, on a client span: its status, or how the exchange failed.
    pub fn upstream(&self, outcome: &UpstreamOutcome) {
        if !self.recording {
            return;
        }
        if let Some(status) = outcome.status() {
            self.set("http.response.status_code", i64::from(status.as_u16()));
        }
        let failed = match outcome {
            UpstreamOutcome::Answered(reply) if reply.status.is_success() => None,
            UpstreamOutcome::Answered(_) | UpstreamOutcome::Redirect(_) | UpstreamOutcome::Gone => {
                Some("refused")
            }
            UpstreamOutcome::Timeout => Some("timeout"),
            UpstreamOutcome::Unreachable(_) => Some("unreachable"),
            UpstreamOutcome::Broken(_) => Some("broken"),
        };
        if let Some(kind) = failed {
            self.set("error.type", kind);
            self.fail(kind);
        }
    }
}

/// A sender's `traceparent` and `tracestate` for the propagator to read, when there is
/// exactly one well-formed `traceparent` (W3C Trace Context 3.2; two are invalid, 3.3.1's
/// rule for `tracestate` aside); its `tracestate` lines joined into one (3.3.1: only
/// the first was read).
fn sender_context(headers: &HeaderMap) -> Option<HashMap<String, String>> {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let parent = parents.next()?;
    if parents.next().is_some() || !well_formed_traceparent(parent.as_bytes()) {
        return None;
    }
    let mut carrier = HashMap::from([("traceparent".to_owned(), parent.to_str().ok()?.to_owned())]);
    let state: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .collect();
    if !state.is_empty() {
        carrier.insert("tracestate".to_owned(), state.join(","));
    }
    Some(carrier)
}

/// Whether `value` is a `traceparent` as W3C Trace Context 3.2 writes one: two lowercase
/// hex digits of version (not `ff`), 32 of trace id, 16 of parent id, 2 of flags, `-`
/// between; exactly that for version `00`, and a later version's extra fields after a
/// `-`. The SDK's propagator is laxer (it took `00-1-1-1`, a `+` sign, a trailing `-`),
/// and with `trust_incoming_traceparent` a sender could choose short, colliding ids.
fn well_formed_traceparent(value: &[u8]) -> bool {
    let hex = |from: usize, to: usize| {
        value
            .get(from..to)
            .is_some_and(|part| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    };
    let dash = |at: usize| value.get(at) == Some(&b'-');
    let version = value.get(..2);
    hex(0, 2)
        && version != Some(b"ff")
        && dash(2)
        && hex(3, 35)
        && dash(35)
        && hex(36, 52)
        && dash(52)
        && hex(53, 55)
        && match version {
            Some(b"00") => value.len() == 55,
            _ => value.len() == 55 || dash(55),
        }
}

/// The W3C `traceparent` of `context`, as the SDK's `TraceContextPropagator` writes it
/// (version `00`, only the sampled flag), written straight into one string: on every
/// forwarded request, sampled or not, the propagator's `format!` and its header parsing
/// were most of what tracing cost a trace sampled out. `None` for an invalid context.
fn traceparent_of(context: &SpanContext) -> Option<String> {
    if !context.is_valid() {
        return None;
    }
    let flags = context.trace_flags() & TraceFlags::SAMPLED;
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &context.trace_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &context.span_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &[flags.to_u8()]);
    Some(out)
}

/// What a stage's result says about whether it failed, for its span.
pub trait Failed {
    fn failed(&self) -> bool;
}

impl<T, E> Failed for Result<T, E> {
    fn failed(&self) -> bool {
        self.is_err()
    }
}

/// The longest `url.path` a span holds. A path is the sender's to choose (tens of
/// kilobytes fit in a request head), and the span queue is bounded by count: with whole
/// paths a flood of 404s behind a slow collector queued 4,096 spans of 40 KB each.
const MAX_SPAN_PATH: usize = 256;

/// `url.path` as a span holds it: at most `MAX_SPAN_PATH` bytes, cut at a character's
/// start (the parser lets bytes outside ASCII through; a cut is marked with `...`).
fn path_shown(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= MAX_SPAN_PATH {
        return path.into();
    }
    let mut end = MAX_SPAN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end]).into()
}

/// `http.request.method` as the semantic conventions name it: a method HTTP defines,
/// else `_OTHER` (an extension method is the sender's to spell, at any length).
fn method_name(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// The address of an upstream, for a client span: host and port only (a URL may carry
/// credentials or a token in its query). An IPv6 host without its URL brackets, as the
/// semantic conventions write `server.address` (`::1`, not `[::1]`).
pub fn server_address(uri: &http::Uri) -> (String, i64) {
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    (host, i64::from(port))
}

/// What counts and reports dropped spans.
#[derive(Clone)]
struct Dropped {
    counter: IntCounter,
    gate: Arc<LogGate>,
    /// Why the last export request could not be sent (`Explained`).
    cause: Arc<std::sync::Mutex<Option<String>>>,
}

impl Dropped {
    fn count(&self, spans: usize, why: &str) {
        self.counter.inc_by(spans as u64);
        if let Some(held_back) = self.gate.admit(Instant::now()) {
            tracing::warn!(
                spans,
                warnings_held_back = held_back,
                dropped_total = self.counter.get(),
                "telemetry: trace spans dropped ({why}); see hookgate_telemetry_spans_dropped_total"
            );
        }
    }
}

/// Hands ended spans to the export task without ever waiting (module doc).
struct Batcher {
    spans: mpsc::Sender<SpanData>,
    /// Wakes the export task each time another `MAX_BATCH` spans are queued.
    batch_full: Arc<tokio::sync::Notify>,
    dropped: Dropped,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Batcher")
    }
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped
                .count(1, "the export queue is full: the collector is down or slow");
            return;
        }
        // A batch is ready: export it now rather than at the next tick. Waiting for the
        // tick capped what was exported at `max_queued_spans` per `export_interval` (4,096
        // spans a second by default: a gateway past about 700 requests a second, each
        // traced, dropped the rest).
        // At least a batch, not exactly one: two spans ending at once on two threads
        // can both count past a multiple of it, and the wake-up was missed. A `Notify`
        // keeps one permit, so repeated calls while an export runs cost nothing more.
        let queued = self.spans.max_capacity() - self.spans.capacity();
        if queued >= MAX_BATCH {
            self.batch_full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The OTLP exporter's HTTP client, keeping why a request could not be sent: the
/// exporter reports every such failure as "network error", and a collector whose
/// certificate was refused, or that refused the connection, looked the same in the log.
struct Explained {
    client: opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    cause: Arc<std::sync::Mutex<Option<String>>>,
}

impl fmt::Debug for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Explained")
    }
}

impl opentelemetry_http::HttpClient for Explained {
    fn send_bytes<'a, 'f>(
        &'a self,
        request: http::Request<bytes::Bytes>,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError>>
                + Send
                + 'f,
        >,
    >
    where
        'a: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            // A cause is for the export that failed with it, not a later one.
            *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let sent = self.client.send_bytes(request).await;
            if let Err(e) = &sent {
                let text = crate::error_chain::one_line(e.as_ref());
                *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
            }
            sent
        })
    }
}

/// Every `interval`, when a batch is full, or when asked to flush, exports what is
/// queued in batches of `MAX_BATCH`, each bounded by `timeout`, one at a time.
async fn export_forever(
    mut queued: mpsc::Receiver<SpanData>,
    batch_full: Arc<tokio::sync::Notify>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    exporter: opentelemetry_otlp::SpanExporter,
    interval: Duration,
    timeout: Duration,
    dropped: Dropped,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flushed = tokio::select! {
            _ = tick.tick() => None,
            _ = batch_full.notified() => None,
            asked = flushes.recv() => asked,
        };
        loop {
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                match queued.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let spans = batch.len();
            match tokio::time::timeout(timeout, exporter.export(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let cause = dropped
                        .cause
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    let why = match cause {
                        Some(cause) => format!("export failed: {e}: {cause}"),
                        None => format!("export failed: {e}"),
                    };
                    dropped.count(spans, &why)
                }
                Err(_) => dropped.count(spans, "the collector did not answer in time"),
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_http::HeaderInjector;

    fn value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn with_tracing_off_a_span_is_nothing_and_headers_stay_as_sent() {
        let telemetry = Telemetry::off();
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let span = telemetry.request(&http::Method::POST, "/x", &headers);
        span.inject(&mut headers);
        assert_eq!(span.trace_id(), None);
        assert_eq!(span.traceparent(), None);
        assert_eq!(
            value(&headers, &TRACEPARENT).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert!(telemetry.attempt(Some("junk")).trace_id().is_none());
    }

    #[test]
    fn traceparent_is_written_as_the_sdk_propagator_writes_it() {
        let propagator = TraceContextPropagator::new();
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let state = TraceState::from_key_value([("vendor", "value")]).unwrap();
        for (flags, state) in [
            (TraceFlags::SAMPLED, TraceState::NONE),
            (TraceFlags::NOT_SAMPLED, TraceState::NONE),
            (TraceFlags::new(0xff), state.clone()),
        ] {
            let context = SpanContext::new(trace_id, span_id, flags, true, state.clone());
            let cx = Context::new().with_remote_span_context(context.clone());
            let mut expected = HeaderMap::new();
            propagator.inject_context(&cx, &mut HeaderInjector(&mut expected));
            assert_eq!(traceparent_of(&context), value(&expected, &TRACEPARENT));
        }
        assert_eq!(traceparent_of(&SpanContext::NONE), None);
    }

    #[test]
    fn only_a_well_formed_traceparent_is_read() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(well_formed_traceparent(good.as_bytes()));
        // A later version may carry more fields, after a `-`.
        assert!(well_formed_traceparent(
            b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes"
        ));
        for bad in [
            "00-1-1-1",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.x",
            "",
        ] {
            assert!(!well_formed_traceparent(bad.as_bytes()), "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(good));
        headers.append(TRACESTATE, HeaderValue::from_static("a=1,b=2"));
        headers.append(TRACESTATE, HeaderValue::from_static("c=3"));
        let carrier = sender_context(&headers).unwrap();
        assert_eq!(carrier["tracestate"], "a=1,b=2,c=3");
        // Two traceparents: neither is believed.
        headers.append(TRACEPARENT, HeaderValue::from_static(good));
        assert!(sender_context(&headers).is_none());
    }

    #[test]
    fn a_span_holds_a_bounded_path_and_a_known_method_or_other() {
        assert_eq!(path_shown("/webhooks/openai"), "/webhooks/openai");
        let long = format!("/{}", "a".repeat(40_000));
        let shown = path_shown(&long);
        assert_eq!(shown.len(), MAX_SPAN_PATH + 3);
        assert!(shown.ends_with("..."));
        assert_eq!(path_shown(&long[..MAX_SPAN_PATH]).len(), MAX_SPAN_PATH);
        // A character across the cut is left out whole.
        let accented = format!(
            "/{}\u{e9}{}",
            "a".repeat(MAX_SPAN_PATH - 2),
            "b".repeat(40_000)
        );
        let shown = path_shown(&accented);
        assert_eq!(shown.len(), MAX_SPAN_PATH - 1 + 3);
        assert!(shown.ends_with("a..."));
        assert_eq!(method_name(&http::Method::POST), "POST");
        let odd = http::Method::from_bytes("X".repeat(1000).as_bytes()).unwrap();
        assert_eq!(method_name(&odd), "_OTHER");
    }

    #[test]
    fn upstream_addresses_keep_only_host_and_port() {
        let uri: http::Uri = "https://user:pw@backend.example/hook?token=s3cret"
            .parse()
            .unwrap();
        assert_eq!(server_address(&uri), ("backend.example".to_owned(), 443));
        let uri: http::Uri = "http://127.0.0.1:9001/x".parse().unwrap();
        assert_eq!(server_address(&uri), ("127.0.0.1".to_owned(), 9001));
        let uri: http::Uri = "http://[::1]:9001/x".parse().unwrap();
        assert_eq!(server_address(&uri), ("::1".to_owned(), 9001));
    }
}
