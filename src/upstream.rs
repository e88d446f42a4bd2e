//! What an upstream did with a delivery: a fact, told by `forward` and judged in two
//! places. `reject::answer` decides what the sender gets in proxy mode (a 2xx or plain
//! error is relayed; a redirect, 410, timeout or broken exchange becomes the gateway's
//! own 502/504), and the queue's retry policy (`queue::RetryOn`) decides whether a
//! queued delivery is tried again. Nothing here decides either.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// What the upstream answered: its status and the start of its body.
#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub status: StatusCode,
    /// Present only when `body` is the whole body (not cut short or lost).
    pub content_type: Option<HeaderValue>,
    /// At most `forward::MAX_REPLY_BYTES` (2xx) or `forward::MAX_ERROR_REPLY_BYTES`;
    /// empty when the body was longer, stalled or broke.
    pub body: Bytes,
    /// How long a refusing upstream asked to be left alone (`retry_after`): a queued
    /// delivery's retry waits at least that long.
    pub retry_after: Option<Duration>,
}

/// OpenAI's header for it, in milliseconds; others send only `Retry-After`.
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// How long an answer asks to wait: `retry-after-ms`, else `Retry-After` as seconds
/// (fractions allowed, as OpenAI's SDKs read it) or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |text: &str, scale: f64| {
        text.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .and_then(|n| Duration::try_from_secs_f64(n / scale).ok())
    };
    if let Some(ms) = text(RETRY_AFTER_MS).and_then(|t| seconds(t, 1000.0)) {
        return Some(ms);
    }
    let after = text(http::header::RETRY_AFTER)?;
    seconds(after, 1.0).or_else(|| {
        let at = httpdate::parse_http_date(after).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    })
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

    #[test]
    fn retry_after_is_read_in_milliseconds_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let read = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            retry_after(&headers, now)
        };
        assert_eq!(read(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            read(&[("retry-after", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            read(&[("retry-after-ms", "250"), ("retry-after", "3")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            read(&[("retry-after", "Wed, 21 Oct 2015 07:28:10 GMT")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            read(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]),
            Some(Duration::ZERO),
            "a date in the past: at once"
        );
        assert_eq!(read(&[("retry-after", "-1")]), None);
        assert_eq!(read(&[("retry-after", "soon")]), None);
        assert_eq!(read(&[]), None);
    }

    fn answered(status: u16) -> UpstreamOutcome {
        UpstreamOutcome::Answered(UpstreamReply {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::new(),
            retry_after: None,
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
