//! `hookgate bench`: a load generator that speaks Standard Webhooks, and a fast sink.
//!
//! Generic HTTP load tools replay one request, which hookgate would answer as a duplicate
//! after the first. `load` signs N distinct deliveries before the clock starts (given
//! secret, body size, a mix of event types, an optional share of repeats), opens C
//! keep-alive connections, then sends them with one request in flight per connection and
//! records each latency in an HDR histogram. `sink` is the minimal upstream: it answers
//! 200 and counts requests and distinct `webhook-id`s, so the gateway can be measured
//! alone and checked for exactly-once forwarding.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, watch};

use crate::reject::json_response;
use crate::server::{accept_loop, http_builder};
use crate::tls;
use crate::verify::standard_webhooks::{self, ID, SIGNATURE, TIMESTAMP, key_from_secret};
use crate::verify::unix_seconds;

/// What to send and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub url: Uri,
    pub secret: String,
    pub requests: usize,
    pub connections: usize,
    pub body_size: usize,
    pub event_types: Vec<String>,
    /// Share of requests (0..1) that repeat an earlier delivery's id and signature.
    pub repeat_share: f64,
    pub http2: bool,
    pub insecure: bool,
}

/// How long one request may wait for its answer before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub protocol: &'static str,
    pub connections: usize,
    pub body_bytes: usize,
    pub requests: u64,
    pub errors: u64,
    /// Requests never sent: every connection failed and could not be opened again.
    pub unsent: u64,
    /// When the clock started (Unix ns), after the deliveries were signed and the
    /// connections opened: where a drain measured outside starts.
    pub started_unix_ns: u64,
    pub elapsed_seconds: f64,
    pub requests_per_second: f64,
    pub latency_ms: Percentiles,
    /// Response status → count.
    pub statuses: BTreeMap<u16, u64>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--url {0}: needs http:// or https:// and a host")]
    Url(String),
    #[error("--secret: {0}")]
    Secret(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connecting to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("{0}")]
    Options(String),
}

/// One pre-signed request: only cheap clones happen while the clock runs.
struct Prepared {
    headers: HeaderMap,
    body: Bytes,
}

/// Signs `options.requests` deliveries. Repeats reuse an earlier delivery verbatim, so
/// they are valid duplicates, spread evenly through the run.
fn prepare(options: &LoadOptions, now: SystemTime) -> Result<Vec<Prepared>, BenchError> {
    let key = key_from_secret(&options.secret).map_err(BenchError::Secret)?;
    let timestamp = unix_seconds(now);
    // A run tag keeps ids distinct across runs started within the same second.
    let run = RandomState::new().hash_one(now) as u32;
    let mut prepared: Vec<Prepared> = Vec::with_capacity(options.requests);
    let share = options.repeat_share;
    for i in 0..options.requests {
        let is_repeat = ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
        if is_repeat && i > 0 {
            let earlier = &prepared[i / 2];
            prepared.push(Prepared {
                headers: earlier.headers.clone(),
                body: earlier.body.clone(),
            });
            continue;
        }
        let event_type = &options.event_types[i % options.event_types.len()];
        let body = padded_body(i, timestamp, event_type, options.body_size);
        let id = format!("msg_bench_{run:08x}_{i}");
        let signature = standard_webhooks::sign(&key, &id, timestamp, body.as_bytes());
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ID, HeaderValue::from_str(&id).expect("ascii id"));
        headers.insert(TIMESTAMP, HeaderValue::from(timestamp));
        headers.insert(
            SIGNATURE,
            HeaderValue::from_str(&signature).expect("base64 is ascii"),
        );
        if let Some(authority) = options.url.authority() {
            headers.insert(
                HOST,
                HeaderValue::from_str(authority.as_str()).expect("authority is ascii"),
            );
        }
        prepared.push(Prepared {
            headers,
            body: Bytes::from(body),
        });
    }
    Ok(prepared)
}

/// An OpenAI-shaped event of exactly `size` bytes (or the minimum above it).
fn padded_body(i: usize, timestamp: i64, event_type: &str, size: usize) -> String {
    let head = format!(
        r#"{{"id":"evt_bench_{i}","object":"event","created_at":{timestamp},"type":{},"data":{{"pad":""#,
        serde_json::Value::from(event_type)
    );
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + pad + tail.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    body
}

/// Runs the load and reports. Connections are opened before the clock starts.
pub async fn load(options: LoadOptions) -> Result<LoadReport, BenchError> {
    if options.connections == 0 || options.requests == 0 || options.event_types.is_empty() {
        return Err(BenchError::Options(
            "--requests, --connections and --types must not be empty or zero".to_owned(),
        ));
    }
    if !(0.0..1.0).contains(&options.repeat_share) {
        return Err(BenchError::Options("--repeat must be in [0, 1)".to_owned()));
    }
    let https = match options.url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(BenchError::Url(options.url.to_string())),
    };
    let host = options
        .url
        .host()
        .ok_or_else(|| BenchError::Url(options.url.to_string()))?
        .to_owned();
    let port = options
        .url
        .port_u16()
        .unwrap_or(if https { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| BenchError::Resolve(format!("{host}:{port}")))?;

    let requests = Arc::new(prepare(&options, SystemTime::now())?);
    let connector = Connector {
        addr,
        host,
        tls: https.then(|| {
            let mut config = if options.insecure {
                tls::insecure_client_config()
            } else {
                tls::upstream_client_config()
            };
            config.alpn_protocols = vec![if options.http2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }),
        http2: options.http2,
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start_line = Arc::new(Barrier::new(options.connections + 1));
    let mut workers = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        let mut sender = connector.connect().await?;
        let (requests, next, start_line) = (requests.clone(), next.clone(), start_line.clone());
        let connector = connector.clone();
        let uri = options.url.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            start_line.wait().await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(prepared) = requests.get(i) else {
                    break;
                };
                let mut request = Request::new(Full::new(prepared.body.clone()));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = if connector.http2 {
                    uri.clone()
                } else {
                    Uri::from(
                        uri.path_and_query()
                            .cloned()
                            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                    )
                };
                *request.headers_mut() = prepared.headers.clone();
                let started = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, sender.send(request)).await {
                    Ok(Ok(status)) => tally.record(status, started.elapsed()),
                    // A failure, or a target that accepted and never answered (which held
                    // the run for ever): counted, and the connection replaced.
                    Ok(Err(_)) | Err(_) => {
                        tally.errors += 1;
                        match connector.connect().await {
                            Ok(fresh) => sender = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            tally
        }));
    }
    start_line.wait().await;
    let started = Instant::now();
    let started_at = SystemTime::now();
    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(tally);
        }
    }
    let elapsed = started.elapsed();
    Ok(total.report(&options, started_at, elapsed))
}

#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    host: String,
    tls: Option<tokio_rustls::TlsConnector>,
    http2: bool,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Sends one request and drains the answer; the status, or an error to reconnect on.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<StatusCode, hyper::Error> {
        let response = match self {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }
}

impl Connector {
    async fn connect(&self) -> Result<Sender, BenchError> {
        let error = |detail: String| BenchError::Connect {
            addr: self.addr,
            detail,
        };
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| error(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| error(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| error(e.to_string()))?;
                self.handshake(TokioIo::new(stream)).await
            }
            None => self.handshake(TokioIo::new(tcp)).await,
        }
    }

    async fn handshake<IO>(&self, io: IO) -> Result<Sender, BenchError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let error = |e: hyper::Error| BenchError::Connect {
            addr: self.addr,
            detail: e.to_string(),
        };
        if self.http2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(error)?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(error)?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }
}

/// One worker's counts, merged at the end (no shared state while the clock runs).
struct Tally {
    latency_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            errors: 0,
        }
    }

    fn record(&mut self, status: StatusCode, latency: Duration) {
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
        *self.statuses.entry(status.as_u16()).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.errors += other.errors;
    }

    fn report(
        self,
        options: &LoadOptions,
        started_at: SystemTime,
        elapsed: Duration,
    ) -> LoadReport {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let requests = self.latency_us.len();
        LoadReport {
            url: options.url.to_string(),
            protocol: if options.http2 { "h2" } else { "http/1.1" },
            connections: options.connections,
            body_bytes: options.body_size,
            requests,
            errors: self.errors,
            unsent: (options.requests as u64).saturating_sub(requests + self.errors),
            started_unix_ns: started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            elapsed_seconds: elapsed.as_secs_f64(),
            requests_per_second: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Percentiles {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p99_9: ms(0.999),
                max: self.latency_us.max() as f64 / 1000.0,
                mean: self.latency_us.mean() / 1000.0,
            },
            statuses: self.statuses,
        }
    }
}

impl LoadReport {
    pub fn to_text(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        let l = &self.latency_ms;
        format!(
            "{} {} x{} connections, {}-byte bodies\n\
             requests {}  errors {}{}  in {:.2}s  =>  {:.0} req/s\n\
             latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n\
             statuses    {}",
            self.url,
            self.protocol,
            self.connections,
            self.body_bytes,
            self.requests,
            self.errors,
            match self.unsent {
                0 => String::new(),
                n => format!("  UNSENT {n} (the target stopped accepting connections)"),
            },
            self.elapsed_seconds,
            self.requests_per_second,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
            l.mean,
            statuses.join("  ")
        )
    }
}

/// What the sink has seen.
#[derive(Default)]
struct SinkCounts {
    requests: AtomicU64,
    ids: Mutex<HashSet<Box<str>>>,
}

impl SinkCounts {
    fn stats(&self) -> String {
        let distinct = self.ids.lock().unwrap_or_else(|p| p.into_inner()).len();
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "distinct_ids": distinct,
        })
        .to_string()
    }
}

/// Serves until `stop`: POSTs are counted and answered `status`; `GET /stats` reports
/// `{"requests":N,"distinct_ids":M}`; `POST /reset` zeroes the counts.
pub async fn sink(
    listen: SocketAddr,
    status: StatusCode,
    stop: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<String> {
    let listener = TcpListener::bind(listen).await?;
    ready(listener.local_addr()?);
    let counts = Arc::new(SinkCounts::default());
    let seen = counts.clone();
    accept_loop(
        listener,
        http_builder(Duration::from_secs(30)),
        stop,
        Duration::from_secs(1),
        move |req, _peer| sink_answer(req, status, seen.clone()),
    )
    .await;
    Ok(counts.stats())
}

async fn sink_answer(
    req: Request<Incoming>,
    status: StatusCode,
    counts: Arc<SinkCounts>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => return json_response(StatusCode::OK, counts.stats()),
        (&Method::POST, "/reset") => {
            counts.requests.store(0, Ordering::Relaxed);
            counts.ids.lock().unwrap_or_else(|p| p.into_inner()).clear();
            return json_response(StatusCode::OK, counts.stats());
        }
        _ => {}
    }
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(id) = req.headers().get(ID).and_then(|v| v.to_str().ok()) {
        let mut ids = counts.ids.lock().unwrap_or_else(|p| p.into_inner());
        if !ids.contains(id) {
            ids.insert(id.into());
        }
    }
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(requests: usize, repeat_share: f64) -> LoadOptions {
        LoadOptions {
            url: "http://127.0.0.1:1/webhooks/openai".parse().unwrap(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            requests,
            connections: 1,
            body_size: 1024,
            event_types: vec!["response.completed".into(), "batch.completed".into()],
            repeat_share,
            http2: false,
            insecure: false,
        }
    }

    #[test]
    fn prepared_deliveries_verify_have_the_size_and_the_share_of_repeats() {
        let now = SystemTime::now();
        let prepared = prepare(&options(100, 0.1), now).unwrap();
        assert_eq!(prepared.len(), 100);
        let ids: HashSet<_> = prepared.iter().map(|p| p.headers[&ID].clone()).collect();
        assert_eq!(ids.len(), 90);
        let source = crate::config::parse(
            r#"
[[sources]]
name = "s"
path = "/webhooks/openai"
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:9/"
"#,
            "t",
        )
        .unwrap()
        .sources
        .remove(0);
        for p in &prepared {
            assert_eq!(p.body.len(), 1024);
            source.verifier.verify(&p.headers, &p.body, now).unwrap();
        }
    }

    /// A target that goes away mid-run: the requests never sent are reported (the run
    /// once looked complete, at a plausible rate, with most of `-n` never sent).
    #[tokio::test]
    async fn requests_never_sent_are_reported() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = tokio::spawn(async move {
            // One connection, one answer, then nothing listens any more.
            let (mut stream, _) = listener.accept().await.unwrap();
            drop(listener);
            let mut head = vec![0u8; 4096];
            let _ = stream.read(&mut head).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        });
        let mut options = options(5, 0.0);
        options.url = format!("http://{addr}/webhooks/openai").parse().unwrap();

        let report = load(options).await.unwrap();

        assert_eq!(report.requests, 1, "{report:?}");
        assert_eq!(
            report.requests + report.errors + report.unsent,
            5,
            "{report:?}"
        );
        assert!(report.unsent >= 3, "{report:?}");
        assert!(report.to_text().contains("UNSENT"), "{}", report.to_text());
        target.await.unwrap();
    }

    #[test]
    fn a_small_size_still_gives_a_complete_event() {
        let body = padded_body(7, 1, "response.completed", 10);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["type"], "response.completed");
    }
}
