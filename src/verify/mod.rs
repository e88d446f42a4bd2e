//! Signature verification: `trait Verifier` and the registry of schemes.
//!
//! A scheme is one file in this folder exporting a `SCHEME` (its name, the config keys it
//! reads, how to build its verifier and how to sign like its senders) and one line in
//! `SCHEMES`. Verifiers are pure: headers, raw body and the current time in, a `Delivery`
//! or a `VerifyError` out, so published vectors test them without a server. They never
//! see re-serialised JSON: the bytes verified are the bytes forwarded.
//!
//! `build` turns a `[[sources]]` block into a verifier: it refuses keys the chosen scheme
//! does not read (a silently ignored `encoding` is a security bug waiting to happen) and
//! settles where the event type and the dedupe key come from. It does not decide what a
//! client sees when verification fails: that is `reject`'s job.

pub mod github;
pub mod hmac;
pub mod standard_webhooks;
pub mod stripe;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

use crate::config::{FieldSpec, SecretEntry, SourceFile};

/// The MAC every HMAC scheme here uses.
pub type HmacSha256 = ::hmac::Hmac<sha2::Sha256>;
use crate::event::{Field, JsonPointer, KeyBinding};
use crate::sign::{SignError, SignMessage, SignedRequest};

/// Every scheme hookgate knows, by its `scheme = "..."` name: one line each.
pub const SCHEMES: &[Scheme] = &[
    standard_webhooks::SCHEME,
    stripe::SCHEME,
    github::SCHEME,
    hmac::SCHEME,
];

/// Accepted timestamp skew, both ways, when a source does not set `tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A secret expiring within this long is warned about by `check` and at start-up.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// The scheme-specific `[[sources]]` keys this scheme reads (see `SchemeOptions::set_keys`).
    pub keys: &'static [&'static str],
    pub build: fn(&SchemeOptions<'_>) -> Result<Built, String>,
    /// Signs a message the way this scheme's senders do, for `hookgate sign`.
    pub sign: fn(&SchemeOptions<'_>, &SignMessage<'_>) -> Result<SignedRequest, SignError>,
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

/// The scheme-specific settings of a source, as written (defaults are the scheme's).
#[derive(Debug, Default)]
pub struct SchemeOptions<'a> {
    pub secrets: &'a [SecretEntry],
    pub tolerance: Option<Duration>,
    pub signature_header: Option<HeaderName>,
    pub encoding: Option<hmac::Encoding>,
    pub prefix: Option<String>,
    pub timestamp_header: Option<HeaderName>,
    pub id_header: Option<HeaderName>,
    pub signed_content: Option<String>,
    pub provider: Option<String>,
}

impl SchemeOptions<'_> {
    /// The scheme-specific keys that are set, by their config names.
    pub fn set_keys(&self) -> Vec<&'static str> {
        [
            ("tolerance", self.tolerance.is_some()),
            ("signature_header", self.signature_header.is_some()),
            ("encoding", self.encoding.is_some()),
            ("prefix", self.prefix.is_some()),
            ("timestamp_header", self.timestamp_header.is_some()),
            ("id_header", self.id_header.is_some()),
            ("signed_content", self.signed_content.is_some()),
            ("provider", self.provider.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// The first set key that `scheme` does not read: it would be silently ignored.
    pub fn unsupported_key(&self, scheme: &Scheme) -> Option<&'static str> {
        self.set_keys()
            .into_iter()
            .find(|key| !scheme.keys.contains(key))
    }

    pub fn tolerance(&self) -> Duration {
        self.tolerance.unwrap_or(DEFAULT_TOLERANCE)
    }
}

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

    /// The checks of `verify` told step by step, for `hookgate verify`. `matched` says
    /// which secret's signature matches regardless of the time, so a correct but stale
    /// capture is told apart from a wrong secret.
    fn explain(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Explanation;
}

/// What verification established about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
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
        secrets: &[SecretEntry],
        mut key: impl FnMut(&str) -> Result<K, String>,
    ) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("secrets is empty: at least one secret is required".to_owned());
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let k = key(entry.secret.expose()).map_err(|e| format!("secrets[{i}]: {e}"))?;
                Ok((k, entry.not_after))
            })
            .collect::<Result<Vec<_>, String>>()?;
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
    ) -> Result<Delivery, VerifyError> {
        self.active(now)
            .find(|(_, key)| signs(key))
            .map(|(secret_index, _)| Delivery { secret_index })
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
    pub fn raw_hmac(secrets: &[SecretEntry]) -> Result<Self, String> {
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

/// A source's verification, resolved from its `[[sources]]` block.
pub struct SourceVerification {
    pub scheme: &'static str,
    pub verifier: Arc<dyn Verifier>,
    pub event_type: Field,
    pub dedupe_key: Field,
    /// The headers the scheme, the event type and the dedupe key read: each must come
    /// once, and reach the backend as it was verified.
    pub reads: Vec<HeaderName>,
    /// Whether the claim key must bind the dedupe key to the body.
    pub binding: KeyBinding,
    pub secrets: usize,
    /// Key paths relative to the source (`secrets[1] ...`); the caller adds the rest.
    pub warnings: Vec<String>,
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

/// Builds the verifier of a `[[sources]]` block. Errors and warnings name the key
/// relative to the source (`encoding ...`, `secrets[1] ...`); `now` dates the warnings
/// about expiring secrets.
pub fn build(source: &SourceFile, now: SystemTime) -> Result<SourceVerification, String> {
    let scheme = scheme(&source.scheme)?;
    let options = SchemeOptions {
        secrets: &source.secrets,
        tolerance: source.tolerance,
        signature_header: source.signature_header.clone(),
        encoding: source.encoding,
        prefix: source.prefix.clone(),
        timestamp_header: source.timestamp_header.clone(),
        id_header: source.id_header.clone(),
        signed_content: source.signed_content.clone(),
        provider: source.provider.clone(),
    };
    if let Some(key) = options.unsupported_key(scheme) {
        return Err(format!(
            "{key} does not apply to scheme {:?} (its keys: {})",
            scheme.name,
            scheme_keys(scheme)
        ));
    }
    let built = (scheme.build)(&options)?;
    let event_type = match &source.event_type {
        Some(spec) => field("event_type", spec, TextIs::Pointer)?,
        None => built.event_type,
    };
    let dedupe_key = match (&source.dedupe_key, built.dedupe_key) {
        (Some(spec), _) => field("dedupe_key", spec, TextIs::Header)?,
        (None, Some(default)) => default,
        (None, None) => {
            return Err(format!(
                "dedupe_key is required: scheme {:?} has no delivery id of its own \
                 (set id_header, or dedupe_key = {{ json = \"/id\" }} or {{ header = \"...\" }})",
                scheme.name
            ));
        }
    };
    let mut reads = built.headers;
    for field in [&event_type, &dedupe_key] {
        if let Field::Header(name) = field
            && !reads.contains(name)
        {
            reads.push(name.clone());
        }
    }
    let signed = |field: &Field| match field {
        Field::Json(_) => true, // every scheme signs the body
        Field::Header(name) => built.signed.contains(name),
    };
    let binding = if signed(&dedupe_key) && signed(&event_type) {
        KeyBinding::Id
    } else {
        KeyBinding::IdAndBody
    };
    Ok(SourceVerification {
        scheme: scheme.name,
        verifier: built.verifier,
        event_type,
        dedupe_key,
        reads,
        binding,
        secrets: source.secrets.len(),
        warnings: secret_warnings(&source.secrets, now),
    })
}

fn scheme_keys(scheme: &Scheme) -> String {
    let mut keys = vec!["secrets"];
    keys.extend(scheme.keys);
    keys.join(", ")
}

/// How a plain string is read: `event_type = "/type"` is a pointer, `dedupe_key =
/// "webhook-id"` a header (the spelling each is most often written in).
#[derive(Clone, Copy)]
enum TextIs {
    Pointer,
    Header,
}

fn field(key: &str, spec: &FieldSpec, text_is: TextIs) -> Result<Field, String> {
    match (spec, text_is) {
        (FieldSpec::Json(pointer), _) => Ok(Field::Json(pointer.clone())),
        (FieldSpec::Header(name), _) => Ok(Field::Header(name.clone())),
        (FieldSpec::Text(text), TextIs::Pointer) => {
            JsonPointer::parse(text).map(Field::Json).map_err(|e| {
                format!("{key} {text:?}: {e}; for a header write {key} = {{ header = {text:?} }}")
            })
        }
        (FieldSpec::Text(text), TextIs::Header) if text.starts_with('/') => Err(format!(
            "{key} {text:?}: a plain string names a header; for a JSON pointer write \
             {key} = {{ json = {text:?} }}"
        )),
        (FieldSpec::Text(text), TextIs::Header) => crate::config::parse_header_name(text)
            .map(Field::Header)
            .map_err(|e| format!("{key}: {e}")),
    }
}

/// Mistakes visible in the secrets themselves, and secrets about to expire.
fn secret_warnings(secrets: &[SecretEntry], now: SystemTime) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, entry) in secrets.iter().enumerate() {
        let text = entry.secret.expose();
        if let Some(prefix) = ["v1,", "v1a,", "v1=", "sha256=", "t="]
            .into_iter()
            .find(|p| text.starts_with(p))
        {
            warnings.push(format!(
                "secrets[{i}] starts with {prefix:?}, as signatures do: is a signature pasted instead of the secret?"
            ));
        }
        if text.trim() != text {
            warnings.push(format!(
                "secrets[{i}] has leading or trailing whitespace (a newline from an env file?); it is used as written"
            ));
        }
        if let Some(t) = entry.not_after {
            let when = humantime::format_rfc3339_seconds(t);
            match t.duration_since(now) {
                Err(_) => warnings.push(format!(
                    "secrets[{i}] is past its not_after ({when}) and is ignored; remove it"
                )),
                Ok(left) if left <= EXPIRY_WARNING => warnings.push(format!(
                    "secrets[{i}] stops being accepted in {} (not_after {when}); \
                     hookgate_verified_total{{secret=\"{i}\"}} shows whether the sender still uses it",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                )),
                Ok(_) => {}
            }
        }
    }
    if !secrets.is_empty() && secrets.iter().all(|e| e.not_after.is_some_and(|t| t < now)) {
        warnings.push("every secret is past its not_after: every request will be refused".into());
    }
    warnings
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

/// Decimal seconds only: no sign, no spaces, no fractions (the signed text must be exact).
pub fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
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
    let at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(timestamp.max(0).unsigned_abs()))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "far future".to_owned());
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
    use crate::config::secret::Secret;

    fn entry(secret: &str, not_after: Option<i64>) -> SecretEntry {
        SecretEntry {
            secret: Secret::from(secret.to_owned()),
            not_after: not_after.map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    use crate::sign::SignMessage;

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
    fn expiring_and_expired_secrets_are_warned_about() {
        let week = 7 * 24 * 3600;
        let now = at(10 * week);
        let secrets = [
            entry("a", Some(10 * week as i64 + 3600)),
            entry("b", Some(10 * week as i64 - 1)),
            entry("c", Some(20 * week as i64)),
        ];
        let warnings = secret_warnings(&secrets, now);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("secrets[0] stops being accepted in 1h"));
        assert!(warnings[1].starts_with("secrets[1] is past its not_after"));

        let all_gone = secret_warnings(&[entry("a", Some(1))], now);
        assert!(all_gone.iter().any(|w| w.contains("every secret")));
    }

    #[test]
    fn secrets_that_look_like_signatures_or_carry_whitespace_are_warned_about() {
        let warnings = secret_warnings(&[entry("v1,abc", None), entry("whsec_x\n", None)], at(0));
        assert!(warnings[0].contains("secrets[0] starts with \"v1,\""));
        assert!(warnings[1].contains("secrets[1] has leading or trailing whitespace"));
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

    fn config_error(source: &str) -> String {
        crate::config::parse(&config(source), "test.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted:\n{source}"))
    }

    fn config(source: &str) -> String {
        format!(
            "[[sources]]\nname = \"s\"\npath = \"/s\"\n{source}\n\
             [[sources.routes]]\nevents = [\"*\"]\nupstream = \"http://127.0.0.1:9/\"\n"
        )
    }

    fn parsed(source: &str) -> crate::config::Settings {
        crate::config::parse(&config(source), "test.toml")
            .unwrap_or_else(|e| panic!("{e}\n{source}"))
    }

    #[test]
    fn each_source_knows_the_headers_it_reads_and_binds_unsigned_ids_to_the_body() {
        let cases = [
            (
                "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]",
                "webhook-id webhook-timestamp webhook-signature",
                KeyBinding::Id,
            ),
            (
                "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\nevent_type = { header = \"X-Event\" }",
                "webhook-id webhook-timestamp webhook-signature x-event",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"stripe\"\nsecrets = [\"x\"]",
                "stripe-signature",
                KeyBinding::Id,
            ),
            (
                "scheme = \"stripe\"\nsecrets = [\"x\"]\ndedupe_key = \"Idempotency-Key\"",
                "stripe-signature idempotency-key",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"github\"\nsecrets = [\"x\"]",
                "x-hub-signature-256 x-github-event x-github-delivery",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nid_header = \"X-Id\"\n\
                 timestamp_header = \"X-Ts\"\nsigned_content = \"{timestamp}.{id}.{body}\"",
                "x-sig x-id x-ts",
                KeyBinding::Id,
            ),
            (
                "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nid_header = \"X-Id\"",
                "x-sig x-id",
                KeyBinding::IdAndBody,
            ),
            (
                "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\ndedupe_key = { json = \"/id\" }",
                "x-sig",
                KeyBinding::Id,
            ),
        ];
        for (source, reads, binding) in cases {
            let settings = parsed(source);
            let got: Vec<&str> = settings.sources[0]
                .reads
                .iter()
                .map(HeaderName::as_str)
                .collect();
            assert_eq!(got.join(" "), reads, "{source}");
            assert_eq!(settings.sources[0].binding, binding, "{source}");
        }
    }

    #[test]
    fn content_encoding_pass_needs_the_event_type_and_dedupe_key_in_headers() {
        let settings =
            parsed("scheme = \"github\"\nsecrets = [\"x\"]\ncontent_encoding = \"pass\"");
        assert_eq!(
            settings.sources[0].content_encoding,
            crate::config::ContentEncoding::Pass
        );
        assert!(settings.summary().contains("content_encoding pass"));
        let e = config_error(
            "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\ncontent_encoding = \"pass\"",
        );
        assert!(
            e.starts_with(
                "test.toml: sources[0].content_encoding = \"pass\" needs the event type and the \
                 dedupe key in headers"
            ) && e.contains("\"/type\""),
            "{e}"
        );
        let e = config_error("scheme = \"github\"\nsecrets = [\"x\"]\ncontent_encoding = \"gzip\"");
        assert!(
            e.contains("unknown variant `gzip`") && e.contains("line 6"),
            "{e}"
        );
    }

    #[test]
    fn a_key_that_does_not_apply_to_the_scheme_is_an_error_naming_it() {
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"whsec_x\"]\nencoding = \"base64\"");
        assert!(
            e.starts_with("test.toml: sources[0].encoding does not apply to scheme \"stripe\""),
            "{e}"
        );
        assert!(
            e.contains("its keys: secrets, signature_header, tolerance"),
            "{e}"
        );
        let e = config_error("scheme = \"github\"\nsecrets = [\"x\"]\ntolerance = \"5m\"");
        assert!(
            e.contains("sources[0].tolerance does not apply to scheme \"github\""),
            "{e}"
        );
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nprovider = \"openai\"");
        assert!(e.contains("sources[0].provider does not apply"), "{e}");
    }

    #[test]
    fn scheme_keys_are_checked_with_their_key_paths() {
        let e = config_error(
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nencoding = \"base32\"",
        );
        assert!(e.contains("line 7"), "{e}");
        let e =
            config_error("scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"bad header\"");
        assert!(
            e.contains("\"bad header\" is not a valid header name"),
            "{e}"
        );
        let e = config_error("scheme = \"hmac\"\nsecrets = [\"x\"]");
        assert!(e.contains("sources[0].signature_header is required"), "{e}");
        let e = config_error(
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nsigned_content = \"{ts}.{body}\"",
        );
        assert!(
            e.contains("sources[0].signed_content \"{ts}.{body}\": unknown placeholder {ts}"),
            "{e}"
        );
    }

    #[test]
    fn each_scheme_has_its_documented_defaults() {
        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
        );
        assert_eq!(
            settings.sources[0].dedupe_key.to_string(),
            "header:webhook-id"
        );
        assert_eq!(settings.sources[0].event_type.to_string(), "/type");
        let settings = parsed("scheme = \"stripe\"\nsecrets = [\"whsec_x\"]");
        assert_eq!(settings.sources[0].dedupe_key.to_string(), "/id");
        assert_eq!(settings.sources[0].event_type.to_string(), "/type");
        let settings = parsed("scheme = \"github\"\nsecrets = [\"x\"]");
        assert_eq!(
            settings.sources[0].dedupe_key.to_string(),
            "header:x-github-delivery"
        );
        assert_eq!(
            settings.sources[0].event_type.to_string(),
            "header:x-github-event"
        );
        let settings = parsed(
            "scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"\nid_header = \"X-Id\"",
        );
        assert_eq!(settings.sources[0].dedupe_key.to_string(), "header:x-id");
        let e = config_error("scheme = \"hmac\"\nsecrets = [\"x\"]\nsignature_header = \"X-Sig\"");
        assert!(e.contains("sources[0].dedupe_key is required"), "{e}");
    }

    #[test]
    fn event_type_and_dedupe_key_take_strings_pointers_and_headers() {
        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"raw\"]\n\
             event_type = { header = \"X-Event\" }\ndedupe_key = { json = \"/data/id\" }",
        );
        assert_eq!(settings.sources[0].event_type.to_string(), "header:x-event");
        assert_eq!(settings.sources[0].dedupe_key.to_string(), "/data/id");
        let settings = parsed(
            "scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = \"/data/type\"\ndedupe_key = \"Idempotency-Key\"",
        );
        assert_eq!(settings.sources[0].event_type.to_string(), "/data/type");
        assert_eq!(
            settings.sources[0].dedupe_key.to_string(),
            "header:idempotency-key"
        );

        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\ndedupe_key = \"/id\"");
        assert!(e.contains("sources[0].dedupe_key \"/id\": a plain string names a header; for a JSON pointer write dedupe_key = { json = \"/id\" }"), "{e}");
        let e = config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = \"X-Event\"");
        assert!(
            e.contains("for a header write event_type = { header = \"X-Event\" }"),
            "{e}"
        );
        let e = config_error(
            "scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = { json = \"/a\", header = \"b\" }",
        );
        assert!(
            e.contains("set exactly one of json or header") && e.contains("line 6"),
            "{e}"
        );
        let e =
            config_error("scheme = \"stripe\"\nsecrets = [\"x\"]\nevent_type = { jsn = \"/a\" }");
        assert!(e.contains("unknown field `jsn`"), "{e}");
    }

    #[test]
    fn secrets_may_be_strings_or_tables_with_not_after() {
        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \
             { secret = \"old-secret\", not_after = \"2999-12-31T00:00:00Z\" }]",
        );
        assert_eq!(settings.sources[0].secrets, 2);
        assert!(
            settings.sources[0]
                .verifier
                .describe()
                .contains("secrets[1] until 2999-12-31T00:00:00Z"),
            "{}",
            settings.sources[0].verifier.describe()
        );
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);

        let settings = parsed(
            "scheme = \"standard-webhooks\"\nsecrets = [\"new-secret\", \
             { secret = \"old-secret\", not_after = \"2001-01-01T00:00:00Z\" }]",
        );
        assert_eq!(
            settings.warnings,
            vec![
                "test.toml: sources[0].secrets[1] is past its not_after (2001-01-01T00:00:00Z) and is ignored; remove it"
            ]
        );
        let e = config_error(
            "scheme = \"github\"\nsecrets = [{ secret = \"x\", not_after = \"soon\" }]",
        );
        assert!(e.contains("line 5"), "{e}");
        let e = config_error(
            "scheme = \"github\"\nsecrets = [{ secret = \"x\", until = \"2030-01-01T00:00:00Z\" }]",
        );
        assert!(e.contains("unknown field `until`"), "{e}");
    }

    #[test]
    fn provider_openai_warns_about_route_typos_and_unknown_providers_are_errors() {
        let text = "[[sources]]\nname = \"openai\"\npath = \"/o\"\nscheme = \"standard-webhooks\"\n\
                    secrets = [\"raw\"]\nprovider = \"openai\"\n\
                    [[sources.routes]]\nevents = [\"response.complete\", \"batch.*\"]\nupstream = \"http://127.0.0.1:9/\"\n";
        let settings = crate::config::parse(text, "test.toml").unwrap();
        assert_eq!(
            settings.warnings,
            vec![
                "test.toml: sources[0].routes[0].events[0] \"response.complete\" matches none of \
                 OpenAI's published event types; did you mean \"response.completed\"?"
            ]
        );
        let e = crate::config::parse(
            &text.replace("\"openai\"\n[[", "\"opneai\"\n[["),
            "test.toml",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("sources[0].provider \"opneai\" is unknown"),
            "{e}"
        );
    }

    #[test]
    fn a_route_resign_secret_is_checked() {
        let text = config("scheme = \"github\"\nsecrets = [\"x\"]").replace(
            "upstream = ",
            "resign = { secret = \"whsec_%%\" }\nupstream = ",
        );
        let e = crate::config::parse(&text, "test.toml")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(
                "sources[0].routes[0].resign.secret: the part after whsec_ is not valid base64"
            ),
            "{e}"
        );
        let ok = config("scheme = \"github\"\nsecrets = [\"x\"]").replace(
            "upstream = ",
            "resign = { secret = \"backend-secret\" }\nupstream = ",
        );
        let settings = crate::config::parse(&ok, "test.toml").unwrap();
        assert!(
            settings
                .summary()
                .contains("(re-signed: standard-webhooks)")
        );
    }

    /// A file of `tests/vectors/`.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Vectors {
        source: SourceFile,
        case: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        name: String,
        now: u64,
        body: String,
        expect: String,
        headers: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn vectors_of_every_scheme_give_their_expected_verdicts() {
        for scheme in SCHEMES {
            let path = format!(
                "{}/tests/vectors/{}.toml",
                env!("CARGO_MANIFEST_DIR"),
                scheme.name
            );
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(text.starts_with('#'), "{path} must cite its sources first");
            let vectors: Vectors = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(vectors.source.scheme, scheme.name, "{path}");
            assert!(vectors.case.len() >= 5, "{path}: too few cases");
            for case in &vectors.case {
                let built = build(&vectors.source, at(case.now)).unwrap();
                let mut headers = HeaderMap::new();
                for (name, value) in &case.headers {
                    headers.insert(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        value.parse().unwrap(),
                    );
                }
                let verdict =
                    match built
                        .verifier
                        .verify(&headers, case.body.as_bytes(), at(case.now))
                    {
                        Ok(delivery) => format!("ok secrets[{}]", delivery.secret_index),
                        Err(e) => crate::reject::Reject::from(e).reason().to_owned(),
                    };
                assert_eq!(verdict, case.expect, "{path}: {}", case.name);
            }
        }
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

    /// The options a property run uses for `scheme`: every option of hmac exercised.
    fn property_options<'a>(
        scheme: &str,
        secrets: &'a [SecretEntry],
        rng: &mut Rng,
    ) -> SchemeOptions<'a> {
        let mut options = SchemeOptions {
            secrets,
            ..SchemeOptions::default()
        };
        if scheme == "hmac" {
            options.signature_header = Some(HeaderName::from_static("x-signature"));
            options.encoding = Some(if rng.below(2) == 0 {
                hmac::Encoding::Hex
            } else {
                hmac::Encoding::Base64
            });
            options.prefix = Some("sha256=".to_owned());
            options.timestamp_header = Some(HeaderName::from_static("x-timestamp"));
            options.id_header = Some(HeaderName::from_static("x-id"));
            options.signed_content = Some("v0:{timestamp}:{id}:{body}".to_owned());
        }
        options
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
                let secrets = [SecretEntry::from(crate::config::secret::Secret::from(
                    configured,
                ))];
                let options = property_options(scheme.name, &secrets, &mut rng);
                let now = 1_700_000_000 + rng.below(1_000_000) as i64;
                let (n, text_len, id_len) = (rng.next(), rng.below(64), 1 + rng.below(30));
                let data = format!(r#"{{"n":{n},"s":{:?}}}"#, rng.printable(text_len));
                let id = rng.printable(id_len);
                let message = SignMessage {
                    secret: &signing,
                    event_type: "thing.happened",
                    data: &data,
                    id: Some(&id),
                    timestamp: None,
                    now,
                };
                let signed = (scheme.sign)(&options, &message).unwrap();
                let verifier = (scheme.build)(&options).unwrap().verifier;
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
                    Ok(Delivery { secret_index: 0 }),
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
    fn unknown_schemes_are_named_with_the_known_ones() {
        let e = scheme("carrier-pigeon").err().unwrap();
        assert!(e.contains("standard-webhooks, stripe, github, hmac"), "{e}");
    }
}
