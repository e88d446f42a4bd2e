//! Queue mode: accept a verified delivery at once, store it durably, deliver it later
//! with retries.
//!
//! Ingress (`pipeline`) appends a `NewDelivery` and answers 202; the workers
//! (`worker.rs`) take deliveries, attempt them through the same `Forwarder` as proxy mode
//! and settle each attempt as processed, retry-later or final-failed. This module owns
//! the vocabulary (states, records, leases), the `Queue` trait both backends implement
//! (`memory.rs`, `redis.rs`, chosen in `build`); the retry policy, pure functions that
//! take time as a value (`BackoffPolicy::delay`, `RetryOn`, `decide`), is `policy.rs`.
//! It does not know HTTP: the admin API and the CLI render what it returns.

pub mod memory;
pub mod policy;
pub mod redis;
pub mod worker;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::redis::RedisConnection;
use crate::store::{BoxFuture, StoreError};

pub use policy::{
    BackoffPolicy, FinalReason, Outcome, RetryOn, RetryPolicy, Verdict, decide, jitter_sample,
};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub source: String,
    pub route: String,
    pub webhook_id: String,
    pub event_type: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// 1 for the first attempt (since the delivery was last queued or replayed).
    pub attempt: u32,
    /// When the delivery was queued or last replayed: `max_age` counts from here.
    pub enqueued_at: UnixMillis,
    /// Position of this attempt in the record's history.
    pub history_index: u64,
}

/// One attempt as the record's history keeps it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<UnixMillis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A record with its attempt history, as `deliveries show` shows it. The body and the
/// stored header values only when asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub enqueued_at: UnixMillis,
    pub replays: u32,
    pub history: Vec<Attempt>,
    /// Header names always; values only with the body.
    pub header_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
    #[serde(skip)]
    pub body: Option<Bytes>,
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("queue record {id} is malformed: {detail}")]
    Malformed { id: String, detail: String },
}

/// A queue backend. Every method is one short store operation; policy lives in the
/// caller. Implementations: `memory::MemoryQueue`, `redis::RedisQueue`.
pub trait Queue: Send + Sync {
    /// Stores the delivery and its `queued` record in one step; returns its id.
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<String, QueueError>>;

    /// Takes up to `max` deliveries for this instance: due retries, deliveries another
    /// instance took and stopped renewing, and new ones.
    fn take(&self, max: usize, now: UnixMillis) -> BoxFuture<'_, Result<Vec<Lease>, QueueError>>;

    /// Marks the delivery `processing`, counts the attempt and loads what it needs.
    /// `None` when it is already final or gone: the lease is dropped.
    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Option<Job>, QueueError>>;

    /// Records the attempt and moves the delivery on; releases the lease.
    fn settle<'a>(
        &'a self,
        job: &'a Job,
        attempt: &'a Attempt,
        settlement: Settlement,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Makes a taken delivery available to any instance again at once (shutdown).
    /// `interrupted` is the attempt that was cut short, if one had begun.
    fn hand_back<'a>(
        &'a self,
        lease: &'a Lease,
        interrupted: Option<(&'a Job, &'a Attempt)>,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Renews this instance's hold on `leases`, so no other instance takes them over.
    fn keep_alive<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Forgets other instances that hold nothing and have been idle for `idle`
    /// (stopped ones); returns how many.
    fn prune(&self, idle: Duration) -> BoxFuture<'_, Result<u64, QueueError>>;

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<Summary>, QueueError>>;

    fn show<'a>(
        &'a self,
        id: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Detail>, QueueError>>;

    fn replay<'a>(
        &'a self,
        id: &'a str,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Replayed, QueueError>>;

    /// Ids of `failed_final` deliveries that failed at or after `since`, oldest first.
    fn failed_since(&self, since: UnixMillis) -> BoxFuture<'_, Result<Vec<String>, QueueError>>;

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>>;

    /// False for the in-memory queue: everything in it is lost when the process ends.
    fn durable(&self) -> bool;

    fn describe(&self) -> String;
}

/// The queue the settings ask for, beside the store: Redis Streams when the store is
/// Redis, in memory otherwise. `None` without queue sources. On Redis, ingress enqueues
/// on the store's connection and the workers get a second one of their own, so a busy
/// worker pipeline never delays a sender's answer.
pub fn build(
    settings: &Settings,
    redis: Option<Arc<RedisConnection>>,
    metrics: Arc<Metrics>,
    instance: &str,
) -> Option<Arc<dyn Queue>> {
    let queue = settings.queue.as_ref()?;
    Some(match (redis, &settings.store.backend) {
        (Some(connection), crate::config::StoreBackend::Redis(redis_settings)) => {
            let redis_queue = self::redis::RedisQueue::new(
                connection,
                &redis_settings.key_prefix,
                queue,
                instance,
            );
            Arc::new(match RedisConnection::new(redis_settings, metrics) {
                Ok(workers) => redis_queue.with_worker_connection(Arc::new(workers)),
                Err(_) => redis_queue,
            })
        }
        _ => Arc::new(memory::MemoryQueue::new(queue.retention, instance)),
    })
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
    let random = RandomState::new().hash_one(now_millis()) as u32;
    format!("{host}-{}-{random:08x}", std::process::id())
}

/// Delivery ids: `dlv_` + 12 hex digits of milliseconds (so ids sort by time) + 16 of a
/// per-process random value mixed with a counter (so two instances never collide).
pub struct IdGenerator {
    hasher: RandomState,
    counter: AtomicU64,
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator {
            hasher: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }
}

impl IdGenerator {
    pub fn next(&self, now: UnixMillis) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let random = self.hasher.hash_one(n);
        format!("dlv_{:012x}{random:016x}", now & 0xffff_ffff_ffff)
    }
}

/// Ingress' handle: enqueue, then wake this instance's workers so a delivery does not
/// wait for their next poll.
#[derive(Clone)]
pub struct Ingress {
    pub queue: Arc<dyn Queue>,
    pub wake: Arc<Notify>,
}

impl Ingress {
    pub async fn enqueue(&self, delivery: NewDelivery) -> Result<String, QueueError> {
        let id = self.queue.enqueue(delivery).await?;
        self.wake.notify_one();
        Ok(id)
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
}
