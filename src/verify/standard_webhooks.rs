//! Standard Webhooks (<https://www.standardwebhooks.com>), the scheme OpenAI uses.
//!
//! Headers `webhook-id`, `webhook-timestamp` and `webhook-signature`; the signed content
//! is `{id}.{timestamp}.{raw body}`; the signature header holds space-separated entries,
//! any of which may match (senders rotating keys send several): `v1,<base64 HMAC-SHA256>`
//! for symmetric secrets and `v1a,<base64 Ed25519 signature>` for the spec's asymmetric
//! variant. Entries of other versions are ignored, not errors.
//!
//! Keys: `whpk_<base64>` is an Ed25519 public key (checks `v1a` entries); `whsec_<base64>`
//! is an HMAC key; any other secret is used as its own UTF-8 bytes, as OpenAI's SDKs do.
//! A `whsk_` private key is refused in the config: verifying never needs it, only
//! `hookgate sign` does. The dedupe key is `webhook-id`: the spec keeps it the same
//! across retries of one message, which is exactly what deduplication needs.
//!
//! Signature work per request is capped before it starts: a header with more than
//! `MAX_SIGNATURE_ENTRIES` entries, or whose `v1a` entries times the `whpk_` keys in use
//! exceed `MAX_ED25519_CHECKS`, is `MalformedSignature`. (An Ed25519 check costs about
//! as much as the rest of a request; unchecked, 170 entries cost 9 ms of CPU.)

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac;
use http::{HeaderMap, HeaderName, HeaderValue};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use super::{
    Built, Explanation, HmacSha256, KeyError, Keyring, LENIENT_BASE64, MAX_SIGNATURE_ENTRIES,
    Scheme, SchemeOptions, SecretText, SignError, SignMessage, SignedRequest, Verified, Verifier,
    VerifyError, any_tag, base64_decode_32, check_freshness, describe_age, header, hmac_key,
    parse_timestamp, preview, random_hex, tolerance, too_many_entries,
};
use crate::event::{Field, JsonPointer, is_valid_key};

pub const SCHEME: Scheme = Scheme::new::<Options>("standard-webhooks");

/// The keys a `scheme = "standard-webhooks"` source may set.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Default `DEFAULT_TOLERANCE`.
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
    /// Who sends (`"openai"`): `hookgate check` then knows its event types (`provider.rs`).
    pub provider: Option<String>,
}

impl SchemeOptions for Options {
    fn build(&self, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
        build(self, secrets)
    }

    fn sign(&self, message: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
        sign_message(message)
    }

    fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }
}

pub const ID: HeaderName = HeaderName::from_static("webhook-id");
pub const TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Ed25519 checks one request may cost: its `v1a` entries times the source's `whpk_`
/// keys in use. A sender rotating its key signs twice and a receiver rotating holds two
/// keys: four. A request needing more is `MalformedSignature`, and a source may list at
/// most this many `whpk_` keys.
pub const MAX_ED25519_CHECKS: usize = 4;

enum Key {
    /// Keyed once; cloned per request so the key schedule runs once.
    Hmac(HmacSha256),
    Ed25519(UnparsedPublicKey<[u8; 32]>),
}

impl Key {
    fn kind(&self) -> &'static str {
        match self {
            Key::Hmac(_) => "HMAC-SHA256, checks v1",
            Key::Ed25519(_) => "Ed25519 whpk_, checks v1a",
        }
    }
}

/// Another reading of a configured secret, tried only by `explain` to name a mix-up.
struct Alternate {
    index: usize,
    reading: &'static str,
    mac: HmacSha256,
}

pub struct StandardWebhooks {
    keys: Keyring<Key>,
    alternates: Vec<Alternate>,
    tolerance: Duration,
}

impl std::fmt::Debug for StandardWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn build(options: &Options, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
    let keys = Keyring::build(secrets, parse_key)?;
    let public = keys
        .all()
        .filter(|(_, key, _)| matches!(key, Key::Ed25519(_)))
        .count();
    if public > MAX_ED25519_CHECKS {
        return Err(KeyError::at(
            "secrets",
            format!(
                "secrets: {public} whpk_ public keys; at most {MAX_ED25519_CHECKS} \
                 (each v1a signature of a request is checked against each of them)"
            ),
        ));
    }
    let alternates = secrets
        .iter()
        .enumerate()
        .filter_map(|(index, secret)| alternate(index, secret.text))
        .collect();
    Ok(Built {
        verifier: Arc::new(StandardWebhooks {
            keys,
            alternates,
            tolerance: tolerance(options.tolerance)?,
        }),
        event_type: Field::Json(JsonPointer::parse("/type").expect("a valid pointer")),
        dedupe_key: Some(Field::Header(ID)),
        headers: vec![ID, TIMESTAMP, SIGNATURE],
        signed: vec![ID, TIMESTAMP],
    })
}

fn parse_key(secret: &str) -> Result<Key, String> {
    if let Some(encoded) = secret.strip_prefix("whpk_") {
        let key = base64_decode_32(encoded)
            .ok_or("the part after whpk_ must be the base64 of a 32-byte Ed25519 public key")?;
        return Ok(Key::Ed25519(UnparsedPublicKey::new(&ED25519, key)));
    }
    if secret.starts_with("whsk_") {
        return Err(
            "is a whsk_ private key; configure its whpk_ public key instead \
                    (verifying never needs the private key)"
                .to_owned(),
        );
    }
    let key = key_from_secret(secret)?;
    Ok(Key::Hmac(hmac_key(&key)))
}

/// The classic mix-ups: a `whsec_` secret used as raw text, or a base64 secret whose
/// `whsec_` prefix was dropped.
fn alternate(index: usize, secret: &str) -> Option<Alternate> {
    let (reading, key) = if secret.starts_with("whsec_") {
        (
            "as its raw text, not base64-decoded",
            secret.as_bytes().to_vec(),
        )
    } else if secret.starts_with("whpk_") || secret.starts_with("whsk_") {
        return None;
    } else {
        let decoded = LENIENT_BASE64.decode(secret).ok()?;
        if decoded.len() < 16 {
            return None;
        }
        ("base64-decoded (as if it had the whsec_ prefix)", decoded)
    };
    Some(Alternate {
        index,
        reading,
        mac: hmac_key(&key),
    })
}

/// The HMAC key for a secret as written in the config or given to `hookgate sign`.
pub fn key_from_secret(secret: &str) -> Result<Vec<u8>, String> {
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not valid base64".to_owned())?,
        None => secret.as_bytes().to_vec(),
    };
    if key.is_empty() {
        return Err("the secret is empty".to_owned());
    }
    Ok(key)
}

/// The Ed25519 key pair of a `whsk_<base64 of the 32-byte seed>` private key.
pub fn signing_key(secret: &str) -> Result<Ed25519KeyPair, String> {
    let encoded = secret.strip_prefix("whsk_").unwrap_or(secret);
    let seed = base64_decode_32(encoded)
        .ok_or("the part after whsk_ must be the base64 of a 32-byte seed")?;
    Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| format!("not an Ed25519 seed: {e}"))
}

/// The `whpk_` public key that verifies what `signing_key` signs.
pub fn public_key(pair: &Ed25519KeyPair) -> String {
    format!("whpk_{}", STANDARD.encode(pair.public_key().as_ref()))
}

/// `X-Hookgate-Verified: <scheme>` next to a re-signed delivery. Clients cannot set it:
/// `forward` drops every `x-hookgate-*` header they send.
pub const VERIFIED: HeaderName = HeaderName::from_static("x-hookgate-verified");

/// hookgate's own Standard Webhooks signature for a route's upstream (`resign`), so
/// every backend verifies one scheme with one library, whatever the sender used: a
/// fresh timestamp, the delivery's dedupe key as `webhook-id`, `v1` with a secret or
/// `v1a` with a `whsk_` private key.
#[derive(Clone)]
pub struct Resigner(Signer);

#[derive(Clone)]
enum Signer {
    Hmac(HmacSha256),
    Ed25519(Arc<Ed25519KeyPair>),
}

impl std::fmt::Debug for Resigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resigner(..)") // never key material
    }
}

impl Signer {
    /// The signer a secret stands for: a `whsk_` private key signs `v1a`, anything else
    /// but a `whpk_` public key (refused with `public_key`) is an HMAC secret.
    fn from_secret(secret: &str, public_key: &str) -> Result<Signer, String> {
        if secret.starts_with("whsk_") {
            return Ok(Signer::Ed25519(Arc::new(signing_key(secret)?)));
        }
        if secret.starts_with("whpk_") {
            return Err(public_key.to_owned());
        }
        Ok(Signer::Hmac(hmac_key(&key_from_secret(secret)?)))
    }

    /// The `webhook-signature` value for a message.
    fn signature(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        match self {
            Signer::Hmac(key) => v1_signature(key, id, timestamp, body),
            Signer::Ed25519(pair) => v1a_signature(pair, id, timestamp, body),
        }
    }
}

impl Resigner {
    pub fn new(secret: &str) -> Result<Self, String> {
        Signer::from_secret(
            secret,
            "a whpk_ public key cannot sign; use a secret or a whsk_ private key",
        )
        .map(Resigner)
    }

    /// Replaces the `webhook-*` headers with hookgate's signature of `body` at `now`
    /// and says which scheme the sender was verified with.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        id: &str,
        scheme: &str,
        body: &[u8],
        now: SystemTime,
    ) {
        let timestamp = super::unix_seconds(now);
        let timestamp_text = timestamp.to_string();
        let signature = self.0.signature(id, &timestamp_text, body);
        // Dedupe keys and scheme names are checked printable ASCII, base64 always is.
        let (Ok(id), Ok(signature), Ok(scheme)) = (
            HeaderValue::from_str(id),
            HeaderValue::try_from(signature),
            HeaderValue::from_str(scheme),
        ) else {
            return;
        };
        headers.insert(ID, id);
        headers.insert(TIMESTAMP, HeaderValue::from(timestamp));
        headers.insert(SIGNATURE, signature);
        headers.insert(VERIFIED, scheme);
    }
}

/// The `webhook-signature` value for a message: `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    v1_signature(&hmac_key(key), id, &timestamp.to_string(), body)
}

/// The asymmetric `webhook-signature` value: `v1a,<base64 Ed25519 signature>`.
pub fn sign_v1a(pair: &Ed25519KeyPair, id: &str, timestamp: i64, body: &[u8]) -> String {
    v1a_signature(pair, id, &timestamp.to_string(), body)
}

fn v1_signature(key: &HmacSha256, id: &str, timestamp: &str, body: &[u8]) -> String {
    let tag = signed_mac(key, id, timestamp, body).finalize();
    format!("v1,{}", STANDARD.encode(tag.into_bytes()))
}

fn v1a_signature(pair: &Ed25519KeyPair, id: &str, timestamp: &str, body: &[u8]) -> String {
    let content = signed_content(id, timestamp, body);
    format!("v1a,{}", STANDARD.encode(pair.sign(&content).as_ref()))
}

fn signed_mac(key: &HmacSha256, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The first `N` bytes of a decode buffer at least that long.
fn first<const N: usize>(buf: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[..N]);
    out
}

/// The signatures of a `webhook-signature` header that this scheme can check.
#[derive(Default)]
struct Candidates {
    v1: Vec<[u8; 32]>,
    v1a: Vec<[u8; 64]>,
    ignored: Vec<String>,
}

impl Candidates {
    fn parse(header: &str) -> Result<Self, VerifyError> {
        let entries = || header.split(' ').filter(|e| !e.is_empty());
        if too_many_entries(entries()) {
            return Err(VerifyError::MalformedSignature);
        }
        let mut out = Candidates::default();
        for entry in entries() {
            let mut buf = [0u8; 72];
            match entry.split_once(',') {
                // Tags of the wrong length cannot match; only exact ones are kept.
                Some(("v1", encoded))
                    if encoded.len() <= 64
                        && STANDARD.decode_slice(encoded, &mut buf) == Ok(32) =>
                {
                    out.v1.push(first::<32>(&buf));
                }
                Some(("v1a", encoded))
                    if encoded.len() <= 88
                        && STANDARD.decode_slice(encoded, &mut buf) == Ok(64) =>
                {
                    out.v1a.push(first::<64>(&buf));
                }
                Some((version, _)) => out.ignored.push(version.to_owned()),
                None => out.ignored.push("(no version)".to_owned()),
            }
        }
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.v1.is_empty() && self.v1a.is_empty()
    }
}

/// The three headers, read and checked in the order `verify` needs them.
struct Parsed<'h> {
    id: &'h str,
    timestamp_text: &'h str,
    timestamp: i64,
    candidates: Candidates,
}

fn parse(headers: &HeaderMap) -> Result<Parsed<'_>, VerifyError> {
    let id = header(headers, &ID, VerifyError::MalformedId)?;
    // The signed content is `id.timestamp.body`: the specification forbids a `.` in the
    // id, so that no byte can move between the id, the timestamp and the body under one
    // signature.
    if !is_valid_key(id) || id.contains('.') {
        return Err(VerifyError::MalformedId);
    }
    let timestamp_text = header(headers, &TIMESTAMP, VerifyError::MalformedTimestamp)?;
    let timestamp = parse_timestamp(timestamp_text)?;
    let signatures = header(headers, &SIGNATURE, VerifyError::MalformedSignature)?;
    let candidates = Candidates::parse(signatures)?;
    if candidates.is_empty() {
        return Err(VerifyError::MalformedSignature);
    }
    Ok(Parsed {
        id,
        timestamp_text,
        timestamp,
        candidates,
    })
}

impl StandardWebhooks {
    /// `MalformedSignature` when checking every `v1a` entry against every Ed25519 key
    /// in use at `now` would take more than `MAX_ED25519_CHECKS` checks.
    fn check_ed25519_work(&self, p: &Parsed<'_>, now: SystemTime) -> Result<(), VerifyError> {
        if p.candidates.v1a.is_empty() {
            return Ok(());
        }
        let keys = self
            .keys
            .active(now)
            .filter(|(_, key)| matches!(key, Key::Ed25519(_)))
            .count();
        if p.candidates.v1a.len() * keys > MAX_ED25519_CHECKS {
            return Err(VerifyError::MalformedSignature);
        }
        Ok(())
    }

    /// Whether `key`'s signature is among the candidates. `content` is built once,
    /// and only if an Ed25519 key needs it (HMAC streams the parts).
    fn matches(
        &self,
        key: &Key,
        p: &Parsed<'_>,
        body: &[u8],
        content: &mut Option<Vec<u8>>,
    ) -> bool {
        match key {
            Key::Hmac(key) if !p.candidates.v1.is_empty() => {
                let mac = signed_mac(key, p.id, p.timestamp_text, body);
                any_tag(&mac, &p.candidates.v1)
            }
            Key::Ed25519(key) if !p.candidates.v1a.is_empty() => {
                let content =
                    content.get_or_insert_with(|| signed_content(p.id, p.timestamp_text, body));
                p.candidates
                    .v1a
                    .iter()
                    .any(|signature| key.verify(content, signature).is_ok())
            }
            _ => false,
        }
    }
}

impl Verifier for StandardWebhooks {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let parsed = parse(headers)?;
        self.check_ed25519_work(&parsed, now)?;
        // Freshness before any signature: a replay of an old capture costs no hashing.
        check_freshness(parsed.timestamp, now, self.tolerance)?;
        let mut content = None;
        self.keys
            .first_signer(now, |key| self.matches(key, &parsed, body, &mut content))
    }

    fn tolerance(&self) -> Option<Duration> {
        Some(self.tolerance)
    }

    fn describe(&self) -> String {
        let public = self
            .keys
            .all()
            .filter(|(_, key, _)| matches!(key, Key::Ed25519(_)))
            .count();
        let kinds = match public {
            0 => String::new(),
            n => format!(" ({n} Ed25519 public key(s), v1a)"),
        };
        format!(
            "{}{kinds}, tolerance {}",
            self.keys.describe(),
            humantime::format_duration(self.tolerance)
        )
    }

    fn explain(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Explanation {
        let mut out = Explanation::default();
        for name in [&ID, &TIMESTAMP, &SIGNATURE] {
            match headers.get(name).map(|v| v.to_str()) {
                Some(Ok(value)) => out.step(format!("read {name}: {value}")),
                Some(Err(_)) => out.step(format!("read {name}: not visible ASCII")),
                None => out.step(format!("{name}: MISSING")),
            }
        }
        let parsed = match parse(headers) {
            Ok(parsed) => parsed,
            Err(e) => {
                out.step(format!("stopped: {e}"));
                let entries = headers.get(&SIGNATURE).and_then(|v| v.to_str().ok());
                if entries.is_some_and(|v| too_many_entries(v.split(' ').filter(|e| !e.is_empty())))
                {
                    out.hint(format!(
                        "webhook-signature holds more than {MAX_SIGNATURE_ENTRIES} entries: hookgate checks none of them"
                    ));
                }
                if headers.contains_key("stripe-signature") {
                    out.hint("the request carries Stripe-Signature: this source may need scheme = \"stripe\"");
                }
                if headers.contains_key("x-hub-signature-256") {
                    out.hint("the request carries X-Hub-Signature-256: this source may need scheme = \"github\"");
                }
                return out;
            }
        };
        let c = &parsed.candidates;
        out.step(format!(
            "signatures: {} v1 (HMAC), {} v1a (Ed25519){}",
            c.v1.len(),
            c.v1a.len(),
            if c.ignored.is_empty() {
                String::new()
            } else {
                format!(", ignored: {}", c.ignored.join(" "))
            }
        ));
        if let Err(e) = self.check_ed25519_work(&parsed, now) {
            out.step(format!(
                "stopped: {e} ({} v1a entries against the whpk_ keys in use would take more \
                 than {MAX_ED25519_CHECKS} Ed25519 checks)",
                c.v1a.len()
            ));
            return out;
        }
        out.step(format!(
            "timestamp {}",
            describe_age(parsed.timestamp, now, self.tolerance)
        ));
        out.step(format!(
            "signed content {{id}}.{{timestamp}}.{{body}}: {}",
            preview(&[
                parsed.id.as_bytes(),
                b".",
                parsed.timestamp_text.as_bytes(),
                b".",
                body
            ])
        ));
        let mut content = None;
        self.keys.explain(
            &mut out,
            now,
            |i, key| format!("secrets[{i}] ({})", key.kind()),
            |key| self.matches(key, &parsed, body, &mut content),
        );
        if out.matched.is_none() {
            for alt in &self.alternates {
                let mac = signed_mac(&alt.mac, parsed.id, parsed.timestamp_text, body);
                if any_tag(&mac, &c.v1) {
                    out.hint(format!(
                        "secrets[{}] matches when read {}: the sender and hookgate read the secret differently",
                        alt.index, alt.reading
                    ));
                }
            }
            let has = |kind: fn(&Key) -> bool| self.keys.all().any(|(_, k, _)| kind(k));
            if !c.v1a.is_empty() && c.v1.is_empty() && !has(|k| matches!(k, Key::Ed25519(_))) {
                out.hint(
                    "the sender signs with Ed25519 (v1a) only: configure its whpk_ public key",
                );
            }
            if !c.v1.is_empty() && c.v1a.is_empty() && !has(|k| matches!(k, Key::Hmac(_))) {
                out.hint("the sender signs with HMAC (v1) only: configure its whsec_ secret");
            }
        }
        out
    }
}

/// `hookgate sign --scheme standard-webhooks`: OpenAI's body shape, `v1` with a secret,
/// `v1a` with a `whsk_` private key.
fn sign_message(msg: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
    let id = msg
        .id
        .map(str::to_owned)
        .unwrap_or_else(|| format!("msg_{}", random_hex()));
    if id.contains('.') {
        return Err(SignError::Scheme(
            "--id must not contain '.': it separates the id from the timestamp in what is signed"
                .to_owned(),
        ));
    }
    let timestamp = msg.timestamp.unwrap_or(msg.now);
    let body = format!(
        r#"{{"id":"evt_{}","object":"event","created_at":{timestamp},"type":{},"data":{}}}"#,
        random_hex(),
        serde_json::Value::from(msg.event_type),
        msg.data,
    );
    let signature = Signer::from_secret(
        msg.secret,
        "a whpk_ public key cannot sign; pass the whsk_ private key",
    )
    .map_err(SignError::Secret)?
    .signature(&id, &timestamp.to_string(), body.as_bytes());
    Ok(SignedRequest {
        id: id.clone(),
        headers: vec![
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
            (ID, id),
            (TIMESTAMP, timestamp.to_string()),
            (SIGNATURE, signature),
        ],
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // The Standard Webhooks specification's published vector (tests/vectors/
    // standard-webhooks.toml cites it): secret, id, timestamp, body → signature.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID_VALUE: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn entries<'a>(secrets: &[&'a str]) -> Vec<SecretText<'a>> {
        secrets.iter().map(|s| SecretText::new(s)).collect()
    }

    fn verifier(secrets: &[&str]) -> Arc<dyn Verifier> {
        let secrets = entries(secrets);
        build(&Options::default(), &secrets).unwrap().verifier
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ID, HeaderValue::from_str(id).unwrap());
        h.insert(TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn check(sig: &str, body: &[u8], now: i64) -> Result<Verified, VerifyError> {
        verifier(&[SECRET]).verify(&headers(ID_VALUE, &TS.to_string(), sig), body, at(now))
    }

    #[test]
    fn the_published_vector_signs_as_published() {
        assert_eq!(
            sign(&key_from_secret(SECRET).unwrap(), ID_VALUE, TS, BODY),
            SIG
        );
    }

    #[test]
    fn the_published_vector_verifies() {
        assert_eq!(check(SIG, BODY, TS), Ok(Verified { secret_index: 0 }));
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let header =
            format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {SIG} v1a,xyz");
        assert!(check(&header, BODY, TS).is_ok());
    }

    #[test]
    fn a_tampered_body_fails() {
        assert_eq!(
            check(SIG, br#"{"test": 2432232315}"#, TS),
            Err(VerifyError::InvalidSignature)
        );
    }

    #[test]
    fn a_wrong_secret_fails_and_rotation_accepts_either() {
        let wrong = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let h = headers(ID_VALUE, &TS.to_string(), SIG);
        assert_eq!(
            verifier(&[wrong]).verify(&h, BODY, at(TS)),
            Err(VerifyError::InvalidSignature)
        );
        let rotated = verifier(&[wrong, SECRET]).verify(&h, BODY, at(TS)).unwrap();
        assert_eq!(rotated.secret_index, 1);
    }

    #[test]
    fn the_tolerance_applies_both_ways() {
        assert!(check(SIG, BODY, TS + 300).is_ok());
        assert!(check(SIG, BODY, TS - 300).is_ok());
        assert_eq!(
            check(SIG, BODY, TS + 301),
            Err(VerifyError::TimestampTooOld {
                age: Duration::from_secs(301)
            })
        );
        assert_eq!(
            check(SIG, BODY, TS - 301),
            Err(VerifyError::TimestampTooNew {
                ahead: Duration::from_secs(301)
            })
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let v = verifier(&[SECRET]);
        for name in [ID, TIMESTAMP, SIGNATURE] {
            let mut h = headers(ID_VALUE, &TS.to_string(), SIG);
            h.remove(&name);
            assert_eq!(
                v.verify(&h, BODY, at(TS)),
                Err(VerifyError::MissingHeader(name))
            );
        }
    }

    #[test]
    fn malformed_signatures_are_told_apart_from_wrong_ones() {
        for bad in [
            "",
            "garbage",
            "v1,not-base64!",
            "v2,abc",
            "v1,YWJj",
            "v1a,YWJj",
        ] {
            assert_eq!(
                check(bad, BODY, TS),
                Err(VerifyError::MalformedSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_timestamps_and_ids_are_rejected() {
        let v = verifier(&[SECRET]);
        for ts in [
            "",
            "+1614265330",
            "1614265330.5",
            "-5",
            "abc",
            "99999999999999999999",
        ] {
            let h = headers(ID_VALUE, ts, SIG);
            assert_eq!(
                v.verify(&h, BODY, at(TS)),
                Err(VerifyError::MalformedTimestamp),
                "{ts:?}"
            );
        }
        let long = "m".repeat(crate::event::MAX_DEDUPE_KEY_LEN + 1);
        for id in ["", "has space", long.as_str(), "msg.1"] {
            let h = headers(id, &TS.to_string(), SIG);
            assert_eq!(
                v.verify(&h, BODY, at(TS)),
                Err(VerifyError::MalformedId),
                "{id:?}"
            );
        }
    }

    #[test]
    fn a_secret_without_prefix_is_used_as_raw_bytes() {
        let raw = "my-plain-secret";
        let signature = sign(raw.as_bytes(), ID_VALUE, TS, BODY);
        let h = headers(ID_VALUE, &TS.to_string(), &signature);
        assert!(verifier(&[raw]).verify(&h, BODY, at(TS)).is_ok());
        // The same text behind whsec_ would be base64-decoded: a different key.
        assert_ne!(
            key_from_secret(raw).unwrap(),
            key_from_secret(SECRET).unwrap()
        );
    }

    #[test]
    fn an_invalid_whsec_secret_is_a_config_error() {
        assert!(key_from_secret("whsec_!!!").unwrap_err().contains("base64"));
        assert!(key_from_secret("whsec_").unwrap_err().contains("empty"));
        assert!(key_from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    }

    #[test]
    fn build_names_the_bad_secret() {
        let secrets = entries(&[SECRET, "whsec_%%"]);
        let e = build(&Options::default(), &secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("secrets[1]:"));
    }

    // The asymmetric vector published with the Standard Webhooks Go library
    // (tests/vectors/standard-webhooks.toml cites it).
    const V1A_SEED: &str = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    const V1A_SIG: &str = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

    #[test]
    fn the_published_v1a_vector_signs_and_verifies_with_its_public_key() {
        let pair = signing_key(V1A_SEED).unwrap();
        assert_eq!(sign_v1a(&pair, ID_VALUE, TS, BODY), V1A_SIG);

        let v = verifier(&[SECRET, &public_key(&pair)]);
        let h = headers(ID_VALUE, &TS.to_string(), V1A_SIG);
        assert_eq!(v.verify(&h, BODY, at(TS)), Ok(Verified { secret_index: 1 }));
        assert_eq!(
            v.verify(&h, br#"{"test": 2432232315}"#, at(TS)),
            Err(VerifyError::InvalidSignature)
        );
    }

    /// A well-formed `v1a` entry that no key signed.
    fn junk_v1a() -> String {
        format!("v1a,{}", STANDARD.encode([7u8; 64]))
    }

    #[test]
    fn more_than_max_signature_entries_are_malformed_even_when_one_would_match() {
        let header = |junk: usize| {
            let mut entries = vec!["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="; junk];
            entries.push(SIG);
            entries.join(" ")
        };
        assert!(check(&header(MAX_SIGNATURE_ENTRIES - 1), BODY, TS).is_ok());
        assert_eq!(
            check(&header(MAX_SIGNATURE_ENTRIES), BODY, TS),
            Err(VerifyError::MalformedSignature)
        );
        // Entries of other versions count too, and doubled spaces are no entries.
        let padded = format!("{SIG}  v2,a v3,b v4,c v5,d");
        assert!(check(&padded, BODY, TS).is_ok());
        assert_eq!(
            check(&format!("{padded} v6,e"), BODY, TS),
            Err(VerifyError::MalformedSignature)
        );
    }

    #[test]
    fn v1a_entries_times_public_keys_over_the_cap_are_malformed_before_any_check() {
        let pair = signing_key(V1A_SEED).unwrap();
        let genuine = sign_v1a(&pair, ID_VALUE, TS, BODY);
        let other =
            public_key(&signing_key(&format!("whsk_{}", STANDARD.encode([9u8; 32]))).unwrap());
        let h = |junk: usize| {
            let mut entries = vec![junk_v1a(); junk];
            entries.push(genuine.clone());
            headers(ID_VALUE, &TS.to_string(), &entries.join(" "))
        };
        let one_key = verifier(&[&public_key(&pair)]);
        assert_eq!(
            one_key.verify(&h(MAX_ED25519_CHECKS - 1), BODY, at(TS)),
            Ok(Verified { secret_index: 0 })
        );
        // Had any entry been checked, the genuine one would have matched.
        assert_eq!(
            one_key.verify(&h(MAX_ED25519_CHECKS), BODY, at(TS)),
            Err(VerifyError::MalformedSignature)
        );
        // Two keys halve the entries a request may carry.
        let two_keys = verifier(&[&other, &public_key(&pair)]);
        assert_eq!(
            two_keys.verify(&h(MAX_ED25519_CHECKS / 2 - 1), BODY, at(TS)),
            Ok(Verified { secret_index: 1 })
        );
        assert_eq!(
            two_keys.verify(&h(MAX_ED25519_CHECKS / 2), BODY, at(TS)),
            Err(VerifyError::MalformedSignature)
        );
        // HMAC keys cost no Ed25519 check: v1 entries are not limited by them.
        let with_hmac = verifier(&[SECRET, &public_key(&pair)]);
        assert!(
            with_hmac
                .verify(&h(MAX_ED25519_CHECKS - 1), BODY, at(TS))
                .is_ok()
        );
    }

    #[test]
    fn a_source_may_list_at_most_max_ed25519_checks_public_keys() {
        let keys: Vec<String> = (0..=MAX_ED25519_CHECKS as u8)
            .map(|i| {
                public_key(&signing_key(&format!("whsk_{}", STANDARD.encode([i; 32]))).unwrap())
            })
            .collect();
        let secrets = entries(&keys.iter().map(String::as_str).collect::<Vec<_>>());
        let e = build(&Options::default(), &secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&format!("at most {MAX_ED25519_CHECKS}")), "{e}");
        let secrets = entries(
            &keys[..MAX_ED25519_CHECKS]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(build(&Options::default(), &secrets).is_ok());
    }

    #[test]
    fn a_private_key_in_the_config_is_refused() {
        let secrets = entries(&[V1A_SEED]);
        let e = build(&Options::default(), &secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("secrets[0]: is a whsk_ private key"), "{e}");
        let secrets = entries(&["whpk_c2hvcnQ="]);
        let e = build(&Options::default(), &secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("32-byte Ed25519 public key"), "{e}");
    }

    #[test]
    fn explain_names_the_matching_secret_even_when_stale() {
        let v = verifier(&["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", SECRET]);
        let out = v.explain(
            &headers(ID_VALUE, &TS.to_string(), SIG),
            BODY,
            at(TS + 3600),
        );
        assert_eq!(out.matched, Some(1));
        let text = out.steps.join("\n");
        assert!(text.contains("OUTSIDE the tolerance"), "{text}");
        assert!(
            text.contains("secrets[1] (HMAC-SHA256, checks v1): MATCHES"),
            "{text}"
        );
        assert!(
            text.contains("signed content {id}.{timestamp}.{body}: 60 bytes"),
            "{text}"
        );
    }

    #[test]
    fn explain_spots_a_secret_read_the_wrong_way() {
        // The sender used the whsec_ text itself as the key (Stripe's convention).
        let signature = sign(SECRET.as_bytes(), ID_VALUE, TS, BODY);
        let out = verifier(&[SECRET]).explain(
            &headers(ID_VALUE, &TS.to_string(), &signature),
            BODY,
            at(TS),
        );
        assert_eq!(out.matched, None);
        assert!(
            out.hints[0].contains("secrets[0] matches when read as its raw text"),
            "{:?}",
            out.hints
        );
    }
}
