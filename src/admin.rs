//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `POST /reload` and, with queue
//! mode, the `/deliveries` API, apart from webhook traffic so it can stay on loopback or a
//! private network.
//!
//! `/healthz` says the process serves requests; `/readyz` says it can do its job, which
//! needs the store: a load balancer should stop sending webhooks to an instance that
//! would answer them all 503. Its body also says whether the queue is durable.
//!
//! `/deliveries` (JSON; what `hookgate deliveries` calls):
//! - `GET /deliveries?status=S&source=N&route=R&event_type=E&search=Q&since=T&until=T&cursor=C&limit=K`:
//!   one page of records, newest first, with `next` (pass it as `cursor`) when more may
//!   match (`queue::record::list_filter` reads the parameters);
//! - `GET /deliveries/<id>[?body=true]`: one record with its attempt history;
//! - `POST /deliveries/<id>/replay`: queue a dead letter (`failed_final`) again;
//! - `POST /deliveries/replay?status=failed_final[&since=T]`: replay every dead letter
//!   (since `T`, RFC 3339 or Unix milliseconds).
//!
//! `POST /reload` reads the configuration file again (as SIGHUP does, see `reload`).
//!
//! With `admin.token` set, every path but `admin.public_paths` needs
//! `Authorization: Bearer <token>` (compared in constant time); config validation
//! requires a token whenever the listener is not on loopback, and `/deliveries` can never
//! be made public.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

use crate::metrics::Metrics;
use crate::queue::record::{ApiError, BulkReplayAnswer, ReplayAnswer, list_filter, parse_time};
use crate::queue::{Queue, Replayed, State, is_delivery_id, now_millis};
use crate::reject::json_response;
use crate::reload::Live;
use crate::store::Store;

const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// `GET /deliveries` without `limit`, and the most it returns.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

pub struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    queue: Option<Arc<dyn Queue>>,
    /// The current admin token (a reload may change it) and `POST /reload` itself.
    live: Arc<Live>,
}

type Reply = Response<Full<Bytes>>;

fn error(status: StatusCode, reason: &str) -> Reply {
    json_response(
        status,
        to_json(&ApiError {
            error: reason.to_owned(),
            state: None,
        }),
    )
}

/// 405 with the `Allow` header RFC 9110 requires of it.
fn not_allowed(allow: &'static str) -> Reply {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// 200 with `body`: the types `hookgate deliveries` reads back.
fn answer(body: &impl Serialize) -> Reply {
    json_response(StatusCode::OK, to_json(body))
}

/// Through a JSON value, so that keys come out sorted, as they always have.
fn to_json(body: &impl Serialize) -> String {
    serde_json::to_value(body)
        .expect("the admin API's answers serialize")
        .to_string()
}

/// The host a request names: its `Host`, or HTTP/2's `:authority`.
pub(crate) fn requested_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    match headers.get(HOST) {
        Some(host) => host.to_str().ok(),
        None => uri.authority().map(http::uri::Authority::as_str),
    }
}

/// Whether the host a browser asked for is loopback (`localhost`, 127.0.0.0/8,
/// `[::1]`), as it is when nobody rebound a name to this machine.
pub(crate) fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    if name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a POST comes from the console's own pages, as far as the browser says:
/// `Sec-Fetch-Site: same-origin` where the browser sends it (every current one does);
/// else an `Origin` of this host. `Origin: null` is what a same-origin form sends under
/// `Referrer-Policy: no-referrer`, so it proves nothing either way; older clients send
/// neither. The CSRF token and the `SameSite=Strict` cookie hold in every case.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin";
    }
    match origin_is_this_host(headers) {
        None => true,
        Some(_) if headers.get(ORIGIN).is_some_and(|o| o == "null") => true,
        Some(this_host) => this_host,
    }
}

/// Whether a browser sent this request from a page of another site (CSRF): its
/// `Sec-Fetch-Site`, or, from a browser too old to send that, an `Origin` not of this
/// host (`null` included: a sandboxed frame sends it). Command-line clients send
/// neither.
fn from_another_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    origin_is_this_host(headers) == Some(false)
}

/// Whether the `Origin` is this request's `Host` (over http or https); `None` without
/// an `Origin`.
fn origin_is_this_host(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(ORIGIN)?.as_bytes();
    Some(headers.get(HOST).is_some_and(|host| {
        [b"http://".as_slice(), b"https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(*scheme) == Some(host.as_bytes()))
    }))
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        store: Arc<dyn Store>,
        queue: Option<Arc<dyn Queue>>,
        live: Arc<Live>,
    ) -> Self {
        Admin {
            metrics,
            store,
            queue,
            live,
        }
    }

    pub async fn serve<B>(&self, req: Request<B>) -> Reply {
        let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if !self
            .live
            .admin_auth()
            .allows(req.uri().path(), authorization)
        {
            self.metrics.admin_unauthorized();
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized");
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        // Without a token nothing but the listener's loopback address guards the API:
        // a page elsewhere must not reach it through DNS rebinding (its own host name
        // resolving here) nor make the operator's browser send its POSTs (CSRF).
        if self.live.admin_auth().token.is_none() {
            if requested_host(req.headers(), req.uri()).is_some_and(|h| !names_loopback(h)) {
                return error(StatusCode::FORBIDDEN, "host_not_loopback");
            }
            if req.method() != Method::GET
                && req.method() != Method::HEAD
                && from_another_site(req.headers())
            {
                return error(StatusCode::FORBIDDEN, "cross_site");
            }
        }
        let path = req.uri().path();
        if path == "/deliveries" || path.starts_with("/deliveries/") {
            return self.deliveries(&req).await;
        }
        if path == "/reload" {
            return match *req.method() {
                Method::POST => self.reload().await,
                _ => not_allowed("POST"),
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        match path {
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
            "/readyz" => self.readiness().await,
            _ => error(StatusCode::NOT_FOUND, "not_found"),
        }
    }

    /// `POST /reload`: 200 with what needs a restart, or 400 with why the file was
    /// refused (the running configuration stays).
    async fn reload(&self) -> Reply {
        match self.live.reload().await {
            Ok(reloaded) => json_response(
                StatusCode::OK,
                json!({
                    "reloaded": true,
                    "restart_needed": reloaded.restart_needed,
                    "warnings": reloaded.warnings,
                })
                .to_string(),
            ),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_config", "detail": e.summary()}).to_string(),
            ),
        }
    }

    async fn readiness(&self) -> Reply {
        let store = match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("store did not answer within 2s".to_owned()),
        };
        let mut body = match &store {
            Ok(()) => json!({"status": "ready"}),
            Err(detail) => json!({"status": "not_ready", "store": detail}),
        };
        if let Some(queue) = &self.queue {
            body["queue"] = json!({"durable": queue.durable(), "detail": queue.describe()});
        }
        let status = match store {
            Ok(()) => StatusCode::OK,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        json_response(status, body.to_string())
    }

    async fn deliveries<B>(&self, req: &Request<B>) -> Reply {
        let Some(queue) = &self.queue else {
            return error(StatusCode::NOT_FOUND, "queue_not_configured");
        };
        let query = Query::parse(req.uri().query().unwrap_or(""));
        let rest = req.uri().path().trim_start_matches("/deliveries");
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        // HEAD as GET (hyper sends no body with it); `/deliveries/replay` is the bulk
        // replay, never a delivery id, whatever the method.
        let (read, post) = (
            matches!(*req.method(), Method::GET | Method::HEAD),
            req.method() == Method::POST,
        );
        let result = match segments.as_slice() {
            [] if read => list(queue.as_ref(), &query).await,
            ["replay"] if post => replay_failed(queue.clone(), &query).await,
            ["replay"] | [_, "replay"] if !post => Err(not_allowed("POST")),
            [id] if read => show(queue.as_ref(), id, query.flag("body")).await,
            [id, "replay"] => replay(queue.as_ref(), id).await,
            [] | [_] => Err(not_allowed("GET, HEAD")),
            _ => Err(error(StatusCode::NOT_FOUND, "not_found")),
        };
        result.unwrap_or_else(|response| response)
    }
}

fn unavailable(e: impl std::fmt::Display) -> Reply {
    tracing::warn!(error = %e, "admin: queue operation failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable")
}

async fn list(queue: &dyn Queue, query: &Query) -> Result<Reply, Reply> {
    let filter = list_filter(|key| query.get(key), DEFAULT_LIMIT, MAX_LIMIT)
        .map_err(|reason| error(StatusCode::BAD_REQUEST, reason))?;
    let page = queue.list(&filter).await.map_err(unavailable)?;
    Ok(answer(&page))
}

async fn show(queue: &dyn Queue, id: &str, with_body: bool) -> Result<Reply, Reply> {
    if !is_delivery_id(id) {
        return Err(error(StatusCode::NOT_FOUND, "not_found"));
    }
    let detail = queue
        .show(id, with_body)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found"))?;
    Ok(answer(&detail.as_shown()))
}

async fn replay(queue: &dyn Queue, id: &str) -> Result<Reply, Reply> {
    if !is_delivery_id(id) {
        return Err(error(StatusCode::NOT_FOUND, "not_found"));
    }
    match queue.replay(id, now_millis()).await.map_err(unavailable)? {
        Replayed::Queued { was } => {
            tracing::info!(
                delivery_id = id,
                was = was.as_str(),
                "admin: delivery replayed"
            );
            Ok(answer(&ReplayAnswer {
                delivery_id: id.to_owned(),
                replayed: true,
                was,
            }))
        }
        Replayed::NotFound => Err(error(StatusCode::NOT_FOUND, "not_found")),
        Replayed::NotReplayable(state) => Err(json_response(
            StatusCode::CONFLICT,
            to_json(&ApiError {
                error: "not_replayable".to_owned(),
                state: Some(state),
            }),
        )),
        Replayed::PartitionNotTaken { .. } => {
            Err(error(StatusCode::CONFLICT, "partition_not_taken"))
        }
    }
}

async fn replay_failed(queue: Arc<dyn Queue>, query: &Query) -> Result<Reply, Reply> {
    if query.get("status") != Some(State::FailedFinal.as_str()) {
        // Bulk replay is for dead letters only; say so rather than guess.
        return Err(error(
            StatusCode::BAD_REQUEST,
            "status_must_be_failed_final",
        ));
    }
    let since = match query.get("since") {
        Some(text) => {
            parse_time(text).ok_or_else(|| error(StatusCode::BAD_REQUEST, "invalid_since"))?
        }
        None => 0,
    };
    // In a task of its own, logged whatever becomes of the client: run in the request's
    // future, a client that gave up (the CLI after 30 s) cut it short part-way, and the
    // dead letters already replayed were neither answered nor logged.
    let replaying = tokio::spawn(async move {
        let ids = queue.failed_since(since).await?;
        let now = now_millis();
        let mut replayed = Vec::with_capacity(ids.len());
        let mut failed = None;
        for id in ids {
            match queue.replay(&id, now).await {
                Ok(Replayed::Queued { .. }) => replayed.push(id),
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => tracing::info!(
                replayed = replayed.len(),
                since,
                "admin: dead letters replayed"
            ),
            Some(ref e) => tracing::warn!(
                replayed = replayed.len(),
                since,
                error = %e,
                "admin: bulk replay stopped part-way: the store failed; replay again for the rest"
            ),
        }
        failed.map_or(Ok(replayed), Err)
    });
    let replayed = replaying
        .await
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal"))?
        .map_err(unavailable)?;
    Ok(answer(&BulkReplayAnswer {
        replayed: replayed.len(),
        delivery_ids: replayed,
    }))
}

/// A decoded query string or form body (`application/x-www-form-urlencoded`); later
/// keys win.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: &str) -> Query {
        Query::from_bytes(raw.as_bytes())
    }

    pub fn from_bytes(raw: &[u8]) -> Query {
        Query(form_urlencoded::parse(raw).into_owned().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("" | "1" | "true"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_loopback_names_pass_without_a_token() {
        for host in [
            "localhost:9090",
            "127.0.0.1:9090",
            "127.1.2.3",
            "[::1]:9090",
            "LOCALHOST",
        ] {
            assert!(names_loopback(host), "{host}");
        }
        for host in [
            "evil.example:9090",
            "10.0.0.1:9090",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!names_loopback(host), "{host}");
        }
        let uri: http::Uri = "http://127.0.0.1:9090/metrics".parse().unwrap();
        assert_eq!(requested_host(&headers(&[]), &uri), Some("127.0.0.1:9090"));
        let uri: http::Uri = "/metrics".parse().unwrap();
        assert_eq!(requested_host(&headers(&[]), &uri), None);
        assert_eq!(
            requested_host(&headers(&[("host", "evil.example")]), &uri),
            Some("evil.example")
        );
    }

    #[test]
    fn a_post_from_another_site_is_told_apart() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9090")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-site"),
        ])));
        // What a same-origin form sends under Referrer-Policy: no-referrer.
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ])));
    }

    /// The API without a token takes POSTs from command-line clients and its own
    /// host's pages, never from a page elsewhere (`Origin: null` included: a sandboxed
    /// frame sends it).
    #[test]
    fn an_api_post_from_another_site_is_refused_without_a_token() {
        let host = ("host", "127.0.0.1:9090");
        assert!(!from_another_site(&headers(&[host])));
        assert!(!from_another_site(&headers(&[
            host,
            ("origin", "http://127.0.0.1:9090")
        ])));
        assert!(!from_another_site(&headers(&[
            host,
            ("sec-fetch-site", "none")
        ])));
        for bad in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert!(from_another_site(&headers(&[host, bad])), "{bad:?}");
        }
    }

    #[test]
    fn queries_are_decoded() {
        let q = Query::parse("status=failed_final&since=2026-11-20T10%3A00%3A00Z&body");
        assert_eq!(q.get("status"), Some("failed_final"));
        assert_eq!(q.get("since"), Some("2026-11-20T10:00:00Z"));
        assert!(q.flag("body"));
        assert!(!q.flag("other"));
        let q = Query::parse("a=a%2&b=%41%zz&c=x+y&a=later");
        assert_eq!(q.get("b"), Some("A%zz"));
        assert_eq!(q.get("c"), Some("x y"));
        assert_eq!(q.get("a"), Some("later"));
    }
}
