//! What a scheme needs to sign like its senders (`SchemeOptions::sign`): the message in,
//! the request's headers and body out.
//!
//! `hookgate sign` (`crate::sign`) resolves the command line into a `SignMessage` and
//! prints or sends the `SignedRequest`; the schemes' property tests sign and verify with
//! the same types. Nothing here sends or reads the clock.

use std::hash::{BuildHasher, RandomState};
use std::time::SystemTime;

use http::HeaderName;

/// A request signed the way a scheme's senders sign.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// The delivery id the gateway will deduplicate on (`webhook-id`, Stripe's event id,
    /// `X-GitHub-Delivery`, the hmac id).
    pub id: String,
    /// Header names and values, in the order they are sent.
    pub headers: Vec<(HeaderName, String)>,
    pub body: String,
}

/// Why a message cannot be signed. The texts name `hookgate sign`'s flags.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("--secret: {0}")]
    Secret(String),
    #[error("--data is not valid JSON: {0}")]
    Data(serde_json::Error),
    #[error("--id must be printable ASCII without spaces")]
    Id,
    /// The gateway refuses such an event type (`event::checked_event_type`); one with a
    /// line break also broke the printed request's header lines.
    #[error(
        "--type must be 1 to {} bytes, without control characters",
        crate::event::MAX_EVENT_TYPE_LEN
    )]
    Type,
    #[error("--timestamp must be Unix seconds, 0 or more")]
    Timestamp,
    /// The scheme cannot sign this message (a timestamp it has no header for, ...).
    #[error("{0}")]
    Scheme(String),
}

/// What a scheme's signer gets: the inputs, checked and resolved.
pub struct SignMessage<'a> {
    pub secret: &'a str,
    pub event_type: &'a str,
    /// The payload's data, JSON as given (`{}` when none was given).
    pub data: &'a str,
    /// The delivery (or event) id; the scheme makes one up when `None`.
    pub id: Option<&'a str>,
    /// As given; the scheme uses `now` when `None` (and refuses one if it signs none).
    pub timestamp: Option<i64>,
    /// Unix seconds.
    pub now: i64,
}

/// 24 hex digits; unique enough for ids in tests and demos, not a secret.
pub fn random_hex() -> String {
    let state = RandomState::new();
    let a = state.hash_one(SystemTime::now());
    format!("{:016x}{:08x}", a, state.hash_one(a) as u32)
}
