//! A route's delivery controls, from the file to the types the program uses: `match`
//! conditions, fan-out to several `upstreams`, breakers and rates. Every error names
//! its key path (`sources[0].routes[1].match[2].in`) for `ConfigError` to locate.

use std::collections::HashSet;

use http::Uri;
use serde_json::Value;

use super::error::{self, Invalid, positive};
use super::file::{self, DeliveryMode};
use crate::event::JsonPointer;
use crate::route::{BreakerPolicy, Condition, RatePolicy, Test, parse_upstream, shown_upstream};

/// A route's `breaker`.
pub(super) fn breaker(
    key: &str,
    file: Option<&file::Breaker>,
) -> Result<Option<BreakerPolicy>, Invalid> {
    let Some(file) = file else {
        return Ok(None);
    };
    let failures = std::num::NonZeroU32::new(file.failures).ok_or_else(|| {
        Invalid::at(
            format!("{key}.breaker.failures"),
            format!("{key}.breaker.failures must be at least 1"),
        )
    })?;
    Ok(Some(BreakerPolicy {
        failures,
        cooldown: positive(&format!("{key}.breaker.cooldown"), file.cooldown)?,
    }))
}

/// A route's `rate`: queue mode only (in proxy mode the sender's own rate governs).
pub(super) fn rate(
    key: &str,
    source_key: &str,
    file: Option<&file::Rate>,
    delivery: DeliveryMode,
) -> Result<Option<RatePolicy>, Invalid> {
    let Some(file) = file else {
        return Ok(None);
    };
    if delivery != DeliveryMode::Queue {
        return Err(Invalid::at(
            format!("{key}.rate"),
            format!(
                "{key}.rate only applies to queue mode; set delivery = \"queue\" on {source_key} \
                 (in proxy mode each delivery is sent while its sender waits: the sender's own \
                 rate governs)"
            ),
        ));
    }
    let burst = file.burst.unwrap_or(file.per_second.ceil() as u32);
    let per_second = error::rate(
        &format!("{key}.rate.per_second"),
        file.per_second,
        burst,
        1e6,
    )?;
    let burst = std::num::NonZeroU32::new(burst).ok_or_else(|| {
        Invalid::at(
            format!("{key}.rate.burst"),
            format!("{key}.rate.burst must be at least 1"),
        )
    })?;
    Ok(Some(RatePolicy { per_second, burst }))
}

/// Each upstream's `name` (if any) and URL, in order.
type NamedUpstreams = Vec<(Option<String>, Uri)>;

/// A route's upstreams: the text of the first (for `Route::new`) and every one with its
/// name. `key` is the route's key path, `source_key` its source's.
pub(super) fn upstreams(
    key: &str,
    source_key: &str,
    route: &file::Route,
    delivery: DeliveryMode,
) -> Result<(String, NamedUpstreams), Invalid> {
    let entries = match (&route.upstream, route.upstreams.as_slice()) {
        (Some(url), []) => return Ok((url.clone(), Vec::new())),
        (None, []) => {
            return Err(Invalid::at(
                key,
                format!(
                    "{key} has no upstream; add upstream = \"http://...\" (or upstreams = [...] \
                     to send each event to several)"
                ),
            ));
        }
        (Some(_), _) => {
            return Err(Invalid::at(
                format!("{key}.upstreams"),
                format!("{key} has both upstream and upstreams; keep one"),
            ));
        }
        (None, entries) => entries,
    };
    if entries.len() > 1 && delivery != DeliveryMode::Queue {
        return Err(Invalid::at(
            format!("{key}.upstreams"),
            format!(
                "{key}.upstreams: fan-out needs delivery = \"queue\" on {source_key} (each upstream \
                 gets its own stored delivery and retries; in proxy mode the sender waits for one \
                 answer); with one upstream, write upstream = \"...\""
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{key}.upstreams[{i}]");
        let uri = parse_upstream(&entry.url).map_err(|e| {
            let url = shown_upstream(&entry.url);
            Invalid::at(at.clone(), format!("{at} {url:?} {e}"))
        })?;
        if let Some(name) = &entry.name {
            super::name::check_name(&format!("{at}.name"), name)?;
        }
        let name_or_index = entry.name.clone().unwrap_or_else(|| i.to_string());
        if !names.insert(name_or_index.clone()) {
            return Err(Invalid::at(
                format!("{at}.name"),
                format!("{at}.name {name_or_index:?} is already used in this route"),
            ));
        }
        out.push((entry.name.clone(), uri));
    }
    Ok((entries[0].url.clone(), out))
}

const OPERATORS: &str = "equals, in, exists or prefix";

/// A route's `match` list; `key` is the route's key path (`sources[0].routes[1]`).
pub(super) fn conditions(key: &str, file: &[file::Condition]) -> Result<Vec<Condition>, Invalid> {
    file.iter()
        .enumerate()
        .map(|(i, condition)| one_condition(&format!("{key}.match[{i}]"), condition))
        .collect()
}

fn one_condition(key: &str, file: &file::Condition) -> Result<Condition, Invalid> {
    let pointer = JsonPointer::parse(&file.pointer).map_err(|e| {
        Invalid::at(
            format!("{key}.pointer"),
            format!("{key}.pointer {:?}: {e}", file.pointer),
        )
    })?;
    if pointer.tokens().is_empty() {
        return Err(Invalid::at(
            format!("{key}.pointer"),
            format!(
                "{key}.pointer is empty: name a field of the body (for example \"/data/status\")"
            ),
        ));
    }
    let mut tests = Vec::new();
    if let Some(value) = &file.equals {
        tests.push(Test::Equals(scalar(&format!("{key}.equals"), value)?));
    }
    if let Some(values) = &file.one_of {
        if values.is_empty() {
            return Err(Invalid::at(
                format!("{key}.in"),
                format!(
                    "{key}.in is empty: the condition could never hold; list at least one value"
                ),
            ));
        }
        let values = values
            .iter()
            .enumerate()
            .map(|(j, value)| scalar(&format!("{key}.in[{j}]"), value))
            .collect::<Result<Vec<_>, _>>()?;
        tests.push(Test::In(values));
    }
    if let Some(exists) = file.exists {
        tests.push(Test::Exists(exists));
    }
    if let Some(prefix) = &file.prefix {
        tests.push(Test::Prefix(prefix.clone()));
    }
    match tests.len() {
        1 => Ok(Condition::new(pointer, tests.remove(0))),
        0 => Err(Invalid::at(
            key,
            format!("{key} has no operator; give it one of {OPERATORS}"),
        )),
        _ => Err(Invalid::at(
            key,
            format!(
                "{key} has {} operators; give each condition exactly one of {OPERATORS} \
                 (write several conditions to need several)",
                tests.len()
            ),
        )),
    }
}

/// A string, number or boolean as JSON; anything else is an error naming `key`.
fn scalar(key: &str, value: &toml::Value) -> Result<Value, Invalid> {
    let refused = |what: &str| {
        Invalid::at(
            key,
            format!("{key} is {what}; a condition compares strings, numbers or booleans"),
        )
    };
    match value {
        toml::Value::String(s) => Ok(Value::String(s.clone())),
        toml::Value::Integer(n) => Ok(Value::from(*n)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| refused("not a finite number")),
        toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
        toml::Value::Datetime(_) => Err(refused("a date")),
        toml::Value::Array(_) => Err(refused("a list (use in = [...] for one of several)")),
        toml::Value::Table(_) => Err(refused("a table")),
    }
}
