//! What hookgate knows about well-known senders (`provider = "openai"` on a source): the
//! event types they publish, so `hookgate check` can warn about a route pattern that can
//! never match (`response.complete`) instead of letting it answer 202 forever.
//!
//! The list is OpenAI's webhook event catalogue as published in December 2026: the API
//! reference, <https://developers.openai.com/api/reference/resources/webhooks> (every
//! event type with its `data` fields), which the SDKs generate their event unions from
//! (openai-java `UnwrapWebhookEvent`, openai-python `src/openai/types/webhooks/`, whose
//! 3.63 union added `health.alert.*` and `live.transport.connected`). The
//! agents' session and environment events are also described in
//! <https://developers.openai.com/api/docs/guides/agents-api/sessions/webhooks>, the
//! organization-level `safety.*` notices in
//! <https://developers.openai.com/api/docs/guides/safety-enforcement>. Not listed:
//! `video.completed` and `video.failed` (the Videos API shut down on 2026-09-24) and
//! `safety_identifier.blocked` (a class in the Python SDK only, in no event union and not
//! in the reference). A type the list lacks causes a warning, never an error, and
//! routing never consults it: a new event type OpenAI starts sending is routed like any
//! other.

use crate::event::JsonPointer;
use crate::route::EventPattern;

/// Every provider hookgate knows, by its `provider = "..."` name.
const PROVIDERS: &[(&str, &str, &[&str])] = &[("openai", "OpenAI", OPENAI_EVENT_TYPES)];

pub const OPENAI_EVENT_TYPES: &[&str] = &[
    "agent.environment.expired",
    "agent.environment.failed",
    "agent.environment.ready",
    "agent.environment.suspended",
    "agent.session.action_required",
    "agent.session.created",
    "agent.session.failed",
    "agent.session.idle",
    "agent.session.in_progress",
    "batch.cancelled",
    "batch.completed",
    "batch.expired",
    "batch.failed",
    "eval.run.canceled",
    "eval.run.failed",
    "eval.run.succeeded",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.failed",
    "fine_tuning.job.succeeded",
    "health.alert.resolved",
    "health.alert.triggered",
    "live.call.incoming",
    "live.transport.connected",
    "live.transport.incoming",
    "realtime.call.incoming",
    "response.cancelled",
    "response.completed",
    "response.failed",
    "response.incomplete",
    "safety.alert.created",
    "safety.deactivation_issued",
    "safety.org_alert.created",
    "safety.warning_issued",
];

/// Warnings (key paths relative to the source) for route patterns that match none of
/// the provider's event types; an unknown provider is an error. `routes` holds each
/// route's `events`, in order.
pub fn typos<R: AsRef<[String]>>(provider: &str, routes: &[R]) -> Result<Vec<String>, String> {
    let Some((_, display, known)) = PROVIDERS.iter().find(|(name, _, _)| *name == provider) else {
        let names: Vec<&str> = PROVIDERS.iter().map(|(name, _, _)| *name).collect();
        return Err(format!(
            "{provider:?} is unknown; known providers: {}",
            names.join(", ")
        ));
    };
    let mut warnings = Vec::new();
    for (j, events) in routes.iter().enumerate() {
        for (i, text) in events.as_ref().iter().enumerate() {
            // A pattern that does not parse is an error, reported with the routes.
            let Ok(pattern) = EventPattern::parse(text) else {
                continue;
            };
            if known.iter().any(|t| pattern.matches(t)) {
                continue;
            }
            let stem = text.trim_end_matches('*');
            let suggestion = known
                .iter()
                .map(|t| (edit_distance(stem, t), *t))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, t)| format!("; did you mean {t:?}?"))
                .unwrap_or_default();
            warnings.push(format!(
                "routes[{j}].events[{i}] {text:?} matches none of {display}'s published event types{suggestion}"
            ));
        }
    }
    Ok(warnings)
}

/// The top-level fields of every OpenAI event (the webhook reference's event objects).
const OPENAI_EVENT_FIELDS: &[&str] = &["id", "object", "created_at", "type", "data"];

/// The OpenAI event families whose `data` holds only the object's `id` (thin events:
/// the reference, and `enrich::openai`'s sources).
const OPENAI_THIN_FAMILIES: &[&str] = &["response.", "batch.", "fine_tuning.job.", "eval.run."];

/// Why a `match` pointer can never name a field of `provider`'s events routed by
/// `events`, when that is known: a top-level field OpenAI events lack, or a `data` field
/// other than `id` where every event type the route can take is a thin one. `None` for
/// an unknown provider (reported by `typos`) or when the field may exist.
pub fn absent_field(provider: &str, events: &[String], pointer: &JsonPointer) -> Option<String> {
    if provider != "openai" {
        return None;
    }
    let tokens = pointer.tokens();
    let first = tokens.first()?;
    if !OPENAI_EVENT_FIELDS.contains(&first.as_str()) {
        return Some(format!(
            "names a field no OpenAI event has (they have {}); did you mean \"/data/{first}\"?",
            OPENAI_EVENT_FIELDS.join(", ")
        ));
    }
    // The other top-level fields are scalars (`object` is always "event"): nothing is
    // below them. Most likely meant: the object an `enrich` route adds, which `match`
    // never sees (it reads the event as OpenAI signed it).
    if first != "data" && tokens.len() > 1 {
        return Some(format!(
            "can never exist: /{first} of an OpenAI event is a plain value, with nothing \
             below it (match reads the event as signed, never an enriched object)"
        ));
    }
    let (Some(field), "data") = (tokens.get(1), first.as_str()) else {
        return None;
    };
    let patterns: Vec<EventPattern> = events
        .iter()
        .filter_map(|e| EventPattern::parse(e).ok())
        .collect();
    let types: Vec<&str> = OPENAI_EVENT_TYPES
        .iter()
        .copied()
        .filter(|t| patterns.iter().any(|p| p.matches(t)))
        .collect();
    let all_thin = !types.is_empty()
        && types
            .iter()
            .all(|t| OPENAI_THIN_FAMILIES.iter().any(|f| t.starts_with(f)));
    (field != "id" && all_thin).then(|| {
        "can never exist: the OpenAI events this route takes carry only data.id".to_owned()
    })
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(events: &[&str]) -> Vec<String> {
        events.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn match_pointers_openai_events_never_have_are_named() {
        let p = |text: &str| JsonPointer::parse(text).unwrap();
        let responses = route(&["response.*"]);
        assert!(
            absent_field("openai", &responses, &p("/tenant"))
                .unwrap()
                .contains("/data/tenant")
        );
        assert!(
            absent_field("openai", &responses, &p("/data/metadata/tenant"))
                .unwrap()
                .contains("only data.id")
        );
        assert_eq!(absent_field("openai", &responses, &p("/data/id")), None);
        assert_eq!(absent_field("openai", &responses, &p("/type")), None);
        // Nothing is below a top-level scalar (an enriched object is never matched).
        for pointer in ["/object/status", "/type/x", "/created_at/0"] {
            assert!(
                absent_field("openai", &route(&["*"]), &p(pointer))
                    .unwrap()
                    .contains("plain value"),
                "{pointer}"
            );
        }
        // realtime.call.incoming carries more than the id: no warning where it may exist.
        assert_eq!(
            absent_field("openai", &route(&["*"]), &p("/data/call_id")),
            None
        );
        assert_eq!(absent_field("github", &responses, &p("/tenant")), None);
    }

    #[test]
    fn a_typo_is_warned_about_with_a_suggestion() {
        let warnings = typos(
            "openai",
            &[
                route(&["response.completed", "response.complete"]),
                route(&["batch.*", "*"]),
            ],
        )
        .unwrap();
        assert_eq!(
            warnings,
            vec![
                "routes[0].events[1] \"response.complete\" matches none of OpenAI's published \
                 event types; did you mean \"response.completed\"?"
            ]
        );
    }

    #[test]
    fn wildcards_that_match_nothing_are_warned_about_too() {
        let warnings = typos("openai", &[route(&["fine_tune.*", "eval.run.*"])]).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("routes[0].events[0] \"fine_tune.*\""));
    }

    #[test]
    fn today_s_catalogue_knows_agents_safety_notices_and_live_transports() {
        let current = route(&[
            "agent.session.*",
            "agent.environment.*",
            "safety.*",
            "live.transport.incoming",
            "live.call.incoming",
            "realtime.call.incoming",
        ]);
        assert_eq!(typos("openai", &[current]).unwrap(), Vec::<String>::new());
        let gone = typos(
            "openai",
            &[route(&["video.completed", "safety_identifier.blocked"])],
        )
        .unwrap();
        assert_eq!(gone.len(), 2, "{gone:?}");
        let mut sorted = OPENAI_EVENT_TYPES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, OPENAI_EVENT_TYPES, "sorted, each once");
    }

    #[test]
    fn an_unknown_provider_is_an_error() {
        assert!(
            typos::<Vec<String>>("opneai", &[])
                .unwrap_err()
                .contains("known providers: openai")
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("response.complete", "response.completed"), 1);
        assert_eq!(edit_distance("batch.canceled", "batch.cancelled"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
