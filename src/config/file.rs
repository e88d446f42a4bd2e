//! The serde mirror of the TOML file: exactly the keys a user may write, nothing derived.
//!
//! Every struct denies unknown fields, and conversions that can fail on one value
//! (durations, CIDRs, `${VAR}`) happen here, so toml reports them with line and caret.
//! Checks that span several values live in `config::build`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub dedupe: Dedupe,
    #[serde(default)]
    pub rate_limit: RateLimit,
    pub store: Option<Store>,
    /// `[queue]`: how queue-mode sources deliver; defaults apply when absent.
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub sources: Vec<Source>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            tls: None,
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub self_signed: bool,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token for the `/deliveries` API (list, show, replay). Required when a
    /// source uses queue mode and `listen` is not a loopback address.
    pub deliveries_token: Option<Secret>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            deliveries_token: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub upstream_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body_bytes(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            upstream_timeout: default_upstream_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dedupe {
    #[serde(default = "default_dedupe_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a claim blocks other copies while its request runs; defaults to
    /// `limits.upstream_timeout` plus the margin in `config::build`.
    #[serde(default, with = "humantime_serde")]
    pub in_flight_ttl: Option<Duration>,
}

impl Default for Dedupe {
    fn default() -> Self {
        Dedupe {
            ttl: default_dedupe_ttl(),
            in_flight_ttl: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[store]`: present means Redis (one server or a cluster); absent means in memory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// May carry a password, hence a `Secret` (and `${REDIS_URL}` works).
    pub redis_url: Option<Secret>,
    #[serde(default)]
    pub cluster: Vec<Secret>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_store_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// What a request gets when the store fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 503 with `Retry-After`: the sender retries later; nothing lost, nothing doubled.
    #[default]
    Reject,
    /// Forward without dedupe or rate limit, and count it.
    Allow,
}

impl std::fmt::Display for OnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnError::Reject => "reject",
            OnError::Allow => "allow",
        })
    }
}

/// `[queue]`: settings shared by every source with `delivery = "queue"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    #[serde(default = "default_workers")]
    pub workers: u32,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// How long a delivery taken by an instance that stopped renewing it (it died)
    /// waits before another instance takes it over.
    #[serde(default = "default_visibility_timeout", with = "humantime_serde")]
    pub visibility_timeout: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            workers: default_workers(),
            max_attempts: default_max_attempts(),
            backoff: Backoff::default(),
            max_age: default_max_age(),
            retention: default_retention(),
            retry_on: default_retry_on(),
            visibility_timeout: default_visibility_timeout(),
        }
    }
}

/// `queue.backoff`: exponential, `initial` doubling up to `max`, optionally jittered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
    #[serde(default = "default_true")]
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
            jitter: true,
        }
    }
}

/// How a source's verified deliveries reach their upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Forwarded while the sender waits; the upstream's answer is the sender's answer.
    #[default]
    Proxy,
    /// Stored durably and answered 202 at once; workers deliver with retries.
    Queue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    pub path: String,
    pub scheme: String,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    #[serde(default = "default_event_type")]
    pub event_type: String,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
    pub upstream: String,
    /// Queue mode only: at most this many deliveries to this route at once, per instance.
    pub max_concurrency: Option<u32>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_dedupe_ttl() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_requests_per_second() -> f64 {
    50.0
}
fn default_burst() -> u32 {
    100
}
fn default_key_prefix() -> String {
    "hookgate:".to_owned()
}
fn default_store_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_store_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_workers() -> u32 {
    16
}
fn default_max_attempts() -> u32 {
    12
}
fn default_max_age() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_retry_on() -> Vec<String> {
    ["5xx", "408", "429", "connect", "timeout"]
        .map(str::to_owned)
        .to_vec()
}
fn default_visibility_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(3600)
}
fn default_true() -> bool {
    true
}
fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_event_type() -> String {
    "/type".to_owned()
}
