//! A route's `match` conditions: tests on JSON pointers into the verified body.
//!
//! Conditions read only the body the signature covers, never headers (an unsigned
//! header would let anyone steer a delivery). The body is parsed at most once per
//! request, and only when a route with conditions has matched the event type; a body
//! that is not JSON (or not UTF-8) makes every condition false, `exists = false`
//! included, so a route with conditions never takes a payload it cannot read.
//! Where a key repeats, the last one counts, as in `serde_json::Value` (and `event`).

use std::cell::OnceCell;
use std::fmt;

use serde_json::Value;

use crate::event::JsonPointer;

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
        let Some(document) = payload.document() else {
            return false;
        };
        let found = self.pointer.resolve(document);
        match (&self.test, found) {
            (Test::Exists(wanted), found) => found.is_some() == *wanted,
            (_, None) => false,
            (Test::Equals(expected), Some(value)) => same_scalar(expected, value),
            (Test::In(options), Some(value)) => options.iter().any(|o| same_scalar(o, value)),
            (Test::Prefix(prefix), Some(value)) => value
                .as_str()
                .is_some_and(|s| s.starts_with(prefix.as_str())),
        }
    }
}

/// Equality of two JSON scalars; numbers by value.
fn same_scalar(expected: &Value, value: &Value) -> bool {
    match (expected, value) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => match (a.as_u64(), b.as_u64()) {
                (Some(a), Some(b)) => a == b,
                _ => a.as_f64().is_some_and(|a| b.as_f64() == Some(a)),
            },
        },
        (Value::Number(_), _) | (_, Value::Number(_)) => false,
        (a, b) => a == b,
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

/// The verified body, parsed on first use: routes without conditions never pay for it.
pub struct Payload<'b> {
    body: &'b [u8],
    document: OnceCell<Option<Value>>,
}

impl<'b> Payload<'b> {
    pub fn new(body: &'b [u8]) -> Self {
        Payload {
            body,
            document: OnceCell::new(),
        }
    }

    fn document(&self) -> Option<&Value> {
        self.document
            .get_or_init(|| serde_json::from_slice(self.body).ok())
            .as_ref()
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
