//! Signature verification: `trait Verifier` and the registry of schemes.
//!
//! A scheme is one file in this folder with a `build` function and one line in
//! `SCHEMES`. Verifiers are pure: headers, raw body and the current time in, a
//! `Delivery` or a `VerifyError` out, so published vectors test them without a server.
//! They never see re-serialised JSON: the bytes verified are the bytes forwarded.

pub mod standard_webhooks;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

use crate::config::SourceFile;

/// Builds a verifier from a `[[sources]]` block; errors name the key relative to it.
type Build = fn(&SourceFile) -> Result<Arc<dyn Verifier>, String>;

/// Every scheme hookgate knows, by its `scheme = "..."` name.
const SCHEMES: &[(&str, Build)] = &[("standard-webhooks", standard_webhooks::build)];

pub trait Verifier: Send + Sync + fmt::Debug {
    /// Checks that `body` was signed by the sender and is fresh at `now`.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Delivery, VerifyError>;

    /// A short description for `hookgate check`, never including key material.
    fn describe(&self) -> String;
}

/// What verification established about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The sender's delivery id: the dedupe key within its source.
    pub id: String,
    /// Which configured secret matched (its position), for rotation bookkeeping.
    pub secret_index: usize,
}

/// Why a request is not accepted as signed by its sender. All are answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header {0} is missing")]
    MissingHeader(HeaderName),
    #[error("the delivery id is empty, too long or not printable ASCII")]
    MalformedId,
    #[error("the timestamp is not a Unix time in seconds")]
    MalformedTimestamp,
    #[error("the signature header holds no signature this scheme can check")]
    MalformedSignature,
    #[error("no signature matches any configured secret")]
    InvalidSignature,
    #[error("the timestamp is {age:?} old, beyond the tolerance")]
    TimestampTooOld { age: Duration },
    #[error("the timestamp is {ahead:?} in the future, beyond the tolerance")]
    TimestampTooNew { ahead: Duration },
}

impl VerifyError {
    /// Stale (replayed or badly clocked) rather than forged: counted apart.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            VerifyError::TimestampTooOld { .. } | VerifyError::TimestampTooNew { .. }
        )
    }
}

/// Finds the scheme named in `source.scheme` and builds its verifier.
pub fn build(source: &SourceFile) -> Result<(&'static str, Arc<dyn Verifier>), String> {
    let Some((name, build)) = SCHEMES.iter().find(|(name, _)| *name == source.scheme) else {
        let known: Vec<&str> = SCHEMES.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "scheme {:?} is unknown; known schemes: {}",
            source.scheme,
            known.join(", ")
        ));
    };
    Ok((name, build(source)?))
}

/// Checks a Unix timestamp against `now` with the same tolerance in both directions.
pub fn check_freshness(
    timestamp: i64,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let now = unix_seconds(now);
    let age = now.saturating_sub(timestamp);
    if age > 0 && age.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::TimestampTooOld {
            age: Duration::from_secs(age.unsigned_abs()),
        });
    }
    if age < 0 && age.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::TimestampTooNew {
            ahead: Duration::from_secs(age.unsigned_abs()),
        });
    }
    Ok(())
}

pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A header as text, or `MissingHeader`; a value that is not visible ASCII counts as `malformed`.
pub fn header<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    malformed: VerifyError,
) -> Result<&'h str, VerifyError> {
    let value = headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.clone()))?;
    value.to_str().map_err(|_| malformed)
}
