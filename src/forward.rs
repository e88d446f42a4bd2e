//! Forwarding: the raw request to the route's upstream over pooled keep-alive connections.
//!
//! The body bytes are the ones verified, sent as-is. End-to-end headers pass through
//! (so a backend can re-verify `webhook-*`); hop-by-hop headers (and every one a
//! `Connection` field lists) and anything a client could use to impersonate the gateway
//! or a proxy in front of the backend (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
//! `X-Hookgate-*`, ...) are dropped or replaced. So is every header whose name has a
//! `_`, unless the source reads it: CGI-style backends (WSGI, PHP, Rack) see
//! `X_Forwarded_For` and `X-Forwarded-For` as one variable, and merge the two. Success is
//! decided by the upstream's status alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::breaker::{Admission, Breakers, Pass};
use crate::config::UpstreamTrust;
use crate::dropped_headers::is_dropped;
use crate::metrics::{RouteMetrics, UpstreamClass};
use crate::route::Route;
use crate::tls;
use crate::upstream::{UpstreamOutcome, UpstreamReply};

/// A 2xx answer's body is relayed to the sender up to this size (longer: no body).
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// An error answer's body is relayed up to this size, and replaced by an empty body when
/// longer: enough for a backend's reason, not for its stack trace or error page.
pub const MAX_ERROR_REPLY_BYTES: usize = 4 * 1024;
/// How long an upstream connection may sit idle in the pool and still be used: below
/// the keep-alive timeout of Node (5 s), uvicorn (5 s) and Apache (5 s), which close an
/// idle connection on their side. Reused at the moment the backend closed it, a
/// connection fails the request (502 `upstream_failed`, counted by a breaker) although
/// the backend never read it; kept 60 s, that race came with every backend's timeout.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_HOOKGATE_SOURCE: HeaderName = HeaderName::from_static("x-hookgate-source");
pub const X_HOOKGATE_EVENT_TYPE: HeaderName = HeaderName::from_static("x-hookgate-event-type");

/// Whether two header names are one variable to a CGI-style backend, which ignores case
/// and reads `-` and `_` alike (`X_Forwarded_For` is `HTTP_X_FORWARDED_FOR`).
pub fn same_to_cgi(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// The header names every `Connection` field lists (all of its lines), as written.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    tokens(headers.get_all(header::CONNECTION).iter())
}

/// Split by bytes: one byte that is not UTF-8 (or not visible ASCII) in a field made the
/// whole field list nothing, and the headers it named went to the backend.
fn tokens<'h>(fields: header::ValueIter<'h, HeaderValue>) -> impl Iterator<Item = &'h str> {
    fields
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|token| std::str::from_utf8(token).ok())
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// `host[:port]` when it is exactly that: a DNS name or IPv4 address, or a bracketed
/// IPv6 address, and a port of 1 to 5 digits. Anything else (user info, a path, spaces)
/// is not passed on as `X-Forwarded-Host`.
fn is_host_and_port(text: &str) -> bool {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => (None, after),
            _ => return false,
        },
        None => match text.split_once(':') {
            Some((host, _)) => (Some(host), &text[host.len()..]),
            None => (Some(text), ""),
        },
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        });
    let host_ok = host.is_none_or(|host| {
        (1..=253).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    });
    port_ok && host_ok
}

/// What the gateway adds about the original request.
pub struct ForwardContext<'a> {
    pub forwarded_for: HeaderValue,
    pub tls: bool,
    /// The peer is a trusted proxy (`rate_limit.trusted_proxies`): the scheme it says
    /// the client used (`X-Forwarded-Proto`) is passed on, rather than this listener's
    /// (behind a TLS-terminating load balancer every backend was told `http`, and one
    /// enforcing https answered each delivery with a redirect). Not its `X-Forwarded-Host`:
    /// many proxies keep `Host` and set no such header, which the client then would.
    pub proxied: bool,
    /// The request's authority when its target had one (HTTP/2 `:authority`); else the
    /// `Host` header is the host the client asked for.
    pub authority: Option<&'a http::uri::Authority>,
    /// The headers the source reads: kept even when spelled with `_`.
    pub reads: &'a [HeaderName],
    /// `X-Hookgate-Source`, built once per source.
    pub source: &'a HeaderValue,
    pub event_type: &'a str,
}

/// Turns the sender's headers into the upstream's, in place (no second map). One pass
/// over the few headers present finds what to drop, rather than one hash lookup per
/// header that might be there.
pub fn upstream_headers(mut headers: HeaderMap, ctx: &ForwardContext<'_>) -> HeaderMap {
    let host = match ctx.authority {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    }
    .filter(|host| host.to_str().is_ok_and(is_host_and_port));
    let proxied_proto = ctx.proxied.then(|| proxy_said_proto(&headers)).flatten();
    let connection = headers.get_all(header::CONNECTION);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let text = name.as_str();
            let listed = || tokens(connection.iter()).any(|token| token.eq_ignore_ascii_case(text));
            if text.contains('_') {
                !ctx.reads.contains(name) || is_dropped(&text.replace('_', "-"))
            } else {
                is_dropped(text) || listed()
            }
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    join_cookies(&mut headers);
    headers.insert(crate::client_ip::X_FORWARDED_FOR, ctx.forwarded_for.clone());
    let tls = proxied_proto.unwrap_or(ctx.tls);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_HOOKGATE_SOURCE, ctx.source.clone());
    if let Ok(event_type) = HeaderValue::from_str(ctx.event_type) {
        headers.insert(X_HOOKGATE_EVENT_TYPE, event_type);
    }
    headers
}

/// An HTTP/2 sender's `cookie` fields, one per pair, joined into one with `; ` as they
/// must be for an HTTP/1.1 upstream (RFC 9113 §8.2.3): as separate lines, a backend
/// joining repeated fields with `,` read `a=1,b=2` as one cookie.
fn join_cookies(headers: &mut HeaderMap) {
    let fields = headers.get_all(header::COOKIE);
    if fields.iter().nth(1).is_none() {
        return;
    }
    let joined = fields
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// The scheme a trusted proxy says the client used: its `X-Forwarded-Proto` (the last
/// value, the proxy's own), when it is `https` or `http`.
fn proxy_said_proto(headers: &HeaderMap) -> Option<bool> {
    let last = headers.get_all(X_FORWARDED_PROTO).iter().next_back()?;
    let value = last.to_str().ok()?.rsplit(',').next()?.trim();
    match value.to_ascii_lowercase().as_str() {
        "https" => Some(true),
        "http" => Some(false),
        _ => None,
    }
}

/// The last step before a delivery goes out, for proxy mode and the queue's workers
/// alike: a route that re-signs replaces the sender's `webhook-*` headers with
/// hookgate's own signature of `body` at `now` (a fresh timestamp at every attempt, so a
/// retry hours later still passes the backend's freshness check).
pub fn prepare(
    route: &Route,
    headers: &mut HeaderMap,
    webhook_id: &str,
    scheme: &str,
    body: &[u8],
    now: std::time::SystemTime,
) {
    if let Some(signer) = route.resign() {
        signer.apply(headers, webhook_id, scheme, body, now);
    }
}

/// The pooled HTTP/1.1 + HTTP/2 client used for upstreams (and by `hookgate sign --send`).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A keep-alive client for http and https URLs, trusting what `tls` trusts.
pub fn http_client(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

pub struct Forwarder {
    client: HttpClient,
    timeout: Duration,
    /// The upstreams' circuit breakers: consulted by the pipeline and the workers
    /// before a send (`breaker`), kept here because both share this forwarder.
    breakers: Option<Arc<Breakers>>,
    /// When a shutdown's drain ends, once one began (`drain_ends_at`).
    drain_end: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

impl Forwarder {
    /// https upstreams are verified as `trust` says (`[upstream_tls]`).
    pub fn new(timeout: Duration, trust: &UpstreamTrust) -> Self {
        Forwarder {
            client: http_client(tls::upstream_client_config_for(trust), timeout),
            timeout,
            breakers: None,
            drain_end: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Marks when the shutdown's drain ends (less the time a settle needs): a forward
    /// `send` is asked to end within the drain ends by then, as a timeout.
    pub fn drain_ends_at(&self, at: tokio::time::Instant) {
        self.drain_end.send_replace(Some(at));
    }

    /// Whether a shutdown's drain has ended: a forward it cut short says nothing of its
    /// upstream (no failure for the breaker).
    pub fn drained(&self) -> bool {
        self.drain_end
            .borrow()
            .is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// Resolves once `deadline` passes or, `within_drain`, once a shutdown's drain ends
    /// (also one that begins while the forward runs). A proxied forward that ran past
    /// the drain (started late, its body slow to come; or `shutdown_timeout` below
    /// `upstream_timeout`) was cut with the process: answered nothing, its claim left
    /// in flight although the backend had it, and the sender's retry forwarded again
    /// once the claim expired.
    async fn expired(&self, deadline: tokio::time::Instant, within_drain: bool) {
        if !within_drain {
            return tokio::time::sleep_until(deadline).await;
        }
        let mut ends = self.drain_end.subscribe();
        let drain = async {
            match ends.wait_for(Option::is_some).await.map(|at| *at) {
                Ok(Some(at)) => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = drain => {}
        }
    }

    pub fn with_breakers(mut self, breakers: Arc<Breakers>) -> Self {
        self.breakers = Some(breakers);
        self
    }

    /// Whether `route`'s upstream may be sent to now (always, without breakers).
    pub fn admit(&self, route: &Route, now: tokio::time::Instant) -> Admission {
        match &self.breakers {
            Some(breakers) => breakers.admit(route, now),
            None => Admission::Pass(Pass::none()),
        }
    }

    /// Drops the breakers of upstreams that `routes` (a reloaded configuration's) no
    /// longer has (`Breakers::keep_only`).
    pub fn keep_breakers_of<'a>(&self, routes: impl IntoIterator<Item = &'a Route>) {
        if let Some(breakers) = &self.breakers {
            breakers.keep_only(routes);
        }
    }

    /// POSTs `body` to the route's upstream and tells what happened, within
    /// `upstream_timeout` and, `within_drain`, a shutdown's drain (`expired`). Only a
    /// 2xx answer delivered it (`UpstreamOutcome::is_delivered`).
    pub async fn send(
        &self,
        route: &Route,
        metrics: &RouteMetrics,
        headers: HeaderMap,
        body: Bytes,
        within_drain: bool,
    ) -> UpstreamOutcome {
        let started = Instant::now();
        let outcome = match self.exchange(route, headers, body, within_drain).await {
            Ok(reply) if reply.status.is_redirection() => UpstreamOutcome::Redirect(reply.status),
            Ok(reply) if reply.status == StatusCode::GONE => UpstreamOutcome::Gone,
            Ok(reply) => UpstreamOutcome::Answered(reply),
            Err(failed) => failed,
        };
        let class = match (&outcome, outcome.status()) {
            (_, Some(status)) => UpstreamClass::of(status),
            (UpstreamOutcome::Timeout, None) => UpstreamClass::Timeout,
            (_, None) => UpstreamClass::Error,
        };
        metrics.observe(class, started.elapsed());
        outcome
    }

    async fn exchange(
        &self,
        route: &Route,
        headers: HeaderMap,
        body: Bytes,
        within_drain: bool,
    ) -> Result<UpstreamReply, UpstreamOutcome> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = route.upstream().clone();
        *request.headers_mut() = headers;

        let expired = self.expired(tokio::time::Instant::now() + self.timeout, within_drain);
        tokio::pin!(expired);
        let response = tokio::select! {
            response = self.client.request(request) => {
                response.map_err(|e| classify(&e, route.upstream()))?
            }
            () = &mut expired => return Err(UpstreamOutcome::Timeout),
        };
        let (parts, body) = response.into_parts();
        // The status decides the outcome; a body that then stalls, breaks or overflows
        // is relayed as no body (and no Content-Type), whatever the status.
        let limit = if parts.status.is_success() {
            MAX_REPLY_BYTES
        } else {
            MAX_ERROR_REPLY_BYTES
        };
        let body = tokio::select! {
            collected = Limited::new(body, limit).collect() => {
                collected.ok().map(|collected| collected.to_bytes())
            }
            () = &mut expired => None,
        };
        let content_type = match body {
            Some(_) => parts.headers.get(header::CONTENT_TYPE).cloned(),
            None => None,
        };
        let retry_after = if parts.status.is_success() {
            None
        } else {
            crate::upstream::retry_after(&parts.headers, std::time::SystemTime::now())
        };
        Ok(UpstreamReply {
            status: parts.status,
            content_type,
            body: body.unwrap_or_default(),
            retry_after,
        })
    }
}

/// The error, with the upstream's host and port: the route's name alone does not say
/// which backend a log reader should look at.
fn classify(e: &hyper_util::client::legacy::Error, upstream: &http::Uri) -> UpstreamOutcome {
    let cause = std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_else(|| e.to_string());
    // Host and port only: an authority may carry credentials (user:password@).
    let host = upstream.host().unwrap_or_default();
    let detail = match upstream.port_u16() {
        Some(port) => format!("{host}:{port}: {cause}"),
        None => format!("{host}: {cause}"),
    };
    if e.is_connect() {
        UpstreamOutcome::Unreachable(detail)
    } else {
        UpstreamOutcome::Broken(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static READS: [HeaderName; 2] = [
        HeaderName::from_static("webhook-id"),
        HeaderName::from_static("x_sender_signature"),
    ];

    fn ctx() -> ForwardContext<'static> {
        static SOURCE: HeaderValue = HeaderValue::from_static("openai");
        ForwardContext {
            forwarded_for: HeaderValue::from_static("203.0.113.7"),
            tls: true,
            proxied: false,
            authority: None,
            reads: &READS,
            source: &SOURCE,
            event_type: "response.completed",
        }
    }

    #[test]
    fn hop_by_hop_and_spoofable_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hooks.example.com"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-hookgate-source", HeaderValue::from_static("forged"));
        h.insert("x-hookgate-verified", HeaderValue::from_static("forged"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("OpenAI/1.0"));

        let out = upstream_headers(h, &ctx());

        for gone in [
            "connection",
            "x-secret-hop",
            "transfer-encoding",
            "content-length",
            "host",
            "x-hookgate-verified",
        ] {
            assert!(out.get(gone).is_none(), "{gone} should be dropped");
        }
        assert_eq!(out["x-forwarded-for"], "203.0.113.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "hooks.example.com");
        assert_eq!(out["x-hookgate-source"], "openai");
        assert_eq!(out["x-hookgate-event-type"], "response.completed");
        assert_eq!(out["content-type"], "application/json");
        assert_eq!(out["webhook-id"], "msg_1");
        assert_eq!(out["user-agent"], "OpenAI/1.0");
    }

    #[test]
    fn proxy_and_client_ip_headers_are_dropped_in_every_spelling() {
        let spoofed = [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-ssl",
            "x-forwarded-server",
            "x-forwarded-scheme",
            "x-forwarded",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "client-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-original-host",
            "x-http-method-override",
            "x_forwarded_for",
            "x_forwarded-host",
            "x_real_ip",
            "true_client_ip",
            "x_hookgate_verified",
            "x_original_url",
            "content_encoding",
            "x_anything_else",
        ];
        let mut h = HeaderMap::new();
        for name in spoofed {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("6.6.6.6"),
            );
        }
        h.insert("x_sender_signature", HeaderValue::from_static("sig"));
        h.insert("x-custom-end-to-end", HeaderValue::from_static("kept"));

        let out = upstream_headers(h, &ctx());

        for name in spoofed {
            assert!(out.get(name).is_none(), "{name} was forwarded");
        }
        assert_eq!(
            out["x_sender_signature"], "sig",
            "a header the source reads"
        );
        assert_eq!(out["x-custom-end-to-end"], "kept");
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names.len(),
            6,
            "only the two kept and hookgate's four: {names:?}"
        );
    }

    #[test]
    fn every_connection_field_is_honoured() {
        let h = HeaderMap::from_iter(
            [
                ("connection", "keep-alive"),
                ("connection", "X-Hop-One , x-hop-two"),
                ("x-hop-one", "1"),
                ("x-hop-two", "2"),
                ("x-end", "3"),
            ]
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            }),
        );

        let out = upstream_headers(h, &ctx());

        assert!(out.get("x-hop-one").is_none());
        assert!(out.get("x-hop-two").is_none());
        assert_eq!(out["x-end"], "3");
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("a,, b"));
        h.append(header::CONNECTION, HeaderValue::from_static("c"));
        assert_eq!(connection_tokens(&h).collect::<Vec<_>>(), ["a", "b", "c"]);
        // A byte that is not UTF-8 elsewhere in the field hides none of its names.
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret-hop, \xff").unwrap(),
        );
        h.append("x-secret-hop", HeaderValue::from_static("1"));
        assert_eq!(connection_tokens(&h).collect::<Vec<_>>(), ["x-secret-hop"]);
        assert!(upstream_headers(h, &ctx()).get("x-secret-hop").is_none());
    }

    #[test]
    fn x_forwarded_host_is_only_a_plain_host_and_port() {
        for (host, forwarded) in [
            ("hooks.example.com", true),
            ("hooks.example.com:8443", true),
            ("127.0.0.1:8080", true),
            ("[2001:db8::1]:443", true),
            ("[2001:db8::1]", true),
            ("internal_host", true),
            ("a@evil/x?#", false),
            ("user@hooks.example.com", false),
            ("hooks.example.com/path", false),
            ("hooks.example.com:", false),
            ("hooks.example.com:123456", false),
            ("hooks.example.com:99999", false),
            ("hooks.example.com:80:80", false),
            ("[not-v6]:80", false),
            ("[2001:db8::1]x", false),
            (":80", false),
            ("a b", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            let out = upstream_headers(h, &ctx());
            assert_eq!(
                out.get(X_FORWARDED_HOST).is_some(),
                forwarded,
                "{host}: {:?}",
                out.get(X_FORWARDED_HOST)
            );
        }
        let authority: http::uri::Authority = "h2.example.com:443".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("ignored.example.com"),
        );
        let out = upstream_headers(
            h,
            &ForwardContext {
                authority: Some(&authority),
                ..ctx()
            },
        );
        assert_eq!(out[X_FORWARDED_HOST], "h2.example.com:443");
    }

    #[test]
    fn split_cookies_are_joined_and_scheme_headers_dropped() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        for name in [
            "x-scheme",
            "front-end-https",
            "x-original-uri",
            "x-envoy-original-path",
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("https"),
            );
        }
        let out = upstream_headers(h, &ctx());
        let cookies: Vec<_> = out.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        for name in [
            "x-scheme",
            "front-end-https",
            "x-original-uri",
            "x-envoy-original-path",
        ] {
            assert!(!out.contains_key(name), "{name}");
        }
    }

    #[test]
    fn a_trusted_proxy_says_which_scheme_the_client_used() {
        let from_proxy = || {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("10.0.0.5:8080"));
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
            h.insert(
                X_FORWARDED_HOST,
                HeaderValue::from_static("hooks.example.com"),
            );
            h
        };
        let plain = ForwardContext {
            tls: false,
            ..ctx()
        };
        let out = upstream_headers(from_proxy(), &plain);
        assert_eq!(
            out[X_FORWARDED_PROTO], "http",
            "an untrusted peer's are not believed"
        );
        assert_eq!(out[X_FORWARDED_HOST], "10.0.0.5:8080");
        let proxied = ForwardContext {
            proxied: true,
            ..plain
        };
        let out = upstream_headers(from_proxy(), &proxied);
        assert_eq!(out[X_FORWARDED_PROTO], "https");
        assert_eq!(
            out[X_FORWARDED_HOST], "10.0.0.5:8080",
            "Host, as the proxy kept it"
        );
        let mut odd = from_proxy();
        odd.insert(X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        odd.insert(X_FORWARDED_HOST, HeaderValue::from_static("a b"));
        let out = upstream_headers(odd, &proxied);
        assert_eq!(
            out[X_FORWARDED_PROTO], "http",
            "only http or https is believed"
        );
        assert_eq!(out[X_FORWARDED_HOST], "10.0.0.5:8080");
    }

    #[test]
    fn names_are_compared_as_cgi_variables_are() {
        assert!(same_to_cgi("x_forwarded_for", "x-forwarded-for"));
        assert!(same_to_cgi("X-Forwarded_For", "x-forwarded-for"));
        assert!(same_to_cgi("webhook-id", "webhook-id"));
        assert!(!same_to_cgi("webhook-ids", "webhook-id"));
        assert!(!same_to_cgi("webhook.id", "webhook-id"));
    }
}
