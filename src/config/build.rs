//! From the parsed file to `Settings`: defaults settled, values checked against each
//! other, certificates and CA files loaded. The sources are `source.rs`'s job.
//!
//! Every check names the key path it blames (`Invalid::at`), and its message names it
//! too, so an error reads on its own and `ConfigError` can point at the key's line.

use std::net::SocketAddr;
use std::time::Duration;

use super::duration;
use super::error::{Invalid, positive};
use super::file::{self, DeliveryMode, FileConfig, OnError};
use super::settings::{
    ADMIN_PATHS, AdminAuth, DedupeSettings, Limits, MAX_QUEUE_PARTITIONS, PenaltyBoxSettings,
    PostgresSettings, QueueSettings, RateLimitSettings, RedisSettings, RedisTarget, ServerSettings,
    Settings, StoreBackend, StoreSettings, TelemetrySettings, TlsSettings, in_flight_ttl_for,
    in_flight_ttl_warning,
};
use super::source::sources;
use crate::queue::policy::{BackoffPolicy, RetryOn};
use crate::tls::{self, UpstreamTrust};

pub(super) fn build(file: FileConfig, origin: &str) -> Result<Settings, Invalid> {
    let limits = limits(&file.limits)?;
    let dedupe = DedupeSettings {
        ttl: positive("dedupe.ttl", file.dedupe.ttl)?,
        in_flight_ttl: match file.dedupe.in_flight_ttl {
            Some(ttl) => positive("dedupe.in_flight_ttl", ttl)?,
            None => in_flight_ttl_for(limits.upstream_timeout),
        },
        in_flight_ttl_derived: file.dedupe.in_flight_ttl.is_none(),
    };
    let rate_limit = rate_limit(&file.rate_limit)?;
    if file.sources.is_empty() {
        return Err(Invalid::whole(
            "no [[sources]] are configured; every request would be answered 404",
        ));
    }
    let (sources, mut warnings) = sources(&file.sources)?;
    warnings.extend(in_flight_ttl_warning(
        dedupe.in_flight_ttl,
        limits.upstream_timeout,
    ));
    warnings.extend(replay_window_warnings(&sources, dedupe.ttl));
    let store = store_settings(file.store.as_ref())?;
    let queue = queue_settings(&file.queue)?;
    let queued = sources.iter().any(|s| s.delivery == DeliveryMode::Queue);
    if queued {
        warnings.extend(renewal_warning(&store, queue.visibility_timeout));
    }
    if let Some(token) = &file.admin.token
        && token.expose().chars().count() < MIN_ADMIN_TOKEN_CHARS
    {
        warnings.push(format!(
            "admin.token is {} characters long: a token that can be guessed opens the admin API \
             and the console (deliveries, replays, reloads) to whoever reaches admin.listen; \
             use at least 32 random characters (openssl rand -hex 16)",
            token.expose().chars().count()
        ));
    }
    if let Some(token) = &file.admin.token
        && token.expose().trim() != token.expose()
    {
        warnings.push(
            "admin.token has leading or trailing whitespace (a newline from an env file?): \
             a header value cannot carry it, so no client can send this token"
                .to_owned(),
        );
    }
    listeners_apart(file.server.listen, file.admin.listen)?;
    Ok(Settings {
        origin: origin.to_owned(),
        server: ServerSettings {
            listen: file.server.listen,
            tls: file.server.tls.as_ref().map(tls_settings).transpose()?,
            shutdown_timeout: positive("server.shutdown_timeout", file.server.shutdown_timeout)?,
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
        telemetry: file.telemetry.as_ref().map(telemetry).transpose()?,
        sources,
        warnings: warnings
            .into_iter()
            .map(|w| format!("{origin}: {w}"))
            .collect(),
    })
}

fn log_level(level: &str) -> Result<String, Invalid> {
    // A bare word is a target to EnvFilter: `"warning"` or a typo passed, and logged
    // nothing but that target (nothing at all); `""` logged errors only.
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let bare = level.split(',').map(str::trim).find(|directive| {
        !directive.contains(['=', '[']) && !LEVELS.iter().any(|l| directive.eq_ignore_ascii_case(l))
    });
    if let Some(word) = bare {
        return Err(Invalid::at(
            "log.level",
            format!(
                "log.level {level:?}: {word:?} is not a level (trace, debug, info, warn, \
                 error, off); a target takes one, as in \"info,hookgate::access=warn\""
            ),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| level.to_owned())
        .map_err(|e| {
            Invalid::at(
                "log.level",
                format!("log.level {level:?} is not a log filter ({e}); try \"info\" or \"warn\""),
            )
        })
}

/// The most spans `telemetry.max_queued_spans` may hold (about 1 GiB of spans).
const MAX_QUEUED_SPANS: usize = 1_000_000;

fn telemetry(file: &file::Telemetry) -> Result<TelemetrySettings, Invalid> {
    // The base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the traces path itself or a
    // query made `.../v1/traces/v1/traces` or `...?x=1/v1/traces`. Checked as an upstream
    // is (http or https, a host, a port in range, no credentials: `headers` carries them).
    let endpoint = file.otlp_endpoint.trim_end_matches('/');
    let invalid = |why: &str| {
        Invalid::at(
            "telemetry.otlp_endpoint",
            format!(
                "telemetry.otlp_endpoint {:?} {why}; write the collector's base URL, such as \
                 \"http://otel-collector:4318\"",
                crate::route::shown_upstream(endpoint)
            ),
        )
    };
    if endpoint.ends_with("/v1/traces") {
        return Err(invalid("ends in /v1/traces, which hookgate adds itself"));
    }
    if endpoint.contains(['?', '#']) {
        return Err(invalid("must have no query or fragment"));
    }
    crate::route::parse_upstream(endpoint).map_err(|why| invalid(&why))?;
    let traces_url: http::Uri = format!("{endpoint}/v1/traces")
        .parse()
        .map_err(|e| invalid(&format!("is not a URL ({e})")))?;
    if !(0.0..=1.0).contains(&file.sample_ratio) {
        return Err(Invalid::at(
            "telemetry.sample_ratio",
            format!(
                "telemetry.sample_ratio = {} must be between 0.0 and 1.0",
                file.sample_ratio
            ),
        ));
    }
    if file.service_name.trim().is_empty() {
        return Err(Invalid::at(
            "telemetry.service_name",
            "telemetry.service_name must not be empty",
        ));
    }
    // Bounded above too: tokio's channel panicked at start with 2^62.
    if !(1..=MAX_QUEUED_SPANS).contains(&file.max_queued_spans) {
        return Err(Invalid::at(
            "telemetry.max_queued_spans",
            format!("telemetry.max_queued_spans must be from 1 to {MAX_QUEUED_SPANS}"),
        ));
    }
    let headers = file
        .headers
        .iter()
        .map(|(name, value)| {
            let key = format!("telemetry.headers.{name}");
            let header = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Invalid::at(&key, format!("{key}: {name:?} is not a header name")))?;
            http::HeaderValue::from_str(value.expose()).map_err(|_| {
                Invalid::at(
                    &key,
                    format!("{key}: the value is not a valid header value"),
                )
            })?;
            Ok((header, value.clone()))
        })
        .collect::<Result<_, Invalid>>()?;
    Ok(TelemetrySettings {
        traces_url,
        service_name: file.service_name.clone(),
        sample_ratio: file.sample_ratio,
        trust_incoming_traceparent: file.trust_incoming_traceparent,
        headers,
        export_interval: positive("telemetry.export_interval", file.export_interval)?,
        export_timeout: positive("telemetry.export_timeout", file.export_timeout)?,
        max_queued_spans: file.max_queued_spans,
    })
}

fn queue_settings(file: &file::Queue) -> Result<QueueSettings, Invalid> {
    if file.workers == 0 {
        return Err(Invalid::at(
            "queue.workers",
            "queue.workers must be at least 1",
        ));
    }
    if file.max_attempts == 0 {
        return Err(Invalid::at(
            "queue.max_attempts",
            "queue.max_attempts must be at least 1",
        ));
    }
    let initial = positive("queue.backoff.initial", file.backoff.initial)?;
    if file.backoff.max < initial {
        return Err(Invalid::at(
            "queue.backoff.max",
            format!(
                "queue.backoff.max ({}) must not be shorter than queue.backoff.initial ({})",
                humantime::format_duration(file.backoff.max),
                humantime::format_duration(initial)
            ),
        ));
    }
    let retry_on = RetryOn::parse(&file.retry_on).map_err(|(i, e)| {
        let key = format!("queue.retry_on[{i}]");
        Invalid::at(&key, format!("{key} {e}"))
    })?;
    if !(1..=MAX_QUEUE_PARTITIONS).contains(&file.partitions) {
        return Err(Invalid::at(
            "queue.partitions",
            format!(
                "queue.partitions = {} must be between 1 and {MAX_QUEUE_PARTITIONS}",
                file.partitions
            ),
        ));
    }
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
        // Renewed every third of it: a third under a millisecond (`2ns` passed `check`)
        // panicked the renewal task, and nothing renewed what the instance held.
        visibility_timeout: match positive("queue.visibility_timeout", file.visibility_timeout)? {
            short if short < std::time::Duration::from_secs(1) => {
                return Err(Invalid::at(
                    "queue.visibility_timeout",
                    "queue.visibility_timeout must be at least 1s",
                ));
            }
            timeout => timeout,
        },
        partitions: file.partitions as usize,
    })
}

/// `limits.max_headers` at most: hyper sets aside twice as many header slots on every
/// read of a request head, so a value in the millions cost megabytes per read (and near
/// `u32::MAX` aborted on the first request); real webhooks carry a few dozen.
const MAX_HEADERS: u32 = 1000;

fn at_most(key: &str, value: u32, max: u32) -> Result<u32, Invalid> {
    if value > max {
        return Err(Invalid::at(
            key,
            format!("{key} = {value} must be at most {max}"),
        ));
    }
    Ok(value)
}

fn at_least(key: &str, value: u32, min: u32) -> Result<u32, Invalid> {
    if value < min {
        return Err(Invalid::at(
            key,
            format!("{key} = {value} must be at least {min}"),
        ));
    }
    Ok(value)
}

fn limits(file: &file::Limits) -> Result<Limits, Invalid> {
    let max_body_bytes = usize::try_from(file.max_body_bytes)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            Invalid::at(
                "limits.max_body_bytes",
                format!(
                    "limits.max_body_bytes = {} must be between 1 and {}",
                    file.max_body_bytes,
                    usize::MAX
                ),
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
        // hyper makes room for twice this many on every parse of a head.
        max_headers: at_most(
            "limits.max_headers",
            at_least("limits.max_headers", file.max_headers, 8)?,
            MAX_HEADERS,
        )? as usize,
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
fn body_budget(file: &file::Limits, max_body_bytes: usize) -> Result<(usize, usize), Invalid> {
    const PER_IP: &str = "limits.max_buffered_body_bytes_per_ip";
    const ALL: &str = "limits.max_buffered_body_bytes";
    let per_ip = file.max_buffered_body_bytes_per_ip;
    let all = file.max_buffered_body_bytes;
    if per_ip < max_body_bytes as u64 {
        return Err(Invalid::at(
            PER_IP,
            format!(
                "{PER_IP} = {per_ip} must be at least limits.max_body_bytes ({max_body_bytes}): \
                 a body of the largest size could never be read"
            ),
        ));
    }
    if per_ip > u64::from(u32::MAX) {
        return Err(Invalid::at(
            PER_IP,
            format!("{PER_IP} = {per_ip} must be at most {}", u32::MAX),
        ));
    }
    if all < per_ip {
        return Err(Invalid::at(
            ALL,
            format!("{ALL} = {all} must be at least {PER_IP} ({per_ip})"),
        ));
    }
    let all = usize::try_from(all)
        .ok()
        .filter(|&n| n <= tokio::sync::Semaphore::MAX_PERMITS)
        .ok_or_else(|| {
            Invalid::at(
                ALL,
                format!(
                    "{ALL} = {all} must be at most {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                ),
            )
        })?;
    Ok((all, per_ip as usize))
}

/// Shorter admin tokens are warned about.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// A queue whose leases a store operation can outlast: an instance renews what it
/// holds every third of `visibility_timeout`, and a renewal may take the store's whole
/// `connect_timeout + timeout`; past two thirds of the timeout, a renewal that waits
/// that long lets another instance take over a delivery still being attempted (sent
/// twice).
fn renewal_warning(store: &StoreSettings, visibility: Duration) -> Option<String> {
    let deadline = store.deadline();
    (deadline * 3 > visibility * 2).then(|| {
        format!(
            "queue.visibility_timeout ({}) is less than 1.5 times store.connect_timeout + \
             store.timeout ({}): a lease renewal that waits for the store that long lets \
             another instance take over a delivery still being attempted, which is then sent \
             twice; raise queue.visibility_timeout",
            duration::written(visibility),
            duration::written(deadline)
        )
    })
}

/// The webhook and admin listeners cannot share an address: `serve` failed to bind the
/// second and blamed another process, after `check` said ok.
fn listeners_apart(server: SocketAddr, admin: SocketAddr) -> Result<(), Invalid> {
    // A wildcard covers its own family; `[::]` covers IPv4 too (dual-stack, Linux's
    // default). `0.0.0.0` and `[::1]` on one port both bind.
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    let overlap = server.ip() == admin.ip() || covers(server, admin) || covers(admin, server);
    if server.port() != 0 && server.port() == admin.port() && overlap {
        return Err(Invalid::at(
            "admin.listen",
            format!(
                "admin.listen {admin} and server.listen {server} share port {}: give the admin \
                 listener a port of its own",
                admin.port()
            ),
        ));
    }
    Ok(())
}

fn admin_auth(file: &file::Admin) -> Result<AdminAuth, Invalid> {
    if let Some(token) = &file.token
        && token.expose().is_empty()
    {
        return Err(Invalid::at("admin.token", "admin.token is empty"));
    }
    if file.token.is_none() && !file.listen.ip().is_loopback() {
        return Err(Invalid::at(
            "admin.listen",
            format!(
                "admin.listen {} is not a loopback address: set admin.token \
                 (for example admin.token = \"${{HOOKGATE_ADMIN_TOKEN}}\") so that its paths need \
                 `Authorization: Bearer <token>`; admin.public_paths = [\"/metrics\"] leaves \
                 /metrics open",
                file.listen
            ),
        ));
    }
    for (i, path) in file.public_paths.iter().enumerate() {
        if !ADMIN_PATHS.contains(&path.as_str()) {
            let key = format!("admin.public_paths[{i}]");
            return Err(Invalid::at(
                &key,
                format!(
                    "{key} {path:?} is not an admin path ({})",
                    ADMIN_PATHS.join(", ")
                ),
            ));
        }
    }
    Ok(AdminAuth {
        token: file.token.clone(),
        public_paths: file.public_paths.clone(),
        session_timeout: positive("admin.session_timeout", file.session_timeout)?,
    })
}

fn penalty_box(file: &file::PenaltyBox) -> Result<PenaltyBoxSettings, Invalid> {
    Ok(PenaltyBoxSettings {
        max_failures: file.max_failures,
        window: positive("penalty_box.window", file.window)?,
        cooldown: positive("penalty_box.cooldown", file.cooldown)?,
        max_clients: at_least("penalty_box.max_clients", file.max_clients, 1)? as usize,
    })
}

fn upstream_trust(file: &file::UpstreamTls) -> Result<UpstreamTrust, Invalid> {
    match (&file.ca_file, file.insecure_skip_verify) {
        (Some(_), true) => Err(Invalid::at(
            "upstream_tls.insecure_skip_verify",
            "upstream_tls: ca_file and insecure_skip_verify = true exclude each other",
        )),
        (None, true) => Ok(UpstreamTrust::InsecureSkipVerify),
        (None, false) => Ok(UpstreamTrust::System),
        (Some(path), false) => Ok(UpstreamTrust::CaFile {
            certs: tls::load_ca_file(path).map_err(|e| {
                Invalid::at("upstream_tls.ca_file", format!("upstream_tls.ca_file {e}"))
            })?,
            path: path.clone(),
        }),
    }
}

fn rate_limit(file: &file::RateLimit) -> Result<RateLimitSettings, Invalid> {
    let key = "rate_limit.requests_per_second";
    let rps = super::error::rate(key, file.requests_per_second, file.burst, 1e9)?;
    if file.burst == 0 {
        return Err(Invalid::at(
            "rate_limit.burst",
            "rate_limit.burst must be at least 1",
        ));
    }
    Ok(RateLimitSettings {
        requests_per_second: rps,
        burst: file.burst,
    })
}

/// A source whose signed timestamps stay acceptable longer than `dedupe.ttl` remembers
/// a delivery: a captured request replayed after the ttl and within the tolerance is
/// verified and forwarded again. A timestamp is accepted up to the tolerance ahead as
/// well as behind, and the ttl runs from when the delivery was forwarded: one signed
/// by a clock running ahead verifies for up to twice the tolerance after that.
fn replay_window_warnings(sources: &[super::Source], ttl: std::time::Duration) -> Vec<String> {
    sources
        .iter()
        .filter_map(|source| {
            let tolerance = source.verifier.tolerance().filter(|t| *t * 2 > ttl)?;
            Some(format!(
                "dedupe.ttl ({}) is shorter than twice source {:?}'s tolerance ({}): a \
                 captured request replayed after the ttl and while its timestamp is still \
                 accepted (up to the tolerance behind, or ahead when the sender's clock runs \
                 fast) is verified and forwarded again; keep dedupe.ttl at least twice the \
                 tolerance",
                super::duration::written(ttl),
                source.name,
                super::duration::written(tolerance),
            ))
        })
        .collect()
}

fn store_settings(file: Option<&file::Store>) -> Result<StoreSettings, Invalid> {
    let Some(file) = file else {
        return Ok(StoreSettings {
            backend: StoreBackend::Memory,
            on_error: OnError::Reject,
        });
    };
    if let Some(url) = &file.postgres_url {
        if file.redis_url.is_some() || !file.cluster.is_empty() {
            return Err(Invalid::at(
                "store.postgres_url",
                "store: set postgres_url or redis_url/cluster, not both \
                 (PostgreSQL holds dedupe and the queue; rate limits stay in memory)",
            ));
        }
        // Two deployments told apart by a `key_prefix` PostgreSQL ignored shared one
        // set of tables.
        if file.key_prefix.is_some() {
            return Err(Invalid::at(
                "store.key_prefix",
                "store.key_prefix is Redis' (with postgres_url, store.schema keeps \
                 deployments apart)",
            ));
        }
        return Ok(StoreSettings {
            backend: StoreBackend::Postgres(Box::new(postgres_settings(file, url.expose())?)),
            on_error: file.on_error,
        });
    }
    for (set, key) in [
        (file.pool_size.is_some(), "pool_size"),
        (file.schema.is_some(), "schema"),
    ] {
        if set && (file.redis_url.is_some() || !file.cluster.is_empty()) {
            return Err(Invalid::at(
                format!("store.{key}"),
                format!("store.{key} is PostgreSQL's (postgres_url); Redis does not use it"),
            ));
        }
    }
    let target = match (&file.redis_url, file.cluster.as_slice()) {
        (Some(url), []) => {
            RedisTarget::Single(Box::new(redis_url("store.redis_url", url.expose())?))
        }
        (None, []) => {
            return Err(Invalid::at(
                "store",
                "[store] needs postgres_url, redis_url (one server) or cluster (a list of \
                 node URLs); remove [store] for the in-memory store",
            ));
        }
        (None, nodes) => RedisTarget::Cluster(
            nodes
                .iter()
                .enumerate()
                .map(|(i, url)| redis_url(&format!("store.cluster[{i}]"), url.expose()))
                .collect::<Result<_, _>>()?,
        ),
        (Some(_), _) => {
            return Err(Invalid::at(
                "store.cluster",
                "store: set redis_url or cluster, not both",
            ));
        }
    };
    // Taken as written and ignored, it left a private-CA Redis failing every
    // handshake, seen only as timeouts.
    let ca = match &file.ca_file {
        Some(path) => {
            if !target.is_tls() {
                return Err(Invalid::at(
                    "store.ca_file",
                    "store.ca_file verifies TLS connections: use rediss:// URLs with it",
                ));
            }
            // The CAs alone, as `load_ca_file` picks them: the file as written made the
            // leaf of a full chain an anchor too, and Redis' password went to any server
            // whose certificate that leaf's key signed.
            let issuers = tls::load_ca_file(path)
                .map_err(|e| Invalid::at("store.ca_file", format!("store.ca_file {e}")))?;
            Some(tls::pem_of(&issuers))
        }
        None => None,
    };
    Ok(StoreSettings {
        backend: StoreBackend::Redis(Box::new(RedisSettings {
            target,
            key_prefix: match &file.key_prefix {
                // The queue's keys put their own hash tag after the prefix: braces in it
                // made every multi-key script fail with CROSSSLOT on a cluster (`{}`), or
                // every partition one slot (`{app}:`).
                Some(prefix) if prefix.contains(['{', '}']) => {
                    return Err(Invalid::at(
                        "store.key_prefix",
                        "store.key_prefix must not hold { or }: hookgate sets the hash tags",
                    ));
                }
                Some(prefix) => prefix.clone(),
                None => "hookgate:".to_owned(),
            },
            timeout: positive("store.timeout", file.timeout)?,
            connect_timeout: positive("store.connect_timeout", file.connect_timeout)?,
            ca,
        })),
        on_error: file.on_error,
    })
}

fn postgres_settings(file: &file::Store, url: &str) -> Result<PostgresSettings, Invalid> {
    // libpq's verifying modes, which tokio-postgres does not know: its `require` with
    // rustls always verifies the certificate and the host name, as `verify-full` does.
    let url = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    // Never echoes the URL: it may hold a password.
    let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
        Invalid::at(
            "store.postgres_url",
            "store.postgres_url is not a valid PostgreSQL URL \
             (postgres://user:password@host:5432/database?sslmode=require; sslmode is \
             disable, prefer, require, verify-ca or verify-full)",
        )
    })?;
    let connect_timeout = positive("store.connect_timeout", file.connect_timeout)?;
    config.connect_timeout(connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("hookgate");
    }
    let plain = |c: char| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit();
    let schema = file.schema.as_deref().unwrap_or("hookgate");
    // At most 54: the instances' wake-up channel is `hookgate_<schema>`, and PostgreSQL
    // names are at most 63 bytes (a longer channel failed every NOTIFY and LISTEN).
    // `pg_` names are the system's.
    if schema.is_empty()
        || schema.len() > 54
        || !schema.chars().all(plain)
        || schema.starts_with(|c: char| c.is_ascii_digit())
        || schema.starts_with("pg_")
    {
        return Err(Invalid::at(
            "store.schema",
            "store.schema must be a plain lowercase identifier (a-z, 0-9, _), \
             at most 54 characters, not starting with pg_",
        ));
    }
    // A CA file asks for TLS verified against it, as with Redis, where a plain URL with
    // one is refused: with `disable` it was ignored, and with the default `prefer` a
    // server (or anyone on the path) declining TLS got the password in the clear.
    if file.ca_file.is_some() {
        use tokio_postgres::config::{Host, SslMode};
        // PostgreSQL never offers TLS on a Unix socket: required there, every connection
        // failed at run time.
        if config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Unix(_)))
        {
            return Err(Invalid::at(
                "store.ca_file",
                "store.ca_file verifies TLS connections, which PostgreSQL does not offer on \
                 a Unix socket: connect over TCP (host=name or IP) or leave ca_file out",
            ));
        }
        match config.get_ssl_mode() {
            SslMode::Disable => {
                return Err(Invalid::at(
                    "store.ca_file",
                    "store.ca_file verifies TLS connections: not with sslmode=disable in \
                     store.postgres_url",
                ));
            }
            SslMode::Prefer => {
                config.ssl_mode(SslMode::Require);
            }
            _ => {}
        }
    }
    let trust = match &file.ca_file {
        None => UpstreamTrust::System,
        Some(path) => UpstreamTrust::CaFile {
            certs: tls::load_ca_file(path)
                .map_err(|e| Invalid::at("store.ca_file", format!("store.ca_file {e}")))?,
            path: path.clone(),
        },
    };
    Ok(PostgresSettings {
        config,
        schema: schema.to_owned(),
        pool_size: at_least("store.pool_size", file.pool_size.unwrap_or(16), 1)? as usize,
        timeout: positive("store.timeout", file.timeout)?,
        connect_timeout,
        trust,
    })
}

/// Parses a Redis URL without ever echoing it: it may hold a password.
fn redis_url(key: &str, url: &str) -> Result<redis::ConnectionInfo, Invalid> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(|_| {
        Invalid::at(
            key,
            format!("{key} is not a valid Redis URL (redis://, rediss:// or redis+unix://)"),
        )
    })?;
    // `rediss://...#insecure` needs a redis-rs feature this build leaves out: accepted,
    // every store operation then failed at run time.
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
        return Err(Invalid::at(
            key,
            format!(
                "{key}: the #insecure fragment (no certificate check) is not supported; \
                 trust the server's CA with store.ca_file"
            ),
        ));
    }
    redis::Client::open(info.clone()).map_err(|e| Invalid::at(key, format!("{key}: {e}")))?;
    Ok(info)
}

fn tls_settings(file: &file::Tls) -> Result<TlsSettings, Invalid> {
    let client_ca = file
        .client_ca
        .as_deref()
        .map(|path| {
            tls::load_ca_file(path).map_err(|e| {
                Invalid::at("server.tls.client_ca", format!("server.tls.client_ca {e}"))
            })
        })
        .transpose()?;
    let ((config, expires_at), description) = match (file.self_signed, &file.cert, &file.key) {
        (true, None, None) => (
            tls::self_signed_config(client_ca).map_err(|e| {
                Invalid::at(
                    "server.tls.self_signed",
                    format!("server.tls.self_signed: {e}"),
                )
            })?,
            "self-signed for localhost, generated at start-up".to_owned(),
        ),
        (true, _, _) => {
            return Err(Invalid::at(
                "server.tls.self_signed",
                "server.tls: self_signed = true cannot be combined with cert/key; use one or the other",
            ));
        }
        (false, Some(cert), Some(key)) => (
            // Its errors name server.tls.cert, server.tls.key or both: the line shown is
            // that key's when one is named.
            tls::config_from_files(cert, key, client_ca).map_err(|e| {
                let key = ["server.tls.cert", "server.tls.key"]
                    .into_iter()
                    .find(|k| e.starts_with(&format!("{k} ")))
                    .unwrap_or("server.tls");
                Invalid::at(key, e)
            })?,
            format!("{} (key {})", cert.display(), key.display()),
        ),
        (false, None, _) => {
            return Err(Invalid::at(
                "server.tls.cert",
                "server.tls.cert is missing (or set server.tls.self_signed = true for development)",
            ));
        }
        (false, Some(_), None) => {
            return Err(Invalid::at("server.tls.key", "server.tls.key is missing"));
        }
    };
    let description = match &file.client_ca {
        Some(ca) => format!(
            "{description}; client certificates required, issued by {}",
            ca.display()
        ),
        None => description,
    };
    let description = format!(
        "{description}; valid until {}",
        humantime::format_rfc3339_seconds(expires_at)
    );
    Ok(TlsSettings {
        config,
        expires_at,
        handshake_timeout: positive("server.tls.handshake_timeout", file.handshake_timeout)?,
        self_signed: file.self_signed,
        description,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{EMBEDDED_DEFAULT, parse};

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

    /// Replays a configuration lets through without a word: a dedupe TTL shorter than a
    /// source's tolerance (a capture replayed after it is forwarded again), and two
    /// sources with one secret (a capture is forwarded once by each).
    #[test]
    fn configurations_that_let_a_replay_through_are_warned_about() {
        let warnings = |text: &str| parse(text, "t").unwrap().warnings;
        assert!(warnings(MINIMAL).is_empty(), "{:?}", warnings(MINIMAL));
        let short = warnings(&format!("[dedupe]\nttl = \"5s\"\n{MINIMAL}"));
        assert!(
            short.iter().any(|w| w.contains(
                "dedupe.ttl (5s) is shorter than twice source \"openai\"'s tolerance (5m)"
            )),
            "{short:?}"
        );
        // A timestamp ahead by almost the tolerance verifies for twice the tolerance
        // after the delivery was forwarded (an audit replayed one after a ttl equal to
        // the tolerance, and it was forwarded again).
        let equal = warnings(&format!("[dedupe]\nttl = \"5m\"\n{MINIMAL}"));
        assert!(equal.iter().any(|w| w.contains("twice")), "{equal:?}");
        let twice = warnings(&format!("[dedupe]\nttl = \"10m\"\n{MINIMAL}"));
        assert!(twice.is_empty(), "{twice:?}");
        let twin = MINIMAL
            .replace("name = \"openai\"", "name = \"eu\"")
            .replace("/webhooks/openai", "/webhooks/eu");
        let shared = warnings(&format!("{MINIMAL}{twin}"));
        assert!(
            shared
                .iter()
                .any(|w| w
                    .contains("sources[0] (\"openai\") and sources[1] (\"eu\") share a secret")),
            "{shared:?}"
        );
    }

    fn error(text: &str) -> String {
        parse(text, "test.toml").unwrap_err().to_string()
    }

    /// A host name or an address without its port was "invalid socket address syntax".
    #[test]
    fn a_listen_address_that_is_no_ip_and_port_says_what_to_write() {
        for listen in ["localhost:8443", "[::1]", "0.0.0.0"] {
            for table in ["server", "admin"] {
                let e = error(&format!("[{table}]\nlisten = {listen:?}\n{MINIMAL}"));
                assert!(e.contains("not an IP address and port"), "{e}");
                assert!(e.contains("line 2"), "{e}");
            }
        }
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
        assert!(e.contains("needs postgres_url, redis_url"), "{e}");
        // The other backend's keys are refused, not ignored.
        for (keys, named) in [
            (
                "redis_url = \"redis://a\"\npool_size = 4",
                "store.pool_size",
            ),
            ("cluster = [\"redis://a\"]\nschema = \"x\"", "store.schema"),
            (
                "postgres_url = \"postgres://u@h/db\"\nkey_prefix = \"foo:\"",
                "store.key_prefix",
            ),
            (
                "redis_url = \"redis://a\"\nkey_prefix = \"app{}:\"",
                "store.key_prefix",
            ),
        ] {
            let e = error(&format!("[store]\n{keys}\n{MINIMAL}"));
            assert!(e.contains(named), "{keys}: {e}");
        }
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
        assert_eq!(settings.sources[0].delivery, DeliveryMode::Proxy);
        assert!(settings.queue.is_none());
    }

    #[test]
    fn a_queue_source_gets_the_documented_queue_defaults() {
        let settings = parse(&queued(""), "test.toml").unwrap();
        assert_eq!(settings.sources[0].delivery, DeliveryMode::Queue);
        let queue = settings.queue.unwrap();
        assert_eq!(queue.workers, 16);
        assert_eq!(queue.max_attempts, 12);
        assert_eq!(queue.backoff.initial, Duration::from_secs(1));
        assert_eq!(queue.backoff.max, Duration::from_secs(3600));
        assert!(queue.backoff.jitter);
        assert_eq!(queue.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(queue.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(queue.visibility_timeout, Duration::from_secs(30));
        assert_eq!(queue.partitions, 1);
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
        for wrong in [0, 1025] {
            let e = error(&queued(&format!(
                "[queue]\nworkers = 2\npartitions = {wrong}"
            )));
            assert!(
                e.contains(&format!(
                    "queue.partitions = {wrong} must be between 1 and 1024"
                )) && e.contains("(line "),
                "{e}"
            );
        }
        let six = parse(&queued("[queue]\npartitions = 6"), "test.toml").unwrap();
        assert_eq!(six.queue.unwrap().partitions, 6);
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
        // Printed whole (`check`, a `serve` that cannot start), the excerpt stays but
        // without the values on it.
        assert!(!e.to_string().contains("whsec_literal"), "{e}");
        assert!(e.to_string().contains("3 | secrets = …"), "{e}");
        let summary = e.summary();
        assert!(
            summary.starts_with("test.toml: TOML parse error at line 3"),
            "{summary}"
        );
        assert!(!summary.contains("whsec_literal"), "{summary}");
    }

    /// serde quotes the value it could not take: a secret written with the wrong shape
    /// (a string where a list belongs) must not reach the log or `POST /reload`'s answer.
    #[test]
    fn an_error_summary_leaves_out_a_value_of_the_wrong_type() {
        for text in [
            MINIMAL.replace(
                r#"["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]"#,
                r#""whsec_c2VjcmV0""#,
            ),
            format!("[store]\ncluster = \"redis://:hunter2@10.0.0.1:6379\"\n{MINIMAL}"),
        ] {
            let e = parse(&text, "test.toml").unwrap_err();
            let summary = e.summary();
            assert!(summary.contains("invalid type"), "{summary}");
            for secret in ["whsec_c2VjcmV0", "hunter2"] {
                assert!(!summary.contains(secret), "{summary}");
            }
        }
    }

    #[test]
    fn an_in_flight_ttl_shorter_than_the_upstream_timeout_is_warned_about() {
        let short = parse(
            &format!(
                "[limits]\nupstream_timeout = \"30s\"\n[dedupe]\nin_flight_ttl = \"10s\"\n{MINIMAL}"
            ),
            "t",
        )
        .unwrap();
        assert!(
            short.warnings.iter().any(|w| w.contains(
                "dedupe.in_flight_ttl (10s) is shorter than limits.upstream_timeout (30s)"
            )),
            "{:?}",
            short.warnings
        );
        assert!(!short.dedupe.in_flight_ttl_derived);
        let derived = parse(
            &format!("[limits]\nupstream_timeout = \"30s\"\n{MINIMAL}"),
            "t",
        )
        .unwrap();
        assert!(derived.warnings.is_empty(), "{:?}", derived.warnings);
        assert!(derived.dedupe.in_flight_ttl_derived);
        assert_eq!(derived.dedupe.in_flight_ttl, Duration::from_secs(35));
    }

    #[test]
    fn a_short_admin_token_and_leases_a_store_call_can_outlast_are_warned_about() {
        let short = parse(&format!("[admin]\ntoken = \"change-me\"\n{MINIMAL}"), "t").unwrap();
        assert!(
            short
                .warnings
                .iter()
                .any(|w| w.contains("admin.token is 9 characters long")),
            "{:?}",
            short.warnings
        );
        let long = format!("[admin]\ntoken = \"{}\"\n{MINIMAL}", "x".repeat(32));
        assert!(parse(&long, "t").unwrap().warnings.is_empty());

        let queued = MINIMAL.replace(
            "[[sources.routes]]\n",
            "delivery = \"queue\"\n[[sources.routes]]\nname = \"a\"\n",
        );
        let store = "[store]\nredis_url = \"redis://127.0.0.1:6379\"\ntimeout = \"1s\"\nconnect_timeout = \"2s\"\n";
        let tight = format!("[queue]\nvisibility_timeout = \"4s\"\n{store}{queued}");
        let tight = parse(&tight, "t").unwrap();
        assert!(
            tight.warnings.iter().any(|w| w.contains(
                "queue.visibility_timeout (4s) is less than 1.5 times store.connect_timeout + store.timeout (3s)"
            )),
            "{:?}",
            tight.warnings
        );
        let roomy = format!("[queue]\nvisibility_timeout = \"5s\"\n{store}{queued}");
        assert!(parse(&roomy, "t").unwrap().warnings.is_empty());
    }

    #[test]
    fn an_unnamed_route_of_a_queue_mode_source_is_warned_about() {
        let queued = MINIMAL.replace(
            "[[sources.routes]]",
            "delivery = \"queue\"\n[[sources.routes]]",
        );
        let unnamed = parse(&queued, "t").unwrap();
        assert!(
            unnamed.warnings.iter().any(|w| w.starts_with(
                "t: sources[0].routes[0] has no name: a queued delivery is addressed to its route by name"
            )),
            "{:?}",
            unnamed.warnings
        );
        let named = queued.replace("events = [\"*\"]", "name = \"legacy\"\nevents = [\"*\"]");
        assert!(parse(&named, "t").unwrap().warnings.is_empty());
        assert!(
            parse(MINIMAL, "t").unwrap().warnings.is_empty(),
            "proxy mode"
        );
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
        for level in ["loud=[", "warning", "", "info,verbose", "info,,warn"] {
            let e = error(&format!("[log]\nlevel = \"{level}\"\n{MINIMAL}"));
            assert!(e.contains("log.level"), "{level}: {e}");
        }
        for level in [
            "WARN",
            "debug,hyper=info",
            "off",
            "info,hookgate::access=warn",
        ] {
            let text = format!("[log]\nlevel = \"{level}\"\n{MINIMAL}");
            assert_eq!(parse(&text, "t").unwrap().log_level, level);
        }
    }

    #[test]
    fn zero_rate_is_rejected() {
        for rps in ["0", "1e-20", "nan", "2e9"] {
            let e = error(&format!(
                "[rate_limit]\nrequests_per_second = {rps}\n{MINIMAL}"
            ));
            assert!(e.contains("rate_limit.requests_per_second"), "{e}");
        }
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

    /// `serve` could not bind the second and blamed another process; `check` said ok.
    #[test]
    fn the_admin_listener_needs_an_address_of_its_own() {
        for (server, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "[::]:8080"),
        ] {
            let e = error(&format!(
                "[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"0123456789abcdef0123\"\n{MINIMAL}"
            ));
            assert!(e.contains("share port 8080"), "{server} {admin}: {e}");
        }
        for (server, admin) in [
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "[::1]:8080"),
        ] {
            let apart = format!(
                "[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"0123456789abcdef0123\"\n{MINIMAL}"
            );
            assert!(parse(&apart, "t").is_ok(), "{server} {admin}");
        }
    }

    #[test]
    fn an_admin_token_with_whitespace_around_it_is_warned_about() {
        let text = format!("[admin]\ntoken = \"0123456789abcdef0123\\n\"\n{MINIMAL}");
        let warnings = parse(&text, "t").unwrap().warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("admin.token has leading or trailing whitespace")),
            "{warnings:?}"
        );
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

    /// Values that passed `check` and then broke the listener: a timer set past the
    /// clock's end panicked every connection; a header limit in the millions cost
    /// megabytes on every read of a head.
    #[test]
    fn limits_beyond_any_sensible_value_are_rejected() {
        let e = error(&format!(
            "[limits]\nidle_timeout = \"300000000000y\"\n{MINIMAL}"
        ));
        assert!(
            e.contains("limits.idle_timeout must be at most 100 years"),
            "{e}"
        );
        let e = error(&format!("[limits]\nmax_headers = 4000000000\n{MINIMAL}"));
        assert!(
            e.contains("limits.max_headers = 4000000000 must be at most 1000"),
            "{e}"
        );
        let ok = format!("[limits]\nmax_headers = 1000\nidle_timeout = \"3650d\"\n{MINIMAL}");
        assert!(crate::config::parse(&ok, "t").is_ok());
        let e = error(&format!("[queue]\nvisibility_timeout = \"2ns\"\n{MINIMAL}"));
        assert!(
            e.contains("queue.visibility_timeout must be at least 1s"),
            "{e}"
        );
        // The shutdown's grace is a timeout like the others (it was taken as written).
        for (value, says) in [
            ("0s", "greater than zero"),
            ("500years", "at most 100 years"),
        ] {
            let e = error(&format!(
                "[server]\nshutdown_timeout = \"{value}\"\n{MINIMAL}"
            ));
            assert!(
                e.contains(&format!("server.shutdown_timeout must be {says}")),
                "{e}"
            );
        }
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

    #[test]
    fn a_cross_field_error_carries_the_line_of_the_key_it_blames() {
        let second = MINIMAL.replace("name = \"openai\"", "name = \"other\"");
        let e = parse(&format!("{MINIMAL}{second}"), "test.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources[1].path"));
        assert_eq!((e.line, e.column), (Some(13), Some(1)));
        assert!(
            e.to_string()
                .ends_with("is already used by sources[0] (line 13, column 1)"),
            "{e}"
        );
        let e = parse(&queued("[queue]\nretry_on = [\"5xx\", \"sometimes\"]"), "t").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(20)), "{e}");
        let e = parse(&format!("[admin]\ntoken = \"\"\n{MINIMAL}"), "t").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn postgres_settings_have_defaults_and_exclude_redis_naming_the_line() {
        let settings = parse(
            &format!(
                "[store]\npostgres_url = \"postgres://hookgate:hunter2@db:5433/events?sslmode=require\"\n{MINIMAL}"
            ),
            "t",
        )
        .unwrap();
        let StoreBackend::Postgres(pg) = &settings.store.backend else {
            panic!("{:?}", settings.store.backend)
        };
        assert_eq!((pg.schema.as_str(), pg.pool_size), ("hookgate", 16));
        assert_eq!(
            pg.target(),
            "postgres db:5433 db \"events\" schema \"hookgate\""
        );
        assert!(!format!("{pg:?}").contains("hunter2"));
        assert!(!settings.summary().contains("hunter2"));
        let both = format!(
            "[store]\nredis_url = \"redis://127.0.0.1\"\npostgres_url = \"postgres://h@db/x\"\n{MINIMAL}"
        );
        let e = parse(&both, "t").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.postgres_url"));
        assert_eq!(e.line, Some(3), "{e}");
        let bad = format!(
            "[store]\npostgres_url = \"postgres://secret@db/x\"\nschema = \"Bad-Name\"\n{MINIMAL}"
        );
        assert!(error(&bad).contains("store.schema"));
        // Too long for its wake-up channel's name, or the system's prefix.
        for schema in ["a".repeat(55), "pg_hookgate".to_owned()] {
            let bad = format!(
                "[store]\npostgres_url = \"postgres://h@db/x\"\nschema = \"{schema}\"\n{MINIMAL}"
            );
            assert!(error(&bad).contains("at most 54 characters, not starting with pg_"));
        }
        let fits = format!(
            "[store]\npostgres_url = \"postgres://h@db/x\"\nschema = \"{}\"\n{MINIMAL}",
            "a".repeat(54)
        );
        assert!(parse(&fits, "t").is_ok());
        // libpq's verifying modes are read as `require`, which verifies (they were
        // refused as not a URL).
        for mode in ["verify-full", "verify-ca"] {
            let url =
                format!("[store]\npostgres_url = \"postgres://h@db/x?sslmode={mode}\"\n{MINIMAL}");
            let settings = parse(&url, "t").unwrap();
            let crate::config::StoreBackend::Postgres(pg) = &settings.store.backend else {
                panic!("postgres");
            };
            assert_eq!(
                pg.config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
        }
        let e = error(&format!(
            "[store]\nredis_url = \"rediss://:pw@cache:6380/0#insecure\"\n{MINIMAL}"
        ));
        assert!(
            e.contains("#insecure") && e.contains("store.ca_file"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
        // With a CA file, TLS is required: `prefer` (the default) would let a server
        // declining TLS have the password in the clear; `disable` contradicts it.
        let ca = std::env::temp_dir().join(format!("hookgate-ca-{}.pem", std::process::id()));
        let pinned = crate::tls::generate_dev_cert().unwrap();
        std::fs::write(&ca, pinned.cert_pem).unwrap();
        for (mode, required) in [
            ("", true),
            ("?sslmode=prefer", true),
            ("?sslmode=disable", false),
        ] {
            let text = format!(
                "[store]\npostgres_url = \"postgres://h@db/x{mode}\"\nca_file = {:?}\n{MINIMAL}",
                ca.display().to_string()
            );
            match parse(&text, "t") {
                Ok(settings) => {
                    let crate::config::StoreBackend::Postgres(pg) = &settings.store.backend else {
                        panic!("postgres");
                    };
                    assert!(required, "{mode}");
                    assert_eq!(
                        pg.config.get_ssl_mode(),
                        tokio_postgres::config::SslMode::Require,
                        "{mode}"
                    );
                }
                Err(e) => {
                    assert!(!required, "{mode}: {e}");
                    assert!(e.to_string().contains("sslmode=disable"), "{e}");
                }
            }
        }
        // Nor over a Unix socket, where PostgreSQL offers no TLS at all.
        let text = format!(
            "[store]\npostgres_url = \"postgres://h@%2Frun%2Fpostgresql/x\"\nca_file = {:?}\n{MINIMAL}",
            ca.display().to_string()
        );
        let e = parse(&text, "t").unwrap_err().to_string();
        assert!(e.contains("Unix socket"), "{e}");
        let _ = std::fs::remove_file(&ca);
        let e = error(&format!(
            "[store]\npostgres_url = \"mysql:://hunter2@x\"\n{MINIMAL}"
        ));
        assert!(
            e.contains("store.postgres_url is not a valid PostgreSQL URL"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn tracing_is_off_without_a_telemetry_section_and_defaults_fill_one() {
        assert!(parse(MINIMAL, "t").unwrap().telemetry.is_none());
        let text = format!(
            "[telemetry]\notlp_endpoint = \"http://collector:4318/\"\n\
             headers = {{ authorization = \"Bearer ${{HOME}}\" }}\n{MINIMAL}"
        );
        let settings = parse(&text, "t").unwrap();
        let t = settings.telemetry.as_ref().unwrap();
        assert_eq!(t.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(t.service_name, "hookgate");
        assert_eq!(t.sample_ratio, 1.0);
        assert!(!t.trust_incoming_traceparent);
        assert_eq!(t.headers[0].0, "authorization");
        let home = std::env::var("HOME").unwrap();
        assert_eq!(t.headers[0].1.expose(), format!("Bearer {home}"));
        let summary = settings.summary();
        assert!(
            summary.contains(
                "telemetry: OTLP/HTTP to http://collector:4318/v1/traces as \"hookgate\", \
                 sampling 100% of new traces, incoming traceparent linked (a new trace), \
                 headers authorization (values hidden)"
            ),
            "{summary}"
        );
        let text = format!(
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 0.07\n{MINIMAL}"
        );
        let summary = parse(&text, "t").unwrap().summary();
        assert!(summary.contains("sampling 7% of new traces"), "{summary}");
        assert!(!summary.contains(&home), "{summary}");
        assert!(
            parse(MINIMAL, "t")
                .unwrap()
                .summary()
                .contains("telemetry: off")
        );
    }

    #[test]
    fn telemetry_errors_name_the_key_and_its_line() {
        for (section, key, says) in [
            (
                "otlp_endpoint = \"collector:4318\"",
                "telemetry.otlp_endpoint",
                "http://",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nmax_queued_spans = 4611686018427387904",
                "telemetry.max_queued_spans",
                "from 1 to 1000000",
            ),
            (
                "otlp_endpoint = \"http://c:4318/v1/traces\"",
                "telemetry.otlp_endpoint",
                "which hookgate adds itself",
            ),
            (
                "otlp_endpoint = \"http://c:99999\"",
                "telemetry.otlp_endpoint",
                "port out of range",
            ),
            (
                "otlp_endpoint = \"http://c:4318?x=1\"",
                "telemetry.otlp_endpoint",
                "no query",
            ),
            (
                "otlp_endpoint = \"http://u:p@c:4318\"",
                "telemetry.otlp_endpoint",
                "credentials",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5",
                "telemetry.sample_ratio",
                "between 0.0 and 1.0",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nheaders = { \"bad name\" = \"x\" }",
                "telemetry.headers.bad name",
                "not a header name",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nservice_name = \" \"",
                "telemetry.service_name",
                "must not be empty",
            ),
        ] {
            let e = parse(&format!("[telemetry]\n{section}\n{MINIMAL}"), "t").unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.line.is_some_and(|l| l >= 2), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = error(&format!(
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nheaders = {{ x = \"${{HOOKGATE_UNSET_OTEL}}\" }}\n{MINIMAL}"
        ));
        assert!(
            e.contains("HOOKGATE_UNSET_OTEL") && e.contains("line 3"),
            "{e}"
        );
        let e = error(&format!("[telemetry]\nsample_ratio = 0.5\n{MINIMAL}"));
        assert!(e.contains("otlp_endpoint") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_toml_error_keeps_its_excerpt_and_gives_its_position() {
        let e = parse(
            &format!("[limits]\nupstream_timeout = \"10 parsecs\"\n{MINIMAL}"),
            "test.toml",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(20)));
        let shown = e.to_string();
        assert!(
            shown.starts_with("test.toml: TOML parse error at line 2, column 20\n"),
            "{shown}"
        );
        assert!(shown.contains("2 | upstream_timeout = …"), "{shown}");
        assert!(!shown.contains("(line 2"), "{shown}");
        assert!(!e.message.contains(" | "), "{}", e.message);
    }

    #[test]
    fn no_sources_is_an_error_without_a_position() {
        let e = parse("", "test.toml").unwrap_err();
        assert_eq!((e.key.as_deref(), e.line), (None, None));
    }
}
