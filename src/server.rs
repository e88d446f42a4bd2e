//! Listeners: accept loops, TLS handshakes, HTTP/1.1 and HTTP/2, graceful shutdown.
//!
//! One listener serves both protocols: with TLS by ALPN, in plain text by sniffing the
//! HTTP/2 preface. Shutdown stops accepting first (the listener is dropped, so a load
//! balancer sees refused connections and moves on), then lets open requests finish up
//! to `server.shutdown_timeout`. The queue workers stop taking work at the same moment
//! and get the same time to finish what they hold (`queue::worker`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::Admin;
use crate::config::Settings;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::pipeline::Gateway;
use crate::queue::worker::Workers;
use crate::queue::{self, Ingress};
use crate::store;

/// Pause after a failed `accept` (for example out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The webhook listener's address (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, lets open requests finish (bounded), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.wait().await;
    }

    /// Returns once both listeners (and the queue workers) have stopped.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// A handle that can request the shutdown from elsewhere (a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Binds both listeners and starts serving; returns once they accept connections.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let listener = bind(settings.server.listen, "server.listen").await?;
    let admin_listener = bind(settings.admin_listen, "admin.listen").await?;
    let addr = listener.local_addr().expect("bound socket has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound socket has an address");

    let metrics = Arc::new(Metrics::new(
        settings.sources.iter().map(|s| s.name.as_str()),
    ));
    let store::Built { store, redis } = store::build(&settings, metrics.clone())?;
    let instance = queue::instance_name();
    let queue = queue::build(&settings, redis, metrics.clone(), &instance);
    let forward = Arc::new(Forwarder::new(settings.limits.upstream_timeout));
    let builder = http_builder(settings.limits.header_read_timeout);
    let tls = settings.server.tls.as_ref().map(|tls| Handshake {
        acceptor: TlsAcceptor::from(tls.config.clone()),
        timeout: tls.handshake_timeout,
    });
    let grace = settings.server.shutdown_timeout;
    tracing::info!(store = %store.describe(), "store");
    match &queue {
        Some(queue) if !queue.durable() => tracing::warn!(
            queue = %queue.describe(),
            "queue mode WITHOUT durability: configure [store] (Redis) so queued deliveries survive a restart"
        ),
        Some(queue) => tracing::info!(queue = %queue.describe(), instance, "queue"),
        None => {}
    }

    let (stop, stopped) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let workers = queue.as_ref().and_then(|queue| {
        Workers::new(
            &settings,
            queue.clone(),
            forward.clone(),
            metrics.clone(),
            instance,
            wake.clone(),
        )
    });
    let admin = Arc::new(Admin::new(
        metrics.clone(),
        store.clone(),
        queue.clone(),
        settings.deliveries_token.clone(),
    ));
    let ingress = queue.map(|queue| Ingress { queue, wake });
    let gateway = Arc::new(Gateway::new(settings, store, metrics, forward, ingress));

    let serve_gateway = accept_loop(
        listener,
        tls,
        builder.clone(),
        stopped.clone(),
        grace,
        move |req, peer| {
            let gateway = gateway.clone();
            async move { gateway.serve(req, peer).await }
        },
    );
    let mut tasks = Vec::new();
    if let Some(workers) = workers {
        tasks.push(workers.start(stopped.clone(), grace));
    }
    let serve_admin = accept_loop(
        admin_listener,
        None,
        builder,
        stopped,
        grace,
        move |req, _peer| {
            let admin = admin.clone();
            async move { admin.serve(req).await }
        },
    );
    tracing::info!(%addr, %admin_addr, "listening");
    tasks.push(tokio::spawn(serve_gateway));
    tasks.push(tokio::spawn(serve_admin));
    Ok(Running {
        addr,
        admin_addr,
        stop,
        tasks,
    })
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
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

pub(crate) struct Handshake {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

pub(crate) async fn accept_loop<H, F>(
    listener: TcpListener,
    tls: Option<Handshake>,
    builder: auto::Builder<TokioExecutor>,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let tls = tls.map(Arc::new);
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
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = handler(req, peer);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let result = match tls {
                Some(tls) => match handshake(&tls, stream).await {
                    Some(stream) => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    None => return,
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, "draining open connections");
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "shutdown timeout reached; closing remaining connections"
        );
    }
}

async fn handshake(
    tls: &Handshake,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(tls.timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}
