//! What every integration test stands on: a recording `Upstream`, an in-process
//! `Gateway` on `127.0.0.1:0` with a test client, config text built from a few calls
//! (in-memory store or Redis from `redis_support`), signed deliveries, dev certificates
//! and a Prometheus scrape reader.
//!
//! Everything talks over real loopback sockets; nothing is mocked. Waiting is done on
//! conditions (a watch channel, a poll with a deadline), never on a guessed sleep.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hookgate::forward::{HttpClient, http_client};
use hookgate::sign::{SignInput, SignedRequest};
use hookgate::verify::standard_webhooks::{key_from_secret, sign};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) use crate::redis_support::on_each_store;
pub use crate::redis_support::{RedisCluster, RedisServer, TestStore};

/// How long any single wait in a test may take before it fails. Generous on purpose:
/// a loaded CI machine must never turn a correct gateway into a red test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The signing secret of the default source (base64 of 32 bytes).
pub const SECRET: &str = "whsec_aG9va2dhdGUtaW50ZWdyYXRpb24tdGVzdC1zZWNyZXQh";
/// A second, unrelated secret: for rotation and wrong-secret cases.
pub const OTHER_SECRET: &str = "whsec_c29tZWJvZHktZWxzZXMtc2VjcmV0LWZvci10ZXN0cyE=";

/// The default source's name and path.
pub const SOURCE: &str = "openai";
pub const PATH: &str = "/webhooks/openai";

// ---------------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------------

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request arrived (its head and body read).
    pub at: tokio::time::Instant,
}

impl Received {
    /// The value of a header as text; panics (with the headers) when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("upstream got no {name} header: {:?}", self.headers))
            .to_str()
            .expect("header is text")
    }
}

/// How the upstream answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    status: StatusCode,
    body: Bytes,
    headers: Vec<(&'static str, &'static str)>,
    delay: Duration,
    held: bool,
}

impl Answer {
    /// `status` with a small JSON body.
    pub fn status(status: u16) -> Self {
        Answer {
            status: StatusCode::from_u16(status).expect("a valid status"),
            body: Bytes::from_static(br#"{"ok":true}"#),
            headers: vec![("content-type", "application/json")],
            delay: Duration::ZERO,
            held: false,
        }
    }

    pub fn ok() -> Self {
        Answer::status(200)
    }

    /// 200, but only once the test calls `Upstream::release` (or never): a slow
    /// upstream whose slowness does not depend on the machine's speed.
    pub fn held() -> Self {
        Answer {
            held: true,
            ..Answer::ok()
        }
    }

    pub fn body(mut self, body: &'static str) -> Self {
        self.body = Bytes::from_static(body.as_bytes());
        self
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        self
    }

    /// Answers only after `delay` (a slow upstream).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// The upstream's script: the nth request gets the nth answer; the last one repeats.
#[derive(Debug, Clone)]
pub struct Behaviour(Vec<Answer>);

impl Behaviour {
    pub fn always(answer: Answer) -> Self {
        Behaviour(vec![answer])
    }

    pub fn sequence(answers: impl IntoIterator<Item = Answer>) -> Self {
        let answers: Vec<Answer> = answers.into_iter().collect();
        assert!(!answers.is_empty(), "a behaviour needs at least one answer");
        Behaviour(answers)
    }

    fn answer(&self, n: usize) -> &Answer {
        &self.0[n.min(self.0.len() - 1)]
    }
}

impl From<Answer> for Behaviour {
    fn from(answer: Answer) -> Self {
        Behaviour::always(answer)
    }
}

struct Recorder {
    received: Mutex<Vec<Received>>,
    /// Requests being answered right now, and the most there ever were at once.
    concurrency: Mutex<(usize, usize)>,
    count: watch::Sender<usize>,
    released: watch::Sender<bool>,
    behaviour: Behaviour,
}

/// A real HTTP server on `127.0.0.1:0` that records every request it receives (on
/// arrival, before answering) and answers by its `Behaviour`.
pub struct Upstream {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Answers every request `200 {"ok":true}`.
    pub async fn start() -> Upstream {
        Upstream::with(Answer::ok()).await
    }

    pub async fn with(behaviour: impl Into<Behaviour>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        Upstream::serve(listener, behaviour.into())
    }

    /// Like `with`, on a given address (an upstream that comes up where one was down).
    pub async fn with_at(addr: SocketAddr, behaviour: impl Into<Behaviour>) -> Upstream {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind the upstream on {addr}: {e}"),
            }
        };
        Upstream::serve(listener, behaviour.into())
    }

    fn serve(listener: TcpListener, behaviour: Behaviour) -> Upstream {
        let addr = listener.local_addr().expect("bound address");
        let recorder = Arc::new(Recorder {
            received: Mutex::new(Vec::new()),
            concurrency: Mutex::new((0, 0)),
            count: watch::channel(0).0,
            released: watch::channel(false).0,
            behaviour,
        });
        let task = tokio::spawn(serve_upstream(listener, recorder.clone()));
        Upstream {
            addr,
            recorder,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.recorder.received.lock().expect("not poisoned").clone()
    }

    /// The one request received; panics if there were none or several.
    pub fn only(&self) -> Received {
        let received = self.received();
        assert_eq!(
            received.len(),
            1,
            "expected exactly one forward: {received:#?}"
        );
        received.into_iter().next().expect("one")
    }

    /// Returns once at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) {
        let mut count = self.recorder.count.subscribe();
        tokio::time::timeout(PATIENCE, count.wait_for(|&c| c >= n))
            .await
            .unwrap_or_else(|_| panic!("the upstream did not receive {n} request(s)"))
            .expect("the recorder lives as long as the upstream");
    }

    /// Lets every held answer (current and future) go out.
    pub fn release(&self) {
        self.recorder.released.send_replace(true);
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.recorder.concurrency.lock().expect("not poisoned").0
    }

    /// The most requests this upstream was ever answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.recorder.concurrency.lock().expect("not poisoned").1
    }

    /// How many requests carried each `webhook-id`.
    pub fn count_by_webhook_id(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for r in self.received() {
            *counts.entry(r.header("webhook-id").to_owned()).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_upstream(listener: TcpListener, recorder: Arc<Recorder>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let recorder = recorder.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let recorder = recorder.clone();
                async move { Ok::<_, Infallible>(record_and_answer(req, &recorder).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn record_and_answer(req: Request<Incoming>, recorder: &Recorder) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let n = {
        let mut received = recorder.received.lock().expect("not poisoned");
        received.push(Received {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
            at: tokio::time::Instant::now(),
        });
        let mut concurrency = recorder.concurrency.lock().expect("not poisoned");
        concurrency.0 += 1;
        concurrency.1 = concurrency.1.max(concurrency.0);
        // Under the lock, so the count never goes backwards between two requests.
        recorder.count.send_replace(received.len());
        received.len() - 1
    };
    // Counted down when the answer is ready (or the request is dropped mid-wait).
    let _answering = Answering(recorder);
    let answer = recorder.behaviour.answer(n).clone();
    if answer.held {
        let mut released = recorder.released.subscribe();
        let _ = released.wait_for(|&r| r).await;
    }
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

struct Answering<'a>(&'a Recorder);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.concurrency.lock().expect("not poisoned").0 -= 1;
    }
}

/// An address on loopback where nothing listens (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("bound address")
}

// ---------------------------------------------------------------------------------
// Config text
// ---------------------------------------------------------------------------------

/// Where a route sends its events: an `Upstream` (its `/hooks` path) or a URL.
pub trait Target {
    fn target_url(&self) -> String;
}

impl Target for &Upstream {
    fn target_url(&self) -> String {
        self.url("/hooks")
    }
}

impl Target for String {
    fn target_url(&self) -> String {
        self.clone()
    }
}

impl Target for &str {
    fn target_url(&self) -> String {
        (*self).to_owned()
    }
}

struct SourceBlock {
    name: String,
    path: String,
    secrets: Vec<String>,
    /// TOML lines replacing `scheme = "standard-webhooks"` and `secrets`.
    scheme_toml: Option<String>,
    queue: bool,
    routes: Vec<RouteBlock>,
}

struct RouteBlock {
    name: Option<String>,
    events: String,
    upstream: String,
    /// `resign = { secret = ... }`.
    resign: Option<String>,
    max_concurrency: Option<u32>,
}

/// Config text for tests: loopback listeners on port 0, a rate limit nobody reaches,
/// and one source `openai` on `/webhooks/openai` signed with `SECRET`.
pub struct Config {
    tls: Option<(PathBuf, PathBuf)>,
    limits: Vec<(&'static str, String)>,
    dedupe: Vec<(&'static str, String)>,
    rate_limit: (f64, u32),
    /// `[store]` lines; none means the in-memory store.
    store: Vec<(&'static str, String)>,
    /// Any other `key = value` line: (table, key, TOML value).
    extra: Vec<(&'static str, &'static str, String)>,
    /// More lines of one `[[sources]]` block: (source index, line).
    source_extra: Vec<(usize, String)>,
    /// `[server]` lines after `listen`, `[admin]` lines after `listen`, `[queue]` lines.
    server: Vec<(&'static str, String)>,
    admin: Vec<(&'static str, String)>,
    queue: Vec<(&'static str, String)>,
    sources: Vec<SourceBlock>,
}

pub fn config() -> Config {
    Config {
        tls: None,
        limits: Vec::new(),
        dedupe: Vec::new(),
        rate_limit: (100_000.0, 100_000),
        store: Vec::new(),
        extra: Vec::new(),
        source_extra: Vec::new(),
        server: Vec::new(),
        admin: Vec::new(),
        queue: Vec::new(),
        sources: vec![SourceBlock {
            name: SOURCE.to_owned(),
            path: PATH.to_owned(),
            secrets: vec![SECRET.to_owned()],
            scheme_toml: None,
            queue: false,
            routes: Vec::new(),
        }],
    }
}

impl Config {
    fn last_source(&mut self) -> &mut SourceBlock {
        self.sources.last_mut().expect("there is a source")
    }

    /// A route (named by its index) for one event pattern on the last source.
    pub fn route(mut self, events: &str, to: impl Target) -> Self {
        self.last_source().routes.push(RouteBlock {
            name: None,
            events: events.to_owned(),
            upstream: to.target_url(),
            resign: None,
            max_concurrency: None,
        });
        self
    }

    /// A route on the last source that forwards with hookgate's own Standard Webhooks
    /// signature made with `secret`.
    pub fn resigned_route(mut self, events: &str, to: impl Target, secret: &str) -> Self {
        self.last_source().routes.push(RouteBlock {
            name: None,
            events: events.to_owned(),
            upstream: to.target_url(),
            resign: Some(secret.to_owned()),
            max_concurrency: None,
        });
        self
    }

    /// Adds a source whose scheme and scheme keys are `scheme_toml` (for example
    /// `scheme = "stripe"\nsecrets = ["whsec_x"]`); routes added next belong to it.
    pub fn scheme_source(mut self, name: &str, path: &str, scheme_toml: &str) -> Self {
        self.sources.push(SourceBlock {
            name: name.to_owned(),
            path: path.to_owned(),
            secrets: Vec::new(),
            scheme_toml: Some(scheme_toml.to_owned()),
            queue: false,
            routes: Vec::new(),
        });
        self
    }

    pub fn named_route(mut self, name: &str, events: &str, to: impl Target) -> Self {
        self.last_source().routes.push(RouteBlock {
            name: Some(name.to_owned()),
            events: events.to_owned(),
            upstream: to.target_url(),
            resign: None,
            max_concurrency: None,
        });
        self
    }

    /// Replaces the last source's secrets.
    pub fn secrets(mut self, secrets: &[&str]) -> Self {
        self.last_source().secrets = secrets.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds another source, signed with `SECRET`; routes added next belong to it.
    pub fn source(mut self, name: &str, path: &str) -> Self {
        self.sources.push(SourceBlock {
            name: name.to_owned(),
            path: path.to_owned(),
            secrets: vec![SECRET.to_owned()],
            scheme_toml: None,
            queue: false,
            routes: Vec::new(),
        });
        self
    }

    /// Any key in any table, its value written as TOML (`"1s"` with the quotes, `5`):
    /// `.set("limits", "idle_timeout", "\"1s\"")`. `admin.listen` replaces the default.
    pub fn set(mut self, table: &'static str, key: &'static str, toml_value: &str) -> Self {
        self.extra.push((table, key, toml_value.to_owned()));
        self
    }

    /// The last source's `allow_ips`.
    pub fn allow_ips(mut self, nets: &[&str]) -> Self {
        let line = format!("allow_ips = {nets:?}");
        self.source_extra.push((self.sources.len() - 1, line));
        self
    }

    /// The `extra` lines of `table`.
    fn extra_lines(&self, f: &mut fmt::Formatter<'_>, table: &str) -> fmt::Result {
        for (_, key, value) in self.extra.iter().filter(|(t, _, _)| *t == table) {
            writeln!(f, "{key} = {value}")?;
        }
        Ok(())
    }

    /// `delivery = "queue"` on the last source.
    pub fn queued(mut self) -> Self {
        self.last_source().queue = true;
        self
    }

    /// `max_concurrency` on the last route.
    pub fn max_concurrency(mut self, limit: u32) -> Self {
        self.last_source()
            .routes
            .last_mut()
            .expect("a route to limit")
            .max_concurrency = Some(limit);
        self
    }

    /// A `[queue]` key with its TOML value as written: `("workers", "4")`,
    /// `("backoff", r#"{ initial = "50ms", max = "1s", jitter = false }"#)`.
    /// A key given twice keeps the later value.
    pub fn queue_option(mut self, key: &'static str, toml: &str) -> Self {
        self.queue.retain(|(k, _)| *k != key);
        self.queue.push((key, toml.to_owned()));
        self
    }

    /// `server.shutdown_timeout`, a humantime duration.
    pub fn shutdown_timeout(mut self, timeout: &str) -> Self {
        self.server
            .push(("shutdown_timeout", format!("{timeout:?}")));
        self
    }

    /// `admin.token`.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin.push(("token", format!("{token:?}")));
        self
    }

    pub fn tls(mut self, cert: &DevCert) -> Self {
        self.tls = Some((cert.cert.clone(), cert.key.clone()));
        self
    }

    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.limits.push(("max_body_bytes", bytes.to_string()));
        self
    }

    /// A humantime duration such as `"1s"`.
    pub fn upstream_timeout(mut self, timeout: &str) -> Self {
        self.limits.retain(|(key, _)| *key != "upstream_timeout");
        self.limits
            .push(("upstream_timeout", format!("{timeout:?}")));
        self
    }

    pub fn rate_limit(mut self, requests_per_second: f64, burst: u32) -> Self {
        self.rate_limit = (requests_per_second, burst);
        self
    }

    /// `dedupe.ttl`, a humantime duration such as `"1h"`.
    pub fn dedupe_ttl(mut self, ttl: &str) -> Self {
        self.dedupe.push(("ttl", format!("{ttl:?}")));
        self
    }

    /// The store a shared test body runs against: nothing for memory, `[store]` for Redis.
    pub fn store(self, store: &TestStore) -> Self {
        match store {
            TestStore::Memory => self,
            TestStore::Redis(redis) => self.redis(redis),
        }
    }

    /// `[store] redis_url` pointing at `redis`.
    pub fn redis(mut self, redis: &RedisServer) -> Self {
        self.store.push(("redis_url", format!("{:?}", redis.url())));
        self
    }

    /// `[store] cluster` listing every node of `cluster`.
    pub fn redis_cluster(mut self, cluster: &RedisCluster) -> Self {
        self.store
            .push(("cluster", format!("{:?}", cluster.urls())));
        self
    }

    /// Another `[store]` key with a string value: `key_prefix`, `on_error`, `timeout`,
    /// `connect_timeout`.
    pub fn store_option(mut self, key: &'static str, value: &str) -> Self {
        self.store.push((key, format!("{value:?}")));
        self
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[server]\nlisten = \"127.0.0.1:0\"")?;
        self.extra_lines(f, "server")?;
        for (key, value) in &self.server {
            writeln!(f, "{key} = {value}")?;
        }
        if let Some((cert, key)) = &self.tls {
            writeln!(
                f,
                "[server.tls]\ncert = {:?}\nkey = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            )?;
            self.extra_lines(f, "server.tls")?;
        }
        writeln!(f, "[admin]")?;
        if !self
            .extra
            .iter()
            .any(|(t, k, _)| *t == "admin" && *k == "listen")
        {
            writeln!(f, "listen = \"127.0.0.1:0\"")?;
        }
        self.extra_lines(f, "admin")?;
        for (key, value) in &self.admin {
            writeln!(f, "{key} = {value}")?;
        }
        if !self.queue.is_empty() {
            writeln!(f, "[queue]")?;
            for (key, value) in &self.queue {
                writeln!(f, "{key} = {value}")?;
            }
        }
        writeln!(f, "[limits]")?;
        self.extra_lines(f, "limits")?;
        for (key, value) in &self.limits {
            writeln!(f, "{key} = {value}")?;
        }
        writeln!(f, "[dedupe]")?;
        for (key, value) in &self.dedupe {
            writeln!(f, "{key} = {value}")?;
        }
        let (rps, burst) = self.rate_limit;
        writeln!(
            f,
            "[rate_limit]\nrequests_per_second = {rps:?}\nburst = {burst}"
        )?;
        self.extra_lines(f, "rate_limit")?;
        let known = ["server", "server.tls", "admin", "limits", "rate_limit"];
        let mut others: Vec<&str> = self
            .extra
            .iter()
            .map(|(t, _, _)| *t)
            .filter(|t| !known.contains(t))
            .collect();
        others.dedup();
        for table in others {
            writeln!(f, "[{table}]")?;
            self.extra_lines(f, table)?;
        }
        if !self.store.is_empty() {
            writeln!(f, "[store]")?;
            for (key, value) in &self.store {
                writeln!(f, "{key} = {value}")?;
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            writeln!(
                f,
                "\n[[sources]]\nname = {:?}\npath = {:?}",
                source.name, source.path
            )?;
            match &source.scheme_toml {
                Some(toml) => writeln!(f, "{toml}")?,
                None => writeln!(
                    f,
                    "scheme = \"standard-webhooks\"\nsecrets = {:?}",
                    source.secrets
                )?,
            }
            for (_, line) in self.source_extra.iter().filter(|(at, _)| *at == i) {
                writeln!(f, "{line}")?;
            }
            if source.queue {
                writeln!(f, "delivery = \"queue\"")?;
            }
            for route in &source.routes {
                writeln!(f, "[[sources.routes]]")?;
                if let Some(name) = &route.name {
                    writeln!(f, "name = {name:?}")?;
                }
                writeln!(
                    f,
                    "events = [{:?}]\nupstream = {:?}",
                    route.events, route.upstream
                )?;
                if let Some(secret) = &route.resign {
                    writeln!(f, "resign = {{ secret = {secret:?} }}")?;
                }
                if let Some(limit) = route.max_concurrency {
                    writeln!(f, "max_concurrency = {limit}")?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Gateway and its test client
// ---------------------------------------------------------------------------------

/// What the test client got back, body read in full.
#[derive(Debug)]
pub struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    async fn read<B>(response: Response<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read the answer").to_bytes();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }

    /// `Retry-After` as whole seconds; panics when it is absent or not a number.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After in {self:?}"))
            .parse()
            .expect("Retry-After is whole seconds")
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("the body is UTF-8")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.body))
    }

    /// Whether this is the upstream's own `200 {"ok":true}` passed through, that is,
    /// the delivery was forwarded (not answered as a duplicate by the gateway).
    pub fn forwarded(&self) -> bool {
        self.status == StatusCode::OK && self.json() == serde_json::json!({"ok": true})
    }

    /// The `error` reason of a rejection body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error reason in {self:?}"))
            .to_owned()
    }
}

/// A pooled client bound to one gateway (http, or https trusting anything).
#[derive(Clone)]
pub struct TestClient {
    http: HttpClient,
    base: String,
}

impl TestClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a signed delivery as the sender would.
    pub async fn post(&self, path: &str, delivery: &SignedRequest) -> Reply {
        self.post_url(&self.url(path), delivery).await
    }

    /// POSTs a signed delivery to any URL, the gateway's or not.
    pub async fn post_url(&self, url: &str, delivery: &SignedRequest) -> Reply {
        let mut builder = Request::post(url);
        for (name, value) in &delivery.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(delivery.body.clone())))
            .expect("a valid request");
        self.send(request).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        let request = Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(PATIENCE, self.http.request(request))
            .await
            .expect("the gateway answers in time")
            .expect("the request reaches the gateway");
        Reply::read(response).await
    }
}

/// hookgate started in this process from config text, with a client for it.
pub struct Gateway {
    running: Option<hookgate::Running>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    client: TestClient,
}

impl Gateway {
    /// Parses `config` as `test.toml` and starts it; panics with the config error.
    pub async fn start(config: impl fmt::Display) -> Gateway {
        let text = config.to_string();
        let settings = hookgate::config::parse(&text, "test.toml")
            .unwrap_or_else(|e| panic!("invalid test config: {e}\n{text}"));
        Gateway::start_settings(settings).await
    }

    /// Starts from a config file, which a reload then reads again.
    pub async fn start_file(path: &std::path::Path) -> Gateway {
        let settings = hookgate::config::load(path)
            .unwrap_or_else(|e| panic!("invalid test config file: {e}"));
        Gateway::start_settings(settings).await
    }

    async fn start_settings(settings: hookgate::Settings) -> Gateway {
        let scheme = if settings.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let running = hookgate::start(settings).await.expect("the gateway starts");
        let addr = running.addr();
        let client = TestClient {
            http: http_client(
                hookgate::tls::insecure_client_config(),
                Duration::from_secs(10),
            ),
            base: format!("{scheme}://{addr}"),
        };
        Gateway {
            admin_addr: running.admin_addr(),
            running: Some(running),
            addr,
            client,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What SIGHUP and `POST /reload` do: read the config file again.
    pub async fn reload(&self) -> Result<hookgate::reload::Reloaded, hookgate::ConfigError> {
        self.running
            .as_ref()
            .expect("the gateway runs")
            .reload()
            .await
    }

    pub fn url(&self, path: &str) -> String {
        self.client.url(path)
    }

    /// A client to move into a spawned task.
    pub fn client(&self) -> TestClient {
        self.client.clone()
    }

    pub async fn post(&self, path: &str, delivery: &SignedRequest) -> Reply {
        self.client.post(path, delivery).await
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        self.client.send(request).await
    }

    /// A GET on the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub async fn admin(&self, path: &str) -> Reply {
        self.client.get(&self.admin_url(path)).await
    }

    /// The admin listener's URL for `path`, on loopback even when it listens on all
    /// addresses.
    pub fn admin_url(&self, path: &str) -> String {
        let mut addr = self.admin_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}{path}")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub async fn metrics(&self) -> Scrape {
        let reply = self.admin("/metrics").await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        Scrape(reply.text())
    }

    /// Requests a graceful shutdown in the background; the handle ends once it is done.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        let running = self.running.take().expect("not shut down yet");
        tokio::spawn(running.shutdown())
    }

    /// POSTs a body sent with `Transfer-Encoding: chunked` (no `Content-Length`) over
    /// a fresh HTTP/1.1 connection.
    pub async fn post_chunked(
        &self,
        path: &str,
        headers: &[(HeaderName, String)],
        chunks: Vec<Bytes>,
    ) -> Reply {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let mut builder = Request::post(path).header("host", self.addr.to_string());
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Chunks(chunks.into()))
            .expect("a valid request");
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("the gateway answers in time")
            .expect("the gateway answers");
        Reply::read(response).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            let _ = running.stopper().send(true);
        }
    }
}

/// A body of unknown length: hyper sends it chunked.
struct Chunks(std::collections::VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }
}

/// Polls `condition` until it holds; panics with `what` after `PATIENCE`.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// Signed deliveries
// ---------------------------------------------------------------------------------

pub fn now_unix() -> i64 {
    hookgate::verify::unix_seconds(SystemTime::now())
}

/// A fresh delivery id, unique within the test run.
pub fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "msg_it_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An event of `event_type` as `hookgate sign` builds it, signed with `SECRET` now.
pub fn signed_event(event_type: &str) -> SignedRequest {
    signed_event_with(SECRET, event_type)
}

pub fn signed_event_with(secret: &str, event_type: &str) -> SignedRequest {
    hookgate::sign::build(
        &SignInput {
            secret,
            event_type,
            data: Some(r#"{"id":"resp_1"}"#),
            id: None,
            timestamp: None,
        },
        SystemTime::now(),
    )
    .expect("a valid delivery")
}

/// `body` exactly as given, signed with `SECRET` under a fresh id, now.
pub fn signed_body(body: &str) -> SignedRequest {
    signed_raw(SECRET, &fresh_id(), now_unix(), body)
}

/// A delivery signed by hand: any secret, id, timestamp and body.
pub fn signed_raw(secret: &str, id: &str, timestamp: i64, body: &str) -> SignedRequest {
    let key = key_from_secret(secret).expect("a valid secret");
    SignedRequest {
        id: id.to_owned(),
        headers: vec![
            (CONTENT_TYPE, "application/json".to_owned()),
            (HeaderName::from_static("webhook-id"), id.to_owned()),
            (
                HeaderName::from_static("webhook-timestamp"),
                timestamp.to_string(),
            ),
            (
                HeaderName::from_static("webhook-signature"),
                sign(&key, id, timestamp, body.as_bytes()),
            ),
        ],
        body: body.to_owned(),
    }
}

/// Edits of a signed delivery, to break it one way at a time.
pub trait Edit {
    fn header(&self, name: &str) -> &str;
    /// Sets (or adds) a header; the signature is not recomputed.
    fn with_header(self, name: &'static str, value: &str) -> Self;
    fn without_header(self, name: &str) -> Self;
    /// Replaces the body; the signature is not recomputed.
    fn with_body(self, body: &str) -> Self;
}

impl Edit for SignedRequest {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the delivery has no {name} header"))
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        self.headers.push((name, value.to_owned()));
        self
    }

    fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn with_body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }
}

// ---------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------

/// A certificate for localhost and 127.0.0.1 generated into a temp dir for this test.
pub struct DevCert {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: Vec<u8>,
}

impl DevCert {
    pub fn generate() -> DevCert {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (cert, key) = hookgate::tls::write_dev_cert(dir.path()).expect("write a dev cert");
        let pem = std::fs::read(&cert).expect("read the cert back");
        DevCert {
            _dir: dir,
            cert,
            key,
            pem,
        }
    }
}

pub type HttpsClient = LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An https client that trusts exactly `pem` and offers exactly one protocol by
/// ALPN: `Version::HTTP_11` or `Version::HTTP_2`.
pub fn https_client(pem: &[u8], version: Version) -> HttpsClient {
    let mut tls = hookgate::tls::client_config_trusting(pem).expect("a valid PEM");
    if version == Version::HTTP_2 {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .build();
        LegacyClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector)
    } else {
        // hyper-rustls' builder leaves ALPN empty for HTTP/1.1 only; offer it explicitly
        // so the server really negotiates it.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnector::from((http, tls));
        LegacyClient::builder(TokioExecutor::new()).build(connector)
    }
}

/// Sends a request with any client and reads the whole answer.
pub async fn exchange<C>(
    client: &LegacyClient<C, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Reply
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the request reaches the gateway");
    Reply::read(response).await
}

/// The request a sender would make for `delivery`.
pub fn delivery_request(url: &str, delivery: &SignedRequest) -> Request<Full<Bytes>> {
    let mut builder = Request::post(url);
    for (name, value) in &delivery.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(delivery.body.clone())))
        .expect("a valid request")
}

// ---------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------

/// One scrape of `/metrics` in the Prometheus text format.
pub struct Scrape(pub String);

impl Scrape {
    /// The value of an exact series (`name{labels}` as rendered, labels sorted), or
    /// `None` when the series does not exist.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(rest.trim().parse().expect("a sample value"))
        })
    }

    /// `hookgate_requests_total{outcome, source}`; the series is pre-created at zero.
    pub fn requests(&self, source: &str, outcome: &str) -> u64 {
        let series = format!(r#"hookgate_requests_total{{outcome="{outcome}",source="{source}"}}"#);
        self.value(&series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.0)) as u64
    }

    /// `hookgate_upstream_responses_total{class, route}`; zero when never observed.
    pub fn upstream_responses(&self, route: &str, class: &str) -> u64 {
        self.value(&format!(
            r#"hookgate_upstream_responses_total{{class="{class}",route="{route}"}}"#
        ))
        .unwrap_or(0.0) as u64
    }
}

// ---------------------------------------------------------------------------------
// Queue mode: the admin API of any gateway, and gateways as child processes
// ---------------------------------------------------------------------------------

/// The `/deliveries` API of a gateway's admin listener (in-process or a child).
#[derive(Clone)]
pub struct Deliveries {
    client: TestClient,
    token: Option<String>,
}

impl Deliveries {
    pub fn of(gw: &Gateway) -> Deliveries {
        Deliveries::at(gw.admin_addr())
    }

    pub fn at(admin: SocketAddr) -> Deliveries {
        Deliveries {
            client: TestClient {
                http: http_client(
                    hookgate::tls::insecure_client_config(),
                    Duration::from_secs(10),
                ),
                base: format!("http://{admin}"),
            },
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Deliveries {
        self.token = Some(token.to_owned());
        self
    }

    pub fn base(&self) -> &str {
        &self.client.base
    }

    pub async fn request(&self, method: Method, path: &str) -> Reply {
        let mut builder = Request::builder().method(method).uri(self.client.url(path));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        self.client
            .send(
                builder
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request"),
            )
            .await
    }

    /// One record (`GET /deliveries/<id>`); panics unless it exists.
    pub async fn record(&self, id: &str) -> serde_json::Value {
        let reply = self
            .request(Method::GET, &format!("/deliveries/{id}"))
            .await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        reply.json()
    }

    /// Records matching a query such as `status=failed_final`.
    pub async fn list(&self, query: &str) -> Vec<serde_json::Value> {
        let reply = self
            .request(Method::GET, &format!("/deliveries?limit=1000&{query}"))
            .await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        reply.json()["deliveries"]
            .as_array()
            .expect("a list of deliveries")
            .clone()
    }

    /// Waits until the record of `id` is in `state`, and returns it.
    pub async fn wait_for_state(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let record = self.record(id).await;
            if record["state"] == state {
                return record;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery {id} never reached {state}: {record:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` records are in `state`.
    pub async fn wait_for_count(&self, state: &str, n: usize) {
        let query = format!("status={state}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let found = self.list(&query).await.len();
            if found >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {found} of {n} deliveries reached {state}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Posts a delivery and returns its `delivery_id`; panics unless it was queued (202).
pub async fn enqueue(client: &TestClient, delivery: &SignedRequest) -> String {
    let reply = client.post(PATH, delivery).await;
    assert_eq!(reply.status(), 202, "{reply:?}");
    assert_eq!(reply.json()["queued"], true, "{reply:?}");
    reply.json()["delivery_id"]
        .as_str()
        .expect("a delivery id")
        .to_owned()
}

/// Runs the built `hookgate` binary with `args` and returns (success, stdout, stderr).
pub async fn hookgate_cli(args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(args)
        .env_remove("HOOKGATE_CONFIG")
        .env_remove("HOOKGATE_ADMIN_URL")
        .env_remove("HOOKGATE_DELIVERIES_TOKEN")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("hookgate finishes in time")
        .expect("run hookgate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `hookgate serve` as a child process of the built binary, so it can really be killed.
/// Its stderr (JSON log lines) is kept for the failure message.
pub struct GatewayProcess {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `hookgate serve` on `config` and returns once it listens.
    pub async fn spawn(config: impl fmt::Display) -> GatewayProcess {
        GatewayProcess::spawn_logging(config, "info").await
    }

    /// `spawn` with `RUST_LOG=filter` (for example "info,hookgate::server=debug").
    pub async fn spawn_logging(config: impl fmt::Display, filter: &str) -> GatewayProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("hookgate.toml");
        std::fs::write(&path, config.to_string()).expect("write the config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", filter)
            .env_remove("HOOKGATE_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn hookgate serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (listening_tx, listening) = std::sync::mpsc::channel();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                        && event["message"] == "listening"
                    {
                        let addr = |key: &str| event[key].as_str().and_then(|a| a.parse().ok());
                        if let (Some(addr), Some(admin)) = (addr("addr"), addr("admin_addr")) {
                            let _ = listening_tx.send((addr, admin));
                        }
                    }
                    log.lock().expect("not poisoned").push(line);
                }
            }
        });
        let waited = tokio::task::spawn_blocking(move || listening.recv_timeout(PATIENCE))
            .await
            .expect("the waiting thread");
        let Ok((addr, admin_addr)) = waited else {
            let _ = child.kill();
            panic!(
                "hookgate serve did not start listening:\n{}",
                log.lock().expect("not poisoned").join("\n")
            );
        };
        GatewayProcess {
            child,
            _dir: dir,
            addr,
            admin_addr,
            log,
        }
    }

    pub fn client(&self) -> TestClient {
        TestClient {
            http: http_client(
                hookgate::tls::insecure_client_config(),
                Duration::from_secs(10),
            ),
            base: format!("http://{}", self.addr),
        }
    }

    /// The process id, to read its `/proc` entries (CPU time, memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the process was started with (rewrite it, then `hangup`).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("hookgate.toml")
    }

    /// SIGHUP: read the config file again.
    pub fn hangup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// SIGKILL: no shutdown, no hand back; waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("not poisoned").join("\n")
    }

    pub async fn metrics(&self) -> Scrape {
        let reply = self
            .client()
            .get(&format!("http://{}/metrics", self.admin_addr))
            .await;
        Scrape(reply.text())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
