//! How a scheme reads its own keys of a `[[sources]]` section.
//!
//! Each scheme declares an `Options` struct with `#[serde(deny_unknown_fields)]`; `read`
//! deserialises it from the keys a section holds beyond the ones every source has (and
//! `hookgate sign` from its flags), and remembers which key it was reading when something
//! failed. So an error names the key, and the caller can point at it: `config` at its line
//! in the file, `hookgate sign` at its flag. A key the scheme does not read is an error,
//! never ignored: a silently ignored `encoding` is a security bug waiting to happen.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A scheme key that cannot be used, or a source the scheme cannot build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key to blame, relative to the source (`encoding`, `secrets[1]`); `None` when
    /// no one key is to blame.
    pub key: Option<String>,
    /// What is wrong, naming the key relative to the source when there is one.
    pub message: String,
    /// `key` is none of the scheme's keys: it would be ignored.
    pub unknown: bool,
}

impl KeyError {
    /// An error about `key`; `message` names it (`"secrets[1]: ..."`).
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: Some(key.into()),
            message: message.into(),
            unknown: false,
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyError {}

impl de::Error for KeyError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        KeyError {
            key: None,
            message: message.to_string(),
            unknown: false,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        KeyError {
            key: Some(field.to_owned()),
            message: format!(
                "{field} is not one of this scheme's keys ({})",
                expected.join(", ")
            ),
            unknown: true,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        KeyError::at(field, format!("{field} is required"))
    }
}

/// Reads `T` from `keys`. A value that does not fit is reported as `<key>: <why>`.
pub fn read<T: DeserializeOwned>(keys: toml::Table) -> Result<T, KeyError> {
    let mut access = Access {
        entries: keys.into_iter(),
        value: None,
        reading: None,
    };
    T::deserialize(de::value::MapAccessDeserializer::new(&mut access)).map_err(|mut e| {
        if let (None, Some(key)) = (&e.key, access.reading.take()) {
            e.message = format!("{key}: {}", e.message);
            e.key = Some(key);
        }
        e
    })
}

/// The keys `T` reads, in the order it declares them: serde's derive hands that list to
/// `deserialize_struct`, and this deserializer only listens.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = KeyError;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, KeyError> {
            Err(de::Error::custom("scheme options are a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, KeyError> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The section's keys, handed out one at a time; `reading` is the key whose value is
/// being read, so an error can be blamed on it.
struct Access {
    entries: toml::map::IntoIter<String, toml::Value>,
    value: Option<toml::Value>,
    reading: Option<String>,
}

impl<'de> MapAccess<'de> for Access {
    type Error = KeyError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, KeyError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.reading = Some(key.clone());
        self.value = Some(value);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, KeyError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value was read before its key"))?;
        let read = seed
            .deserialize(value)
            .map_err(|e| <KeyError as de::Error>::custom(e.message()))?;
        self.reading = None;
        Ok(read)
    }
}

/// `deserialize_with` for an optional header name: a bad one is reported on its key.
pub fn optional_header_name<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<http::HeaderName>, D::Error> {
    let text = String::deserialize(d)?;
    parse_header_name(&text)
        .map(Some)
        .map_err(de::Error::custom)
}

pub fn parse_header_name(text: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("{text:?} is not a valid header name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Options {
        #[serde(default, deserialize_with = "optional_header_name")]
        header: Option<http::HeaderName>,
        count: Option<u32>,
    }

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn the_keys_of_an_options_struct_are_its_fields_in_order() {
        assert_eq!(keys_of::<Options>(), ["header", "count"]);
    }

    #[test]
    fn options_are_read_and_default_when_absent() {
        let options: Options = read(table("header = \"X-Sig\"\ncount = 2")).unwrap();
        assert_eq!(options.header.unwrap(), "x-sig");
        assert_eq!(options.count, Some(2));
        assert_eq!(
            read::<Options>(toml::Table::new()).unwrap(),
            Options::default()
        );
    }

    #[test]
    fn an_unknown_key_is_refused_and_named() {
        let e = read::<Options>(table("count = 1\nencoding = \"hex\"")).unwrap_err();
        assert!(e.unknown);
        assert_eq!(e.key.as_deref(), Some("encoding"));
        assert!(e.message.contains("header, count"), "{e}");
    }

    #[test]
    fn a_value_that_does_not_fit_is_blamed_on_its_key() {
        let e = read::<Options>(table("header = \"bad header\"")).unwrap_err();
        assert!(!e.unknown);
        assert_eq!(e.key.as_deref(), Some("header"));
        assert_eq!(
            e.message,
            "header: \"bad header\" is not a valid header name"
        );
        let e = read::<Options>(table("header = \"X\"\ncount = \"two\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("count"));
        assert!(e.message.starts_with("count: invalid type"), "{e}");
    }
}
