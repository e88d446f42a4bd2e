//! The serde mirror of the TOML file: exactly the keys a user may write, nothing derived.
//!
//! Every struct denies unknown fields, and conversions that can fail on one value
//! (durations, CIDRs, `${VAR}`) happen here, so toml reports them with line and caret.
//! The one exception is `Source`: it keeps the keys every source has and hands the rest
//! to its scheme, whose own options struct refuses what it does not read
//! (`config::source`). Checks that span several values live in `config::build` and
//! `config::source`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Error as _, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::secret::Secret;
use crate::event::JsonPointer;
use crate::verify::parse_header_name;

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
    #[serde(default)]
    pub penalty_box: PenaltyBox,
    pub store: Option<Store>,
    /// `[queue]`: how queue-mode sources deliver; defaults apply when absent.
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    #[serde(default)]
    pub log: Log,
    /// `[telemetry]`: OpenTelemetry traces; absent means tracing is off.
    pub telemetry: Option<Telemetry>,
    #[serde(default)]
    pub sources: Vec<Source>,
}

/// `[telemetry]`: where spans go (OTLP over HTTP, protobuf) and how traces start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The collector's base URL; spans are POSTed to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Head sampling of new traces, 0.0 to 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `true`: continue the sender's trace; `false`: start a new one linked to it.
    #[serde(default)]
    pub trust_incoming_traceparent: bool,
    /// Sent with every export (a collector's token); values may use `${VAR}`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// How long spans wait in the export queue before a batch is sent.
    #[serde(default = "default_export_interval", with = "humantime_serde")]
    pub export_interval: Duration,
    /// One export may take this long; then its spans are dropped.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Spans waiting for export at most; more are dropped (and counted).
    #[serde(default = "default_max_queued_spans")]
    pub max_queued_spans: usize,
}

fn default_service_name() -> String {
    "hookgate".to_owned()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_export_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_queued_spans() -> usize {
    4096
}

/// `[log]`: the level when `RUST_LOG` is not set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter: `"info"`, `"warn"`, `"info,hookgate::access=warn"`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen", deserialize_with = "listen_address")]
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
    /// PEM CA certificates; when set, every client must present a certificate they issued.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_listen", deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Bearer token for every admin path; required when `listen` is not loopback.
    pub token: Option<Secret>,
    /// Admin paths served without the token (for example `["/metrics"]`).
    #[serde(default)]
    pub public_paths: Vec<String>,
    /// A console session ends after this long without a request.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            token: None,
            public_paths: Vec::new(),
            session_timeout: default_session_timeout(),
        }
    }
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(30 * 60)
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
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    #[serde(default = "default_max_headers")]
    pub max_headers: u32,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    #[serde(default = "default_http2_max_resets")]
    pub http2_max_resets: u32,
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u64,
    #[serde(default = "default_max_buffered_body_bytes_per_ip")]
    pub max_buffered_body_bytes_per_ip: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body_bytes(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            upstream_timeout: default_upstream_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            http2_max_resets: default_http2_max_resets(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            max_buffered_body_bytes_per_ip: default_max_buffered_body_bytes_per_ip(),
        }
    }
}

/// `[penalty_box]`: clients that keep failing verification are refused for a while.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PenaltyBox {
    /// More failures than this within `window` box the client; 0 turns the box off.
    #[serde(default = "default_penalty_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_penalty_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_penalty_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// Clients tracked at once (counting or boxed): the box's memory bound.
    #[serde(default = "default_penalty_max_clients")]
    pub max_clients: u32,
}

impl Default for PenaltyBox {
    fn default() -> Self {
        PenaltyBox {
            max_failures: default_penalty_max_failures(),
            window: default_penalty_window(),
            cooldown: default_penalty_cooldown(),
            max_clients: default_penalty_max_clients(),
        }
    }
}

/// `[upstream_tls]`: whom https upstreams must prove they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Development only: accept any upstream certificate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
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

/// `[store]`: present means Redis (one server or a cluster) or PostgreSQL; absent means
/// in memory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// May carry a password, hence a `Secret` (and `${REDIS_URL}` works).
    pub redis_url: Option<Secret>,
    #[serde(default)]
    pub cluster: Vec<Secret>,
    /// `postgres://user:pass@host:5432/db?sslmode=require`; excludes `redis_url` and
    /// `cluster`.
    pub postgres_url: Option<Secret>,
    /// PostgreSQL: connections this instance keeps at most (16). Options, as
    /// `key_prefix` is: a key of the other backend is refused, not silently ignored.
    pub pool_size: Option<u32>,
    /// PostgreSQL: the schema hookgate's tables live in (`hookgate`; created by the
    /// migrations).
    pub schema: Option<String>,
    /// PostgreSQL over TLS: trust exactly the CAs in this PEM file instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Redis: the prefix of every key (`hookgate:`).
    pub key_prefix: Option<String>,
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
    /// How many parts the Redis queue is split into, each under its own hash tag so a
    /// Redis Cluster spreads them over its primaries.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
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
            partitions: default_partitions(),
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

/// What a source does with a body sent under a `Content-Encoding` other than `identity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// 415 before the body is read: hookgate does not decompress, so it would verify and
    /// forward bytes that the backend then inflates (a small body can inflate a
    /// thousandfold).
    #[default]
    Refuse,
    /// Verified and forwarded as received, still encoded, for backends that decode it
    /// within their own limits. The event type and dedupe key must then be headers.
    Pass,
}

/// How a source's verified deliveries reach their upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Forwarded while the sender waits; the upstream's answer is the sender's answer.
    #[default]
    Proxy,
    /// Stored durably and answered 202 at once; workers deliver with retries.
    Queue,
}

/// The keys of `Source` that every source takes, for the message about a key that is
/// neither one of these nor its scheme's (the test below keeps the list true).
pub const COMMON_SOURCE_KEYS: &[&str] = &[
    "name",
    "path",
    "scheme",
    "delivery",
    "secrets",
    "event_type",
    "dedupe_key",
    "allow_ips",
    "content_encoding",
    "routes",
];

/// `[[sources]]`. No `deny_unknown_fields` here (serde cannot combine it with `flatten`):
/// every key not below lands in `options`, and the scheme's options struct refuses the
/// ones it does not read (`config::source`), naming the key and its line.
#[derive(Debug, Deserialize)]
pub struct Source {
    pub name: String,
    pub path: String,
    pub scheme: String,
    #[serde(default)]
    pub delivery: DeliveryMode,
    #[serde(default)]
    pub secrets: Vec<SecretEntry>,
    /// Default per scheme (`/type`, or `X-GitHub-Event` for github).
    pub event_type: Option<FieldSpec>,
    /// Default per scheme (`webhook-id`, `/id`, `X-GitHub-Delivery`, `id_header`).
    pub dedupe_key: Option<FieldSpec>,
    /// Client IPs allowed to post to this source (the sender's published egress
    /// ranges); empty allows any.
    #[serde(default)]
    pub allow_ips: Vec<IpNet>,
    #[serde(default)]
    pub content_encoding: ContentEncoding,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The scheme's own keys (`tolerance`, `signature_header`, `provider`, ...), and any
    /// key written by mistake: the scheme reads them (`verify::Scheme::options`).
    #[serde(flatten)]
    pub options: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
    /// Conditions on the verified body; all must hold for the route to apply.
    #[serde(default, rename = "match")]
    pub conditions: Vec<Condition>,
    /// One of `upstream` and `upstreams` (`config::controls` says which is missing).
    pub upstream: Option<String>,
    /// Fan-out (queue mode only): each upstream gets its own delivery.
    #[serde(default)]
    pub upstreams: Vec<UpstreamEntry>,
    /// Forward with hookgate's own Standard Webhooks signature instead of the sender's.
    pub resign: Option<Resign>,
    /// Queue mode only: at most this many deliveries to this route at once, per instance.
    pub max_concurrency: Option<u32>,
    /// Per upstream: stop sending after this many failures in a row, for a cooldown.
    pub breaker: Option<Breaker>,
    /// Queue mode only: deliveries started per second to each upstream.
    pub rate: Option<Rate>,
    /// Queue mode with `resign` only: deliver `{"event", "object"}`, the object fetched
    /// from the sender's API (`enrich`).
    pub enrich: Option<Enrich>,
}

/// `breaker = { failures = 5, cooldown = "30s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

/// `rate = { per_second = 20, burst = 20 }`; `burst` defaults to `per_second` rounded up.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: Option<u32>,
}

/// One of a route's `upstreams`: a URL, or `{ url = "...", name = "audit" }` (the name
/// is what `deliveries list` and the metrics call it; else its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamEntry {
    pub url: String,
    pub name: Option<String>,
}

impl<'de> Deserialize<'de> for UpstreamEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            name: Option<String>,
        }
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = UpstreamEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL, or { url = \"http://...\", name = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UpstreamEntry, E> {
                Ok(UpstreamEntry {
                    url: v.to_owned(),
                    name: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpstreamEntry, A::Error> {
                let table = Table::deserialize(MapAccessDeserializer::new(map))?;
                Ok(UpstreamEntry {
                    url: table.url,
                    name: table.name,
                })
            }
        }
        d.deserialize_any(Entry)
    }
}

/// `{ pointer = "/data/status", in = ["completed", "incomplete"] }`: a pointer and
/// exactly one operator (`config::source` checks that, naming the key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub pointer: String,
    pub equals: Option<toml::Value>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<toml::Value>>,
    pub exists: Option<bool>,
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resign {
    pub secret: Secret,
}

/// `enrich = { provider = "openai", api_key = "${OPENAI_API_KEY}", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrich {
    pub provider: EnrichProvider,
    pub api_key: Secret,
    /// Default per provider (`https://api.openai.com/v1`).
    pub api_base: Option<String>,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// One fetch, connection included.
    #[serde(default = "default_enrich_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Whose API an `enrich` route fetches objects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrichProvider {
    Openai,
}

/// An IP address and a port. A host name (`localhost:8443`) or an address without its
/// port (`[::1]`) was refused as "invalid socket address syntax", which said neither.
fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(
            "not an IP address and port, such as 0.0.0.0:8443, 127.0.0.1:9090 or [::]:8443 \
             (a host name is not accepted; IPv6 in brackets, the port always)",
        )
    })
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
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_max_connections_per_ip() -> u32 {
    256
}
fn default_max_headers() -> u32 {
    100
}
fn default_max_header_bytes() -> u32 {
    16 * 1024
}
fn default_http2_max_concurrent_streams() -> u32 {
    100
}
fn default_http2_max_resets() -> u32 {
    50
}
fn default_max_buffered_body_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_max_buffered_body_bytes_per_ip() -> u64 {
    4 * 1024 * 1024
}
fn default_penalty_max_failures() -> u32 {
    20
}
fn default_penalty_window() -> Duration {
    Duration::from_secs(60)
}
fn default_penalty_cooldown() -> Duration {
    Duration::from_secs(600)
}
fn default_penalty_max_clients() -> u32 {
    100_000
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
fn default_partitions() -> u32 {
    1
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
fn default_enrich_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One entry of `secrets`: a string, or `{ secret = "...", not_after = "2026-12-31T00:00:00Z" }`
/// for a secret being rotated out (ignored after `not_after`).
#[derive(Debug)]
pub struct SecretEntry {
    pub secret: Secret,
    pub not_after: Option<SystemTime>,
}

impl From<Secret> for SecretEntry {
    fn from(secret: Secret) -> Self {
        SecretEntry {
            secret,
            not_after: None,
        }
    }
}

impl<'de> Deserialize<'de> for SecretEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            secret: Secret,
            #[serde(default, deserialize_with = "rfc3339")]
            not_after: Option<SystemTime>,
        }
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = SecretEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a secret string or { secret = \"...\", not_after = \"<RFC 3339 time>\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretEntry, E> {
                Secret::deserialize(v.into_deserializer()).map(SecretEntry::from)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretEntry, A::Error> {
                let table = Table::deserialize(MapAccessDeserializer::new(map))?;
                Ok(SecretEntry {
                    secret: table.secret,
                    not_after: table.not_after,
                })
            }
        }
        d.deserialize_any(Entry)
    }
}

/// A time in RFC 3339 with any offset (`"2027-06-30T00:00:00+02:00"`), as a string or a
/// TOML datetime (`2027-06-30T00:00:00Z`): humantime's parser took only `Z`, and a TOML
/// datetime failed as "invalid type: map".
fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum When {
        Text(String),
        Toml(toml::value::Datetime),
    }
    let text = match Option::<When>::deserialize(d)? {
        None => return Ok(None),
        Some(When::Text(text)) => text,
        Some(When::Toml(datetime)) => datetime.to_string(),
    };
    let at = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is not an RFC 3339 time with its offset, such as \
                 `2027-06-30T00:00:00Z` or `2027-06-30T00:00:00+02:00`"
            ))
        })?;
    // Before 1970 there is nothing to rotate, and such a time cannot be written back
    // (humantime's formatter, which `check` and the warnings use, panicked on it: the
    // fuzzer found `not_after = "1015-01-01T00:00:00Z"`).
    if at < SystemTime::UNIX_EPOCH {
        return Err(D::Error::custom(format!("{text:?} is before 1970")));
    }
    Ok(Some(at))
}

/// `event_type` or `dedupe_key`: a string (a JSON pointer for `event_type`, a header name
/// for `dedupe_key`), `{ json = "/id" }` or `{ header = "X-GitHub-Delivery" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSpec {
    Text(String),
    Json(JsonPointer),
    Header(http::HeaderName),
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            json: Option<String>,
            header: Option<String>,
        }
        struct Spec;
        impl<'de> Visitor<'de> for Spec {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, { json = \"/pointer\" } or { header = \"Header-Name\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                let table = Table::deserialize(MapAccessDeserializer::new(map))?;
                match (table.json, table.header) {
                    (Some(pointer), None) => JsonPointer::parse(&pointer)
                        .map(FieldSpec::Json)
                        .map_err(|e| A::Error::custom(format!("json {pointer:?}: {e}"))),
                    (None, Some(name)) => parse_header_name(&name)
                        .map(FieldSpec::Header)
                        .map_err(A::Error::custom),
                    _ => Err(A::Error::custom("set exactly one of json or header")),
                }
            }
        }
        d.deserialize_any(Spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_source_keys_are_the_ones_source_reads_itself() {
        let text = r#"
name = "n"
path = "/p"
scheme = "github"
delivery = "proxy"
secrets = ["s"]
event_type = "/type"
dedupe_key = "X-Id"
allow_ips = []
content_encoding = "refuse"
routes = []
"#;
        let source: Source = toml::from_str(text).unwrap();
        assert!(source.options.is_empty(), "{:?}", source.options);
        let written: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once(" = ").map(|(key, _)| key))
            .collect();
        assert_eq!(written, COMMON_SOURCE_KEYS);
        let other: Source = toml::from_str(&format!("{text}encoding = \"hex\"")).unwrap();
        assert_eq!(other.options.keys().collect::<Vec<_>>(), ["encoding"]);
    }
}
