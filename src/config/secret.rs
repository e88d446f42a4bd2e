//! `Secret`: a value from the config file that must never be printed.
//!
//! `${NAME}` inside the string is read from the environment while the file is being
//! deserialized, so a missing variable is reported by toml with its line and caret;
//! `unset_variables` then names every other one that is missing too.
//! Interpolating the raw file text instead would lose the spans and let an environment
//! value inject TOML. The value is zeroed when the `Secret` is dropped; copies taken
//! through `expose` are the caller's to keep short-lived.

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Key material or a token. `Debug` shows `***`; there is no `Display`.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PartialEq for Secret {
    /// Compares in time independent of where the values differ (tokens are compared).
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Secret {
    /// The expanded value, for the code that derives keys from it and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals this secret, compared in constant time (for tokens):
    /// their SHA-256 digests are, as values of different lengths ended the comparison at
    /// once, which told a guesser the token's length.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        let (expected, given) = (Sha256::digest(self.0.as_bytes()), Sha256::digest(candidate));
        expected.as_slice().ct_eq(given.as_slice()).into()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value.into_boxed_str())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***") // never print key material, not even in debug logs
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let collecting = UNSET.with_borrow(Option::is_some);
        let lookup = |name: &str| match std::env::var(name) {
            Ok(value) => Some(value),
            // While collecting, an unset variable is noted and the parse goes on.
            Err(_) if collecting => {
                UNSET.with_borrow_mut(|unset| unset.as_mut().map(|u| u.push(name.to_owned())));
                Some(String::new())
            }
            Err(_) => None,
        };
        expand_env(&raw, lookup)
            .map(Secret::from)
            .map_err(D::Error::custom)
    }
}

thread_local! {
    /// `Some` while `unset_variables` runs a parse on this thread.
    static UNSET: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Every environment variable that `${NAME}` in a secret of the parse names but that is
/// not set, sorted. A normal parse stops at the first one (with toml's line and caret);
/// this one goes on, so that a user learns all of them at once.
pub fn unset_variables<T>(parse: impl FnOnce() -> T) -> Vec<String> {
    UNSET.with_borrow_mut(|unset| *unset = Some(Vec::new()));
    let _ = parse();
    let mut names = UNSET.with_borrow_mut(Option::take).unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

/// Replaces every `${NAME}` with the variable's value; `$$` is a literal `$`.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {:?}", redact_hint(raw)))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(is_name_char) {
                // What is between the braces may be a secret's own text: only a shell
                // form's variable name is shown (unquoted: a config error hides quoted
                // values), which the user needs to fix it.
                let head = &name[..name.find(|c| !is_name_char(c)).unwrap_or(name.len())];
                let form = &name[head.len()..];
                let shell = ["-", "=", "?", "+"]
                    .iter()
                    .any(|op| form.strip_prefix(':').unwrap_or(form).starts_with(op));
                return Err(match (head.is_empty(), shell) {
                    (false, true) => format!(
                        "${{{head}...}}: ${{NAME:-default}} and other shell forms are not \
                         supported; write ${{{head}}}"
                    ),
                    _ => "an invalid environment variable name in ${...}: letters, digits \
                          and _ only (or $$ for a literal $)"
                        .to_owned(),
                });
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            // Shell and systemd spelling: kept as text, `$HOOKGATE_ADMIN_TOKEN` became
            // the token (or a secret) itself, one anyone reading the file knows.
            let name_len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            let name = &after[..name_len];
            // Asked of the environment, not `lookup`: while every unset variable of a
            // file is collected, `lookup` notes this name as one, echoing the text.
            return Err(match std::env::var_os(name) {
                Some(_) => format!(
                    "${name} is not expanded: write ${{{name}}} for the environment variable, \
                     or $$ for a literal $"
                ),
                // Not a variable here: perhaps a secret's own text; not echoed.
                None => "a $ followed by a name is not expanded: write ${NAME} for an \
                         environment variable, or $$ for a literal $"
                    .to_owned(),
            });
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Enough of a malformed value to find it in the file without echoing a secret.
fn redact_hint(raw: &str) -> String {
    let visible: String = raw.chars().take(4).collect();
    format!("{visible}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_owned())
    }

    #[test]
    fn variables_are_replaced_anywhere_in_the_string() {
        assert_eq!(expand_env("a${SET}b", env).unwrap(), "avalueb");
        assert_eq!(expand_env("${SET}", env).unwrap(), "value");
        assert_eq!(expand_env("plain", env).unwrap(), "plain");
    }

    #[test]
    fn an_unset_variable_is_named_in_the_error() {
        assert_eq!(
            expand_env("${MISSING}", env).unwrap_err(),
            "environment variable MISSING is not set"
        );
    }

    #[test]
    fn double_dollar_is_a_literal_dollar_and_a_lone_dollar_stays() {
        assert_eq!(expand_env("a$${SET}", env).unwrap(), "a${SET}");
        assert_eq!(expand_env("cost $5", env).unwrap(), "cost $5");
        assert_eq!(expand_env("a$", env).unwrap(), "a$");
    }

    /// The message survives a config error's hiding of quoted values: it names what
    /// to fix.
    #[test]
    fn an_invalid_name_is_named_unquoted_and_shell_defaults_are_explained() {
        let e = expand_env("${X:-d}", env).unwrap_err();
        assert!(
            e.contains("write ${X}") && e.contains("not supported"),
            "{e}"
        );
        assert!(!e.contains("d}"), "the default may be a secret: {e}");
        // Anything else between the braces may be a secret's own text: not shown.
        let e = expand_env("Xy${9b!Q-z}Tail", env).unwrap_err();
        assert!(
            e.contains("letters, digits and _ only") && !e.contains("9b"),
            "{e}"
        );
    }

    /// `$NAME`, as a shell or systemd writes it, was kept as text: the admin token or a
    /// signing secret became the variable's name, which anyone reading the file knows.
    #[test]
    fn a_dollar_before_a_name_is_an_error_not_text() {
        // Named when such a variable is set (the environment, not `lookup`, which
        // notes unset names while a file's are collected).
        let e = expand_env("$PATH", env).unwrap_err();
        assert!(e.contains("write ${PATH}"), "{e}");
        let e = expand_env("pre$ecret", env).unwrap_err();
        assert!(e.contains("write ${NAME}") && !e.contains("ecret"), "{e}");
        let collected = std::cell::RefCell::new(Vec::new());
        let noting = |name: &str| {
            collected.borrow_mut().push(name.to_owned());
            Some(String::new())
        };
        assert!(expand_env("pa$sw0rdTail", noting).is_err());
        assert!(collected.borrow().is_empty(), "{:?}", collected.borrow());
        assert_eq!(expand_env("pre$$ecret", env).unwrap(), "pre$ecret");
    }

    #[test]
    fn unterminated_and_invalid_names_are_errors() {
        assert!(
            expand_env("${SET", env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            expand_env("${A-B}", env)
                .unwrap_err()
                .contains("not supported")
        );
        assert!(expand_env("${A B}", env).unwrap_err().contains("invalid"));
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::from("whsec_abc".to_owned());
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", vec![secret]), "[***]");
    }

    #[test]
    fn tokens_match_only_in_full() {
        let token = Secret::from("s3cret-token".to_owned());
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-toke"));
        assert!(!token.matches(b"s3cret-tokeN"));
        assert!(!token.matches(b""));
    }
}
