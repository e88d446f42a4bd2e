//! `hookgate sign`: a correctly signed request in any scheme's format, as a curl command
//! or sent.
//!
//! This is how a user tests a deployment end to end without the real sender, and how
//! the README's walkthrough works. Each scheme signs in its own file
//! (`verify::SchemeOptions::sign`) with the body shape its senders use; this module
//! resolves the common inputs (id, timestamp, `--data`) and does the sending.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::cli_client::{self, Trust};
use crate::verify::{SchemeOptions, SignMessage, standard_webhooks, unix_seconds};

pub use crate::verify::{SignError, SignedRequest};

pub struct SignInput<'a> {
    pub secret: &'a str,
    pub event_type: &'a str,
    pub data: Option<&'a str>,
    pub id: Option<&'a str>,
    pub timestamp: Option<i64>,
}

/// A Standard Webhooks request with OpenAI's body shape: `{"id","object":"event",
/// "created_at","type","data"}` and the three `webhook-*` headers.
pub fn build(input: &SignInput<'_>, now: SystemTime) -> Result<SignedRequest, SignError> {
    build_with(&standard_webhooks::Options::default(), input, now)
}

/// A request signed the way a scheme's senders sign, with that scheme's source keys
/// `options` (read by `verify::Scheme::options`).
pub fn build_with(
    options: &dyn SchemeOptions,
    input: &SignInput<'_>,
    now: SystemTime,
) -> Result<SignedRequest, SignError> {
    // Embedded as given, once checked: re-serialised, a number past 2^53 lost digits and
    // keys were reordered, so the body was not the one asked for.
    let data = match input.data {
        Some(text) => serde_json::from_str::<&serde_json::value::RawValue>(text)
            .map_err(SignError::Data)?
            .get()
            .to_owned(),
        None => "{}".to_owned(),
    };
    if let Some(id) = input.id
        && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(SignError::Id);
    }
    if !crate::event::is_valid_event_type(input.event_type) {
        return Err(SignError::Type);
    }
    if input.timestamp.is_some_and(|t| t < 0) {
        return Err(SignError::Timestamp);
    }
    let message = SignMessage {
        secret: input.secret,
        event_type: input.event_type,
        data: &data,
        id: input.id,
        timestamp: input.timestamp,
        now: unix_seconds(now),
    };
    options.sign(&message)
}

/// A copy-pasteable curl command for a POSIX shell. `-w '\n'` ends the output with a
/// newline: the gateway's JSON answers have none, and the prompt would follow the body.
pub fn curl_command(request: &SignedRequest, url: &str, trust: &Trust) -> String {
    let mut out = String::from(r"curl -sS -i -w '\n'");
    match trust {
        Trust::Anything => out.push_str(" -k"),
        Trust::CaFile(pem) => {
            out.push_str(&format!(
                " --cacert {}",
                shell_quote(&pem.to_string_lossy())
            ));
        }
        Trust::PublicRoots => {}
    }
    out.push_str(&format!(" -X POST {}", shell_quote(url)));
    for (name, value) in &request.headers {
        out.push_str(&format!(
            " \\\n  -H {}",
            shell_quote(&format!("{name}: {value}"))
        ));
    }
    out.push_str(&format!(" \\\n  --data-raw {}", shell_quote(&request.body)));
    out
}

/// The request as raw HTTP/1.1, as a capture would hold it (`hookgate verify --request`).
pub fn raw_request(request: &SignedRequest, url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a valid URL: {e}"))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = format!("POST {target} HTTP/1.1\r\n");
    if let Some(host) = uri.authority() {
        out.push_str(&format!("host: {host}\r\n"));
    }
    for (name, value) in &request.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\n\r\n{}",
        request.body.len(),
        request.body
    ));
    Ok(out)
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is not a valid URL: {1}")]
    Url(String, http::uri::InvalidUri),
    #[error("{0}")]
    CaCert(String),
    /// The error chain, and a hint on a second line when the cause is a common one.
    #[error("request failed: {0}")]
    Request(String),
}

/// POSTs the signed request; returns the status and the body of the answer.
pub async fn send(
    request: &SignedRequest,
    url: &str,
    trust: &Trust,
) -> Result<(StatusCode, Bytes), SendError> {
    let uri: http::Uri = url.parse().map_err(|e| SendError::Url(url.to_owned(), e))?;
    let client = trust
        .client(Duration::from_secs(10))
        .map_err(SendError::CaCert)?;
    let mut builder = Request::builder().method(Method::POST).uri(uri);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let req = builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|e| SendError::Request(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(req)
            .await
            .map_err(|e| SendError::Request(cli_client::explain(&e, url, trust)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::Request(cli_client::explain(&e, url, trust)))?
            .to_bytes();
        Ok((status, body))
    };
    // Only connecting was bounded: a listener that never answered held it for good.
    tokio::time::timeout(cli_client::TIMEOUT, exchange)
        .await
        .map_err(|_| {
            SendError::Request(format!(
                "{url} did not answer within {}s",
                cli_client::TIMEOUT.as_secs()
            ))
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts and never answers held `sign --send` for good.
    #[tokio::test(start_paused = true)]
    async fn send_gives_up_on_a_listener_that_never_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let request = crate::verify::SignedRequest {
            id: "msg_1".to_owned(),
            headers: Vec::new(),
            body: "{}".to_owned(),
        };
        let e = send(&request, &url, &Trust::PublicRoots).await.unwrap_err();
        assert!(e.to_string().contains("did not answer within 30s"), "{e}");
        held.abort();
    }
    use crate::verify::standard_webhooks::{ID, SIGNATURE, TIMESTAMP, key_from_secret};
    use crate::verify::{self, SecretText};
    use http::{HeaderMap, HeaderValue};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn input<'a>(data: Option<&'a str>) -> SignInput<'a> {
        SignInput {
            secret: SECRET,
            event_type: "response.completed",
            data,
            id: Some("msg_1"),
            timestamp: Some(1_700_000_000),
        }
    }

    #[test]
    fn the_signed_request_verifies_with_the_same_secret() {
        let req = build(&input(Some(r#"{"id":"resp_1"}"#)), SystemTime::now()).unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            headers.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        assert_eq!(headers[&ID], "msg_1");
        assert_eq!(headers[&TIMESTAMP], "1700000000");
        let key = key_from_secret(SECRET).unwrap();
        let expected = standard_webhooks::sign(&key, "msg_1", 1_700_000_000, req.body.as_bytes());
        assert_eq!(headers[&SIGNATURE], expected.as_str());
        let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(body["type"], "response.completed");
        assert_eq!(body["data"]["id"], "resp_1");
        assert_eq!(body["object"], "event");
    }

    #[test]
    fn bad_data_and_bad_secrets_are_reported() {
        assert!(matches!(
            build(&input(Some("{nope")), SystemTime::now()),
            Err(SignError::Data(_))
        ));
        let mut bad = input(None);
        bad.secret = "whsec_***";
        assert!(matches!(
            build(&bad, SystemTime::now()),
            Err(SignError::Secret(_))
        ));
        let mut spaced = input(None);
        spaced.id = Some("has space");
        assert!(matches!(
            build(&spaced, SystemTime::now()),
            Err(SignError::Id)
        ));
        // What the gateway refuses is refused here too, naming the flag.
        for event_type in ["", "push\nX-Evil: 1", &"a".repeat(257)] {
            let mut bad = input(None);
            bad.event_type = event_type;
            assert!(matches!(
                build(&bad, SystemTime::now()),
                Err(SignError::Type)
            ));
        }
        let mut negative = input(None);
        negative.timestamp = Some(-5);
        assert!(matches!(
            build(&negative, SystemTime::now()),
            Err(SignError::Timestamp)
        ));
    }

    /// The data is embedded as given: parsed and written again, a number past 2^53 lost
    /// its digits and the keys were reordered.
    #[test]
    fn the_data_is_the_json_given() {
        let data = r#"{"amount":123456789012345678901234567890,"z":1,"a":2}"#;
        let req = build(&input(Some(data)), SystemTime::now()).unwrap();
        assert!(req.body.contains(data), "{}", req.body);
    }

    #[test]
    fn every_scheme_signs_what_its_verifier_accepts() {
        let secrets = [SecretText::new(SECRET)];
        for scheme in verify::SCHEMES {
            let mut keys = toml::Table::new();
            if scheme.name == "hmac" {
                keys.insert("signature_header".to_owned(), "x-signature".into());
            }
            let options = (scheme.options)(keys).unwrap();
            let now = SystemTime::now();
            let mut unstamped = input(Some(r#"{"id":"x"}"#));
            unstamped.timestamp = None;
            let req = build_with(&*options, &unstamped, now).unwrap();
            let mut headers = HeaderMap::new();
            for (name, value) in &req.headers {
                headers.insert(name.clone(), HeaderValue::from_str(value).unwrap());
            }
            let built = options.build(&secrets).unwrap();
            assert!(
                built
                    .verifier
                    .verify(&headers, req.body.as_bytes(), now)
                    .is_ok(),
                "{}",
                scheme.name
            );
            if let Some(key) = built.dedupe_key {
                assert!(
                    key.dedupe_key(&headers, req.body.as_bytes()).is_ok(),
                    "{}",
                    scheme.name
                );
            }
        }
    }

    #[test]
    fn the_raw_request_is_what_hookgate_verify_reads() {
        let req = build(&input(Some(r#"{"id":"resp_1"}"#)), SystemTime::now()).unwrap();
        let raw = raw_request(&req, "http://127.0.0.1:8444/webhooks/openai?x=1").unwrap();
        assert!(raw.starts_with("POST /webhooks/openai?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8444\r\n"));
        let capture = crate::diagnose::parse_request(raw.as_bytes()).unwrap();
        assert_eq!(capture.path.as_deref(), Some("/webhooks/openai"));
        assert_eq!(capture.headers["webhook-id"], "msg_1");
        assert_eq!(capture.body, req.body.as_bytes());
    }

    #[test]
    fn the_curl_command_quotes_for_the_shell() {
        let req = build(&input(Some(r#"{"note":"it's"}"#)), SystemTime::now()).unwrap();
        let cmd = curl_command(
            &req,
            "https://localhost:8443/webhooks/openai",
            &Trust::Anything,
        );
        assert!(cmd.starts_with(
            r"curl -sS -i -w '\n' -k -X POST 'https://localhost:8443/webhooks/openai'"
        ));
        assert!(cmd.contains(r#"it'\''s"#), "{cmd}");
        assert!(cmd.contains("-H 'webhook-id: msg_1'"));
        // `--cacert` was once dropped from the command, which then failed in curl.
        let pem = std::path::PathBuf::from("certs/dev cert.pem");
        let cmd = curl_command(&req, "https://localhost:8443/x", &Trust::CaFile(pem));
        assert!(
            cmd.starts_with(r"curl -sS -i -w '\n' --cacert 'certs/dev cert.pem' -X POST"),
            "{cmd}"
        );
    }
}
