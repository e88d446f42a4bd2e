//! `Gateway`: hookgate started in this process from config text, on `127.0.0.1:0`, with a
//! pooled `TestClient` for it; `Reply`, an answer read in full; and the few ways of
//! sending that the client does not cover (chunked bodies, any hyper client).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hookgate::forward::{HttpClient, http_client};
use hookgate::sign::SignedRequest;
use http::header::{HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{PATIENCE, Scrape, eventually};

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

    /// The `name=value` of the cookie the reply sets, as a browser sends it back;
    /// panics when it sets none.
    pub fn cookie(&self) -> String {
        let set = self
            .header("set-cookie")
            .unwrap_or_else(|| panic!("no Set-Cookie in {self:?}"));
        set.split(';').next().expect("a name=value").to_owned()
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
    /// A client for the server at `base` (`http://127.0.0.1:port`), trusting any
    /// certificate when `base` is https.
    pub fn new(base: String) -> TestClient {
        TestClient {
            http: http_client(
                hookgate::tls::insecure_client_config(),
                Duration::from_secs(10),
            ),
            base,
        }
    }

    /// The base URL, for tools that take it (`hookgate deliveries --admin`).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `post` in a task of its own: a delivery left in flight while the test goes on.
    pub fn post_in_background(&self, path: &str, delivery: &SignedRequest) -> JoinHandle<Reply> {
        let (client, path, delivery) = (self.clone(), path.to_owned(), delivery.clone());
        tokio::spawn(async move { client.post(&path, &delivery).await })
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
        let client = TestClient::new(format!("{scheme}://{addr}"));
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

    /// Waits until the webhook listener counts `n` open connections: it admitted one,
    /// or saw a client hang up.
    pub async fn wait_for_open_connections(&self, n: u64) {
        eventually(format!("{n} open connections"), || async {
            self.metrics()
                .await
                .value(r#"hookgate_connections_open{listener="server"}"#)
                == Some(n as f64)
        })
        .await;
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
