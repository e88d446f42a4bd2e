//! `hookgate verify`: why a captured request does or does not verify, told step by step.
//!
//! A signature mismatch is the most common webhook failure and the least informative
//! one: 400 `invalid_signature` says nothing about which of secret, body or clock is
//! wrong. This module reads a captured raw HTTP request, runs the source's real verifier
//! (the same code as the request path, so the verdict cannot disagree with the gateway)
//! and its `explain`, then names the most likely mistake by trying what usually goes
//! wrong: a body changed after signing (a trailing newline, re-serialised JSON, line
//! endings), a capture judged long after it was sent, a secret pasted wrongly. It prints
//! no key material; it does print the captured headers and the start of the body.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Settings, Source};
use crate::reject::Reject;
use crate::verify::{VerifyError, unix_seconds};

/// A request as captured: headers and the exact body bytes.
#[derive(Debug, Default)]
pub struct Capture {
    /// From the request line, when there was one: it selects the source.
    pub path: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// What was odd about the capture itself.
    pub notes: Vec<String>,
}

/// Parses a raw HTTP/1.1 request: request line, headers, an empty line, the body.
/// Lines may end in CRLF or LF. A `Content-Length` shorter than what follows wins
/// (and the extra bytes are noted); a chunked body is decoded.
pub fn parse_request(raw: &[u8]) -> Result<Capture, String> {
    let (head, body) = split_head(raw).ok_or(
        "no empty line after the headers: is this a raw HTTP request (request line, headers, \
         empty line, body)? For separate files use --headers and --body",
    )?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let path = match (parts.next(), parts.next(), parts.next()) {
        (Some(_method), Some(target), Some(version)) if version.starts_with("HTTP/") => {
            Some(target.split('?').next().unwrap_or(target).to_owned())
        }
        _ => {
            return Err(format!(
                "the first line {request_line:?} is not a request line (POST /path HTTP/1.1)"
            ));
        }
    };
    let mut capture = Capture {
        path,
        ..Capture::default()
    };
    read_header_lines(lines, &mut capture.headers)?;
    capture.body = body.to_vec();
    let chunked = capture
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        capture.body = dechunk(body).ok_or("the chunked body is malformed")?;
        capture
            .notes
            .push("the body was sent chunked; decoded".to_owned());
    } else if let Some(length) = capture
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let lf = without_cr_before_lf(&capture.body);
        match capture.body.len() {
            // The whole file turned to CRLF (saved on Windows, git's autocrlf): the body
            // is Content-Length long with its LF line endings back. Cut at Content-Length
            // instead, it was checked truncated and the hint blamed pretty-printing.
            // (Not when what lies past Content-Length is only line ends and spaces: a
            // file ending with a newline after a body that has CRLFs of its own.)
            n if n > length
                && lf.len() == length
                && !capture.body[length..].iter().all(u8::is_ascii_whitespace) =>
            {
                capture.notes.push(format!(
                    "the file's line endings are CRLF, but Content-Length counts the body \
                     with LF ones ({length} bytes): read with LF (a capture saved on Windows, \
                     or by git with autocrlf?)"
                ));
                capture.body = lf;
            }
            n if n > length => {
                capture.notes.push(format!(
                    "the file holds {} byte(s) after the {length} of Content-Length; ignored",
                    n - length
                ));
                capture.body.truncate(length);
            }
            n if n < length => capture.notes.push(format!(
                "the body has {n} bytes but Content-Length says {length}: the capture is truncated"
            )),
            _ => {}
        }
    }
    Ok(capture)
}

/// `body` with each CRLF turned into LF, byte for byte.
fn without_cr_before_lf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for (i, &b) in body.iter().enumerate() {
        if !(b == b'\r' && body.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// Headers from their own file (`Name: value` per line; a request line first is read
/// for its path) and the body from another, byte for byte.
pub fn parse_parts(headers: &[u8], body: Vec<u8>) -> Result<Capture, String> {
    let text = std::str::from_utf8(headers).map_err(|_| "the headers file is not UTF-8")?;
    let mut lines = text.lines().peekable();
    let mut capture = Capture::default();
    if let Some(first) = lines.peek()
        && first
            .split_whitespace()
            .nth(2)
            .is_some_and(|v| v.starts_with("HTTP/"))
    {
        capture.path = first.split_whitespace().nth(1).map(str::to_owned);
        lines.next();
    }
    read_header_lines(lines, &mut capture.headers)?;
    capture.body = body;
    Ok(capture)
}

fn split_head(raw: &[u8]) -> Option<(String, &[u8])> {
    let (at, gap) = [(b"\r\n\r\n".as_slice(), 4), (b"\n\n".as_slice(), 2)]
        .iter()
        .filter_map(|(sep, len)| find(raw, sep).map(|at| (at, *len)))
        .min()?;
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    Some((head, &raw[at + gap..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_header_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    headers: &mut HeaderMap,
) -> Result<(), String> {
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no ':'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        headers.append(name, value);
    }
    Ok(())
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = find(raw, b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// The verdict and the account of it.
pub struct Diagnosis {
    pub verified: bool,
    pub text: String,
}

/// Runs the chosen source's verifier on `capture` at `now` and explains the verdict.
pub fn diagnose(
    settings: &Settings,
    source: Option<&str>,
    capture: &Capture,
    now: SystemTime,
) -> Result<Diagnosis, String> {
    let source = pick_source(settings, source, capture.path.as_deref())?;
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "source: {} (scheme {}, POST {}; {})",
        source.name,
        source.scheme,
        source.path,
        source.verifier.describe()
    ));
    line(format!(
        "request: {} header(s), body {} bytes",
        capture.headers.len(),
        capture.body.len()
    ));
    for note in &capture.notes {
        line(format!("  note: {note}"));
    }
    let explanation = source
        .verifier
        .explain(&capture.headers, &capture.body, now);
    line("steps:".to_owned());
    for (i, step) in explanation.steps.iter().enumerate() {
        line(format!("  {}. {step}", i + 1));
    }
    let verdict = source.verifier.verify(&capture.headers, &capture.body, now);
    let mut hints = explanation.hints.clone();
    // A body over `limits.max_body_bytes` is refused before it is read, as the gateway
    // does (413): `verify` said VERIFIED for it.
    let refused_first = crate::pipeline::check_headers(&capture.headers, source)
        .err()
        .or_else(|| {
            (capture.body.len() > settings.limits.max_body_bytes).then_some(Reject::TooLarge)
        });
    // The gateway refuses these before it reads the body, whatever the signature.
    let verified = if let Some(reject) = &refused_first {
        line(format!(
            "verdict: REFUSED before the signature is checked: {} {{\"error\":\"{}\"}}: {reject}",
            reject.status().as_u16(),
            reject.reason()
        ));
        false
    } else {
        match &verdict {
            Ok(delivery) => {
                let (lines, refused) = after_verification(source, capture);
                match &refused {
                    None => line(format!(
                        "verdict: VERIFIED with secrets[{}]",
                        delivery.secret_index
                    )),
                    Some(reject) => line(format!(
                        "verdict: signature VERIFIED with secrets[{}], but REFUSED: {} {{\"error\":\"{}\"}}",
                        delivery.secret_index,
                        reject.status().as_u16(),
                        reject.reason()
                    )),
                }
                for text in lines {
                    line(format!("  {text}"));
                }
                refused.is_none()
            }
            Err(e) => {
                let reject = Reject::from(e.clone());
                line(format!(
                    "verdict: REFUSED: {} {{\"error\":\"{}\"}}: {e}",
                    reject.status().as_u16(),
                    reject.reason()
                ));
                hints.extend(likely_causes(source, capture, e, explanation.matched, now));
                false
            }
        }
    };
    let warnings: Vec<&String> = settings
        .warnings
        .iter()
        .filter(|w| w.contains(&format!("sources[{}].", index_of(settings, source))))
        .collect();
    if !hints.is_empty() || !warnings.is_empty() {
        line(if verified {
            "notes:".to_owned()
        } else {
            "most likely:".to_owned()
        });
        for hint in hints {
            line(format!("  - {hint}"));
        }
        for warning in warnings {
            line(format!("  - config: {warning}"));
        }
    }
    Ok(Diagnosis {
        verified,
        text: out,
    })
}

fn index_of(settings: &Settings, source: &Source) -> usize {
    settings
        .sources
        .iter()
        .position(|s| s.name == source.name)
        .unwrap_or_default()
}

fn pick_source<'s>(
    settings: &'s Settings,
    name: Option<&str>,
    path: Option<&str>,
) -> Result<&'s Source, String> {
    let names = || {
        settings
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = name {
        return settings
            .sources
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("--source {name:?} is not configured; sources: {}", names()));
    }
    if let Some(source) = path.and_then(|p| settings.sources.iter().find(|s| s.path == p)) {
        return Ok(source);
    }
    match settings.sources.as_slice() {
        [only] => Ok(only),
        _ => Err(format!(
            "several sources are configured and the request names none of their paths: \
             pass --source (one of {})",
            names()
        )),
    }
}

/// What the gateway would do next with a verified request, and the refusal if the
/// dedupe key or the event type cannot be read.
fn after_verification(source: &Source, capture: &Capture) -> (Vec<String>, Option<Reject>) {
    let mut out = Vec::new();
    let mut refused = None;
    match source
        .dedupe_key
        .dedupe_key(&capture.headers, &capture.body)
    {
        Ok(key) => out.push(format!("dedupe key ({}): {key}", source.dedupe_key)),
        Err(e) => {
            out.push(format!("dedupe key ({}): {e}", source.dedupe_key));
            refused = Some(Reject::from(e));
        }
    }
    match source
        .event_type
        .event_type(&capture.headers, &capture.body)
    {
        Ok(event_type) => {
            let route = source
                .routes
                .first_match(&event_type, &capture.body)
                .map(|(_, route)| {
                    let to: Vec<String> = route
                        .upstreams()
                        .iter()
                        .map(|u| u.uri.to_string())
                        .collect();
                    format!("route {} -> {}", route.name(), to.join(", "))
                })
                .unwrap_or_else(|| "no route matches: 202, not forwarded".to_owned());
            out.push(format!(
                "event type ({}): {event_type} -> {route}",
                source.event_type
            ));
        }
        Err(e) => {
            out.push(format!("event type ({}): {e}", source.event_type));
            refused.get_or_insert(Reject::from(e));
        }
    }
    (out, refused)
}

/// The usual suspects, tried in turn: time, then the body, then the secret.
fn likely_causes(
    source: &Source,
    capture: &Capture,
    error: &VerifyError,
    matched: Option<usize>,
    now: SystemTime,
) -> Vec<String> {
    let mut hints = Vec::new();
    match (error, matched) {
        (VerifyError::TimestampTooOld { age }, Some(i))
        | (VerifyError::TimestampTooNew { ahead: age }, Some(i)) => {
            let sent = unix_seconds(now)
                - if matches!(error, VerifyError::TimestampTooOld { .. }) {
                    age.as_secs() as i64
                } else {
                    -(age.as_secs() as i64)
                };
            hints.push(format!(
                "the signature is right (secrets[{i}]); only the time is off by {}",
                humantime::format_duration(*age)
            ));
            if *age < Duration::from_secs(3600) {
                hints.push(
                    "clock skew: the sender's and this machine's clocks disagree; check NTP on the gateway"
                        .to_owned(),
                );
            } else {
                hints.push(format!(
                    "a capture checked (or replayed) long after it was sent: judge it at its own time with --at {sent}"
                ));
            }
        }
        (VerifyError::InvalidSignature, None) => {
            if let Some(fix) = body_variant_that_verifies(source, capture, now) {
                hints.push(format!(
                    "the body differs from what was signed: it verifies after {fix}. hookgate verifies the \
                     exact bytes received, so whatever changed the body before this capture must not"
                ));
                return hints;
            }
            if looks_reformatted(&capture.body) {
                hints.push(
                    "the body is pretty-printed JSON: if it was parsed and re-serialised after the sender \
                     signed it (a framework's JSON middleware, a logging proxy), the bytes no longer match; \
                     capture the raw bytes"
                        .to_owned(),
                );
            }
            hints.push(
                "no configured secret signs this content: either the secret is wrong (another endpoint's, \
                 the test-mode one instead of live, an old one: copy it again from the sender's dashboard), \
                 or the body or a signed header changed after signing (compare them byte for byte with \
                 what the sender sent)"
                    .to_owned(),
            );
        }
        (VerifyError::MissingHeader(name), _) => hints.push(format!(
            "the request has no {name}: is it really from this sender, or did a proxy drop the header? \
             (scheme {})",
            source.scheme
        )),
        _ => {}
    }
    hints
}

/// The changes a body commonly suffers between sender and capture, undone in turn.
fn body_variant_that_verifies(
    source: &Source,
    capture: &Capture,
    now: SystemTime,
) -> Option<String> {
    let body = &capture.body;
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    for suffix in [&b"\r\n"[..], b"\n"] {
        if let Some(trimmed) = body.strip_suffix(suffix) {
            variants.push(("removing the trailing newline", trimmed.to_vec()));
        }
    }
    if find(body, b"\r\n").is_some() {
        variants.push((
            "turning CRLF line endings back into LF",
            without_cr_before_lf(body),
        ));
    } else if body.contains(&b'\n') {
        variants.push((
            "turning LF line endings into CRLF",
            String::from_utf8_lossy(body)
                .replace('\n', "\r\n")
                .into_bytes(),
        ));
    }
    if let Some(compact) = minify_json(body)
        && compact != *body
    {
        variants.push((
            "removing the JSON whitespace (it was pretty-printed)",
            compact,
        ));
    }
    variants.into_iter().find_map(|(what, variant)| {
        source
            .verifier
            .explain(&capture.headers, &variant, now)
            .matched
            .map(|_| what.to_owned())
    })
}

/// JSON with the whitespace between tokens removed (strings untouched), or `None` when
/// the body is not JSON.
fn minify_json(body: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !b.is_ascii_whitespace() {
            in_string = b == b'"';
            out.push(b);
        }
    }
    Some(out)
}

fn looks_reformatted(body: &[u8]) -> bool {
    find(body, b"\n  ").is_some() || find(body, b"\n\t").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_request_is_split_into_path_headers_and_body() {
        let raw = b"POST /webhooks/openai?x=1 HTTP/1.1\r\nHost: a\r\nWebhook-Id: msg_1\r\nContent-Length: 2\r\n\r\n{}\n";
        let capture = parse_request(raw).unwrap();
        assert_eq!(capture.path.as_deref(), Some("/webhooks/openai"));
        assert_eq!(capture.headers["webhook-id"], "msg_1");
        assert_eq!(capture.body, b"{}");
        assert!(
            capture.notes[0].contains("1 byte(s) after"),
            "{:?}",
            capture.notes
        );
    }

    #[test]
    fn lf_only_captures_and_chunked_bodies_are_read() {
        let capture = parse_request(b"POST / HTTP/1.1\nA: b\n\nbody").unwrap();
        assert_eq!(capture.body, b"body");
        let capture = parse_request(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(capture.body, b"abcde");
        assert!(parse_request(b"no head here").is_err());
        assert!(
            parse_request(b"garbage\r\n\r\n")
                .unwrap_err()
                .contains("request line")
        );
    }

    #[test]
    fn header_files_may_start_with_a_request_line() {
        let capture = parse_parts(b"POST /p HTTP/1.1\nX-A: 1\nX-B: 2\n", b"raw".to_vec()).unwrap();
        assert_eq!(capture.path.as_deref(), Some("/p"));
        assert_eq!(capture.headers.len(), 2);
        assert!(parse_parts(b"no colon", Vec::new()).is_err());
    }

    const CONFIG: &str = r#"
[[sources]]
name = "stripe"
path = "/stripe"
scheme = "stripe"
secrets = ["whsec_diagnose"]
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:9/"
"#;

    fn stripe_capture(body: &str, signed_body: &str) -> Capture {
        let mut headers = HeaderMap::new();
        let value =
            crate::verify::stripe::sign("whsec_diagnose", 1_700_000_000, signed_body.as_bytes());
        headers.insert("stripe-signature", HeaderValue::from_str(&value).unwrap());
        Capture {
            path: Some("/stripe".to_owned()),
            headers,
            body: body.as_bytes().to_vec(),
            notes: Vec::new(),
        }
    }

    fn report(capture: &Capture) -> Diagnosis {
        let settings = crate::config::parse(CONFIG, "t.toml").unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        diagnose(&settings, None, capture, at).unwrap()
    }

    #[test]
    fn a_re_serialised_body_is_named_as_the_cause() {
        let compact = r#"{"id":"evt_1","type":"a.b","data":{"x":[1,2]}}"#;
        let pretty =
            "{\n  \"id\": \"evt_1\",\n  \"type\": \"a.b\",\n  \"data\": {\"x\": [1, 2]}\n}";

        let report = report(&stripe_capture(pretty, compact));

        assert!(!report.verified);
        assert!(
            report
                .text
                .contains("it verifies after removing the JSON whitespace"),
            "{}",
            report.text
        );
    }

    #[test]
    fn a_verified_request_without_a_dedupe_key_is_still_refused() {
        let body = r#"{"type":"a.b"}"#;

        let report = report(&stripe_capture(body, body));

        assert!(!report.verified, "{}", report.text);
        assert!(
            report.text.contains(
                "verdict: signature VERIFIED with secrets[0], but REFUSED: 400 {\"error\":\"invalid_payload\"}"
            ),
            "{}",
            report.text
        );
    }

    /// What the gateway refuses before it checks the signature (a read header sent
    /// twice, a compressed body) was once called VERIFIED here.
    #[test]
    fn a_request_refused_before_verification_is_not_called_verified() {
        let body = r#"{"id":"evt_1","type":"a.b"}"#;
        let mut twice = stripe_capture(body, body);
        let signature = twice.headers["stripe-signature"].clone();
        twice.headers.append("stripe-signature", signature);
        let mut gzipped = stripe_capture(body, body);
        gzipped
            .headers
            .insert("content-encoding", HeaderValue::from_static("gzip"));
        for (capture, expected) in [
            (twice, "400 {\"error\":\"duplicate_header\"}"),
            (gzipped, "415 {\"error\":\"unsupported_content_encoding\"}"),
        ] {
            let report = report(&capture);
            assert!(!report.verified, "{}", report.text);
            assert!(
                report.text.contains(&format!(
                    "verdict: REFUSED before the signature is checked: {expected}"
                )),
                "{}",
                report.text
            );
        }
        assert!(report(&stripe_capture(body, body)).verified);

        // A body over limits.max_body_bytes: 413 at the gateway, whatever its signature.
        let big = format!(
            r#"{{"id":"evt_1","type":"a.b","pad":"{}"}}"#,
            "x".repeat(200)
        );
        let settings = crate::config::parse(
            &format!("[limits]\nmax_body_bytes = 100\n{CONFIG}"),
            "t.toml",
        )
        .unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let report = diagnose(&settings, None, &stripe_capture(&big, &big), at).unwrap();
        assert!(!report.verified, "{}", report.text);
        assert!(
            report.text.contains(
                "verdict: REFUSED before the signature is checked: 413 {\"error\":\"body_too_large\"}"
            ),
            "{}",
            report.text
        );
    }

    /// A capture whose whole file was turned to CRLF (Content-Length counting the body
    /// with LF): read with LF, it verifies. Cut at Content-Length it was called
    /// truncated, and the hint blamed pretty-printing.
    #[test]
    fn a_capture_turned_to_crlf_is_read_with_lf_when_content_length_says_so() {
        let body = "{\n  \"id\": \"evt_1\",\n  \"type\": \"a.b\"\n}";
        let raw = raw_stripe_request(body, "\n", "").replace('\n', "\r\n");

        let capture = parse_request(raw.as_bytes()).unwrap();

        assert_eq!(capture.body, body.as_bytes());
        assert!(
            capture
                .notes
                .iter()
                .any(|n| n.contains("line endings are CRLF")),
            "{:?}",
            capture.notes
        );
        let verdict = report(&capture);
        assert!(verdict.verified, "{}", verdict.text);

        // A body with CRLFs of its own and a newline after it in the file: cut at
        // Content-Length as sent (its LF form happens to be that long too).
        let body = "{\"id\": \"evt_1\",\r\n\"type\": \"a.b\"}";
        let raw = raw_stripe_request(body, "\r\n", "\r\n");
        let capture = parse_request(raw.as_bytes()).unwrap();
        assert_eq!(capture.body, body.as_bytes());
        assert!(report(&capture).verified);
    }

    /// A Stripe-signed request to /stripe as a capture file holds it: its head lines
    /// ending in `line_end`, `after` following the body.
    fn raw_stripe_request(body: &str, line_end: &str, after: &str) -> String {
        let signature =
            crate::verify::stripe::sign("whsec_diagnose", 1_700_000_000, body.as_bytes());
        let head = [
            "POST /stripe HTTP/1.1".to_owned(),
            format!("stripe-signature: {signature}"),
            format!("content-length: {}", body.len()),
        ];
        format!("{}{line_end}{line_end}{body}{after}", head.join(line_end))
    }

    #[test]
    fn json_is_minified_outside_strings_only() {
        assert_eq!(
            minify_json(b"{\n  \"a b\": \"c \\\" d\",\n  \"e\": [1, 2]\n}").unwrap(),
            b"{\"a b\":\"c \\\" d\",\"e\":[1,2]}"
        );
        assert!(minify_json(b"not json").is_none());
    }
}
