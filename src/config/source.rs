//! From a `[[sources]]` section to a `Source`: its scheme's verifier, where the event
//! type and the dedupe key come from, the headers it reads, its routes, and warnings
//! about its secrets and its provider's event types.
//!
//! The scheme reads its own keys (`verify::Scheme::options`) and refuses the ones it
//! does not read: a silently ignored `encoding` is a security bug waiting to happen. Every
//! error names its key path (`sources[1].routes[0].upstream`) for `ConfigError` to locate.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;

use super::error::Invalid;
use super::file::{
    self, COMMON_SOURCE_KEYS, ContentEncoding, DeliveryMode, FieldSpec, SecretEntry,
};
use super::name::check_name;
use super::settings::{EnrichSettings, Source};
use crate::event::{Field, JsonPointer, KeyBinding};
use crate::route::{EventPattern, Route, Routes};
use crate::verify::{
    self, KeyError, SCHEMES, Scheme, SecretText, Verifier, parse_header_name,
    standard_webhooks::Resigner,
};

/// A secret expiring within this long is warned about by `check` and at start-up.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The sources, and warnings about them (key paths, without the file).
/// Sources that verify with one secret: a signature does not cover the path, so a
/// request captured for one is verified by the other too, which deduplicates it under
/// its own key: it is forwarded once per source.
fn shared_secrets(files: &[file::Source]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, a) in files.iter().enumerate() {
        for (j, b) in files.iter().enumerate().skip(i + 1) {
            let shared = a.secrets.iter().any(|x| {
                b.secrets
                    .iter()
                    .any(|y| x.secret.expose() == y.secret.expose())
            });
            if shared {
                warnings.push(format!(
                    "sources[{i}] ({:?}) and sources[{j}] ({:?}) share a secret: a request \
                     captured for one is verified by the other too and forwarded once by \
                     each; give each source its own secret",
                    a.name, b.name
                ));
            }
        }
    }
    warnings
}

pub(super) fn sources(files: &[file::Source]) -> Result<(Vec<Source>, Vec<String>), Invalid> {
    let now = SystemTime::now();
    let mut warnings = Vec::new();
    let mut names = HashSet::new();
    let mut paths: Vec<(&str, usize)> = Vec::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let key = format!("sources[{i}]");
        check_name(&format!("{key}.name"), &file.name)?;
        if !names.insert(file.name.as_str()) {
            return Err(Invalid::at(
                format!("{key}.name"),
                format!("{key}.name {:?} is already used", file.name),
            ));
        }
        if !file.path.starts_with('/') {
            return Err(Invalid::at(
                format!("{key}.path"),
                format!("{key}.path {:?} must start with '/'", file.path),
            ));
        }
        // Requests are matched on the path alone: a source at "/q?x=1" was unreachable.
        if file.path.contains(['?', '#']) || file.path.contains(char::is_whitespace) {
            return Err(Invalid::at(
                format!("{key}.path"),
                format!(
                    "{key}.path {:?} must be a path alone, without a query, fragment or spaces",
                    file.path
                ),
            ));
        }
        if let Some((_, j)) = paths.iter().find(|(p, _)| *p == file.path) {
            return Err(Invalid::at(
                format!("{key}.path"),
                format!("{key}.path {:?} is already used by sources[{j}]", file.path),
            ));
        }
        paths.push((&file.path, i));
        let built = verification(file, now).map_err(|e| e.under(&key))?;
        warnings.extend(built.warnings.iter().map(|w| format!("{key}.{w}")));
        if let Some(provider) = &built.provider {
            let events: Vec<&[String]> = file.routes.iter().map(|r| r.events.as_slice()).collect();
            let typos = crate::provider::typos(provider, &events).map_err(|e| {
                Invalid::at(format!("{key}.provider"), format!("{key}.provider {e}"))
            })?;
            warnings.extend(typos.iter().map(|w| format!("{key}.{w}")));
            for (j, route) in file.routes.iter().enumerate() {
                for (c, condition) in route.conditions.iter().enumerate() {
                    let Ok(pointer) = JsonPointer::parse(&condition.pointer) else {
                        continue; // reported with the routes
                    };
                    if let Some(why) =
                        crate::provider::absent_field(provider, &route.events, &pointer)
                    {
                        warnings.push(format!(
                            "{key}.routes[{j}].match[{c}].pointer {:?} {why}",
                            condition.pointer
                        ));
                    }
                }
            }
        }
        if file.content_encoding == ContentEncoding::Pass
            && let Some(Field::Json(pointer)) = [&built.event_type, &built.dedupe_key]
                .into_iter()
                .find(|field| matches!(field, Field::Json(_)))
        {
            return Err(Invalid::at(
                format!("{key}.content_encoding"),
                format!(
                    "{key}.content_encoding = \"pass\" needs the event type and the dedupe key in \
                     headers: hookgate does not decompress bodies, so it cannot read {pointer} \
                     from an encoded one"
                ),
            ));
        }
        let (routes, enrich) = routes(&key, file)?;
        // OpenAI's SDK takes such a secret as raw bytes, as hookgate signs with it; the
        // Standard Webhooks libraries base64-decode every secret, and refuse each delivery.
        for (r, route) in file.routes.iter().enumerate() {
            if let Some(resign) = &route.resign
                && !resign.secret.expose().starts_with("whsec_")
                && !resign.secret.expose().starts_with("whsk_")
            {
                warnings.push(format!(
                    "{key}.routes[{r}].resign.secret is not whsec_<base64>: hookgate signs \
                     with its raw bytes, as OpenAI's SDK reads such a secret, but the Standard \
                     Webhooks libraries base64-decode every secret and refuse what it signs; \
                     give the backend and hookgate a whsec_ secret"
                ));
            }
        }
        // A stored delivery names its route; an unnamed route is named by its position,
        // which the next edit to the list may give to another route: a retry waiting in
        // the queue would then go to that route's backend.
        if file.delivery == DeliveryMode::Queue {
            for (r, route) in file.routes.iter().enumerate() {
                if route.name.is_none() {
                    warnings.push(format!(
                        "{key}.routes[{r}] has no name: a queued delivery is addressed to its \
                         route by name, and an unnamed route's is its position (\"{r}\"), so \
                         adding, removing or reordering routes before it (by a reload, a \
                         restart or a rolling deploy) sends the deliveries queued for it to \
                         the route that takes its place; give it a name"
                    ));
                }
            }
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
            routes,
            allow_ips: file.allow_ips.clone(),
            delivery: file.delivery,
            enrich,
        });
    }
    warnings.extend(shared_secrets(files));
    Ok((out, warnings))
}

/// A source's verification, resolved from its `[[sources]]` section.
pub(super) struct SourceVerification {
    pub scheme: &'static str,
    pub verifier: Arc<dyn Verifier>,
    pub event_type: Field,
    pub dedupe_key: Field,
    /// The headers the scheme, the event type and the dedupe key read: each must come
    /// once, and reach the backend as it was verified.
    pub reads: Vec<HeaderName>,
    /// Whether the claim key must bind the dedupe key to the body.
    pub binding: KeyBinding,
    pub secrets: usize,
    /// The sender named by `provider`, for the schemes that read it.
    pub provider: Option<String>,
    /// Key paths relative to the source (`secrets[1] ...`); the caller adds the rest.
    pub warnings: Vec<String>,
}

/// The verifier of a `[[sources]]` section. Errors and warnings name the key relative to
/// the source (`encoding ...`, `secrets[1] ...`); `now` dates the warnings about
/// expiring secrets.
pub(super) fn verification(
    source: &file::Source,
    now: SystemTime,
) -> Result<SourceVerification, Invalid> {
    let scheme = verify::scheme(&source.scheme).map_err(|e| Invalid::at("scheme", e))?;
    let options = (scheme.options)(source.options.clone()).map_err(|e| refused(scheme, e))?;
    let secrets: Vec<SecretText<'_>> = source.secrets.iter().map(secret_text).collect();
    let built = options.build(&secrets).map_err(|e| refused(scheme, e))?;
    let event_type = match &source.event_type {
        Some(spec) => field("event_type", spec, TextIs::Pointer)?,
        None => built.event_type,
    };
    let dedupe_key = match (&source.dedupe_key, built.dedupe_key) {
        (Some(spec), _) => field("dedupe_key", spec, TextIs::Header)?,
        (None, Some(default)) => default,
        (None, None) => {
            return Err(Invalid::at(
                "dedupe_key",
                format!(
                    "dedupe_key is required: scheme {:?} has no delivery id of its own \
                     (set id_header, or dedupe_key = {{ json = \"/id\" }} or {{ header = \"...\" }})",
                    scheme.name
                ),
            ));
        }
    };
    let mut reads = built.headers;
    for field in [&event_type, &dedupe_key] {
        if let Field::Header(name) = field
            && !reads.contains(name)
        {
            reads.push(name.clone());
        }
    }
    let signed = |field: &Field| match field {
        Field::Json(_) => true, // every scheme signs the body
        Field::Header(name) => built.signed.contains(name),
    };
    let binding = if signed(&dedupe_key) && signed(&event_type) {
        KeyBinding::Id
    } else {
        KeyBinding::IdAndBody
    };
    Ok(SourceVerification {
        scheme: scheme.name,
        verifier: built.verifier,
        event_type,
        dedupe_key,
        reads,
        binding,
        secrets: source.secrets.len(),
        provider: options.provider().map(str::to_owned),
        warnings: secret_warnings(&source.secrets, now),
    })
}

fn secret_text(entry: &SecretEntry) -> SecretText<'_> {
    SecretText {
        text: entry.secret.expose(),
        not_after: entry.not_after,
    }
}

/// A scheme's refusal in the words of the config file: a key it does not read is named
/// with the keys it does.
fn refused(scheme: &Scheme, e: KeyError) -> Invalid {
    let Some(key) = e.key else {
        return Invalid::whole(e.message);
    };
    if !e.unknown {
        return Invalid::at(key, e.message);
    }
    let read_by_another = SCHEMES.iter().any(|s| (s.keys)().contains(&key.as_str()));
    let message = if read_by_another {
        format!(
            "{key} does not apply to scheme {:?} (its keys: {})",
            scheme.name,
            scheme_keys(scheme)
        )
    } else {
        format!(
            "{key} is unknown: every source takes {}; scheme {:?} also takes {}",
            COMMON_SOURCE_KEYS.join(", "),
            scheme.name,
            match (scheme.keys)() {
                [] => "nothing else".to_owned(),
                keys => keys.join(", "),
            }
        )
    };
    Invalid::at(key, message)
}

fn scheme_keys(scheme: &Scheme) -> String {
    let mut keys = vec!["secrets"];
    keys.extend((scheme.keys)());
    keys.join(", ")
}

/// How a plain string is read: `event_type = "/type"` is a pointer, `dedupe_key =
/// "webhook-id"` a header (the spelling each is most often written in).
#[derive(Clone, Copy)]
enum TextIs {
    Pointer,
    Header,
}

fn field(key: &str, spec: &FieldSpec, text_is: TextIs) -> Result<Field, Invalid> {
    let invalid = |message: String| Invalid::at(key, message);
    // The empty pointer names the whole document, never a string: every request was
    // refused 400 invalid_payload by a config `check` had passed.
    let empty = match (spec, text_is) {
        (FieldSpec::Json(pointer), _) => pointer.to_string().is_empty(),
        (FieldSpec::Text(text), TextIs::Pointer) => text.is_empty(),
        _ => false,
    };
    if empty {
        return Err(invalid(format!(
            "{key} is empty: write the JSON pointer of a string in the body, such as \"/type\""
        )));
    }
    match (spec, text_is) {
        (FieldSpec::Json(pointer), _) => Ok(Field::Json(pointer.clone())),
        (FieldSpec::Header(name), _) => Ok(Field::Header(name.clone())),
        (FieldSpec::Text(text), TextIs::Pointer) => {
            JsonPointer::parse(text).map(Field::Json).map_err(|e| {
                invalid(format!(
                    "{key} {text:?}: {e}; for a header write {key} = {{ header = {text:?} }}"
                ))
            })
        }
        (FieldSpec::Text(text), TextIs::Header) if text.starts_with('/') => Err(invalid(format!(
            "{key} {text:?}: a plain string names a header; for a JSON pointer write \
             {key} = {{ json = {text:?} }}"
        ))),
        (FieldSpec::Text(text), TextIs::Header) => parse_header_name(text)
            .map(Field::Header)
            .map_err(|e| invalid(format!("{key}: {e}"))),
    }
    .and_then(|field| match &field {
        Field::Header(name)
            if crate::dropped_headers::is_dropped(&name.as_str().replace('_', "-")) =>
        {
            Err(invalid(format!(
                "{key} names the header {name}, which hookgate drops or sets itself before \
                 forwarding: the backend would never see the value the delivery was routed \
                 or deduplicated on; name a header of the sender's own"
            )))
        }
        _ => Ok(field),
    })
}

/// Mistakes visible in the secrets themselves, and secrets about to expire.
fn secret_warnings(secrets: &[SecretEntry], now: SystemTime) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, entry) in secrets.iter().enumerate() {
        let text = entry.secret.expose();
        if let Some(prefix) = ["v1,", "v1a,", "v1=", "sha256=", "t="]
            .into_iter()
            .find(|p| text.starts_with(p))
        {
            warnings.push(format!(
                "secrets[{i}] starts with {prefix:?}, as signatures do: is a signature pasted instead of the secret?"
            ));
        }
        if text.trim() != text {
            warnings.push(format!(
                "secrets[{i}] has leading or trailing whitespace (a newline from an env file?); it is used as written"
            ));
        }
        if let Some(t) = entry.not_after {
            let when = humantime::format_rfc3339_seconds(t);
            match t.duration_since(now) {
                Err(_) => warnings.push(format!(
                    "secrets[{i}] is past its not_after ({when}) and is ignored; remove it"
                )),
                Ok(left) if left <= EXPIRY_WARNING => warnings.push(format!(
                    "secrets[{i}] stops being accepted in {} (not_after {when}); \
                     hookgate_verified_total{{secret=\"{i}\"}} shows whether the sender still uses it",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                )),
                Ok(_) => {}
            }
        }
    }
    if !secrets.is_empty() && secrets.iter().all(|e| e.not_after.is_some_and(|t| t < now)) {
        // Prefixed with the source's key like the others: "sources[0].secrets: ...".
        warnings
            .push("secrets: every one is past its not_after: every request will be refused".into());
    }
    warnings
}

/// A source's routes, and the `enrich` of those that have it (by route name).
type BuiltRoutes = (Routes, HashMap<String, Arc<EnrichSettings>>);

fn routes(source_key: &str, file: &file::Source) -> Result<BuiltRoutes, Invalid> {
    if file.routes.is_empty() {
        return Err(Invalid::at(
            source_key,
            format!(
                "{source_key} ({:?}) has no [[sources.routes]]; add at least one (events = [\"*\"] catches all)",
                file.name
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(file.routes.len());
    let mut enrich = HashMap::new();
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
            return Err(Invalid::at(
                format!("{key}.name"),
                format!("{key}.name {name:?} is already used in this source"),
            ));
        }
        let max_concurrency = match (route.max_concurrency, file.delivery) {
            (None, _) => None,
            (Some(0), _) => {
                return Err(Invalid::at(
                    format!("{key}.max_concurrency"),
                    format!("{key}.max_concurrency must be at least 1"),
                ));
            }
            (Some(n), DeliveryMode::Queue) => NonZeroU32::new(n),
            (Some(_), DeliveryMode::Proxy) => {
                return Err(Invalid::at(
                    format!("{key}.max_concurrency"),
                    format!(
                        "{key}.max_concurrency only applies to queue mode; set delivery = \"queue\" on {source_key}"
                    ),
                ));
            }
        };
        let (first, upstreams) =
            super::controls::upstreams(&key, source_key, route, file.delivery)?;
        let mut compiled = Route::new(&file.name, &name, &route.events, &first)
            .map_err(|e| Invalid::at(format!("{key}.{}", route_key(route)), format!("{key}.{e}")))?
            .with_max_concurrency(max_concurrency)
            .with_conditions(super::controls::conditions(&key, &route.conditions)?);
        if !upstreams.is_empty() {
            compiled = compiled.with_upstreams(upstreams);
        }
        compiled = compiled
            .with_breaker(super::controls::breaker(&key, route.breaker.as_ref())?)
            .with_rate(super::controls::rate(
                &key,
                source_key,
                route.rate.as_ref(),
                file.delivery,
            )?);
        if let Some(resign) = &route.resign {
            let signer = Resigner::new(resign.secret.expose()).map_err(|e| {
                Invalid::at(
                    format!("{key}.resign.secret"),
                    format!("{key}.resign.secret: {e}"),
                )
            })?;
            compiled = compiled.with_resign(signer);
        }
        if let Some(settings) = enrichment(&key, source_key, route, file)? {
            enrich.insert(name, Arc::new(settings));
        }
        routes.push(compiled);
    }
    Ok((Routes::new(routes), enrich))
}

/// A route's `enrich`: only in queue mode (the fetch is slow and can fail, so the
/// workers do it, with retries), only with `resign` (the backend gets a body the sender
/// never signed), never on a body hookgate cannot read.
fn enrichment(
    key: &str,
    source_key: &str,
    route: &file::Route,
    source: &file::Source,
) -> Result<Option<EnrichSettings>, Invalid> {
    let Some(enrich) = &route.enrich else {
        return Ok(None);
    };
    let at = |sub: &str, message: String| Invalid::at(format!("{key}.enrich{sub}"), message);
    if source.delivery != DeliveryMode::Queue {
        return Err(at(
            "",
            format!(
                "{key}.enrich only applies to queue mode; set delivery = \"queue\" on {source_key} \
                 (the fetch is slow and can fail: the queue's workers do it, with retries)"
            ),
        ));
    }
    if route.resign.is_none() {
        return Err(at(
            "",
            format!(
                "{key}.enrich needs {key}.resign: the backend gets a new body \
                 ({{\"event\": ..., \"object\": ...}}) that only hookgate's own signature covers; \
                 add resign = {{ secret = \"${{BACKEND_SECRET}}\" }}"
            ),
        ));
    }
    if source.content_encoding == ContentEncoding::Pass {
        return Err(at(
            "",
            format!(
                "{key}.enrich needs to read the event's data.id, which {source_key}.content_encoding \
                 = \"pass\" can leave encoded; remove one of them"
            ),
        ));
    }
    let api_key = enrich.api_key.expose();
    if api_key.is_empty() {
        return Err(at(".api_key", format!("{key}.enrich.api_key is empty")));
    }
    if api_key.trim() != api_key || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        // Never the value: it is the key.
        return Err(at(
            ".api_key",
            format!(
                "{key}.enrich.api_key has whitespace or characters a header cannot carry \
                 (a newline from an env file?)"
            ),
        ));
    }
    let api_base = match &enrich.api_base {
        Some(text) => api_base(text)
            .map_err(|e| at(".api_base", format!("{key}.enrich.api_base {text:?} {e}")))?,
        None => "https://api.openai.com/v1".to_owned(),
    };
    for (name, value) in [
        ("organization", &enrich.organization),
        ("project", &enrich.project),
    ] {
        if let Some(value) = value
            && (value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(at(
                &format!(".{name}"),
                format!(
                    "{key}.enrich.{name} {value:?} must be an id of printable ASCII characters"
                ),
            ));
        }
    }
    super::error::positive(&format!("{key}.enrich.timeout"), enrich.timeout)?;
    Ok(Some(EnrichSettings {
        provider: enrich.provider,
        api_key: enrich.api_key.clone(),
        api_base,
        organization: enrich.organization.clone(),
        project: enrich.project.clone(),
        timeout: enrich.timeout,
    }))
}

/// `api_base` without its trailing `/`. Plain http only to a loopback address (a local
/// proxy or a test's stand-in): anywhere else it would carry the API key unencrypted.
fn api_base(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("is not a valid URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() || uri.query().is_some() {
        return Err("must be an http(s) URL with a host and no query".to_owned());
    }
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        Some("http") => {
            return Err(
                "would carry the API key unencrypted: use https:// (http:// only to a loopback address)"
                    .to_owned(),
            );
        }
        _ => return Err("is not an http:// or https:// URL".to_owned()),
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// The key of a route that `Route::new` refused, in the order it checks them.
fn route_key(route: &file::Route) -> String {
    if route.events.is_empty() {
        return "events".to_owned();
    }
    match route
        .events
        .iter()
        .position(|e| EventPattern::parse(e).is_err())
    {
        Some(i) => format!("events[{i}]"),
        None => "upstream".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::Secret;
    use http::HeaderMap;

    fn entry(secret: &str, not_after: Option<i64>) -> SecretEntry {
        SecretEntry {
            secret: Secret::from(secret.to_owned()),
            not_after: not_after.map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn expiring_and_expired_secrets_are_warned_about() {
        let week = 7 * 24 * 3600;
        let now = at(10 * week);
        let secrets = [
            entry("a", Some(10 * week as i64 + 3600)),
            entry("b", Some(10 * week as i64 - 1)),
            entry("c", Some(20 * week as i64)),
        ];
        let warnings = secret_warnings(&secrets, now);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("secrets[0] stops being accepted in 1h"));
        assert!(warnings[1].starts_with("secrets[1] is past its not_after"));

        let all_gone = secret_warnings(&[entry("a", Some(1))], now);
        assert!(
            all_gone
                .iter()
                .any(|w| w.starts_with("secrets: every one is past its not_after")),
            "{all_gone:?}"
        );
    }

    #[test]
    fn secrets_that_look_like_signatures_or_carry_whitespace_are_warned_about() {
        let warnings = secret_warnings(&[entry("v1,abc", None), entry("whsec_x\n", None)], at(0));
        assert!(warnings[0].contains("secrets[0] starts with \"v1,\""));
        assert!(warnings[1].contains("secrets[1] has leading or trailing whitespace"));
    }

    fn config_error(source: &str) -> String {
        crate::config::parse(&config(source), "test.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted:\n{source}"))
    }

    fn config(source: &str) -> String {
        format!(
            "[[sources]]\nname = \"s\"\npath = \"/s\"\n{source}\n\
             [[sources.routes]]\nevents = [\"*\"]\nupstream = \"http://127.0.0.1:9/\"\n"
        )
    }

    fn parsed(source: &str) -> crate::config::Settings {
        crate::config::parse(&config(source), "test.toml")
            .unwrap_or_else(|e| panic!("{e}\n{source}"))
    }

    /// Requests are matched on the path alone: a source with a query was unreachable.
    #[test]
    fn a_source_path_is_a_path_alone() {
        for path in ["/q?x=1", "/q#top", "/a b"] {
            let text = config("scheme = \"stripe\"\nsecrets = [\"x\"]")
                .replace("path = \"/s\"", &format!("path = {path:?}"));
            let e = crate::config::parse(&text, "test.toml")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("sources[0].path") && e.contains("(line 3"),
                "{path}: {e}"
            );
        }
    }

    #[test]
    fn each_source_knows_the_headers_it_reads_and_binds_unsigned_ids_to_the_body() {
        let cases = [
            (
                "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]",
                "webhook-id webhook-timestamp webhook-signature",
                KeyBinding::Id,
            ),
            (
                "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\nevent_type = { header = \"X-Event\" }",
                "webhook-id webhook-timestamp webhook-signature x-event",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"stripe\"\nsecrets = [\"x\"]",
                "stripe-signature",
                KeyBinding::Id,
            ),
            (
                "scheme = \"stripe\"\nsecrets = [\"x\"]\ndedupe_key = \"Idempotency-Key\"",
                "stripe-signature idempotency-key",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"github\"\nsecrets = [\"x\"]",
                "x-hub-signature-256 x-github-event x-github-delivery",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nid_header = \"X-Id\"\n\
                 timestamp_header = \"X-Ts\"\nsigned_content = \"{timestamp}.{id}.{body}\"",
                "x-sig x-id x-ts",
                KeyBinding::Id,
            ),
            (
                "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nid_header = \"X-Id\"",
                "x-sig x-id",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\ndedupe_key = { json = \"/id\" }",
                "x-sig",
                KeyBinding::Id,
            ),
        ];
        for (source, reads, binding) in cases {
            let settings = parsed(source);
            let got: Vec<&str> = settings.sources[0]
                .reads
                .iter()
                .map(HeaderName::as_str)
                .collect();
            assert_eq!(got.join(" "), reads, "{source}");
            assert_eq!(settings.sources[0].binding, binding, "{source}");
        }
    }

    #[test]
    fn content_encoding_pass_needs_the_event_type_and_dedupe_key_in_headers() {
        let settings =
            parsed("scheme = \"github\"\nsecrets = [\"x\"]\ncontent_encoding = \"pass\"");
        assert_eq!(
            settings.sources[0].content_encoding,
            crate::config::ContentEncoding::Pass
        );
        assert!(settings.summary().contains("content_encoding pass"));
        let e = config_error(
            "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\ncontent_encoding = \"pass\"",
        );
        assert!(
            e.starts_with(
                "test.toml: sources[0].content_encoding = \"pass\" needs the event type and the \
                 dedupe key in headers"
            ) && e.contains("cannot read /type from"),
            "{e}"
        );
        let e = config_error("scheme = \"github\"\nsecrets = [\"x\"]\ncontent_encoding = \"gzip\"");
        assert!(
            e.contains("unknown variant `gzip`") && e.contains("line 6"),
            "{e}"
        );
    }

    /// Timestamps are whole seconds: a tolerance under one second once passed `check`
    /// and then refused nearly every delivery as stale.
    #[test]
    fn a_tolerance_under_a_second_is_an_error_naming_it() {
        for scheme in [
            "scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
            "scheme = \"stripe\"\nsecrets = [\"whsec_x\"]",
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"x-sig\"\n\
             timestamp_header = \"x-ts\"\nsigned_content = \"{timestamp}.{body}\"\n\
             dedupe_key = { json = \"/id\" }",
        ] {
            for short in ["0s", "500ms"] {
                let e = config_error(&format!("{scheme}\ntolerance = \"{short}\""));
                assert!(
                    e.contains("sources[0].tolerance = \"") && e.contains("must be at least 1s"),
                    "{e}"
                );
                assert!(e.contains("(line "), "{e}");
            }
            let ok = config(&format!("{scheme}\ntolerance = \"1s\""));
            assert!(crate::config::parse(&ok, "test.toml").is_ok(), "{ok}");
            let e = config_error(&format!("{scheme}\ntolerance = \"200y\""));
            assert!(e.contains("must be at most 100 years"), "{e}");
        }
    }

    #[test]
    fn a_key_that_does_not_apply_to_the_scheme_is_an_error_naming_it() {
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"whsec_x\"]\nencoding = \"base64\"");
        assert!(
            e.starts_with("test.toml: sources[0].encoding does not apply to scheme \"stripe\""),
            "{e}"
        );
        assert!(
            e.contains("its keys: secrets, signature_header, tolerance"),
            "{e}"
        );
        let e = config_error("scheme = \"github\"\nsecrets = [\"x\"]\ntolerance = \"5m\"");
        assert!(
            e.contains("sources[0].tolerance does not apply to scheme \"github\""),
            "{e}"
        );
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nprovider = \"openai\"");
        assert!(e.contains("sources[0].provider does not apply"), "{e}");
    }

    /// The backend gets these headers as hookgate sets them (or not at all): a source
    /// that routed or deduplicated on the sender's value forwarded another one.
    #[test]
    fn an_event_type_or_dedupe_key_in_a_header_hookgate_replaces_is_refused() {
        for source in [
            "scheme = \"github\"\nsecrets = [\"x\"]\nevent_type = { header = \"X-Forwarded-Host\" }",
            "scheme = \"github\"\nsecrets = [\"x\"]\nevent_type = { header = \"x_hookgate_kind\" }",
            "scheme = \"github\"\nsecrets = [\"x\"]\ndedupe_key = \"X-Real-IP\"",
            "scheme = \"github\"\nsecrets = [\"x\"]\ndedupe_key = { header = \"Connection\" }",
        ] {
            let e = config_error(source);
            assert!(e.contains("which hookgate drops or sets itself"), "{e}");
            assert!(e.contains("line 6"), "{e}");
        }
        crate::config::parse(
            &config("scheme = \"github\"\nsecrets = [\"x\"]\nevent_type = { header = \"X-Kind\" }"),
            "test.toml",
        )
        .expect("a header of the sender's own");
    }

    #[test]
    fn scheme_keys_are_checked_with_their_key_paths() {
        let e = config_error(
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nencoding = \"base32\"",
        );
        assert!(e.contains("line 7"), "{e}");
        let e =
            config_error("scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"bad header\"");
        assert!(
            e.contains("\"bad header\" is not a valid header name"),
            "{e}"
        );
        let e = config_error("scheme = \"hmac\"\nsecrets = [\"x\"]");
        assert!(e.contains("sources[0].signature_header is required"), "{e}");
        let e = config_error(
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nsigned_content = \"{ts}.{body}\"",
        );
        assert!(
            e.contains("sources[0].signed_content \"{ts}.{body}\": unknown placeholder {ts}"),
            "{e}"
        );
    }

    #[test]
    fn each_scheme_has_its_documented_defaults() {
        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
        );
        assert_eq!(
            settings.sources[0].dedupe_key.to_string(),
            "header:webhook-id"
        );
        assert_eq!(settings.sources[0].event_type.to_string(), "/type");
        let settings = parsed("scheme = \"stripe\"\nsecrets = [\"whsec_x\"]");
        assert_eq!(settings.sources[0].dedupe_key.to_string(), "/id");
        assert_eq!(settings.sources[0].event_type.to_string(), "/type");
        let settings = parsed("scheme = \"github\"\nsecrets = [\"x\"]");
        assert_eq!(
            settings.sources[0].dedupe_key.to_string(),
            "header:x-github-delivery"
        );
        assert_eq!(
            settings.sources[0].event_type.to_string(),
            "header:x-github-event"
        );
        let settings = parsed(
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nid_header = \"X-Id\"",
        );
        assert_eq!(settings.sources[0].dedupe_key.to_string(), "header:x-id");
        let e = config_error("scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"");
        assert!(e.contains("sources[0].dedupe_key is required"), "{e}");
    }

    #[test]
    fn event_type_and_dedupe_key_take_strings_pointers_and_headers() {
        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\n\
             event_type = { header = \"X-Event\" }\ndedupe_key = { json = \"/data/id\" }",
        );
        assert_eq!(settings.sources[0].event_type.to_string(), "header:x-event");
        assert_eq!(settings.sources[0].dedupe_key.to_string(), "/data/id");
        let settings = parsed(
            "scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = \"/data/type\"\ndedupe_key = \"Idempotency-Key\"",
        );
        assert_eq!(settings.sources[0].event_type.to_string(), "/data/type");
        assert_eq!(
            settings.sources[0].dedupe_key.to_string(),
            "header:idempotency-key"
        );

        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\ndedupe_key = \"/id\"");
        assert!(e.contains("sources[0].dedupe_key \"/id\": a plain string names a header; for a JSON pointer write dedupe_key = { json = \"/id\" }"), "{e}");
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = \"X-Event\"");
        assert!(
            e.contains("for a header write event_type = { header = \"X-Event\" }"),
            "{e}"
        );
        let e = config_error(
            "scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = { json = \"/a\", header = \"b\" }",
        );
        assert!(
            e.contains("set exactly one of json or header") && e.contains("line 6"),
            "{e}"
        );
        let e =
            config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = { jsn = \"/a\" }");
        assert!(e.contains("unknown field `jsn`"), "{e}");
        // The empty pointer is the whole body, never a string: every request failed.
        for field in ["event_type = \"\"", "dedupe_key = { json = \"\" }"] {
            let e = config_error(&format!("scheme = \"stripe\"\nsecrets = [\"x\"]\n{field}"));
            assert!(
                e.contains("is empty") && e.contains("line 6"),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn secrets_may_be_strings_or_tables_with_not_after() {
        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \
             { secret = \"old-secret\", not_after = \"2999-12-31T00:00:00Z\" }]",
        );
        assert_eq!(settings.sources[0].secrets, 2);
        assert!(
            settings.sources[0]
                .verifier
                .describe()
                .contains("secrets[1] until 2999-12-31T00:00:00Z"),
            "{}",
            settings.sources[0].verifier.describe()
        );
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);

        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"new-secret\", \
             { secret = \"old-secret\", not_after = \"2001-01-01T00:00:00Z\" }]",
        );
        assert_eq!(
            settings.warnings,
            vec![
                "test.toml: sources[0].secrets[1] is past its not_after (2001-01-01T00:00:00Z) and is ignored; remove it"
            ]
        );
        let e = config_error(
            "scheme = \"github\"\nsecrets = [{ secret = \"x\", not_after = \"soon\" }]",
        );
        assert!(e.contains("line 5") && e.contains("RFC 3339"), "{e}");
        // Before 1970: an error, where writing it in a warning panicked (found by the
        // config fuzz target).
        let e = config_error(
            "scheme = \"github\"\nsecrets = [\"y\", { secret = \"x\", not_after = \"1015-01-01T00:00:00Z\" }]",
        );
        assert!(e.contains("line 5") && e.contains("before 1970"), "{e}");
        // Any offset, and a TOML datetime, name the same instant.
        for when in ["\"2999-12-31T02:00:00+02:00\"", "2999-12-31T00:00:00Z"] {
            let settings = parsed(&format!(
                "scheme = \"github\"\nsecrets = [\"y\", {{ secret = \"x\", not_after = {when} }}]"
            ));
            let described = settings.sources[0].verifier.describe();
            assert!(
                described.contains("secrets[1] until 2999-12-31T00:00:00Z"),
                "{when}: {described}"
            );
        }
        let e = config_error(
            "scheme = \"github\"\nsecrets = [{ secret = \"x\", until = \"2030-01-01T00:00:00Z\" }]",
        );
        assert!(e.contains("unknown field `until`"), "{e}");
    }

    #[test]
    fn provider_openai_warns_about_route_typos_and_unknown_providers_are_errors() {
        let text = "[[sources]]\nname = \"openai\"\npath = \"/o\"\nscheme = \"standard-webhooks\"\n\
                    secrets = [\"raw\"]\nprovider = \"openai\"\n\
                    [[sources.routes]]\nevents = [\"response.complete\", \"batch.*\"]\nupstream = \"http://127.0.0.1:9/\"\n";
        let settings = crate::config::parse(text, "test.toml").unwrap();
        assert_eq!(
            settings.warnings,
            vec![
                "test.toml: sources[0].routes[0].events[0] \"response.complete\" matches none of \
                 OpenAI's published event types; did you mean \"response.completed\"?"
            ]
        );
        let e = crate::config::parse(
            &text.replace("\"openai\"\n[[", "\"opneai\"\n[["),
            "test.toml",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("sources[0].provider \"opneai\" is unknown"),
            "{e}"
        );
    }

    #[test]
    fn a_route_resign_secret_is_checked() {
        let text = config("scheme = \"github\"\nsecrets = [\"x\"]").replace(
            "upstream = ",
            "resign = { secret = \"whsec_%%\" }\nupstream = ",
        );
        let e = crate::config::parse(&text, "test.toml")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(
                "sources[0].routes[0].resign.secret: the part after whsec_ is not valid base64"
            ),
            "{e}"
        );
        let ok = config("scheme = \"github\"\nsecrets = [\"x\"]").replace(
            "upstream = ",
            "resign = { secret = \"backend-secret\" }\nupstream = ",
        );
        let settings = crate::config::parse(&ok, "test.toml").unwrap();
        assert!(
            settings
                .summary()
                .contains("(re-signed: standard-webhooks)")
        );
        assert!(
            settings
                .warnings
                .iter()
                .any(|w| w.contains("routes[0].resign.secret is not whsec_")),
            "{:?}",
            settings.warnings
        );
    }

    /// A queue source whose one route has `route_keys` (one per line) before `upstream`.
    fn enriched(source_keys: &str, route_keys: &str) -> String {
        config(&format!(
            "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\n{source_keys}"
        ))
        .replace("upstream = ", &format!("{route_keys}\nupstream = "))
    }

    const RESIGN: &str = "resign = { secret = \"backend-secret\" }";
    const ENRICH: &str = "enrich = { provider = \"openai\", api_key = \"sk-test-1234\" }";

    fn enrich_error(text: &str) -> crate::config::ConfigError {
        crate::config::parse(text, "test.toml")
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
    }

    #[test]
    fn enrich_is_read_with_its_documented_defaults_and_shown_without_its_key() {
        let settings = crate::config::parse(
            &enriched("delivery = \"queue\"", &format!("{RESIGN}\n{ENRICH}")),
            "test.toml",
        )
        .unwrap();
        let enrich = &settings.sources[0].enrich["0"];
        assert_eq!(enrich.provider, file::EnrichProvider::Openai);
        assert_eq!(enrich.api_key.expose(), "sk-test-1234");
        assert_eq!(enrich.api_base, "https://api.openai.com/v1");
        assert_eq!(enrich.timeout, Duration::from_secs(30));
        assert_eq!((&enrich.organization, &enrich.project), (&None, &None));
        assert!(!format!("{enrich:?}").contains("sk-test"));
        let summary = settings.summary();
        assert!(
            summary.contains(
                "enrich openai: objects fetched from https://api.openai.com/v1 before the first \
                 attempt (timeout 30s; API key not shown)"
            ),
            "{summary}"
        );
        assert!(!summary.contains("sk-test"), "{summary}");

        let settings = crate::config::parse(
            &enriched(
                "delivery = \"queue\"",
                &format!(
                    "{RESIGN}\nenrich = {{ provider = \"openai\", api_key = \"sk-test-1234\", \
                     api_base = \"http://127.0.0.1:9/v1/\", organization = \"org-1\", \
                     project = \"proj_1\", timeout = \"2s\" }}"
                ),
            ),
            "test.toml",
        )
        .unwrap();
        let enrich = &settings.sources[0].enrich["0"];
        assert_eq!(enrich.api_base, "http://127.0.0.1:9/v1");
        assert_eq!(enrich.organization.as_deref(), Some("org-1"));
        assert_eq!(enrich.project.as_deref(), Some("proj_1"));
        assert_eq!(enrich.timeout, Duration::from_secs(2));
        assert!(
            settings
                .summary()
                .contains("(timeout 2s, organization org-1, project proj_1; API key not shown)")
        );
    }

    #[test]
    fn enrich_needs_queue_mode_and_resign_and_names_both_keys_with_the_line() {
        let e = enrich_error(&enriched("", &format!("{RESIGN}\n{ENRICH}")));
        assert_eq!(e.key.as_deref(), Some("sources[0].routes[0].enrich"));
        assert_eq!(e.line, Some(10), "{e}");
        assert!(
            e.message.starts_with(
                "sources[0].routes[0].enrich only applies to queue mode; set delivery = \"queue\" \
                 on sources[0]"
            ),
            "{e}"
        );

        let e = enrich_error(&enriched("delivery = \"queue\"", ENRICH));
        assert_eq!(e.key.as_deref(), Some("sources[0].routes[0].enrich"));
        assert_eq!(e.line, Some(9), "{e}");
        assert!(
            e.message
                .starts_with("sources[0].routes[0].enrich needs sources[0].routes[0].resign"),
            "{e}"
        );
        assert!(e.to_string().ends_with("(line 9, column 1)"), "{e}");

        let e = enrich_error(&enriched(
            "delivery = \"queue\"\ncontent_encoding = \"pass\"\nevent_type = { header = \"X-Event\" }",
            &format!("{RESIGN}\n{ENRICH}"),
        ));
        assert!(
            e.message.contains("sources[0].content_encoding = \"pass\""),
            "{e}"
        );
    }

    #[test]
    fn enrich_keys_are_checked_without_ever_printing_the_api_key() {
        let with = |enrich: &str| {
            enrich_error(&enriched(
                "delivery = \"queue\"",
                &format!("{RESIGN}\nenrich = {{ provider = \"openai\", {enrich} }}"),
            ))
        };
        let e = with("api_key = \"sk-secret-value\\n\"");
        assert_eq!(
            e.key.as_deref(),
            Some("sources[0].routes[0].enrich.api_key")
        );
        assert!(e.message.contains("whitespace"), "{e}");
        assert!(!e.to_string().contains("sk-secret"), "{e}");
        let e = with("api_key = \"\"");
        assert!(e.message.ends_with("enrich.api_key is empty"), "{e}");
        let e = with("api_key = \"k\", api_base = \"http://api.example.com/v1\"");
        assert_eq!(
            e.key.as_deref(),
            Some("sources[0].routes[0].enrich.api_base")
        );
        assert!(e.message.contains("unencrypted"), "{e}");
        let e = with("api_key = \"k\", api_base = \"ftp://api.example.com\"");
        assert!(e.message.contains("not an http"), "{e}");
        let e = with("api_key = \"k\", organization = \"org 1\"");
        assert_eq!(
            e.key.as_deref(),
            Some("sources[0].routes[0].enrich.organization")
        );
        let e = with("api_key = \"k\", timeout = \"0s\"");
        assert!(
            e.message
                .contains("enrich.timeout must be greater than zero"),
            "{e}"
        );
        let e = enrich_error(&enriched(
            "delivery = \"queue\"",
            &format!("{RESIGN}\nenrich = {{ provider = \"opneai\", api_key = \"k\" }}"),
        ));
        assert!(e.to_string().contains("unknown variant `opneai`"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
        let e = enrich_error(&enriched(
            "delivery = \"queue\"",
            &format!(
                "{RESIGN}\nenrich = {{ provider = \"openai\", api_key = \"k\", model = \"x\" }}"
            ),
        ));
        assert!(e.to_string().contains("unknown field `model`"), "{e}");
        let unset = enrich_error(&enriched(
            "delivery = \"queue\"",
            &format!(
                "{RESIGN}\nenrich = {{ provider = \"openai\", api_key = \"${{HOOKGATE_TEST_UNSET_OPENAI_KEY}}\" }}"
            ),
        ));
        assert!(
            unset
                .to_string()
                .contains("environment variable HOOKGATE_TEST_UNSET_OPENAI_KEY is not set"),
            "{unset}"
        );
    }

    /// A file of `tests/vectors/`.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Vectors {
        source: file::Source,
        case: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        name: String,
        now: u64,
        body: String,
        expect: String,
        headers: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn vectors_of_every_scheme_give_their_expected_verdicts() {
        for scheme in SCHEMES {
            let path = format!(
                "{}/tests/vectors/{}.toml",
                env!("CARGO_MANIFEST_DIR"),
                scheme.name
            );
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(text.starts_with('#'), "{path} must cite its sources first");
            let vectors: Vectors = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(vectors.source.scheme, scheme.name, "{path}");
            assert!(vectors.case.len() >= 5, "{path}: too few cases");
            for case in &vectors.case {
                let built = verification(&vectors.source, at(case.now)).unwrap();
                let mut headers = HeaderMap::new();
                for (name, value) in &case.headers {
                    headers.insert(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        value.parse().unwrap(),
                    );
                }
                let verdict =
                    match built
                        .verifier
                        .verify(&headers, case.body.as_bytes(), at(case.now))
                    {
                        Ok(delivery) => format!("ok secrets[{}]", delivery.secret_index),
                        Err(e) => crate::reject::Reject::from(e).reason().to_owned(),
                    };
                assert_eq!(verdict, case.expect, "{path}: {}", case.name);
            }
        }
    }

    #[test]
    fn a_scheme_key_error_points_at_the_key_s_line() {
        let e = crate::config::parse(
            &config("scheme = \"stripe\"\nsecrets = [\"x\"]\n\nencoding = \"base64\""),
            "test.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources[0].encoding"));
        assert_eq!((e.line, e.column), (Some(7), Some(1)));
        assert!(e.to_string().ends_with("(line 7, column 1)"), "{e}");
        let e = crate::config::parse(
            &config("scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\n  encoding = \"base32\""),
            "test.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources[0].encoding"));
        assert_eq!((e.line, e.column), (Some(7), Some(3)));
        assert!(e.message.contains("unknown variant `base32`"), "{e}");
    }

    #[test]
    fn a_key_no_scheme_reads_is_unknown_and_named_with_its_line() {
        let e = crate::config::parse(
            &config("scheme = \"github\"\nsecrets = [\"x\"]\nsecret = \"y\""),
            "test.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources[0].secret"));
        assert_eq!(e.line, Some(6));
        assert!(
            e.message
                .starts_with("sources[0].secret is unknown: every source takes name, path"),
            "{e}"
        );
        assert!(
            e.message
                .ends_with("scheme \"github\" also takes nothing else"),
            "{e}"
        );
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nupstream = \"http://x/\"");
        assert!(e.contains("sources[0].upstream is unknown"), "{e}");
        assert!(e.contains("also takes signature_header, tolerance"), "{e}");
    }

    #[test]
    fn a_scheme_s_refusal_to_build_points_at_its_key() {
        let e = crate::config::parse(
            &config("scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nsigned_content = \"{ts}.{body}\""),
            "test.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources[0].signed_content"));
        assert_eq!(e.line, Some(7));
        let e = crate::config::parse(
            &config("scheme = \"hmac\"\nsecrets = [\"x\", \"\"]\nsignature_header = \"X\""),
            "t",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources[0].secrets[1]"));
        assert_eq!((e.line, e.column), (Some(5), Some(17)), "{e}");
    }
}
