//! Forwarding: the raw request to the route's upstream over pooled keep-alive connections.
//!
//! The body bytes are the ones verified, sent as-is. End-to-end headers pass through
//! (so a backend can re-verify `webhook-*`); hop-by-hop headers and anything a client
//! could use to impersonate the gateway (`X-Forwarded-*`, `X-Hookgate-*`, `Forwarded`)
//! are replaced. Success is decided by the upstream's status alone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamTrust;
use crate::metrics::{RouteMetrics, UpstreamClass};
use crate::reject::Reject;
use crate::route::Route;
use crate::tls;

/// Upstream answers are relayed to the sender; a sender has no use for more than this.
const MAX_REPLY_BYTES: usize = 64 * 1024;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_HOOKGATE_SOURCE: HeaderName = HeaderName::from_static("x-hookgate-source");
pub const X_HOOKGATE_EVENT_TYPE: HeaderName = HeaderName::from_static("x-hookgate-event-type");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and the
/// ones this gateway sets itself, which a client must not be able to pre-set.
fn is_dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
            | "host"
            | "content-length"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    ) || name.as_str().starts_with("x-hookgate-")
}

/// What the upstream said, relayed to the sender when it is a 2xx or a plain error.
#[derive(Debug)]
pub struct UpstreamReply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl UpstreamReply {
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        if let Some(content_type) = self.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        response
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream of route {route}: {kind}")]
pub struct ForwardError {
    pub route: String,
    pub kind: ForwardErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardErrorKind {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within limits.upstream_timeout")]
    Timeout,
    #[error("answered with redirect {0}")]
    Redirect(StatusCode),
    #[error("answered 410 Gone")]
    Gone,
    #[error("failed: {0}")]
    Protocol(String),
}

impl ForwardError {
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ForwardErrorKind::Timeout)
    }

    pub fn reason(&self) -> &'static str {
        match self.kind {
            ForwardErrorKind::Unreachable(_) => "upstream_unreachable",
            ForwardErrorKind::Timeout => "upstream_timeout",
            ForwardErrorKind::Redirect(_) => "upstream_redirect",
            ForwardErrorKind::Gone => "upstream_gone",
            ForwardErrorKind::Protocol(_) => "upstream_failed",
        }
    }
}

/// What the gateway adds about the original request.
pub struct ForwardContext<'a> {
    pub forwarded_for: HeaderValue,
    pub tls: bool,
    /// `X-Hookgate-Source`, built once per source.
    pub source: &'a HeaderValue,
    pub event_type: &'a str,
}

/// Turns the sender's headers into the upstream's, in place (no second map). One pass
/// over the few headers present finds what to drop, rather than one hash lookup per
/// header that might be there.
pub fn upstream_headers(mut headers: HeaderMap, ctx: &ForwardContext<'_>) -> HeaderMap {
    let original_host = headers.remove(header::HOST);
    let listed: Vec<HeaderName> = match headers.get(header::CONNECTION) {
        Some(value) => value
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect(),
        None => Vec::new(),
    };
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_dropped(name) || listed.contains(name))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    headers.insert(crate::client_ip::X_FORWARDED_FOR, ctx.forwarded_for.clone());
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
    );
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_HOOKGATE_SOURCE, ctx.source.clone());
    if let Ok(event_type) = HeaderValue::from_str(ctx.event_type) {
        headers.insert(X_HOOKGATE_EVENT_TYPE, event_type);
    }
    headers
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
}

impl Forwarder {
    /// https upstreams are verified as `trust` says (`[upstream_tls]`).
    pub fn new(timeout: Duration, trust: &UpstreamTrust) -> Self {
        Forwarder {
            client: http_client(tls::upstream_client_config_for(trust), timeout),
            timeout,
        }
    }

    /// POSTs `body` to the route's upstream. `Ok` only for a 2xx answer; any other
    /// outcome is a `Reject` and must release the dedupe claim.
    pub async fn send(
        &self,
        route: &Route,
        metrics: &RouteMetrics,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamReply, Reject> {
        let started = Instant::now();
        let result = self.exchange(route, headers, body).await;
        let class = match &result {
            Ok(reply) => UpstreamClass::of(reply.status),
            Err(e) if e.is_timeout() => UpstreamClass::Timeout,
            Err(_) => UpstreamClass::Error,
        };
        metrics.observe(class, started.elapsed());
        let fail = |kind| {
            Err(Reject::Upstream(ForwardError {
                route: route.label().to_owned(),
                kind,
            }))
        };
        match result {
            Ok(reply) if reply.status.is_success() => Ok(reply),
            Ok(reply) if reply.status.is_redirection() => {
                fail(ForwardErrorKind::Redirect(reply.status))
            }
            Ok(reply) if reply.status == StatusCode::GONE => fail(ForwardErrorKind::Gone),
            Ok(reply) => Err(Reject::UpstreamStatus(reply)),
            Err(e) => Err(Reject::Upstream(e)),
        }
    }

    async fn exchange(
        &self,
        route: &Route,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamReply, ForwardError> {
        let error = |kind| ForwardError {
            route: route.label().to_owned(),
            kind,
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = route.upstream().clone();
        *request.headers_mut() = headers;

        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| error(ForwardErrorKind::Timeout))?
            .map_err(|e| error(classify(&e, route.upstream())))?;
        let (parts, body) = response.into_parts();
        // The status decides success; a 2xx whose body then stalls or overflows was
        // still accepted by the backend, so it is relayed without a body.
        let body =
            match tokio::time::timeout_at(deadline, Limited::new(body, MAX_REPLY_BYTES).collect())
                .await
            {
                Ok(Ok(collected)) => collected.to_bytes(),
                _ if parts.status.is_success() => Bytes::new(),
                Ok(Err(e)) => return Err(error(ForwardErrorKind::Protocol(e.to_string()))),
                Err(_) => return Err(error(ForwardErrorKind::Timeout)),
            };
        Ok(UpstreamReply {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            body,
        })
    }
}

/// The error, with the upstream's host and port: the route's name alone does not say
/// which backend a log reader should look at.
fn classify(e: &hyper_util::client::legacy::Error, upstream: &http::Uri) -> ForwardErrorKind {
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
        ForwardErrorKind::Unreachable(detail)
    } else {
        ForwardErrorKind::Protocol(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ForwardContext<'static> {
        static SOURCE: HeaderValue = HeaderValue::from_static("openai");
        ForwardContext {
            forwarded_for: HeaderValue::from_static("203.0.113.7"),
            tls: true,
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
}
