//! Stripe's signature scheme (<https://docs.stripe.com/webhooks#verify-manually>), and
//! senders that copied it under another header (`signature_header = "OpenAI-Signature"`).
//!
//! One header (default `Stripe-Signature`) holds `t=<unix>,v1=<hex>[,v1=<hex>...]`; the
//! signed content is `{t}.{raw body}`; the tag is HMAC-SHA256 keyed with the secret's own
//! UTF-8 bytes: unlike Standard Webhooks, a `whsec_` secret is *not* base64-decoded. Any
//! `v1` entry may match (Stripe signs once per active secret while one is rolled); `v0`
//! and unknown schemes are ignored, so nobody can downgrade to them. `t` must be within
//! the tolerance in both directions. The dedupe key is the event id at `/id`: Stripe has
//! no delivery-id header, and a retried event keeps its id. A header with more than
//! `MAX_SIGNATURE_ENTRIES` signature elements is `MalformedSignature`, unchecked.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::Mac;
use http::{HeaderMap, HeaderName};

use super::{
    Built, Explanation, HmacSha256, KeyError, Keyring, Scheme, SchemeOptions, SecretText,
    SignError, SignMessage, SignedRequest, Verified, Verifier, VerifyError, any_tag,
    check_freshness, describe_age, header, hex_decode, hex_encode, hmac_key, optional_header_name,
    parse_timestamp, preview, random_hex, tolerance, too_many_entries,
};
use crate::event::{Field, JsonPointer};

pub const SCHEME: Scheme = Scheme::new::<Options>("stripe");

/// The keys a `scheme = "stripe"` source may set.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Default `Stripe-Signature`; senders that copied the scheme use their own.
    #[serde(default, deserialize_with = "optional_header_name")]
    pub signature_header: Option<HeaderName>,
    /// Default `DEFAULT_TOLERANCE`.
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
}

impl Options {
    fn header(&self) -> HeaderName {
        self.signature_header.clone().unwrap_or(SIGNATURE)
    }
}

impl SchemeOptions for Options {
    fn build(&self, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
        build(self, secrets)
    }

    fn sign(&self, message: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
        sign_message(self, message)
    }
}

pub const SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

pub struct Stripe {
    keys: Keyring<HmacSha256>,
    header: HeaderName,
    tolerance: Duration,
    /// Each `whsec_` secret base64-decoded, as Standard Webhooks would read it: only
    /// `explain` tries these, to name the classic mix-up.
    decoded: Vec<(usize, HmacSha256)>,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn build(options: &Options, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
    let keys = Keyring::raw_hmac(secrets)?;
    let decoded = secrets
        .iter()
        .enumerate()
        .filter_map(|(i, secret)| {
            let key = super::standard_webhooks::key_from_secret(secret.text).ok()?;
            secret
                .text
                .starts_with("whsec_")
                .then(|| (i, hmac_key(&key)))
        })
        .collect();
    let header = options.header();
    Ok(Built {
        headers: vec![header.clone()],
        signed: Vec::new(), // the timestamp is inside the signature header
        verifier: Arc::new(Stripe {
            keys,
            header,
            tolerance: tolerance(options.tolerance)?,
            decoded,
        }),
        event_type: Field::Json(JsonPointer::parse("/type").expect("a valid pointer")),
        dedupe_key: Some(Field::Json(
            JsonPointer::parse("/id").expect("a valid pointer"),
        )),
    })
}

/// The signature header's entries that matter.
struct Parsed<'h> {
    timestamp_text: &'h str,
    timestamp: i64,
    v1: Vec<[u8; 32]>,
    ignored: Vec<&'h str>,
}

fn parse(value: &str) -> Result<Parsed<'_>, VerifyError> {
    let signatures = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with("t="));
    if too_many_entries(signatures) {
        return Err(VerifyError::MalformedSignature);
    }
    let mut timestamp_text = None;
    let mut v1 = Vec::new();
    let mut ignored = Vec::new();
    for element in value.split(',').map(str::trim) {
        match element.split_once('=') {
            // Two timestamps would make the signed content ambiguous.
            Some(("t", _)) if timestamp_text.is_some() => {
                return Err(VerifyError::MalformedTimestamp);
            }
            Some(("t", t)) => timestamp_text = Some(t),
            Some(("v1", tag)) => match hex_decode::<32>(tag) {
                Some(tag) => v1.push(tag),
                None => ignored.push("v1 (not 64 hex digits)"),
            },
            Some((scheme, _)) => ignored.push(scheme),
            None => ignored.push("(no '=')"),
        }
    }
    let timestamp_text = timestamp_text.ok_or(VerifyError::MalformedTimestamp)?;
    let timestamp = parse_timestamp(timestamp_text)?;
    if v1.is_empty() {
        return Err(VerifyError::MalformedSignature);
    }
    Ok(Parsed {
        timestamp_text,
        timestamp,
        v1,
        ignored,
    })
}

fn signed(key: &HmacSha256, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn matches(key: &HmacSha256, parsed: &Parsed<'_>, body: &[u8]) -> bool {
    let mac = signed(key, parsed.timestamp_text, body);
    any_tag(&mac, &parsed.v1)
}

/// The header value for a message: `t=<timestamp>,v1=<hex>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac_key(secret.as_bytes());
    let tag = signed(&key, &timestamp.to_string(), body).finalize();
    format!("t={timestamp},v1={}", hex_encode(&tag.into_bytes()))
}

impl Verifier for Stripe {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let value = header(headers, &self.header, VerifyError::MalformedSignature)?;
        let parsed = parse(value)?;
        // Freshness before the HMAC: a replay of an old capture costs no hashing.
        check_freshness(parsed.timestamp, now, self.tolerance)?;
        self.keys
            .first_signer(now, |key| matches(key, &parsed, body))
    }

    fn tolerance(&self) -> Option<Duration> {
        Some(self.tolerance)
    }

    fn describe(&self) -> String {
        format!(
            "header {}, {}, tolerance {}",
            self.header,
            self.keys.describe(),
            humantime::format_duration(self.tolerance)
        )
    }

    fn explain(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Explanation {
        let mut out = Explanation::default();
        let value = match header(headers, &self.header, VerifyError::MalformedSignature) {
            Ok(value) => {
                out.step(format!("read {}: {value}", self.header));
                value
            }
            Err(e) => {
                out.step(format!("stopped: {e}"));
                if headers.contains_key("webhook-signature") {
                    out.hint("the request carries webhook-signature: this source may need scheme = \"standard-webhooks\"");
                }
                return out;
            }
        };
        let parsed = match parse(value) {
            Ok(parsed) => parsed,
            Err(e) => {
                out.step(format!(
                    "stopped: {e} (expected t=<unix>,v1=<64 hex digits>)"
                ));
                return out;
            }
        };
        out.step(format!(
            "signatures: {} v1{}",
            parsed.v1.len(),
            if parsed.ignored.is_empty() {
                String::new()
            } else {
                format!(", ignored: {}", parsed.ignored.join(" "))
            }
        ));
        out.step(format!(
            "timestamp t={}",
            describe_age(parsed.timestamp, now, self.tolerance)
        ));
        out.step(format!(
            "signed content {{t}}.{{body}}: {}",
            preview(&[parsed.timestamp_text.as_bytes(), b".", body])
        ));
        self.keys.explain(
            &mut out,
            now,
            |i, _| format!("secrets[{i}] (its text as the HMAC key)"),
            |key| matches(key, &parsed, body),
        );
        if out.matched.is_none() {
            for (i, key) in &self.decoded {
                if matches(key, &parsed, body) {
                    out.hint(format!(
                        "secrets[{i}] matches when base64-decoded after whsec_, as Standard Webhooks reads secrets; \
                         Stripe uses the text as-is, so this sender is not Stripe-compatible"
                    ));
                }
            }
        }
        out
    }
}

/// `hookgate sign --scheme stripe`: a Stripe event body, `t=...,v1=...`.
fn sign_message(options: &Options, msg: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
    if msg.secret.is_empty() {
        return Err(SignError::Secret("the secret is empty".to_owned()));
    }
    let id = msg
        .id
        .map(str::to_owned)
        .unwrap_or_else(|| format!("evt_{}", random_hex()));
    let timestamp = msg.timestamp.unwrap_or(msg.now);
    let body = format!(
        r#"{{"id":{},"object":"event","created":{timestamp},"livemode":false,"type":{},"data":{{"object":{}}}}}"#,
        serde_json::Value::from(id.as_str()),
        serde_json::Value::from(msg.event_type),
        msg.data,
    );
    let header = options.header();
    Ok(SignedRequest {
        headers: vec![
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
            (header, sign(msg.secret, timestamp, body.as_bytes())),
        ],
        id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // The secret and body of stripe-go's webhook tests; the published-style vectors
    // with their sources are in tests/vectors/stripe.toml.
    const SECRET: &str = "whsec_test_secret";
    const TS: i64 = 1700000000;
    const BODY: &[u8] = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";

    fn verifier(secrets: &[&str], header: Option<&str>) -> Arc<dyn Verifier> {
        let secrets: Vec<SecretText> = secrets.iter().map(|s| SecretText::new(s)).collect();
        let options = Options {
            signature_header: header.map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap()),
            ..Options::default()
        };
        build(&options, &secrets).unwrap().verifier
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn check(value: &str, body: &[u8], now: i64) -> Result<Verified, VerifyError> {
        verifier(&[SECRET], None).verify(&headers("Stripe-Signature", value), body, at(now))
    }

    #[test]
    fn signing_produces_t_and_v1() {
        let value = sign(SECRET, TS, BODY);
        assert!(value.starts_with("t=1700000000,v1="), "{value}");
        assert_eq!(check(&value, BODY, TS), Ok(Verified { secret_index: 0 }));
    }

    #[test]
    fn v0_and_unknown_schemes_are_ignored_and_any_v1_may_match() {
        let good = sign(SECRET, TS, BODY);
        let tag = good.split_once(",v1=").unwrap().1;
        let v0_only = format!("t={TS},v0={tag}");
        assert_eq!(
            check(&v0_only, BODY, TS),
            Err(VerifyError::MalformedSignature)
        );
        let rolled = format!("t={TS},v1={},v0={tag},v1={tag},v9=x", "0".repeat(64));
        assert!(check(&rolled, BODY, TS).is_ok());
    }

    #[test]
    fn more_than_max_signature_entries_are_malformed_even_when_one_would_match() {
        let good = sign(SECRET, TS, BODY);
        let tag = good.split_once(",v1=").unwrap().1;
        let junk = format!("v1={}", "0".repeat(64));
        let header = |junk_entries: usize| {
            let mut entries = vec![junk.as_str(); junk_entries];
            entries.push("v0=00");
            format!("t={TS},{},v1={tag}", entries.join(","))
        };
        let max = crate::verify::MAX_SIGNATURE_ENTRIES;
        assert!(check(&header(max - 2), BODY, TS).is_ok());
        assert_eq!(
            check(&header(max - 1), BODY, TS),
            Err(VerifyError::MalformedSignature)
        );
    }

    #[test]
    fn the_secret_text_is_the_key_and_is_not_base64_decoded() {
        // A Standard Webhooks library would decode "test_secret" after whsec_: a
        // different key, so its signature must not verify here.
        let decoded =
            crate::verify::standard_webhooks::key_from_secret("whsec_dGVzdF9zZWNyZXQ=").unwrap();
        assert_eq!(decoded, b"test_secret");
        let mut mac = hmac_key(&decoded);
        mac.update(format!("{TS}.").as_bytes());
        mac.update(BODY);
        let swh_style = format!("t={TS},v1={}", hex_encode(&mac.finalize().into_bytes()));
        let v = verifier(&["whsec_dGVzdF9zZWNyZXQ="], None);
        let h = headers("Stripe-Signature", &swh_style);
        assert_eq!(
            v.verify(&h, BODY, at(TS)),
            Err(VerifyError::InvalidSignature)
        );
        let out = v.explain(&h, BODY, at(TS));
        assert!(
            out.hints[0].contains("secrets[0] matches when base64-decoded"),
            "{:?}",
            out.hints
        );
    }

    #[test]
    fn a_copied_format_under_another_header_verifies() {
        let v = verifier(&[SECRET], Some("OpenAI-Signature"));
        let h = headers("OpenAI-Signature", &sign(SECRET, TS, BODY));
        assert!(v.verify(&h, BODY, at(TS)).is_ok());
        assert_eq!(
            v.verify(
                &headers("Stripe-Signature", &sign(SECRET, TS, BODY)),
                BODY,
                at(TS)
            ),
            Err(VerifyError::MissingHeader(HeaderName::from_static(
                "openai-signature"
            )))
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let good = sign(SECRET, TS, BODY);
        assert_eq!(check(&good, b"{}", TS), Err(VerifyError::InvalidSignature));
        assert_eq!(
            verifier(&["whsec_other"], None).verify(
                &headers("Stripe-Signature", &good),
                BODY,
                at(TS)
            ),
            Err(VerifyError::InvalidSignature)
        );
        assert_eq!(
            check(&good, BODY, TS + 301),
            Err(VerifyError::TimestampTooOld {
                age: Duration::from_secs(301)
            })
        );
        assert_eq!(
            check(&good, BODY, TS - 301),
            Err(VerifyError::TimestampTooNew {
                ahead: Duration::from_secs(301)
            })
        );
        for bad in ["v1=abc", "t=abc,v1=00", "t=1,t=2,v1=00", "garbage"] {
            assert_eq!(
                check(bad, BODY, TS),
                Err(VerifyError::MalformedTimestamp),
                "{bad}"
            );
        }
        for bad in [
            format!("t={TS}"),
            format!("t={TS},v1=zz"),
            format!("t={TS},v1=abcd"),
        ] {
            assert_eq!(
                check(&bad, BODY, TS),
                Err(VerifyError::MalformedSignature),
                "{bad}"
            );
        }
        assert_eq!(
            verifier(&[SECRET], None).verify(&HeaderMap::new(), BODY, at(TS)),
            Err(VerifyError::MissingHeader(SIGNATURE))
        );
    }
}
