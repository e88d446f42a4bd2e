//! Hot reload: the configuration file is read again (on SIGHUP or `POST /reload`) and
//! what can change under open connections is swapped in; nothing is closed and no
//! request in progress is dropped (it finishes on the configuration it started with).
//!
//! Applied at once: sources, routes, schemes, secrets, `allow_ips`, `resign`, the rate
//! limit (its `trusted_proxies` also for the per-IP connection limit), the penalty box
//! (kept when `[penalty_box]` is unchanged, else empty), dedupe TTLs, the body limits,
//! `store.on_error`, the admin token,
//! and `[server.tls]` certificates (files are read again; new connections use them).
//! Needing a restart, logged and otherwise left as they are: the listen addresses,
//! turning TLS on or off, connection and upstream limits, the body budget, `[store]`,
//! `[queue]`, `[upstream_tls]`, `log.level` and `[telemetry]`. Where the gateway reads
//! one of those, it keeps the running value too (the header-count and size checks, the
//! in-flight TTL derived from the upstream timeout, `X-Forwarded-Proto`), and a file
//! that would drop the admin token while the running admin listener is public is
//! refused. A file that does not validate changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::body_budget::BodyBudget;
use crate::config::{self, AdminAuth, ConfigError, DeliveryMode, Settings};
use crate::connections::Admission;
use crate::event::{Field, KeyBinding};
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::penalty_box::PenaltyBox;
use crate::pipeline::{ClientGuards, Gateway};
use crate::queue::Ingress;
use crate::queue::worker::Workers;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::tls::Handshake;

/// What a reload keeps from the running gateway.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub body_budget: Arc<BodyBudget>,
    pub metrics: Arc<Metrics>,
    pub forward: Arc<Forwarder>,
    pub ingress: Option<Ingress>,
    pub workers: Option<Arc<Workers>>,
    pub telemetry: Telemetry,
    /// The gateway and admin listeners' connection admissions (their trusted proxies,
    /// exempt from the per-IP limit, follow a reload).
    pub admission: Arc<Admission>,
    pub admin_admission: Arc<Admission>,
    /// Every request's pipeline, whichever gateway it started on (`Gateway::with_requests`).
    pub requests: tokio_util::task::TaskTracker,
}

/// The parts of a running gateway that a reload replaces.
pub struct Live {
    /// Where the settings came from: a file, or the embedded default.
    origin: String,
    gateway: ArcSwap<Gateway>,
    tls: Option<Arc<ArcSwap<Handshake>>>,
    /// The listener's TLS settings at start: a file that turns TLS off still runs with
    /// TLS on until a restart, and the gateway must keep saying so (`X-Forwarded-Proto`).
    started_tls: Option<config::TlsSettings>,
    admin_auth: ArcSwap<AdminAuth>,
    /// Where the admin listener listens: a reload cannot move it.
    admin_listen: std::net::SocketAddr,
    shared: Shared,
    /// The running values of what needs a restart, to tell the operator.
    fixed: Fixed,
    /// The limits the listeners and the body budget were built with.
    fixed_limits: config::Limits,
    /// The rest of what needs a restart, as it runs.
    running: Running,
    /// One reload at a time; a second waits for the first.
    reloading: tokio::sync::Mutex<()>,
    /// What the running configuration is, for the console.
    loaded: ArcSwap<Loaded>,
}

/// The running configuration as the console shows it: its summary (no secrets, as
/// `hookgate check` prints it), its sources and routes, and when it was loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub origin: String,
    pub summary: String,
    /// `(source, route name)` of every route, in the file's order.
    pub routes: Vec<(String, String)>,
    /// Start-up, or the last successful reload.
    pub at: SystemTime,
    /// Whether `at` is a reload rather than the start.
    pub reloaded: bool,
    /// How each source (by name) makes its claim keys (`claim_key_inputs`).
    claim_keys: HashMap<String, ClaimKeyInputs>,
}

impl Loaded {
    fn of(settings: &Settings, reloaded: bool) -> Loaded {
        Loaded {
            origin: settings.origin.clone(),
            summary: settings.summary(),
            routes: settings
                .sources
                .iter()
                .flat_map(|s| {
                    // A fan-out route's deliveries are stored per upstream
                    // (`<route>/<upstream>`): list those, as the records name them.
                    s.routes.iter().flat_map(|r| {
                        r.upstreams()
                            .iter()
                            .map(|u| (s.name.clone(), u.delivery_route.clone()))
                    })
                })
                .collect(),
            at: SystemTime::now(),
            reloaded,
            claim_keys: settings
                .sources
                .iter()
                .map(|s| (s.name.clone(), claim_key_inputs(s)))
                .collect(),
        }
    }

    /// Warnings for the sources of `settings` whose claim keys are made differently
    /// from now: what was delivered, or is being forwarded, under the old keys is not
    /// recognised under the new ones.
    fn claim_key_warnings(&self, settings: &Settings) -> Vec<String> {
        settings
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                self.claim_keys
                    .get(&s.name)
                    .is_some_and(|running| *running != claim_key_inputs(s))
            })
            .map(|(i, s)| {
                format!(
                    "sources[{i}] ({:?}) now makes its dedupe keys differently (its dedupe_key, \
                     whether its event type or id header is signed, or for a key bound to \
                     the body its event_type, changed): deliveries \
                     seen before are not recognised under the new keys, so a sender's retry \
                     of one in flight or already forwarded is forwarded again, for up to \
                     dedupe.ttl; change it when the sender is quiet",
                    s.name
                )
            })
            .collect()
    }
}

/// What a source's claim keys are made of: where its dedupe key comes from, what it
/// is bound to, and for a key bound to the body (`KeyBinding::IdAndBody`: GitHub, `hmac`
/// without `{id}`) where the event type its hash covers comes from.
type ClaimKeyInputs = (Field, KeyBinding, Option<Field>);

fn claim_key_inputs(source: &config::Source) -> ClaimKeyInputs {
    let hashed = (source.binding == KeyBinding::IdAndBody).then(|| source.event_type.clone());
    (source.dedupe_key.clone(), source.binding, hashed)
}

/// What a successful reload reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys that changed in the file but keep their running value until a restart.
    pub restart_needed: Vec<&'static str>,
    /// The new file's warnings (as `hookgate check` prints them).
    pub warnings: Vec<String>,
}

impl Live {
    pub(crate) fn new(
        settings: Settings,
        tls: Option<Arc<ArcSwap<Handshake>>>,
        shared: Shared,
    ) -> Arc<Live> {
        let origin = settings.origin.clone();
        let fixed = Fixed::of(&settings);
        let fixed_limits = settings.limits;
        let running = Running::of(&settings);
        let admin_auth = ArcSwap::from_pointee(settings.admin_auth.clone());
        let admin_listen = settings.admin_listen;
        let started_tls = settings.server.tls.clone();
        let loaded = ArcSwap::from_pointee(Loaded::of(&settings, false));
        let gateway = ArcSwap::from_pointee(build_gateway(settings, &shared, None));
        Arc::new(Live {
            origin,
            gateway,
            tls,
            started_tls,
            admin_auth,
            admin_listen,
            shared,
            fixed,
            fixed_limits,
            running,
            reloading: tokio::sync::Mutex::new(()),
            loaded,
        })
    }

    /// The running configuration, for the console.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// The gateway new requests go to.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    pub fn admin_auth(&self) -> Arc<AdminAuth> {
        self.admin_auth.load_full()
    }

    /// Reads the configuration again and applies it; on any error the running
    /// configuration stays whole. Errors are logged without the file's text.
    pub async fn reload(&self) -> Result<Reloaded, ConfigError> {
        let _one_at_a_time = self.reloading.lock().await;
        let origin = self.origin.clone();
        let loaded = tokio::task::spawn_blocking(move || config::reload(&origin))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError::new(
                    self.origin.clone(),
                    format!("reading the file failed: {e}"),
                ))
            })
            .and_then(|settings| self.admissible(settings));
        let mut settings = match loaded {
            Ok(settings) => settings,
            Err(e) => {
                self.shared.metrics.config_reload(false);
                tracing::warn!(error = %e.summary(), "reload refused: the running configuration stays");
                return Err(e);
            }
        };
        let restart_needed = self.fixed.differences(&Fixed::of(&settings));
        self.running.put_back(&mut settings);
        let filed_upstream_timeout = settings.limits.upstream_timeout;
        settings.limits = running_limits(settings.limits, &self.fixed_limits);
        let running_upstream_timeout = settings.limits.upstream_timeout;
        if settings.dedupe.in_flight_ttl_derived {
            settings.dedupe.in_flight_ttl = config::in_flight_ttl_for(running_upstream_timeout);
        } else {
            // Warned about against the timeout forwards run with, not the file's.
            let ttl = settings.dedupe.in_flight_ttl;
            let filed = config::in_flight_ttl_warning(ttl, filed_upstream_timeout);
            settings.warnings.retain(|w| Some(w) != filed.as_ref());
            settings
                .warnings
                .extend(config::in_flight_ttl_warning(ttl, running_upstream_timeout));
        }
        match (&self.tls, &settings.server.tls) {
            (Some(current), Some(tls)) => {
                current.store(Arc::new(Handshake::new(
                    tls.config.clone(),
                    tls.handshake_timeout,
                )));
                self.shared.metrics.tls_certificate_expires(tls.expires_at);
            }
            // Turning TLS on or off needs a restart; until then the listener speaks what
            // it spoke, and the gateway says so.
            (None, Some(_)) => settings.server.tls = None,
            (Some(_), None) => settings.server.tls = self.started_tls.clone(),
            (None, None) => {}
        }
        self.admin_auth.store(Arc::new(settings.admin_auth.clone()));
        self.shared.store.set_rate(settings.rate_limit);
        for admission in [&self.shared.admission, &self.shared.admin_admission] {
            admission.set_exempt(settings.trusted_proxies.clone());
        }
        if let Some(workers) = &self.shared.workers {
            workers.set_routes(&settings);
        }
        self.shared
            .forward
            .keep_breakers_of(settings.sources.iter().flat_map(|s| s.routes.iter()));
        let route_labels: HashSet<String> = settings
            .sources
            .iter()
            .flat_map(|s| s.routes.iter())
            .flat_map(|route| {
                let copies = route.copies().into_iter().map(|c| c.label().to_owned());
                std::iter::once(route.label().to_owned()).chain(copies)
            })
            .collect();
        self.shared.metrics.keep_routes(&route_labels);
        let sources: HashMap<String, usize> = (settings.sources.iter())
            .map(|source| (source.name.clone(), source.secrets))
            .collect();
        self.shared.metrics.keep_sources(&sources);
        let rekeyed = self.loaded.load().claim_key_warnings(&settings);
        settings.warnings.extend(rekeyed);
        let warnings = settings.warnings.clone();
        self.loaded.store(Arc::new(Loaded::of(&settings, true)));
        self.gateway.store(Arc::new(build_gateway(
            settings,
            &self.shared,
            Some(&self.gateway.load()),
        )));
        self.shared.metrics.config_reload(true);
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        if restart_needed.is_empty() {
            tracing::info!(config = %self.origin, "configuration reloaded");
        } else {
            tracing::warn!(
                config = %self.origin,
                restart_needed = %restart_needed.join(", "),
                "configuration reloaded; these changes need a restart and keep their running values meanwhile"
            );
        }
        Ok(Reloaded {
            restart_needed,
            warnings,
        })
    }

    /// Refuses what cannot be applied at all: queue mode where the running gateway
    /// has no queue, a body size that the running body budget could never hold, or a
    /// running admin listener off loopback left without its token.
    fn admissible(&self, settings: Settings) -> Result<Settings, ConfigError> {
        // The file's own check held the token against the file's `admin.listen`; the
        // listener stays where it is until a restart, so hold it against that too.
        if settings.admin_auth.token.is_none() && !self.admin_listen.ip().is_loopback() {
            let mut e = ConfigError::new(
                settings.origin.clone(),
                format!(
                    "admin.token is not set, but the running admin listener {} is not on a \
                     loopback address (admin.listen needs a restart): keep admin.token until \
                     the restart that moves it",
                    self.admin_listen
                ),
            );
            e.key = Some("admin.token".to_owned());
            return Err(e);
        }
        let share = self.fixed_limits.max_buffered_body_bytes_per_ip;
        if settings.limits.max_body_bytes > share {
            return Err(ConfigError::new(
                settings.origin.clone(),
                format!(
                    "limits.max_body_bytes = {} exceeds the running \
                     limits.max_buffered_body_bytes_per_ip ({share}), which needs a restart",
                    settings.limits.max_body_bytes
                ),
            ));
        }
        let queued = settings
            .sources
            .iter()
            .find(|s| s.delivery == DeliveryMode::Queue);
        match queued {
            Some(source) if self.shared.ingress.is_none() => Err(ConfigError::new(
                settings.origin.clone(),
                format!(
                    "source {:?} uses delivery = \"queue\", but queue mode was off when hookgate \
                     started: restart to turn it on",
                    source.name
                ),
            )),
            _ => Ok(settings),
        }
    }
}

/// The limits a reloaded gateway runs with: the new body limits, and the running values
/// of every limit `Fixed` reports as needing a restart. The listeners keep enforcing
/// those; the gateway's own checks (the 431 on `max_headers` and `max_header_bytes`)
/// must agree with them, not half-apply a new value.
fn running_limits(new: config::Limits, running: &config::Limits) -> config::Limits {
    config::Limits {
        max_body_bytes: new.max_body_bytes,
        body_read_timeout: new.body_read_timeout,
        ..*running
    }
}

/// The gateway for `settings`. A reload keeps the running gateway's penalty box when
/// `[penalty_box]` is unchanged: a new, empty one on every reload (a secret rotated, a
/// certificate renewed, a ConfigMap synced) let every boxed client straight back in.
fn build_gateway(settings: Settings, shared: &Shared, running: Option<&Gateway>) -> Gateway {
    let penalty_box = match running {
        Some(running) if *running.penalty_box().settings() == settings.penalty_box => {
            running.penalty_box().clone()
        }
        _ => Arc::new(PenaltyBox::new(
            settings.penalty_box,
            shared.metrics.penalty_box_clients(),
        )),
    };
    Gateway::new(
        settings,
        shared.store.clone(),
        shared.metrics.clone(),
        shared.forward.clone(),
        shared.ingress.clone(),
        ClientGuards {
            body_budget: shared.body_budget.clone(),
            penalty_box,
        },
        shared.telemetry.clone(),
    )
    .with_requests(shared.requests.clone())
}

/// What needs a restart, as it runs (`limits` and TLS on or off are kept apart), put back
/// into a reloaded configuration: the console's "Running configuration" showed the file's
/// `[queue]` and `server.listen` while the old ones ran.
struct Running {
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    shutdown_timeout: std::time::Duration,
    store: config::StoreBackend,
    queue: Option<config::QueueSettings>,
    upstream_tls: crate::tls::UpstreamTrust,
    log_level: String,
    telemetry: Option<config::TelemetrySettings>,
}

impl Running {
    fn of(s: &Settings) -> Running {
        Running {
            listen: s.server.listen,
            admin_listen: s.admin_listen,
            shutdown_timeout: s.server.shutdown_timeout,
            store: s.store.backend.clone(),
            queue: s.queue.clone(),
            upstream_tls: s.upstream_tls.clone(),
            log_level: s.log_level.clone(),
            telemetry: s.telemetry.clone(),
        }
    }

    fn put_back(&self, s: &mut Settings) {
        s.server.listen = self.listen;
        s.admin_listen = self.admin_listen;
        s.server.shutdown_timeout = self.shutdown_timeout;
        s.store.backend = self.store.clone();
        s.queue = self.queue.clone();
        s.upstream_tls = self.upstream_tls.clone();
        s.log_level = self.log_level.clone();
        s.telemetry = self.telemetry.clone();
    }
}

/// The values a reload cannot change, each under the key an operator would look for.
#[derive(Debug, PartialEq, Eq)]
struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    fn of(s: &Settings) -> Fixed {
        let l = &s.limits;
        Fixed(vec![
            ("server.listen", s.server.listen.to_string()),
            ("admin.listen", s.admin_listen.to_string()),
            (
                "[server.tls] (on or off)",
                s.server.tls.is_some().to_string(),
            ),
            (
                "server.shutdown_timeout",
                format!("{:?}", s.server.shutdown_timeout),
            ),
            (
                "limits (connection, header-parser and upstream limits)",
                format!(
                    "{:?}",
                    (
                        l.header_read_timeout,
                        l.idle_timeout,
                        l.upstream_timeout,
                        l.max_connections,
                        l.max_connections_per_ip,
                        l.max_headers,
                        l.max_header_bytes,
                        l.http2_max_concurrent_streams,
                        l.http2_max_resets,
                    )
                ),
            ),
            (
                "limits.max_buffered_body_bytes, limits.max_buffered_body_bytes_per_ip",
                format!(
                    "{:?}",
                    (l.max_buffered_body_bytes, l.max_buffered_body_bytes_per_ip)
                ),
            ),
            (
                "[store]",
                with_credentials(&s.store.backend, store_credentials(s)),
            ),
            ("[queue]", format!("{:?}", s.queue)),
            ("[upstream_tls]", format!("{:?}", s.upstream_tls)),
            ("log.level", s.log_level.clone()),
            (
                "[telemetry]",
                with_credentials(
                    &s.telemetry,
                    s.telemetry
                        .iter()
                        .flat_map(|t| &t.headers)
                        .map(|(_, v)| Some(v.expose().as_bytes())),
                ),
            ),
        ])
    }

    fn differences(&self, new: &Fixed) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&new.0)
            .filter(|(old, new)| old.1 != new.1)
            .map(|(old, _)| old.0)
            .collect()
    }
}

/// `Debug` of `shown` plus a digest of what its `Debug` hides (passwords, tokens): a
/// credential changed in the file needs a restart as much as an address does, and the
/// digest never shows it.
fn with_credentials<'a>(
    shown: &impl std::fmt::Debug,
    credentials: impl IntoIterator<Item = Option<&'a [u8]>>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for credential in credentials {
        match credential {
            Some(bytes) => {
                digest.update([1]);
                digest.update((bytes.len() as u64).to_be_bytes());
                digest.update(bytes);
            }
            None => digest.update([0]),
        }
    }
    let mut text = format!("{shown:?} ");
    crate::verify::push_hex(&mut text, &digest.finalize());
    text
}

/// The store's user names, passwords and TLS choices, which `StoreBackend`'s `Debug`
/// leaves out (Redis' addresses print without their scheme).
fn store_credentials(s: &Settings) -> Vec<Option<&[u8]>> {
    use config::{RedisTarget, StoreBackend};
    match &s.store.backend {
        StoreBackend::Memory => Vec::new(),
        StoreBackend::Redis(redis) => {
            let nodes: Vec<&redis::ConnectionInfo> = match &redis.target {
                RedisTarget::Single(info) => vec![info.as_ref()],
                RedisTarget::Cluster(nodes) => nodes.iter().collect(),
            };
            nodes
                .into_iter()
                .flat_map(|info| {
                    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
                    let settings = info.redis_settings();
                    [
                        Some(if tls { &b"tls"[..] } else { &b"plain"[..] }),
                        settings.username().map(str::as_bytes),
                        settings.password().map(str::as_bytes),
                    ]
                })
                .collect()
        }
        StoreBackend::Postgres(pg) => vec![pg.config.get_password()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:8443"
[[sources]]
name = "openai"
path = "/webhooks/openai"
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:9001/hooks"
"#;

    fn fixed(text: &str) -> Fixed {
        Fixed::of(&config::parse(text, "t").unwrap())
    }

    #[test]
    fn only_what_needs_a_restart_is_reported() {
        let base = fixed(BASE);
        let routes = BASE.replace("events = [\"*\"]", "events = [\"batch.*\"]");
        assert!(base.differences(&fixed(&routes)).is_empty());
        let moved = BASE.replace("127.0.0.1:8443", "127.0.0.1:8444");
        assert_eq!(base.differences(&fixed(&moved)), vec!["server.listen"]);
        let slower = format!("[limits]\nupstream_timeout = \"30s\"\n{BASE}");
        assert_eq!(
            base.differences(&fixed(&slower)),
            vec!["limits (connection, header-parser and upstream limits)"]
        );
        let bodies = format!("[limits]\nmax_body_bytes = 2048\n{BASE}");
        assert!(base.differences(&fixed(&bodies)).is_empty());
        let budget = format!("[limits]\nmax_buffered_body_bytes_per_ip = 8388608\n{BASE}");
        assert_eq!(
            base.differences(&fixed(&budget)),
            vec!["limits.max_buffered_body_bytes, limits.max_buffered_body_bytes_per_ip"]
        );
    }

    /// `Debug` hides passwords and tokens, so a change of nothing but a credential
    /// once compared equal and the reload claimed the running store used the new one.
    #[test]
    fn a_credential_changed_alone_is_reported_as_needing_a_restart() {
        let with = |store: &str| fixed(&format!("{store}\n{BASE}"));
        let redis = with("[store]\nredis_url = \"redis://:one@127.0.0.1:6390/0\"");
        let cases = [
            ("redis://:two@127.0.0.1:6390/0", "[store]"),
            ("redis://other:one@127.0.0.1:6390/0", "[store]"),
            ("rediss://:one@127.0.0.1:6390/0", "[store]"),
        ];
        for (url, key) in cases {
            let changed = with(&format!("[store]\nredis_url = \"{url}\""));
            assert_eq!(redis.differences(&changed), vec![key], "{url}");
        }
        let same = with("[store]\nredis_url = \"redis://:one@127.0.0.1:6390/0\"");
        assert!(redis.differences(&same).is_empty());

        let pg = |password: &str| {
            with(&format!(
                "[store]\npostgres_url = \"postgres://hg:{password}@127.0.0.1:5439/hg\""
            ))
        };
        assert_eq!(pg("one").differences(&pg("two")), vec!["[store]"]);
        assert!(pg("one").differences(&pg("one")).is_empty());

        let otel = |token: &str| {
            with(&format!(
                "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n\
                 headers = {{ authorization = \"Bearer {token}\" }}"
            ))
        };
        assert_eq!(otel("one").differences(&otel("two")), vec!["[telemetry]"]);
        assert!(otel("one").differences(&otel("one")).is_empty());
    }
}
