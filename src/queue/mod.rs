//! Queue mode: accept a verified delivery at once, store it durably, deliver it later
//! with retries.
//!
//! Ingress (`pipeline`) appends a `NewDelivery` and answers 202; the workers
//! (`worker.rs`) take deliveries, attempt them through the same `Forwarder` as proxy mode
//! and settle each attempt as processed, retry-later or final-failed. `record.rs` holds
//! the vocabulary (states, records, leases, the admin API's answers); this file the
//! `Queue` trait every backend implements (`memory.rs`, `redis.rs`, chosen in `build`)
//! and the retry policy as pure functions (`BackoffPolicy::delay`, `RetryOn`, `decide`)
//! that take time as a value. It does not know HTTP: the admin API and the CLI render
//! what it returns.

pub mod memory;
pub mod record;
pub mod redis;
pub mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{QueueSettings, Settings, StoreBackend};
use crate::metrics::Metrics;
use crate::random;
use crate::store::{Backend, BoxFuture, Shared, StoreError};
use crate::upstream::UpstreamOutcome;

pub use record::{
    Attempt, Detail, Job, Lease, ListFilter, NewDelivery, QueueStats, Replayed, Settlement, State,
    Summary, UnixMillis, is_delivery_id, now_millis, unix_millis,
};

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

/// The queue the settings ask for, on the store's backend (`store::build` hands over
/// what the two share): Redis Streams, shared by every instance, or in memory. `None`
/// without queue sources. Does not connect: a Redis that is down at start-up makes
/// enqueues fail (503) until it comes up.
///
/// A new backend is one file here implementing `Queue` and one arm below; it must pass
/// the contract suite in `tests/it/contract/queue.rs`.
pub fn build(
    settings: &Settings,
    backend: &Backend,
    metrics: Arc<Metrics>,
    instance: &str,
) -> Result<Option<Arc<dyn Queue>>, QueueError> {
    let Some(queue) = &settings.queue else {
        return Ok(None);
    };
    let built: Arc<dyn Queue> = match (&backend.0, &settings.store.backend) {
        (Shared::Redis(connection), StoreBackend::Redis(redis)) => Arc::new(
            self::redis::RedisQueue::connect(connection.clone(), redis, queue, instance, metrics)?,
        ),
        _ => Arc::new(memory::MemoryQueue::new(queue.retention, instance)),
    };
    Ok(Some(built))
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

impl From<&UpstreamOutcome> for Outcome {
    /// The retry policy's reading of what the upstream did: a redirect or 410 is a
    /// status like any other here (proxy mode's sender never sees them, a queue retries
    /// them only if `retry_on` says so); a broken exchange counts as a connection failure.
    fn from(outcome: &UpstreamOutcome) -> Outcome {
        match outcome {
            UpstreamOutcome::Answered(reply) if reply.status.is_success() => {
                Outcome::Delivered(reply.status.as_u16())
            }
            UpstreamOutcome::Answered(reply) => Outcome::Status(reply.status.as_u16()),
            UpstreamOutcome::Redirect(status) => Outcome::Status(status.as_u16()),
            UpstreamOutcome::Gone => Outcome::Status(410),
            UpstreamOutcome::Timeout => Outcome::Timeout,
            UpstreamOutcome::Unreachable(_) | UpstreamOutcome::Broken(_) => Outcome::Connect,
        }
    }
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

/// A uniform sample in [0, 1) for jitter.
pub fn jitter_sample() -> f64 {
    random::unit()
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
}
