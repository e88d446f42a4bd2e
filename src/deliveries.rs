//! `hookgate deliveries`: the queue's records, read and replayed through a running
//! gateway's admin API (`admin.rs`), rendered as text or passed through as JSON.
//!
//! Going through the gateway rather than straight to Redis means one code path for the
//! in-memory queue and for Redis, and one place (the admin listener) to protect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::cli::{DeliveriesArgs, DeliveriesCommand};
use crate::cli_client::{self, Trust};
use crate::forward::HttpClient;
use crate::queue::unix_millis;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DeliveriesError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{0}")]
    CaCert(String),
    #[error("--admin {0}: needs http://host:port")]
    AdminUrl(String),
    #[error("--since {0:?}: expected RFC 3339 (2026-11-20T10:00:00Z) or a duration (24h)")]
    Since(String),
    #[error("cannot reach the admin listener at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the admin API answered {status}: {reason}")]
    Refused { status: StatusCode, reason: String },
}

/// Runs one `deliveries` command and returns what to print.
pub async fn run(args: DeliveriesArgs) -> Result<String, DeliveriesError> {
    let (base, token) = target(&args)?;
    let trust = Trust::from_flags(args.cacert.as_deref(), args.insecure);
    let client = Client {
        http: trust
            .client(Duration::from_secs(5))
            .map_err(DeliveriesError::CaCert)?,
        base,
        token,
        trust,
    };
    let (json, text): (Value, fn(&Value) -> String) = match &args.command {
        DeliveriesCommand::List {
            status,
            source,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            query.extend(status.as_ref().map(|s| format!("status={}", encode(s))));
            query.extend(source.as_ref().map(|s| format!("source={}", encode(s))));
            let path = format!("/deliveries?{}", query.join("&"));
            (client.call(Method::GET, &path).await?, render_list)
        }
        DeliveriesCommand::Show { id, body } => {
            let path = format!(
                "/deliveries/{}{}",
                encode(id),
                if *body { "?body=true" } else { "" }
            );
            (client.call(Method::GET, &path).await?, render_detail)
        }
        DeliveriesCommand::Replay { id: Some(id), .. } => {
            let path = format!("/deliveries/{}/replay", encode(id));
            (client.call(Method::POST, &path).await?, render_replay)
        }
        DeliveriesCommand::Replay {
            id: None,
            status,
            since,
        } => {
            let mut path = format!(
                "/deliveries/replay?status={}",
                status.as_deref().unwrap_or("failed_final")
            );
            if let Some(since) = since {
                path.push_str(&format!(
                    "&since={}",
                    since_millis(since, SystemTime::now())?
                ));
            }
            (client.call(Method::POST, &path).await?, render_bulk_replay)
        }
    };
    Ok(if args.json {
        serde_json::to_string_pretty(&json).expect("JSON values serialize")
    } else {
        text(&json)
    })
}

/// The admin base URL and token: from the flags, else from the config file.
fn target(args: &DeliveriesArgs) -> Result<(String, Option<String>), DeliveriesError> {
    let settings = match (&args.admin, &args.token) {
        (Some(_), Some(_)) => None,
        _ => Some(crate::config::load_or_default(args.config.as_deref())?),
    };
    let base = match &args.admin {
        Some(url) => {
            let url = url.trim_end_matches('/').to_owned();
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(DeliveriesError::AdminUrl(url));
            }
            url
        }
        None => {
            let listen = settings
                .as_ref()
                .expect("loaded without --admin")
                .admin_listen;
            format!("http://{}", reachable(listen))
        }
    };
    let token = args.token.clone().or_else(|| {
        settings
            .as_ref()
            .and_then(|s| s.admin_auth.token.as_ref())
            .map(|t| t.expose().to_owned())
    });
    Ok((base, token))
}

/// A listen address as a client connects to it: a wildcard means this machine.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// `--since`: RFC 3339, or a duration before `now`; as Unix milliseconds.
pub fn since_millis(text: &str, now: SystemTime) -> Result<u64, DeliveriesError> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago),
        Err(_) => humantime::parse_rfc3339_weak(text).ok(),
    };
    at.and_then(unix_millis)
        .ok_or_else(|| DeliveriesError::Since(text.to_owned()))
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

struct Client {
    http: HttpClient,
    base: String,
    token: Option<String>,
    trust: Trust,
}

impl Client {
    async fn call(&self, method: Method, path: &str) -> Result<Value, DeliveriesError> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|_| DeliveriesError::AdminUrl(self.base.clone()))?;
        let unreachable = |detail: String| DeliveriesError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| unreachable("no answer within 30s".to_owned()))?
            .map_err(|e| {
                let detail =
                    std::error::Error::source(&e).map_or(e.to_string(), ToString::to_string);
                match cli_client::hint(&e, &self.base, &self.trust) {
                    Some(hint) => unreachable(format!("{detail}\nhint: {hint}")),
                    None => unreachable(detail),
                }
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let mut reason = json["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned();
            if let Some(state) = json["state"].as_str() {
                reason.push_str(&format!(" (state {state})"));
            }
            return Err(DeliveriesError::Refused { status, reason });
        }
        Ok(json)
    }
}

fn time(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".to_owned(),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn render_list(json: &Value) -> String {
    let empty = Vec::new();
    let rows = json["deliveries"].as_array().unwrap_or(&empty);
    let mut out = format!(
        "{:<32}  {:<16}  {:>8}  {:<20}  {:<24}  {:<24}  {}\n",
        "ID", "STATE", "ATTEMPTS", "SOURCE/ROUTE", "WEBHOOK-ID", "RECEIVED", "LAST"
    );
    for d in rows {
        let last = match (d["last_status"].as_u64(), d["last_error"].as_str()) {
            (_, Some(error)) => error.to_owned(),
            (Some(status), None) => status.to_string(),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<32}  {:<16}  {:>8}  {:<20}  {:<24}  {:<24}  {}\n",
            text(&d["id"]),
            text(&d["state"]),
            d["attempts"].as_u64().unwrap_or(0),
            format!("{}/{}", text(&d["source"]), text(&d["route"])),
            text(&d["webhook_id"]),
            time(&d["received_at"]),
            last,
        ));
    }
    out.push_str(&match rows.len() {
        1 => "1 delivery".to_owned(),
        n => format!("{n} deliveries"),
    });
    out
}

fn render_detail(d: &Value) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<13} {value}\n"));
    line("delivery", text(&d["id"]).to_owned());
    line("state", text(&d["state"]).to_owned());
    line(
        "source",
        format!("{} (route {})", text(&d["source"]), text(&d["route"])),
    );
    line("webhook-id", text(&d["webhook_id"]).to_owned());
    line("event type", text(&d["event_type"]).to_owned());
    line("received", time(&d["received_at"]));
    line("queued", time(&d["enqueued_at"]));
    line("updated", time(&d["updated_at"]));
    line(
        "attempts",
        format!(
            "{} (replayed {} times)",
            d["attempts"].as_u64().unwrap_or(0),
            d["replays"].as_u64().unwrap_or(0)
        ),
    );
    if !d["next_attempt_at"].is_null() {
        line("next attempt", time(&d["next_attempt_at"]));
    }
    if let Some(status) = d["last_status"].as_u64() {
        line("last status", status.to_string());
    }
    if let Some(error) = d["last_error"].as_str() {
        line("last error", error.to_owned());
    }
    let names: Vec<&str> = d["header_names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    line("headers", names.join(", "));
    out.push_str("history:\n");
    for a in d["history"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  #{:<3} {}  {:>7}  {:<6} {:<16} {}  {}\n",
            a["attempt"].as_u64().unwrap_or(0),
            time(&a["started_at"]),
            a["duration_ms"]
                .as_u64()
                .map_or("-".to_owned(), |ms| format!("{ms} ms")),
            a["status"]
                .as_u64()
                .map_or("-".to_owned(), |s| s.to_string()),
            a["result"]
                .as_str()
                .unwrap_or("(no result: the instance stopped)"),
            text(&a["instance"]),
            a["error"].as_str().unwrap_or(""),
        ));
    }
    if let Some(pairs) = d["headers"].as_array() {
        out.push_str("header values:\n");
        for pair in pairs {
            out.push_str(&format!("  {}: {}\n", text(&pair[0]), text(&pair[1])));
        }
    }
    if let Some(body) = d["body"].as_str() {
        out.push_str(&format!("body:\n{body}\n"));
    } else if let Some(body) = d["body_base64"].as_str() {
        out.push_str(&format!("body (base64, not UTF-8):\n{body}\n"));
    }
    out.trim_end().to_owned()
}

fn render_replay(json: &Value) -> String {
    format!(
        "replayed {} (was {}): queued for a new attempt",
        text(&json["delivery_id"]),
        text(&json["was"])
    )
}

fn render_bulk_replay(json: &Value) -> String {
    let mut out = match json["replayed"].as_u64().unwrap_or(0) {
        1 => "replayed 1 failed_final delivery".to_owned(),
        n => format!("replayed {n} failed_final deliveries"),
    };
    for id in json["delivery_ids"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  {}", text(id)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_timestamp_or_a_duration_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(since_millis("1h", now).unwrap(), 1_699_996_400_000);
        assert_eq!(
            since_millis("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert!(since_millis("last tuesday", now).is_err());
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9090".parse().unwrap()).to_string(),
            "127.0.0.1:9090"
        );
        assert_eq!(
            reachable("[::]:9090".parse().unwrap()).to_string(),
            "[::1]:9090"
        );
        assert_eq!(
            reachable("10.0.0.5:9090".parse().unwrap()).to_string(),
            "10.0.0.5:9090"
        );
        assert_eq!(encode("dlv_1/../x"), "dlv_1%2F..%2Fx");
    }
}
