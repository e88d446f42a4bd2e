//! hookgate: a webhook gateway in front of backends that should not each re-implement
//! signature checks, replay protection, deduplication and rate limiting.
//!
//! A connection is admitted by `connections` (in all and per IP, inside the open-files
//! limit), then `server` bounds its TLS handshake, head and idle time and its HTTP/2
//! streams. A request travels `server` (TLS, HTTP/1.1 and HTTP/2) → `pipeline`, whose
//! stages are: `client_ip` (socket peer, or a trusted proxy's `X-Forwarded-For`) → header
//! limits → `penalty_box` (clients that keep failing verification) → the source's
//! `allow_ips` → `ratelimit` (GCRA per client, before any body byte is read) → source by path → POST only → body under a
//! size cap and the `body_budget` (bytes held per client and in all) → `verify` (the source's signature scheme from the registry in
//! `verify::SCHEMES`: constant-time, freshness window, rotating secrets) → `event` (the
//! dedupe key and the event type, by JSON pointer into the verified bytes or by header)
//! → `route` (first matching pattern) → `dedupe` claim (two-phase, so a failure never
//! marks a delivery done) → `forward` (pooled client, raw bytes; re-signed for the
//! backend if the route says so) → dedupe commit or release → answer.
//! A source in queue mode replaces `forward` with `queue` enqueue (answered 202); the
//! `queue::worker` tasks then forward with retries, on Redis Streams or in memory.
//!
//! `reject` alone maps outcomes to statuses, reasons and metric labels. `store` holds
//! the state shared by dedupe and rate limiting (in memory by default). `config` turns the
//! TOML file into validated settings; `metrics` and `admin` expose Prometheus metrics and
//! health on a separate listener (and the `/deliveries` API of queue mode, which
//! `deliveries` calls for the CLI). `sign`, `diagnose` (`hookgate verify`), `provider`
//! (senders' published event types, for `check`), `echo`, `tls` (dev certificates) and
//! `cli_client` (the helpers' HTTP client: whom it trusts, what a failure means) serve the
//! command line's helpers. `log_gate` keeps events a client can cause at will (failed TLS
//! handshakes) from flooding the log. Nothing here logs bodies, secrets or signatures.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bench;
pub mod body_budget;
pub mod cli;
pub mod cli_client;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod dedupe;
pub mod deliveries;
pub mod diagnose;
pub mod echo;
pub mod event;
pub mod forward;
pub mod log_gate;
pub mod metrics;
pub mod penalty_box;
pub mod pipeline;
pub mod provider;
pub mod queue;
pub mod random;
pub mod ratelimit;
pub mod reject;
pub mod reload;
pub mod route;
pub mod server;
pub mod sign;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod verify;

pub use app::{Running, StartError, start};
pub use config::{ConfigError, Settings};

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    warn_about_dev_settings(&settings);
    let running = start(settings).await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut hangups = reload_signals();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // The outcome is logged by the reload itself.
            Some(()) = hangups.recv() => { let _ = running.reload().await; }
        }
    }
    tracing::info!("shutdown requested: no new connections; finishing open requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn warn_about_dev_settings(settings: &Settings) {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
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
    if matches!(
        settings.upstream_tls,
        config::UpstreamTrust::InsecureSkipVerify
    ) {
        tracing::warn!(
            "upstream_tls.insecure_skip_verify = true: https upstreams are NOT VERIFIED; anyone \
             on the path to them can read and change forwarded events. FOR DEVELOPMENT ONLY"
        );
    }
}

/// SIGHUP: read the configuration again.
fn reload_signals() -> tokio::signal::unix::Signal {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).expect("SIGHUP handler can be installed")
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
