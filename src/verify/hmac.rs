//! Generic HMAC-SHA256, for in-house senders that sign their own way.
//!
//! `signature_header` holds `[prefix]<tag>`, the tag in `encoding` (`hex` or `base64`),
//! HMAC-SHA256 keyed with the secret's UTF-8 bytes over `signed_content`: a template of
//! `{id}`, `{timestamp}` and `{body}` (default `"{body}"`) with literal text between.
//! `timestamp_header` (Unix seconds) makes deliveries expire after `tolerance`; the
//! timestamp must then be signed, or it would protect nothing. `id_header` supplies
//! `{id}` and the default dedupe key. Without either, a captured delivery verifies
//! forever, like GitHub's: replay protection is then deduplication alone.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::hmac::Mac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};

use super::{
    Built, Explanation, HmacSha256, KeyError, Keyring, Scheme, SchemeOptions, SecretText,
    SignError, SignMessage, SignedRequest, Verified, Verifier, VerifyError, base64_decode_32,
    check_freshness, describe_age, header, hex_decode, hex_encode, hmac_key, optional_header_name,
    parse_timestamp, preview, random_hex, tolerance,
};
use crate::event::{Field, JsonPointer, is_valid_key};

pub const SCHEME: Scheme = Scheme::new::<Options>("hmac");

/// The keys a `scheme = "hmac"` source may set; `Spec::new` checks them against each other.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Required.
    #[serde(default, deserialize_with = "optional_header_name")]
    pub signature_header: Option<HeaderName>,
    /// Default hex.
    pub encoding: Option<Encoding>,
    /// Default none.
    pub prefix: Option<String>,
    #[serde(default, deserialize_with = "optional_header_name")]
    pub timestamp_header: Option<HeaderName>,
    /// Default `DEFAULT_TOLERANCE`; only with `timestamp_header`.
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
    #[serde(default, deserialize_with = "optional_header_name")]
    pub id_header: Option<HeaderName>,
    /// Default `"{body}"`.
    pub signed_content: Option<String>,
}

impl SchemeOptions for Options {
    fn build(&self, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
        build(self, secrets)
    }

    fn sign(&self, message: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
        sign_message(self, message)
    }
}

/// How the tag is written in the signature header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

impl Encoding {
    fn decode(self, text: &str) -> Option<[u8; 32]> {
        match self {
            Encoding::Hex => hex_decode::<32>(text),
            Encoding::Base64 => base64_decode_32(text),
        }
    }

    fn encode(self, tag: &[u8]) -> String {
        match self {
            Encoding::Hex => hex_encode(tag),
            Encoding::Base64 => STANDARD.encode(tag),
        }
    }

    fn other(self) -> Encoding {
        match self {
            Encoding::Hex => Encoding::Base64,
            Encoding::Base64 => Encoding::Hex,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        })
    }
}

impl FromStr for Encoding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "hex" => Ok(Encoding::Hex),
            "base64" => Ok(Encoding::Base64),
            other => Err(format!("{other:?} is not an encoding; use hex or base64")),
        }
    }
}

/// One piece of `signed_content`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Id,
    Timestamp,
    Body,
}

fn parse_template(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['{', '}']) {
        let (literal, tail) = rest.split_at(at);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.to_owned()));
        }
        let close = tail
            .find('}')
            .filter(|_| tail.starts_with('{'))
            .ok_or_else(|| format!("signed_content {text:?}: unmatched brace"))?;
        parts.push(match &tail[1..close] {
            "id" => Part::Id,
            "timestamp" => Part::Timestamp,
            "body" => Part::Body,
            other => {
                return Err(format!(
                    "signed_content {text:?}: unknown placeholder {{{other}}}; use {{id}}, {{timestamp}} and {{body}}"
                ));
            }
        });
        rest = &tail[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    if parts.iter().filter(|p| **p == Part::Body).count() != 1 {
        return Err(format!(
            "signed_content {text:?} must contain {{body}} exactly once"
        ));
    }
    Ok(parts)
}

/// The scheme's settings, checked against each other once.
#[derive(Debug)]
struct Spec {
    signature_header: HeaderName,
    encoding: Encoding,
    prefix: String,
    timestamp: Option<(HeaderName, Duration)>,
    id_header: Option<HeaderName>,
    /// The texts next to `{id}` in the template, which an id may not hold: one that did
    /// could move bytes between the id and the body under the same signature
    /// (`{timestamp}.{id}.{body}` signs `ord_1.{"a":1` + `.` + `2}` as it signs `ord_1` +
    /// `.` + `{"a":1.2}`), as Standard Webhooks forbids `.` in its ids.
    id_neighbours: Vec<String>,
    template: Vec<Part>,
    template_text: String,
}

impl Spec {
    fn new(options: &Options) -> Result<Spec, KeyError> {
        let signature_header = options.signature_header.clone().ok_or_else(|| {
            KeyError::at(
                "signature_header",
                "signature_header is required for scheme \"hmac\"",
            )
        })?;
        let template_text = options
            .signed_content
            .clone()
            .unwrap_or_else(|| "{body}".to_owned());
        let template =
            parse_template(&template_text).map_err(|e| KeyError::at("signed_content", e))?;
        let signs = |part: Part| template.contains(&part);
        match (&options.timestamp_header, signs(Part::Timestamp)) {
            (Some(_), false) => {
                return Err(KeyError::at(
                    "timestamp_header",
                    format!(
                        "timestamp_header is set but signed_content {template_text:?} does not sign {{timestamp}}: \
                         an unsigned timestamp protects against nothing"
                    ),
                ));
            }
            (None, true) => {
                return Err(KeyError::at(
                    "signed_content",
                    format!(
                        "signed_content {template_text:?} uses {{timestamp}}: set timestamp_header"
                    ),
                ));
            }
            _ => {}
        }
        if options.tolerance.is_some() && options.timestamp_header.is_none() {
            return Err(KeyError::at(
                "tolerance",
                "tolerance needs timestamp_header: without a timestamp nothing expires",
            ));
        }
        if signs(Part::Id) && options.id_header.is_none() {
            return Err(KeyError::at(
                "signed_content",
                format!("signed_content {template_text:?} uses {{id}}: set id_header"),
            ));
        }
        // With no text between them, bytes move between the id header and the body
        // under one signature (`evt_1` and `{"a":1}`, `evt_1{"a"` and `:1}`): a replay
        // under a new dedupe key, with a body the sender never sent. Nothing in the
        // request can tell the two apart; with a separator, `id_clash` can.
        if template
            .windows(2)
            .any(|pair| matches!(pair, [Part::Id, Part::Body] | [Part::Body, Part::Id]))
        {
            return Err(KeyError::at(
                "signed_content",
                format!(
                    "signed_content {template_text:?} puts {{id}} right next to {{body}}: bytes \
                     could move between the id header and the body under the same signature, \
                     so such a request cannot be verified safely; the signed content needs a \
                     separator between them (such as \"{{id}}.{{body}}\")"
                ),
            ));
        }
        let id_neighbours = template
            .iter()
            .enumerate()
            .filter(|(_, part)| **part == Part::Id)
            .flat_map(|(k, _)| [k.checked_sub(1), Some(k + 1)])
            .filter_map(|at| match template.get(at?) {
                Some(Part::Text(text)) => Some(text.clone()),
                _ => None,
            })
            .collect();
        Ok(Spec {
            signature_header,
            encoding: options.encoding.unwrap_or_default(),
            prefix: options.prefix.clone().unwrap_or_default(),
            timestamp: match options.timestamp_header.clone() {
                Some(name) => Some((name, tolerance(options.tolerance)?)),
                None => None,
            },
            id_header: options.id_header.clone(),
            id_neighbours,
            template,
            template_text,
        })
    }

    /// The text next to `{id}` that `id` holds, if any: such an id is malformed.
    fn id_clash(&self, id: &str) -> Option<&str> {
        self.id_neighbours
            .iter()
            .map(String::as_str)
            .find(|text| id.contains(text))
    }

    /// The MAC of the signed content, streamed part by part (no copy of the body).
    fn mac(&self, key: &HmacSha256, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = key.clone();
        for part in &self.template {
            mac.update(match part {
                Part::Text(text) => text.as_bytes(),
                Part::Id => id.as_bytes(),
                Part::Timestamp => timestamp.as_bytes(),
                Part::Body => body,
            });
        }
        mac
    }

    fn content_preview(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let parts: Vec<&[u8]> = self
            .template
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_bytes(),
                Part::Id => id.as_bytes(),
                Part::Timestamp => timestamp.as_bytes(),
                Part::Body => body,
            })
            .collect();
        preview(&parts)
    }
}

pub struct GenericHmac {
    keys: Keyring<HmacSha256>,
    spec: Spec,
}

impl fmt::Debug for GenericHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn build(options: &Options, secrets: &[SecretText<'_>]) -> Result<Built, KeyError> {
    let spec = Spec::new(options)?;
    let keys = Keyring::raw_hmac(secrets)?;
    let dedupe_key = spec.id_header.clone().map(Field::Header);
    let signs_id = spec.template.contains(&Part::Id);
    let id = spec.id_header.iter().filter(|_| signs_id);
    let timestamp = spec.timestamp.iter().map(|(name, _)| name);
    let signed: Vec<HeaderName> = id.chain(timestamp).cloned().collect();
    let mut headers = vec![spec.signature_header.clone()];
    headers.extend(signed.iter().cloned());
    Ok(Built {
        verifier: Arc::new(GenericHmac { keys, spec }),
        event_type: Field::Json(JsonPointer::parse("/type").expect("a valid pointer")),
        dedupe_key,
        headers,
        signed,
    })
}

/// What `verify` reads from the headers, in its order.
struct Parsed<'h> {
    tag: [u8; 32],
    id: &'h str,
    timestamp: Option<(&'h str, i64)>,
}

impl GenericHmac {
    fn parse<'h>(&self, headers: &'h HeaderMap) -> Result<Parsed<'h>, VerifyError> {
        let spec = &self.spec;
        let value = header(
            headers,
            &spec.signature_header,
            VerifyError::MalformedSignature,
        )?;
        let tag = value
            .strip_prefix(spec.prefix.as_str())
            .and_then(|text| spec.encoding.decode(text))
            .ok_or(VerifyError::MalformedSignature)?;
        let id = match &spec.id_header {
            Some(name) if spec.template.contains(&Part::Id) => {
                let id = header(headers, name, VerifyError::MalformedId)?;
                if !is_valid_key(id) || spec.id_clash(id).is_some() {
                    return Err(VerifyError::MalformedId);
                }
                id
            }
            _ => "",
        };
        let timestamp = match &spec.timestamp {
            Some((name, _)) => {
                let text = header(headers, name, VerifyError::MalformedTimestamp)?;
                Some((text, parse_timestamp(text)?))
            }
            None => None,
        };
        Ok(Parsed { tag, id, timestamp })
    }

    fn matches(&self, key: &HmacSha256, p: &Parsed<'_>, body: &[u8]) -> bool {
        let timestamp = p.timestamp.map(|(text, _)| text).unwrap_or("");
        // `verify_slice` compares in constant time.
        self.spec
            .mac(key, p.id, timestamp, body)
            .verify_slice(&p.tag)
            .is_ok()
    }
}

impl Verifier for GenericHmac {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let parsed = self.parse(headers)?;
        if let (Some((_, timestamp)), Some((_, tolerance))) =
            (parsed.timestamp, &self.spec.timestamp)
        {
            // Freshness before the HMAC: a replay of an old capture costs no hashing.
            check_freshness(timestamp, now, *tolerance)?;
        }
        self.keys
            .first_signer(now, |key| self.matches(key, &parsed, body))
    }

    fn tolerance(&self) -> Option<Duration> {
        self.spec
            .timestamp
            .as_ref()
            .map(|(_, tolerance)| *tolerance)
    }

    fn describe(&self) -> String {
        let spec = &self.spec;
        let timestamp = match &spec.timestamp {
            Some((name, tolerance)) => format!(
                "timestamp {name}, tolerance {}",
                humantime::format_duration(*tolerance)
            ),
            None => "no timestamp (replays stopped by dedupe only)".to_owned(),
        };
        format!(
            "header {} = {:?}<{}>, over {:?}, {}, {timestamp}",
            spec.signature_header,
            spec.prefix,
            spec.encoding,
            spec.template_text,
            self.keys.describe()
        )
    }

    fn explain(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Explanation {
        let spec = &self.spec;
        let mut out = Explanation::default();
        let mut names = vec![&spec.signature_header];
        names.extend(spec.id_header.iter());
        names.extend(spec.timestamp.iter().map(|(name, _)| name));
        for name in names {
            match headers.get(name).map(|v| v.to_str()) {
                Some(Ok(value)) => out.step(format!("read {name}: {value}")),
                Some(Err(_)) => out.step(format!("read {name}: not visible ASCII")),
                None => out.step(format!("{name}: MISSING")),
            }
        }
        let parsed = match self.parse(headers) {
            Ok(parsed) => parsed,
            Err(e) => {
                out.step(format!("stopped: {e}"));
                if let Some(value) = headers
                    .get(&spec.signature_header)
                    .and_then(|v| v.to_str().ok())
                {
                    match value.strip_prefix(spec.prefix.as_str()) {
                        None => out.hint(format!(
                            "the signature does not start with the configured prefix {:?}",
                            spec.prefix
                        )),
                        Some(text) if spec.encoding.other().decode(text).is_some() => {
                            out.hint(format!(
                                "the tag decodes as {}, not {}: set encoding = \"{}\"",
                                spec.encoding.other(),
                                spec.encoding,
                                spec.encoding.other()
                            ))
                        }
                        Some(_) => {}
                    }
                }
                return out;
            }
        };
        match (parsed.timestamp, &spec.timestamp) {
            (Some((_, timestamp)), Some((_, tolerance))) => out.step(format!(
                "timestamp {}",
                describe_age(timestamp, now, *tolerance)
            )),
            _ => out.step("timestamp: none configured (nothing about time is signed)"),
        }
        let timestamp = parsed.timestamp.map(|(text, _)| text).unwrap_or("");
        out.step(format!(
            "signed content {:?}: {}",
            spec.template_text,
            spec.content_preview(parsed.id, timestamp, body)
        ));
        self.keys.explain(
            &mut out,
            now,
            |i, _| format!("secrets[{i}]"),
            |key| self.matches(key, &parsed, body),
        );
        out
    }
}

/// `hookgate sign --scheme hmac` with the same options as the source.
fn sign_message(options: &Options, msg: &SignMessage<'_>) -> Result<SignedRequest, SignError> {
    let spec = Spec::new(options).map_err(|e| SignError::Scheme(e.message))?;
    if msg.secret.is_empty() {
        return Err(SignError::Secret("the secret is empty".to_owned()));
    }
    if msg.timestamp.is_some() && spec.timestamp.is_none() {
        return Err(SignError::Scheme(
            "--timestamp needs a timestamp_header to send it in".to_owned(),
        ));
    }
    let id = msg
        .id
        .map(str::to_owned)
        .unwrap_or_else(|| format!("evt_{}", random_hex()));
    // As `verify` refuses it (400 malformed_id): signed, it could not be delivered.
    if let Some(text) = spec.id_clash(&id) {
        return Err(SignError::Scheme(format!(
            "--id must not contain {text:?}, the text next to {{id}} in signed_content"
        )));
    }
    let timestamp = msg.timestamp.unwrap_or(msg.now).to_string();
    let body = format!(
        r#"{{"id":{},"type":{},"created_at":{timestamp},"data":{}}}"#,
        serde_json::Value::from(id.as_str()),
        serde_json::Value::from(msg.event_type),
        msg.data,
    );
    let key = hmac_key(msg.secret.as_bytes());
    let tag = spec.mac(&key, &id, &timestamp, body.as_bytes()).finalize();
    let mut headers = vec![(http::header::CONTENT_TYPE, "application/json".to_owned())];
    if let Some(name) = &spec.id_header {
        headers.push((name.clone(), id.clone()));
    }
    if let Some((name, _)) = &spec.timestamp {
        headers.push((name.clone(), timestamp.clone()));
    }
    headers.push((
        spec.signature_header.clone(),
        format!("{}{}", spec.prefix, spec.encoding.encode(&tag.into_bytes())),
    ));
    Ok(SignedRequest { id, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &str = "in-house-secret";

    fn secrets() -> Vec<SecretText<'static>> {
        vec![SecretText::new(SECRET)]
    }

    fn options() -> Options {
        Options {
            signature_header: Some(HeaderName::from_static("x-signature")),
            encoding: Some(Encoding::Base64),
            prefix: Some("sha256=".to_owned()),
            timestamp_header: Some(HeaderName::from_static("x-timestamp")),
            id_header: Some(HeaderName::from_static("x-request-id")),
            signed_content: Some("{timestamp}:{id}:{body}".to_owned()),
            ..Options::default()
        }
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn signed(options: &Options, ts: i64) -> (HeaderMap, Vec<u8>) {
        let msg = SignMessage {
            secret: SECRET,
            event_type: "order.paid",
            data: "{}",
            id: Some("req_1"),
            timestamp: Some(ts),
            now: ts,
        };
        let request = sign_message(options, &msg).unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in request.headers {
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        (headers, request.body.into_bytes())
    }

    #[test]
    fn templates_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_template("v0:{timestamp}:{body}").unwrap(),
            vec![
                Part::Text("v0:".into()),
                Part::Timestamp,
                Part::Text(":".into()),
                Part::Body
            ]
        );
        for (bad, why) in [
            ("{id}", "exactly once"),
            ("{body}{body}", "exactly once"),
            ("{bdy}", "unknown placeholder {bdy}"),
            ("{body", "unmatched"),
            ("}{body}", "unmatched"),
        ] {
            let e = parse_template(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_that_would_protect_nothing_are_refused() {
        let mut o = options();
        o.signed_content = Some("{id}:{body}".into());
        assert!(
            Spec::new(&o)
                .unwrap_err()
                .message
                .contains("does not sign {timestamp}")
        );
        let mut o = options();
        o.timestamp_header = None;
        assert!(
            Spec::new(&o)
                .unwrap_err()
                .message
                .contains("set timestamp_header")
        );
        let mut o = options();
        o.id_header = None;
        assert!(Spec::new(&o).unwrap_err().message.contains("set id_header"));
        // Bytes could move between the id and the body (an audit forwarded `evt_` with
        // body `1001{...}` under the signature of `evt_1001` and `{...}`).
        for glued in ["{timestamp}.{id}{body}", "{timestamp}{body}{id}"] {
            let mut o = options();
            o.signed_content = Some(glued.into());
            let e = Spec::new(&o).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("signed_content"), "{glued}");
            assert!(
                e.message.contains("right next to {body}"),
                "{glued}: {}",
                e.message
            );
        }
        let o = Options {
            signature_header: Some(HeaderName::from_static("x-signature")),
            tolerance: Some(Duration::from_secs(60)),
            ..Options::default()
        };
        assert!(
            Spec::new(&o)
                .unwrap_err()
                .message
                .contains("tolerance needs timestamp_header")
        );
        let o = Options::default();
        assert!(
            Spec::new(&o)
                .unwrap_err()
                .message
                .contains("signature_header is required")
        );
    }

    /// With `{id}` right before `{timestamp}`, moving the id's last digit onto the
    /// timestamp as a leading zero signs the same bytes with the same time: a replay
    /// under a new dedupe key. One spelling per timestamp closes it.
    #[test]
    fn a_timestamp_with_a_leading_zero_is_malformed() {
        let s = secrets();
        let mut o = options();
        o.signed_content = Some("{id}{timestamp}{body}".to_owned());
        let v = build(&o, &s).unwrap().verifier;
        let msg = SignMessage {
            secret: SECRET,
            event_type: "order.paid",
            data: "{}",
            id: Some("evt_10"),
            timestamp: Some(1_700_000_000),
            now: 1_700_000_000,
        };
        let request = sign_message(&o, &msg).unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in request.headers {
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        let body = request.body.into_bytes();
        assert!(v.verify(&headers, &body, at(1_700_000_000)).is_ok());

        headers.insert("x-request-id", HeaderValue::from_static("evt_1"));
        headers.insert("x-timestamp", HeaderValue::from_static("01700000000"));
        assert_eq!(
            v.verify(&headers, &body, at(1_700_000_000)),
            Err(VerifyError::MalformedTimestamp)
        );
    }

    /// An id holding the text next to `{id}` could move bytes between the id and the
    /// body under one signature: with `{timestamp}:{id}:{body}`, id `req_1:{"type"` and
    /// the rest of the body sign the same bytes as `req_1` and the whole body. Such an id
    /// is malformed (it verified, and the request was forwarded).
    #[test]
    fn an_id_holding_the_text_next_to_it_in_the_template_is_malformed() {
        let s = secrets();
        let o = options();
        let v = build(&o, &s).unwrap().verifier;
        let (mut headers, body) = signed(&o, 1_700_000_000);
        let colon = body
            .iter()
            .position(|&b| b == b':')
            .expect("a ':' in the body");
        let shifted = format!("req_1:{}", std::str::from_utf8(&body[..colon]).unwrap());
        headers.insert("x-request-id", HeaderValue::from_str(&shifted).unwrap());
        assert_eq!(
            v.verify(&headers, &body[colon + 1..], at(1_700_000_000)),
            Err(VerifyError::MalformedId)
        );
        // Nor does `hookgate sign` make one: signed, it could not be delivered.
        let msg = SignMessage {
            secret: SECRET,
            event_type: "order.paid",
            data: "{}",
            id: Some("ord:1"),
            timestamp: Some(1_700_000_000),
            now: 1_700_000_000,
        };
        let e = sign_message(&o, &msg).unwrap_err().to_string();
        assert!(e.contains("next to {id}"), "{e}");
    }

    #[test]
    fn a_signed_request_verifies_and_each_failure_is_told_apart() {
        let s = secrets();
        let o = options();
        let v = build(&o, &s).unwrap().verifier;
        let (headers, body) = signed(&o, 1_700_000_000);
        assert_eq!(
            v.verify(&headers, &body, at(1_700_000_000)),
            Ok(Verified { secret_index: 0 })
        );
        assert_eq!(
            v.verify(&headers, b"{}", at(1_700_000_000)),
            Err(VerifyError::InvalidSignature)
        );
        assert!(
            v.verify(&headers, &body, at(1_700_000_301))
                .unwrap_err()
                .is_stale()
        );
        let mut other_id = headers.clone();
        other_id.insert("x-request-id", HeaderValue::from_static("req_2"));
        assert_eq!(
            v.verify(&other_id, &body, at(1_700_000_000)),
            Err(VerifyError::InvalidSignature)
        );
        let mut no_prefix = headers.clone();
        let value = headers["x-signature"]
            .to_str()
            .unwrap()
            .replace("sha256=", "");
        no_prefix.insert("x-signature", HeaderValue::from_str(&value).unwrap());
        assert_eq!(
            v.verify(&no_prefix, &body, at(1_700_000_000)),
            Err(VerifyError::MalformedSignature)
        );
        let mut no_ts = headers.clone();
        no_ts.remove("x-timestamp");
        assert_eq!(
            v.verify(&no_ts, &body, at(1_700_000_000)),
            Err(VerifyError::MissingHeader(HeaderName::from_static(
                "x-timestamp"
            )))
        );
    }

    #[test]
    fn explain_suggests_the_other_encoding() {
        let s = secrets();
        let base64 = options();
        let (headers, body) = signed(&base64, 1_700_000_000);
        let mut hex_options = options();
        hex_options.encoding = Some(Encoding::Hex);
        let hex = build(&hex_options, &s).unwrap().verifier;
        let out = hex.explain(&headers, &body, at(1_700_000_000));
        assert!(
            out.hints[0].contains("set encoding = \"base64\""),
            "{:?}",
            out.hints
        );
    }

    #[test]
    fn the_default_template_is_the_body_alone() {
        let s = secrets();
        let o = Options {
            signature_header: Some(HeaderName::from_static("x-signature")),
            ..Options::default()
        };
        let built = build(&o, &s).unwrap();
        assert!(built.dedupe_key.is_none());
        let mut headers = HeaderMap::new();
        let mut mac = hmac_key(SECRET.as_bytes());
        mac.update(b"payload");
        let tag = hex_encode(&mac.finalize().into_bytes());
        headers.insert("x-signature", HeaderValue::from_str(&tag).unwrap());
        assert!(built.verifier.verify(&headers, b"payload", at(0)).is_ok());
    }
}
