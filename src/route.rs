//! Routes: which upstream receives an event. The first applicable route wins: its event
//! type matches one of its patterns and every one of its `match` conditions holds
//! (`condition`: tests on the verified body, never on headers).
//!
//! Patterns are an exact type (`response.completed`), a prefix ending in `*`
//! (`batch.*` matches `batch.completed`, not `batch`), or `*` alone for everything.
//! Nothing else is a wildcard, so a typo cannot silently widen a route.

use std::fmt;
use std::num::NonZeroU32;

use http::Uri;

use crate::verify::standard_webhooks::Resigner;

pub mod condition;

pub use condition::{Condition, Payload, Test};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Exact(String),
    Prefix(String),
    Any,
}

impl EventPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an event pattern cannot be empty".to_owned());
        }
        let (stem, wildcard) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.contains('*') {
            return Err(format!(
                "{text:?}: '*' is only allowed at the end of a pattern"
            ));
        }
        Ok(match (stem.is_empty(), wildcard) {
            (true, _) => EventPattern::Any,
            (false, true) => EventPattern::Prefix(stem.to_owned()),
            (false, false) => EventPattern::Exact(stem.to_owned()),
        })
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Exact(exact) => event_type == exact,
            EventPattern::Prefix(prefix) => {
                event_type.len() > prefix.len() && event_type.starts_with(prefix.as_str())
            }
            EventPattern::Any => true,
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventPattern::Exact(exact) => f.write_str(exact),
            EventPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            EventPattern::Any => f.write_str("*"),
        }
    }
}

/// `breaker = { failures, cooldown }`: open after `failures` failed attempts in a row
/// to one upstream, for `cooldown`; then one probe decides (`breaker::Breaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failures: NonZeroU32,
    pub cooldown: std::time::Duration,
}

/// `rate = { per_second, burst }`: queue mode, deliveries started per second to each
/// upstream of the route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePolicy {
    pub per_second: f64,
    pub burst: NonZeroU32,
}

/// One upstream of a route. A route with several (fan-out, queue mode only) gives each
/// its own delivery, whose record names the route `<route>/<key>`: that name is how
/// the queue, the workers, `deliveries list` and the metrics tell the copies apart.
#[derive(Debug, Clone)]
pub struct RouteUpstream {
    /// Its `name`, else its index in `upstreams` (`"0"` for a route's one `upstream`):
    /// the `upstream` label of its breaker metrics. Never the URL.
    pub key: String,
    pub uri: Uri,
    /// The route name its deliveries are stored under: the route's own name when it has
    /// one upstream, else `<route>/<key>`.
    pub delivery_route: String,
}

#[derive(Debug, Clone)]
pub struct Route {
    name: String,
    /// `<source>/<route name>`: unique across the config, used as the metric label.
    label: String,
    patterns: Vec<EventPattern>,
    /// All must hold (on top of a pattern) for the route to apply.
    conditions: Vec<Condition>,
    /// The first of `upstreams`: the one a proxy-mode route forwards to.
    upstream: Uri,
    /// At least one; more only in queue mode (fan-out).
    upstreams: Vec<RouteUpstream>,
    /// The label of the route this one was cut from (`copies`); else `label`.
    base_label: String,
    /// hookgate's own Standard Webhooks signature for this upstream, if configured.
    resign: Option<Resigner>,
    /// Queue mode: deliveries to this route at once, per instance; `None` = no limit.
    max_concurrency: Option<NonZeroU32>,
    /// Per upstream.
    breaker: Option<BreakerPolicy>,
    /// Queue mode, per upstream.
    rate: Option<RatePolicy>,
}

impl Route {
    /// Errors name the key relative to the route (`events[1] ...`, `upstream ...`).
    pub fn new(
        source: &str,
        name: &str,
        events: &[String],
        upstream: &str,
    ) -> Result<Self, String> {
        if events.is_empty() {
            return Err("events is empty; use [\"*\"] to match every event type".to_owned());
        }
        let patterns = events
            .iter()
            .enumerate()
            .map(|(i, e)| EventPattern::parse(e).map_err(|msg| format!("events[{i}] {msg}")))
            .collect::<Result<Vec<_>, _>>()?;
        let upstream = parse_upstream(upstream)
            .map_err(|msg| format!("upstream {:?} {msg}", shown_upstream(upstream)))?;
        let label = format!("{source}/{name}");
        Ok(Route {
            name: name.to_owned(),
            base_label: label.clone(),
            label,
            patterns,
            conditions: Vec::new(),
            upstreams: vec![RouteUpstream {
                key: "0".to_owned(),
                uri: upstream.clone(),
                delivery_route: name.to_owned(),
            }],
            upstream,
            resign: None,
            max_concurrency: None,
            breaker: None,
            rate: None,
        })
    }

    /// Replaces the route's upstreams (`(name, URL)`, at least one; the URLs checked by
    /// `parse_upstream`). With more than one, each gets its own deliveries.
    pub fn with_upstreams(mut self, upstreams: Vec<(Option<String>, Uri)>) -> Self {
        let fanout = upstreams.len() > 1;
        self.upstreams = upstreams
            .into_iter()
            .enumerate()
            .map(|(i, (name, uri))| {
                let key = name.unwrap_or_else(|| i.to_string());
                RouteUpstream {
                    delivery_route: if fanout {
                        format!("{}/{key}", self.name)
                    } else {
                        self.name.clone()
                    },
                    key,
                    uri,
                }
            })
            .collect();
        if let Some(first) = self.upstreams.first() {
            self.upstream = first.uri.clone();
        }
        self
    }

    pub fn upstreams(&self) -> &[RouteUpstream] {
        &self.upstreams
    }

    /// The route as each upstream's deliveries see it: for a fan-out route one route
    /// per upstream, named and labelled `<route>/<key>`, with that upstream alone; else
    /// the route itself.
    pub fn copies(&self) -> Vec<Route> {
        if self.upstreams.len() == 1 {
            return vec![self.clone()];
        }
        self.upstreams
            .iter()
            .map(|upstream| {
                let mut copy = self.clone();
                copy.label = format!("{}/{}", self.base_label, upstream.key);
                copy.name = upstream.delivery_route.clone();
                copy.upstream = upstream.uri.clone();
                copy.upstreams = vec![upstream.clone()];
                copy
            })
            .collect()
    }

    /// The key of the one upstream this route (or copy) delivers to (`RouteUpstream::key`).
    pub fn upstream_key(&self) -> &str {
        self.upstreams.first().map_or("0", |u| u.key.as_str())
    }

    /// The label of the route as configured (a copy's is its route's): the `route` label
    /// of per-upstream metrics such as the breaker's.
    pub fn base_label(&self) -> &str {
        &self.base_label
    }

    /// Forwards with hookgate's own signature (`resign = { secret = ... }`).
    pub fn with_resign(mut self, signer: Resigner) -> Self {
        self.resign = Some(signer);
        self
    }

    pub fn resign(&self) -> Option<&Resigner> {
        self.resign.as_ref()
    }

    pub fn with_max_concurrency(mut self, limit: Option<NonZeroU32>) -> Self {
        self.max_concurrency = limit;
        self
    }

    pub fn max_concurrency(&self) -> Option<NonZeroU32> {
        self.max_concurrency
    }

    pub fn with_breaker(mut self, breaker: Option<BreakerPolicy>) -> Self {
        self.breaker = breaker;
        self
    }

    pub fn breaker(&self) -> Option<BreakerPolicy> {
        self.breaker
    }

    pub fn with_rate(mut self, rate: Option<RatePolicy>) -> Self {
        self.rate = rate;
        self
    }

    pub fn rate(&self) -> Option<RatePolicy> {
        self.rate
    }

    pub fn with_conditions(mut self, conditions: Vec<Condition>) -> Self {
        self.conditions = conditions;
        self
    }

    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn upstream(&self) -> &Uri {
        &self.upstream
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// Whether this route takes the event: a pattern matches its type and every
    /// condition holds for its body.
    pub fn applies(&self, event_type: &str, payload: &Payload<'_>) -> bool {
        self.matches(event_type) && self.conditions.iter().all(|c| c.holds(payload))
    }

    pub fn patterns_display(&self) -> String {
        let parts: Vec<String> = self.patterns.iter().map(ToString::to_string).collect();
        format!("[{}]", parts.join(", "))
    }
}

/// An upstream URL: http or https, with a host.
pub fn parse_upstream(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("is not an http:// or https:// URL".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    // hyper sends no `Authorization` for them: the backend got none, and `check` printed
    // the password.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("carries credentials (user:password@), which are never sent".to_owned());
    }
    // `http::Uri` takes any digits as a port: 99999 was accepted, then never connected.
    let written_port = uri
        .authority()
        .and_then(|a| a.as_str().rsplit_once(':'))
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if written_port && uri.port_u16().is_none() {
        return Err("has a port out of range (1-65535)".to_owned());
    }
    Ok(uri)
}

/// A URL as an error may show it: without the credentials it may carry. Up to the
/// last `@` of what could be its authority (a password may hold `@` or `/`; the URL
/// parsers take the last `@` before the path's query or fragment).
pub fn shown_upstream(text: &str) -> String {
    let Some(scheme) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let end = text[scheme..]
        .find(['?', '#'])
        .map_or(text.len(), |i| scheme + i);
    match text[scheme..end].rfind('@') {
        Some(at) => format!("{}…{}", &text[..scheme], &text[scheme + at..]),
        None => text.to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(routes: Vec<Route>) -> Self {
        Routes(routes)
    }

    /// The first route, in file order, that applies to the event (`Route::applies`),
    /// and its position (which indexes per-route state such as metrics). `body` is the
    /// verified body; it is parsed only if a route with conditions is reached.
    pub fn first_match(&self, event_type: &str, body: &[u8]) -> Option<(usize, &Route)> {
        let payload = Payload::new(body);
        self.0
            .iter()
            .enumerate()
            .find(|(_, route)| route.applies(event_type, &payload))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched<'r>(routes: &'r Routes, event_type: &str, body: &str) -> Option<&'r str> {
        routes
            .first_match(event_type, body.as_bytes())
            .map(|(_, route)| route.name())
    }

    fn route(name: &str, events: &[&str]) -> Route {
        let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        Route::new("src", name, &events, "http://127.0.0.1:9/x").unwrap()
    }

    #[test]
    fn exact_prefix_and_catch_all_match_as_documented() {
        assert!(
            EventPattern::parse("response.completed")
                .unwrap()
                .matches("response.completed")
        );
        assert!(
            !EventPattern::parse("response.completed")
                .unwrap()
                .matches("response.complete")
        );
        let batch = EventPattern::parse("batch.*").unwrap();
        assert!(batch.matches("batch.completed"));
        assert!(!batch.matches("batch."));
        assert!(!batch.matches("batch"));
        assert!(!batch.matches("batchy.completed"));
        assert!(EventPattern::parse("*").unwrap().matches("anything"));
    }

    #[test]
    fn a_star_anywhere_but_the_end_is_rejected() {
        assert!(EventPattern::parse("resp*.completed").is_err());
        assert!(EventPattern::parse("**").is_err());
        assert!(EventPattern::parse("").is_err());
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = Routes::new(vec![
            route("responses", &["response.completed", "response.failed"]),
            route("batch", &["batch.*"]),
            route("rest", &["*"]),
        ]);
        assert_eq!(matched(&routes, "response.failed", "{}"), Some("responses"));
        assert_eq!(matched(&routes, "batch.expired", "{}"), Some("batch"));
        assert_eq!(matched(&routes, "eval.run.succeeded", "{}"), Some("rest"));
    }

    #[test]
    fn no_match_without_a_catch_all() {
        let routes = Routes::new(vec![route("responses", &["response.*"])]);
        assert!(matched(&routes, "batch.completed", "{}").is_none());
    }

    #[test]
    fn a_route_whose_conditions_fail_gives_way_to_the_next_applicable_one() {
        let tenant = |value: &str| {
            Condition::new(
                crate::event::JsonPointer::parse("/data/tenant").unwrap(),
                Test::Equals(serde_json::json!(value)),
            )
        };
        let routes = Routes::new(vec![
            route("acme", &["response.*"]).with_conditions(vec![tenant("acme")]),
            route("globex", &["*"]).with_conditions(vec![tenant("globex")]),
            route("rest", &["response.*"]),
        ]);
        let body = |t: &str| format!(r#"{{"data":{{"tenant":"{t}"}}}}"#);
        assert_eq!(
            matched(&routes, "response.completed", &body("acme")),
            Some("acme")
        );
        assert_eq!(
            matched(&routes, "response.completed", &body("globex")),
            Some("globex")
        );
        assert_eq!(matched(&routes, "batch.completed", &body("acme")), None);
        assert_eq!(
            matched(&routes, "response.completed", &body("initech")),
            Some("rest")
        );
        assert_eq!(
            matched(&routes, "response.completed", "not json"),
            Some("rest")
        );
    }

    #[test]
    fn a_fanout_route_is_cut_into_one_copy_per_upstream() {
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        let route = route("batches", &["batch.*"]).with_upstreams(vec![
            (None, uri("http://billing/")),
            (Some("audit".to_owned()), uri("http://audit/")),
        ]);
        let names: Vec<&str> = route
            .upstreams()
            .iter()
            .map(|u| u.delivery_route.as_str())
            .collect();
        assert_eq!(names, ["batches/0", "batches/audit"]);
        let copies = route.copies();
        assert_eq!(copies[1].name(), "batches/audit");
        assert_eq!(copies[1].label(), "src/batches/audit");
        assert_eq!(copies[1].base_label(), "src/batches");
        assert_eq!(copies[1].upstream_key(), "audit");
        assert_eq!(copies[1].upstream(), &uri("http://audit/"));
        let single = route
            .clone()
            .with_upstreams(vec![(None, uri("http://one/"))]);
        assert_eq!(single.copies()[0].name(), "batches");
        assert_eq!(single.upstream_key(), "0");
    }

    #[test]
    fn the_label_is_qualified_by_the_source() {
        assert_eq!(route("responses", &["*"]).label(), "src/responses");
    }

    #[test]
    fn upstreams_must_be_http_urls_with_a_host() {
        let events = vec!["*".to_owned()];
        assert!(Route::new("s", "r", &events, "https://backend.internal/hooks").is_ok());
        assert!(
            Route::new("s", "r", &events, "ftp://x/y")
                .unwrap_err()
                .contains("http")
        );
        assert!(Route::new("s", "r", &events, "/relative").is_err());
        assert!(Route::new("s", "r", &events, "not a url").is_err());
        // Credentials hyper would never send, shown without them; a port out of range.
        let e = Route::new("s", "r", &events, "http://u:pw@127.0.0.1:9/auth").unwrap_err();
        assert!(e.contains("credentials") && !e.contains("pw"), "{e}");
        for url in [
            "http://u:p@ss@h/x",
            "http://u:p/ss@h/x",
            "http://u:pss@h/x?a=@b",
        ] {
            let shown = shown_upstream(url);
            assert!(!shown.contains("ss"), "{url}: {shown}");
            assert!(shown.starts_with("http://…@"), "{url}: {shown}");
        }
        assert_eq!(shown_upstream("http://h/x?a=@b"), "http://h/x?a=@b");
        let e = Route::new("s", "r", &events, "http://127.0.0.1:99999/x").unwrap_err();
        assert!(e.contains("port"), "{e}");
        assert!(Route::new("s", "r", &events, "http://127.0.0.1:65535/x").is_ok());
        assert!(
            Route::new("s", "r", &[], "http://x/")
                .unwrap_err()
                .contains("events")
        );
    }
}
