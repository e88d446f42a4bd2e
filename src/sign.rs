//! `hookgate sign`: a correctly signed Standard Webhooks request, as a curl command or sent.
//!
//! This is how a user tests a deployment end to end without the real sender, and how
//! the README's walkthrough works. The body has the shape OpenAI sends:
//! `{"id","object":"event","created_at","type","data"}`.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::forward::http_client;
use crate::tls;
use crate::verify::standard_webhooks::{self, key_from_secret};
use crate::verify::unix_seconds;

#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// Header names and values, in the order they are sent.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("--secret: {0}")]
    Secret(String),
    #[error("--data is not valid JSON: {0}")]
    Data(serde_json::Error),
    #[error("--id must be printable ASCII without spaces")]
    Id,
}

pub struct SignInput<'a> {
    pub secret: &'a str,
    pub event_type: &'a str,
    pub data: Option<&'a str>,
    pub id: Option<&'a str>,
    pub timestamp: Option<i64>,
}

/// Builds the body and the three `webhook-*` headers.
pub fn build(input: &SignInput<'_>, now: SystemTime) -> Result<SignedRequest, SignError> {
    let key = key_from_secret(input.secret).map_err(SignError::Secret)?;
    let data = match input.data {
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(SignError::Data)?;
            value.to_string()
        }
        None => "{}".to_owned(),
    };
    let id = match input.id {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_owned(),
        Some(_) => return Err(SignError::Id),
        None => format!("msg_{}", random_hex()),
    };
    let timestamp = input.timestamp.unwrap_or_else(|| unix_seconds(now));
    let body = format!(
        r#"{{"id":"evt_{}","object":"event","created_at":{timestamp},"type":{},"data":{data}}}"#,
        random_hex(),
        serde_json::Value::from(input.event_type),
    );
    let signature = standard_webhooks::sign(&key, &id, timestamp, body.as_bytes());
    Ok(SignedRequest {
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ],
        body,
    })
}

/// 24 hex digits; unique enough for ids in tests and demos, not a secret.
fn random_hex() -> String {
    let state = RandomState::new();
    let a = state.hash_one(SystemTime::now());
    format!("{:016x}{:08x}", a, state.hash_one(a) as u32)
}

/// A copy-pasteable curl command for a POSIX shell.
pub fn curl_command(request: &SignedRequest, url: &str, insecure: bool) -> String {
    let mut out = String::from("curl -sS -i");
    if insecure {
        out.push_str(" -k");
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

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// How `send` decides whom to trust.
pub enum Trust {
    /// The Mozilla roots (the default).
    PublicRoots,
    /// Exactly the certificates in this PEM (for example `certs/dev-cert.pem`).
    Pem(Vec<u8>),
    /// Any certificate (`--insecure`, dev only).
    Anything,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is not a valid URL: {1}")]
    Url(String, http::uri::InvalidUri),
    #[error("--cacert: {0}")]
    CaCert(String),
    #[error("request failed: {0}")]
    Request(String),
}

/// POSTs the signed request; returns the status and the body of the answer.
pub async fn send(
    request: &SignedRequest,
    url: &str,
    trust: Trust,
) -> Result<(StatusCode, Bytes), SendError> {
    let uri: http::Uri = url.parse().map_err(|e| SendError::Url(url.to_owned(), e))?;
    let config = match trust {
        Trust::PublicRoots => tls::upstream_client_config(),
        Trust::Pem(pem) => tls::client_config_trusting(&pem).map_err(SendError::CaCert)?,
        Trust::Anything => tls::insecure_client_config(),
    };
    let client = http_client(config, Duration::from_secs(10));
    let mut builder = Request::builder().method(Method::POST).uri(uri);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let req = builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|e| SendError::Request(e.to_string()))?;
    let response = client
        .request(req)
        .await
        .map_err(|e| SendError::Request(error_chain(&e)))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| SendError::Request(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::standard_webhooks::{ID, SIGNATURE, TIMESTAMP};
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
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
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
    }

    #[test]
    fn the_curl_command_quotes_for_the_shell() {
        let req = build(&input(Some(r#"{"note":"it's"}"#)), SystemTime::now()).unwrap();
        let cmd = curl_command(&req, "https://localhost:8443/webhooks/openai", true);
        assert!(cmd.starts_with("curl -sS -i -k -X POST 'https://localhost:8443/webhooks/openai'"));
        assert!(cmd.contains(r#"it'\''s"#), "{cmd}");
        assert!(cmd.contains("-H 'webhook-id: msg_1'"));
    }
}
