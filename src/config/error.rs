//! `ConfigError`: why a config cannot be used, in which file, at which key and line.
//!
//! Two kinds of mistakes reach it. toml finds the ones inside one value (a bad
//! duration, an unknown key of a section, an unset `${VAR}`) and renders them with the
//! quoted line and a caret; `ConfigError` keeps that rendering for `Display` and its
//! parts (line, column, message) for everything else. The checks that run after parsing
//! (`build`, `source`) name a key path instead (`sources[1].path`); `locate` finds that
//! key in the file, so the error carries its line too.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

/// A config that cannot be used. `Display` starts with the file and names the key:
/// toml's parse errors with their quoted line and caret, the others followed by the
/// line and column of the key they blame.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, or `<embedded default config>`.
    pub origin: String,
    /// The key path the error blames (`sources[1].path`), when it blames one.
    pub key: Option<String>,
    /// Where in the file the error points, 1-based, when known.
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// What is wrong, naming the key; for a toml parse error, toml's message alone.
    pub message: String,
    /// toml's own rendering of a parse error (position, the quoted line with a caret,
    /// the message): what `Display` shows. The quoted line may hold a secret.
    report: Option<String>,
}

/// A check that failed after parsing: the key path it blames and a message that
/// names that key itself (`sources[1].path "/x" is already used by sources[0]`).
#[derive(Debug)]
pub struct Invalid {
    pub key: Option<String>,
    pub message: String,
}

/// The longest duration any key takes: far beyond every sensible value, and far enough
/// from the clock's end that adding it to the time now cannot overflow (humantime reads
/// `"300000000000y"`, and a connection timer set that far panicked every connection).
const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `value` if it is more than zero and at most 100 years, else an error naming `key`.
pub(super) fn positive(key: &str, value: Duration) -> Result<Duration, Invalid> {
    if value.is_zero() {
        return Err(Invalid::at(key, format!("{key} must be greater than zero")));
    }
    if value > LONGEST {
        return Err(Invalid::at(key, format!("{key} must be at most 100 years")));
    }
    Ok(value)
}

/// `per_second` if it is a finite rate above 0 and at most `most`, slow enough only that
/// its `burst` takes at most 100 years to earn (the longest any duration key takes: GCRA
/// adds `burst` intervals to the time now, and 1e-20 per second overflowed it).
pub(super) fn rate(key: &str, per_second: f64, burst: u32, most: f64) -> Result<f64, Invalid> {
    let earned = f64::from(burst.max(1)) / per_second;
    if !(per_second.is_finite() && per_second > 0.0 && per_second <= most)
        || earned > LONGEST.as_secs_f64()
    {
        return Err(Invalid::at(
            key,
            format!(
                "{key} = {per_second} must be a number above 0, at most {most}, and high \
                 enough that the burst ({burst}) takes at most 100 years"
            ),
        ));
    }
    Ok(per_second)
}

impl Invalid {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// A mistake of the file as a whole (no `[[sources]]` at all).
    pub fn whole(message: impl Into<String>) -> Invalid {
        Invalid {
            key: None,
            message: message.into(),
        }
    }

    /// The same mistake one level down: `sources[1]` + `path ...` = `sources[1].path ...`.
    pub fn under(self, parent: &str) -> Invalid {
        Invalid {
            key: Some(match self.key {
                Some(key) => format!("{parent}.{key}"),
                None => parent.to_owned(),
            }),
            message: format!("{parent}.{}", self.message),
        }
    }
}

impl ConfigError {
    /// An error about the file that points at no key (it cannot be read, say).
    pub fn new(origin: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.into(),
            key: None,
            line: None,
            column: None,
            message: message.into(),
            report: None,
        }
    }

    /// toml's error for `text`; `also` is appended on a line of its own (the other
    /// unset environment variables).
    pub(super) fn parse(origin: &str, text: &str, e: &toml::de::Error, also: &str) -> Self {
        let position = e.span().map(|span| position(text, span.start));
        ConfigError {
            origin: origin.to_owned(),
            key: None,
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message: format!("{}{also}", e.message().trim_end()),
            report: Some(format!("{}{also}", e.to_string().trim_end())),
        }
    }

    /// A failed check, located in `text` by its key path.
    pub(super) fn invalid(origin: &str, text: &str, invalid: Invalid) -> Self {
        let position = invalid
            .key
            .as_deref()
            .and_then(|key| locate(text, key))
            .map(|span| position(text, span.start));
        ConfigError {
            origin: origin.to_owned(),
            key: invalid.key,
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message: invalid.message,
            report: None,
        }
    }

    /// The error without toml's excerpt of the file: for logs and the admin API, where
    /// a quoted line could hold a secret someone wrote into the file.
    pub fn summary(&self) -> String {
        let lines: Vec<&str> = self
            .message
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        let mut message = lines.join("; ");
        if self.report.is_some() {
            message = without_quoted_values(&message);
        }
        match (&self.report, self.line, self.column) {
            (Some(_), Some(line), Some(column)) => format!(
                "{}: TOML parse error at line {line}, column {column}; {message}",
                self.origin
            ),
            _ => format!("{}: {message}{}", self.origin, self.at()),
        }
    }

    /// ` (line 3, column 1)` after a message that is not toml's, or nothing.
    fn at(&self) -> String {
        match (&self.report, self.line, self.column) {
            (None, Some(line), Some(column)) => format!(" (line {line}, column {column})"),
            _ => String::new(),
        }
    }
}

/// toml's message with every double-quoted value replaced by `"…"`: serde quotes the
/// value it could not take (`invalid type: string "whsec_…", expected a sequence`), which
/// is a secret when someone wrote one into the file with the wrong shape. Key names are
/// quoted with backticks and stay.
fn without_quoted_values(message: &str) -> String {
    without_rejected_value(&without_quoted(message, '"'))
}

/// `message` with the value serde names after `invalid type: ` or `invalid value: `
/// left out when it is not a string: a token or secret written as a number
/// (`invalid type: integer `987654321987`, expected a string`) is in backticks.
fn without_rejected_value(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|lead| rest.find(lead).map(|i| i + lead.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let value = rest.find(", expected").unwrap_or(rest.len());
        match (rest[..value].find('`'), rest[..value].rfind('`')) {
            (Some(open), Some(close)) if close > open => {
                out.push_str(&rest[..=open]);
                out.push('…');
                out.push_str(&rest[close..value]);
            }
            _ => out.push_str(&rest[..value]),
        }
        rest = &rest[value..];
    }
    out.push_str(rest);
    out
}

/// One line of the file as toml's excerpt shows it, its value left out: only the key
/// and its `=`. Quotes alone did not do: a value written without them
/// (`secrets = [whsec_abc]`, `token = s3cret`), or a line inside a multi-line string or
/// array, may be a secret too. A table header stays as written.
fn without_value(line: &str) -> String {
    let trimmed = line.trim();
    let header = trimmed.starts_with('[')
        && trimmed.ends_with(']')
        && !trimmed.contains(['"', '\'', '=', ',']);
    if header || trimmed.is_empty() {
        return line.to_owned();
    }
    // A key as hookgate's are written, `name = `: lowercase, digits, `_` and dots,
    // spaced from its `=`. A line of a multi-line array or string looks like that only
    // by chance (a base64 secret has capitals, its padding `==` no space after it).
    let indent = &line[..line.len() - line.trim_start().len()];
    match line.trim_start().split_once(" = ") {
        Some((key, _))
            if !key.is_empty()
                && key
                    .trim_end()
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.')) =>
        {
            format!("{indent}{key} = …")
        }
        _ => format!("{indent}…"),
    }
}

/// toml's report (an excerpt of the file around the error, then its message) with the
/// quoted values of both left out: `check` and a `serve` that cannot start print it,
/// and a secret written into the file with the wrong shape sits on the excerpt's line
/// (in either kind of TOML quotes) and in the message.
fn without_quoted_report(report: &str) -> String {
    let lines: Vec<String> = report
        .lines()
        .map(|line| {
            let excerpt = line
                .trim_start()
                .split_once(" |")
                .is_some_and(|(number, _)| number.bytes().all(|b| b.is_ascii_digit()));
            match line.split_once('|') {
                Some((gutter, text)) if excerpt => format!("{gutter}|{}", without_value(text)),
                _ => without_quoted_values(line),
            }
        })
        .collect();
    lines.join("\n")
}

/// `text` with every value between two `quote`s replaced by `…`. What is in backticks
/// (key names, the token toml expected) is kept as written.
fn without_quoted(message: &str, quote: char) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find([quote, '`']) {
        if rest[open..].starts_with('`') {
            let end = rest[open + 1..]
                .find('`')
                .map_or(rest.len(), |i| open + 2 + i);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        out.push_str(&rest[..=open]);
        let mut escaped = false;
        let close = rest[open + 1..].char_indices().find_map(|(i, c)| {
            let closes = c == quote && !escaped;
            escaped = quote == '"' && c == '\\' && !escaped;
            closes.then_some(open + 1 + i)
        });
        let Some(close) = close else {
            out.push('…');
            return out;
        };
        out.push('…');
        out.push(quote);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.report {
            Some(report) => write!(f, "{}: {}", self.origin, without_quoted_report(report)),
            None => write!(f, "{}: {}{}", self.origin, self.message, self.at()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of byte `offset` in `text`, counted as toml counts them in
/// its own errors (columns in characters), so both kinds of error agree.
fn position(text: &str, offset: usize) -> (u32, u32) {
    let input = text.as_bytes();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let Some(last) = input.len().checked_sub(1) else {
        return (1, count(offset + 1));
    };
    let at = offset.min(last);
    let past_end = offset - at;
    let line_start = input[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = input[..line_start].iter().filter(|b| **b == b'\n').count();
    let column = std::str::from_utf8(&input[line_start..=at])
        .map(|s| s.chars().count() - 1)
        .unwrap_or(at - line_start);
    (count(line + 1), count(column + past_end + 1))
}

/// Where the key path `key` (`sources[1].routes[0].upstream`, `queue.retry_on[1]`) is
/// written in `text`: the deepest part of it the file holds, as a key or an array
/// element (a `[[sources]]` header). So a key left at its default is located at its
/// table. `None` when the file holds none of the path, or does not parse.
pub fn locate(text: &str, key: &str) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut value: &DeValue<'_> = &DeValue::Table(root.into_inner());
    let mut found = None;
    // `locate` is only asked about paths hookgate writes: plain names and `[index]`.
    for step in steps(key) {
        let next = match (step, value) {
            (Step::Key(name), DeValue::Table(table)) => table
                .get_key_value(name)
                .map(|(key, value)| (key.span(), value)),
            (Step::Index(i), DeValue::Array(array)) => array.get(i).map(|item| (item.span(), item)),
            _ => None,
        };
        let Some((span, next)) = next else { break };
        found = Some(span);
        value = next.get_ref();
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

/// `a.b[2].c` as `a`, `b`, `[2]`, `c`.
fn steps(key: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part
            .split_once('[')
            .map_or((part, ""), |(name, _)| (name, &part[name.len()..]));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(index) = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(n, tail)| Some((n.parse().ok()?, tail)))
        {
            out.push(Step::Index(index.0));
            rest = index.1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[queue]\nretry_on = [\"5xx\",\n  \"sometimes\"]\n\n\
                        [[sources]]\nname = \"a\"\npath = \"/a\"\n\n\
                        [[sources]]\nname = \"b\"\n  path = \"/a\"\n\
                        [[sources.routes]]\nupstream = \"x\"\n";

    fn line_and_column(key: &str) -> Option<(u32, u32)> {
        locate(TEXT, key).map(|span| position(TEXT, span.start))
    }

    #[test]
    fn key_paths_split_into_keys_and_indices() {
        assert_eq!(
            steps("sources[1].routes[0].upstream"),
            [
                Step::Key("sources"),
                Step::Index(1),
                Step::Key("routes"),
                Step::Index(0),
                Step::Key("upstream")
            ]
        );
        assert_eq!(steps("queue.retry_on[1]").len(), 3);
    }

    #[test]
    fn a_key_path_is_found_at_its_key() {
        assert_eq!(line_and_column("sources[1].path"), Some((11, 3)));
        assert_eq!(line_and_column("sources[0].name"), Some((6, 1)));
        assert_eq!(
            line_and_column("sources[1].routes[0].upstream"),
            Some((13, 1))
        );
    }

    #[test]
    fn an_array_element_is_found_at_the_element() {
        assert_eq!(line_and_column("queue.retry_on[1]"), Some((3, 3)));
        assert_eq!(line_and_column("sources[1]"), Some((9, 1)));
    }

    #[test]
    fn a_key_the_file_lacks_is_found_at_its_nearest_written_parent() {
        assert_eq!(line_and_column("sources[0].secrets"), Some((5, 1)));
        assert_eq!(line_and_column("queue.workers"), Some((1, 2)));
        assert_eq!(line_and_column("store.redis_url"), None);
        assert_eq!(locate("not = [toml", "not"), None);
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        assert_eq!(position("ab\ncd", 0), (1, 1));
        assert_eq!(position("ab\ncd", 4), (2, 2));
        assert_eq!(position("é = 1\nx", 4), (1, 4));
    }

    #[test]
    fn a_failed_check_shows_its_line_after_the_message_and_in_the_summary() {
        let e = ConfigError::invalid(
            "t.toml",
            TEXT,
            Invalid::at("sources[1].path", "sources[1].path \"/a\" is already used"),
        );
        assert_eq!(
            e.to_string(),
            "t.toml: sources[1].path \"/a\" is already used (line 11, column 3)"
        );
        assert_eq!(e.summary(), e.to_string());
        assert_eq!((e.line, e.column), (Some(11), Some(3)));
        assert_eq!(e.key.as_deref(), Some("sources[1].path"));
    }

    #[test]
    fn quoted_values_are_left_out_and_key_names_kept() {
        assert_eq!(
            without_quoted_values(r#"invalid type: string "whsec_\"x", expected a sequence"#),
            r#"invalid type: string "…", expected a sequence"#
        );
        assert_eq!(
            without_quoted_values("unknown field `secret`, expected `secrets`"),
            "unknown field `secret`, expected `secrets`"
        );
        assert_eq!(without_quoted_values(r#"a "b" c "d"#), r#"a "…" c "…"#);
        assert_eq!(
            without_quoted_values(r#"invalid basic string, expected `"`"#),
            r#"invalid basic string, expected `"`"#
        );
        assert_eq!(
            without_quoted_values("invalid type: integer `987654321987`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            without_quoted_values("invalid value: float `1.5`, expected u32 in `limits`"),
            "invalid value: float `…`, expected u32 in `limits`"
        );
    }

    /// `check` and a `serve` that cannot start print the whole report: its excerpt of
    /// the file and its message once showed a secret given the wrong shape.
    #[test]
    fn the_printed_report_leaves_out_the_values_on_its_excerpt_too() {
        for text in [
            "[admin]\ntoken = \"x\"\n[[sources]]\nsecrets = \"whsec_abc\"\n",
            "[admin]\ntoken = \"x\"\n[[sources]]\nsecrets = 'whsec_abc'\n",
            // Without quotes (not a TOML value), and inside a multi-line array.
            "[admin]\ntoken = \"x\"\n[[sources]]\nsecrets = [whsec_abc]\n",
            "[admin]\ntoken = \"x\"\n[[sources]]\nsecrets = [\n  \"a\",\n  whsec_abc\n]\n",
            // Its padding looked like a key's `=`.
            "[admin]\ntoken = \"x\"\n[[sources]]\nsecrets = [\n  \"a\",\n  whsec_abc==\n]\n",
            // A number where a string belongs: serde names it in backticks.
            "[admin]\ntoken = \"x\"\n[[sources]]\nsecrets = [123456789]\n",
        ] {
            #[derive(Debug, serde::Deserialize)]
            #[allow(dead_code)]
            struct File {
                admin: toml::Table,
                sources: Vec<Source>,
            }
            #[derive(Debug, serde::Deserialize)]
            #[allow(dead_code)]
            struct Source {
                secrets: Vec<String>,
            }
            let e = toml::from_str::<File>(text).unwrap_err();
            let printed = ConfigError::parse("t.toml", text, &e, "").to_string();
            let summary = ConfigError::parse("t.toml", text, &e, "").summary();
            for shown in [&printed, &summary] {
                assert!(!shown.contains("whsec_abc"), "{shown}");
                assert!(!shown.contains("123456789"), "{shown}");
            }
            if text.contains("[\n") {
                assert!(printed.contains("line 6"), "{printed}");
            } else {
                assert!(printed.contains("secrets = "), "{printed}");
                assert!(printed.contains("line 4"), "{printed}");
            }
        }
    }

    #[test]
    fn an_error_without_a_key_has_no_position() {
        let e = ConfigError::new("t.toml", "cannot read the file: gone");
        assert_eq!(e.to_string(), "t.toml: cannot read the file: gone");
        assert_eq!(e.line, None);
    }
}
