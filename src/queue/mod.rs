//! Queue mode: accept a verified delivery at once, store it durably, deliver it later
//! with retries.
//!
//! Ingress (`pipeline`) appends a `NewDelivery` and answers 202; the workers
//! (`worker.rs`) take deliveries, attempt them through the same `Forwarder` as proxy mode
//! and settle each attempt as processed, retry-later or final-failed. This module owns
//! the vocabulary (states, records, leases), the `Queue` trait both backends implement
//! (`memory.rs`, `redis.rs`, chosen in `build`), and the retry policy as pure functions
//! (`BackoffPolicy::delay`, `RetryOn`, `decide`) that take time as a value.
//! It does not know HTTP: the admin API and the CLI render what it returns.

pub mod memory;
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

use crate::config::{QueueSettings, Settings};
use crate::metrics::Metrics;
use crate::store::redis::RedisConnection;
use crate::store::{BoxFuture, StoreError};

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

// ---------------------------------------------------------------------------------
// Policy: pure functions over plain values
// ---------------------------------------------------------------------------------

/// `queue.backoff`: the wait after the nth failed attempt is `initial * 2^(n-1)`, capped
/// at `max`; with `jitter`, a random point in its upper half ("equal jitter"), so
/// retries of many deliveries failed together spread out yet never come sooner than half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl BackoffPolicy {
    /// The wait after failed attempt number `failed` (1 for the first). `sample` is a
    /// uniform random number in [0, 1), used only with jitter.
    pub fn delay(&self, failed: u32, sample: f64) -> Duration {
        let doublings = failed.saturating_sub(1).min(32);
        let full = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        if !self.jitter {
            return full;
        }
        let half = full / 2;
        half + (full - half).mul_f64(sample.clamp(0.0, 1.0))
    }
}

/// How an attempt went, as the retry policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered 2xx.
    Delivered(u16),
    /// The upstream answered with this non-2xx status.
    Status(u16),
    /// No connection, or the connection broke before an answer.
    Connect,
    /// No answer within `limits.upstream_timeout`.
    Timeout,
}

/// `queue.retry_on`: which failed attempts are retried; everything else is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// Status classes by leading digit (index 1 = 1xx ... 5 = 5xx).
    classes: [bool; 6],
    codes: Vec<u16>,
    connect: bool,
    timeout: bool,
    written: Vec<String>,
}

impl RetryOn {
    /// Entries: `"5xx"` (any class 1xx..5xx), an exact status (`"429"`), `"connect"`,
    /// `"timeout"`. On error, the index of the bad entry and why.
    pub fn parse(entries: &[String]) -> Result<RetryOn, (usize, String)> {
        let mut on = RetryOn {
            classes: [false; 6],
            codes: Vec::new(),
            connect: false,
            timeout: false,
            written: entries.to_vec(),
        };
        for (i, entry) in entries.iter().enumerate() {
            let bytes = entry.as_bytes();
            match entry.as_str() {
                "connect" => on.connect = true,
                "timeout" => on.timeout = true,
                _ if bytes.len() == 3
                    && (b'1'..=b'5').contains(&bytes[0])
                    && &bytes[1..] == b"xx" =>
                {
                    on.classes[usize::from(bytes[0] - b'0')] = true;
                }
                _ => match entry.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) && entry.len() == 3 => {
                        if (200..300).contains(&code) {
                            return Err((i, format!("{entry:?}: a 2xx answer is a success")));
                        }
                        on.codes.push(code);
                    }
                    _ => {
                        return Err((
                            i,
                            format!(
                                "{entry:?} is not \"5xx\"-style class, a status code, \"connect\" or \"timeout\""
                            ),
                        ));
                    }
                },
            }
        }
        Ok(on)
    }

    pub fn retries(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Delivered(_) => false,
            Outcome::Connect => self.connect,
            Outcome::Timeout => self.timeout,
            Outcome::Status(code) => {
                self.codes.contains(&code) || self.classes[usize::from(code / 100).min(5)]
            }
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.written.join(", "))
    }
}

/// Why a delivery will not be attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalReason {
    NotRetryable,
    MaxAttempts,
    MaxAge,
}

impl FinalReason {
    pub fn describe(self) -> &'static str {
        match self {
            FinalReason::NotRetryable => "not retryable (queue.retry_on)",
            FinalReason::MaxAttempts => "queue.max_attempts reached",
            FinalReason::MaxAge => "queue.max_age reached",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Processed,
    Retry { delay: Duration },
    Final(FinalReason),
}

/// What follows attempt number `attempt` that ended in `outcome`, `age` after the
/// delivery was queued. A retry that would start past `max_age` is not scheduled.
pub fn decide(
    policy: &QueueSettings,
    attempt: u32,
    outcome: Outcome,
    age: Duration,
    sample: f64,
) -> Verdict {
    if let Outcome::Delivered(_) = outcome {
        return Verdict::Processed;
    }
    if !policy.retry_on.retries(outcome) {
        return Verdict::Final(FinalReason::NotRetryable);
    }
    if attempt >= policy.max_attempts {
        return Verdict::Final(FinalReason::MaxAttempts);
    }
    let delay = policy.backoff.delay(attempt, sample);
    if age + delay > policy.max_age {
        return Verdict::Final(FinalReason::MaxAge);
    }
    Verdict::Retry { delay }
}

/// A uniform sample in [0, 1) for jitter: not cryptographic, only spread.
pub fn jitter_sample() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn policy(max_attempts: u32, jitter: bool) -> QueueSettings {
        QueueSettings {
            workers: 4,
            max_attempts,
            backoff: BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter,
            },
            max_age: Duration::from_secs(3600),
            retention: Duration::from_secs(86400),
            retry_on: RetryOn::parse(&strings(&["5xx", "408", "429", "connect", "timeout"]))
                .unwrap(),
            visibility_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_doubles_from_initial_and_stops_at_max() {
        let b = policy(12, false).backoff;
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n, 0.5).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(1000, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_delay() {
        let b = policy(12, true).backoff;
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(3));
        assert!(b.delay(3, 0.999_999) <= Duration::from_secs(4));
        assert!(b.delay(100, 0.999_999) <= Duration::from_secs(60));
        for _ in 0..1000 {
            let s = jitter_sample();
            assert!((0.0..1.0).contains(&s));
        }
    }

    #[test]
    fn retry_on_classes_codes_connect_and_timeout() {
        let on = policy(3, false).retry_on;
        assert!(on.retries(Outcome::Status(500)));
        assert!(on.retries(Outcome::Status(503)));
        assert!(on.retries(Outcome::Status(408)));
        assert!(on.retries(Outcome::Status(429)));
        assert!(on.retries(Outcome::Connect));
        assert!(on.retries(Outcome::Timeout));
        assert!(!on.retries(Outcome::Status(400)));
        assert!(!on.retries(Outcome::Status(410)));
        assert!(!on.retries(Outcome::Status(302)));
        assert!(!on.retries(Outcome::Delivered(200)));
        let none = RetryOn::parse(&[]).unwrap();
        assert!(!none.retries(Outcome::Connect));
    }

    #[test]
    fn retry_on_rejects_what_it_does_not_know_with_the_index() {
        assert_eq!(RetryOn::parse(&strings(&["5xx", "50x"])).unwrap_err().0, 1);
        assert!(
            RetryOn::parse(&strings(&["204"]))
                .unwrap_err()
                .1
                .contains("success")
        );
        assert!(RetryOn::parse(&strings(&["6xx"])).is_err());
        assert!(RetryOn::parse(&strings(&["1000"])).is_err());
        assert!(RetryOn::parse(&strings(&["Connect"])).is_err());
    }

    #[test]
    fn decide_follows_the_policy_in_order() {
        let p = policy(3, false);
        let young = Duration::from_secs(10);
        assert_eq!(
            decide(&p, 1, Outcome::Delivered(204), young, 0.0),
            Verdict::Processed
        );
        assert_eq!(
            decide(&p, 1, Outcome::Status(500), young, 0.0),
            Verdict::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            decide(&p, 2, Outcome::Timeout, young, 0.0),
            Verdict::Retry {
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(
            decide(&p, 3, Outcome::Status(500), young, 0.0),
            Verdict::Final(FinalReason::MaxAttempts)
        );
        assert_eq!(
            decide(&p, 1, Outcome::Status(400), young, 0.0),
            Verdict::Final(FinalReason::NotRetryable)
        );
        // The next attempt would start past max_age (1 h): final now, not later.
        assert_eq!(
            decide(&p, 1, Outcome::Connect, Duration::from_secs(3600), 0.0),
            Verdict::Final(FinalReason::MaxAge)
        );
    }

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
