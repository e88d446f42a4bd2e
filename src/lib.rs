//! hookgate: a webhook gateway in front of backends that should not each re-implement
//! signature checks, replay protection, deduplication and rate limiting.
//!
//! A request travels `server` (TLS, HTTP/1.1 and HTTP/2) → `pipeline`, whose stages are:
//! `client_ip` (socket peer, or a trusted proxy's `X-Forwarded-For`) → `ratelimit` (GCRA
//! per client, before any body byte is read) → source by path → POST only → body under a
//! size cap → `verify` (the source's signature scheme, constant-time, freshness window) →
//! `event` (the event type by JSON pointer into the verified bytes) → `route` (first
//! matching pattern) → `dedupe` claim (two-phase, so a failure never marks a delivery
//! done) → `forward` (pooled client, raw bytes) → dedupe commit or release → answer.
//! A source in queue mode replaces `forward` with `queue` enqueue (answered 202); the
//! `queue::worker` tasks then forward with retries, on Redis Streams or in memory.
//!
//! `reject` alone maps outcomes to statuses, reasons and metric labels. `store` holds
//! the state shared by dedupe and rate limiting (in memory by default). `config` turns the
//! TOML file into validated settings; `metrics` and `admin` expose Prometheus metrics and
//! health on a separate listener (and the `/deliveries` API of queue mode, which
//! `deliveries` calls for the CLI). `sign`, `echo` and `tls` (dev certificates) serve the
//! command line's helpers. Nothing here logs bodies, secrets or signatures.

#![forbid(unsafe_code)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod dedupe;
pub mod deliveries;
pub mod echo;
pub mod event;
pub mod forward;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod ratelimit;
pub mod reject;
pub mod route;
pub mod server;
pub mod sign;
pub mod store;
pub mod tls;
pub mod verify;

pub use config::{ConfigError, Settings};
pub use server::{Running, StartError, start};

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    warn_about_dev_settings(&settings);
    let running = start(settings).await?;
    shutdown_signal().await;
    tracing::info!("shutdown requested: no new connections; finishing open requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn warn_about_dev_settings(settings: &Settings) {
    match &settings.server.tls {
        None => tracing::warn!(
            "no [server.tls]: serving plain HTTP; only do this behind a proxy that terminates TLS"
        ),
        Some(tls) if tls.self_signed => tracing::warn!(
            "server.tls.self_signed = true: using a certificate generated at start-up for localhost. \
             FOR DEVELOPMENT ONLY: senders will not trust it; configure cert and key for production"
        ),
        Some(_) => {}
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
