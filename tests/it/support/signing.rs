//! Signed deliveries as senders make them: `signed_event` (as `hookgate sign` builds one),
//! `signed_body` and `signed_raw` (any secret, id, timestamp and body), and `Edit`, to
//! break a delivery one way at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use hookgate::sign::{SignInput, SignedRequest};
use hookgate::verify::standard_webhooks::{key_from_secret, sign};
use http::header::{CONTENT_TYPE, HeaderName};

use super::SECRET;

pub fn now_unix() -> i64 {
    hookgate::verify::unix_seconds(SystemTime::now())
}

/// A fresh delivery id, unique within the test run.
pub fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "msg_it_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An event of `event_type` as `hookgate sign` builds it, signed with `SECRET` now.
pub fn signed_event(event_type: &str) -> SignedRequest {
    signed_event_with(SECRET, event_type)
}

pub fn signed_event_with(secret: &str, event_type: &str) -> SignedRequest {
    hookgate::sign::build(
        &SignInput {
            secret,
            event_type,
            data: Some(r#"{"id":"resp_1"}"#),
            id: None,
            timestamp: None,
        },
        SystemTime::now(),
    )
    .expect("a valid delivery")
}

/// `body` exactly as given, signed with `SECRET` under a fresh id, now.
pub fn signed_body(body: &str) -> SignedRequest {
    signed_raw(SECRET, &fresh_id(), now_unix(), body)
}

/// A delivery signed by hand: any secret, id, timestamp and body.
pub fn signed_raw(secret: &str, id: &str, timestamp: i64, body: &str) -> SignedRequest {
    let key = key_from_secret(secret).expect("a valid secret");
    SignedRequest {
        id: id.to_owned(),
        headers: vec![
            (CONTENT_TYPE, "application/json".to_owned()),
            (HeaderName::from_static("webhook-id"), id.to_owned()),
            (
                HeaderName::from_static("webhook-timestamp"),
                timestamp.to_string(),
            ),
            (
                HeaderName::from_static("webhook-signature"),
                sign(&key, id, timestamp, body.as_bytes()),
            ),
        ],
        body: body.to_owned(),
    }
}

/// Edits of a signed delivery, to break it one way at a time.
pub trait Edit {
    fn header(&self, name: &str) -> &str;
    /// Sets (or adds) a header; the signature is not recomputed.
    fn with_header(self, name: &'static str, value: &str) -> Self;
    fn without_header(self, name: &str) -> Self;
    /// Replaces the body; the signature is not recomputed.
    fn with_body(self, body: &str) -> Self;
}

impl Edit for SignedRequest {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the delivery has no {name} header"))
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        self.headers.push((name, value.to_owned()));
        self
    }

    fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn with_body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }
}
