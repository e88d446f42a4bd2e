//! The application: builds a running gateway from validated settings. This is the one
//! place where the parts meet; below it, each part knows only the floors beneath it.
//!
//! `start` binds both listeners first (a port in use fails before anything connects
//! anywhere), then builds the metrics registry, the store and the queue from their
//! factories, the forwarder, the queue workers, the reloadable request path (`reload`)
//! and the admin surfaces (`admin`, and `console` under `/ui/`), and hands a handler to
//! each listener (`server`).
//! Shutdown stops the listeners and the workers at the same moment; each gets
//! `server.shutdown_timeout` to finish what it holds.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::body_budget::BodyBudget;
use crate::breaker::Breakers;
use crate::config::{ConfigError, Settings};
use crate::connections::Admission;
use crate::console::{self, Console};
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::queue::record::instance_name;
use crate::queue::worker::Workers;
use crate::queue::{self, Ingress, QueueError};
use crate::reload::{Live, Reloaded, Shared};
use crate::server::{self, BindError, ConnectionPolicy};
use crate::store::{self, StoreError};
use crate::telemetry::{Telemetry, TelemetryError};
use crate::tls::Handshake;

/// Why `serve` could not start. The prefixed variants carry their cause in their own
/// message and not as a `source` too, or `error: {e:#}` printed the cause twice
/// (`store schema: X: X`).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("store: {0}")]
    Store(StoreError),
    #[error("queue: {0}")]
    Queue(QueueError),
    #[error("store schema: {0}")]
    Schema(store::postgres::SchemaError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        StartError::Store(e)
    }
}

impl From<QueueError> for StartError {
    fn from(e: QueueError) -> Self {
        StartError::Queue(e)
    }
}

impl From<store::postgres::SchemaError> for StartError {
    fn from(e: store::postgres::SchemaError) -> Self {
        StartError::Schema(e)
    }
}

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    live: Arc<Live>,
    telemetry: Telemetry,
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

    /// Returns once both listeners (and the queue workers) have stopped, and the spans
    /// of what they finished are exported (bounded by `telemetry.export_timeout`).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.telemetry.flush().await;
    }

    /// Reads the configuration file again and applies what can change (see `reload`).
    pub async fn reload(&self) -> Result<Reloaded, ConfigError> {
        self.live.reload().await
    }

    /// A handle that can request the shutdown from elsewhere (a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Binds both listeners and starts serving; returns once they accept connections.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let listener = server::bind(settings.server.listen, "server.listen", &settings.origin).await?;
    let admin_listener =
        server::bind(settings.admin_listen, "admin.listen", &settings.origin).await?;
    let addr = listener.local_addr().expect("bound socket has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound socket has an address");

    let metrics = Arc::new(Metrics::new(
        settings.sources.iter().map(|s| s.name.as_str()),
    ));
    store::prepare(&settings).await?;
    let telemetry = Telemetry::start(
        settings.telemetry.as_ref(),
        &settings.upstream_tls,
        &metrics,
    )?;
    let (store, backend) = store::build(&settings, metrics.clone())?;
    let instance = instance_name();
    let queue = queue::build(&settings, &backend, metrics.clone(), &instance)?;
    let forward = Arc::new(
        Forwarder::new(settings.limits.upstream_timeout, &settings.upstream_tls)
            .with_breakers(Arc::new(Breakers::new(metrics.clone()))),
    );
    let limits = settings.limits;
    let builder = server::gateway_http_builder(&limits);
    let admission = Admission::new(
        server::max_connections(limits.max_connections),
        limits.max_connections_per_ip,
        settings.trusted_proxies.clone(),
        metrics.connections("server"),
    );
    let requests = tokio_util::task::TaskTracker::new();
    let server_policy =
        ConnectionPolicy::new(&limits, admission.clone()).waiting_for(requests.clone());
    // A proxy or sidecar in front of the admin listener carries everyone's requests.
    let admin_admission = Admission::new(
        server::ADMIN_MAX_CONNECTIONS,
        server::ADMIN_MAX_CONNECTIONS_PER_IP,
        settings.trusted_proxies.clone(),
        metrics.connections("admin"),
    );
    let admin_policy = ConnectionPolicy::new(&limits, admin_admission.clone());
    let tls = settings.server.tls.as_ref().map(|tls| {
        metrics.tls_certificate_expires(tls.expires_at);
        Arc::new(ArcSwap::from_pointee(Handshake::new(
            tls.config.clone(),
            tls.handshake_timeout,
        )))
    });
    let grace = settings.server.shutdown_timeout;
    let admin_listen = settings.admin_listen;
    tracing::info!(store = %store.describe(), "store");
    match &queue {
        Some(queue) if queue.in_process() => tracing::warn!(
            queue = %queue.describe(),
            "queue mode WITHOUT durability: configure [store] (Redis) so queued deliveries survive a restart"
        ),
        Some(queue) => tracing::info!(queue = %queue.describe(), instance, "queue"),
        None => {}
    }

    let (stop, stopped) = watch::channel(false);
    // Left of the drain for the settles: the store's deadline and a second (a settle
    // asked once more after a quick failure), at most a quarter of the drain.
    let settle = (settings.store.deadline() + std::time::Duration::from_secs(1)).min(grace / 4);
    tokio::spawn({
        let forward = forward.clone();
        let mut stopped = stopped.clone();
        async move {
            if stopped.wait_for(|stop| *stop).await.is_ok() {
                forward.drain_ends_at(tokio::time::Instant::now() + grace - settle);
            }
        }
    });
    let wake = Arc::new(Notify::new());
    if let Some(queue) = &queue {
        queue.wake_on(wake.clone());
    }
    let workers = queue.as_ref().and_then(|queue| {
        Workers::new(
            &settings,
            queue.clone(),
            forward.clone(),
            metrics.clone(),
            instance,
            wake.clone(),
            telemetry.clone(),
        )
    });
    let ingress = queue.clone().map(|queue| Ingress { queue, wake });
    let live = Live::new(
        settings,
        tls.clone(),
        Shared {
            store: store.clone(),
            body_budget: BodyBudget::new(&limits, &metrics),
            metrics: metrics.clone(),
            forward,
            ingress,
            workers: workers.clone(),
            telemetry: telemetry.clone(),
            admission,
            admin_admission,
            requests,
        },
    );
    let console = Arc::new(Console::new(
        metrics.clone(),
        store.clone(),
        queue.clone(),
        live.clone(),
        admin_listen,
    ));
    let admin = Arc::new(Admin::new(metrics, store, queue, live.clone()));

    let serve_gateway = server::serve_listener(
        listener,
        tls,
        builder.clone(),
        server_policy,
        stopped.clone(),
        grace,
        {
            let live = live.clone();
            move |req, peer| {
                // Each request runs on the configuration current when it arrived.
                let gateway = live.gateway();
                async move { gateway.serve(req, peer).await }
            }
        },
    );
    let mut tasks = Vec::new();
    if let Some(workers) = workers {
        tasks.push(workers.start(stopped.clone(), grace));
    }
    tasks.push(tokio::spawn(console.clone().sample(stopped.clone())));
    let serve_admin = server::serve_listener(
        admin_listener,
        None,
        builder,
        admin_policy,
        stopped,
        grace,
        move |req, _peer| {
            let admin = admin.clone();
            let console = console.clone();
            async move {
                // The console's pages log in with a form; the API takes the bearer token.
                if console::owns(req.uri().path()) {
                    console.serve(req).await
                } else {
                    admin.serve(req).await
                }
            }
        },
    );
    // `threads`: the runtime's worker threads (1 on one CPU: see `main.rs`).
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%addr, %admin_addr, threads, "listening");
    tasks.push(tokio::spawn(serve_gateway));
    tasks.push(tokio::spawn(serve_admin));
    Ok(Running {
        addr,
        admin_addr,
        stop,
        tasks,
        live,
        telemetry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_error_names_its_cause_once() {
        let e = anyhow::Error::from(StartError::from(store::postgres::SchemaError::Unreachable(
            "connection refused".to_owned(),
        )));
        let shown = format!("{e:#}");
        assert_eq!(shown.matches("connection refused").count(), 1, "{shown}");
        assert!(shown.starts_with("store schema: "), "{shown}");
    }
}
