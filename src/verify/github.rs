//! GitHub's webhook signatures
//! (<https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>).
//!
//! `X-Hub-Signature-256: sha256=<hex>` is HMAC-SHA256 of the raw body, keyed with the
//! secret's UTF-8 bytes. The legacy SHA-1 `X-Hub-Signature` is never accepted. The event
//! type is the `X-GitHub-Event` header and the dedupe key the `X-GitHub-Delivery` GUID,
//! which a redelivery keeps.
//!
//! Nothing about time is signed: a captured delivery verifies forever. Replay protection
//! rests on deduplication by `X-GitHub-Delivery` within `dedupe.ttl`, and that header is
//! not signed either, so a replay under a fresh delivery id is only kept out by TLS (a
//! delivery cannot be captured in transit) and by admitting GitHub's addresses alone.
//! Nor can a replay take a genuine delivery's place: with neither header signed
//! (`signed` is empty), the claim key binds the id to the body (`event::KeyBinding`).

use std::sync::Arc;
use std::time::SystemTime;

use hmac::Mac;
use http::{HeaderMap, HeaderName};

use super::{
    Built, Explanation, HmacSha256, KeyError, Keyring, Scheme, SchemeOptions, SecretText,
    SignError, SignMessage, SignedRequest, Verified, Verifier, VerifyError, header, hex_decode,
    hex_encode, hmac_key, preview, random_hex,
};
use crate::event::Field;

pub const SCHEME: Scheme = Scheme::new::<Options>("github");

/// GitHub's scheme has no keys of its own: its headers and signed content are fixed.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {}

impl SchemeOptions for Options {
    fn build(&self, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
        build(secrets)
    }

    fn sign(&self, message: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
        sign_message(message)
    }
}

pub const SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");
pub const EVENT: HeaderName = HeaderName::from_static("x-github-event");
pub const DELIVERY: HeaderName = HeaderName::from_static("x-github-delivery");

pub struct GitHub {
    keys: Keyring<HmacSha256>,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn build(secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
    let keys = Keyring::raw_hmac(secrets)?;
    Ok(Built {
        verifier: Arc::new(GitHub { keys }),
        event_type: Field::Header(EVENT),
        dedupe_key: Some(Field::Header(DELIVERY)),
        headers: vec![SIGNATURE],
        signed: Vec::new(), // only the body
    })
}

/// The tag of `sha256=<64 hex digits>`.
fn parse(value: &str) -> Result<[u8; 32], VerifyError> {
    value
        .strip_prefix("sha256=")
        .and_then(hex_decode::<32>)
        .ok_or(VerifyError::MalformedSignature)
}

fn matches(key: &HmacSha256, tag: &[u8; 32], body: &[u8]) -> bool {
    let mut mac = key.clone();
    mac.update(body);
    mac.verify_slice(tag).is_ok() // constant time
}

/// The `X-Hub-Signature-256` value for a body: `sha256=<hex>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac_key(secret.as_bytes());
    mac.update(body);
    format!("sha256={}", hex_encode(&mac.finalize().into_bytes()))
}

impl Verifier for GitHub {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let tag = parse(header(
            headers,
            &SIGNATURE,
            VerifyError::MalformedSignature,
        )?)?;
        self.keys.first_signer(now, |key| matches(key, &tag, body))
    }

    fn describe(&self) -> String {
        format!(
            "{}, no timestamp (replays stopped by dedupe only)",
            self.keys.describe()
        )
    }

    fn explain(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Explanation {
        let mut out = Explanation::default();
        let tag = match header(headers, &SIGNATURE, VerifyError::MalformedSignature) {
            Ok(value) => {
                out.step(format!("read {SIGNATURE}: {value}"));
                match parse(value) {
                    Ok(tag) => tag,
                    Err(e) => {
                        out.step(format!("stopped: {e} (expected sha256=<64 hex digits>)"));
                        return out;
                    }
                }
            }
            Err(e) => {
                out.step(format!("stopped: {e}"));
                if headers.contains_key("x-hub-signature") {
                    out.hint("only the SHA-1 X-Hub-Signature is present: hookgate checks X-Hub-Signature-256 alone");
                }
                return out;
            }
        };
        out.step("timestamp: none in this scheme (nothing about time is signed)");
        out.step(format!("signed content {{body}}: {}", preview(&[body])));
        self.keys.explain(
            &mut out,
            now,
            |i, _| format!("secrets[{i}]"),
            |key| matches(key, &tag, body),
        );
        out
    }
}

/// `hookgate sign --scheme github`: `--data` is the payload; `--type` the event header.
fn sign_message(msg: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
    if msg.timestamp.is_some() {
        return Err(SignError::Scheme(
            "--timestamp: github signatures carry no timestamp".to_owned(),
        ));
    }
    if msg.secret.is_empty() {
        return Err(SignError::Secret("the secret is empty".to_owned()));
    }
    let id = match msg.id {
        Some(id) => id.to_owned(),
        None => {
            let hex = format!("{}{}", random_hex(), random_hex());
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        }
    };
    let body = msg.data.to_owned();
    Ok(SignedRequest {
        id: id.clone(),
        headers: vec![
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
            (EVENT, msg.event_type.to_owned()),
            (DELIVERY, id),
            (SIGNATURE, sign(msg.secret, body.as_bytes())),
        ],
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // GitHub's documentation example (tests/vectors/github.toml cites it).
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn verifier(secrets: &[&str]) -> Arc<dyn Verifier> {
        let secrets: Vec<SecretText> = secrets.iter().map(|s| SecretText::new(s)).collect();
        build(&secrets).unwrap().verifier
    }

    fn headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn the_documented_example_signs_and_verifies() {
        assert_eq!(sign(SECRET, BODY), SIG);
        let now = SystemTime::now();
        assert_eq!(
            verifier(&[SECRET]).verify(&headers(SIG), BODY, now),
            Ok(Verified { secret_index: 0 })
        );
        // Upper-case hex is the same tag.
        let upper = format!("sha256={}", SIG["sha256=".len()..].to_uppercase());
        assert!(
            verifier(&[SECRET])
                .verify(&headers(&upper), BODY, now)
                .is_ok()
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let now = SystemTime::now();
        let v = verifier(&[SECRET]);
        assert_eq!(
            v.verify(&headers(SIG), b"Hello, World?", now),
            Err(VerifyError::InvalidSignature)
        );
        assert_eq!(
            verifier(&["another secret"]).verify(&headers(SIG), BODY, now),
            Err(VerifyError::InvalidSignature)
        );
        for bad in [
            "757107ea",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=xyz",
        ] {
            assert_eq!(
                v.verify(&headers(bad), BODY, now),
                Err(VerifyError::MalformedSignature),
                "{bad}"
            );
        }
        let mut sha1_only = HeaderMap::new();
        sha1_only.insert("x-hub-signature", HeaderValue::from_static("sha1=abc"));
        assert_eq!(
            v.verify(&sha1_only, BODY, now),
            Err(VerifyError::MissingHeader(SIGNATURE))
        );
        assert!(v.explain(&sha1_only, BODY, now).hints[0].contains("SHA-1"));
    }

    #[test]
    fn signing_sets_the_event_and_delivery_headers_and_refuses_a_timestamp() {
        let msg = SignMessage {
            secret: SECRET,
            event_type: "push",
            data: r#"{"ref":"refs/heads/main"}"#,
            id: None,
            timestamp: None,
            now: 0,
        };
        let signed = sign_message(&msg).unwrap();
        let get = |name: &HeaderName| {
            signed
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&EVENT), "push");
        assert_eq!(get(&DELIVERY).len(), 36);
        assert_eq!(get(&SIGNATURE), sign(SECRET, signed.body.as_bytes()));
        let stamped = SignMessage {
            timestamp: Some(1),
            ..msg
        };
        assert!(sign_message(&stamped).is_err());
    }
}
