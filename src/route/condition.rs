//! A route's `match` conditions: tests on JSON pointers into the verified body.
//!
//! Conditions read only the body the signature covers, never headers (an unsigned
//! header would let anyone steer a delivery). The body is checked to be JSON at most
//! once per request, and only when a route with conditions has matched the event type;
//! a body that is not JSON (or not UTF-8) makes every condition false, `exists = false`
//! included, so a route with conditions never takes a payload it cannot read.
//!
//! JSON here is what the event type stage reads (`event`): each pointer is walked to its
//! value once per request, skipping everything else unread, so a body that stage took is never "not JSON"
//! here because of what lies elsewhere in it (a string cut inside a surrogate pair, a
//! number beyond `f64`, nesting past serde_json's 128 levels). Read as one
//! `serde_json::Value`, such a body failed every condition: a tenant's event fell
//! through to the catch-all route. A value of that kind at the pointer itself exists and
//! equals nothing. Where a key repeats, the last one counts, as in `serde_json::Value`.

use std::cell::{OnceCell, RefCell};
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::{JsonPointer, array_index};

/// One condition: the value at `pointer` passes `test`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pointer: JsonPointer,
    test: Test,
}

/// What a condition asks of the value at its pointer. Scalars are JSON strings, numbers
/// or booleans (the config refuses anything else).
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// The value is this scalar; numbers compare by value (`1` equals `1.0`), never
    /// across types (`"1"` is not `1`).
    Equals(Value),
    /// The value is one of these scalars (never empty).
    In(Vec<Value>),
    /// The pointer resolves (to any value, `null` included), or, with `false`, does not.
    Exists(bool),
    /// The value is a string starting with this.
    Prefix(String),
}

impl Condition {
    pub fn new(pointer: JsonPointer, test: Test) -> Self {
        Condition { pointer, test }
    }

    pub fn pointer(&self) -> &JsonPointer {
        &self.pointer
    }

    /// Whether the condition holds for `payload`; false whenever the body is not JSON.
    pub fn holds(&self, payload: &Payload<'_>) -> bool {
        let Some(found) = payload.at(&self.pointer) else {
            return false;
        };
        let value = match (&self.test, found) {
            (Test::Exists(wanted), found) => return found.is_some() == *wanted,
            (_, None) => return false,
            // Present, and equal to nothing a config can name.
            (_, Some(Found::Other)) => return false,
            (_, Some(Found::Scalar(value))) => value,
        };
        match &self.test {
            Test::Equals(expected) => same_scalar(expected, &value),
            Test::In(options) => options.iter().any(|o| same_scalar(o, &value)),
            Test::Prefix(prefix) => value
                .as_str()
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            Test::Exists(_) => unreachable!("answered above"),
        }
    }
}

/// What a pointer names: a scalar, or something no scalar equals (an object, an array,
/// or a value serde_json does not read as a `Value`).
#[derive(Debug, Clone)]
enum Found {
    Scalar(Value),
    Other,
}

/// The value `pointer` names in `document` (valid JSON), as RFC 6901 reads it (array
/// indexes decimal without leading zeros), walking only the containers on its path.
fn value_at(document: &RawValue, pointer: &JsonPointer) -> Option<Found> {
    let mut here = document;
    for token in pointer.tokens() {
        here = member(here.get(), token)?;
    }
    let text = here.get();
    if text.starts_with(['{', '[']) {
        return Some(Found::Other);
    }
    Some(serde_json::from_str(text).map_or(Found::Other, Found::Scalar))
}

/// The member or element `token` names in the JSON container `text`, unread; `None`
/// when there is none, or `text` is not a container.
fn member<'t>(text: &'t str, token: &str) -> Option<&'t RawValue> {
    if !text.starts_with(['{', '[']) {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(Member(token)).ok().flatten()
}

struct Member<'k>(&'k str);

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_wanted) = map.next_key_seed(IsKey(self.0))? {
            if is_wanted {
                found = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some(wanted) = array_index(self.0) else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(None);
        };
        let mut index = 0;
        let mut found = None;
        loop {
            if index == wanted {
                match seq.next_element()? {
                    Some(value) => found = Some(value),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(found)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Equality of two JSON scalars; numbers by value, exactly.
fn same_scalar(expected: &Value, value: &Value) -> bool {
    match (expected, value) {
        (Value::Number(a), Value::Number(b)) => exact(a) == exact(b),
        (Value::Number(_), _) | (_, Value::Number(_)) => false,
        (a, b) => a == b,
    }
}

/// A JSON number as it can be compared exactly: an integral float as the integer it is
/// (compared as `f64`, `9007199254740993` equalled `9007199254740992.0`).
#[derive(PartialEq)]
enum Exact {
    Integer(i128),
    Float(f64),
}

fn exact(n: &serde_json::Number) -> Exact {
    if let Some(i) = n.as_i64() {
        return Exact::Integer(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Exact::Integer(u.into());
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    // Beyond 2^64 no JSON integer serde_json reads can equal it anyway.
    if f.fract() == 0.0 && f.abs() < 2f64.powi(64) {
        Exact::Integer(f as i128)
    } else {
        Exact::Float(f)
    }
}

/// How `check` shows a condition: `/data/status in ["completed", "incomplete"]`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = &self.pointer;
        match &self.test {
            Test::Equals(value) => write!(f, "{pointer} = {value}"),
            Test::In(values) => {
                let values: Vec<String> = values.iter().map(Value::to_string).collect();
                write!(f, "{pointer} in [{}]", values.join(", "))
            }
            Test::Exists(true) => write!(f, "{pointer} exists"),
            Test::Exists(false) => write!(f, "{pointer} absent"),
            Test::Prefix(prefix) => write!(f, "{pointer} starts with {prefix:?}"),
        }
    }
}

/// Whether an object's key is the wanted one, compared where it lies in the body (no
/// `String` made for each key). Read as bytes: serde_json then takes a key holding a lone
/// surrogate (`JSON.stringify` writes one) as WTF-8, which equals no token, where reading
/// it as a `str` failed the whole object and a tenant's key beside it read as absent.
struct IsKey<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for IsKey<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for IsKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<bool, E> {
        Ok(key == self.0.as_bytes())
    }
}

/// The verified body, checked to be JSON on first use (routes without conditions never
/// pay for it), and what each pointer found in it: the conditions of every route tried
/// share one walk per pointer (a tenant pointer on fifty routes was fifty walks).
pub struct Payload<'b> {
    body: &'b [u8],
    document: OnceCell<Option<&'b RawValue>>,
    found: RefCell<Vec<(JsonPointer, Option<Found>)>>,
}

impl<'b> Payload<'b> {
    pub fn new(body: &'b [u8]) -> Self {
        Payload {
            body,
            document: OnceCell::new(),
            found: RefCell::default(),
        }
    }

    /// What `pointer` names; `None` when the body is not JSON.
    fn at(&self, pointer: &JsonPointer) -> Option<Option<Found>> {
        let document = (*self.document.get_or_init(|| {
            let text = std::str::from_utf8(self.body).ok()?;
            serde_json::from_str(text).ok()
        }))?;
        if let Some((_, found)) = self.found.borrow().iter().find(|(p, _)| p == pointer) {
            return Some(found.clone());
        }
        let found = value_at(document, pointer);
        self.found
            .borrow_mut()
            .push((pointer.clone(), found.clone()));
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn holds(pointer: &str, test: Test, body: &str) -> bool {
        Condition::new(JsonPointer::parse(pointer).unwrap(), test)
            .holds(&Payload::new(body.as_bytes()))
    }

    const BODY: &str =
        r#"{"data":{"tenant":"acme","n":3,"f":1.5,"ok":true,"none":null,"a/b":"slash"}}"#;

    #[test]
    fn equals_compares_strings_numbers_and_booleans_without_crossing_types() {
        assert!(holds("/data/tenant", Test::Equals(json!("acme")), BODY));
        assert!(!holds("/data/tenant", Test::Equals(json!("acm")), BODY));
        assert!(holds("/data/n", Test::Equals(json!(3)), BODY));
        assert!(holds("/data/n", Test::Equals(json!(3.0)), BODY));
        assert!(!holds("/data/n", Test::Equals(json!("3")), BODY));
        assert!(holds("/data/f", Test::Equals(json!(1.5)), BODY));
        // Exactly, also past 2^53, where two integers share one f64.
        let big = r#"{"n":9007199254740992.0,"m":9007199254740993,"z":-0.0}"#;
        assert!(!holds(
            "/n",
            Test::Equals(json!(9_007_199_254_740_993u64)),
            big
        ));
        assert!(holds(
            "/n",
            Test::Equals(json!(9_007_199_254_740_992u64)),
            big
        ));
        assert!(!holds(
            "/m",
            Test::Equals(json!(9_007_199_254_740_992.0)),
            big
        ));
        assert!(holds("/z", Test::Equals(json!(0)), big));
        assert!(holds("/data/ok", Test::Equals(json!(true)), BODY));
        assert!(!holds("/data/ok", Test::Equals(json!("true")), BODY));
        assert!(!holds("/data/missing", Test::Equals(json!("acme")), BODY));
        assert!(holds("/data/a~1b", Test::Equals(json!("slash")), BODY));
    }

    #[test]
    fn in_holds_for_any_listed_scalar() {
        let test = Test::In(vec![json!("globex"), json!("acme")]);
        assert!(holds("/data/tenant", test.clone(), BODY));
        assert!(!holds("/data/n", test.clone(), BODY));
        assert!(!holds("/data/missing", test, BODY));
    }

    #[test]
    fn exists_counts_null_as_present_and_false_asks_for_absence() {
        assert!(holds("/data/none", Test::Exists(true), BODY));
        assert!(!holds("/data/missing", Test::Exists(true), BODY));
        assert!(holds("/data/missing", Test::Exists(false), BODY));
        assert!(!holds("/data/tenant", Test::Exists(false), BODY));
        assert!(!holds("/data/tenant/deeper", Test::Exists(true), BODY));
    }

    #[test]
    fn prefix_holds_only_for_strings() {
        assert!(holds("/data/tenant", Test::Prefix("ac".into()), BODY));
        assert!(!holds("/data/tenant", Test::Prefix("me".into()), BODY));
        assert!(!holds("/data/n", Test::Prefix("3".into()), BODY));
    }

    #[test]
    fn a_body_that_is_not_json_fails_every_condition_even_absence() {
        for body in ["not json", "", "{\"data\":", "\u{feff}{}"] {
            assert!(!holds("/data/missing", Test::Exists(false), body));
            assert!(!holds("/data", Test::Exists(true), body));
        }
    }

    /// A lone surrogate in a key beside the pointer's (a user's metadata key written by
    /// `JSON.stringify`) made the whole object unreadable, so `/data/tenant` read as absent
    /// and a tenant's event went to an `exists = false` or catch-all route.
    #[test]
    fn a_key_holding_a_lone_surrogate_hides_no_key_beside_it() {
        for body in [
            r#"{"data":{"\ud83d":1,"tenant":"acme"}}"#,
            r#"{"data":{"tenant":"acme","\ude00":[1]}}"#,
        ] {
            assert!(
                holds("/data/tenant", Test::Equals(json!("acme")), body),
                "{body}"
            );
            assert!(!holds("/data/tenant", Test::Exists(false), body), "{body}");
        }
        assert!(holds(
            "/data/tenant",
            Test::Exists(false),
            r#"{"data":{"\ud83d":"acme"}}"#
        ));
        // A raw control character in a key is no JSON: the body fails every condition
        // (keys are read as bytes here only after the whole body was checked).
        assert!(!holds(
            "/data/tenant",
            Test::Exists(true),
            "{\"data\":{\"\u{0}\":1,\"tenant\":\"acme\"}}"
        ));
    }

    /// Bodies the event type stage reads (it skips what it does not walk to) but a
    /// `serde_json::Value` does not: read whole, they failed every condition, and a
    /// tenant's event fell through to the catch-all route.
    #[test]
    fn what_lies_beside_the_pointer_never_makes_the_body_unreadable() {
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        for beside in [r#""Thanks \ud83d""#, "1e400", deep.as_str()] {
            let body = format!(r#"{{"data":{{"tenant":"acme","note":{beside}}}}}"#);
            assert!(
                crate::event::type_at(
                    format!(r#"{{"type":"a","x":{beside}}}"#).as_bytes(),
                    &JsonPointer::parse("/type").unwrap()
                )
                .is_ok(),
                "the event type stage reads {beside}"
            );
            assert!(
                holds("/data/tenant", Test::Equals(json!("acme")), &body),
                "{beside}"
            );
            assert!(holds("/data/tenant", Test::Exists(true), &body), "{beside}");
            assert!(
                !holds("/data/tenant", Test::Exists(false), &body),
                "{beside}"
            );
            // Such a value at the pointer itself exists and equals nothing.
            assert!(holds("/data/note", Test::Exists(true), &body), "{beside}");
            assert!(!holds("/data/note", Test::Exists(false), &body), "{beside}");
            assert!(
                !holds("/data/note", Test::Prefix(String::new()), &body),
                "{beside}"
            );
            assert!(
                !holds("/data/note", Test::Equals(json!(1e300)), &body),
                "{beside}"
            );
        }
        // Arrays on the path, and indexes past their end.
        let body = r#"{"a":[1e400,{"t":"x"}]}"#;
        assert!(holds("/a/1/t", Test::Equals(json!("x")), body));
        assert!(!holds("/a/2", Test::Exists(true), body));
        assert!(!holds("/a/01", Test::Exists(true), body));
    }

    #[test]
    fn a_repeated_key_counts_its_last_value() {
        let body = r#"{"t":"first","t":"last"}"#;
        assert!(holds("/t", Test::Equals(json!("last")), body));
        assert!(!holds("/t", Test::Equals(json!("first")), body));
    }

    #[test]
    fn conditions_read_as_written_in_check() {
        let c = |p: &str, t| Condition::new(JsonPointer::parse(p).unwrap(), t).to_string();
        assert_eq!(c("/a", Test::Equals(json!("x"))), r#"/a = "x""#);
        assert_eq!(
            c("/a", Test::In(vec![json!(1), json!(true)])),
            "/a in [1, true]"
        );
        assert_eq!(c("/a", Test::Exists(true)), "/a exists");
        assert_eq!(c("/a", Test::Exists(false)), "/a absent");
        assert_eq!(
            c("/a", Test::Prefix("org_".into())),
            r#"/a starts with "org_""#
        );
    }
}
