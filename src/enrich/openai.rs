//! OpenAI (`enrich = { provider = "openai" }`): which events name an object the API
//! serves, the request that fetches it, and what the API's answer means. Pure: the
//! fetch itself is `Enricher::fetch`.
//!
//! Sources, checked in December 2026:
//! - the events and their `data`: the webhook reference,
//!   <https://developers.openai.com/api/reference/resources/webhooks>. `response.*`,
//!   `batch.*` and `fine_tuning.job.*` carry only `data.id`, the id of a response, a
//!   batch or a fine-tuning job, and the webhooks guide
//!   (<https://developers.openai.com/api/docs/guides/webhooks>) has every receiver call
//!   `client.responses.retrieve(event.data.id)` before using one;
//! - the paths: the reference's retrieve operations under the base
//!   `https://api.openai.com/v1`, as the SDKs call them (openai-python
//!   `resources/responses/responses.py`: `GET /responses/{response_id}`;
//!   `resources/batches.py`: `GET /batches/{batch_id}`;
//!   `resources/fine_tuning/jobs/jobs.py`: `GET /fine_tuning/jobs/{fine_tuning_job_id}`);
//! - the headers: `Authorization: Bearer <key>`, and `OpenAI-Organization` /
//!   `OpenAI-Project` when set (openai-python `_client.py`, `auth_headers` and
//!   `default_headers`);
//! - retries and errors: the SDKs retry 408, 409, 429 and 5xx, waiting `retry-after-ms`,
//!   else `Retry-After` in seconds or as an HTTP date (openai-python `_base_client.py`,
//!   `_should_retry` and `_parse_retry_after_header`); an error answer is
//!   `{"error": {"message", "type", "param", "code"}}`.
//!
//! Every other event is delivered as received, at once: `eval.run.*` (its `data.id` is
//! the run, and `GET /evals/{eval_id}/runs/{run_id}` also needs the eval's id, which the
//! event lacks); `realtime.call.incoming` and `live.*` (a call waits for an answer
//! within seconds); `agent.*` and `safety.*` (objects of other APIs, some readable only
//! with an organization-level key: fetched with the route's key they would become dead
//! letters).
//!
//! The API's error `message` is never kept: for a refused key it quotes part of the key.

use std::time::SystemTime;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName};
use serde::Deserialize;

use super::{FetchFailure, ObjectRef, Plan};
use crate::metrics::EnrichResult;
use crate::upstream::retry_after;

/// Where the API is unless `api_base` says otherwise.
pub const DEFAULT_API_BASE: &str = "https://api.openai.com/v1";

/// The event families whose `data.id` names an object, and the collection it is
/// retrieved from (`GET {api_base}/{collection}/{id}`).
const OBJECTS: &[(&str, &str)] = &[
    ("response.", "responses"),
    ("batch.", "batches"),
    ("fine_tuning.job.", "fine_tuning/jobs"),
];

/// Ids are far shorter (`resp_...`, `batch_...`, `ftjob-...`); anything longer is not one.
const MAX_ID_LEN: usize = 256;

pub const ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
pub const PROJECT: HeaderName = HeaderName::from_static("openai-project");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What to do with an event of `event_type` whose body is `body`.
pub fn plan(event_type: &str, body: &[u8]) -> Plan {
    let Some((_, collection)) = OBJECTS
        .iter()
        .find(|(family, _)| event_type.len() > family.len() && event_type.starts_with(family))
    else {
        return Plan::AsReceived;
    };
    match data_id(body) {
        Ok(id) => Plan::Fetch(ObjectRef {
            path: format!("/{collection}/{id}"),
            id,
        }),
        Err(why) => Plan::Unfetchable(FetchFailure {
            result: EnrichResult::Refused,
            status: None,
            retry_after: None,
            detail: format!("{event_type} names no {collection} object to fetch: {why}"),
        }),
    }
}

/// `data.id` of an event, when it is an id that fits in a path segment as it is.
fn data_id(body: &[u8]) -> Result<String, &'static str> {
    #[derive(Deserialize)]
    struct Event {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        id: Option<serde_json::Value>,
    }
    // A key given twice is refused here (serde's derive): the backend must get the
    // object of the id it reads.
    let event: Event =
        serde_json::from_slice(body).map_err(|_| "the body is not the JSON of an event")?;
    let id = match event.data.and_then(|d| d.id) {
        Some(serde_json::Value::String(id)) => id,
        _ => return Err("data.id is not a string"),
    };
    let plain = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Ok(id)
    } else {
        Err("data.id is not an id (letters, digits, '_' and '-')")
    }
}

/// An answer's body as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Whole(Bytes),
    /// Longer than the limit for its status.
    TooLarge,
    /// The connection broke or the deadline passed while it was read.
    Broken,
}

/// What an answer of the API means: the object `id`, or why not (`now` dates a
/// `Retry-After` given as an HTTP date). `max_object_bytes` is only for the message.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: Body,
    id: &str,
    now: SystemTime,
    max_object_bytes: usize,
) -> Result<Bytes, FetchFailure> {
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| token(id))
        .map(|id| format!(" (x-request-id {id})"))
        .unwrap_or_default();
    let failure = |result, detail: String| FetchFailure {
        result,
        status: Some(status.as_u16()),
        retry_after: retry_after(headers, now),
        detail: format!("{detail}{request_id}"),
    };
    let code = status.as_u16();
    if status.is_success() {
        return match body {
            // The backend is told this is the object the event names: another one (a
            // caching proxy's mix-up, a stand-in API) is no answer to the fetch.
            Body::Whole(object) if is_json_object(&object) => match object_id(&object) {
                Some(answered) if answered == id => Ok(object),
                answered => Err(failure(
                    EnrichResult::InvalidAnswer,
                    format!(
                        "the OpenAI API answered {code} with {}, not the object {id}",
                        match answered {
                            Some(other) if token(&other) => format!("the object {other}"),
                            Some(_) => "an object of another id".to_owned(),
                            None => "an object without an id".to_owned(),
                        }
                    ),
                )),
            },
            Body::Whole(_) => Err(failure(
                EnrichResult::InvalidAnswer,
                format!("the OpenAI API answered {code} without a JSON object"),
            )),
            Body::Broken => Err(failure(
                EnrichResult::InvalidAnswer,
                format!("the OpenAI API's {code} answer broke off"),
            )),
            Body::TooLarge => Err(failure(
                EnrichResult::Refused,
                format!(
                    "the object is larger than {} MiB, more than hookgate keeps with a delivery",
                    max_object_bytes >> 20
                ),
            )),
        };
    }
    let kind = match &body {
        Body::Whole(body) => error_kind(body),
        _ => String::new(),
    };
    let answered = format!("the OpenAI API answered {code}{kind}");
    Err(match code {
        401 | 403 => failure(
            EnrichResult::KeyRefused,
            format!(
                "{answered}: the API key was refused (or may not use that organization or project)"
            ),
        ),
        404 => failure(
            EnrichResult::NotFound,
            format!(
                "{answered}: no such object (it expired, or belongs to another project or organization)"
            ),
        ),
        429 => failure(EnrichResult::RateLimited, answered),
        408 | 409 | 500..=599 => failure(EnrichResult::ServerError, answered),
        _ => failure(EnrichResult::Refused, answered),
    })
}

/// The top-level `id` of a JSON object, when it is a string.
fn object_id(object: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(object).ok()?.id? {
        serde_json::Value::String(id) => Some(id),
        _ => None,
    }
}

fn is_json_object(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
        && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// ` (type, code)` of an error answer, when it gives them as plain tokens; never its
/// message.
fn error_kind(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        error: Option<Error>,
    }
    #[derive(Deserialize)]
    struct Error {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
        code: Option<serde_json::Value>,
    }
    let Ok(Answer { error: Some(error) }) = serde_json::from_slice::<Answer>(body) else {
        return String::new();
    };
    let parts: Vec<String> = [error.kind, error.code]
        .into_iter()
        .filter_map(|v| match v {
            Some(serde_json::Value::String(s)) if token(&s) => Some(s),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Short, plain text that can go into a record as it is.
fn token(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use http::HeaderValue;

    const MAX: usize = 16 << 20;

    fn event(event_type: &str, data: &str) -> Vec<u8> {
        format!(r#"{{"id":"evt_1","object":"event","created_at":1,"type":"{event_type}","data":{data}}}"#)
            .into_bytes()
    }

    fn fetch(path: &str) -> Plan {
        Plan::Fetch(ObjectRef {
            path: path.to_owned(),
            id: path.rsplit('/').next().unwrap_or_default().to_owned(),
        })
    }

    #[test]
    fn each_family_is_fetched_from_its_collection() {
        for (event_type, data, path) in [
            (
                "response.completed",
                r#"{"id":"resp_abc123"}"#,
                "/responses/resp_abc123",
            ),
            (
                "response.incomplete",
                r#"{"id":"resp_1"}"#,
                "/responses/resp_1",
            ),
            (
                "batch.completed",
                r#"{"id":"batch_abc123"}"#,
                "/batches/batch_abc123",
            ),
            ("batch.expired", r#"{"id":"batch_2"}"#, "/batches/batch_2"),
            (
                "fine_tuning.job.succeeded",
                r#"{"id":"ftjob-abc123"}"#,
                "/fine_tuning/jobs/ftjob-abc123",
            ),
        ] {
            assert_eq!(
                plan(event_type, &event(event_type, data)),
                fetch(path),
                "{event_type}"
            );
        }
    }

    #[test]
    fn events_without_an_object_to_fetch_are_delivered_as_received() {
        for (event_type, data) in [
            (
                "realtime.call.incoming",
                r#"{"call_id":"rtc_1","sip_headers":[]}"#,
            ),
            (
                "live.transport.incoming",
                r#"{"type":"sip","session_id":"live_1","sip_headers":[]}"#,
            ),
            ("eval.run.succeeded", r#"{"id":"evalrun_1"}"#),
            ("agent.session.idle", r#"{"id":"sess_1"}"#),
            ("safety.warning_issued", r#"{"id":"C-abc123"}"#),
            ("response", r#"{"id":"resp_1"}"#),
            ("responses.completed", r#"{"id":"resp_1"}"#),
            ("batch.", r#"{"id":"batch_1"}"#),
        ] {
            assert_eq!(
                plan(event_type, &event(event_type, data)),
                Plan::AsReceived,
                "{event_type}"
            );
        }
    }

    #[test]
    fn an_event_of_a_family_without_a_usable_id_is_unfetchable() {
        for (body, why) in [
            (
                event("response.completed", r#"{}"#),
                "data.id is not a string",
            ),
            (
                event("response.completed", r#"{"id":7}"#),
                "data.id is not a string",
            ),
            (event("response.completed", r#"{"id":""}"#), "not an id"),
            (
                event("response.completed", r#"{"id":"../files"}"#),
                "not an id",
            ),
            (
                event("response.completed", r#"{"id":"resp_1?x=1"}"#),
                "not an id",
            ),
            (
                br#"{"type":"response.completed","data":{"id":"resp_1"},"data":{"id":"resp_2"}}"#
                    .to_vec(),
                "not the JSON of an event",
            ),
            (b"not json".to_vec(), "not the JSON of an event"),
        ] {
            let Plan::Unfetchable(failure) = plan("response.completed", &body) else {
                panic!("fetchable: {}", String::from_utf8_lossy(&body));
            };
            assert_eq!(failure.result, EnrichResult::Refused);
            assert!(failure.detail.contains(why), "{}", failure.detail);
            assert!(!failure.retried());
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    fn answer(
        status: u16,
        pairs: &[(&'static str, &'static str)],
        body: &'static str,
    ) -> Result<Bytes, FetchFailure> {
        classify(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            Body::Whole(Bytes::from_static(body.as_bytes())),
            "resp_1",
            SystemTime::UNIX_EPOCH,
            MAX,
        )
    }

    const KEY_REFUSED: &str = r#"{"error":{"message":"Incorrect API key provided: sk-test-***********1234.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

    #[test]
    fn the_object_is_a_2xx_json_object_and_nothing_else() {
        let object = r#"{"id":"resp_1","object":"response","status":"completed"}"#;
        assert_eq!(answer(200, &[], object).unwrap(), object.as_bytes());
        for (body, result) in [
            ("[1]", EnrichResult::InvalidAnswer),
            ("<html>", EnrichResult::InvalidAnswer),
            (r#"{"id":"resp_1""#, EnrichResult::InvalidAnswer),
            // Not the object fetched.
            (
                r#"{"id":"resp_2","object":"response"}"#,
                EnrichResult::InvalidAnswer,
            ),
            (r#"{"object":"response"}"#, EnrichResult::InvalidAnswer),
            (
                r#"{"id":1,"object":"response"}"#,
                EnrichResult::InvalidAnswer,
            ),
        ] {
            assert_eq!(answer(200, &[], body).unwrap_err().result, result, "{body}");
        }
        let broken = classify(
            StatusCode::OK,
            &HeaderMap::new(),
            Body::Broken,
            "resp_1",
            SystemTime::UNIX_EPOCH,
            MAX,
        );
        assert!(broken.unwrap_err().retried());
        let large = classify(
            StatusCode::OK,
            &HeaderMap::new(),
            Body::TooLarge,
            "resp_1",
            SystemTime::UNIX_EPOCH,
            MAX,
        )
        .unwrap_err();
        assert_eq!(large.result, EnrichResult::Refused);
        assert!(
            large.detail.contains("larger than 16 MiB"),
            "{}",
            large.detail
        );
    }

    #[test]
    fn a_refused_key_is_final_and_its_message_is_never_kept() {
        for status in [401, 403] {
            let failure =
                answer(status, &[("x-request-id", "req_abc123")], KEY_REFUSED).unwrap_err();
            assert_eq!(failure.result, EnrichResult::KeyRefused);
            assert_eq!(failure.status, Some(status));
            assert!(!failure.retried());
            assert_eq!(
                failure.detail,
                format!(
                    "the OpenAI API answered {status} (invalid_request_error, invalid_api_key): the API \
                     key was refused (or may not use that organization or project) (x-request-id req_abc123)"
                )
            );
            assert!(!failure.detail.contains("sk-"), "{}", failure.detail);
        }
    }

    #[test]
    fn not_found_is_final_and_says_why_it_happens() {
        let failure = answer(404, &[], r#"{"error":{"message":"Response with id 'resp_1' not found.","type":"invalid_request_error","param":null,"code":null}}"#)
            .unwrap_err();
        assert_eq!(failure.result, EnrichResult::NotFound);
        assert!(!failure.retried());
        assert!(
            failure.detail.starts_with(
                "the OpenAI API answered 404 (invalid_request_error): no such object (it expired"
            ),
            "{}",
            failure.detail
        );
        assert!(!failure.detail.contains("resp_1"), "never the message");
    }

    #[test]
    fn throttling_and_server_errors_are_retried_and_other_refusals_are_not() {
        for (status, result, retried) in [
            (429, EnrichResult::RateLimited, true),
            (500, EnrichResult::ServerError, true),
            (503, EnrichResult::ServerError, true),
            (408, EnrichResult::ServerError, true),
            (409, EnrichResult::ServerError, true),
            (400, EnrichResult::Refused, false),
            (422, EnrichResult::Refused, false),
            (302, EnrichResult::Refused, false),
        ] {
            let failure = answer(status, &[], "{}").unwrap_err();
            assert_eq!(
                (failure.result, failure.retried()),
                (result, retried),
                "{status}"
            );
            assert_eq!(failure.detail, format!("the OpenAI API answered {status}"));
        }
        let failure = answer(429, &[("retry-after", "2")], r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#)
            .unwrap_err();
        assert_eq!(failure.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(
            failure.detail,
            "the OpenAI API answered 429 (requests, rate_limit_exceeded)"
        );
    }

    #[test]
    fn only_plain_tokens_of_an_error_are_kept() {
        assert_eq!(
            error_kind(br#"{"error":{"type":"server_error","code":null}}"#),
            " (server_error)"
        );
        assert_eq!(
            error_kind(br#"{"error":{"type":"a b","code":"sk-live key"}}"#),
            ""
        );
        assert_eq!(error_kind(b"<html>"), "");
    }
}
