//! `Upstream`: a real HTTP server on `127.0.0.1:0` that records every request it receives
//! and answers by a script (`Behaviour`), including answers held until the test releases
//! them; and `closed_port`, an address where nothing listens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{PATIENCE, eventually};

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
        let listener = eventually(format!("binding the upstream on {addr}"), async || {
            TcpListener::bind(addr).await
        })
        .await;
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
    serve_http(listener, move |req| {
        let recorder = recorder.clone();
        async move { record_and_answer(req, &recorder).await }
    })
    .await
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` for ever, each request answered by `answer`.
pub(super) async fn serve_http<F, A>(listener: TcpListener, answer: F)
where
    F: Fn(Request<Incoming>) -> A + Clone + Send + Sync + 'static,
    A: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answered = answer(req);
                async move { Ok::<_, Infallible>(answered.await) }
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
