//! Validated settings: what the rest of hookgate sees once a config file has been read.
//!
//! `file.rs` mirrors the TOML; `build` turns it into these types (compiled routes,
//! decoded secrets, loaded certificates) and runs the checks that span several keys.
//! Every error starts with the file and names the key path, so a user never has to guess
//! which of three sources is wrong.

pub mod duration;
mod file;
pub mod secret;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::event::{Field, KeyBinding};
use crate::route::{Route, Routes};
use crate::tls;
use crate::verify::{self, Verifier};

pub use crate::tls::UpstreamTrust;
pub use file::{
    ContentEncoding, Delivery, FieldSpec, FileConfig, OnError, Route as RouteFile, SecretEntry,
    Source as SourceFile, parse_header_name,
};
pub use secret::Secret;

use crate::queue::policy::{BackoffPolicy, RetryOn, RetryPolicy};

/// The embedded default configuration: the same text as `config/hookgate.toml`, so the
/// binary runs anywhere with no file at all (self-signed TLS, in-memory store, demo secret).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/hookgate.toml");

/// The configuration file path used when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/hookgate.toml";

/// Time a claim may stay in flight beyond the upstream timeout: covers the forward's
/// own bookkeeping so a slow but successful request still commits its own claim.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(5);

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
    pub sources: Vec<Source>,
    /// Things that work but are probably wrong (an expiring secret, a typo in an event
    /// pattern), each starting with the file: `check` prints them, `serve` logs them.
    pub warnings: Vec<String>,
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
}

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

#[derive(Debug)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub on_error: OnError,
}

#[derive(Debug)]
pub enum StoreBackend {
    Memory,
    Redis(Box<RedisSettings>),
}

#[derive(Debug)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub key_prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// Where Redis is. `Debug` and `Display` show addresses only, never a password.
pub enum RedisTarget {
    Single(Box<redis::ConnectionInfo>),
    Cluster(Vec<redis::ConnectionInfo>),
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Single(info) => {
                write!(f, "redis {} db {}", info.addr(), info.redis_settings().db())
            }
            RedisTarget::Cluster(nodes) => {
                let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                write!(f, "redis cluster {}", addrs.join(", "))
            }
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

pub struct TlsSettings {
    /// Offers h2 and http/1.1; TLS 1.2 and 1.3 only; verifies client certificates
    /// when `server.tls.client_ca` is set.
    pub config: Arc<rustls::ServerConfig>,
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
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    /// `Authorization: Bearer <token>` required on every path but `public_paths`.
    pub token: Option<Secret>,
    pub public_paths: Vec<String>,
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
        authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .is_some_and(|presented| token.matches(presented))
    }
}

#[derive(Debug, Clone, Copy)]
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
    pub delivery: Delivery,
}

/// A config that cannot be used. The message starts with the file and names the key.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

fn log_level(level: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| level.to_owned())
        .map_err(|e| {
            format!("log.level {level:?} is not a log filter ({e}); try \"info\" or \"warn\"")
        })
}

/// The `origin` of settings parsed from `EMBEDDED_DEFAULT`.
pub const EMBEDDED_ORIGIN: &str = "<embedded default config>";

impl ConfigError {
    /// The message without toml's excerpt of the file: for logs and the admin API,
    /// where a quoted line could hold a secret someone wrote into the file.
    pub fn summary(&self) -> String {
        // toml's excerpt lines are `  |`, `3 | <the line>` and `  |   ^^^`.
        let is_excerpt = |line: &str| match line.split_once('|') {
            Some((gutter, _)) => gutter.trim().chars().all(|c| c.is_ascii_digit()),
            None => false,
        };
        let lines: Vec<&str> = self
            .message
            .lines()
            .filter(|line| !line.trim().is_empty() && !is_excerpt(line))
            .collect();
        format!("{}: {}", self.origin, lines.join("; "))
    }
}

/// Reads the settings again from where `origin` says they came from (hot reload).
pub fn reload(origin: &str) -> Result<Settings, ConfigError> {
    if origin == EMBEDDED_ORIGIN {
        parse(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN)
    } else {
        load(Path::new(origin))
    }
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&text, &origin)
}

/// Loads `path` when given; otherwise `config/hookgate.toml` if it exists, else the
/// embedded default. An explicit path that does not exist is an error, never a fallback.
pub fn load_or_default(path: Option<&Path>) -> Result<Settings, ConfigError> {
    match path {
        Some(path) => load(path),
        None if Path::new(DEFAULT_PATH).exists() => load(Path::new(DEFAULT_PATH)),
        None => parse(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN),
    }
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let mut message = e.to_string().trim_end().to_owned();
        let unset = secret::unset_variables(|| toml::from_str::<FileConfig>(text));
        if unset.len() > 1 {
            message.push_str(&format!(
                "\n{} environment variables are not set: {}",
                unset.len(),
                unset.join(", ")
            ));
        }
        ConfigError {
            origin: origin.to_owned(),
            message,
        }
    })?;
    build(file, origin).map_err(|message| ConfigError {
        origin: origin.to_owned(),
        message,
    })
}

fn build(file: FileConfig, origin: &str) -> Result<Settings, String> {
    let limits = limits(&file.limits)?;
    let dedupe = DedupeSettings {
        ttl: positive("dedupe.ttl", file.dedupe.ttl)?,
        in_flight_ttl: match file.dedupe.in_flight_ttl {
            Some(ttl) => positive("dedupe.in_flight_ttl", ttl)?,
            None => limits.upstream_timeout + IN_FLIGHT_MARGIN,
        },
    };
    let rate_limit = rate_limit(&file.rate_limit)?;
    if file.sources.is_empty() {
        return Err(
            "no [[sources]] are configured; every request would be answered 404".to_owned(),
        );
    }
    let (sources, source_warnings) = sources(&file.sources)?;
    let store = store_settings(file.store.as_ref())?;
    let queue = queue_settings(&file.queue)?;
    let queued = sources.iter().any(|s| s.delivery == Delivery::Queue);
    Ok(Settings {
        origin: origin.to_owned(),
        server: ServerSettings {
            listen: file.server.listen,
            tls: file.server.tls.as_ref().map(tls_settings).transpose()?,
            shutdown_timeout: file.server.shutdown_timeout,
        },
        admin_listen: file.admin.listen,
        admin_auth: admin_auth(&file.admin)?,
        limits,
        dedupe,
        rate_limit,
        trusted_proxies: file.rate_limit.trusted_proxies,
        penalty_box: penalty_box(&file.penalty_box)?,
        upstream_tls: upstream_trust(&file.upstream_tls)?,
        store,
        log_level: log_level(&file.log.level)?,
        queue: queued.then_some(queue),
        sources,
        warnings: source_warnings
            .into_iter()
            .map(|w| format!("{origin}: {w}"))
            .collect(),
    })
}

fn queue_settings(file: &file::Queue) -> Result<QueueSettings, String> {
    if file.workers == 0 {
        return Err("queue.workers must be at least 1".to_owned());
    }
    if file.max_attempts == 0 {
        return Err("queue.max_attempts must be at least 1".to_owned());
    }
    let initial = positive("queue.backoff.initial", file.backoff.initial)?;
    if file.backoff.max < initial {
        return Err(format!(
            "queue.backoff.max ({}) must not be shorter than queue.backoff.initial ({})",
            humantime::format_duration(file.backoff.max),
            humantime::format_duration(initial)
        ));
    }
    let retry_on =
        RetryOn::parse(&file.retry_on).map_err(|(i, e)| format!("queue.retry_on[{i}] {e}"))?;
    Ok(QueueSettings {
        workers: file.workers as usize,
        max_attempts: file.max_attempts,
        backoff: BackoffPolicy {
            initial,
            max: file.backoff.max,
            jitter: file.backoff.jitter,
        },
        max_age: positive("queue.max_age", file.max_age)?,
        retention: positive("queue.retention", file.retention)?,
        retry_on,
        visibility_timeout: positive("queue.visibility_timeout", file.visibility_timeout)?,
    })
}

fn positive(key: &str, value: Duration) -> Result<Duration, String> {
    if value.is_zero() {
        return Err(format!("{key} must be greater than zero"));
    }
    Ok(value)
}

fn limits(file: &file::Limits) -> Result<Limits, String> {
    let max_body_bytes = usize::try_from(file.max_body_bytes)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            format!(
                "limits.max_body_bytes = {} must be between 1 and {}",
                file.max_body_bytes,
                usize::MAX
            )
        })?;
    let (max_buffered_body_bytes, max_buffered_body_bytes_per_ip) =
        body_budget(file, max_body_bytes)?;
    Ok(Limits {
        max_body_bytes,
        header_read_timeout: positive("limits.header_read_timeout", file.header_read_timeout)?,
        body_read_timeout: positive("limits.body_read_timeout", file.body_read_timeout)?,
        upstream_timeout: positive("limits.upstream_timeout", file.upstream_timeout)?,
        idle_timeout: positive("limits.idle_timeout", file.idle_timeout)?,
        max_connections: at_least("limits.max_connections", file.max_connections, 1)?,
        max_connections_per_ip: file.max_connections_per_ip,
        max_headers: at_least("limits.max_headers", file.max_headers, 8)? as usize,
        max_header_bytes: at_least("limits.max_header_bytes", file.max_header_bytes, 1024)?
            as usize,
        http2_max_concurrent_streams: at_least(
            "limits.http2_max_concurrent_streams",
            file.http2_max_concurrent_streams,
            1,
        )?,
        http2_max_resets: at_least("limits.http2_max_resets", file.http2_max_resets, 1)? as usize,
        max_buffered_body_bytes,
        max_buffered_body_bytes_per_ip,
    })
}

/// `(max_buffered_body_bytes, max_buffered_body_bytes_per_ip)`: a body of the largest
/// size must fit a client's share, and the share the process's.
fn body_budget(file: &file::Limits, max_body_bytes: usize) -> Result<(usize, usize), String> {
    let per_ip = file.max_buffered_body_bytes_per_ip;
    let all = file.max_buffered_body_bytes;
    if per_ip < max_body_bytes as u64 {
        return Err(format!(
            "limits.max_buffered_body_bytes_per_ip = {per_ip} must be at least \
             limits.max_body_bytes ({max_body_bytes}): a body of the largest size could never be read"
        ));
    }
    if per_ip > u64::from(u32::MAX) {
        return Err(format!(
            "limits.max_buffered_body_bytes_per_ip = {per_ip} must be at most {}",
            u32::MAX
        ));
    }
    if all < per_ip {
        return Err(format!(
            "limits.max_buffered_body_bytes = {all} must be at least \
             limits.max_buffered_body_bytes_per_ip ({per_ip})"
        ));
    }
    let all = usize::try_from(all)
        .ok()
        .filter(|&n| n <= tokio::sync::Semaphore::MAX_PERMITS)
        .ok_or_else(|| {
            format!(
                "limits.max_buffered_body_bytes = {all} must be at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            )
        })?;
    Ok((all, per_ip as usize))
}

fn at_least(key: &str, value: u32, min: u32) -> Result<u32, String> {
    if value < min {
        return Err(format!("{key} = {value} must be at least {min}"));
    }
    Ok(value)
}

fn admin_auth(file: &file::Admin) -> Result<AdminAuth, String> {
    if let Some(token) = &file.token
        && token.expose().is_empty()
    {
        return Err("admin.token is empty".to_owned());
    }
    if file.token.is_none() && !file.listen.ip().is_loopback() {
        return Err(format!(
            "admin.listen {} is not a loopback address: set admin.token \
             (for example admin.token = \"${{HOOKGATE_ADMIN_TOKEN}}\") so that its paths need \
             `Authorization: Bearer <token>`; admin.public_paths = [\"/metrics\"] leaves \
             /metrics open",
            file.listen
        ));
    }
    for (i, path) in file.public_paths.iter().enumerate() {
        if !ADMIN_PATHS.contains(&path.as_str()) {
            return Err(format!(
                "admin.public_paths[{i}] {path:?} is not an admin path ({})",
                ADMIN_PATHS.join(", ")
            ));
        }
    }
    Ok(AdminAuth {
        token: file.token.clone(),
        public_paths: file.public_paths.clone(),
    })
}

fn penalty_box(file: &file::PenaltyBox) -> Result<PenaltyBoxSettings, String> {
    Ok(PenaltyBoxSettings {
        max_failures: file.max_failures,
        window: positive("penalty_box.window", file.window)?,
        cooldown: positive("penalty_box.cooldown", file.cooldown)?,
        max_clients: at_least("penalty_box.max_clients", file.max_clients, 1)? as usize,
    })
}

fn upstream_trust(file: &file::UpstreamTls) -> Result<UpstreamTrust, String> {
    match (&file.ca_file, file.insecure_skip_verify) {
        (Some(_), true) => Err(
            "upstream_tls: ca_file and insecure_skip_verify = true exclude each other".to_owned(),
        ),
        (None, true) => Ok(UpstreamTrust::InsecureSkipVerify),
        (None, false) => Ok(UpstreamTrust::System),
        (Some(path), false) => Ok(UpstreamTrust::CaFile {
            certs: tls::load_ca_file(path).map_err(|e| format!("upstream_tls.ca_file {e}"))?,
            path: path.clone(),
        }),
    }
}

fn rate_limit(file: &file::RateLimit) -> Result<RateLimitSettings, String> {
    let rps = file.requests_per_second;
    if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) {
        return Err(format!(
            "rate_limit.requests_per_second = {rps} must be a number above 0"
        ));
    }
    if file.burst == 0 {
        return Err("rate_limit.burst must be at least 1".to_owned());
    }
    Ok(RateLimitSettings {
        requests_per_second: rps,
        burst: file.burst,
    })
}

fn store_settings(file: Option<&file::Store>) -> Result<StoreSettings, String> {
    let Some(file) = file else {
        return Ok(StoreSettings {
            backend: StoreBackend::Memory,
            on_error: OnError::Reject,
        });
    };
    let target = match (&file.redis_url, file.cluster.as_slice()) {
        (Some(url), []) => {
            RedisTarget::Single(Box::new(redis_url("store.redis_url", url.expose())?))
        }
        (None, []) => {
            return Err(
                "[store] needs redis_url (one server) or cluster (a list of node URLs); \
                 remove [store] for the in-memory store"
                    .to_owned(),
            );
        }
        (None, nodes) => RedisTarget::Cluster(
            nodes
                .iter()
                .enumerate()
                .map(|(i, url)| redis_url(&format!("store.cluster[{i}]"), url.expose()))
                .collect::<Result<_, _>>()?,
        ),
        (Some(_), _) => {
            return Err("store: set redis_url or cluster, not both".to_owned());
        }
    };
    Ok(StoreSettings {
        backend: StoreBackend::Redis(Box::new(RedisSettings {
            target,
            key_prefix: file.key_prefix.clone(),
            timeout: positive("store.timeout", file.timeout)?,
            connect_timeout: positive("store.connect_timeout", file.connect_timeout)?,
        })),
        on_error: file.on_error,
    })
}

/// Parses a Redis URL without ever echoing it: it may hold a password.
fn redis_url(key: &str, url: &str) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(|_| {
        format!("{key} is not a valid Redis URL (redis://, rediss:// or redis+unix://)")
    })?;
    redis::Client::open(info.clone()).map_err(|e| format!("{key}: {e}"))?;
    Ok(info)
}

fn tls_settings(file: &file::Tls) -> Result<TlsSettings, String> {
    let client_ca = file
        .client_ca
        .as_deref()
        .map(|path| tls::load_ca_file(path).map_err(|e| format!("server.tls.client_ca {e}")))
        .transpose()?;
    let (config, description) = match (file.self_signed, &file.cert, &file.key) {
        (true, None, None) => (
            tls::self_signed_config(client_ca)
                .map_err(|e| format!("server.tls.self_signed: {e}"))?,
            "self-signed for localhost, generated at start-up".to_owned(),
        ),
        (true, _, _) => {
            return Err(
                "server.tls: self_signed = true cannot be combined with cert/key; use one or the other"
                    .to_owned(),
            );
        }
        (false, Some(cert), Some(key)) => (
            tls::config_from_files(cert, key, client_ca)?,
            format!("{} (key {})", cert.display(), key.display()),
        ),
        (false, None, _) => {
            return Err(
                "server.tls.cert is missing (or set server.tls.self_signed = true for development)"
                    .to_owned(),
            );
        }
        (false, Some(_), None) => return Err("server.tls.key is missing".to_owned()),
    };
    let description = match &file.client_ca {
        Some(ca) => format!(
            "{description}; client certificates required, issued by {}",
            ca.display()
        ),
        None => description,
    };
    Ok(TlsSettings {
        config,
        handshake_timeout: positive("server.tls.handshake_timeout", file.handshake_timeout)?,
        self_signed: file.self_signed,
        description,
    })
}

/// The sources, and warnings about them (key paths, without the file).
fn sources(files: &[file::Source]) -> Result<(Vec<Source>, Vec<String>), String> {
    let now = std::time::SystemTime::now();
    let mut warnings = Vec::new();
    let mut names = HashSet::new();
    let mut paths: Vec<(&str, usize)> = Vec::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let key = format!("sources[{i}]");
        check_name(&format!("{key}.name"), &file.name)?;
        if !names.insert(file.name.as_str()) {
            return Err(format!("{key}.name {:?} is already used", file.name));
        }
        if !file.path.starts_with('/') {
            return Err(format!("{key}.path {:?} must start with '/'", file.path));
        }
        if let Some((_, j)) = paths.iter().find(|(p, _)| *p == file.path) {
            return Err(format!(
                "{key}.path {:?} is already used by sources[{j}]",
                file.path
            ));
        }
        paths.push((&file.path, i));
        let built = verify::build(file, now).map_err(|e| format!("{key}.{e}"))?;
        warnings.extend(built.warnings.iter().map(|w| format!("{key}.{w}")));
        if let Some(provider) = &file.provider {
            let events: Vec<&[String]> = file.routes.iter().map(|r| r.events.as_slice()).collect();
            let typos = crate::provider::typos(provider, &events)
                .map_err(|e| format!("{key}.provider {e}"))?;
            warnings.extend(typos.iter().map(|w| format!("{key}.{w}")));
        }
        if file.content_encoding == ContentEncoding::Pass
            && let Some(Field::Json(pointer)) = [&built.event_type, &built.dedupe_key]
                .into_iter()
                .find(|field| matches!(field, Field::Json(_)))
        {
            return Err(format!(
                "{key}.content_encoding = \"pass\" needs the event type and the dedupe key in \
                 headers: hookgate does not decompress bodies, so it cannot read {pointer:?} \
                 from an encoded one"
            ));
        }
        out.push(Source {
            name: file.name.clone(),
            path: file.path.clone(),
            scheme: built.scheme,
            verifier: built.verifier,
            event_type: built.event_type,
            dedupe_key: built.dedupe_key,
            binding: built.binding,
            reads: built.reads,
            content_encoding: file.content_encoding,
            secrets: built.secrets,
            routes: routes(&key, file)?,
            allow_ips: file.allow_ips.clone(),
            delivery: file.delivery,
        });
    }
    Ok((out, warnings))
}

fn routes(source_key: &str, file: &file::Source) -> Result<Routes, String> {
    if file.routes.is_empty() {
        return Err(format!(
            "{source_key} ({:?}) has no [[sources.routes]]; add at least one (events = [\"*\"] catches all)",
            file.name
        ));
    }
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(file.routes.len());
    for (j, route) in file.routes.iter().enumerate() {
        let key = format!("{source_key}.routes[{j}]");
        let name = match &route.name {
            Some(name) => {
                check_name(&format!("{key}.name"), name)?;
                name.clone()
            }
            None => j.to_string(),
        };
        if !names.insert(name.clone()) {
            return Err(format!(
                "{key}.name {name:?} is already used in this source"
            ));
        }
        let max_concurrency = match (route.max_concurrency, file.delivery) {
            (None, _) => None,
            (Some(0), _) => return Err(format!("{key}.max_concurrency must be at least 1")),
            (Some(n), Delivery::Queue) => NonZeroU32::new(n),
            (Some(_), Delivery::Proxy) => {
                return Err(format!(
                    "{key}.max_concurrency only applies to queue mode; set delivery = \"queue\" on {source_key}"
                ));
            }
        };
        let mut compiled = Route::new(&file.name, &name, &route.events, &route.upstream)
            .map_err(|e| format!("{key}.{e}"))?
            .with_max_concurrency(max_concurrency);
        if let Some(resign) = &route.resign {
            let signer = crate::verify::standard_webhooks::Resigner::new(resign.secret.expose())
                .map_err(|e| format!("{key}.resign.secret: {e}"))?;
            compiled = compiled.with_resign(signer);
        }
        routes.push(compiled);
    }
    Ok(Routes::new(routes))
}

/// Names end up in metric labels and store keys: keep them short and plain.
fn check_name(key: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key} {name:?} must be 1 to 64 characters of letters, digits, '_', '-' or '.'"
        ))
    }
}

impl Settings {
    /// A one-screen description for `hookgate check` and the start-up log.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "config: {}", self.origin);
        let tls = match &self.server.tls {
            Some(tls) => format!("https (TLS: {})", tls.description),
            None => "plain http (no [server.tls]: put a TLS-terminating proxy in front)".to_owned(),
        };
        let _ = writeln!(s, "listen: {} {tls}", self.server.listen);
        let admin_auth = match (
            &self.admin_auth.token,
            self.admin_auth.public_paths.as_slice(),
        ) {
            (None, _) => "no token (loopback only)".to_owned(),
            (Some(_), []) => "bearer token required".to_owned(),
            (Some(_), open) => format!("bearer token required except {}", open.join(" ")),
        };
        let _ = writeln!(
            s,
            "admin:  {} (/metrics /healthz /readyz{}), {admin_auth}",
            self.admin_listen,
            if self.queue.is_some() {
                " /deliveries"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "limits: body {} bytes ({} buffered per client IP, {} in all), header read {}, \
             body read {}, upstream {}",
            self.limits.max_body_bytes,
            self.limits.max_buffered_body_bytes_per_ip,
            self.limits.max_buffered_body_bytes,
            humantime::format_duration(self.limits.header_read_timeout),
            humantime::format_duration(self.limits.body_read_timeout),
            humantime::format_duration(self.limits.upstream_timeout),
        );
        let _ = writeln!(
            s,
            "connections: {} in all, {} per client IP, idle {}; headers: {} fields, {} bytes; \
             http2: {} streams, {} resets per {}",
            self.limits.max_connections,
            self.limits.max_connections_per_ip,
            humantime::format_duration(self.limits.idle_timeout),
            self.limits.max_headers,
            self.limits.max_header_bytes,
            self.limits.http2_max_concurrent_streams,
            self.limits.http2_max_resets,
            humantime::format_duration(HTTP2_RESET_WINDOW),
        );
        let penalty = if self.penalty_box.max_failures == 0 {
            "off".to_owned()
        } else {
            format!(
                "more than {} failed verifications in {} -> refused for {}; {} clients tracked at most",
                self.penalty_box.max_failures,
                humantime::format_duration(self.penalty_box.window),
                humantime::format_duration(self.penalty_box.cooldown),
                self.penalty_box.max_clients,
            )
        };
        let _ = writeln!(s, "penalty box: {penalty}");
        let _ = writeln!(s, "upstream TLS: {}", self.upstream_tls);
        let _ = writeln!(
            s,
            "rate limit: {} req/s per client IP, burst {}, {} trusted proxies",
            self.rate_limit.requests_per_second,
            self.rate_limit.burst,
            self.trusted_proxies.len()
        );
        let store = match &self.store.backend {
            StoreBackend::Memory => "in-memory (this instance only)".to_owned(),
            StoreBackend::Redis(redis) => format!(
                "{} (key prefix {:?}, timeout {}, on_error = \"{}\")",
                redis.target,
                redis.key_prefix,
                humantime::format_duration(redis.timeout),
                self.store.on_error
            ),
        };
        let _ = writeln!(
            s,
            "store:  {store}; dedupe ttl {}, in-flight {}",
            duration::written(self.dedupe.ttl),
            duration::written(self.dedupe.in_flight_ttl),
        );
        if let Some(queue) = &self.queue {
            let durability = match self.store.backend {
                StoreBackend::Memory => "in memory: NOT durable, lost on restart",
                StoreBackend::Redis(_) => "Redis Streams, shared by every instance",
            };
            let _ = writeln!(
                s,
                "queue:  {durability}; {} workers, {} attempts, backoff {}..{}{}, max age {}, retention {}, retry on {}",
                queue.workers,
                queue.max_attempts,
                duration::written(queue.backoff.initial),
                duration::written(queue.backoff.max),
                if queue.backoff.jitter {
                    " with jitter"
                } else {
                    ""
                },
                duration::written(queue.max_age),
                duration::written(queue.retention),
                queue.retry_on,
            );
        }
        let _ = writeln!(s, "sources:");
        for source in &self.sources {
            let delivery = match source.delivery {
                Delivery::Proxy => "proxy",
                Delivery::Queue => "queue",
            };
            let bound = match source.binding {
                KeyBinding::Id => "",
                KeyBinding::IdAndBody => " (unsigned: bound to the body's hash)",
            };
            let _ = writeln!(
                s,
                "  {} POST {} scheme={} event_type={} dedupe_key={}{bound} delivery={delivery}\n    verify {}",
                source.name,
                source.path,
                source.scheme,
                source.event_type,
                source.dedupe_key,
                source.verifier.describe()
            );
            if source.content_encoding == ContentEncoding::Pass {
                let _ = writeln!(
                    s,
                    "    content_encoding pass (encoded bodies forwarded as received)"
                );
            }
            if !source.allow_ips.is_empty() {
                let nets: Vec<String> = source.allow_ips.iter().map(ToString::to_string).collect();
                let _ = writeln!(s, "    allow_ips {}", nets.join(", "));
            }
            for route in source.routes.iter() {
                let limit = route
                    .max_concurrency()
                    .map(|n| format!(" (max {n} at once)"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "    route {:<12} {:<40} -> {}{limit}{}",
                    route.name(),
                    route.patterns_display(),
                    route.upstream(),
                    if route.resign().is_some() {
                        " (re-signed: standard-webhooks)"
                    } else {
                        ""
                    }
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[sources]]
name = "openai"
path = "/webhooks/openai"
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:9001/hooks"
"#;

    fn error(text: &str) -> String {
        parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let settings = parse(MINIMAL, "test.toml").unwrap();
        assert_eq!(settings.server.listen.to_string(), "0.0.0.0:8443");
        assert!(settings.server.tls.is_none());
        assert_eq!(settings.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(settings.limits.max_body_bytes, 1_048_576);
        assert_eq!(settings.dedupe.ttl, Duration::from_secs(72 * 3600));
        assert_eq!(settings.dedupe.in_flight_ttl, Duration::from_secs(15));
        assert_eq!(settings.rate_limit.burst, 100);
        assert_eq!(
            settings.sources[0].routes.iter().next().unwrap().name(),
            "0"
        );
    }

    #[test]
    fn the_embedded_default_config_is_valid() {
        let settings = parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert!(settings.server.tls.as_ref().unwrap().self_signed);
    }

    #[test]
    fn errors_start_with_the_file_name() {
        assert!(error("[server]\nlisten = 5").starts_with("test.toml: "));
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_line() {
        let e = error(&format!("{MINIMAL}\nsurprise = 1"));
        assert!(e.contains("unknown field `surprise`"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn an_invalid_duration_is_reported_with_its_line() {
        let e = error(&format!(
            "[limits]\nupstream_timeout = \"10 parsecs\"\n{MINIMAL}"
        ));
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn an_unset_environment_variable_is_named() {
        let e = error(&MINIMAL.replace(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "${HOOKGATE_TEST_SURELY_UNSET}",
        ));
        assert!(
            e.contains("environment variable HOOKGATE_TEST_SURELY_UNSET is not set"),
            "{e}"
        );
    }

    #[test]
    fn a_source_without_secrets_is_rejected() {
        let e =
            error(&MINIMAL.replace("secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]", ""));
        assert!(e.contains("sources[0].secrets"), "{e}");
    }

    #[test]
    fn an_upstream_that_is_not_http_is_rejected() {
        let e = error(&MINIMAL.replace("http://127.0.0.1:9001/hooks", "ftp://x/y"));
        assert!(e.contains("sources[0].routes[0].upstream"), "{e}");
    }

    #[test]
    fn two_sources_on_one_path_are_rejected() {
        let second = MINIMAL.replace("name = \"openai\"", "name = \"other\"");
        let e = error(&format!("{MINIMAL}{second}"));
        assert!(
            e.contains("sources[1].path \"/webhooks/openai\" is already used by sources[0]"),
            "{e}"
        );
    }

    #[test]
    fn a_source_without_routes_is_rejected() {
        let e = error(MINIMAL.split("[[sources.routes]]").next().unwrap());
        assert!(
            e.contains("sources[0] (\"openai\") has no [[sources.routes]]"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_scheme_is_rejected_with_the_known_ones() {
        let e = error(&MINIMAL.replace("standard-webhooks", "carrier-pigeon"));
        assert!(e.contains("sources[0].scheme \"carrier-pigeon\""), "{e}");
        assert!(e.contains("standard-webhooks"), "{e}");
    }

    #[test]
    fn no_sources_is_an_error() {
        assert!(error("").contains("no [[sources]]"));
    }

    #[test]
    fn tls_needs_a_key_with_its_cert() {
        let e = error(&format!("[server.tls]\ncert = \"a.pem\"\n{MINIMAL}"));
        assert!(e.contains("server.tls.key is missing"), "{e}");
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let e = error(&format!(
            "[server.tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n{MINIMAL}"
        ));
        assert!(e.contains("server.tls.cert"), "{e}");
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn a_bad_trusted_proxy_cidr_is_reported_with_its_line() {
        let e = error(&format!(
            "[rate_limit]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{MINIMAL}"
        ));
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_store_section_selects_redis_and_hides_the_password() {
        let settings = parse(
            &format!("[store]\nredis_url = \"redis://:hunter2@127.0.0.1:6390/2\"\non_error = \"allow\"\n{MINIMAL}"),
            "test.toml",
        )
        .unwrap();
        assert_eq!(settings.store.on_error, OnError::Allow);
        let StoreBackend::Redis(redis) = &settings.store.backend else {
            panic!("expected redis");
        };
        assert_eq!(redis.key_prefix, "hookgate:");
        let shown = format!("{settings:?} {}", settings.summary());
        assert!(shown.contains("127.0.0.1:6390"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn store_errors_name_the_key_without_echoing_the_url() {
        let e = error(&format!(
            "[store]\nredis_url = \"http://:hunter2@x\"\n{MINIMAL}"
        ));
        assert!(
            e.contains("store.redis_url is not a valid Redis URL"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = error(&format!("[store]\nkey_prefix = \"x\"\n{MINIMAL}"));
        assert!(e.contains("needs redis_url"), "{e}");
        let e = error(&format!(
            "[store]\nredis_url = \"redis://a\"\ncluster = [\"redis://b\"]\n{MINIMAL}"
        ));
        assert!(e.contains("not both"), "{e}");
        let e = error(&format!(
            "[store]\nredis_url = \"redis://a\"\non_error = \"maybe\"\n{MINIMAL}"
        ));
        assert!(e.contains("line 3"), "{e}");
    }

    fn queued(extra: &str) -> String {
        format!(
            "{extra}\n{}",
            MINIMAL.replace(
                "scheme = \"standard-webhooks\"",
                "scheme = \"standard-webhooks\"\ndelivery = \"queue\""
            )
        )
    }

    #[test]
    fn sources_default_to_proxy_mode_and_need_no_queue() {
        let settings = parse(MINIMAL, "test.toml").unwrap();
        assert_eq!(settings.sources[0].delivery, Delivery::Proxy);
        assert!(settings.queue.is_none());
    }

    #[test]
    fn a_queue_source_gets_the_documented_queue_defaults() {
        let settings = parse(&queued(""), "test.toml").unwrap();
        assert_eq!(settings.sources[0].delivery, Delivery::Queue);
        let queue = settings.queue.unwrap();
        assert_eq!(queue.workers, 16);
        assert_eq!(queue.max_attempts, 12);
        assert_eq!(queue.backoff.initial, Duration::from_secs(1));
        assert_eq!(queue.backoff.max, Duration::from_secs(3600));
        assert!(queue.backoff.jitter);
        assert_eq!(queue.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(queue.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(queue.visibility_timeout, Duration::from_secs(30));
        assert_eq!(
            queue.retry_on.to_string(),
            "[5xx, 408, 429, connect, timeout]"
        );
    }

    #[test]
    fn queue_keys_are_read_with_human_durations() {
        let settings = parse(
            &queued(
                "[queue]\nworkers = 2\nmax_attempts = 4\nbackoff = { initial = \"250ms\", max = \"2s\", jitter = false }\nmax_age = \"1h\"\nretention = \"1d\"\nretry_on = [\"5xx\"]\nvisibility_timeout = \"3s\"",
            )
            .replace("upstream = \"http://127.0.0.1:9001/hooks\"", "upstream = \"http://127.0.0.1:9001/hooks\"\nmax_concurrency = 3"),
            "test.toml",
        )
        .unwrap();
        let queue = settings.queue.unwrap();
        assert_eq!(queue.workers, 2);
        assert_eq!(queue.backoff.initial, Duration::from_millis(250));
        assert!(!queue.backoff.jitter);
        assert_eq!(queue.retention, Duration::from_secs(86400));
        let route = settings.sources[0].routes.iter().next().unwrap();
        assert_eq!(route.max_concurrency().map(|n| n.get()), Some(3));
    }

    #[test]
    fn queue_errors_name_the_key() {
        let e = error(&queued("[queue]\nretry_on = [\"5xx\", \"sometimes\"]"));
        assert!(e.contains("queue.retry_on[1] \"sometimes\""), "{e}");
        let e = error(&queued(
            "[queue]\nbackoff = { initial = \"10s\", max = \"1s\" }",
        ));
        assert!(e.contains("queue.backoff.max"), "{e}");
        let e = error(&queued("[queue]\nworkers = 0"));
        assert!(e.contains("queue.workers"), "{e}");
        let e = error(&queued("[queue]\nmax_age = \"soon\""));
        assert!(e.contains("line 2"), "{e}");
        let e = error(&queued("[queue]\nsurprise = 1"));
        assert!(e.contains("unknown field `surprise`"), "{e}");
        let e = error(&MINIMAL.replace("scheme =", "delivery = \"later\"\nscheme ="));
        assert!(e.contains("delivery"), "{e}");
    }

    #[test]
    fn max_concurrency_needs_queue_mode_and_at_least_one() {
        let limited = |text: &str, n: u32| {
            text.replace(
                "upstream = \"http://127.0.0.1:9001/hooks\"",
                &format!("upstream = \"http://127.0.0.1:9001/hooks\"\nmax_concurrency = {n}"),
            )
        };
        let e = error(&limited(MINIMAL, 2));
        assert!(
            e.contains("sources[0].routes[0].max_concurrency only applies to queue mode"),
            "{e}"
        );
        let e = error(&limited(&queued(""), 0));
        assert!(
            e.contains("sources[0].routes[0].max_concurrency must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn an_error_summary_leaves_out_the_quoted_file_line() {
        let e = parse(
            "[[sources]]\nname = \"a\"\nsecrets = [\"whsec_literal\" oops]",
            "test.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("whsec_literal"), "{e}");
        let summary = e.summary();
        assert!(
            summary.starts_with("test.toml: TOML parse error at line 3"),
            "{summary}"
        );
        assert!(!summary.contains("whsec_literal"), "{summary}");
    }

    #[test]
    fn the_log_level_is_a_tracing_filter() {
        let settings = parse(
            &format!("[log]\nlevel = \"warn,hookgate::access=info\"\n{MINIMAL}"),
            "t",
        )
        .unwrap();
        assert_eq!(settings.log_level, "warn,hookgate::access=info");
        assert_eq!(parse(MINIMAL, "t").unwrap().log_level, "info");
        let e = error(&format!("[log]\nlevel = \"loud=[\"\n{MINIMAL}"));
        assert!(e.contains("log.level"), "{e}");
    }

    #[test]
    fn zero_rate_is_rejected() {
        let e = error(&format!("[rate_limit]\nrequests_per_second = 0\n{MINIMAL}"));
        assert!(e.contains("rate_limit.requests_per_second"), "{e}");
    }

    #[test]
    fn the_hardening_defaults_are_the_documented_ones() {
        let settings = parse(MINIMAL, "test.toml").unwrap();
        let limits = settings.limits;
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(limits.max_connections_per_ip, 256);
        assert_eq!(limits.max_headers, 100);
        assert_eq!(limits.max_header_bytes, 16_384);
        assert_eq!(limits.http2_max_concurrent_streams, 100);
        assert_eq!(limits.http2_max_resets, 50);
        assert_eq!(settings.penalty_box.max_failures, 20);
        assert_eq!(settings.penalty_box.window, Duration::from_secs(60));
        assert_eq!(settings.penalty_box.cooldown, Duration::from_secs(600));
        assert_eq!(settings.penalty_box.max_clients, 100_000);
        assert_eq!(limits.max_buffered_body_bytes, 128 * 1024 * 1024);
        assert_eq!(limits.max_buffered_body_bytes_per_ip, 4 * 1024 * 1024);
        assert!(matches!(settings.upstream_tls, UpstreamTrust::System));
        assert!(settings.admin_auth.token.is_none());
        assert!(settings.sources[0].allow_ips.is_empty());
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        let e = error(&format!("[admin]\nlisten = \"0.0.0.0:9090\"\n{MINIMAL}"));
        assert!(
            e.contains("admin.listen 0.0.0.0:9090 is not a loopback address"),
            "{e}"
        );
        assert!(e.contains("admin.token"), "{e}");
        let with_token = format!("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"abc\"\n{MINIMAL}");
        assert!(parse(&with_token, "test.toml").is_ok());
        let e = error(&format!("[admin]\ntoken = \"\"\n{MINIMAL}"));
        assert!(e.contains("admin.token is empty"), "{e}");
        let e = error(&format!("[admin]\npublic_paths = [\"/metric\"]\n{MINIMAL}"));
        assert!(e.contains("admin.public_paths[0] \"/metric\""), "{e}");
    }

    #[test]
    fn the_admin_token_is_required_except_on_public_paths() {
        let auth = AdminAuth {
            token: Some(Secret::from("t0ken".to_owned())),
            public_paths: vec!["/metrics".to_owned()],
        };
        assert!(auth.allows("/metrics", None));
        assert!(!auth.allows("/readyz", None));
        assert!(!auth.allows("/readyz", Some(b"Bearer t0ke")));
        assert!(!auth.allows("/readyz", Some(b"Basic t0ken")));
        assert!(auth.allows("/readyz", Some(b"Bearer t0ken")));
        assert!(AdminAuth::default().allows("/readyz", None));
    }

    #[test]
    fn secrets_and_tokens_never_show_in_debug_or_the_summary() {
        let text = format!(
            "[admin]\ntoken = \"admin-token-value\"\n{}",
            MINIMAL.replace(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "plain-secret-value"
            )
        );
        let settings = parse(&text, "test.toml").unwrap();
        let shown = format!("{settings:?}\n{}", settings.summary());
        assert!(!shown.contains("admin-token-value"), "{shown}");
        assert!(!shown.contains("plain-secret-value"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn upstream_tls_takes_a_ca_file_or_skips_verification_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = tls::write_dev_cert(dir.path()).unwrap();
        let ca = format!(
            "[upstream_tls]\nca_file = {:?}\n{MINIMAL}",
            cert.display().to_string()
        );
        let settings = parse(&ca, "test.toml").unwrap();
        assert!(
            matches!(settings.upstream_tls, UpstreamTrust::CaFile { ref certs, .. } if certs.len() == 1)
        );
        let insecure = format!("[upstream_tls]\ninsecure_skip_verify = true\n{MINIMAL}");
        let settings = parse(&insecure, "test.toml").unwrap();
        assert!(settings.summary().contains("NOT VERIFIED"));
        let both = format!(
            "[upstream_tls]\nca_file = {:?}\ninsecure_skip_verify = true\n{MINIMAL}",
            cert.display().to_string()
        );
        assert!(error(&both).contains("exclude each other"));
        let missing = format!("[upstream_tls]\nca_file = \"/nonexistent/ca.pem\"\n{MINIMAL}");
        assert!(error(&missing).contains("upstream_tls.ca_file \"/nonexistent/ca.pem\""));
    }

    #[test]
    fn a_client_ca_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = error(&format!(
            "[server.tls]\nself_signed = true\nclient_ca = {:?}\n{MINIMAL}",
            junk.display().to_string()
        ));
        assert!(e.contains("server.tls.client_ca"), "{e}");
    }

    #[test]
    fn hardening_limits_below_their_minimum_are_rejected() {
        for (key, value) in [
            ("max_connections", "0"),
            ("max_headers", "2"),
            ("max_header_bytes", "10"),
            ("http2_max_concurrent_streams", "0"),
            ("http2_max_resets", "0"),
        ] {
            let e = error(&format!("[limits]\n{key} = {value}\n{MINIMAL}"));
            assert!(
                e.contains(&format!("limits.{key} = {value} must be at least")),
                "{e}"
            );
        }
        let e = error(&format!("[limits]\nidle_timeout = \"0s\"\n{MINIMAL}"));
        assert!(
            e.contains("limits.idle_timeout must be greater than zero"),
            "{e}"
        );
        let e = error(&format!("[penalty_box]\nmax_clients = 0\n{MINIMAL}"));
        assert!(
            e.contains("penalty_box.max_clients = 0 must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn the_body_budget_must_hold_a_body_of_the_largest_size() {
        let e = error(&format!(
            "[limits]\nmax_body_bytes = 2000000\nmax_buffered_body_bytes_per_ip = 1000000\n{MINIMAL}"
        ));
        assert!(
            e.contains("limits.max_buffered_body_bytes_per_ip = 1000000 must be at least limits.max_body_bytes (2000000)"),
            "{e}"
        );
        let e = error(&format!(
            "[limits]\nmax_buffered_body_bytes = 2000000\nmax_buffered_body_bytes_per_ip = 3000000\n{MINIMAL}"
        ));
        assert!(
            e.contains("limits.max_buffered_body_bytes = 2000000 must be at least limits.max_buffered_body_bytes_per_ip (3000000)"),
            "{e}"
        );
        let e = error(&format!(
            "[limits]\nmax_buffered_body_bytes_per_ip = 5000000000\nmax_buffered_body_bytes = 9000000000\n{MINIMAL}"
        ));
        assert!(e.contains("must be at most 4294967295"), "{e}");
        let fits = format!(
            "[limits]\nmax_body_bytes = 65536\nmax_buffered_body_bytes_per_ip = 65536\nmax_buffered_body_bytes = 65536\n{MINIMAL}"
        );
        assert!(parse(&fits, "test.toml").is_ok());
    }
}
