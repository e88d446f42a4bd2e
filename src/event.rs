//! The event type and the dedupe key: strings read from a verified request, by JSON
//! pointer from the body or from a header (`Field`).
//!
//! A streaming walk over the raw bytes (serde `DeserializeSeed`) visits only the path to
//! the pointer and skips every other value without building it, which on a 1 MiB body is
//! about ten times cheaper than parsing into `serde_json::Value`. The whole document is
//! still checked to be JSON, and to be UTF-8 throughout (the walk alone would skip
//! strings it does not read without looking inside). Escaped strings cannot be borrowed,
//! so the result is a `Cow`.
//!
//! A key on the path to a pointer that appears twice in one object is refused: parsers
//! disagree on which copy counts (serde keeps the first, Python's `json` the last), and
//! the backend must route and deduplicate on what hookgate did. Duplicates elsewhere are
//! left alone.
//!
//! The claim key (`KeyBinding`) is the dedupe key, bound to a hash of the body when
//! the signature does not cover the headers that pick the dedupe key or the route.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Dedupe keys become store keys; delivery ids in the wild are far shorter than this.
pub const MAX_DEDUPE_KEY_LEN: usize = 256;
/// Event types become a header, a log field and a route match; senders' are far shorter.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// An RFC 6901 JSON pointer, split into unescaped reference tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(JsonPointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a JSON pointer must start with '/' (for example `/type`)".to_owned());
        };
        let tokens = rest
            .split('/')
            .map(unescape_token)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JsonPointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The unescaped reference tokens (`/a~1b/c` is `["a/b", "c"]`).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn unescape_token(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err("'~' must be followed by '0' or '1' (RFC 6901)".to_owned()),
        }
    }
    Ok(out)
}

/// Why no event type or dedupe key could be read; `reject` maps each to a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not valid JSON (or not UTF-8)")]
    NotJson,
    #[error("an object on the path to a pointer has the same key twice")]
    DuplicateKey,
    #[error("no non-empty string at the event type pointer")]
    NoEventType,
    /// A NUL or another control character: no store keeps it as text (PostgreSQL
    /// refused it, answering 503 to every retry), and it is no event type a route names.
    #[error("the event type holds a control character")]
    EventTypeControl,
    #[error("the event type is longer than 256 bytes")]
    EventTypeTooLong,
    #[error("no non-empty string at the dedupe key pointer")]
    NoDedupeKey,
    #[error("the dedupe key is longer than 256 bytes or not printable ASCII")]
    MalformedDedupeKey,
    #[error("header {0} is missing")]
    MissingHeader(HeaderName),
}

/// Where a source reads its event type or its dedupe key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A string in the JSON body.
    Json(JsonPointer),
    /// A request header (`X-GitHub-Event`, `webhook-id`).
    Header(HeaderName),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Json(pointer) => write!(f, "{pointer}"),
            Field::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl Field {
    /// The event type: a non-empty string.
    pub fn event_type<'r>(
        &self,
        headers: &'r HeaderMap,
        body: &'r [u8],
    ) -> Result<Cow<'r, str>, PayloadError> {
        match self {
            Field::Json(pointer) => type_at(body, pointer),
            Field::Header(name) => {
                checked_event_type(Some(Cow::Borrowed(header_text(headers, name)?)))
            }
        }
    }

    /// The dedupe key: 1 to 256 bytes of printable ASCII, because it becomes a store key,
    /// a log field and, with `resign`, the upstream's `webhook-id`.
    pub fn dedupe_key<'r>(
        &self,
        headers: &'r HeaderMap,
        body: &'r [u8],
    ) -> Result<Cow<'r, str>, PayloadError> {
        let key = match self {
            Field::Json(pointer) => {
                let [key] = strings_at(body, [pointer])?;
                key.unwrap_or_default()
            }
            Field::Header(name) => {
                // A header that is there names the key: empty or not printable, it is
                // a malformed one (`malformed_id`), not a missing one.
                let key = header_text(headers, name)?;
                if !is_valid_key(key) {
                    return Err(PayloadError::MalformedDedupeKey);
                }
                Cow::Borrowed(key)
            }
        };
        checked_key(key)
    }
}

/// What a delivery's claim key is made of, besides its source. The signature covers the
/// body, but not always the headers that pick the dedupe key or the route (GitHub signs
/// neither `X-GitHub-Delivery` nor `X-GitHub-Event`; `hmac` signs its id header only
/// through `{id}`). Then anyone holding one signed body can resend it under an id of
/// their choosing: keyed by the id alone, that copy would occupy the genuine delivery's
/// key, and the genuine delivery would be answered as a duplicate and never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBinding {
    /// The dedupe key and the event type are covered by the signature (or read from the
    /// body): the claim key is the dedupe key.
    Id,
    /// Either is read from an unsigned header: the claim key is `<dedupe key>:<hash>`,
    /// the hash over the event type and the body (SHA-256, first 128 bits in hex). A body
    /// replayed under another id or event type claims a key of its own, while the
    /// sender's retries (same id, same bytes) still meet as duplicates.
    IdAndBody,
}

impl KeyBinding {
    pub fn claim_key<'k>(self, dedupe_key: &'k str, event_type: &str, body: &[u8]) -> Cow<'k, str> {
        use sha2::{Digest, Sha256};
        use std::fmt::Write as _;
        match self {
            KeyBinding::Id => Cow::Borrowed(dedupe_key),
            KeyBinding::IdAndBody => {
                let digest = Sha256::new()
                    .chain_update((event_type.len() as u64).to_be_bytes())
                    .chain_update(event_type)
                    .chain_update(body)
                    .finalize();
                let mut key = String::with_capacity(dedupe_key.len() + 33);
                key.push_str(dedupe_key);
                key.push(':');
                for byte in &digest[..16] {
                    let _ = write!(key, "{byte:02x}");
                }
                Cow::Owned(key)
            }
        }
    }
}

/// Both fields of a delivery: its dedupe key, then its event type, with the errors
/// `dedupe_key` and `event_type` give in that order. When both are in the JSON body,
/// the body is parsed once rather than once per field.
pub fn dedupe_key_and_event_type<'r>(
    dedupe_key: &Field,
    event_type: &Field,
    headers: &'r HeaderMap,
    body: &'r [u8],
) -> Result<(Cow<'r, str>, Cow<'r, str>), PayloadError> {
    let (Field::Json(key_at), Field::Json(type_at)) = (dedupe_key, event_type) else {
        return Ok((
            dedupe_key.dedupe_key(headers, body)?,
            event_type.event_type(headers, body)?,
        ));
    };
    let [key, event] = strings_at(body, [key_at, type_at])?;
    Ok((
        checked_key(key.unwrap_or_default())?,
        checked_event_type(event)?,
    ))
}

/// Whether hookgate takes `text` as an event type (`hookgate sign` asks before signing).
pub fn is_valid_event_type(text: &str) -> bool {
    checked_event_type(Some(Cow::Borrowed(text))).is_ok()
}

/// An event type as read (`None`: no string there), or why it cannot be one.
fn checked_event_type(event_type: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, PayloadError> {
    match event_type {
        Some(text) if text.len() > MAX_EVENT_TYPE_LEN => Err(PayloadError::EventTypeTooLong),
        Some(text) if text.chars().any(char::is_control) => Err(PayloadError::EventTypeControl),
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(PayloadError::NoEventType),
    }
}

/// A dedupe key as read, or why it cannot be one.
fn checked_key(key: Cow<'_, str>) -> Result<Cow<'_, str>, PayloadError> {
    if key.is_empty() {
        return Err(PayloadError::NoDedupeKey);
    }
    if !is_valid_key(&key) {
        return Err(PayloadError::MalformedDedupeKey);
    }
    Ok(key)
}

/// 1 to `MAX_DEDUPE_KEY_LEN` bytes of printable ASCII: what a delivery id must be to
/// become a store key, a log field and a header value.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_DEDUPE_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A header's value as text; a value that is not visible ASCII reads as empty.
fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, PayloadError> {
    let value = headers
        .get(name)
        .ok_or_else(|| PayloadError::MissingHeader(name.clone()))?;
    Ok(value.to_str().unwrap_or(""))
}

/// Reads the event type at `pointer` in `body`.
pub fn type_at<'b>(body: &'b [u8], pointer: &JsonPointer) -> Result<Cow<'b, str>, PayloadError> {
    let [event_type] = strings_at(body, [pointer])?;
    checked_event_type(event_type)
}

/// The strings at `pointers` in `body`, in one pass; `NotJson` unless the whole body is
/// valid JSON in UTF-8, `DuplicateKey` when a key on a path to them appears twice.
fn strings_at<'b, const N: usize>(
    body: &'b [u8],
    pointers: [&JsonPointer; N],
) -> Result<[Option<Cow<'b, str>>; N], PayloadError> {
    // Checked once up front, the walk then reads the text without checking it again.
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotJson)?;
    let mut de = serde_json::Deserializer::from_str(text);
    Walk(pointers.map(|p| Some(p.tokens.as_slice())))
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| match e.classify() {
            // The walk raises one error of its own, and serde_json none of this category
            // while reading JSON text into it: a duplicate key.
            serde_json::error::Category::Data => PayloadError::DuplicateKey,
            _ => PayloadError::NotJson,
        })
}

/// Descends one token per level along each path still followed (`None`: not below
/// here); each path's answer is `None` when it does not lead to a string.
struct Walk<'p, const N: usize>([Option<&'p [String]>; N]);

impl<'p, const N: usize> Walk<'p, N> {
    /// The paths that continue below a member or element: those whose next token it
    /// `matches` (given the path's position and that token).
    fn below(&self, matches: impl Fn(usize, &String) -> bool) -> Option<Walk<'p, N>> {
        let mut i = 0;
        let next = self.0.map(|path| {
            let step = path
                .and_then(|p| p.split_first())
                .filter(|(token, _)| matches(i, token));
            i += 1;
            step.map(|(_, rest)| rest)
        });
        next.iter().any(Option::is_some).then_some(Walk(next))
    }

    fn at_end<'de>(&self, v: Cow<'de, str>) -> [Option<Cow<'de, str>>; N] {
        self.0
            .map(|path| path.is_some_and(<[String]>::is_empty).then(|| v.clone()))
    }
}

/// Adds what a member or element found below to the answers so far.
fn merge<'de, const N: usize>(
    found: &mut [Option<Cow<'de, str>>; N],
    more: [Option<Cow<'de, str>>; N],
) {
    for (slot, value) in found.iter_mut().zip(more) {
        if slot.is_none() {
            *slot = value;
        }
    }
}

impl<'de, const N: usize> DeserializeSeed<'de> for Walk<'_, N> {
    type Value = [Option<Cow<'de, str>>; N];

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Walk<'_, N> {
    type Value = [Option<Cow<'de, str>>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self.at_end(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.at_end(Cow::Owned(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [const { None }; N];
        let mut seen = [false; N];
        let wanted = self.0.map(|path| path.and_then(|p| p.first()));
        while let Some(key) = map.next_key_seed(KeyIs(wanted))? {
            for (seen, hit) in seen.iter_mut().zip(key) {
                if hit && std::mem::replace(seen, true) {
                    return Err(de::Error::custom("a key on the path appears twice"));
                }
            }
            match self.below(|i, _| key[i]) {
                Some(walk) => merge(&mut found, map.next_value_seed(walk)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = [const { None }; N];
        let mut index = 0usize;
        loop {
            match self.below(|_, token| array_index(token) == Some(index)) {
                Some(walk) => match seq.next_element_seed(walk)? {
                    Some(value) => merge(&mut found, value),
                    None => break,
                },
                None => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            index += 1;
        }
        Ok(found)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok([const { None }; N])
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok([const { None }; N])
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok([const { None }; N])
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok([const { None }; N])
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok([const { None }; N])
    }
}

/// RFC 6901 array indices: digits without leading zeros.
pub(crate) fn array_index(token: &str) -> Option<usize> {
    let plain = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if plain { token.parse().ok() } else { None }
}

/// Compares an object key with each path's wanted token without allocating when it is
/// borrowed.
struct KeyIs<'p, const N: usize>([Option<&'p String>; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for KeyIs<'_, N> {
    type Value = [bool; N];

    /// As a `str`: the walk is what checks the body to be JSON, and serde_json reads a key
    /// as bytes without checking it for raw control characters (a body with a NUL in a
    /// key was taken for JSON). A key holding a lone surrogate is then refused, as
    /// `serde_json::Value` refuses it; beside a condition's pointer it is read as bytes
    /// (`route::condition`, after the body was checked whole).
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<[bool; N], D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for KeyIs<'_, N> {
    type Value = [bool; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<[bool; N], E> {
        Ok(self.0.map(|token| token.is_some_and(|token| token == v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(body: &str, pointer: &str) -> Result<String, PayloadError> {
        type_at(body.as_bytes(), &JsonPointer::parse(pointer).unwrap()).map(Cow::into_owned)
    }

    #[test]
    fn reads_a_top_level_string() {
        let body = r#"{"id":"evt_1","type":"response.completed","data":{"id":"r"}}"#;
        assert_eq!(at(body, "/type").unwrap(), "response.completed");
    }

    #[test]
    fn reads_nested_objects_and_array_elements() {
        let body = r#"{"a":{"b":[{"c":"x"},{"c":"y"}]}}"#;
        assert_eq!(at(body, "/a/b/1/c").unwrap(), "y");
        assert_eq!(at(body, "/a/b/0/c").unwrap(), "x");
    }

    #[test]
    fn escaped_strings_and_escaped_tokens_work() {
        assert_eq!(at(r#"{"t":"a\u002eb"}"#, "/t").unwrap(), "a.b");
        assert_eq!(at(r#"{"a/b":{"m~n":"v"}}"#, "/a~1b/m~0n").unwrap(), "v");
    }

    #[test]
    fn a_key_twice_on_the_path_is_refused_in_any_spelling() {
        for body in [
            r#"{"type":"a","type":"b"}"#,
            r#"{"type":"a","t\u0079pe":"b"}"#,
            r#"{"type":{"x":1},"type":"b"}"#,
        ] {
            assert_eq!(at(body, "/type"), Err(PayloadError::DuplicateKey), "{body}");
        }
        let nested = r#"{"data":{"object":{"type":"a"}},"data":{"object":{"type":"b"}}}"#;
        assert_eq!(
            at(nested, "/data/object/type"),
            Err(PayloadError::DuplicateKey)
        );
        assert_eq!(
            at(r#"{"a":[{"t":"x","t":"y"}]}"#, "/a/0/t"),
            Err(PayloadError::DuplicateKey)
        );
    }

    /// A raw control character in a key is no JSON (it was taken for JSON while keys were
    /// read as bytes: found by the `event_type` fuzzer); an escaped one is.
    #[test]
    fn a_key_with_a_raw_control_character_is_not_json() {
        assert_eq!(
            at("{\"type\":\"a\",\"\u{0}b\":\"c\"}", "/type"),
            Err(PayloadError::NotJson)
        );
        assert_eq!(at(r#"{"type":"a","\u0000b":"c"}"#, "/type").unwrap(), "a");
    }

    #[test]
    fn a_key_twice_off_the_path_is_left_alone() {
        assert_eq!(
            at(
                r#"{"type":"a","x":1,"x":2,"d":{"type":"q","type":"r"}}"#,
                "/type"
            )
            .unwrap(),
            "a"
        );
        // Past the element the pointer names, duplicates are off the path.
        assert_eq!(
            at(r#"{"a":[{"t":"x"},{"t":"y","t":"z"}]}"#, "/a/0/t").unwrap(),
            "x"
        );
    }

    #[test]
    fn invalid_utf8_anywhere_in_the_body_is_not_json() {
        let mut body = br#"{"type":"a","note":"caf"#.to_vec();
        body.extend_from_slice(&[0xe9]); // Latin-1 "é" inside a string the walk skips
        body.extend_from_slice(br#""}"#);
        let pointer = JsonPointer::parse("/type").unwrap();
        assert_eq!(type_at(&body, &pointer), Err(PayloadError::NotJson));
        assert_eq!(
            type_at(b"{\"type\":\"a\xff\"}", &pointer),
            Err(PayloadError::NotJson)
        );
    }

    #[test]
    fn an_event_type_over_256_bytes_is_refused_from_the_body_and_from_a_header() {
        let body = |len: usize| format!(r#"{{"type":"{}"}}"#, "t".repeat(len));
        assert_eq!(at(&body(MAX_EVENT_TYPE_LEN), "/type").unwrap().len(), 256);
        assert_eq!(
            at(&body(MAX_EVENT_TYPE_LEN + 1), "/type"),
            Err(PayloadError::EventTypeTooLong)
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-event", "e".repeat(257).parse().unwrap());
        let field = Field::Header(HeaderName::from_static("x-event"));
        assert_eq!(
            field.event_type(&headers, b""),
            Err(PayloadError::EventTypeTooLong)
        );
        let json = Field::Json(JsonPointer::parse("/type").unwrap());
        let id = Field::Json(JsonPointer::parse("/id").unwrap());
        let long = format!(r#"{{"id":"x","type":"{}"}}"#, "t".repeat(300));
        assert_eq!(
            dedupe_key_and_event_type(&id, &json, &headers, long.as_bytes()),
            Err(PayloadError::EventTypeTooLong)
        );
    }

    /// A NUL (or another control character) in an event type: PostgreSQL keeps no such
    /// text, and answered 503 to the sender's every retry.
    #[test]
    fn an_event_type_with_a_control_character_is_refused() {
        for sent in [r#"{"type":"a\u0000b"}"#, r#"{"type":"a\nb"}"#] {
            assert_eq!(
                at(sent, "/type"),
                Err(PayloadError::EventTypeControl),
                "{sent}"
            );
        }
        assert_eq!(
            at(r#"{"type":"réponse.terminée"}"#, "/type").unwrap(),
            "réponse.terminée"
        );
    }

    #[test]
    fn a_claim_key_bound_to_the_body_changes_with_the_body_and_the_event_type_only() {
        let body = br#"{"ref":"main"}"#;
        assert_eq!(
            KeyBinding::Id.claim_key("d-1", "push", body),
            Cow::Borrowed("d-1")
        );
        let key = KeyBinding::IdAndBody.claim_key("d-1", "push", body);
        let (id, hash) = key.rsplit_once(':').unwrap();
        assert_eq!(id, "d-1");
        assert_eq!(hash.len(), 32);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(is_valid_key(&key));
        assert_eq!(KeyBinding::IdAndBody.claim_key("d-1", "push", body), key);
        for other in [
            KeyBinding::IdAndBody.claim_key("d-1", "push", br#"{"ref":"dev"}"#),
            KeyBinding::IdAndBody.claim_key("d-1", "ping", body),
            KeyBinding::IdAndBody.claim_key("d-2", "push", body),
            // The event type's length is hashed too: "pus" + "h{..." is not "push" + "{...".
            KeyBinding::IdAndBody.claim_key("d-1", "pus", br#"h{"ref":"main"}"#),
        ] {
            assert_ne!(other, key);
        }
    }

    #[test]
    fn a_missing_or_non_string_value_has_no_event_type() {
        assert_eq!(at(r#"{"x":1}"#, "/type"), Err(PayloadError::NoEventType));
        assert_eq!(at(r#"{"type":1}"#, "/type"), Err(PayloadError::NoEventType));
        assert_eq!(
            at(r#"{"type":{"a":"b"}}"#, "/type"),
            Err(PayloadError::NoEventType)
        );
        assert_eq!(
            at(r#"{"type":""}"#, "/type"),
            Err(PayloadError::NoEventType)
        );
        assert_eq!(at(r#"["a"]"#, "/type"), Err(PayloadError::NoEventType));
        assert_eq!(at(r#"["a"]"#, "/01"), Err(PayloadError::NoEventType));
    }

    #[test]
    fn invalid_json_is_not_json_even_after_the_value() {
        assert_eq!(at("not json", "/type"), Err(PayloadError::NotJson));
        assert_eq!(
            at(r#"{"type":"a"} trailing"#, "/type"),
            Err(PayloadError::NotJson)
        );
        assert_eq!(
            at(r#"{"type":"a","x":[1,}"#, "/type"),
            Err(PayloadError::NotJson)
        );
        assert_eq!(at("", "/type"), Err(PayloadError::NotJson));
    }

    #[test]
    fn the_empty_pointer_is_the_whole_document() {
        assert_eq!(at(r#""ping""#, "").unwrap(), "ping");
    }

    #[test]
    fn fields_read_headers_and_pointers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-github-event", "push".parse().unwrap());
        headers.insert("x-github-delivery", "72d3162e-cc78".parse().unwrap());
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let header = |name: &'static str| Field::Header(HeaderName::from_static(name));
        let json = |pointer: &str| Field::Json(JsonPointer::parse(pointer).unwrap());

        assert_eq!(
            header("x-github-event").event_type(&headers, body).unwrap(),
            "push"
        );
        assert_eq!(
            json("/type").event_type(&headers, body).unwrap(),
            "invoice.paid"
        );
        assert_eq!(json("/id").dedupe_key(&headers, body).unwrap(), "evt_1");
        assert_eq!(
            header("x-github-delivery")
                .dedupe_key(&headers, body)
                .unwrap(),
            "72d3162e-cc78"
        );
        assert_eq!(
            header("x-missing").dedupe_key(&headers, body),
            Err(PayloadError::MissingHeader(HeaderName::from_static(
                "x-missing"
            )))
        );
        assert_eq!(
            json("/nope").dedupe_key(&headers, body),
            Err(PayloadError::NoDedupeKey)
        );
    }

    #[test]
    fn a_dedupe_key_must_be_short_printable_ascii() {
        let key = |body: &str| {
            Field::Json(JsonPointer::parse("/id").unwrap())
                .dedupe_key(&HeaderMap::new(), body.as_bytes())
                .map(Cow::into_owned)
        };
        assert_eq!(
            key(r#"{"id":"a b"}"#),
            Err(PayloadError::MalformedDedupeKey)
        );
        assert_eq!(
            key(r#"{"id":"évt"}"#),
            Err(PayloadError::MalformedDedupeKey)
        );
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_DEDUPE_KEY_LEN + 1));
        assert_eq!(key(&long), Err(PayloadError::MalformedDedupeKey));
        assert_eq!(key(r#"{"id":""}"#), Err(PayloadError::NoDedupeKey));
        assert_eq!(key(r#"{"id":7}"#), Err(PayloadError::NoDedupeKey));

        let name = HeaderName::from_static("x-github-delivery");
        for value in [&b""[..], b"\xe9vt", b"a b"] {
            let mut headers = HeaderMap::new();
            headers.insert(&name, http::HeaderValue::from_bytes(value).unwrap());
            assert_eq!(
                Field::Header(name.clone()).dedupe_key(&headers, b"{}"),
                Err(PayloadError::MalformedDedupeKey),
                "{value:?}"
            );
        }
    }

    #[test]
    fn pointers_must_start_with_a_slash_and_escape_tilde() {
        assert!(JsonPointer::parse("type").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
    }

    #[test]
    fn both_fields_in_one_pass_refuse_a_duplicate_on_either_path() {
        let json = |p: &str| Field::Json(JsonPointer::parse(p).unwrap());
        let headers = HeaderMap::new();
        for body in [
            r#"{"id":"a","id":"b","type":"t"}"#,
            r#"{"id":"a","type":"t","type":"u"}"#,
            r#"{"data":{"id":"a"},"data":{"type":"t"}}"#,
        ] {
            assert_eq!(
                dedupe_key_and_event_type(
                    &json(if body.contains("data") {
                        "/data/id"
                    } else {
                        "/id"
                    }),
                    &json(if body.contains("data") {
                        "/data/type"
                    } else {
                        "/type"
                    }),
                    &headers,
                    body.as_bytes()
                ),
                Err(PayloadError::DuplicateKey),
                "{body}"
            );
        }
    }

    #[test]
    fn both_fields_in_one_pass_answer_as_the_two_separate_reads() {
        let json = |p: &str| Field::Json(JsonPointer::parse(p).unwrap());
        let header = Field::Header(HeaderName::from_static("webhook-id"));
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_h".parse().unwrap());
        let bodies = [
            r#"{"id":"evt_1","type":"a.b"}"#,
            r#"{"type":"a.b","id":"evt_1","id":"evt_2","type":"c"}"#,
            r#"{"data":{"id":"x","type":"t"},"list":["p",{"id":"q"}]}"#,
            r#"{"id":1,"type":"a"}"#,
            r#"{"id":"","type":"a"}"#,
            r#"{"id":"has space","type":"a"}"#,
            r#"{"id":"ok","type":""}"#,
            r#"{"id":"ok"}"#,
            r#"{"id":"ok","type":"a"} trailing"#,
            r#"{"id":{"id":"nested"},"id":"second","type":"a\u002eb"}"#,
            "not json",
            "",
        ];
        let pairs = [
            (json("/id"), json("/type")),
            (json("/type"), json("/type")),
            (json("/data/id"), json("/data/type")),
            (json("/list/1/id"), json("/list/0")),
            (json("/id"), json("/missing")),
            (header.clone(), json("/type")),
            (json("/id"), header.clone()),
        ];
        for body in bodies {
            for (key_at, type_at) in &pairs {
                let separate = key_at
                    .dedupe_key(&headers, body.as_bytes())
                    .and_then(|k| Ok((k, type_at.event_type(&headers, body.as_bytes())?)));
                let together =
                    dedupe_key_and_event_type(key_at, type_at, &headers, body.as_bytes());
                assert_eq!(together, separate, "{key_at} and {type_at} in {body}");
            }
        }
    }
}
