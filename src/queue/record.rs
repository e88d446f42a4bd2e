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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Padded as asked (`{:<16}`): `deliveries list`'s columns slid left without it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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
    /// The W3C `traceparent` of the request that stored it, when tracing was on: every
    /// attempt, by any instance, is a span in that trace. Kept with the record as is.
    pub trace_context: Option<String>,
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
    /// The object an `enrich` route delivers with the event, once fetched: kept with the
    /// record like its body, so later attempts do not fetch it again.
    pub object: Option<Bytes>,
    /// Fetches of that object that failed since the delivery was (re)queued: they space
    /// the next fetch by the backoff, and are not attempts.
    pub failed_fetches: u32,
}

/// What an entry of a record's history records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// An attempt to deliver to the route's upstream, counted in `attempts`.
    #[default]
    Deliver,
    /// The fetch of the object an `enrich` route delivers, before an attempt. Never
    /// counted as an attempt: the count `begin` made is taken back when it fails.
    Fetch,
}

impl Step {
    pub fn is_deliver(&self) -> bool {
        *self == Step::Deliver
    }
}

impl Attempt {
    /// Attempt number `attempt` as its history entry reads while it runs, from `now`.
    pub fn opened(attempt: u32, now: UnixMillis, instance: &str) -> Attempt {
        Attempt {
            attempt,
            step: Step::Deliver,
            started_at: now,
            duration_ms: None,
            status: None,
            error: None,
            result: None,
            instance: instance.to_owned(),
            answer: None,
            trace_id: None,
        }
    }
}

/// One attempt (or the fetch before it) as the record's history keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    /// Absent for a delivery attempt (and in records written before steps existed).
    #[serde(default, skip_serializing_if = "Step::is_deliver")]
    pub step: Step,
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
    /// The start of the upstream's answer body, as it said it (control characters
    /// removed, at most `ANSWER_START_CHARS`); absent when it answered nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The trace the attempt's span is in, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// How much of an upstream's answer an attempt keeps: enough to see why ("invalid
/// customer id"), bounded so a record stays small.
pub const ANSWER_START_CHARS: usize = 200;

/// The start of an answer body as an attempt keeps it; `None` for an empty body.
pub fn answer_start(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(ANSWER_START_CHARS * 4)]);
    Some(
        text.chars()
            .filter(|c| !c.is_control())
            .take(ANSWER_START_CHARS)
            .collect(),
    )
}

/// What `Queue::defer` did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// It waits for its time (or was not this instance's to defer any more).
    Waiting,
    /// Its time was past `queue.max_age`: dead-lettered without an attempt, after
    /// `attempts` earlier ones (for `hookgate_delivery_attempts`).
    DeadLettered { attempts: u32 },
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
    /// With the body: the object fetched for an `enrich` route (the API's JSON), while
    /// the record keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Asked for the body of a processed record, which no longer has it (nor its
    /// headers): said, rather than shown as an empty body the sender never sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_dropped: bool,
}

impl Detail {
    /// The record as the API shows it: a processed one's body and headers are gone.
    pub fn as_shown(mut self) -> Detail {
        if self.summary.state == State::Processed && self.body.is_some() {
            self.body = None;
            self.headers = None;
            self.body_dropped = true;
        }
        self
    }

    /// The history, each entry with its result as shown: the state it left, or for an
    /// entry without one whether it is still running (the last entry of a delivery being
    /// attempted) or its instance stopped in it (the record was not written on the
    /// instance's way out).
    pub fn history_shown(&self) -> impl Iterator<Item = (&Attempt, &str)> {
        let last = self.history.len().saturating_sub(1);
        let processing = self.summary.state == State::Processing;
        self.history.iter().enumerate().map(move |(i, a)| {
            let result = match (&a.result, processing && i == last) {
                (Some(result), _) => result.as_str(),
                (None, true) => "(in progress)",
                (None, false) => "(did not end: its instance stopped)",
            };
            (a, result)
        })
    }
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

/// One page of `Queue::list`, as `GET /deliveries` answers it: the matching records,
/// newest first, and where the next page starts when there may be more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Summary>,
    /// Present when records past this page may match: pass it as `ListFilter::after`
    /// (`cursor=` in the API). A page may hold fewer than `limit` records and still
    /// have a `next` (a backend bounds the work one page may do); following `next`
    /// until it is absent yields every match once, never one twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Cursor>,
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

/// What `Queue::list` returns: records matching every field that is set, newest first.
///
/// "Newest" is by the time a delivery was queued: when it was received, or when it was
/// last replayed (a replayed dead letter moves to the top); ties by id, descending.
/// `since` and `until` bound that same time, so a window and the order agree and a
/// backend can answer both from one index. Every filter is an exact match.
///
/// A backend must answer in bounded time with hundreds of thousands of records: it
/// narrows by an index per field rather than reading every record, and may end a page
/// early with a `next` cursor (see `DeliveryList::next`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<State>,
    pub source: Option<String>,
    /// A route's name (as `Summary::route`); with `source`, one route of one source.
    pub route: Option<String>,
    pub event_type: Option<String>,
    /// A delivery id or a sender's webhook id (`Summary::webhook_id`): the records
    /// whose either one is this.
    pub search: Option<String>,
    /// Queued at or after this time.
    pub since: Option<UnixMillis>,
    /// Queued before this time.
    pub until: Option<UnixMillis>,
    /// Continue after this position: the `next` of the previous page.
    pub after: Option<Cursor>,
    /// At most this many records (at least 1).
    pub limit: usize,
}

impl ListFilter {
    /// Whether a text filter holds a NUL, which no stored source, route, event type or
    /// id holds: nothing matches (and PostgreSQL refuses such a parameter outright).
    pub fn matches_nothing(&self) -> bool {
        [&self.source, &self.route, &self.event_type, &self.search]
            .into_iter()
            .flatten()
            .any(|text| text.contains('\0'))
    }

    /// Whether `summary` matches the fields of the filter that a summary carries (all
    /// but the time window and the cursor, which are positions in the order).
    pub fn matches(&self, summary: &Summary) -> bool {
        self.state.is_none_or(|s| s == summary.state)
            && self.source.as_deref().is_none_or(|s| s == summary.source)
            && self.route.as_deref().is_none_or(|r| r == summary.route)
            && self
                .event_type
                .as_deref()
                .is_none_or(|e| e == summary.event_type)
            && self
                .search
                .as_deref()
                .is_none_or(|q| q == summary.id || q == summary.webhook_id)
    }

    /// Whether a record at `position` in the order (queued at, id) lies after the
    /// cursor and inside the time window.
    pub fn admits(&self, queued_at: UnixMillis, id: &str) -> bool {
        self.since.is_none_or(|since| queued_at >= since)
            && self.until.is_none_or(|until| queued_at < until)
            && self
                .after
                .as_ref()
                .is_none_or(|c| (queued_at, id) < (c.queued_at, c.id.as_str()))
    }
}

/// What a list request can carry as query parameters (`GET /deliveries`, the console's
/// list), each an exact match and empty meaning "any": `status`, `source`, `route`
/// (with `upstream`, one upstream's copies of a fan-out route: `<route>/<upstream>`),
/// `event_type`, `search` (a delivery id or webhook id), `since` and `until` (RFC 3339
/// or Unix milliseconds), `cursor` (a page's `next`) and `limit` (1 to `max_limit`,
/// else `default_limit`). An error is the reason to answer 400 with.
pub fn list_filter<'q>(
    get: impl Fn(&str) -> Option<&'q str>,
    default_limit: usize,
    max_limit: usize,
) -> Result<ListFilter, &'static str> {
    let given = |key: &str| get(key).filter(|v| !v.is_empty());
    let text = |key: &str| given(key).map(str::to_owned);
    let state = match given("status") {
        Some(text) => Some(State::parse(text).ok_or("unknown_status")?),
        None => None,
    };
    let time = |key: &str, reason| match given(key) {
        Some(text) => parse_time(text).map(Some).ok_or(reason),
        None => Ok(None),
    };
    let after = match given("cursor") {
        Some(text) => Some(Cursor::parse(text).ok_or("invalid_cursor")?),
        None => None,
    };
    let limit = match given("limit") {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max_limit).contains(n))
            .ok_or("invalid_limit")?,
        None => default_limit,
    };
    // A fan-out route's copies are stored as `<route>/<upstream>` (`Route::copies`).
    let route = match (text("route"), given("upstream")) {
        (Some(route), Some(upstream)) => Some(format!("{route}/{upstream}")),
        (None, Some(_)) => return Err("upstream_needs_route"),
        (route, None) => route,
    };
    Ok(ListFilter {
        state,
        source: text("source"),
        route,
        event_type: text("event_type"),
        search: text("search"),
        since: time("since", "invalid_since")?,
        until: time("until", "invalid_until")?,
        after,
        limit,
    })
}

/// The last millisecond of the year 9999: RFC 3339 writes no later time, so a page could
/// not show one.
pub const LATEST_TIME: UnixMillis = 253_402_300_799_999;

/// RFC 3339 (`2026-11-20T10:00:00Z`, `2026-11-20T12:00:00+02:00`; also with a space
/// for the `T`) or Unix milliseconds, from 1970 to the end of the year 9999.
pub fn parse_time(text: &str) -> Option<UnixMillis> {
    let ms = match text.parse::<UnixMillis>() {
        Ok(ms) => ms,
        Err(_) => {
            match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            {
                Ok(at) => UnixMillis::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?,
                Err(_) => unix_millis(humantime::parse_rfc3339_weak(text).ok()?)?,
            }
        }
    };
    (ms <= LATEST_TIME).then_some(ms)
}

/// A position in the list's order: the last record a page looked at. Written
/// `<queued at ms>-<delivery id>` (what the API's `next` and `cursor=` carry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cursor {
    pub queued_at: UnixMillis,
    pub id: String,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Cursor> {
        let (at, id) = text.split_once('-')?;
        let queued_at = at.parse().ok().filter(|&at| at <= LATEST_TIME)?;
        is_delivery_id(id).then(|| Cursor {
            queued_at,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.queued_at, self.id)
    }
}

impl From<Cursor> for String {
    fn from(cursor: Cursor) -> String {
        cursor.to_string()
    }
}

impl TryFrom<String> for Cursor {
    type Error = String;
    fn try_from(text: String) -> Result<Cursor, String> {
        Cursor::parse(&text).ok_or_else(|| format!("not a list cursor: {text:?}"))
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
    /// It lives in a partition past `queue.partitions` (lowered since): queued there
    /// again, it would never be taken.
    PartitionNotTaken {
        partition: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueStats {
    /// Deliveries not yet final: waiting, being attempted, or scheduled for a retry.
    pub depth: u64,
    /// How long the oldest delivery in the ready queue has been waiting there.
    pub oldest_age: Duration,
    /// `failed_final` records kept (within the retention): the dead letters.
    pub dead_letters: u64,
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

    /// An id for a delivery stored in `partition` of a partitioned queue (Redis with
    /// `queue.partitions` > 1): partition 0's ids are those of `next`, so records
    /// written before partitions existed are partition 0's; the others end with
    /// `_p<partition>`, so the id alone says where its record lives (`partition_of`).
    pub fn next_in(&self, now: UnixMillis, partition: usize) -> String {
        let id = self.next(now);
        if partition == 0 {
            id
        } else {
            format!("{id}_p{partition}")
        }
    }
}

/// The highest partition an id may name (`queue.partitions` is at most 1024).
const MAX_PARTITION: usize = 1023;

/// Ids are generated here; anything else is not one of ours (admin API input).
pub fn is_delivery_id(text: &str) -> bool {
    // Bytes first: a character of several bytes across byte 32 must not be sliced (a
    // cursor or path of the admin API ended its connection with a panic). Once bytes
    // 4..32 are ASCII, byte 32 begins a character.
    let bytes = text.as_bytes();
    bytes.len() >= 32
        && bytes.starts_with(b"dlv_")
        && bytes[4..32].iter().all(u8::is_ascii_hexdigit)
        && (bytes.len() == 32 || partition_suffix(&text[32..]).is_some())
}

/// The partition a delivery id (`IdGenerator::next_in`) names: 0 without a suffix.
pub fn partition_of(id: &str) -> usize {
    id.get(32..).and_then(partition_suffix).unwrap_or(0)
}

/// `_p<n>` with 1 <= n <= `MAX_PARTITION`, written as `next_in` writes it (no leading
/// zero), so one partition has one spelling.
fn partition_suffix(suffix: &str) -> Option<usize> {
    let digits = suffix.strip_prefix("_p")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PARTITION).contains(n))
}

// ---------------------------------------------------------------------------------
// Headers as stored: JSON pairs of text, which is what webhook headers are.
// ---------------------------------------------------------------------------------

/// Header pairs as JSON: `[name, value]`, or `[name, base64 of the value, "base64"]` for
/// a value that is not UTF-8. Every value is kept, as proxy mode forwards every value: a
/// header with a non-ASCII value (`X-Note: Zürich`) reached the backend in proxy mode and
/// was silently left out in queue mode.
pub fn encode_headers(headers: &HeaderMap) -> String {
    use base64::Engine;
    let pairs: Vec<StoredPair> = headers
        .iter()
        .map(
            |(name, value)| match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => StoredPair::Text(name.as_str().to_owned(), text.to_owned()),
                Err(_) => StoredPair::Bytes(
                    name.as_str().to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(value.as_bytes()),
                    BASE64.to_owned(),
                ),
            },
        )
        .collect();
    serde_json::to_string(&pairs).expect("pairs of strings serialize")
}

const BASE64: &str = "base64";

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredPair {
    Text(String, String),
    Bytes(String, String, String),
}

/// The stored pairs back as headers; nothing stored (a processed record) is none.
pub fn decode_headers(json: &str) -> Result<HeaderMap, String> {
    use base64::Engine;
    if json.is_empty() {
        return Ok(HeaderMap::new());
    }
    let pairs: Vec<StoredPair> = serde_json::from_str(json).map_err(|e| format!("headers: {e}"))?;
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for pair in pairs {
        let (name, value) = match pair {
            StoredPair::Text(name, value) => (name, value.into_bytes()),
            StoredPair::Bytes(name, value, encoding) if encoding == BASE64 => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|e| format!("{name}: {e}"))?;
                (name, bytes)
            }
            StoredPair::Bytes(name, _, encoding) => {
                return Err(format!("{name}: unknown encoding {encoding:?}"));
            }
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        let value = HeaderValue::from_bytes(&value).map_err(|e| format!("{name}: {e}"))?;
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
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), value)
            })
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
    fn an_id_names_its_partition_and_partition_zero_ids_are_unchanged() {
        let ids = IdGenerator::default();
        let zero = ids.next_in(1_000, 0);
        assert_eq!(zero.len(), 32);
        assert_eq!(partition_of(&zero), 0);
        for partition in [1, 5, 1023] {
            let id = ids.next_in(1_000, partition);
            assert!(is_delivery_id(&id), "{id}");
            assert_eq!(partition_of(&id), partition);
            assert_eq!(Cursor::parse(&format!("7-{id}")).map(|c| c.id), Some(id));
        }
        for wrong in ["_p0", "_p01", "_p1024", "_p", "_px", "_q1", "_p1_p2"] {
            let id = format!("{zero}{wrong}");
            assert!(!is_delivery_id(&id), "{id}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_unix_milliseconds() {
        assert_eq!(parse_time("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
        // Any offset, not only `Z` (the README says RFC 3339).
        assert_eq!(
            parse_time("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14 22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        // Past the year 9999 no page can write it (the console panicked).
        assert_eq!(parse_time("253402300799999"), Some(LATEST_TIME));
        assert_eq!(parse_time("253402300800000"), None);
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn a_list_query_becomes_a_filter_or_names_what_is_wrong() {
        let query = |pairs: &'static [(&'static str, &'static str)]| {
            list_filter(
                |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v),
                50,
                1000,
            )
        };
        let filter = query(&[
            ("status", "failed_final"),
            ("source", "openai"),
            ("route", ""),
            ("event_type", "invoice.paid"),
            ("search", "msg_1"),
            ("since", "2023-11-14T22:13:20Z"),
            ("until", "1700000001000"),
            ("cursor", "1700000000500-dlv_0000000000010000000000000001"),
            ("limit", "7"),
        ])
        .unwrap();
        assert_eq!(filter.state, Some(State::FailedFinal));
        assert_eq!(filter.source.as_deref(), Some("openai"));
        assert_eq!(filter.route, None, "empty is any");
        assert_eq!(filter.event_type.as_deref(), Some("invoice.paid"));
        assert_eq!(filter.search.as_deref(), Some("msg_1"));
        assert_eq!(
            (filter.since, filter.until),
            (Some(1_700_000_000_000), Some(1_700_000_001_000))
        );
        assert_eq!(filter.after.unwrap().queued_at, 1_700_000_000_500);
        assert_eq!(filter.limit, 7);
        assert_eq!(query(&[]).unwrap().limit, 50);
        assert_eq!(query(&[("status", "lost")]), Err("unknown_status"));
        assert_eq!(query(&[("since", "yesterday")]), Err("invalid_since"));
        assert_eq!(query(&[("until", "soon")]), Err("invalid_until"));
        assert_eq!(query(&[("cursor", "dlv_1")]), Err("invalid_cursor"));
        assert_eq!(query(&[("limit", "0")]), Err("invalid_limit"));
        assert_eq!(query(&[("limit", "1001")]), Err("invalid_limit"));
        assert_eq!(
            query(&[("route", "batches"), ("upstream", "audit")])
                .unwrap()
                .route
                .as_deref(),
            Some("batches/audit")
        );
        assert_eq!(query(&[("upstream", "audit")]), Err("upstream_needs_route"));
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_is_not_one() {
        let cursor = Cursor {
            queued_at: 1_700_000_000_000,
            id: "dlv_0000000000010000000000000001".to_owned(),
        };
        let text = cursor.to_string();
        assert_eq!(text, "1700000000000-dlv_0000000000010000000000000001");
        assert_eq!(Cursor::parse(&text), Some(cursor.clone()));
        let json = serde_json::to_value(&cursor).unwrap();
        assert_eq!(json, text.as_str());
        assert_eq!(serde_json::from_value::<Cursor>(json).unwrap(), cursor);
        for bad in [
            "",
            "1700",
            "x-dlv_0000000000010000000000000001",
            "1-msg_1",
            "1-dlv_../x",
            // A character of two bytes across byte 32 of the id.
            "1-dlv_000000000000000000000000000\u{e9}",
            "1-dlv_\u{e9}00000000000000000000000000",
            // Past the year 9999 (PostgreSQL refused it, 503; u64::MAX wrapped to 1969).
            "253402300800000-dlv_0000000000010000000000000001",
            "18446744073709551615-dlv_0000000000010000000000000001",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_filter_admits_what_lies_after_the_cursor_inside_the_window() {
        let id = |n: u8| format!("dlv_00000000000{n}0000000000000000");
        let filter = ListFilter {
            since: Some(10),
            until: Some(20),
            after: Some(Cursor {
                queued_at: 15,
                id: id(5),
            }),
            ..ListFilter::default()
        };
        assert!(filter.admits(15, &id(4)));
        assert!(
            !filter.admits(15, &id(5)),
            "the cursor's own record was shown"
        );
        assert!(!filter.admits(15, &id(6)));
        assert!(filter.admits(10, &id(9)));
        assert!(!filter.admits(9, &id(1)));
        assert!(!filter.admits(16, &id(1)));
        let window = ListFilter {
            until: Some(20),
            ..ListFilter::default()
        };
        assert!(window.admits(19, &id(1)) && !window.admits(20, &id(1)));
    }

    #[test]
    fn an_answer_keeps_its_start_without_control_characters() {
        assert_eq!(answer_start(b""), None);
        assert_eq!(answer_start(b"ok\r\n").as_deref(), Some("ok"));
        let long = "x".repeat(1000);
        assert_eq!(
            answer_start(long.as_bytes()).unwrap().len(),
            ANSWER_START_CHARS
        );
        assert_eq!(answer_start(b"\xff!").as_deref(), Some("\u{fffd}!"));
    }

    #[test]
    fn headers_survive_storage() {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("x-binary", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        h.insert("x-note", HeaderValue::from_str("Zürich").unwrap());
        let stored = encode_headers(&h);
        assert!(stored.contains(r#"["x-note","Zürich"]"#), "{stored}");
        let back = decode_headers(&stored).unwrap();
        assert_eq!(back, h, "every value as it came, in order");
        // Records stored before values that are not UTF-8 were kept read as before.
        let old = decode_headers(r#"[["webhook-id","msg_1"],["x-multi","a"]]"#).unwrap();
        assert_eq!(old["webhook-id"], "msg_1");
        assert!(decode_headers(r#"[["x","AA==","rot13"]]"#).is_err());
    }

    #[test]
    fn a_fetch_step_says_so_and_an_attempt_reads_as_before() {
        let fetch = Attempt {
            attempt: 1,
            step: Step::Fetch,
            started_at: 5,
            duration_ms: Some(3),
            status: Some(429),
            error: Some("the OpenAI API answered 429".into()),
            result: Some("failed_retryable".into()),
            instance: "i".into(),
            answer: None,
            trace_id: None,
        };
        let json = serde_json::to_value(&fetch).unwrap();
        assert_eq!(json["step"], "fetch");
        assert_eq!(serde_json::from_value::<Attempt>(json).unwrap(), fetch);
        let written_before_steps = r#"{"attempt":2,"started_at":7,"instance":"i"}"#;
        let attempt: Attempt = serde_json::from_str(written_before_steps).unwrap();
        assert_eq!(attempt.step, Step::Deliver);
        assert_eq!(
            serde_json::to_string(&attempt).unwrap(),
            written_before_steps,
            "no step written for an attempt"
        );
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
                object: body.as_ref().map(|_| r#"{"id":"resp_1"}"#.into()),
                body,
                body_dropped: false,
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
                object: None,
                body_dropped: false,
            })
            .unwrap()["body_base64"],
            "/w=="
        );
    }
}
