//! Config text for tests: `config()` builds a whole hookgate.toml from a few calls
//! (loopback listeners on port 0, one source `openai` signed with `SECRET`, a rate limit
//! nobody reaches); `source_block` is the smallest `[[sources]]` block for tests that
//! write their file by hand; `ConfigFile` keeps a config in a temp dir.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{DevCert, PATH, RedisCluster, RedisServer, SECRET, SOURCE, TestStore, Upstream};

/// Where a route sends its events: an `Upstream` (its `/hooks` path) or a URL.
pub trait Target {
    fn target_url(&self) -> String;
}

impl Target for &Upstream {
    fn target_url(&self) -> String {
        self.url("/hooks")
    }
}

impl Target for String {
    fn target_url(&self) -> String {
        self.clone()
    }
}

impl Target for &str {
    fn target_url(&self) -> String {
        (*self).to_owned()
    }
}

struct SourceBlock {
    name: String,
    path: String,
    secrets: Vec<String>,
    /// TOML lines replacing `scheme = "standard-webhooks"` and `secrets`.
    scheme_toml: Option<String>,
    queue: bool,
    routes: Vec<RouteBlock>,
}

struct RouteBlock {
    name: Option<String>,
    events: String,
    upstream: String,
    /// `resign = { secret = ... }`.
    resign: Option<String>,
    max_concurrency: Option<u32>,
    /// `enrich = ...`, its TOML inline table as written.
    enrich: Option<String>,
    /// More `key = value` lines (`match = [...]`, `breaker = {...}`), as written.
    extra: Vec<String>,
}

/// Config text for tests: loopback listeners on port 0, a rate limit nobody reaches,
/// and one source `openai` on `/webhooks/openai` signed with `SECRET`.
pub struct Config {
    tls: Option<(PathBuf, PathBuf)>,
    limits: Vec<(&'static str, String)>,
    dedupe: Vec<(&'static str, String)>,
    rate_limit: (f64, u32),
    /// `[store]` lines; none means the in-memory store.
    store: Vec<(&'static str, String)>,
    /// Any other `key = value` line: (table, key, TOML value).
    extra: Vec<(&'static str, &'static str, String)>,
    /// More lines of one `[[sources]]` block: (source index, line).
    source_extra: Vec<(usize, String)>,
    /// `[server]` lines after `listen`, `[admin]` lines after `listen`, `[queue]` lines.
    server: Vec<(&'static str, String)>,
    admin: Vec<(&'static str, String)>,
    queue: Vec<(&'static str, String)>,
    sources: Vec<SourceBlock>,
}

pub fn config() -> Config {
    Config {
        tls: None,
        limits: Vec::new(),
        dedupe: Vec::new(),
        rate_limit: (100_000.0, 100_000),
        store: Vec::new(),
        extra: Vec::new(),
        source_extra: Vec::new(),
        server: Vec::new(),
        admin: Vec::new(),
        queue: Vec::new(),
        sources: vec![SourceBlock {
            name: SOURCE.to_owned(),
            path: PATH.to_owned(),
            secrets: vec![SECRET.to_owned()],
            scheme_toml: None,
            queue: false,
            routes: Vec::new(),
        }],
    }
}

impl Config {
    fn last_source(&mut self) -> &mut SourceBlock {
        self.sources.last_mut().expect("there is a source")
    }

    /// A route (named by its index) for one event pattern on the last source.
    pub fn route(mut self, events: &str, to: impl Target) -> Self {
        self.last_source().routes.push(RouteBlock {
            name: None,
            events: events.to_owned(),
            upstream: to.target_url(),
            resign: None,
            max_concurrency: None,
            enrich: None,
            extra: Vec::new(),
        });
        self
    }

    /// A route on the last source that forwards with hookgate's own Standard Webhooks
    /// signature made with `secret`.
    pub fn resigned_route(mut self, events: &str, to: impl Target, secret: &str) -> Self {
        self.last_source().routes.push(RouteBlock {
            name: None,
            events: events.to_owned(),
            upstream: to.target_url(),
            resign: Some(secret.to_owned()),
            max_concurrency: None,
            enrich: None,
            extra: Vec::new(),
        });
        self
    }

    /// Adds a source whose scheme and scheme keys are `scheme_toml` (for example
    /// `scheme = "stripe"\nsecrets = ["whsec_x"]`); routes added next belong to it.
    pub fn scheme_source(mut self, name: &str, path: &str, scheme_toml: &str) -> Self {
        self.sources.push(SourceBlock {
            name: name.to_owned(),
            path: path.to_owned(),
            secrets: Vec::new(),
            scheme_toml: Some(scheme_toml.to_owned()),
            queue: false,
            routes: Vec::new(),
        });
        self
    }

    pub fn named_route(mut self, name: &str, events: &str, to: impl Target) -> Self {
        self.last_source().routes.push(RouteBlock {
            name: Some(name.to_owned()),
            events: events.to_owned(),
            upstream: to.target_url(),
            resign: None,
            max_concurrency: None,
            enrich: None,
            extra: Vec::new(),
        });
        self
    }

    /// Replaces the last source's secrets.
    pub fn secrets(mut self, secrets: &[&str]) -> Self {
        self.last_source().secrets = secrets.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds another source, signed with `SECRET`; routes added next belong to it.
    pub fn source(mut self, name: &str, path: &str) -> Self {
        self.sources.push(SourceBlock {
            name: name.to_owned(),
            path: path.to_owned(),
            secrets: vec![SECRET.to_owned()],
            scheme_toml: None,
            queue: false,
            routes: Vec::new(),
        });
        self
    }

    /// Any key in any table, its value written as TOML (`"1s"` with the quotes, `5`):
    /// `.set("limits", "idle_timeout", "\"1s\"")`. `admin.listen` replaces the default.
    pub fn set(mut self, table: &'static str, key: &'static str, toml_value: &str) -> Self {
        self.extra.push((table, key, toml_value.to_owned()));
        self
    }

    /// The last source's `allow_ips`.
    pub fn allow_ips(mut self, nets: &[&str]) -> Self {
        let line = format!("allow_ips = {nets:?}");
        self.source_extra.push((self.sources.len() - 1, line));
        self
    }

    /// Any key on the last source, its value written as TOML:
    /// `.source_option("event_type", r#"{ header = "x-event-type" }"#)`.
    pub fn source_option(mut self, key: &str, toml: &str) -> Self {
        let line = format!("{key} = {toml}");
        self.source_extra.push((self.sources.len() - 1, line));
        self
    }

    /// The `extra` lines of `table`.
    fn extra_lines(&self, f: &mut fmt::Formatter<'_>, table: &str) -> fmt::Result {
        for (_, key, value) in self.extra.iter().filter(|(t, _, _)| *t == table) {
            writeln!(f, "{key} = {value}")?;
        }
        Ok(())
    }

    /// `delivery = "queue"` on the last source.
    pub fn queued(mut self) -> Self {
        self.last_source().queue = true;
        self
    }

    /// `enrich` on the last route, its TOML inline table as written:
    /// `{ provider = "openai", api_key = "...", api_base = "..." }`.
    pub fn enrich(mut self, toml: &str) -> Self {
        self.last_source()
            .routes
            .last_mut()
            .expect("a route to enrich")
            .enrich = Some(toml.to_owned());
        self
    }

    /// Any key on the last route, its value written as TOML:
    /// `.route_option("match", r#"[{ pointer = "/data/tenant", equals = "acme" }]"#)`.
    /// `upstreams` replaces the route's `upstream`.
    pub fn route_option(mut self, key: &str, toml: &str) -> Self {
        self.last_source()
            .routes
            .last_mut()
            .expect("a route to set a key on")
            .extra
            .push(format!("{key} = {toml}"));
        self
    }

    /// `max_concurrency` on the last route.
    pub fn max_concurrency(mut self, limit: u32) -> Self {
        self.last_source()
            .routes
            .last_mut()
            .expect("a route to limit")
            .max_concurrency = Some(limit);
        self
    }

    /// A `[queue]` key with its TOML value as written: `("workers", "4")`,
    /// `("backoff", r#"{ initial = "50ms", max = "1s", jitter = false }"#)`.
    /// A key given twice keeps the later value.
    pub fn queue_option(mut self, key: &'static str, toml: &str) -> Self {
        self.queue.retain(|(k, _)| *k != key);
        self.queue.push((key, toml.to_owned()));
        self
    }

    /// `server.shutdown_timeout`, a humantime duration.
    pub fn shutdown_timeout(mut self, timeout: &str) -> Self {
        self.server
            .push(("shutdown_timeout", format!("{timeout:?}")));
        self
    }

    /// `admin.token`.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin.push(("token", format!("{token:?}")));
        self
    }

    pub fn tls(mut self, cert: &DevCert) -> Self {
        self.tls = Some((cert.cert.clone(), cert.key.clone()));
        self
    }

    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.limits.push(("max_body_bytes", bytes.to_string()));
        self
    }

    /// A humantime duration such as `"1s"`.
    pub fn upstream_timeout(mut self, timeout: &str) -> Self {
        self.limits.retain(|(key, _)| *key != "upstream_timeout");
        self.limits
            .push(("upstream_timeout", format!("{timeout:?}")));
        self
    }

    pub fn rate_limit(mut self, requests_per_second: f64, burst: u32) -> Self {
        self.rate_limit = (requests_per_second, burst);
        self
    }

    /// `dedupe.ttl`, a humantime duration such as `"1h"`.
    pub fn dedupe_ttl(mut self, ttl: &str) -> Self {
        self.dedupe.push(("ttl", format!("{ttl:?}")));
        self
    }

    /// The store a shared test body runs against: nothing for memory, `[store]` for Redis.
    pub fn store(self, store: &TestStore) -> Self {
        match store {
            TestStore::Memory => self,
            TestStore::Redis(redis) => self.redis(redis),
            TestStore::SharedCluster { nodes, key_prefix } => {
                let cluster = self.store_option("key_prefix", key_prefix);
                cluster.cluster_nodes(nodes)
            }
            TestStore::Postgres { url, schema } => self.postgres(url, schema),
        }
    }

    /// `[store] postgres_url` pointing at `url`, in `schema`.
    pub fn postgres(mut self, url: &str, schema: &str) -> Self {
        self.store.push(("postgres_url", format!("{url:?}")));
        self.store.push(("schema", format!("{schema:?}")));
        self
    }

    /// `[store] redis_url` pointing at `redis`.
    pub fn redis(mut self, redis: &RedisServer) -> Self {
        self.store.push(("redis_url", format!("{:?}", redis.url())));
        self
    }

    /// `[store] cluster` listing every node of `cluster`.
    pub fn redis_cluster(self, cluster: &RedisCluster) -> Self {
        self.cluster_nodes(&cluster.urls())
    }

    /// `[store] cluster` listing the nodes at `urls`.
    fn cluster_nodes(mut self, urls: &[String]) -> Self {
        self.store.push(("cluster", format!("{urls:?}")));
        self
    }

    /// Another `[store]` key with a string value: `key_prefix`, `on_error`, `timeout`,
    /// `connect_timeout`.
    pub fn store_option(mut self, key: &'static str, value: &str) -> Self {
        self.store.push((key, format!("{value:?}")));
        self
    }

    /// A store that gives up quickly: each call (its connection included) within
    /// 300 ms + 300 ms, for tests where Redis stops or stalls.
    pub fn impatient_store(self) -> Self {
        self.store_option("timeout", "300ms")
            .store_option("connect_timeout", "300ms")
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[server]\nlisten = \"127.0.0.1:0\"")?;
        self.extra_lines(f, "server")?;
        for (key, value) in &self.server {
            writeln!(f, "{key} = {value}")?;
        }
        if let Some((cert, key)) = &self.tls {
            writeln!(
                f,
                "[server.tls]\ncert = {:?}\nkey = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            )?;
            self.extra_lines(f, "server.tls")?;
        }
        writeln!(f, "[admin]")?;
        if !self
            .extra
            .iter()
            .any(|(t, k, _)| *t == "admin" && *k == "listen")
        {
            writeln!(f, "listen = \"127.0.0.1:0\"")?;
        }
        self.extra_lines(f, "admin")?;
        for (key, value) in &self.admin {
            writeln!(f, "{key} = {value}")?;
        }
        if !self.queue.is_empty() {
            writeln!(f, "[queue]")?;
            for (key, value) in &self.queue {
                writeln!(f, "{key} = {value}")?;
            }
        }
        writeln!(f, "[limits]")?;
        self.extra_lines(f, "limits")?;
        for (key, value) in &self.limits {
            writeln!(f, "{key} = {value}")?;
        }
        writeln!(f, "[dedupe]")?;
        self.extra_lines(f, "dedupe")?;
        for (key, value) in &self.dedupe {
            writeln!(f, "{key} = {value}")?;
        }
        let (rps, burst) = self.rate_limit;
        writeln!(
            f,
            "[rate_limit]\nrequests_per_second = {rps:?}\nburst = {burst}"
        )?;
        self.extra_lines(f, "rate_limit")?;
        let known = [
            "server",
            "server.tls",
            "admin",
            "limits",
            "dedupe",
            "rate_limit",
        ];
        let mut others: Vec<&str> = self
            .extra
            .iter()
            .map(|(t, _, _)| *t)
            .filter(|t| !known.contains(t))
            .collect();
        others.dedup();
        for table in others {
            writeln!(f, "[{table}]")?;
            self.extra_lines(f, table)?;
        }
        if !self.store.is_empty() {
            writeln!(f, "[store]")?;
            for (key, value) in &self.store {
                writeln!(f, "{key} = {value}")?;
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            writeln!(
                f,
                "\n[[sources]]\nname = {:?}\npath = {:?}",
                source.name, source.path
            )?;
            match &source.scheme_toml {
                Some(toml) => writeln!(f, "{toml}")?,
                None => writeln!(
                    f,
                    "scheme = \"standard-webhooks\"\nsecrets = {:?}",
                    source.secrets
                )?,
            }
            for (_, line) in self.source_extra.iter().filter(|(at, _)| *at == i) {
                writeln!(f, "{line}")?;
            }
            if source.queue {
                writeln!(f, "delivery = \"queue\"")?;
            }
            for route in &source.routes {
                writeln!(f, "[[sources.routes]]")?;
                if let Some(name) = &route.name {
                    writeln!(f, "name = {name:?}")?;
                }
                writeln!(f, "events = [{:?}]", route.events)?;
                if !route
                    .extra
                    .iter()
                    .any(|line| line.starts_with("upstreams ="))
                {
                    writeln!(f, "upstream = {:?}", route.upstream)?;
                }
                for line in &route.extra {
                    writeln!(f, "{line}")?;
                }
                if let Some(secret) = &route.resign {
                    writeln!(f, "resign = {{ secret = {secret:?} }}")?;
                }
                if let Some(limit) = route.max_concurrency {
                    writeln!(f, "max_concurrency = {limit}")?;
                }
                if let Some(enrich) = &route.enrich {
                    writeln!(f, "enrich = {enrich}")?;
                }
            }
        }
        Ok(())
    }
}

/// An upstream nobody answers (the discard port): for configs that are only checked.
pub const NOWHERE: &str = "http://127.0.0.1:9/hooks";

/// The smallest `[[sources]]` block hookgate accepts, for tests that write a config file
/// by hand: `name` on `path`, verified as `scheme_keys` say (`scheme = "..."` and the keys
/// that scheme reads, as TOML lines), with one route for `events` to `upstream`.
pub fn source_block(
    name: &str,
    path: &str,
    scheme_keys: &str,
    events: &[&str],
    upstream: &str,
) -> String {
    format!(
        "[[sources]]\nname = {name:?}\npath = {path:?}\n{scheme_keys}\n\n\
         [[sources.routes]]\nevents = {events:?}\nupstream = {upstream:?}\n"
    )
}

/// A config file, `hookgate.toml`, in a temp dir of its own (removed with this).
pub struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    pub fn new(config: impl fmt::Display) -> ConfigFile {
        let file = ConfigFile {
            dir: tempfile::tempdir().expect("a temp dir"),
        };
        file.write(config);
        file
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("hookgate.toml")
    }

    /// The temp dir, for other files a test keeps beside the config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the file's content the way a reload must cope with (`write_atomically`).
    pub fn write(&self, config: impl fmt::Display) {
        write_atomically(&self.path(), &config.to_string());
    }
}

/// Renames a new file over the old one, as editors and config managers do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the file");
    std::fs::rename(&tmp, path).expect("replace the file");
}
