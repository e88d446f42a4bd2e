//! `Settings::summary`: the one-screen description `hookgate check` prints and `serve`
//! logs at start. It shows where each setting ended up, never a secret: tokens, Redis
//! passwords and keys stay out, verifiers describe themselves (`Verifier::describe`).

use super::duration;
use super::file::{ContentEncoding, DeliveryMode, EnrichProvider};
use super::settings::{EnrichSettings, HTTP2_RESET_WINDOW, Settings, StoreBackend};
use crate::event::KeyBinding;

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
        // The OTLP exporter trusts what the upstreams trust.
        let _ = writeln!(s, "upstream TLS (and OTLP): {}", self.upstream_tls);
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
            StoreBackend::Postgres(pg) => format!(
                "{} (pool {}, timeout {}, on_error = \"{}\"; rate limits in memory per instance)",
                pg.target(),
                pg.pool_size,
                humantime::format_duration(pg.timeout),
                self.store.on_error,
            ),
        };
        let _ = writeln!(
            s,
            "store:  {store}; dedupe ttl {}, in-flight {}",
            duration::written(self.dedupe.ttl),
            duration::written(self.dedupe.in_flight_ttl),
        );
        let telemetry = match &self.telemetry {
            None => "off (no [telemetry])".to_owned(),
            Some(t) => format!(
                "OTLP/HTTP to {} as {:?}, sampling {}% of new traces, incoming traceparent {}{}; \
                 export every {}, timeout {}, at most {} spans queued",
                t.traces_url,
                t.service_name,
                // Rounded: 0.07 printed 7.000000000000001.
                (t.sample_ratio * 1e6).round() / 1e4,
                if t.trust_incoming_traceparent {
                    "continued"
                } else {
                    "linked (a new trace)"
                },
                if t.headers.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = t.headers.iter().map(|(n, _)| n.as_str()).collect();
                    format!(", headers {} (values hidden)", names.join(" "))
                },
                duration::written(t.export_interval),
                duration::written(t.export_timeout),
                t.max_queued_spans,
            ),
        };
        let _ = writeln!(s, "telemetry: {telemetry}");
        if let Some(queue) = &self.queue {
            let durability = match self.store.backend {
                StoreBackend::Memory => "in memory: NOT durable, lost on restart",
                StoreBackend::Redis(_) if queue.partitions > 1 => &format!(
                    "Redis Streams in {} partitions, shared by every instance",
                    queue.partitions
                ),
                StoreBackend::Redis(_) => "Redis Streams, shared by every instance",
                StoreBackend::Postgres(_) => "PostgreSQL tables, shared by every instance",
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
                DeliveryMode::Proxy => "proxy",
                DeliveryMode::Queue => "queue",
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
                let fanout = route.upstreams().len() > 1;
                let _ = writeln!(
                    s,
                    "    route {:<12} {:<40} -> {}{limit}{}",
                    route.name(),
                    route.patterns_display(),
                    if fanout {
                        format!("fan-out to {} upstreams", route.upstreams().len())
                    } else {
                        uri_shown(route.upstream())
                    },
                    if route.resign().is_some() {
                        " (re-signed: standard-webhooks)"
                    } else {
                        ""
                    }
                );
                if fanout {
                    for upstream in route.upstreams() {
                        let _ = writeln!(
                            s,
                            "      upstream {} -> {} (deliveries listed as route {})",
                            upstream.key,
                            uri_shown(&upstream.uri),
                            upstream.delivery_route
                        );
                    }
                }
                if let Some(breaker) = route.breaker() {
                    let _ = writeln!(
                        s,
                        "      breaker: open after {} failed attempts in a row to an upstream, for {} (per instance)",
                        breaker.failures,
                        duration::written(breaker.cooldown)
                    );
                }
                if let Some(rate) = route.rate() {
                    let _ = writeln!(
                        s,
                        "      rate: {} deliveries started per second to each upstream, burst {}",
                        rate.per_second, rate.burst
                    );
                }
                if !route.conditions().is_empty() {
                    let conditions: Vec<String> =
                        route.conditions().iter().map(ToString::to_string).collect();
                    let _ = writeln!(s, "      match {}", conditions.join(" and "));
                }
                if let Some(enrich) = source.enrich.get(route.name()) {
                    let _ = writeln!(s, "      {}", enrich_line(enrich));
                }
            }
        }
        s
    }
}

/// How a route's `enrich` reads in `check`: where the objects come from, never the key.
fn enrich_line(enrich: &EnrichSettings) -> String {
    let provider = match enrich.provider {
        EnrichProvider::Openai => "openai",
    };
    let mut line = format!(
        "enrich {provider}: objects fetched from {} before the first attempt (timeout {}",
        enrich.api_base,
        duration::written(enrich.timeout)
    );
    if let Some(organization) = &enrich.organization {
        line.push_str(&format!(", organization {organization}"));
    }
    if let Some(project) = &enrich.project {
        line.push_str(&format!(", project {project}"));
    }
    line.push_str("; API key not shown)");
    line
}

/// An upstream's URL without its query: a backend that authenticates by a token in the
/// query (`?token=...`) had it printed by `hookgate check` and the console, whose summary
/// holds no secrets. Its parameters' names stay, to tell the URLs apart.
fn uri_shown(uri: &http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    // A part without `=` may be the token itself (`?s3cr3t`): shown as `…` alone.
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=…"),
            None => "…".to_owned(),
        })
        .collect();
    let whole = uri.to_string();
    let before = whole
        .split_once('?')
        .map_or(whole.as_str(), |(before, _)| before);
    format!("{before}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_query_shows_its_names_only() {
        let shown = |text: &str| uri_shown(&text.parse().unwrap());
        assert_eq!(
            shown("http://10.0.0.5:8080/hooks?token=QUERYSECRET&v=2"),
            "http://10.0.0.5:8080/hooks?token=…&v=…"
        );
        assert_eq!(shown("https://b.example/in"), "https://b.example/in");
        assert_eq!(shown("http://b.example/in?s3cr3t"), "http://b.example/in?…");
    }
}
