//! Every answer the sender can get, and its status, reason and metric label, in one place.
//!
//! Stages return facts (`VerifyError`, `UpstreamOutcome`, ...); this module alone decides
//! what the client sees. Bodies are `{"error":"<reason>"}` with a stable, documented
//! reason, never internal error text. The tables in the README mirror these matches.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::body_budget;
use crate::event::PayloadError;
use crate::metrics::Outcome;
use crate::queue::QueueError;
use crate::store::StoreError;
use crate::upstream::{UpstreamOutcome, UpstreamReply};
use crate::verify::VerifyError;

/// How long a sender should wait after a store failure before retrying.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the sender is answered when no stage refused its request.
#[derive(Debug)]
pub enum Answer {
    /// The upstream answered with a status the sender may see (2xx, or a plain error
    /// such as 422 or 500); its status and body go back to the sender as they were.
    Relayed(UpstreamReply),
    /// This delivery was already forwarded successfully: 200, not forwarded again.
    Duplicate,
    /// Verified, but no route matches its event type: 202, not forwarded.
    Unrouted,
    /// Queue mode: stored durably; a worker delivers it. 202 with the delivery id, and
    /// for a fan-out route the id of each upstream's copy (the first is `delivery_id`).
    Queued { delivery_ids: Vec<String> },
}

/// A request that was not (successfully) forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("the request's header fields exceed limits.max_headers or limits.max_header_bytes")]
    HeadersTooLarge,
    #[error("this client IP is not in the source's allow_ips")]
    IpNotAllowed,
    #[error("this client failed verification too often and is in the penalty box")]
    PenaltyBox { retry_after: Duration },
    #[error("no source is configured for this path")]
    NotFound,
    #[error("only POST is accepted")]
    MethodNotAllowed,
    /// Two copies of a header the source reads (including a spelling with `_`, which
    /// CGI-style backends merge with it): hookgate and the backend could read different ones.
    #[error("header {0} is sent more than once")]
    DuplicateHeader(HeaderName),
    /// `Connection` would strip a header the source reads before the backend sees it.
    #[error("the Connection header lists {0}, which the source reads")]
    ConnectionStripsHeader(HeaderName),
    #[error("the body has a Content-Encoding other than identity")]
    UnsupportedContentEncoding,
    #[error("the body is larger than limits.max_body_bytes")]
    TooLarge,
    #[error("the body was not received within limits.body_read_timeout")]
    BodyTimeout,
    #[error("the body could not be read")]
    BadBody,
    /// The client's or the process's budget for bodies being read stayed full.
    #[error(transparent)]
    BodyBufferFull(#[from] body_budget::Full),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    InvalidPayload(#[from] PayloadError),
    #[error("a copy of this delivery is being forwarded right now")]
    InFlight { retry_after: Duration },
    #[error("too many requests from this client")]
    RateLimited { retry_after: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Proxy mode: the route's upstream failed `breaker.failures` times in a row and is
    /// left alone for the rest of its cooldown; nothing was sent.
    #[error("the circuit breaker of the route's upstream is open")]
    CircuitOpen { retry_after: Duration },
    /// Queue mode: the delivery could not be stored; the sender must retry.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The upstream did not answer in a way the sender may see: a redirect or 410 (a
    /// sender could disable the endpoint), a timeout, no connection, a broken exchange.
    /// `UpstreamOutcome::Answered` only with a final 1xx or a status past 599: `answer`
    /// relays the others.
    #[error("upstream of route {route}: {outcome}")]
    Upstream {
        route: String,
        outcome: UpstreamOutcome,
    },
}

/// What the sender gets for the upstream's answer (proxy mode): an answer it may see is
/// relayed; everything else is the gateway's own 502 or 504. A status from 600 to 999
/// (the HTTP crate takes them) is no HTTP status a sender knows what to do with, and a
/// final 1xx (`101 Switching Protocols`: the client hands over the interim ones) would
/// switch the sender's connection to a protocol nobody speaks on it: 502.
pub fn answer(route: &str, outcome: UpstreamOutcome) -> Result<Answer, Reject> {
    match outcome {
        UpstreamOutcome::Answered(reply) if (200..600).contains(&reply.status.as_u16()) => {
            Ok(Answer::Relayed(reply))
        }
        outcome => Err(Reject::Upstream {
            route: route.to_owned(),
            outcome,
        }),
    }
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::IpNotAllowed => StatusCode::FORBIDDEN,
            Reject::PenaltyBox { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::BadBody
            | Reject::DuplicateHeader(_)
            | Reject::ConnectionStripsHeader(_)
            | Reject::Verify(_)
            | Reject::InvalidPayload(_) => StatusCode::BAD_REQUEST,
            Reject::UnsupportedContentEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::InFlight { .. } => StatusCode::CONFLICT,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::Store(_)
            | Reject::Queue(_)
            | Reject::BodyBufferFull(_)
            | Reject::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Upstream {
                outcome: UpstreamOutcome::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            // Includes upstream 3xx and 410: senders read those as "moved" or "disable
            // this endpoint", which must never be decided by a backend's accident.
            Reject::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The machine-readable `error` in the body.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::IpNotAllowed => "ip_not_allowed",
            Reject::PenaltyBox { .. } => "penalty_box",
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::TooLarge => "body_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::BadBody => "bad_request",
            Reject::BodyBufferFull(_) => "body_buffer_full",
            Reject::DuplicateHeader(_) => "duplicate_header",
            Reject::ConnectionStripsHeader(_) => "connection_strips_header",
            Reject::UnsupportedContentEncoding => "unsupported_content_encoding",
            Reject::Verify(e) => match e {
                VerifyError::MissingHeader(_) => "missing_header",
                VerifyError::MalformedId => "malformed_id",
                VerifyError::MalformedTimestamp => "malformed_timestamp",
                VerifyError::MalformedSignature => "malformed_signature",
                VerifyError::InvalidSignature => "invalid_signature",
                VerifyError::TimestampTooOld { .. } => "timestamp_too_old",
                VerifyError::TimestampTooNew { .. } => "timestamp_too_new",
            },
            Reject::InvalidPayload(e) => match e {
                PayloadError::MissingHeader(_) => "missing_header",
                PayloadError::MalformedDedupeKey => "malformed_id",
                PayloadError::NotJson
                | PayloadError::DuplicateKey
                | PayloadError::NoEventType
                | PayloadError::EventTypeControl
                | PayloadError::NoDedupeKey => "invalid_payload",
                PayloadError::EventTypeTooLong => "event_type_too_long",
            },
            Reject::InFlight { .. } => "in_flight",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::Store(_) => "store_unavailable",
            Reject::Queue(_) => "queue_unavailable",
            Reject::CircuitOpen { .. } => "upstream_circuit_open",
            Reject::Upstream { outcome, .. } => match outcome {
                UpstreamOutcome::Timeout => "upstream_timeout",
                UpstreamOutcome::Unreachable(_) => "upstream_unreachable",
                UpstreamOutcome::Redirect(_) => "upstream_redirect",
                UpstreamOutcome::Gone => "upstream_gone",
                UpstreamOutcome::Broken(_) | UpstreamOutcome::Answered(_) => "upstream_failed",
            },
        }
    }

    /// The `outcome` label of `hookgate_requests_total`.
    pub fn outcome(&self) -> Outcome {
        match self {
            Reject::HeadersTooLarge => Outcome::HeadersTooLarge,
            Reject::IpNotAllowed => Outcome::IpNotAllowed,
            Reject::PenaltyBox { .. } => Outcome::PenaltyBox,
            Reject::NotFound => Outcome::NotFound,
            Reject::MethodNotAllowed => Outcome::MethodNotAllowed,
            Reject::TooLarge => Outcome::TooLarge,
            Reject::BodyTimeout
            | Reject::BadBody
            | Reject::DuplicateHeader(_)
            | Reject::ConnectionStripsHeader(_)
            | Reject::UnsupportedContentEncoding => Outcome::BadRequest,
            Reject::BodyBufferFull(_) => Outcome::BodyBufferFull,
            Reject::Verify(e) if e.is_stale() => Outcome::Stale,
            Reject::Verify(_) => Outcome::InvalidSignature,
            Reject::InvalidPayload(_) => Outcome::InvalidPayload,
            Reject::InFlight { .. } => Outcome::InFlight,
            Reject::RateLimited { .. } => Outcome::RateLimited,
            Reject::Store(_) => Outcome::StoreError,
            Reject::Queue(_) => Outcome::QueueError,
            Reject::CircuitOpen { .. } => Outcome::CircuitOpen,
            Reject::Upstream {
                outcome: UpstreamOutcome::Timeout,
                ..
            } => Outcome::UpstreamTimeout,
            Reject::Upstream { .. } => Outcome::UpstreamError,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Reject::InFlight { retry_after }
            | Reject::RateLimited { retry_after }
            | Reject::PenaltyBox { retry_after }
            | Reject::CircuitOpen { retry_after } => Some(*retry_after),
            Reject::Store(_) | Reject::Queue(_) => Some(STORE_RETRY_AFTER),
            Reject::BodyBufferFull(_) => Some(body_budget::RETRY_AFTER),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = match &self {
            // Header names are tokens: nothing in them needs escaping in JSON.
            Reject::Verify(VerifyError::MissingHeader(name))
            | Reject::InvalidPayload(PayloadError::MissingHeader(name))
            | Reject::DuplicateHeader(name)
            | Reject::ConnectionStripsHeader(name) => {
                format!(r#"{{"error":"{}","header":"{name}"}}"#, self.reason())
            }
            _ => format!(r#"{{"error":"{}"}}"#, self.reason()),
        };
        let mut response = json_response(status, body);
        if let Some(wait) = self.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds(wait)));
        }
        if matches!(self, Reject::MethodNotAllowed) {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

impl Answer {
    pub fn outcome(&self) -> Outcome {
        match self {
            Answer::Relayed(reply) if reply.status.is_success() => Outcome::Forwarded,
            Answer::Relayed(_) => Outcome::UpstreamError,
            Answer::Duplicate => Outcome::Duplicate,
            Answer::Unrouted => Outcome::Unrouted,
            Answer::Queued { .. } => Outcome::Queued,
        }
    }

    /// For the access log: why a relayed answer is not a delivery.
    pub fn detail(&self) -> Option<String> {
        match self {
            Answer::Relayed(reply) if !reply.status.is_success() => {
                Some(format!("the upstream answered {}", reply.status))
            }
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Answer::Relayed(reply) => relay(reply),
            Answer::Duplicate => json_response(StatusCode::OK, r#"{"duplicate":true}"#.into()),
            Answer::Unrouted => json_response(StatusCode::ACCEPTED, r#"{"routed":false}"#.into()),
            // Ids are generated by hookgate (`dlv_` + hex): nothing to escape.
            Answer::Queued { delivery_ids } => {
                let first = delivery_ids.first().map(String::as_str).unwrap_or_default();
                let body = match delivery_ids.as_slice() {
                    [_] | [] => format!(r#"{{"queued":true,"delivery_id":"{first}"}}"#),
                    all => format!(
                        r#"{{"queued":true,"delivery_id":"{first}","delivery_ids":["{}"]}}"#,
                        all.join(r#"",""#)
                    ),
                };
                json_response(StatusCode::ACCEPTED, body)
            }
        }
    }
}

/// The upstream's status and body, as it answered (the body as `forward` kept it).
fn relay(reply: UpstreamReply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    if let Some(content_type) = reply.content_type {
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    response
}

/// Whole seconds, rounded up, at least 1: `Retry-After: 0` would invite a busy loop.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

pub fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn upstream(outcome: UpstreamOutcome) -> Reject {
        Reject::Upstream {
            route: "s/0".into(),
            outcome,
        }
    }

    fn reply(status: u16) -> UpstreamReply {
        UpstreamReply {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::from_static(b"upstream says no"),
            retry_after: None,
        }
    }

    #[test]
    fn every_reject_has_its_documented_status_reason_and_outcome() {
        let cases: Vec<(Reject, u16, &str, &str)> = vec![
            (
                Reject::HeadersTooLarge,
                431,
                "headers_too_large",
                "headers_too_large",
            ),
            (
                Reject::IpNotAllowed,
                403,
                "ip_not_allowed",
                "ip_not_allowed",
            ),
            (
                Reject::PenaltyBox {
                    retry_after: Duration::from_secs(30),
                },
                429,
                "penalty_box",
                "penalty_box",
            ),
            (
                Reject::CircuitOpen {
                    retry_after: Duration::from_millis(2500),
                },
                503,
                "upstream_circuit_open",
                "circuit_open",
            ),
            (Reject::NotFound, 404, "not_found", "not_found"),
            (
                Reject::MethodNotAllowed,
                405,
                "method_not_allowed",
                "method_not_allowed",
            ),
            (Reject::TooLarge, 413, "body_too_large", "too_large"),
            (Reject::BodyTimeout, 408, "body_timeout", "bad_request"),
            (Reject::BadBody, 400, "bad_request", "bad_request"),
            (
                body_budget::Full(body_budget::Scope::Client).into(),
                503,
                "body_buffer_full",
                "body_buffer_full",
            ),
            (
                body_budget::Full(body_budget::Scope::Process).into(),
                503,
                "body_buffer_full",
                "body_buffer_full",
            ),
            (
                Reject::DuplicateHeader(HeaderName::from_static("webhook-id")),
                400,
                "duplicate_header",
                "bad_request",
            ),
            (
                Reject::ConnectionStripsHeader(HeaderName::from_static("webhook-signature")),
                400,
                "connection_strips_header",
                "bad_request",
            ),
            (
                Reject::UnsupportedContentEncoding,
                415,
                "unsupported_content_encoding",
                "bad_request",
            ),
            (
                VerifyError::MissingHeader(HeaderName::from_static("webhook-id")).into(),
                400,
                "missing_header",
                "invalid_signature",
            ),
            (
                VerifyError::MalformedId.into(),
                400,
                "malformed_id",
                "invalid_signature",
            ),
            (
                VerifyError::MalformedTimestamp.into(),
                400,
                "malformed_timestamp",
                "invalid_signature",
            ),
            (
                VerifyError::MalformedSignature.into(),
                400,
                "malformed_signature",
                "invalid_signature",
            ),
            (
                VerifyError::InvalidSignature.into(),
                400,
                "invalid_signature",
                "invalid_signature",
            ),
            (
                VerifyError::TimestampTooOld {
                    age: Duration::from_secs(600),
                }
                .into(),
                400,
                "timestamp_too_old",
                "stale",
            ),
            (
                VerifyError::TimestampTooNew {
                    ahead: Duration::from_secs(600),
                }
                .into(),
                400,
                "timestamp_too_new",
                "stale",
            ),
            (
                PayloadError::NotJson.into(),
                400,
                "invalid_payload",
                "invalid_payload",
            ),
            (
                PayloadError::DuplicateKey.into(),
                400,
                "invalid_payload",
                "invalid_payload",
            ),
            (
                PayloadError::NoEventType.into(),
                400,
                "invalid_payload",
                "invalid_payload",
            ),
            (
                PayloadError::EventTypeTooLong.into(),
                400,
                "event_type_too_long",
                "invalid_payload",
            ),
            (
                PayloadError::NoDedupeKey.into(),
                400,
                "invalid_payload",
                "invalid_payload",
            ),
            (
                PayloadError::MalformedDedupeKey.into(),
                400,
                "malformed_id",
                "invalid_payload",
            ),
            (
                PayloadError::MissingHeader(HeaderName::from_static("x-github-event")).into(),
                400,
                "missing_header",
                "invalid_payload",
            ),
            (
                Reject::InFlight {
                    retry_after: Duration::from_secs(3),
                },
                409,
                "in_flight",
                "in_flight",
            ),
            (
                Reject::RateLimited {
                    retry_after: Duration::from_millis(20),
                },
                429,
                "rate_limited",
                "rate_limited",
            ),
            (
                StoreError::Timeout.into(),
                503,
                "store_unavailable",
                "store_error",
            ),
            (
                QueueError::Store(StoreError::Timeout).into(),
                503,
                "queue_unavailable",
                "queue_error",
            ),
            (
                upstream(UpstreamOutcome::Timeout),
                504,
                "upstream_timeout",
                "upstream_timeout",
            ),
            (
                upstream(UpstreamOutcome::Unreachable("refused".into())),
                502,
                "upstream_unreachable",
                "upstream_error",
            ),
            (
                upstream(UpstreamOutcome::Redirect(StatusCode::MOVED_PERMANENTLY)),
                502,
                "upstream_redirect",
                "upstream_error",
            ),
            (
                upstream(UpstreamOutcome::Gone),
                502,
                "upstream_gone",
                "upstream_error",
            ),
            (
                upstream(UpstreamOutcome::Broken("reset".into())),
                502,
                "upstream_failed",
                "upstream_error",
            ),
        ];
        for (reject, status, reason, outcome) in cases {
            let label = format!("{reject:?}");
            assert_eq!(reject.status().as_u16(), status, "{label}");
            assert_eq!(reject.reason(), reason, "{label}");
            assert_eq!(reject.outcome().label(), outcome, "{label}");
        }
    }

    #[test]
    fn only_final_statuses_a_sender_knows_are_relayed() {
        for (status, relayed) in [
            (101, false),
            (200, true),
            (404, true),
            (599, true),
            (600, false),
        ] {
            let answered = answer("s/0", UpstreamOutcome::Answered(reply(status)));
            assert_eq!(answered.is_ok(), relayed, "{status}");
            if let Err(reject) = answered {
                assert_eq!(
                    (reject.status().as_u16(), reject.reason()),
                    (502, "upstream_failed")
                );
            }
        }
    }

    #[test]
    fn bodies_are_json_with_the_reason_only() {
        let response = Reject::Verify(VerifyError::InvalidSignature).into_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body();
        let text = format!("{body:?}");
        assert!(
            text.contains(r#"{\"error\":\"invalid_signature\"}"#),
            "{text}"
        );
    }

    #[test]
    fn header_refusals_name_the_header() {
        for (reject, body) in [
            (
                Reject::DuplicateHeader(HeaderName::from_static("webhook-id")),
                r#"{\"error\":\"duplicate_header\",\"header\":\"webhook-id\"}"#,
            ),
            (
                Reject::ConnectionStripsHeader(HeaderName::from_static("x-github-event")),
                r#"{\"error\":\"connection_strips_header\",\"header\":\"x-github-event\"}"#,
            ),
        ] {
            let text = format!("{:?}", reject.into_response().into_body());
            assert!(text.contains(body), "{text}");
        }
    }

    #[test]
    fn waits_are_announced_in_whole_seconds_rounded_up() {
        let response = Reject::RateLimited {
            retry_after: Duration::from_millis(20),
        }
        .into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let response = Reject::InFlight {
            retry_after: Duration::from_millis(2500),
        }
        .into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        let response = Reject::Store(StoreError::Timeout).into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        let response = Reject::PenaltyBox {
            retry_after: Duration::from_millis(599_500),
        }
        .into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "600");
        let response = Reject::Queue(QueueError::Store(StoreError::Timeout)).into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        let response = Reject::from(body_budget::Full(body_budget::Scope::Client)).into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn method_not_allowed_says_what_is() {
        assert_eq!(
            Reject::MethodNotAllowed.into_response().headers()[ALLOW],
            "POST"
        );
    }

    #[test]
    fn answers_have_their_statuses_and_outcomes() {
        assert_eq!(Answer::Duplicate.into_response().status(), 200);
        assert_eq!(Answer::Unrouted.into_response().status(), 202);
        let queued = Answer::Queued {
            delivery_ids: vec!["dlv_1".into()],
        }
        .into_response();
        assert_eq!(queued.status(), 202);
        let body = format!("{:?}", queued.into_body());
        assert!(
            body.contains(r#"{\"queued\":true,\"delivery_id\":\"dlv_1\"}"#),
            "{body}"
        );
        let fanned = Answer::Queued {
            delivery_ids: vec!["dlv_1".into(), "dlv_2".into()],
        }
        .into_response();
        let body = format!("{:?}", fanned.into_body());
        assert!(
            body.contains(
                r#"{\"queued\":true,\"delivery_id\":\"dlv_1\",\"delivery_ids\":[\"dlv_1\",\"dlv_2\"]}"#
            ),
            "{body}"
        );
        for (status, outcome, detail) in [
            (201, "forwarded", None),
            (
                422,
                "upstream_error",
                Some("the upstream answered 422 Unprocessable Entity"),
            ),
            (
                500,
                "upstream_error",
                Some("the upstream answered 500 Internal Server Error"),
            ),
        ] {
            let relayed = Answer::Relayed(reply(status));
            assert_eq!(relayed.outcome().label(), outcome, "{status}");
            assert_eq!(relayed.detail().as_deref(), detail, "{status}");
            assert_eq!(relayed.into_response().status(), status);
        }
    }

    #[test]
    fn only_answers_the_sender_may_see_are_relayed() {
        let answered = UpstreamOutcome::Answered(reply(500));
        assert!(matches!(answer("s/0", answered), Ok(Answer::Relayed(r)) if r.status == 500));
        let gone = answer("s/0", UpstreamOutcome::Gone).unwrap_err();
        assert_eq!(gone.status(), 502);
        assert_eq!(gone.to_string(), "upstream of route s/0: answered 410 Gone");
    }
}
