//! The queue's vocabulary: where a delivery stands, what ingress hands over, what a
//! worker holds, what a record shows, and the answers of the admin API, which
//! `hookgate deliveries` reads back into these same types. Plain data, no I/O: the
//! backends (`memory.rs`, `redis.rs`), the workers, the metrics, the admin API and the
//! CLI all speak it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::random;

/// Milliseconds since the Unix epoch, on the wall clock of the instance that wrote them.
pub type UnixMillis = u64;

pub fn now_millis() -> UnixMillis {
    unix_millis(SystemTime::now()).unwrap_or(0)
}

/// `at` in Unix milliseconds; `None` before 1970.
pub fn unix_millis(at: SystemTime) -> Option<UnixMillis> {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as UnixMillis)
}

/// Where a delivery stands. A record is written `queued` together with its queue entry
/// (one atomic step), so a delivery that was verified but could not be stored has no
/// record at all: its sender was answered 503 and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Stored and waiting for a worker.
    Queued,
    /// A worker is attempting it now.
    Processing,
    /// The upstream answered 2xx.
    Processed,
    /// The last attempt failed; the next one is scheduled (`next_attempt_at`).
    FailedRetryable,
    /// No more attempts: not retryable, `max_attempts` or `max_age` reached. A dead
    /// letter: the only state that can be replayed.
    FailedFinal,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Processing,
        State::Processed,
        State::FailedRetryable,
        State::FailedFinal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Processing => "processing",
            State::Processed => "processed",
            State::FailedRetryable => "failed_retryable",
            State::FailedFinal => "failed_final",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Final states are kept for `retention`, then forgotten.
    pub fn is_final(self) -> bool {
        matches!(self, State::Processed | State::FailedFinal)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified, routed delivery as ingress hands it over.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub source: String,
    pub route: String,
    pub webhook_id: String,
    pub event_type: String,
    /// The headers the upstream will get (hop-by-hop removed, `X-Forwarded-*` set).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: UnixMillis,
}

impl NewDelivery {
    /// `<source>/<route>`, as `Route::label` names it: the key of the route's
    /// concurrency slots.
    pub fn route_label(&self) -> String {
        format!("{}/{}", self.source, self.route)
    }
}

/// One delivery taken by this instance, held until it is settled or handed back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub delivery_id: String,
    /// `<source>/<route>`: which route's concurrency slot the attempt needs.
    pub route: String,
    /// The backend's handle on the taken entry (the stream entry id in Redis).
    pub token: String,
}

/// What an attempt needs, loaded (and the record marked `processing`) as it begins.
#[derive(Debug, Clone)]
pub struct Job {
    pub lease: Lease,
    /// The delivery as ingress stored it.
    pub delivery: NewDelivery,
    /// 1 for the first attempt (since the delivery was last queued or replayed).
    pub attempt: u32,
    /// When the delivery was queued or last replayed: `max_age` counts from here.
    pub enqueued_at: UnixMillis,
    /// Position of this attempt in the record's history.
    pub history_index: u64,
}

/// One attempt as the record's history keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The state the attempt left the delivery in; absent while (or if never) finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    pub instance: String,
}

/// How an attempt ends for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Processed,
    RetryAt(UnixMillis),
    Final,
}

impl Settlement {
    pub fn state(self) -> State {
        match self {
            Settlement::Processed => State::Processed,
            Settlement::RetryAt(_) => State::FailedRetryable,
            Settlement::Final => State::FailedFinal,
        }
    }
}

/// A record as `deliveries list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub id: String,
    pub state: State,
    pub source: String,
    pub route: String,
    pub webhook_id: String,
    pub event_type: String,
    pub attempts: u32,
    pub received_at: UnixMillis,
    pub updated_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A record with its attempt history, as `deliveries show` shows it. The body and the
/// stored header values only when asked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub enqueued_at: UnixMillis,
    pub replays: u32,
    pub history: Vec<Attempt>,
    /// Header names always; values only with the body.
    pub header_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub body: Option<RecordBody>,
}

/// A stored body as the admin API shows it: `"body"` when it is UTF-8 text (webhook
/// bodies are JSON), `"body_base64"` otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RecordBody {
    #[serde(rename = "body")]
    Text(String),
    #[serde(rename = "body_base64")]
    Base64(String),
}

impl RecordBody {
    pub fn new(raw: &[u8]) -> RecordBody {
        use base64::Engine;
        match std::str::from_utf8(raw) {
            Ok(text) => RecordBody::Text(text.to_owned()),
            Err(_) => RecordBody::Base64(base64::engine::general_purpose::STANDARD.encode(raw)),
        }
    }
}

/// `GET /deliveries`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Summary>,
}

/// `POST /deliveries/<id>/replay`, when the delivery was queued again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayAnswer {
    pub delivery_id: String,
    pub replayed: bool,
    pub was: State,
}

/// `POST /deliveries/replay?status=failed_final`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkReplayAnswer {
    pub delivery_ids: Vec<String>,
    pub replayed: usize,
}

/// An admin API refusal: `{"error": "<reason>"}`, with the delivery's state for
/// `not_replayable`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<State>,
    pub source: Option<String>,
    pub limit: usize,
}

impl ListFilter {
    pub fn matches(&self, summary: &Summary) -> bool {
        self.state.is_none_or(|s| s == summary.state)
            && self.source.as_deref().is_none_or(|s| s == summary.source)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Queued again with a fresh attempt count; it was in this state.
    Queued {
        was: State,
    },
    NotFound,
    /// Only final deliveries can be replayed; this one is still on its way.
    NotReplayable(State),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueStats {
    /// Deliveries not yet final: waiting, being attempted, or scheduled for a retry.
    pub depth: u64,
    /// How long the oldest delivery in the ready queue has been waiting there.
    pub oldest_age: Duration,
}

/// A name for this process among the workers sharing a queue: host, pid and a random part.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookgate".to_owned());
    format!("{host}-{}-{}", std::process::id(), random::hex(4))
}

/// Delivery ids: `dlv_` + 12 hex digits of milliseconds (so ids sort by time) + 16 of a
/// per-process random value plus a counter (so two instances never collide, and one
/// instance never repeats itself).
pub struct IdGenerator {
    base: u64,
    counter: AtomicU64,
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator {
            base: random::u64(),
            counter: AtomicU64::new(0),
        }
    }
}

impl IdGenerator {
    pub fn next(&self, now: UnixMillis) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let unique = self.base.wrapping_add(n);
        format!("dlv_{:012x}{unique:016x}", now & 0xffff_ffff_ffff)
    }
}

/// Ids are generated here; anything else is not one of ours (admin API input).
pub fn is_delivery_id(text: &str) -> bool {
    text.len() == 32 && text.starts_with("dlv_") && text[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------
// Headers as stored: JSON pairs of text, which is what webhook headers are.
// ---------------------------------------------------------------------------------

/// Header pairs as JSON. Values that are not visible ASCII cannot be stored as text and
/// are left out (webhook headers are ASCII; the signature covers only the body).
pub fn encode_headers(headers: &HeaderMap) -> String {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    serde_json::to_string(&pairs).expect("pairs of strings serialize")
}

/// The stored pairs back as headers; nothing stored (a processed record) is none.
pub fn decode_headers(json: &str) -> Result<HeaderMap, String> {
    if json.is_empty() {
        return Ok(HeaderMap::new());
    }
    let pairs: Vec<(String, String)> =
        serde_json::from_str(json).map_err(|e| format!("headers: {e}"))?;
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        let value = HeaderValue::from_str(&value).map_err(|e| format!("{name}: {e}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Header names, and with `values` the pairs, for `Detail`.
pub fn header_listing(
    headers: &HeaderMap,
    values: bool,
) -> (Vec<String>, Option<Vec<(String, String)>>) {
    let names = headers.keys().map(|n| n.as_str().to_owned()).collect();
    let pairs = values.then(|| {
        headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect()
    });
    (names, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in State::ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("received"), None);
        assert!(State::Processed.is_final() && State::FailedFinal.is_final());
        assert!(!State::FailedRetryable.is_final());
    }

    #[test]
    fn ids_are_unique_sortable_and_recognised() {
        let ids = IdGenerator::default();
        let (a, b) = (ids.next(1_000), ids.next(2_000));
        assert_ne!(a, b);
        assert!(a < b);
        assert!(is_delivery_id(&a), "{a}");
        assert!(!is_delivery_id("dlv_../../etc"));
        assert!(!is_delivery_id("msg_1"));
    }

    #[test]
    fn headers_survive_storage() {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("x-binary", HeaderValue::from_bytes(b"\xff").unwrap());
        let back = decode_headers(&encode_headers(&h)).unwrap();
        assert_eq!(back["webhook-id"], "msg_1");
        assert_eq!(back.get_all("x-multi").iter().count(), 2);
        assert!(back.get("x-binary").is_none());
    }

    #[test]
    fn records_read_back_as_the_admin_api_writes_them() {
        let summary = Summary {
            id: "dlv_1".into(),
            state: State::FailedFinal,
            source: "openai".into(),
            route: "0".into(),
            webhook_id: "msg_1".into(),
            event_type: "response.completed".into(),
            attempts: 3,
            received_at: 1,
            updated_at: 2,
            next_attempt_at: None,
            last_status: Some(500),
            last_error: Some("the upstream answered 500".into()),
        };
        for body in [
            None,
            Some(RecordBody::new(b"{}")),
            Some(RecordBody::new(b"\xff")),
        ] {
            let detail = Detail {
                summary: summary.clone(),
                enqueued_at: 1,
                replays: 0,
                history: Vec::new(),
                header_names: vec!["webhook-id".into()],
                headers: body
                    .as_ref()
                    .map(|_| vec![("webhook-id".into(), "msg_1".into())]),
                body,
            };
            let json = serde_json::to_value(&detail).unwrap();
            assert_eq!(json["state"], "failed_final");
            let back: Detail = serde_json::from_value(json).unwrap();
            assert_eq!(back, detail);
        }
        assert_eq!(
            serde_json::to_value(Detail {
                summary,
                enqueued_at: 1,
                replays: 0,
                history: Vec::new(),
                header_names: Vec::new(),
                headers: None,
                body: Some(RecordBody::new(b"\xff")),
            })
            .unwrap()["body_base64"],
            "/w=="
        );
    }
}
