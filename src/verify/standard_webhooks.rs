//! Standard Webhooks (<https://www.standardwebhooks.com>), the scheme OpenAI uses.
//!
//! Headers `webhook-id`, `webhook-timestamp` and `webhook-signature`; the signed content
//! is `{id}.{timestamp}.{raw body}`; the signature header holds space-separated
//! `v1,<base64 HMAC-SHA256>` entries, any of which may match (senders rotating keys
//! send several). Entries of other versions are ignored, not errors.
//!
//! Keys: a secret starting with `whsec_` is the base64 of the key; any other secret is
//! used as its own UTF-8 bytes, as OpenAI's SDKs do.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use sha2::Sha256;

use super::{Delivery, Verifier, VerifyError, check_freshness, header};
use crate::config::SourceFile;

pub const ID: HeaderName = HeaderName::from_static("webhook-id");
pub const TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Secrets are accepted with or without base64 padding: both circulate in the wild.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Delivery ids become store keys; the spec's ids are far shorter than this.
const MAX_ID_LEN: usize = 256;

type HmacSha256 = Hmac<Sha256>;

pub struct StandardWebhooks {
    /// One keyed HMAC per secret, cloned per request so the key schedule runs once.
    keys: Vec<HmacSha256>,
    tolerance: Duration,
}

impl std::fmt::Debug for StandardWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

pub fn build(source: &SourceFile) -> Result<Arc<dyn Verifier>, String> {
    if source.secrets.is_empty() {
        return Err("secrets is empty: at least one secret is required".to_owned());
    }
    let keys = source
        .secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| {
            let key = key_from_secret(secret.expose()).map_err(|e| format!("secrets[{i}]: {e}"))?;
            Ok(HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(StandardWebhooks {
        keys,
        tolerance: source.tolerance,
    }))
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

/// The `webhook-signature` value for a message: `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

impl Verifier for StandardWebhooks {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Delivery, VerifyError> {
        let id = header(headers, &ID, VerifyError::MalformedId)?;
        if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(VerifyError::MalformedId);
        }
        let timestamp_text = header(headers, &TIMESTAMP, VerifyError::MalformedTimestamp)?;
        let timestamp = parse_timestamp(timestamp_text)?;
        let signatures = header(headers, &SIGNATURE, VerifyError::MalformedSignature)?;
        let candidates = v1_candidates(signatures)?;
        // Freshness before the HMAC: a replay of an old capture costs no hashing.
        check_freshness(timestamp, now, self.tolerance)?;

        for (secret_index, key) in self.keys.iter().enumerate() {
            let mut mac = key.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            // `verify_slice` compares in constant time.
            if candidates
                .iter()
                .any(|c| mac.clone().verify_slice(c).is_ok())
            {
                return Ok(Delivery {
                    id: id.to_owned(),
                    secret_index,
                });
            }
        }
        Err(VerifyError::InvalidSignature)
    }

    fn describe(&self) -> String {
        format!(
            "{} secret(s), tolerance {}",
            self.keys.len(),
            humantime::format_duration(self.tolerance)
        )
    }
}

/// Decimal seconds only: no sign, no spaces, no fractions (the signed text must be exact).
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedTimestamp);
    }
    text.parse().map_err(|_| VerifyError::MalformedTimestamp)
}

/// The decoded `v1` signatures; none at all is malformed, not merely wrong.
fn v1_candidates(header: &str) -> Result<Vec<[u8; 32]>, VerifyError> {
    let mut candidates = Vec::new();
    for entry in header.split(' ').filter(|e| !e.is_empty()) {
        let Some(("v1", encoded)) = entry.split_once(',') else {
            continue;
        };
        // A tag of the wrong length cannot match; only exact 32-byte tags are kept.
        let mut decoded = [0u8; 48];
        if encoded.len() <= 64 && STANDARD.decode_slice(encoded, &mut decoded) == Ok(32) {
            let mut tag = [0u8; 32];
            tag.copy_from_slice(&decoded[..32]);
            candidates.push(tag);
        }
    }
    if candidates.is_empty() {
        return Err(VerifyError::MalformedSignature);
    }
    Ok(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::Secret;
    use http::HeaderValue;

    // The Standard Webhooks specification's published vector (standard-webhooks
    // repository, libraries' test suites): secret, id, timestamp, body → signature.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID_VALUE: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verifier(secrets: &[&str]) -> StandardWebhooks {
        StandardWebhooks {
            keys: secrets
                .iter()
                .map(|s| HmacSha256::new_from_slice(&key_from_secret(s).unwrap()).unwrap())
                .collect(),
            tolerance: Duration::from_secs(300),
        }
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

    fn check(sig: &str, body: &[u8], now: i64) -> Result<Delivery, VerifyError> {
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
        let delivery = check(SIG, BODY, TS).unwrap();
        assert_eq!(delivery.id, ID_VALUE);
        assert_eq!(delivery.secret_index, 0);
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
        for bad in ["", "garbage", "v1,not-base64!", "v2,abc", "v1,YWJj"] {
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
        let long = "m".repeat(MAX_ID_LEN + 1);
        for id in ["", "has space", long.as_str()] {
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
        let source = SourceFile {
            name: "s".into(),
            path: "/s".into(),
            scheme: "standard-webhooks".into(),
            delivery: Default::default(),
            secrets: vec![
                Secret::from(SECRET.to_owned()),
                Secret::from("whsec_%%".to_owned()),
            ],
            tolerance: Duration::from_secs(300),
            event_type: "/type".into(),
            routes: vec![],
        };
        assert!(build(&source).unwrap_err().starts_with("secrets[1]:"));
    }
}
