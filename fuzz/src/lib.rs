//! Shared harness of the fuzz targets. A signature scheme is fuzzed through its public
//! face, the `Verifier` a `[[sources]]` block builds, with the source taken from the
//! scheme's published vectors (`tests/vectors/<scheme>.toml`). An input is one value per
//! header the vectors use, each ended by a newline, then the body: that reaches every
//! scheme's header parsers (signature, timestamp, id) without exposing their internals.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

/// What one scheme's vectors give the harness: a verifier, the headers it reads, and the
/// vectors' clock (so inputs near the seeds get past the freshness check).
pub struct Scheme {
    verifier: std::sync::Arc<dyn hookgate::verify::Verifier>,
    headers: Vec<HeaderName>,
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
        headers,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(now as u64),
    }
}

/// One fuzz input against a scheme built once per process.
pub fn verify(cell: &OnceLock<Scheme>, vectors: &str, data: &[u8]) {
    let scheme = cell.get_or_init(|| scheme(vectors));
    let mut rest = data;
    let mut headers = HeaderMap::new();
    for name in &scheme.headers {
        let (value, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        // What hyper would refuse never reaches a verifier.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name.clone(), value);
        }
    }
    let _ = scheme.verifier.verify(&headers, rest, scheme.now);
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
