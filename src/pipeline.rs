//! The request path, as a list of stages in the order the security design needs.
//!
//! Each stage is a small function that returns what the next one needs or a `Reject`.
//! The order is the design: the header limits come first (nothing may look further
//! into an oversized head); then the in-memory refusals, cheapest first: the penalty box
//! (clients that keep failing verification) and the source's `allow_ips`, before the
//! rate limit, whose store may cost a round trip; all of them before any body byte is
//! read. So are the source's header checks: a second copy of a header the source reads
//! or a `Connection` field that would strip one (hookgate and the backend would read
//! different values), and a compressed body. The body
//! is read under a size cap before any hashing; the signature is verified before the
//! body is trusted as JSON; the dedupe key is claimed only after verification (an
//! unsigned request must never occupy a real delivery id) and settled only once the
//! upstream has answered, or, in queue mode, once the delivery is stored: `enqueue`
//! replaces `forward` as the stage after the claim, and the workers (`queue::worker`)
//! forward it later. Where the queue holds the dedupe keys too (PostgreSQL), a first
//! delivery's key is written done by the enqueue itself, in one statement, still after
//! verification; only a key something holds is claimed first.
//!
//! With tracing on, the request is a span (`Trace::span`) and each stage that costs
//! time (a store round trip, verification, the upstream, the enqueue) runs in a child
//! span of its own (`telemetry::Span::stage`); with it off those wrappers are a branch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use prometheus::IntCounter;
use tokio_util::task::TaskTracker;

use crate::body_budget::{BodyBudget, Reservation};
use crate::breaker::Admission;
use crate::client_ip::ClientIpResolver;
use crate::config::{ContentEncoding, DeliveryMode, Limits, Settings, Source};
use crate::dedupe::{Claimed, Dedupe};
use crate::event;
use crate::forward::{self, ForwardContext, Forwarder};
use crate::metrics::{Metrics, NO_SOURCE, RouteMetrics, SourceMetrics};
use crate::penalty_box::{PenaltyBox, Recorded};
use crate::queue::{Ingress, NewDelivery, QueueError, now_millis};
use crate::ratelimit::RateLimit;
use crate::reject::{self, Answer, Reject, json_response};
use crate::route::Route;
use crate::store::Store;
use crate::telemetry::{Failed, Span, Telemetry};

pub struct Gateway {
    /// By path.
    sources: HashMap<String, Entry>,
    /// For requests that match no source.
    unmatched: SourceMetrics,
    client_ip: ClientIpResolver,
    /// Kept by a reload that leaves `[penalty_box]` as it was (`reload::build_gateway`).
    penalty_box: Arc<PenaltyBox>,
    metrics: Arc<Metrics>,
    ratelimit: RateLimit,
    /// Shared with the tasks that settle a claim after the request (`settle_when_known`).
    dedupe: Arc<Dedupe>,
    forward: Arc<Forwarder>,
    limits: Limits,
    /// Shared by every gateway a reload builds: bodies in flight keep their bytes.
    body_budget: Arc<BodyBudget>,
    tls: bool,
    telemetry: Telemetry,
    /// Every request's pipeline task, waited for at shutdown: a sender that hung up
    /// ends its connection, which then no longer holds the shutdown back.
    requests: TaskTracker,
}

/// A source with what the request path needs of it, resolved once.
struct Entry {
    source: Source,
    /// `X-Hookgate-Source` for the upstream.
    header: HeaderValue,
    metrics: SourceMetrics,
    /// Indexed like `source.routes`.
    routes: Vec<RouteMetrics>,
    /// `hookgate_verified_total`, indexed like the source's secrets.
    verified: Vec<IntCounter>,
    /// Where a claimed delivery goes: the upstream now, or the queue.
    handoff: Handoff,
}

enum Handoff {
    Forward,
    Enqueue(Ingress),
}

/// What the one access-log line says about a request; filled in as stages pass.
#[derive(Default)]
struct Trace<'g> {
    client: Option<IpAddr>,
    source: Option<&'g Entry>,
    route: Option<&'g str>,
    webhook_id: Option<String>,
    /// The id a request refused at the signature or payload stage claims: for its access
    /// line only (a sender's complaint about one id finds it), never its span, which
    /// holds no unverified header value.
    claimed_id: Option<String>,
    event_type: Option<String>,
    /// Queue mode: the id of the stored delivery.
    delivery_id: Option<String>,
    /// `hookgate.request`, parent of the stages' spans (nothing when tracing is off).
    span: Span,
}

/// The per-client guards that outlive one configuration: what each client IP's bodies
/// hold in memory, and the clients boxed for failing verification.
pub struct ClientGuards {
    pub body_budget: Arc<BodyBudget>,
    pub penalty_box: Arc<PenaltyBox>,
}

impl Gateway {
    /// `queue` must be present when a source uses queue mode (`queue::build` makes sure).
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        forward: Arc<Forwarder>,
        queue: Option<Ingress>,
        guards: ClientGuards,
        telemetry: Telemetry,
    ) -> Self {
        let entry = |source: Source| Entry {
            handoff: match source.delivery {
                DeliveryMode::Proxy => Handoff::Forward,
                DeliveryMode::Queue => Handoff::Enqueue(
                    queue
                        .clone()
                        .expect("a queue is built whenever a source uses queue mode"),
                ),
            },
            header: HeaderValue::from_str(&source.name).expect("source names are checked ASCII"),
            metrics: metrics.source(&source.name),
            verified: metrics.verified(&source.name, source.secrets),
            routes: source
                .routes
                .iter()
                .map(|route| metrics.route(route.label()))
                .collect(),
            source,
        };
        Gateway {
            unmatched: metrics.source(NO_SOURCE),
            client_ip: ClientIpResolver::new(settings.trusted_proxies),
            penalty_box: guards.penalty_box,
            metrics: metrics.clone(),
            ratelimit: RateLimit::new(store.clone(), settings.store.on_error, metrics.clone()),
            dedupe: Arc::new(Dedupe::new(
                store,
                settings.dedupe,
                settings.store.on_error,
                metrics.clone(),
            )),
            forward,
            limits: settings.limits,
            body_budget: guards.body_budget,
            tls: settings.server.tls.is_some(),
            telemetry,
            requests: TaskTracker::new(),
            sources: settings
                .sources
                .into_iter()
                .map(|source| (source.path.clone(), entry(source)))
                .collect(),
        }
    }

    /// Requests are tracked in `requests` (shared by every gateway a reload builds, so a
    /// shutdown waits for all of them).
    pub fn with_requests(mut self, requests: TaskTracker) -> Self {
        self.requests = requests;
        self
    }

    /// `limits.body_read_timeout`, which bounds the console's forms too: a body that
    /// never comes must not hold one of the admin listener's few connections.
    pub fn body_read_timeout(&self) -> std::time::Duration {
        self.limits.body_read_timeout
    }

    /// Answers one request. The pipeline runs in its own task, so a sender that hangs
    /// up mid-forward cannot cancel it between the forward and the dedupe settle: the
    /// outcome is always recorded, and nothing is forwarded twice because of a hang-up.
    pub async fn serve<B>(
        self: Arc<Self>,
        req: Request<B>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let requests = self.requests.clone();
        match requests
            .spawn(async move { self.respond(req, peer).await })
            .await
        {
            Ok(response) => response,
            Err(e) => {
                tracing::error!(error = %e, "request task failed");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"error":"internal"}"#.to_owned(),
                )
            }
        }
    }

    async fn respond<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let mut trace = Trace {
            span: self
                .telemetry
                .request(req.method(), req.uri().path(), req.headers()),
            ..Trace::default()
        };
        let (outcome, detail, response) = match self.handle(req, peer, &mut trace).await {
            Ok(answer) => (answer.outcome(), answer.detail(), answer.into_response()),
            Err(reject) => (
                reject.outcome(),
                Some(reject.to_string()),
                reject.into_response(),
            ),
        };
        let elapsed = started.elapsed();
        let (source, metrics) = match trace.source {
            Some(entry) => (entry.source.name.as_str(), &entry.metrics),
            None => (NO_SOURCE, &self.unmatched),
        };
        metrics.observe(outcome, elapsed);
        let status = response.status().as_u16();
        if trace.span.is_recording() {
            trace.annotate(source, outcome.label(), status);
        }
        trace.span.end();
        tracing::info!(
            target: "hookgate::access",
            source,
            route = trace.route,
            outcome = outcome.label(),
            status,
            // Whole microseconds: `elapsed * 1000.0` logs as 0.21756999999999999.
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            webhook_id = trace.webhook_id.as_deref().or(trace.claimed_id.as_deref()),
            event_type = trace.event_type.as_deref(),
            delivery_id = trace.delivery_id.as_deref(),
            client_ip = trace.client.map(tracing::field::display),
            detail = detail.as_deref(),
            // Formatted only when the line is written (the macro's fields are lazy).
            trace_id = trace.span.trace_id().as_deref(),
        );
        response
    }

    async fn handle<'g, B>(
        &'g self,
        req: Request<B>,
        peer: SocketAddr,
        trace: &mut Trace<'g>,
    ) -> Result<Answer, Reject>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ip = self.client_ip.resolve(peer, req.headers());
        trace.client = Some(ip);
        let entry = self.sources.get(req.uri().path());
        trace.source = entry;
        check_header_limits(req.headers(), &self.limits)?;
        // The box never stands between a sender and a source that lists its address:
        // boxed through another source (failures there count), a shared sender address
        // would still have its genuine deliveries here refused.
        if let Some(wait) = self.penalty_box.remaining(ip, tokio::time::Instant::now())
            && !entry.is_some_and(|e| is_senders(ip, &e.source))
        {
            return Err(Reject::PenaltyBox { retry_after: wait });
        }
        if let Some(entry) = entry {
            check_allowed(ip, &entry.source)?;
        }
        // A store round trip: after the free refusals.
        (trace.span)
            .stage("hookgate.rate_limit", self.ratelimit.check(ip))
            .await?;
        let entry = entry.ok_or(Reject::NotFound)?;
        let source = &entry.source;
        require_post(req.method())?;
        check_headers(req.headers(), source)?;
        let (parts, body) = req.into_parts();
        // The body's bytes count against the client's and the process's budget until
        // the signature is checked: unsigned bodies are what a flood would hold.
        let mut reservation = self.body_budget.reserve(ip);
        let body = read_body(body, &self.limits, &mut reservation).await?;
        let delivery = (trace.span)
            .stage_sync("hookgate.verify", || {
                source
                    .verifier
                    .verify(&parts.headers, &body, SystemTime::now())
            })
            // A source's `allow_ips` are its sender's own addresses, which a sender like
            // GitHub or Stripe shares among all its customers: anyone with an account
            // there could point a webhook signed with their own secret at this URL and
            // get the sender boxed, its genuine deliveries refused. Not counted there.
            .inspect_err(|_| {
                if !is_senders(ip, source) {
                    self.verification_failed(ip)
                }
                // The id the sender claims, so that its complaint ("msg_x got 400 after
                // we rotated the secret") finds the line. Unverified: never read from
                // the body, and only a well-formed key.
                if let event::Field::Header(_) = source.dedupe_key {
                    trace.claimed_id = claimed_id(source, &parts.headers, &body);
                }
            })?;
        drop(reservation);
        if let Some(verified) = entry.verified.get(delivery.secret_index) {
            verified.inc();
        }
        let (dedupe_key, event_type) = event::dedupe_key_and_event_type(
            &source.dedupe_key,
            &source.event_type,
            &parts.headers,
            &body,
        )
        // A genuine delivery refused for its payload is found by its id all the same.
        .inspect_err(|_| trace.claimed_id = claimed_id(source, &parts.headers, &body))?;
        let dedupe_key: &str = trace.webhook_id.insert(dedupe_key.into_owned());
        let event_type: &str = trace.event_type.insert(event_type.into_owned());
        let Some((route_index, route)) = source.routes.first_match(event_type, &body) else {
            return Ok(Answer::Unrouted);
        };
        trace.route = Some(route.name());
        // Claim only after verification: an unsigned request must never occupy a real id.
        let claim_key = source.binding.claim_key(dedupe_key, event_type, &body);
        let mut headers = self.upstream_headers(parts, peer, entry, event_type);
        let copies = match &entry.handoff {
            Handoff::Enqueue(_) => copies_of(
                source,
                route,
                dedupe_key,
                event_type,
                &headers,
                &body,
                &trace.span,
            ),
            Handoff::Forward => Vec::new(),
        };
        // Where the queue holds the dedupe keys too (PostgreSQL), a first delivery is
        // stored with its key written done in one statement, with no claim before it;
        // a key something holds is claimed below as on every other store.
        if let Handoff::Enqueue(queue) = &entry.handoff
            && queue.queue.dedupe_in_enqueue()
        {
            let (key, ttl) = self.dedupe.done_key(&source.name, &claim_key);
            let stored = (trace.span)
                .stage(
                    "hookgate.enqueue",
                    queue.enqueue_all_first(&copies, &key, ttl),
                )
                .await
                .map_err(Reject::from)?;
            if let Some(delivery_ids) = stored {
                trace.delivery_id = Some(delivery_ids.join(","));
                return Ok(Answer::Queued { delivery_ids });
            }
        }
        let claiming = async { ClaimStage(self.dedupe.claim(&source.name, &claim_key).await) };
        let claim = match (trace.span)
            .stage("hookgate.dedupe.claim", claiming)
            .await
            .0?
        {
            Claimed::Won(claim) => claim,
            Claimed::AlreadyDone => return Ok(Answer::Duplicate),
        };
        let (answer, delivered) = match &entry.handoff {
            // An open breaker sends nothing and releases the claim: the sender's retry
            // after `Retry-After` is forwarded once the upstream is back.
            Handoff::Forward => match self.forward.admit(route, tokio::time::Instant::now()) {
                Admission::Open { retry_after } => {
                    (Err(Reject::CircuitOpen { retry_after }), false)
                }
                Admission::Pass(pass) => {
                    forward::prepare(
                        route,
                        &mut headers,
                        &claim_key,
                        source.scheme,
                        &body,
                        SystemTime::now(),
                    );
                    let call = trace.span.upstream_call(route.upstream());
                    call.inject(&mut headers);
                    let outcome = self
                        .forward
                        .send(route, &entry.routes[route_index], headers, body, true)
                        .await;
                    call.upstream(&outcome);
                    call.end();
                    // A forward the shutdown's drain cut short says nothing of its
                    // upstream.
                    if !(matches!(outcome, crate::upstream::UpstreamOutcome::Timeout)
                        && self.forward.drained())
                    {
                        pass.record(&outcome, tokio::time::Instant::now());
                    }
                    let delivered = outcome.is_delivered();
                    (reject::answer(route.label(), outcome), delivered)
                }
            },
            // Done once stored: the sender's retries are duplicates from here on. If the
            // store fails, the claim is released and the sender told to retry (503); if
            // it failed after the delivery was sent (it may be stored), the claim stays
            // in flight until the queue can say, so a retry is neither stored twice nor
            // lost.
            // A route that re-signs is re-signed by the worker at each attempt, so the
            // backend always sees a fresh timestamp. A fan-out route stores one copy per
            // upstream, all in one step: the 202 means every copy is stored.
            Handoff::Enqueue(queue) => {
                // Where the queue also holds the dedupe claims (PostgreSQL), the copies
                // are stored with the claim marked done in one transaction.
                let storing = async {
                    match self.dedupe.done_with(&claim) {
                        Some(done) => queue.enqueue_all_claimed(copies, done).await,
                        None => queue.enqueue_all(copies).await.map(|ids| (ids, false)),
                    }
                };
                let (stored, settled) = match (trace.span).stage("hookgate.enqueue", storing).await
                {
                    Ok((delivery_ids, settled)) => {
                        trace.delivery_id = Some(delivery_ids.join(","));
                        (Ok(Answer::Queued { delivery_ids }), settled)
                    }
                    Err(QueueError::MaybeStored { ids, error }) => {
                        // It may yet be attempted: its line names it.
                        trace.delivery_id = Some(ids.join(","));
                        let (dedupe, queue) = (self.dedupe.clone(), queue.queue.clone());
                        let ids = Arc::new(ids);
                        tokio::spawn(async move {
                            let stored = || {
                                let (queue, ids) = (queue.clone(), ids.clone());
                                async move { queue.stored(&ids).await }
                            };
                            dedupe.settle_when_known(claim, stored).await;
                        });
                        return Err(Reject::from(QueueError::Store(error)));
                    }
                    Err(e) => (Err(Reject::from(e)), false),
                };
                // Stored with its dedupe key done in one transaction: nothing to settle.
                if settled {
                    return stored;
                }
                let stored_ok = stored.is_ok();
                (stored, stored_ok)
            }
        };
        // Logged by `settle`: the answer was decided by the upstream.
        let _ = (trace.span)
            .stage(
                "hookgate.dedupe.settle",
                self.dedupe.settle(claim, delivered),
            )
            .await;
        answer
    }

    fn upstream_headers(
        &self,
        parts: http::request::Parts,
        peer: SocketAddr,
        entry: &Entry,
        event_type: &str,
    ) -> HeaderMap {
        let forwarded_for = self.client_ip.forwarded_for(peer, &parts.headers);
        forward::upstream_headers(
            parts.headers,
            &ForwardContext {
                forwarded_for,
                tls: self.tls,
                proxied: self.client_ip.trusts(peer),
                authority: parts.uri.authority(),
                reads: &entry.source.reads,
                source: &entry.header,
                event_type,
            },
        )
    }
}

impl Trace<'_> {
    /// The request span's attributes, set once its outcome is known: names and ids, never
    /// a body, a signature, a secret or the client's address.
    fn annotate(&self, source: &str, outcome: &'static str, status: u16) {
        let span = &self.span;
        span.set("hookgate.source", source.to_owned());
        span.set("hookgate.outcome", outcome);
        span.set("http.response.status_code", i64::from(status));
        for (key, value) in [
            ("hookgate.route", self.route),
            ("hookgate.webhook_id", self.webhook_id.as_deref()),
            ("hookgate.event_type", self.event_type.as_deref()),
            ("hookgate.delivery_id", self.delivery_id.as_deref()),
        ] {
            if let Some(value) = value {
                span.set(key, value.to_owned());
            }
        }
        if status >= 500 {
            span.fail(outcome);
        }
    }
}

impl Gateway {
    /// The penalty box, for the next configuration to keep (`reload::build_gateway`).
    pub fn penalty_box(&self) -> &Arc<PenaltyBox> {
        &self.penalty_box
    }

    /// Counts a failed verification toward the client's penalty box.
    fn verification_failed(&self, ip: IpAddr) {
        if self.penalty_box.failed(ip, tokio::time::Instant::now()) == Recorded::Boxed {
            self.metrics.penalty_boxed();
            tracing::warn!(client_ip = %ip, "client put in the penalty box: too many failed verifications");
        }
    }
}

/// The claim stage's result, failed for its span also when the store failed and
/// `on_error = "allow"` let the request through unguarded (its span said OK).
struct ClaimStage(Result<Claimed, Reject>);

impl Failed for ClaimStage {
    fn failed(&self) -> bool {
        match &self.0 {
            Ok(Claimed::Won(claim)) => !claim.held(),
            Ok(Claimed::AlreadyDone) => false,
            Err(_) => true,
        }
    }
}

/// The queued copies of one verified delivery: one per upstream of its route (a fan-out
/// route has several), each with the headers the upstream gets and the request span's
/// trace context.
fn copies_of(
    source: &Source,
    route: &Route,
    webhook_id: &str,
    event_type: &str,
    headers: &HeaderMap,
    body: &Bytes,
    span: &Span,
) -> Vec<NewDelivery> {
    let received_at = now_millis();
    let trace_context = span.traceparent();
    // Copied only when tracing is on, to drop the sender's trace context.
    let mut kept = std::borrow::Cow::Borrowed(headers);
    if span.is_on() {
        span.forget_sender_context(kept.to_mut());
    }
    let headers = kept.as_ref();
    route
        .upstreams()
        .iter()
        .map(|upstream| NewDelivery {
            source: source.name.clone(),
            route: upstream.delivery_route.clone(),
            webhook_id: webhook_id.to_owned(),
            event_type: event_type.to_owned(),
            headers: headers.clone(),
            body: body.clone(),
            received_at,
            trace_context: trace_context.clone(),
        })
        .collect()
}

/// `limits.max_headers` and `limits.max_header_bytes` (names plus values).
fn check_header_limits(headers: &HeaderMap, limits: &Limits) -> Result<(), Reject> {
    if headers.len() > limits.max_headers {
        return Err(Reject::HeadersTooLarge);
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

/// Whether `ip` is one of the sender's own addresses: in the source's `allow_ips`.
fn is_senders(ip: IpAddr, source: &Source) -> bool {
    source.allow_ips.iter().any(|net| net.contains(&ip))
}

/// The source's `allow_ips`, when it has any.
fn check_allowed(ip: IpAddr, source: &Source) -> Result<(), Reject> {
    if source.allow_ips.is_empty() || is_senders(ip, source) {
        Ok(())
    } else {
        Err(Reject::IpNotAllowed)
    }
}

/// The checks of a request's headers before its body is read: the headers `source`
/// reads (`check_read_headers`) and its `Content-Encoding`. `hookgate verify` runs them
/// too, so it cannot call VERIFIED what the gateway refuses first.
pub fn check_headers(headers: &HeaderMap, source: &Source) -> Result<(), Reject> {
    check_read_headers(headers, &source.reads)?;
    check_single(headers)?;
    check_content_encoding(headers, source.content_encoding)
}

/// `Host` and `Content-Type` come once: with two, backends disagree on which one is
/// meant (Node reads the first `Content-Type`, gunicorn the last), and might parse the
/// verified body as something else than hookgate did; two `Host` lines are an error in
/// HTTP/1.1 (RFC 9112 §3.2).
fn check_single(headers: &HeaderMap) -> Result<(), Reject> {
    for name in [http::header::HOST, CONTENT_TYPE] {
        if headers.get_all(&name).iter().nth(1).is_some() {
            return Err(Reject::DuplicateHeader(name));
        }
    }
    Ok(())
}

/// Each header the source reads comes at most once, counting spellings with `_` (which
/// CGI-style backends merge with it), and no `Connection` field lists one (it would be
/// stripped before the backend re-verifies). Only the few read names are looked up;
/// names are lower case, so another spelling of one has a `_` where the other has a
/// `-`, and the headers are searched for one only when some name has a `_` (rarely).
/// Public for the fuzz targets.
pub fn check_read_headers(headers: &HeaderMap, reads: &[HeaderName]) -> Result<(), Reject> {
    let underscored = headers.keys().any(|name| name.as_str().contains('_'));
    for name in reads {
        let mut values = headers.get_all(name).iter();
        if values.next().is_none() {
            continue;
        }
        let twin = || {
            headers
                .keys()
                .any(|other| other != name && forward::same_to_cgi(other.as_str(), name.as_str()))
        };
        if values.next().is_some() || ((underscored || name.as_str().contains('_')) && twin()) {
            return Err(Reject::DuplicateHeader(name.clone()));
        }
    }
    for token in forward::connection_tokens(headers) {
        if let Some(name) = reads
            .iter()
            .find(|name| forward::same_to_cgi(token, name.as_str()))
        {
            return Err(Reject::ConnectionStripsHeader(name.clone()));
        }
    }
    Ok(())
}

/// A body under a `Content-Encoding` other than `identity` (in any of its fields) is
/// refused unless the source passes it through. So is one under a transfer coding other
/// than `chunked` (`Transfer-Encoding: gzip, chunked`): the HTTP server takes off the
/// chunking alone, and the gzip bytes were verified and forwarded without a word of
/// their coding (transfer codings are hop-by-hop). A source that passes encoded bodies
/// through needs its `Content-Encoding` at the backend: a `Connection` field naming it
/// (which strips it) is refused.
fn check_content_encoding(headers: &HeaderMap, policy: ContentEncoding) -> Result<(), Reject> {
    let transfer_coded = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"chunked"));
    if transfer_coded {
        return Err(Reject::UnsupportedContentEncoding);
    }
    if policy == ContentEncoding::Pass {
        if forward::connection_tokens(headers)
            .any(|token| forward::same_to_cgi(token, CONTENT_ENCODING.as_str()))
        {
            return Err(Reject::ConnectionStripsHeader(CONTENT_ENCODING));
        }
        return Ok(());
    }
    let encoded = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"));
    if encoded {
        Err(Reject::UnsupportedContentEncoding)
    } else {
        Ok(())
    }
}

fn require_post(method: &Method) -> Result<(), Reject> {
    if method == Method::POST {
        Ok(())
    } else {
        Err(Reject::MethodNotAllowed)
    }
}

/// Reads the whole body under the size cap, the read timeout and the body budget. A
/// declared `Content-Length` over the cap is refused before a byte is read; one under
/// it is taken from the budget before a byte is read. The body is copied into one
/// buffer as it comes, so what the budget counts is what is allocated (a chunk kept as
/// received could pin the whole read buffer it was cut from).
async fn read_body<B>(
    body: B,
    limits: &Limits,
    reservation: &mut Reservation<'_>,
) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = limits.max_body_bytes;
    let declared = body.size_hint().lower();
    if declared > max as u64 {
        return Err(Reject::TooLarge);
    }
    let read = async {
        let declared = declared as usize;
        reservation.hold(declared).await?;
        let mut buf = Vec::with_capacity(declared);
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body
            .frame()
            .await
            .transpose()
            .map_err(|_| Reject::BadBody)?
        {
            let Ok(data) = frame.into_data() else {
                continue; // trailers: not part of what is signed
            };
            let needed = buf.len() + data.len();
            if needed > max {
                return Err(Reject::TooLarge);
            }
            if needed > buf.capacity() {
                let grown = needed.max(buf.capacity() * 2).min(max);
                reservation.hold(grown).await?;
                buf.reserve_exact(grown - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(limits.body_read_timeout, read)
        .await
        .unwrap_or(Err(Reject::BodyTimeout))
}

/// The dedupe key a refused request carries, for its access line (`Trace::claimed_id`).
fn claimed_id(source: &Source, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    (source.dedupe_key.dedupe_key(headers, body))
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn limits(max_headers: usize, max_header_bytes: usize) -> Limits {
        let mut limits = crate::config::parse(
            "[[sources]]\nname = \"s\"\npath = \"/s\"\nscheme = \"standard-webhooks\"\n\
             secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n\
             [[sources.routes]]\nevents = [\"*\"]\nupstream = \"http://127.0.0.1:9/\"\n",
            "test.toml",
        )
        .unwrap()
        .limits;
        limits.max_headers = max_headers;
        limits.max_header_bytes = max_header_bytes;
        limits
    }

    fn headers(count: usize, value_len: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        for i in 0..count {
            let name = HeaderName::try_from(format!("x-{i}")).unwrap();
            h.insert(name, HeaderValue::from_str(&"v".repeat(value_len)).unwrap());
        }
        h
    }

    #[test]
    fn header_limits_count_fields_and_the_bytes_of_names_and_values() {
        let limits = limits(3, 30);
        // Three fields of "x-N" (3 bytes) and 7 bytes of value: exactly 30 bytes.
        assert!(check_header_limits(&headers(3, 7), &limits).is_ok());
        assert!(matches!(
            check_header_limits(&headers(4, 1), &limits),
            Err(Reject::HeadersTooLarge)
        ));
        assert!(matches!(
            check_header_limits(&headers(3, 8), &limits),
            Err(Reject::HeadersTooLarge)
        ));
    }

    #[test]
    fn allow_ips_admits_only_listed_clients_and_empty_admits_all() {
        let settings = crate::config::parse(
            "[[sources]]\nname = \"s\"\npath = \"/s\"\nscheme = \"standard-webhooks\"\n\
             secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n\
             allow_ips = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n\
             [[sources.routes]]\nevents = [\"*\"]\nupstream = \"http://127.0.0.1:9/\"\n",
            "test.toml",
        )
        .unwrap();
        let source = &settings.sources[0];
        for ok in ["192.0.2.7", "2001:db8:5::1"] {
            assert!(check_allowed(ok.parse().unwrap(), source).is_ok(), "{ok}");
        }
        for refused in ["192.0.3.1", "2001:db9::1", "127.0.0.1"] {
            assert!(
                matches!(
                    check_allowed(refused.parse().unwrap(), source),
                    Err(Reject::IpNotAllowed)
                ),
                "{refused}"
            );
        }
    }

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn a_header_the_source_reads_must_come_once_in_any_spelling_and_never_be_hop_by_hop() {
        let reads = [
            HeaderName::from_static("webhook-id"),
            HeaderName::from_static("webhook-signature"),
        ];
        let ok = map(&[
            ("webhook-id", "msg_1"),
            ("webhook-signature", "v1,x"),
            ("connection", "keep-alive, x-hop"),
            ("x_other", "1"),
        ]);
        assert!(check_read_headers(&ok, &reads).is_ok());
        for (fields, expected) in [
            (
                &[("webhook-id", "msg_1"), ("webhook-id", "msg_2")][..],
                "duplicate webhook-id",
            ),
            (
                &[("webhook-id", "msg_1"), ("webhook_id", "msg_2")][..],
                "duplicate webhook-id",
            ),
            (
                &[("webhook-signature", "v1,x"), ("webhook_signature", "v1,y")][..],
                "duplicate webhook-signature",
            ),
            (
                &[("webhook-id", "m"), ("connection", "Webhook-Signature")][..],
                "connection webhook-signature",
            ),
            (
                &[
                    ("connection", "keep-alive"),
                    ("connection", "x-a, webhook-id"),
                ][..],
                "connection webhook-id",
            ),
            (&[("connection", "webhook_id")][..], "connection webhook-id"),
        ] {
            let got = match check_read_headers(&map(fields), &reads) {
                Err(Reject::DuplicateHeader(name)) => format!("duplicate {name}"),
                Err(Reject::ConnectionStripsHeader(name)) => format!("connection {name}"),
                other => format!("{other:?}"),
            };
            assert_eq!(got, expected, "{fields:?}");
        }
    }

    #[test]
    fn host_and_content_type_come_once() {
        assert!(check_single(&map(&[("content-type", "application/json")])).is_ok());
        for fields in [
            &[("host", "a"), ("host", "b")][..],
            &[
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ][..],
        ] {
            assert!(
                matches!(check_single(&map(fields)), Err(Reject::DuplicateHeader(_))),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn only_an_identity_content_encoding_is_accepted_unless_the_source_passes_it() {
        for fields in [
            &[][..],
            &[("content-encoding", "identity")][..],
            &[("content-encoding", "Identity, identity")][..],
            &[("content-encoding", "")][..],
        ] {
            assert!(
                check_content_encoding(&map(fields), ContentEncoding::Refuse).is_ok(),
                "{fields:?}"
            );
        }
        for fields in [
            &[("content-encoding", "gzip")][..],
            &[("content-encoding", "identity, br")][..],
            &[
                ("content-encoding", "identity"),
                ("content-encoding", "deflate"),
            ][..],
        ] {
            assert!(
                matches!(
                    check_content_encoding(&map(fields), ContentEncoding::Refuse),
                    Err(Reject::UnsupportedContentEncoding)
                ),
                "{fields:?}"
            );
            assert!(check_content_encoding(&map(fields), ContentEncoding::Pass).is_ok());
        }
        // A transfer coding beyond chunked, under either policy.
        let gzipped = [("transfer-encoding", "gzip, chunked")];
        for policy in [ContentEncoding::Refuse, ContentEncoding::Pass] {
            assert!(matches!(
                check_content_encoding(&map(&gzipped), policy),
                Err(Reject::UnsupportedContentEncoding)
            ));
        }
        let chunked = [("transfer-encoding", "chunked")];
        assert!(check_content_encoding(&map(&chunked), ContentEncoding::Refuse).is_ok());
        // Passed through, the coding must reach the backend.
        let stripped = [
            ("content-encoding", "gzip"),
            ("connection", "Content-Encoding"),
        ];
        assert!(matches!(
            check_content_encoding(&map(&stripped), ContentEncoding::Pass),
            Err(Reject::ConnectionStripsHeader(_))
        ));
    }
}
