//! Listeners: accept loops, connection limits, TLS handshakes, HTTP/1.1 and HTTP/2,
//! graceful shutdown.
//!
//! One listener serves both protocols: with TLS by ALPN, in plain text by sniffing the
//! HTTP/2 preface. Every connection is admitted first (`connections`: in all and per
//! IP), then must finish its TLS handshake within `handshake_timeout`, deliver its first
//! request head within `header_read_timeout`, and never sit without a request in
//! progress for longer than `idle_timeout`. The HTTP parsers get hard limits on header
//! count and size at twice the configured ones (the pipeline answers the configured
//! ones with a JSON 431), and HTTP/2 a cap on concurrent streams and 64 KiB receive
//! windows (bodies are bounded by `body_budget` once read). Rapid reset: a
//! connection whose client cancels more than `http2_max_resets` requests within 10 s is
//! dropped; streams reset before hyper picked them up count inside h2 against the same
//! number (GOAWAY `ENHANCE_YOUR_CALM`).
//! Shutdown stops accepting first (the listener is dropped, so a load balancer sees
//! refused connections and moves on), then lets open requests finish up to
//! `server.shutdown_timeout`. This module serves whatever handler it is given: what a
//! request does (`pipeline`, `admin`) and what is built for it (`app`) live above it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::{HTTP2_RESET_WINDOW, Limits};
use crate::connections::{self, Admission, Answers, Unsent};
use crate::metrics::{Closed, Metrics};
use crate::tls::Handshake;

/// Pause after a failed `accept` (for example out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections the admin listener holds at once: scrapers and probes, not traffic.
pub const ADMIN_MAX_CONNECTIONS: u32 = 64;

/// Of those, from one IP (an IPv6 /64): one client holding every connection would shut
/// out the health checks that decide whether this instance gets traffic.
pub const ADMIN_MAX_CONNECTIONS_PER_IP: u32 = 16;

/// Connections of the command line's helper servers (`echo`, `bench sink`).
const HELPER_MAX_CONNECTIONS: u32 = 65_536;

/// The HTTP/2 receive windows, per stream and per connection: what a client may have
/// sent that hookgate has not read yet. The protocol's initial value (RFC 9113 §6.9.2);
/// hyper's own 1 MiB let each connection park a megabyte outside the body budget while
/// its bodies waited for room. Bytes hookgate reads count against the body budget.
pub const HTTP2_RECEIVE_WINDOW_BYTES: u32 = 65_535;

/// How long a connection told to close (idle, or a head that never came) may take to
/// finish what it has before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A listener that could not be bound. The OS error is part of the message, not a
/// `source`: printed once.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what} in {origin}): {error}{}", bind_hint(.error, .what))]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub origin: String,
    pub error: std::io::Error,
}

/// `limits.max_connections`, lowered (with a warning) when the open-files limit, raised
/// as far as it goes, would not also leave room for upstream connections and the rest.
pub fn max_connections(configured: u32) -> u32 {
    let open_files = connections::raise_open_files_limit();
    let fitted = connections::fit_to_open_files(configured, open_files);
    if fitted < configured {
        tracing::warn!(
            configured,
            effective = fitted,
            open_files_limit = open_files,
            "limits.max_connections lowered to fit the open-files limit \
             (a quarter is kept for upstream connections, the store and the admin listener); \
             raise the limit (ulimit -n, LimitNOFILE=) to allow more"
        );
    }
    fitted
}

/// Binds `addr`; `what` (the config key) and `origin` (the file) name it on failure.
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
    origin: &str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|error| BindError {
        addr,
        what,
        origin: origin.to_owned(),
        error,
    })
}

/// What to do about the common reasons a listener cannot bind.
fn bind_hint(error: &std::io::Error, what: &str) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "; another process listens there (another hookgate, perhaps from another \
             walkthrough): stop it, or change {what}"
        ),
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE".to_owned()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("; no interface of this machine has that address: change {what}")
        }
        _ => String::new(),
    }
}

/// HTTP/1.1 and HTTP/2 on one connection builder. The timer is required: hyper panics
/// on `header_read_timeout` without one.
pub(crate) fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// The webhook and admin listeners' builder: `http_builder` plus the parsers' hard
/// limits. They sit at twice the configured header limits so that a request just over
/// them reaches the pipeline and gets its JSON 431; beyond, the parser answers 431
/// itself (no body) and, on HTTP/1.1, closes the connection.
pub fn gateway_http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = http_builder(limits.header_read_timeout);
    let hard_headers = limits.max_headers * 2;
    let hard_bytes = limits.max_header_bytes * 2;
    builder
        .http1()
        .max_headers(hard_headers)
        // The read buffer bounds the head: request line and separators count too.
        .max_buf_size((hard_bytes + 8 * 1024).max(8 * 1024));
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .initial_stream_window_size(HTTP2_RECEIVE_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_RECEIVE_WINDOW_BYTES)
        .max_pending_accept_reset_streams(limits.http2_max_resets)
        // HTTP/2 counts 32 bytes of overhead per field (RFC 9113 §6.5.2).
        .max_header_list_size(u32::try_from(hard_bytes + 32 * hard_headers).unwrap_or(u32::MAX));
    builder
}

/// The listener's TLS, swapped by a reload; each connection takes the current one.
pub type SharedTls = Arc<ArcSwap<Handshake>>;

/// What a listener enforces on its connections.
#[derive(Clone)]
pub struct ConnectionPolicy {
    admission: Arc<Admission>,
    /// From accept (or the end of the TLS handshake) to the first complete request head.
    first_request_timeout: Option<Duration>,
    /// With no request in progress, after the first.
    idle_timeout: Option<Duration>,
    /// Requests a client may cancel within `HTTP2_RESET_WINDOW` (HTTP/2 rapid reset).
    max_resets: Option<usize>,
    /// Tasks the drain at shutdown waits for besides the connections: the pipelines of
    /// requests whose sender hung up, which no connection holds any more.
    requests: Option<TaskTracker>,
}

impl ConnectionPolicy {
    /// The configured timeouts and rapid-reset limit, with `admission`'s connection limits.
    pub fn new(limits: &Limits, admission: Arc<Admission>) -> ConnectionPolicy {
        ConnectionPolicy {
            admission,
            first_request_timeout: Some(limits.header_read_timeout),
            idle_timeout: Some(limits.idle_timeout),
            max_resets: Some(limits.http2_max_resets),
            requests: None,
        }
    }

    /// The drain at shutdown waits for `requests` too.
    pub fn waiting_for(mut self, requests: TaskTracker) -> ConnectionPolicy {
        self.requests = Some(requests);
        self
    }
}

/// A listener without limits beyond hyper's header timeout, for the command line's
/// helper servers (`echo`, `bench sink`).
pub(crate) async fn accept_loop<H, F>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    stopped: watch::Receiver<bool>,
    grace: Duration,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let metrics = Metrics::new([]).connections("server");
    let policy = ConnectionPolicy {
        admission: Admission::new(HELPER_MAX_CONNECTIONS, 0, Vec::new(), metrics),
        first_request_timeout: None,
        idle_timeout: None,
        max_resets: None,
        requests: None,
    };
    let handler = move |req: Request<RequestBody>, peer| handler(req.map(|body| body.inner), peer);
    serve_listener(listener, None, builder, policy, stopped, grace, handler).await;
}

/// Accepts and serves connections until `stopped`, then drains them for up to `grace`
/// (and the policy's `requests` with them).
pub async fn serve_listener<H, F>(
    listener: TcpListener,
    tls: Option<SharedTls>,
    builder: auto::Builder<TokioExecutor>,
    policy: ConnectionPolicy,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
    handler: H,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let policy = Arc::new(policy);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => break,
        };
        let admitted = match policy.admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(reason) => {
                // A reset rather than a FIN: nothing lingers in TIME_WAIT on our side.
                let _ = stream.set_zero_linger();
                tracing::debug!(%peer, reason = reason.label(), "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let tls = tls.as_ref().map(|tls| tls.load_full());
        let policy = policy.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let admitted = admitted; // the slot is held until the connection ends
            let closed = match tls {
                Some(tls) => match tls.accept(stream, peer).await {
                    Ok(stream) => {
                        let answers = admitted.answers();
                        serve_connection(stream, peer, &builder, &policy, answers, stopped, handler)
                            .await
                    }
                    Err(reason) => {
                        policy.admission.metrics().closed(reason);
                        return; // logged by `handshake`, rate-limited
                    }
                },
                None => {
                    let answers = admitted.answers();
                    serve_connection(stream, peer, &builder, &policy, answers, stopped, handler)
                        .await
                }
            };
            if let Some(reason) = closed {
                policy.admission.metrics().closed(reason);
                tracing::debug!(%peer, reason = reason.label(), "connection closed");
            }
        });
    }
    drop(listener);
    let open = policy.admission.metrics().open.get();
    if open > 0 {
        tracing::info!(open, "draining open connections");
    }
    let drained = async {
        policy.admission.drained().await;
        if let Some(requests) = &policy.requests {
            requests.close();
            requests.wait().await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "shutdown timeout reached; closing remaining connections"
        );
    }
}

/// Serves one connection to its end; returns why hookgate cut it short, if it did.
async fn serve_connection<I, H, F>(
    io: I,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    policy: &ConnectionPolicy,
    answers: Answers,
    mut stopped: watch::Receiver<bool>,
    handler: H,
) -> Option<Closed>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let (activity, watched) = watch::channel(Activity {
        in_progress: 0,
        since: Instant::now(),
        served: false,
        resets: 0,
        resets_since: Instant::now(),
        unread: false,
    });
    let activity = Arc::new(activity);
    let service = service_fn(move |req: Request<Incoming>| {
        let stream = Arc::new(Stream {
            activity: activity.clone(),
            reset_counted: AtomicBool::new(false),
        });
        let mut busy = Busy::start(stream.clone());
        let http2 = req.version() == http::Version::HTTP_2;
        let req = req.map(|inner| RequestBody { inner, stream });
        let response = handler(req, peer);
        let answers = answers.clone();
        async move {
            let response = response.await;
            busy.answered();
            let unsent = answers.unsent();
            if unsent.is_none() {
                busy.stream.activity.send_modify(|a| a.unread = true);
            }
            Ok::<_, Infallible>(response.map(|inner| AnswerBody {
                inner,
                last: None,
                hold_last: http2,
                _unsent: unsent,
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let state = watched.clone();
    let expiry = expiry(
        watched,
        policy.first_request_timeout,
        policy.idle_timeout,
        policy.max_resets,
    );
    let cut = tokio::select! {
        result = conn.as_mut() => {
            let served = state.borrow().served;
            return result.err().and_then(|e| closed_by_parser(&*e, served));
        }
        _ = stopped.wait_for(|stop| *stop) => None,
        reason = expiry => Some(reason),
    };
    if matches!(cut, Some(Closed::Http2ResetFlood | Closed::AnswersUnread)) {
        return cut; // no grace for a flood: dropping the connection closes the socket
    }
    conn.as_mut().graceful_shutdown();
    match cut {
        // Shutdown: open requests may finish; the listener bounds the wait. Once none
        // is in progress, what is left gets the short grace: an HTTP/2 client must
        // acknowledge the shutdown's PING before hyper closes, and one that vanished
        // never does, which held the exit for the whole `shutdown_timeout`.
        None => {
            let mut activity = state;
            let began = Instant::now();
            let idle = async {
                loop {
                    let Ok(since) = activity
                        .wait_for(|a| a.in_progress == 0)
                        .await
                        .map(|a| a.since)
                    else {
                        return;
                    };
                    // A request begun meanwhile (an HTTP/2 stream opened before its
                    // client read the GOAWAY) starts the wait again once it ends: seen
                    // by its end time, as a quick one may begin and end unobserved.
                    tokio::select! {
                        () = tokio::time::sleep_until(since.max(began) + CLOSE_GRACE) => return,
                        changed = activity.wait_for(|a| a.in_progress > 0 || a.since != since) => {
                            if changed.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = conn => {}
                () = idle => {}
            }
            None
        }
        // Nothing is in progress: whatever is left gets a short grace, then the drop.
        Some(reason) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            Some(reason)
        }
    }
}

/// What a connection is doing, as its requests start and end.
#[derive(Debug, Clone, Copy)]
struct Activity {
    in_progress: usize,
    /// When the last request ended (or the connection started).
    since: Instant,
    served: bool,
    /// Requests the client cancelled (HTTP/2 RST_STREAM) since `resets_since`.
    resets: usize,
    resets_since: Instant,
    /// An answer found its client IP with as many unsent answers as it may have
    /// (`connections::Answers`): the client does not read them.
    unread: bool,
}

/// An answer's body, holding its place among its client's unsent answers until the
/// connection has sent it (hyper drops the body then) or dropped it.
pub struct AnswerBody {
    inner: Full<Bytes>,
    /// The answer's last byte, once the rest is out (`hold_last`).
    last: Option<Bytes>,
    /// HTTP/2: the last byte is a frame of its own. hyper hands a frame to h2 once the
    /// stream's window has room for one byte, and h2 keeps what does not fit: a client
    /// granting a window of 1 took every answer off the count at once, and h2 held
    /// them all the same. The last byte waits until the rest is sent.
    hold_last: bool,
    _unsent: Option<Unsent>,
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(last) = this.last.take() {
            return Poll::Ready(Some(Ok(Frame::data(last))));
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) if this.hold_last => match frame.into_data() {
                Ok(mut data) if data.len() > 1 => {
                    this.last = Some(data.split_off(data.len() - 1));
                    Some(Ok(Frame::data(data)))
                }
                Ok(data) => Some(Ok(Frame::data(data))),
                Err(frame) => Some(Ok(frame)),
            },
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.last.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.last.as_ref().map_or(0, |last| last.len() as u64);
        match self.inner.size_hint().exact() {
            Some(exact) => SizeHint::with_exact(exact + held),
            None => self.inner.size_hint(),
        }
    }
}

/// One request in progress on a connection; dropping it ends it, and dropping it before
/// it was answered means hyper cancelled it because the client reset the stream.
/// One request (an HTTP/2 stream), shared by its `Busy` and its `RequestBody`.
struct Stream {
    activity: Arc<watch::Sender<Activity>>,
    /// A client's reset of this stream is counted once: both hyper dropping the
    /// unanswered request and the body failing under the running pipeline see it (each
    /// counting it, a client was cut off at half of `http2_max_resets`).
    reset_counted: AtomicBool,
}

impl Stream {
    fn count_reset(&self) {
        if !self.reset_counted.swap(true, Ordering::Relaxed) {
            self.activity.send_modify(|a| a.count_reset(Instant::now()));
        }
    }
}

struct Busy {
    stream: Arc<Stream>,
    answered: bool,
}

impl Busy {
    fn start(stream: Arc<Stream>) -> Busy {
        stream.activity.send_modify(|a| a.in_progress += 1);
        Busy {
            stream,
            answered: false,
        }
    }

    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stream.activity.send_modify(|a| {
            let now = Instant::now();
            a.in_progress -= 1;
            a.since = now;
            a.served = true;
        });
        if !self.answered {
            self.stream.count_reset();
        }
    }
}

impl Activity {
    fn count_reset(&mut self, now: Instant) {
        if now.duration_since(self.resets_since) > HTTP2_RESET_WINDOW {
            self.resets = 0;
            self.resets_since = now;
        }
        self.resets += 1;
    }
}

/// A request body that tells its connection when the client reset the stream under it:
/// a request answered after its body failed that way counts toward the rapid-reset
/// guard like one hyper cancelled.
pub struct RequestBody {
    inner: Incoming,
    stream: Arc<Stream>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &frame
            && is_stream_reset(e)
        {
            this.stream.count_reset();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_stream_reset(error: &hyper::Error) -> bool {
    causes(error)
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|e| e.is_reset() && e.is_remote())
}

/// `error` and the errors beneath it.
fn causes<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// Resolves when the connection has had no request in progress for too long (no first
/// request head within `first`, or nothing after the last one for `idle`), or when its
/// client has cancelled more than `max_resets` requests within `HTTP2_RESET_WINDOW`.
async fn expiry(
    mut activity: watch::Receiver<Activity>,
    first: Option<Duration>,
    idle: Option<Duration>,
    max_resets: Option<usize>,
) -> Closed {
    loop {
        let now = *activity.borrow_and_update();
        if max_resets.is_some_and(|max| now.resets > max) {
            return Closed::Http2ResetFlood;
        }
        if now.unread {
            return Closed::AnswersUnread;
        }
        let limit = match (now.in_progress, now.served) {
            (0, false) => first.map(|t| (t, Closed::HeaderTimeout)),
            (0, true) => idle.map(|t| (t, Closed::IdleTimeout)),
            _ => None,
        };
        let changed = async {
            if activity.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match limit {
            Some((limit, reason)) => tokio::select! {
                _ = tokio::time::sleep_until(now.since + limit) => return reason,
                _ = changed => {}
            },
            None => changed.await,
        }
    }
}

/// Why the HTTP layer ended a connection, when it was one of the limits. On HTTP/1.1,
/// hyper's head timer also runs while a kept-alive connection waits for its next
/// request: after the first request, that timeout is the connection being idle.
fn closed_by_parser(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    served: bool,
) -> Option<Closed> {
    for e in causes(error) {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_timeout() {
                return Some(if served {
                    Closed::IdleTimeout
                } else {
                    Closed::HeaderTimeout
                });
            }
            if e.is_parse_too_large() {
                return Some(Closed::HeadersTooLarge);
            }
            if e.is_parse() {
                return Some(Closed::MalformedRequest);
            }
        }
        if let Some(e) = e.downcast_ref::<h2::Error>()
            && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            return Some(Closed::Http2ResetFlood);
        }
    }
    None
}
