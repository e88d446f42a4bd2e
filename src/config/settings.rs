//! The validated settings: what the rest of hookgate reads once a config file has been
//! built (`config::build`). Data, not behaviour: parsed addresses, compiled routes,
//! verifiers and loaded certificates, each field under the name of the key it comes from.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{ContentEncoding, DeliveryMode, EnrichProvider, OnError};
use super::secret::Secret;
use crate::event::{Field, KeyBinding};
use crate::queue::policy::{BackoffPolicy, RetryOn, RetryPolicy};
use crate::route::Routes;
use crate::tls::UpstreamTrust;
use crate::verify::Verifier;

#[derive(Debug)]
pub struct Settings {
    /// Where these settings came from, for messages: a path or `<embedded default>`.
    pub origin: String,
    pub server: ServerSettings,
    pub admin_listen: SocketAddr,
    pub admin_auth: AdminAuth,
    pub limits: Limits,
    pub dedupe: DedupeSettings,
    pub rate_limit: RateLimitSettings,
    pub trusted_proxies: Vec<IpNet>,
    pub penalty_box: PenaltyBoxSettings,
    pub upstream_tls: UpstreamTrust,
    pub store: StoreSettings,
    /// `log.level`: the tracing filter used when `RUST_LOG` is not set (read at start).
    pub log_level: String,
    /// Present when at least one source has `delivery = "queue"`.
    pub queue: Option<QueueSettings>,
    /// `[telemetry]`; `None`: tracing is off.
    pub telemetry: Option<TelemetrySettings>,
    pub sources: Vec<Source>,
    /// Things that work but are probably wrong (an expiring secret, a typo in an event
    /// pattern), each starting with the file: `check` prints them, `serve` logs them.
    pub warnings: Vec<String>,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// `{otlp_endpoint}/v1/traces`: where the spans are POSTed.
    pub traces_url: http::Uri,
    pub service_name: String,
    pub sample_ratio: f64,
    pub trust_incoming_traceparent: bool,
    /// Header names as written (lower case); values are secrets.
    pub headers: Vec<(http::HeaderName, Secret)>,
    pub export_interval: Duration,
    pub export_timeout: Duration,
    pub max_queued_spans: usize,
}

/// `[queue]`, validated: how queue-mode deliveries are attempted, retried and kept.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Deliveries attempted at once by this instance.
    pub workers: usize,
    pub max_attempts: u32,
    pub backoff: BackoffPolicy,
    /// A failed attempt is not retried once the next one would start later than this
    /// after the delivery was (re)queued.
    pub max_age: Duration,
    /// How long processed and final-failed records stay inspectable.
    pub retention: Duration,
    pub retry_on: RetryOn,
    /// A delivery held by an instance that stopped renewing it is taken over after this.
    pub visibility_timeout: Duration,
    /// Parts of the Redis queue, each in one Redis Cluster slot of its own (1 to
    /// `MAX_QUEUE_PARTITIONS`); the in-memory queue has one whatever this says.
    pub partitions: usize,
}

/// Partitions are addressed by a number in each delivery id and each needs its own
/// scripts run per admin listing: a thousand is far beyond any cluster's primaries.
pub const MAX_QUEUE_PARTITIONS: u32 = 1024;

impl QueueSettings {
    /// What `queue::decide` reads of these settings.
    pub fn retry_policy(&self) -> RetryPolicy<'_> {
        RetryPolicy {
            retry_on: &self.retry_on,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_age: self.max_age,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub on_error: OnError,
}

impl StoreSettings {
    /// The longest one store operation may take: `connect_timeout + timeout` (nothing
    /// in memory).
    pub fn deadline(&self) -> Duration {
        match &self.backend {
            StoreBackend::Redis(redis) => redis.connect_timeout + redis.timeout,
            StoreBackend::Postgres(pg) => pg.connect_timeout + pg.timeout,
            StoreBackend::Memory => Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
pub enum StoreBackend {
    Memory,
    Redis(Box<RedisSettings>),
    Postgres(Box<PostgresSettings>),
}

/// `[store] postgres_url` and what goes with it. `Debug` never shows the password
/// (`tokio_postgres::Config` redacts it).
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub config: tokio_postgres::Config,
    /// Checked to be a plain identifier, so it can be written into SQL.
    pub schema: String,
    pub pool_size: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Whom a TLS connection trusts: the system's roots or a CA file.
    pub trust: crate::tls::UpstreamTrust,
}

impl PostgresSettings {
    /// Host(s), port and database, for logs and `hookgate check`: never the password.
    pub fn target(&self) -> String {
        use tokio_postgres::config::Host;
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres {}:{port} db {:?} schema {:?}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or(""),
            self.schema
        )
    }
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub key_prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// `store.ca_file` as PEM: `rediss://` servers are verified against exactly these
    /// CAs; `None`: against the bundled Mozilla roots.
    pub ca: Option<Vec<u8>>,
}

/// Where Redis is. `Debug` and `Display` show addresses only, never a password.
#[derive(Clone)]
pub enum RedisTarget {
    Single(Box<redis::ConnectionInfo>),
    Cluster(Vec<redis::ConnectionInfo>),
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Single(info) => {
                write!(f, "redis {} db {}", info.addr(), info.redis_settings().db())?;
            }
            RedisTarget::Cluster(nodes) => {
                let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                write!(f, "redis cluster {}", addrs.join(", "))?;
            }
        }
        if self.is_tls() {
            f.write_str(" over TLS")?;
        }
        Ok(())
    }
}

impl RedisTarget {
    /// Whether every connection is `rediss://`.
    pub fn is_tls(&self) -> bool {
        let tls = |info: &redis::ConnectionInfo| {
            matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
        };
        match self {
            RedisTarget::Single(info) => tls(info),
            RedisTarget::Cluster(nodes) => nodes.iter().all(tls),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsSettings>,
    pub shutdown_timeout: Duration,
}

#[derive(Clone)]
pub struct TlsSettings {
    /// Offers h2 and http/1.1; TLS 1.2 and 1.3 only; verifies client certificates
    /// when `server.tls.client_ca` is set.
    pub config: Arc<rustls::ServerConfig>,
    /// When the certificate expires (`hookgate_tls_certificate_expiry_timestamp_seconds`).
    pub expires_at: std::time::SystemTime,
    pub handshake_timeout: Duration,
    /// True when the certificate was generated at start-up (dev only).
    pub self_signed: bool,
    /// Where the certificate came from, for `check` and the start-up log.
    pub description: String,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("description", &self.description)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub upstream_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// 0: no per-IP limit.
    pub max_connections_per_ip: u32,
    pub max_headers: usize,
    /// Names plus values of all header fields of one request.
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    /// Requests a client may cancel within `HTTP2_RESET_WINDOW`.
    pub http2_max_resets: usize,
    /// Bytes of bodies held while they are read and verified, in all (`body_budget`).
    pub max_buffered_body_bytes: usize,
    /// The same per client IP (IPv6: per /64); at least `max_body_bytes`, at most
    /// `max_buffered_body_bytes` and `u32::MAX`.
    pub max_buffered_body_bytes_per_ip: usize,
}

/// Who may read the admin listener.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// `Authorization: Bearer <token>` required on every path but `public_paths`; the
    /// console's login asks for it too.
    pub token: Option<Secret>,
    pub public_paths: Vec<String>,
    /// A console session ends after this long without a request.
    pub session_timeout: Duration,
}

impl Default for AdminAuth {
    fn default() -> Self {
        AdminAuth {
            token: None,
            public_paths: Vec::new(),
            session_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Paths `admin.public_paths` may open. `/deliveries` (which can replay deliveries) and
/// `/reload` are deliberately not among them: off loopback they always need the token.
pub const ADMIN_PATHS: &[&str] = &["/metrics", "/healthz", "/readyz"];

impl AdminAuth {
    /// Whether a request for `path` carrying `authorization` may be answered.
    pub fn allows(&self, path: &str, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if self.public_paths.iter().any(|p| p == path) {
            return true;
        }
        // The scheme is case-insensitive (RFC 9110 11.1), and spaces may follow it.
        authorization
            .and_then(|value| {
                let (scheme, rest) = value.split_at_checked(6)?;
                (scheme.eq_ignore_ascii_case(b"Bearer") && rest.first() == Some(&b' '))
                    .then(|| rest.trim_ascii_start())
            })
            .is_some_and(|presented| token.matches(presented))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PenaltyBoxSettings {
    /// More verification failures than this within `window` box the client; 0 = off.
    pub max_failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
    /// Clients tracked at once, counting or boxed.
    pub max_clients: usize,
}

/// Window over which a connection's HTTP/2 stream resets count against
/// `limits.http2_max_resets` (rapid reset).
pub const HTTP2_RESET_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct DedupeSettings {
    pub ttl: Duration,
    pub in_flight_ttl: Duration,
    /// `dedupe.in_flight_ttl` was not set: it is `in_flight_ttl_for` the upstream
    /// timeout, and follows the running one across a reload (`limits.upstream_timeout`
    /// needs a restart, and a claim must outlive the forward it protects).
    pub in_flight_ttl_derived: bool,
}

/// Time a claim may stay in flight beyond the upstream timeout: covers the forward's
/// own bookkeeping so a slow but successful request still commits its own claim.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(5);

/// The default `dedupe.in_flight_ttl` for an upstream timeout.
pub fn in_flight_ttl_for(upstream_timeout: Duration) -> Duration {
    upstream_timeout + IN_FLIGHT_MARGIN
}

/// The warning for an explicit `dedupe.in_flight_ttl` shorter than the upstream timeout
/// in force: a forward still waiting on a slow upstream loses its claim.
pub fn in_flight_ttl_warning(
    in_flight_ttl: Duration,
    upstream_timeout: Duration,
) -> Option<String> {
    (in_flight_ttl < upstream_timeout).then(|| {
        format!(
            "dedupe.in_flight_ttl ({}) is shorter than limits.upstream_timeout ({}): a \
             forward still waiting on a slow upstream loses its claim, and a copy of the \
             delivery arriving then is forwarded again; leave it out to get the upstream \
             timeout + 5s",
            super::duration::written(in_flight_ttl),
            super::duration::written(upstream_timeout)
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// One sender: where it posts, how it signs, where its events go.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub path: String,
    pub scheme: &'static str,
    pub verifier: Arc<dyn Verifier>,
    pub event_type: Field,
    /// Where the delivery id used for deduplication comes from.
    pub dedupe_key: Field,
    /// What the claim key binds the dedupe key to (see `KeyBinding`).
    pub binding: KeyBinding,
    /// The headers the scheme, the event type and the dedupe key read: a request with
    /// two copies of one, or a `Connection` field listing one, is refused.
    pub reads: Vec<http::HeaderName>,
    pub content_encoding: ContentEncoding,
    /// How many secrets the verifier knows (`hookgate_verified_total{secret}`).
    pub secrets: usize,
    pub routes: Routes,
    /// Client IPs allowed to post here; empty allows any.
    pub allow_ips: Vec<IpNet>,
    pub delivery: DeliveryMode,
    /// `enrich` of the routes that have it, by route name (queue mode only).
    pub enrich: HashMap<String, Arc<EnrichSettings>>,
}

/// A route's `enrich`, validated: whose API the object behind a thin event is fetched
/// from, and with which credentials. `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct EnrichSettings {
    pub provider: EnrichProvider,
    pub api_key: Secret,
    /// An http(s) URL without a trailing `/`: paths are appended to it.
    pub api_base: String,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// One fetch, connection included.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_required_except_on_public_paths() {
        let auth = AdminAuth {
            token: Some(Secret::from("t0ken".to_owned())),
            public_paths: vec!["/metrics".to_owned()],
            ..AdminAuth::default()
        };
        assert!(auth.allows("/metrics", None));
        assert!(!auth.allows("/readyz", None));
        assert!(!auth.allows("/readyz", Some(b"Bearer t0ke")));
        assert!(!auth.allows("/readyz", Some(b"Basic t0ken")));
        assert!(auth.allows("/readyz", Some(b"Bearer t0ken")));
        assert!(AdminAuth::default().allows("/readyz", None));
    }
}
