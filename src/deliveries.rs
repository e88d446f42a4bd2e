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
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{DeliveriesArgs, DeliveriesCommand};
use crate::cli_client::{self, Trust};
use crate::forward::HttpClient;
use crate::queue::record::{
    ApiError, BulkReplayAnswer, DeliveryList, Detail, RecordBody, ReplayAnswer, Step, UnixMillis,
    unix_millis,
};

#[derive(Debug, thiserror::Error)]
pub enum DeliveriesError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{0}")]
    CaCert(String),
    #[error("--admin {0}: needs http://host:port")]
    AdminUrl(String),
    #[error("{0:?}: expected RFC 3339 (2026-11-20T10:00:00Z) or a duration ago (24h)")]
    Since(String),
    #[error("cannot reach the admin listener at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the admin API answered {status}: {reason}")]
    Refused { status: StatusCode, reason: String },
    #[error("the admin API's answer is not what this version of hookgate expects: {0}")]
    Unexpected(String),
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
    type Render = fn(&Value) -> Result<String, DeliveriesError>;
    let (json, text): (Value, Render) = match &args.command {
        DeliveriesCommand::List {
            status,
            source,
            route,
            upstream,
            event_type,
            search,
            since,
            until,
            cursor,
            limit,
        } => {
            let now = SystemTime::now();
            let since = since.as_deref().map(|t| since_millis(t, now)).transpose()?;
            let until = until.as_deref().map(|t| since_millis(t, now)).transpose()?;
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [
                ("status", status.clone()),
                ("source", source.clone()),
                ("route", route.clone()),
                ("upstream", upstream.clone()),
                ("event_type", event_type.clone()),
                ("search", search.clone()),
                ("since", since.map(|ms| ms.to_string())),
                ("until", until.map(|ms| ms.to_string())),
                ("cursor", cursor.clone()),
            ] {
                query.extend(value.map(|v| format!("{key}={}", encode(&v))));
            }
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
    if args.json {
        Ok(json_for_terminal(
            &serde_json::to_string_pretty(&json).expect("JSON values serialize"),
        ))
    } else {
        text(&json).map(|shown| text_for_terminal(&shown))
    }
}

/// Text to print with every control character but newline and tab written out
/// (`\u{1b}`): the records hold what senders sent (a body, header values, a fetched
/// object), and a sender's escape sequences printed raw retitle, recolour or clear the
/// operator's terminal, rewrite the line shown (a carriage return), or set the
/// clipboard.
fn text_for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// JSON with DEL and the C1 controls escaped too (`\u009b`), which serde_json writes
/// raw (it escapes only those below 0x20): the same JSON to a program, nothing a
/// terminal acts on. They can only stand inside strings, where the escape is exact.
fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '\u{7f}'..='\u{9f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The admin base URL and token: from the flags, else from the config file.
fn target(args: &DeliveriesArgs) -> Result<(String, Option<String>), DeliveriesError> {
    let admin = match (&args.admin, &args.token) {
        (Some(_), Some(_)) => None,
        (_, token) => Some(crate::config::admin_access(
            args.config.as_deref(),
            token.is_none(),
        )?),
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
            let (listen, _) = admin.as_ref().expect("loaded without --admin");
            let listen = *listen;
            format!("http://{}", reachable(listen))
        }
    };
    let token = args.token.clone().or_else(|| {
        admin
            .as_ref()
            .and_then(|(_, token)| token.as_ref())
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

/// `--since` and `--until`: a duration before `now`, or a time as the API reads one
/// (RFC 3339 with any offset, or Unix milliseconds); as Unix milliseconds.
pub fn since_millis(text: &str, now: SystemTime) -> Result<u64, DeliveriesError> {
    // The API's own reading: the CLI refused `2026-12-07T09:00:00+01:00`, which the API
    // it calls takes.
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).and_then(unix_millis),
        Err(_) => crate::queue::record::parse_time(text),
    };
    at.ok_or_else(|| DeliveriesError::Since(text.to_owned()))
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
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
        let response = tokio::time::timeout(cli_client::TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer within {}s",
                    cli_client::TIMEOUT.as_secs()
                ))
            })?
            // The whole chain: its first cause alone said "tcp connect error", not why.
            .map_err(|e| unreachable(cli_client::explain(&e, &self.base, &self.trust)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let reason = match ApiError::deserialize(&json) {
                Ok(ApiError {
                    error,
                    state: Some(state),
                }) => format!("{error} (state {state})"),
                Ok(ApiError { error, state: None }) => error,
                Err(_) => "no reason given".to_owned(),
            };
            return Err(DeliveriesError::Refused { status, reason });
        }
        Ok(json)
    }
}

fn time(ms: UnixMillis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The admin API's answer as the record type both sides share.
fn parsed<T: DeserializeOwned>(json: &Value) -> Result<T, DeliveriesError> {
    T::deserialize(json).map_err(|e| DeliveriesError::Unexpected(e.to_string()))
}

fn render_list(json: &Value) -> Result<String, DeliveriesError> {
    let list: DeliveryList = parsed(json)?;
    let mut out = format!(
        "{:<32}  {:<16}  {:>8}  {:<20}  {:<24}  {:<24}  {}\n",
        "ID", "STATE", "ATTEMPTS", "SOURCE/ROUTE", "WEBHOOK-ID", "RECEIVED", "LAST"
    );
    for d in &list.deliveries {
        let last = match (d.last_status, &d.last_error) {
            (_, Some(error)) => error.clone(),
            (Some(status), None) => status.to_string(),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<32}  {:<16}  {:>8}  {:<20}  {:<24}  {:<24}  {}\n",
            d.id,
            d.state,
            d.attempts,
            format!("{}/{}", d.source, d.route),
            d.webhook_id,
            time(d.received_at),
            last,
        ));
    }
    out.push_str(&match list.deliveries.len() {
        1 => "1 delivery".to_owned(),
        n => format!("{n} deliveries"),
    });
    if let Some(next) = &list.next {
        out.push_str(&format!("; more may match: --cursor {next}"));
    }
    Ok(out)
}

fn render_detail(json: &Value) -> Result<String, DeliveriesError> {
    let d: Detail = parsed(json)?;
    let s = &d.summary;
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<13} {value}\n"));
    line("delivery", s.id.clone());
    line("state", s.state.to_string());
    line("source", format!("{} (route {})", s.source, s.route));
    line("webhook-id", s.webhook_id.clone());
    line("event type", s.event_type.clone());
    line("received", time(s.received_at));
    line("queued", time(d.enqueued_at));
    line("updated", time(s.updated_at));
    line(
        "attempts",
        format!("{} (replayed {} times)", s.attempts, d.replays),
    );
    if let Some(at) = s.next_attempt_at {
        line("next attempt", time(at));
    }
    if let Some(status) = s.last_status {
        line("last status", status.to_string());
    }
    if let Some(error) = &s.last_error {
        line("last error", error.clone());
    }
    line("headers", d.header_names.join(", "));
    out.push_str("history:\n");
    for (a, result) in d.history_shown() {
        out.push_str(&format!(
            "  #{:<3} {}{}  {:>7}  {:<6} {:<16} {}  {}{}\n",
            a.attempt,
            match a.step {
                Step::Fetch => "fetch  ",
                Step::Deliver => "",
            },
            time(a.started_at),
            a.duration_ms
                .map_or("-".to_owned(), |ms| format!("{ms} ms")),
            a.status.map_or("-".to_owned(), |s| s.to_string()),
            result,
            a.instance,
            a.error.as_deref().unwrap_or(""),
            a.trace_id
                .as_ref()
                .map_or(String::new(), |t| format!("  trace {t}")),
        ));
    }
    if let Some(pairs) = &d.headers {
        out.push_str("header values:\n");
        for (name, value) in pairs {
            out.push_str(&format!("  {name}: {value}\n"));
        }
    }
    match &d.body {
        Some(RecordBody::Text(body)) => out.push_str(&format!("body:\n{body}\n")),
        Some(RecordBody::Base64(body)) => {
            out.push_str(&format!("body (base64, not UTF-8):\n{body}\n"))
        }
        None if d.body_dropped => {
            out.push_str("body: (dropped once delivered, with the header values)\n")
        }
        None => {}
    }
    if let Some(object) = &d.object {
        out.push_str(&format!("object (fetched, enrich):\n{object}\n"));
    }
    Ok(out.trim_end().to_owned())
}

fn render_replay(json: &Value) -> Result<String, DeliveriesError> {
    let replay: ReplayAnswer = parsed(json)?;
    Ok(format!(
        "replayed {} (was {}): queued for a new attempt",
        replay.delivery_id, replay.was
    ))
}

fn render_bulk_replay(json: &Value) -> Result<String, DeliveriesError> {
    let bulk: BulkReplayAnswer = parsed(json)?;
    let mut out = match bulk.replayed {
        1 => "replayed 1 failed_final delivery".to_owned(),
        n => format!("replayed {n} failed_final deliveries"),
    };
    for id in &bulk.delivery_ids {
        out.push_str(&format!("\n  {id}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The STATE column was never padded (`State`'s Display ignored the width), so
    /// every column after it slid left of its header.
    #[test]
    fn the_list_s_columns_line_up_with_their_headers() {
        let list = serde_json::json!({"deliveries": [{
            "id": "dlv_01a20259e7340b6b4ee5db9edfd7", "state": "processed",
            "source": "openai", "route": "responses", "webhook_id": "msg_1",
            "event_type": "response.completed", "attempts": 1,
            "received_at": 1_700_000_000_000u64, "updated_at": 1_700_000_000_000u64
        }]});
        let shown = render_list(&list).unwrap();
        let lines: Vec<&str> = shown.lines().collect();
        let column = |line: &str, text: &str| line.find(text).unwrap();
        assert_eq!(
            column(lines[0], "ATTEMPTS") + "ATTEMPTS".len(),
            column(lines[1], "1  openai") + 1,
            "{shown}"
        );
    }

    #[test]
    fn what_senders_sent_reaches_the_terminal_with_its_control_characters_written_out() {
        let record = serde_json::json!({
            "id": "dlv_01a20259e7340b6b4ee5db9edfd7", "state": "failed_final",
            "source": "github", "route": "all", "webhook_id": "gh-1",
            "event_type": "push", "attempts": 1, "replays": 0,
            "received_at": 1_700_000_000_000u64, "enqueued_at": 1_700_000_000_000u64,
            "updated_at": 1_700_000_000_000u64, "header_names": ["x-note"],
            "headers": [["x-note", "a\u{9b}31mred"]],
            "body": "hello \u{1b}]0;PWNED\u{7}\r{\"a\":1}\n\tend", "history": []
        });
        let shown = text_for_terminal(&render_detail(&record).unwrap());
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown:?}"
        );
        assert!(
            shown.contains("hello \\u{1b}]0;PWNED\\u{7}\\u{d}{\"a\":1}\n\tend"),
            "{shown}"
        );
        assert!(shown.contains("x-note: a\\u{9b}31mred"), "{shown}");

        let json = json_for_terminal(&serde_json::to_string_pretty(&record).unwrap());
        assert!(
            !json.chars().any(|c| c.is_control() && c != '\n'),
            "{json:?}"
        );
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record, "the same JSON to a program");
    }

    #[test]
    fn since_is_a_timestamp_or_a_duration_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(since_millis("1h", now).unwrap(), 1_699_996_400_000);
        assert_eq!(
            since_millis("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert!(since_millis("last tuesday", now).is_err());
        // With an offset, as the API takes it.
        assert_eq!(
            since_millis("2023-11-14T23:13:20+01:00", now).unwrap(),
            1_700_000_000_000
        );
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

    #[test]
    fn a_fetch_step_and_a_kept_object_are_shown_apart_from_attempts() {
        let record = serde_json::json!({
            "id": "dlv_1", "state": "failed_final", "source": "openai", "route": "0",
            "webhook_id": "msg_1", "event_type": "response.completed", "attempts": 1,
            "received_at": 0, "updated_at": 0, "enqueued_at": 0, "replays": 0,
            "header_names": [], "headers": [], "body": "{}",
            "object": "{\"id\":\"resp_1\"}",
            "history": [
                {"attempt": 1, "step": "fetch", "started_at": 0, "status": 200,
                 "result": "fetched", "instance": "a"},
                {"attempt": 1, "started_at": 0, "status": 400,
                 "result": "failed_final", "instance": "a",
                 "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
            ]
        });
        let shown = render_detail(&record).unwrap();
        let history: Vec<&str> = shown
            .lines()
            .skip_while(|l| *l != "history:")
            .skip(1)
            .take(2)
            .collect();
        assert!(history[0].starts_with("  #1   fetch  1970-"), "{shown}");
        assert!(history[1].starts_with("  #1   1970-"), "{shown}");
        assert!(
            history[1].ends_with("  trace 4bf92f3577b34da6a3ce929d0e0e4736"),
            "an attempt names its trace: {shown}"
        );
        assert!(!history[0].contains("trace"), "{shown}");
        assert!(
            shown.ends_with("object (fetched, enrich):\n{\"id\":\"resp_1\"}"),
            "{shown}"
        );
    }

    /// The attempt running now is not one whose instance stopped (the CLI said so of
    /// every attempt without a result, while the console said "in progress, or ...").
    #[test]
    fn an_attempt_without_a_result_is_running_only_if_it_is_the_last_of_one_in_progress() {
        let record = |state: &str| {
            serde_json::json!({
                "id": "dlv_1", "state": state, "source": "s", "route": "r",
                "webhook_id": "msg_1", "event_type": "t", "attempts": 2,
                "received_at": 0, "updated_at": 0, "enqueued_at": 0, "replays": 0,
                "header_names": [], "headers": [], "body": "{}",
                "history": [
                    {"attempt": 1, "started_at": 0, "instance": "a"},
                    {"attempt": 2, "started_at": 0, "instance": "b"}
                ]
            })
        };
        let running = render_detail(&record("processing")).unwrap();
        let lines: Vec<&str> = running.lines().filter(|l| l.starts_with("  #")).collect();
        assert!(
            lines[0].contains("(did not end: its instance stopped)"),
            "{running}"
        );
        assert!(lines[1].contains("(in progress)"), "{running}");
        let waiting = render_detail(&record("failed_retryable")).unwrap();
        assert!(!waiting.contains("(in progress)"), "{waiting}");
    }
}
