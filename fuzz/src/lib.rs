//! Shared harness of the fuzz targets. A signature scheme is fuzzed through its public
//! face, the `Verifier` a `[[sources]]` block builds, with the source taken from the
//! scheme's published vectors (`tests/vectors/<scheme>.toml`). An input is one value per
//! header the vectors use, each ended by a newline; then any number of `name:value`
//! lines, appended as more header fields (so a name may come twice, or spelled with
//! `_`); then the body, from the first line that is not such a field. That reaches every
//! scheme's header parsers (signature, timestamp, id) without exposing their internals,
//! and the gateway's header checks with maps a real client can send.
//!
//! Whatever verifies and passes the source's header checks must reach the backend as
//! it was verified: each header the source reads exactly once with the value read, and
//! no header a CGI-style backend would merge with another or take for a proxy's.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

/// What one scheme's vectors give the harness: a verifier, the headers its vectors use,
/// the headers its source reads, and the vectors' clock (so inputs near the seeds get
/// past the freshness check).
pub struct Scheme {
    verifier: std::sync::Arc<dyn hookgate::verify::Verifier>,
    headers: Vec<HeaderName>,
    reads: Vec<HeaderName>,
    now: SystemTime,
}

/// Builds the scheme described by a vectors file; panics if it is not a valid source.
pub fn scheme(vectors: &str) -> Scheme {
    let file: toml::Table = toml::from_str(vectors).expect("the vectors file is TOML");
    let source = file["source"].as_table().expect("a [source] table");
    let mut text = String::from("[[sources]]\n");
    text.push_str(&toml::to_string(source).expect("the source as TOML"));
    text.push_str("[[sources.routes]]\nevents = [\"*\"]\nupstream = \"http://127.0.0.1:9/\"\n");
    let settings = hookgate::config::parse(&text, "fuzz").expect("the vectors' source builds");
    let mut headers: Vec<HeaderName> = Vec::new();
    let mut now = 0;
    for case in file["case"].as_array().expect("[[case]]s") {
        now = case["now"].as_integer().expect("now");
        if let Some(names) = case.get("headers").and_then(|h| h.as_table()) {
            for name in names.keys() {
                let name = HeaderName::try_from(name.as_str()).expect("a header name");
                if !headers.contains(&name) {
                    headers.push(name);
                }
            }
        }
    }
    headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Scheme {
        verifier: settings.sources[0].verifier.clone(),
        reads: settings.sources[0].reads.clone(),
        headers,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(now as u64),
    }
}

/// One fuzz input against a scheme built once per process.
pub fn verify(cell: &OnceLock<Scheme>, vectors: &str, data: &[u8]) {
    let scheme = cell.get_or_init(|| scheme(vectors));
    let mut lines = Lines(data);
    let mut headers = HeaderMap::new();
    for name in &scheme.headers {
        // What hyper would refuse never reaches a verifier.
        if let Ok(value) = HeaderValue::from_bytes(lines.next()) {
            headers.append(name.clone(), value);
        }
    }
    while let Some((name, value)) = lines.field() {
        headers.append(name, value);
    }
    let body = lines.0;
    let verified = scheme.verifier.verify(&headers, body, scheme.now).is_ok();
    if verified && hookgate::pipeline::check_read_headers(&headers, &scheme.reads).is_ok() {
        forwarded_as_verified(scheme, &headers);
    }
}

/// The headers the backend gets carry what was verified, and nothing a CGI-style
/// backend would merge or believe about a proxy.
fn forwarded_as_verified(scheme: &Scheme, headers: &HeaderMap) {
    static SOURCE: HeaderValue = HeaderValue::from_static("fuzz");
    let forwarded = hookgate::forward::upstream_headers(
        headers.clone(),
        &hookgate::forward::ForwardContext {
            forwarded_for: HeaderValue::from_static("192.0.2.1"),
            tls: true,
            proxied: false,
            authority: None,
            reads: &scheme.reads,
            source: &SOURCE,
            event_type: "fuzz.event",
        },
    );
    for name in &scheme.reads {
        let sent: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        let got: Vec<&HeaderValue> = forwarded.get_all(name).iter().collect();
        assert!(sent.len() <= 1, "{name} passed the checks twice: {sent:?}");
        assert_eq!(got, sent, "{name} changed on the way to the backend");
    }
    for (i, a) in forwarded.keys().enumerate() {
        for b in forwarded.keys().skip(i + 1) {
            assert!(
                !hookgate::forward::same_to_cgi(a.as_str(), b.as_str()),
                "{a} and {b} reach the backend as one CGI variable"
            );
        }
    }
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-hookgate-source"] {
        assert_eq!(forwarded.get_all(name).iter().count(), 1, "{name}");
    }
    assert_eq!(forwarded["x-forwarded-for"], "192.0.2.1");
}

/// The input, consumed line by line.
struct Lines<'a>(&'a [u8]);

impl<'a> Lines<'a> {
    /// The next line (without its newline); the rest when there is no newline left.
    fn next(&mut self) -> &'a [u8] {
        let (line, rest) = match self.0.iter().position(|&b| b == b'\n') {
            Some(at) => (&self.0[..at], &self.0[at + 1..]),
            None => (self.0, &self.0[self.0.len()..]),
        };
        self.0 = rest;
        line
    }

    /// The next line as a `name:value` header field, consumed only when it is one.
    fn field(&mut self) -> Option<(HeaderName, HeaderValue)> {
        let end = self.0.iter().position(|&b| b == b'\n')?;
        let line = &self.0[..end];
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        self.0 = &self.0[end + 1..];
        Some((name, value))
    }
}

/// The seed input of a vectors case: its header values in `Scheme::headers` order.
pub fn seed(headers: &[HeaderName], case: &toml::Table) -> Vec<u8> {
    let values = case.get("headers").and_then(|h| h.as_table());
    let mut out = Vec::new();
    for name in headers {
        let value = values
            .and_then(|v| {
                v.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name.as_str()))
            })
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(case["body"].as_str().unwrap_or("").as_bytes());
    out
}
