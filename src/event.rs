//! The event type and the dedupe key: strings read from a verified request, by JSON
//! pointer from the body or from a header (`Field`).
//!
//! A streaming walk over the raw bytes (serde `DeserializeSeed`) visits only the path to
//! the pointer and skips every other value without building it, which on a 1 MiB body is
//! about ten times cheaper than parsing into `serde_json::Value`. The whole document is
//! still checked to be JSON. Escaped strings cannot be borrowed, so the result is a `Cow`.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Dedupe keys become store keys; delivery ids in the wild are far shorter than this.
pub const MAX_DEDUPE_KEY_LEN: usize = 256;

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
            return Err("a JSON pointer must start with '/' (for example \"/type\")".to_owned());
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
    #[error("the body is not valid JSON")]
    NotJson,
    #[error("no non-empty string at the event type pointer")]
    NoEventType,
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
            Field::Header(name) => match header_text(headers, name)? {
                "" => Err(PayloadError::NoEventType),
                text => Ok(Cow::Borrowed(text)),
            },
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
            Field::Json(pointer) => type_at(body, pointer).map_err(|e| match e {
                PayloadError::NoEventType => PayloadError::NoDedupeKey,
                other => other,
            })?,
            Field::Header(name) => Cow::Borrowed(header_text(headers, name)?),
        };
        if key.is_empty() {
            return Err(PayloadError::NoDedupeKey);
        }
        if key.len() > MAX_DEDUPE_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PayloadError::MalformedDedupeKey);
        }
        Ok(key)
    }
}

/// A header's value as text; a value that is not visible ASCII reads as empty.
fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, PayloadError> {
    let value = headers
        .get(name)
        .ok_or_else(|| PayloadError::MissingHeader(name.clone()))?;
    Ok(value.to_str().unwrap_or(""))
}

/// Reads the string at `pointer` in `body`.
pub fn type_at<'b>(body: &'b [u8], pointer: &JsonPointer) -> Result<Cow<'b, str>, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Walk(&pointer.tokens)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|_| PayloadError::NotJson)?;
    match found {
        Some(event_type) if !event_type.is_empty() => Ok(event_type),
        _ => Err(PayloadError::NoEventType),
    }
}

/// Descends one token per level; `None` when the path does not lead to a string.
struct Walk<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_next) = map.next_key_seed(KeyIs(self.0.first()))? {
            if is_next && found.is_none() {
                found = map.next_value_seed(Walk(&self.0[1..]))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted = self.0.first().and_then(|t| array_index(t));
        let mut found = None;
        let mut index = 0usize;
        loop {
            if Some(index) == wanted {
                match seq.next_element_seed(Walk(&self.0[1..]))? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(found)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// RFC 6901 array indices: digits without leading zeros.
fn array_index(token: &str) -> Option<usize> {
    let plain = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if plain { token.parse().ok() } else { None }
}

/// Compares an object key with the wanted token without allocating when it is borrowed.
struct KeyIs<'p>(Option<&'p String>);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.0.is_some_and(|token| token == v))
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
    fn the_first_of_duplicate_keys_wins() {
        assert_eq!(at(r#"{"type":"a","type":"b"}"#, "/type").unwrap(), "a");
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
    }

    #[test]
    fn pointers_must_start_with_a_slash_and_escape_tilde() {
        assert!(JsonPointer::parse("type").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
    }
}
