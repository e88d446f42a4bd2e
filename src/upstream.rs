//! What an upstream did with a delivery: a fact, told by `forward` and judged in two
//! places. `reject::answer` decides what the sender gets in proxy mode (a 2xx or plain
//! error is relayed; a redirect, 410, timeout or broken exchange becomes the gateway's
//! own 502/504), and the queue's retry policy (`queue::RetryOn`) decides whether a
//! queued delivery is tried again. Nothing here decides either.

use std::fmt;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderValue;

/// What the upstream answered: its status and the start of its body.
#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub status: StatusCode,
    /// Present only when `body` is the whole body (not cut short or lost).
    pub content_type: Option<HeaderValue>,
    /// At most `forward::MAX_REPLY_BYTES` (2xx) or `forward::MAX_ERROR_REPLY_BYTES`;
    /// empty when the body was longer, stalled or broke.
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub enum UpstreamOutcome {
    /// A status other than 3xx and 410: a 2xx delivered the event, anything else
    /// refused it in a way the sender may see.
    Answered(UpstreamReply),
    /// A 3xx: senders read it as "moved", which a backend must never decide by accident.
    Redirect(StatusCode),
    /// 410: senders read it as "disable this endpoint".
    Gone,
    /// No answer within `limits.upstream_timeout`.
    Timeout,
    /// No connection (refused, unresolvable, TLS failure); the detail names the
    /// upstream's host and port, never its credentials.
    Unreachable(String),
    /// The connection broke before a whole answer (reset, malformed response).
    Broken(String),
}

impl UpstreamOutcome {
    /// The upstream took the delivery: it answered 2xx.
    pub fn is_delivered(&self) -> bool {
        matches!(self, UpstreamOutcome::Answered(reply) if reply.status.is_success())
    }

    /// The status the upstream answered with, when it answered at all.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            UpstreamOutcome::Answered(reply) => Some(reply.status),
            UpstreamOutcome::Redirect(status) => Some(*status),
            UpstreamOutcome::Gone => Some(StatusCode::GONE),
            UpstreamOutcome::Timeout
            | UpstreamOutcome::Unreachable(_)
            | UpstreamOutcome::Broken(_) => None,
        }
    }
}

/// As logs and attempt records tell it, after "upstream of route <route>: ".
impl fmt::Display for UpstreamOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamOutcome::Answered(reply) => write!(f, "answered {}", reply.status),
            UpstreamOutcome::Redirect(status) => write!(f, "answered with redirect {status}"),
            UpstreamOutcome::Gone => f.write_str("answered 410 Gone"),
            UpstreamOutcome::Timeout => f.write_str("no answer within limits.upstream_timeout"),
            UpstreamOutcome::Unreachable(detail) => write!(f, "unreachable: {detail}"),
            UpstreamOutcome::Broken(detail) => write!(f, "failed: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> UpstreamOutcome {
        UpstreamOutcome::Answered(UpstreamReply {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::new(),
        })
    }

    #[test]
    fn only_a_2xx_answer_is_a_delivery() {
        assert!(answered(200).is_delivered());
        assert!(answered(204).is_delivered());
        for outcome in [
            answered(500),
            answered(422),
            UpstreamOutcome::Redirect(StatusCode::FOUND),
            UpstreamOutcome::Gone,
            UpstreamOutcome::Timeout,
            UpstreamOutcome::Unreachable("x".into()),
            UpstreamOutcome::Broken("x".into()),
        ] {
            assert!(!outcome.is_delivered(), "{outcome}");
        }
    }

    #[test]
    fn statuses_are_those_the_upstream_answered() {
        assert_eq!(
            answered(503).status(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(UpstreamOutcome::Gone.status(), Some(StatusCode::GONE));
        assert_eq!(UpstreamOutcome::Timeout.status(), None);
    }
}
