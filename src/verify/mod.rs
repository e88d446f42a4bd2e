//! Signature verification: `trait Verifier` and the registry of schemes.
//!
//! A scheme is one file in this folder exporting a `SCHEME` (its name, and through its
//! `Options` struct the `[[sources]]` keys it reads, how to build its verifier and how to
//! sign like its senders) and one line in `SCHEMES`. Verifiers are pure: headers, raw body
//! and the current time in, a `Delivery` or a `VerifyError` out, so published vectors test
//! them without a server. They never see re-serialised JSON: the bytes verified are the
//! bytes forwarded.
//!
//! This module knows nothing of the config file: `config` hands a scheme the keys of a
//! source that are the scheme's own (`options.rs` reads them and refuses any other) and
//! the secrets, and settles everything else about the source. Nor does it decide what a
//! client sees when verification fails: that is `reject`'s job.

pub mod github;
pub mod hmac;
mod options;
mod signing;
pub mod standard_webhooks;
pub mod stripe;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};
use serde::de::DeserializeOwned;

use crate::event::Field;

pub use options::{KeyError, optional_header_name, parse_header_name};
use options::{keys_of, read};
pub use signing::{SignError, SignMessage, SignedRequest, random_hex};

/// The MAC every HMAC scheme here uses.
pub type HmacSha256 = ::hmac::Hmac<sha2::Sha256>;

/// Every scheme hookgate knows, by its `scheme = "..."` name: one line each.
pub const SCHEMES: &[Scheme] = &[
    standard_webhooks::SCHEME,
    stripe::SCHEME,
    github::SCHEME,
    hmac::SCHEME,
];

/// Accepted timestamp skew, both ways, when a source does not set `tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A source's `tolerance`, or the default. Timestamps are whole seconds, compared in
/// whole seconds: under one second (`"0s"`, `"500ms"`) only a request signed in the
/// current second would pass, and every sender's delivery would be refused as stale.
pub fn tolerance(configured: Option<Duration>) -> Result<Duration, KeyError> {
    match configured {
        None => Ok(DEFAULT_TOLERANCE),
        Some(t) if t < Duration::from_secs(1) => Err(KeyError::at(
            "tolerance",
            format!(
                "tolerance = {:?} must be at least 1s: timestamps are whole seconds",
                humantime::format_duration(t).to_string()
            ),
        )),
        // As every other window: 100 years at most.
        Some(t) if t > Duration::from_secs(100 * 365 * 24 * 3600) => Err(KeyError::at(
            "tolerance",
            format!(
                "tolerance = {:?} must be at most 100 years",
                humantime::format_duration(t).to_string()
            ),
        )),
        Some(t) => Ok(t),
    }
}

/// Signature entries one signature header may carry: Standard Webhooks' space-separated
/// entries, Stripe's elements other than `t=`. Senders send one per active secret (two
/// while they rotate; a Standard Webhooks sender may put `v1` and `v1a` side by side),
/// so five leaves room. A header with more is `MalformedSignature` before any entry is
/// decoded or checked: padding a header with guesses buys no signature work.
pub const MAX_SIGNATURE_ENTRIES: usize = 5;

/// Whether `entries` holds more than `MAX_SIGNATURE_ENTRIES`; reads no further than that.
pub fn too_many_entries<'a>(mut entries: impl Iterator<Item = &'a str>) -> bool {
    entries.nth(MAX_SIGNATURE_ENTRIES).is_some()
}

/// Everything hookgate knows about one signature scheme.
pub struct Scheme {
    pub name: &'static str,
    /// Reads the scheme's own keys of a source (its `Options`, which refuse any other
    /// key): from the config file, or from `hookgate sign`'s flags.
    pub options: fn(toml::Table) -> Result<Box<dyn SchemeOptions>, KeyError>,
    /// The keys `options` reads, in the order the scheme declares them.
    pub keys: fn() -> &'static [&'static str],
}

impl Scheme {
    /// The registry entry of the scheme `name` whose keys are the fields of `O`.
    pub const fn new<O: SchemeOptions + DeserializeOwned + 'static>(name: &'static str) -> Scheme {
        Scheme {
            name,
            options: boxed::<O>,
            keys: keys_of::<O>,
        }
    }
}

fn boxed<O: SchemeOptions + DeserializeOwned + 'static>(
    keys: toml::Table,
) -> Result<Box<dyn SchemeOptions>, KeyError> {
    read::<O>(keys).map(|options| Box::new(options) as Box<dyn SchemeOptions>)
}

/// Finds a scheme by name; the error lists the known ones.
pub fn scheme(name: &str) -> Result<&'static Scheme, String> {
    SCHEMES.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = SCHEMES.iter().map(|s| s.name).collect();
        format!(
            "scheme {name:?} is unknown; known schemes: {}",
            known.join(", ")
        )
    })
}

/// One scheme's own keys of a source, read: what builds its verifier and signs the way
/// its senders do. Each scheme's `Options` struct implements it.
pub trait SchemeOptions: fmt::Debug + Send + Sync {
    /// The verifier for `secrets`. Errors name the key relative to the source
    /// (`secrets[1]: ...`, `signed_content ...`).
    fn build(&self, secrets: &[SecretText<'_>]) -> Result<Built, KeyError>;

    /// Signs a message the way this scheme's senders do, for `hookgate sign`.
    fn sign(&self, message: &SignMessage<'_>) -> Result<SignedRequest, SignError>;

    /// The sender `provider = "..."` names, for a scheme that reads that key.
    fn provider(&self) -> Option<&str> {
        None
    }
}

/// A scheme's verifier and where its senders put the event type and the delivery id.
pub struct Built {
    pub verifier: Arc<dyn Verifier>,
    pub event_type: Field,
    /// `None` when the scheme has no delivery id of its own: `dedupe_key` is then required.
    pub dedupe_key: Option<Field>,
    /// Every header `verify` reads.
    pub headers: Vec<HeaderName>,
    /// Those of `headers` whose values the signature covers (a delivery id or a
    /// timestamp in the signed content; not the signature header itself).
    pub signed: Vec<HeaderName>,
}

/// One configured secret as a scheme sees it: its text, and when it stops being accepted.
#[derive(Clone, Copy)]
pub struct SecretText<'a> {
    pub text: &'a str,
    pub not_after: Option<SystemTime>,
}

impl<'a> SecretText<'a> {
    /// A secret with no `not_after`.
    pub fn new(text: &'a str) -> Self {
        SecretText {
            text,
            not_after: None,
        }
    }
}

impl fmt::Debug for SecretText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText(..)") // never key material
    }
}

pub trait Verifier: Send + Sync + fmt::Debug {
    /// Checks that `body` was signed by the sender and is fresh at `now`.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError>;

    /// A short description for `hookgate check`, never including key material.
    fn describe(&self) -> String;

    /// How old a signed timestamp may be; `None` when the scheme signs none (then only
    /// the dedupe key stops a replay, for `dedupe.ttl`).
    fn tolerance(&self) -> Option<std::time::Duration> {
        None
    }

    /// The checks of `verify` told step by step, for `hookgate verify`. `matched` says
    /// which secret's signature matches regardless of the time, so a correct but stale
    /// capture is told apart from a wrong secret.
    fn explain(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Explanation;
}

/// What verification established about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Which configured secret matched (its position): `hookgate_verified_total{secret}`.
    pub secret_index: usize,
}

/// A verifier's account of one request, for a human.
#[derive(Debug, Default)]
pub struct Explanation {
    /// What was read and checked, in order, one line each; never key material.
    pub steps: Vec<String>,
    /// The secret whose signature matches the body, whatever the time says.
    pub matched: Option<usize>,
    /// Scheme-specific guesses at the mistake.
    pub hints: Vec<String>,
}

impl Explanation {
    pub fn step(&mut self, text: impl Into<String>) {
        self.steps.push(text.into());
    }

    pub fn hint(&mut self, text: impl Into<String>) {
        self.hints.push(text.into());
    }
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

/// The keys of a source in configuration order, each usable until its `not_after`.
pub struct Keyring<K> {
    keys: Vec<(K, Option<SystemTime>)>,
}

impl<K> Keyring<K> {
    /// Derives one key per secret; errors name the secret (`secrets[1]: ...`).
    pub fn build(
        secrets: &[SecretText<'_>],
        mut key: impl FnMut(&str) -> Result<K, String>,
    ) -> Result<Self, KeyError> {
        if secrets.is_empty() {
            return Err(KeyError::at(
                "secrets",
                "secrets is empty: at least one secret is required",
            ));
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                let k = key(secret.text).map_err(|e| {
                    KeyError::at(format!("secrets[{i}]"), format!("secrets[{i}]: {e}"))
                })?;
                Ok((k, secret.not_after))
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(Keyring { keys })
    }

    /// The keys still in use at `now`, with their positions.
    pub fn active(&self, now: SystemTime) -> impl Iterator<Item = (usize, &K)> {
        self.all()
            .filter(move |(_, _, not_after)| not_after.is_none_or(|t| now <= t))
            .map(|(i, key, _)| (i, key))
    }

    /// The delivery signed by the first key still in use at `now` for which `signs`
    /// holds; `InvalidSignature` when none does.
    pub fn first_signer(
        &self,
        now: SystemTime,
        mut signs: impl FnMut(&K) -> bool,
    ) -> Result<Verified, VerifyError> {
        self.active(now)
            .find(|(_, key)| signs(key))
            .map(|(secret_index, _)| Verified { secret_index })
            .ok_or(VerifyError::InvalidSignature)
    }

    /// Every key with its position and `not_after`.
    pub fn all(&self) -> impl Iterator<Item = (usize, &K, Option<SystemTime>)> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, (key, not_after))| (i, key, *not_after))
    }

    /// `2 secret(s)`, and when each rotating one stops being accepted.
    pub fn describe(&self) -> String {
        let mut text = format!("{} secret(s)", self.keys.len());
        for (i, _, not_after) in self.all() {
            if let Some(t) = not_after {
                text.push_str(&format!(
                    ", secrets[{i}] until {}",
                    humantime::format_rfc3339_seconds(t)
                ));
            }
        }
        text
    }

    /// For `explain`: one step per secret, saying whether its signature matches (`hit`),
    /// and a hint when only a secret past its `not_after` would. `name` is how a secret
    /// is called in the steps, from its position and key.
    pub fn explain(
        &self,
        out: &mut Explanation,
        now: SystemTime,
        name: impl Fn(usize, &K) -> String,
        mut hit: impl FnMut(&K) -> bool,
    ) {
        for (i, key, _) in self.all() {
            let matches = hit(key);
            match (self.skipped(i, now), matches) {
                (Some(skipped), true) => {
                    out.step(format!("{skipped}; it WOULD match"));
                    out.hint(format!(
                        "only secrets[{i}] matches, and it is past its not_after: the sender still signs with it"
                    ));
                }
                (Some(skipped), false) => out.step(skipped),
                (None, true) => {
                    out.step(format!("{}: MATCHES", name(i, key)));
                    out.matched.get_or_insert(i);
                }
                (None, false) => out.step(format!("{}: no match", name(i, key))),
            }
        }
    }

    /// For `explain`: why a key was not tried, if it was not.
    pub fn skipped(&self, index: usize, now: SystemTime) -> Option<String> {
        let (_, not_after) = self.keys.get(index)?;
        let t = (*not_after)?;
        (now > t).then(|| {
            format!(
                "secrets[{index}]: past its not_after ({}), not tried",
                humantime::format_rfc3339_seconds(t)
            )
        })
    }
}

impl Keyring<HmacSha256> {
    /// HMAC-SHA256 keys that are each secret's own UTF-8 bytes (Stripe, GitHub, hmac:
    /// none of them decodes the secret).
    pub fn raw_hmac(secrets: &[SecretText<'_>]) -> Result<Self, KeyError> {
        Keyring::build(secrets, |secret| {
            if secret.is_empty() {
                return Err("the secret is empty".to_owned());
            }
            Ok(hmac_key(secret.as_bytes()))
        })
    }
}

impl<K> fmt::Debug for Keyring<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe()) // never the keys themselves
    }
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

/// Decimal seconds only: no sign, no spaces, no fractions, no leading zeros (the signed
/// text must be exact, and one value must have one spelling: where an `hmac` template
/// puts `{id}` right before `{timestamp}`, `evt_10` at `T` and `evt_1` at `0T` sign the
/// same bytes, and the second would pass as a new delivery).
pub fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty()
        || text.len() > 18
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(VerifyError::MalformedTimestamp);
    }
    text.parse().map_err(|_| VerifyError::MalformedTimestamp)
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

/// Lower-case hex, as Stripe and GitHub send their tags.
pub fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// `hex_encode` onto the end of `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// An HMAC-SHA256 key from its bytes (any length is a valid key).
pub fn hmac_key(bytes: &[u8]) -> HmacSha256 {
    <HmacSha256 as ::hmac::KeyInit>::new_from_slice(bytes).expect("HMAC accepts keys of any length")
}

/// Whether any of `tags` is the finished `mac`, each compared in constant time.
pub fn any_tag(mac: &HmacSha256, tags: &[[u8; 32]]) -> bool {
    use ::hmac::Mac as _;
    tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok())
}

/// Base64 with or without padding: senders and secrets differ in the wild.
pub(crate) const LENIENT_BASE64: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );

/// Exactly 32 bytes of base64 (padded or not), or `None`.
pub fn base64_decode_32(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let mut buf = [0u8; 48];
    if text.len() > 64 || LENIENT_BASE64.decode_slice(text, &mut buf) != Ok(32) {
        return None;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&buf[..32]);
    Some(out)
}

/// Exactly `N` bytes of hex (either case), or `None`: a tag of the wrong length cannot match.
pub fn hex_decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The start of some signed content, printable, for `explain`: enough to spot a
/// re-serialised body or a wrong id, never the whole (possibly large) body.
pub fn preview(parts: &[&[u8]]) -> String {
    const SHOWN: usize = 72;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let bytes: Vec<u8> = parts
        .iter()
        .flat_map(|p| p.iter().copied())
        .take(SHOWN)
        .collect();
    let mut text = String::new();
    for b in bytes {
        match b {
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            b'\t' => text.push_str("\\t"),
            b'\\' => text.push_str("\\\\"),
            0x20..=0x7e => text.push(b as char),
            _ => text.push_str(&format!("\\x{b:02x}")),
        }
    }
    let more = if total > SHOWN { "..." } else { "" };
    format!("{total} bytes, starting \"{text}\"{more}")
}

/// How a timestamp relates to `now`, for `explain`.
pub fn describe_age(timestamp: i64, now: SystemTime, tolerance: Duration) -> String {
    // RFC 3339 stops at 9999-12-31T23:59:59Z: humantime's formatter fails past it, and
    // `to_string` panicked on a capture with such a timestamp.
    const LAST_RFC3339: i64 = 253_402_300_799;
    let at = if timestamp < 0 {
        "before 1970".to_owned()
    } else if timestamp > LAST_RFC3339 {
        "past the year 9999".to_owned()
    } else {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(timestamp.unsigned_abs());
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let age = unix_seconds(now).saturating_sub(timestamp);
    let span = humantime::format_duration(Duration::from_secs(age.unsigned_abs()));
    let relation = if age >= 0 {
        format!("{span} old")
    } else {
        format!("{span} in the future")
    };
    let verdict = match check_freshness(timestamp, now, tolerance) {
        Ok(()) => "within",
        Err(_) => "OUTSIDE",
    };
    format!(
        "{timestamp} = {at}, {relation}: {verdict} the tolerance of {}",
        humantime::format_duration(tolerance)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(secret: &str, not_after: Option<i64>) -> SecretText<'_> {
        SecretText {
            text: secret,
            not_after: not_after.map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// `hookgate verify` on a capture from past the year 9999 panicked here.
    #[test]
    fn any_timestamp_is_described_without_panicking() {
        let tolerance = Duration::from_secs(300);
        for (timestamp, says) in [
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (253_402_300_800, "past the year 9999"),
            (999_999_999_999_999_999, "past the year 9999"),
            (-5, "before 1970"),
        ] {
            let described = describe_age(timestamp, at(1_700_000_000), tolerance);
            assert!(described.contains(says), "{described}");
            assert!(described.contains("OUTSIDE"), "{described}");
        }
    }

    #[test]
    fn a_secret_is_used_until_its_not_after_and_ignored_afterwards() {
        let secrets = [entry("new", None), entry("old", Some(1_000))];
        let ring = Keyring::build(&secrets, |s| Ok(s.to_owned())).unwrap();
        let active = |now| ring.active(at(now)).map(|(i, _)| i).collect::<Vec<_>>();

        assert_eq!(active(999), vec![0, 1]);
        assert_eq!(active(1_000), vec![0, 1]);
        assert_eq!(active(1_001), vec![0]);
        assert!(
            ring.describe()
                .contains("secrets[1] until 1970-01-01T00:16:40Z")
        );
        assert!(ring.skipped(1, at(1_001)).unwrap().contains("not tried"));
        assert!(ring.skipped(1, at(1_000)).is_none());
    }

    #[test]
    fn hex_round_trips_and_refuses_wrong_lengths() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(hex_encode(&bytes), "007fabff");
        assert_eq!(hex_decode::<4>("007FABff"), Some(bytes));
        assert_eq!(hex_decode::<4>("007fab"), None);
        assert_eq!(hex_decode::<4>("007fabfg"), None);
    }

    #[test]
    fn previews_escape_and_cut() {
        assert_eq!(
            preview(&[b"a.", b"{\"x\":\n1}"]),
            "10 bytes, starting \"a.{\"x\":\\n1}\""
        );
        assert!(preview(&[&[b'x'; 100]]).ends_with("\"..."));
    }

    /// splitmix64: a seeded generator, so a failure is reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        /// Printable ASCII without spaces, as header values and ids are.
        fn printable(&mut self, len: usize) -> String {
            (0..len)
                .map(|_| (b'!' + self.below(94) as u8) as char)
                .collect()
        }
    }

    /// A secret for `scheme` and the secret its verifier is configured with.
    fn key_pair(scheme: &str, rng: &mut Rng) -> (String, String) {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        match (scheme, rng.below(3)) {
            ("standard-webhooks", 0) => {
                let signing = format!("whsk_{}", b64(&rng.bytes(32)));
                let pair = standard_webhooks::signing_key(&signing).unwrap();
                (signing, standard_webhooks::public_key(&pair))
            }
            ("standard-webhooks", 1) => {
                let secret = format!("whsec_{}", b64(&rng.bytes(24)));
                (secret.clone(), secret)
            }
            _ => {
                let len = 1 + rng.below(40);
                let secret = rng.printable(len);
                (secret.clone(), secret)
            }
        }
    }

    /// The options a property run uses for `scheme`, read as a config file's keys are:
    /// every option of hmac exercised.
    fn property_options(scheme: &Scheme, rng: &mut Rng) -> Box<dyn SchemeOptions> {
        let mut keys = toml::Table::new();
        if scheme.name == "hmac" {
            let encoding = if rng.below(2) == 0 { "hex" } else { "base64" };
            for (key, value) in [
                ("signature_header", "X-Signature"),
                ("encoding", encoding),
                ("prefix", "sha256="),
                ("timestamp_header", "X-Timestamp"),
                ("id_header", "X-Id"),
                ("signed_content", "v0:{timestamp}:{id}:{body}"),
            ] {
                keys.insert(key.to_owned(), value.into());
            }
        }
        (scheme.options)(keys).unwrap()
    }

    /// For random secrets and bodies, every scheme verifies what it signs, and a change
    /// of any single byte of the body or of a signed header is refused.
    #[test]
    fn sign_then_verify_passes_and_any_single_byte_change_fails_for_every_scheme() {
        const RUNS: usize = 150;
        for scheme in SCHEMES {
            for run in 0..RUNS {
                let seed = 0x5eed_0000 + run as u64;
                let mut rng = Rng(seed);
                let (signing, configured) = key_pair(scheme.name, &mut rng);
                let secrets = [SecretText::new(&configured)];
                let options = property_options(scheme, &mut rng);
                let now = 1_700_000_000 + rng.below(1_000_000) as i64;
                let (n, text_len, id_len) = (rng.next(), rng.below(64), 1 + rng.below(30));
                let data = format!(r#"{{"n":{n},"s":{:?}}}"#, rng.printable(text_len));
                // An hmac id may not hold the template's text next to `{id}` (`:`), a
                // Standard Webhooks id no `.`.
                let id = rng.printable(id_len).replace([':', '.'], "_");
                let message = SignMessage {
                    secret: &signing,
                    event_type: "thing.happened",
                    data: &data,
                    id: Some(&id),
                    timestamp: None,
                    now,
                };
                let signed = options.sign(&message).unwrap();
                let verifier = options.build(&secrets).unwrap().verifier;
                let at_now = at(now as u64);
                let headers = |list: &[(HeaderName, String)]| {
                    let mut map = HeaderMap::new();
                    for (name, value) in list {
                        map.insert(name.clone(), value.parse().unwrap());
                    }
                    map
                };
                let context = format!("{} seed {seed:#x}", scheme.name);
                assert_eq!(
                    verifier.verify(&headers(&signed.headers), signed.body.as_bytes(), at_now),
                    Ok(Verified { secret_index: 0 }),
                    "{context}"
                );

                let mut body = signed.body.clone().into_bytes();
                let at_byte = rng.below(body.len());
                body[at_byte] ^= 1 + rng.below(255) as u8;
                assert!(
                    verifier
                        .verify(&headers(&signed.headers), &body, at_now)
                        .is_err(),
                    "{context}: body byte {at_byte} changed"
                );

                // One byte of one header value the scheme reads (not content-type, and
                // not the informational X-GitHub-Event), replaced by another printable
                // byte; a hex digit's case is the same digit, so case flips are skipped.
                let signed_headers: Vec<usize> = signed
                    .headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (name, _))| {
                        !matches!(
                            name.as_str(),
                            "content-type" | "x-github-event" | "x-github-delivery"
                        )
                    })
                    .map(|(i, _)| i)
                    .collect();
                let which = signed_headers[rng.below(signed_headers.len())];
                let mut edited = signed.headers.clone();
                let value = edited[which].1.clone().into_bytes();
                let pos = rng.below(value.len());
                let replacement = loop {
                    let c = b'!' + rng.below(94) as u8;
                    if !c.eq_ignore_ascii_case(&value[pos]) {
                        break c;
                    }
                };
                let mut changed = value.clone();
                changed[pos] = replacement;
                edited[which].1 = String::from_utf8(changed).unwrap();
                assert!(
                    verifier
                        .verify(&headers(&edited), signed.body.as_bytes(), at_now)
                        .is_err(),
                    "{context}: header {} byte {pos} changed to {:?}",
                    edited[which].0,
                    replacement as char
                );
            }
        }
    }

    #[test]
    fn each_scheme_s_keys_are_the_fields_of_its_options() {
        let keys = |name: &str| (scheme(name).unwrap().keys)();
        assert_eq!(keys("standard-webhooks"), ["tolerance", "provider"]);
        assert_eq!(keys("stripe"), ["signature_header", "tolerance"]);
        assert!(keys("github").is_empty());
        assert_eq!(
            keys("hmac"),
            [
                "signature_header",
                "encoding",
                "prefix",
                "timestamp_header",
                "tolerance",
                "id_header",
                "signed_content"
            ]
        );
    }

    #[test]
    fn every_scheme_refuses_a_key_it_does_not_read_and_names_it() {
        for scheme in SCHEMES {
            let mut keys = toml::Table::new();
            keys.insert("encodings".to_owned(), "hex".into());
            let e = (scheme.options)(keys).unwrap_err();
            assert!(e.unknown, "{}: {e}", scheme.name);
            assert_eq!(e.key.as_deref(), Some("encodings"), "{}", scheme.name);
            assert!(
                (scheme.options)(toml::Table::new()).is_ok(),
                "{}",
                scheme.name
            );
        }
    }

    #[test]
    fn unknown_schemes_are_named_with_the_known_ones() {
        let e = scheme("carrier-pigeon").err().unwrap();
        assert!(e.contains("standard-webhooks, stripe, github, hmac"), "{e}");
    }
}
