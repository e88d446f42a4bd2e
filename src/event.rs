//! The event type: one string read from the verified body by a JSON pointer.
//!
//! A streaming walk over the raw bytes (serde `DeserializeSeed`) visits only the path to
//! the pointer and skips every other value without building it, which on a 1 MiB body is
//! about ten times cheaper than parsing into `serde_json::Value`. The whole document is
//! still checked to be JSON. Escaped strings cannot be borrowed, so the result is a `Cow`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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

/// Why no event type could be read; every case is answered `400 invalid_payload`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not valid JSON")]
    NotJson,
    #[error("no non-empty string at the event type pointer")]
    NoEventType,
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
    fn pointers_must_start_with_a_slash_and_escape_tilde() {
        assert!(JsonPointer::parse("type").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
    }
}
