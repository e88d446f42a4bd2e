//! Queue mode: accept a verified delivery at once, store it durably, deliver it later
//! with retries.
//!
//! Ingress (`pipeline`) appends a `NewDelivery` and answers 202; the workers
//! (`worker.rs`) take deliveries, attempt them through the same `Forwarder` as proxy mode
//! and settle each attempt as processed, retry-later or final-failed. `record.rs` holds
//! the vocabulary (states, records, leases, the admin API's answers), `policy.rs` the
//! retry policy as pure functions that take time as a value (`BackoffPolicy::delay`,
//! `RetryOn`, `decide`), and this file the `Queue` trait every backend implements
//! (`memory.rs`, `redis/`, `postgres.rs`, chosen in `build`). It does not know HTTP: the admin API
//! and the CLI render what it returns.

pub mod memory;
pub mod policy;
pub mod postgres;
pub mod record;
pub mod redis;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::{Settings, StoreBackend};
use crate::metrics::Metrics;
use crate::route::RatePolicy;
use crate::store::{Backend, BoxFuture, Shared, StoreError};

pub use policy::{
    BackoffPolicy, FinalReason, RetryOn, RetryPolicy, Verdict, decide, jitter_sample,
};
pub use record::{
    Attempt, Cursor, Deferred, DeliveryList, Detail, Job, Lease, ListFilter, NewDelivery,
    QueueStats, Replayed, Settlement, State, Step, Summary, UnixMillis, is_delivery_id, now_millis,
    unix_millis,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("queue record {id} is malformed: {detail}")]
    Malformed { id: String, detail: String },
    /// The store failed after the deliveries were sent to it (a timeout, a dropped
    /// connection): they may be stored or not. `ids` are the ids they were sent under,
    /// for `Queue::stored` to tell once the store answers again.
    #[error("{error} (the delivery may have been stored)")]
    MaybeStored { ids: Vec<String>, error: StoreError },
    /// The lease is no longer this instance's: taken over by another instance after
    /// the visibility timeout, or the record is gone.
    #[error("delivery {id} is no longer held by this instance (taken over, or gone)")]
    LeaseLost { id: String },
    /// The dedupe claim the deliveries were to be stored under was no longer held
    /// (released after a timeout, or expired): nothing was stored, as a copy stored by
    /// whoever holds the key now would otherwise be stored twice.
    #[error("the dedupe claim was no longer held; nothing was stored")]
    ClaimLost,
}

impl QueueError {
    pub fn malformed(id: &str, detail: impl Into<String>) -> Self {
        QueueError::Malformed {
            id: id.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn lease_lost(id: &str) -> Self {
        QueueError::LeaseLost { id: id.to_owned() }
    }
}

/// A queue backend. Every method is one short store operation; policy lives in the
/// caller. Implementations: `memory::MemoryQueue`, `redis::RedisQueue`,
/// `postgres::PostgresQueue`.
///
/// `begin`, `settle`, `attach`, `hand_back` and `defer` act on a delivery only while
/// the lease they are given still holds it: after another instance took it over (this
/// one stopped renewing it for the visibility timeout), or after the same call already
/// went through (a worker retries a settle whose answer it never saw), they change
/// nothing but the attempt's own history entry. Otherwise a late settle could reopen a
/// delivery another worker has processed since, without its body.
pub trait Queue: Send + Sync {
    /// Stores the delivery and its `queued` record in one step; returns its id.
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<String, QueueError>>;

    /// Stores several deliveries (the copies of one sender delivery for a fan-out
    /// route, one per upstream) in one step: all are stored, or none is, so the sender's
    /// 202 means every copy is stored and its retry after a 503 stores no copy twice.
    /// Returns their ids in order.
    fn enqueue_all(
        &self,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<Vec<String>, QueueError>>;

    /// `enqueue_all`, and where the backend also holds the dedupe claims (PostgreSQL),
    /// marks `claim` done in the same transaction, so the deliveries are stored with
    /// their key done or nothing happens (`QueueError::ClaimLost` when the claim is no
    /// longer held). Returns the ids and whether the claim was settled here; when it
    /// was not, the caller commits it as usual.
    fn enqueue_all_claimed<'a>(
        &'a self,
        deliveries: Vec<NewDelivery>,
        _claim: ClaimDone<'a>,
    ) -> BoxFuture<'a, Result<(Vec<String>, bool), QueueError>> {
        Box::pin(async move { Ok((self.enqueue_all(deliveries).await?, false)) })
    }

    /// Whether `enqueue_all_first` can store a delivery and write its dedupe key in one
    /// step (the backend holds the dedupe keys too: PostgreSQL).
    fn dedupe_in_enqueue(&self) -> bool {
        false
    }

    /// Stores the deliveries with the dedupe key `key` written done for `ttl`, in one
    /// step, if nothing holds `key` (no claim in flight, not done, or only expired
    /// ones): the usual first delivery then needs no claim before it. `None` when
    /// something holds it, or the backend cannot (`dedupe_in_enqueue`): nothing is
    /// stored, and the caller claims the key as usual to learn what holds it.
    fn enqueue_all_first<'a>(
        &'a self,
        _deliveries: &'a [NewDelivery],
        _key: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, QueueError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether deliveries an enqueue answered `QueueError::MaybeStored` for were stored
    /// (all copies of one enqueue are stored together, or none): whether the first has
    /// a record. Redis, whose enqueue may still arrive after the answer, also fences it.
    fn stored<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            match ids.first() {
                Some(id) => Ok(self.show(id, false).await?.is_some()),
                None => Ok(false),
            }
        })
    }

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

    /// Records the attempt and moves the delivery on; releases the lease. When
    /// `attempt` is a fetch (`Step::Fetch`) that failed, it is not an attempt: the count
    /// `begin` made is taken back and the delivery's failed fetches counted instead.
    /// `true` when it moved the delivery on; `false` when the lease no longer held it
    /// (taken over, or this settle already went through), so the caller counts each
    /// delivery's outcome once.
    fn settle<'a>(
        &'a self,
        job: &'a Job,
        attempt: &'a Attempt,
        settlement: Settlement,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<bool, QueueError>>;

    /// Keeps `object`, fetched for the job's delivery (`enrich`), with its record for as
    /// long as its body; records `fetched` (a `Step::Fetch`) at the job's history entry
    /// and opens the entry of the attempt that follows. Returns the job as that attempt
    /// sees it. The lease stays held.
    fn attach<'a>(
        &'a self,
        job: &'a Job,
        fetched: &'a Attempt,
        object: Bytes,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Job, QueueError>>;

    /// Makes a taken delivery available to any instance again at once (shutdown).
    /// `interrupted` is the attempt that was cut short, if one had begun (a fetch cut
    /// short is not counted as an attempt).
    fn hand_back<'a>(
        &'a self,
        lease: &'a Lease,
        interrupted: Option<(&'a Job, &'a Attempt)>,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Gives a taken delivery back to wait until `until` without an attempt (its
    /// upstream's circuit breaker is open, or its route's `rate` says wait): no attempt
    /// is counted, its state stays what it was, `next_attempt_at` says when it is taken
    /// again (by any instance). Unless `until` is past `queue.max_age` after it was
    /// queued: then it is dead-lettered at `now` with `why` as its last error, as a retry
    /// that would start past `max_age` is, still without an attempt.
    fn defer<'a>(
        &'a self,
        lease: &'a Lease,
        until: UnixMillis,
        now: UnixMillis,
        why: &'a str,
    ) -> BoxFuture<'a, Result<Deferred, QueueError>>;

    /// Takes one start from the GCRA bucket `key` (a route's upstream, `<source>/<route>`
    /// as a lease names it) at `rate` (`route.rate`): `None` to start now, else how long
    /// to wait. Shared by every instance on a shared backend (Redis: the store's GCRA
    /// script on Redis' clock); per instance in memory.
    fn pace<'a>(
        &'a self,
        key: &'a str,
        rate: RatePolicy,
    ) -> BoxFuture<'a, Result<Option<Duration>, QueueError>>;

    /// Renews this instance's hold on `leases`, so no other instance takes them over.
    fn keep_alive<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Forgets other instances that hold nothing and have been idle for `idle`
    /// (stopped ones); returns how many.
    fn prune(&self, idle: Duration) -> BoxFuture<'_, Result<u64, QueueError>>;

    /// One page of the records `filter` matches, newest first, with where the next
    /// page starts (see `ListFilter` for the order and what must stay fast, and
    /// `DeliveryList::next` for when a page may end early).
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<DeliveryList, QueueError>>;

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

    /// Wakes `wake` (this instance's idle workers) when another instance enqueues, where
    /// the backend can tell (PostgreSQL's `LISTEN`/`NOTIFY`); the workers' polling covers
    /// the other backends and any notification lost.
    fn wake_on(&self, _wake: Arc<Notify>) {}

    /// Whether what was acknowledged survives a restart of where it is kept (`/readyz`):
    /// false in memory, and on a Redis that keeps only snapshots.
    fn durable(&self) -> bool;

    /// True for the in-memory queue: everything in it is lost when this process ends
    /// (where a shared store keeps them, the other instances deliver them).
    fn in_process(&self) -> bool {
        false
    }

    /// The workers have stopped (shutdown): an in-process queue refuses new deliveries
    /// from now on, as nothing would deliver them (the sender is answered 503 and
    /// retries elsewhere); a shared queue keeps them for the other instances.
    fn stop_accepting(&self) {}

    fn describe(&self) -> String;
}

/// The queue the settings ask for, on the store's backend (`store::build` hands over
/// what the two share): Redis Streams or PostgreSQL tables, shared by every instance, or
/// in memory. `None`
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
        (Shared::Postgres(pool), StoreBackend::Postgres(_)) => Arc::new(
            self::postgres::PostgresQueue::new(pool.clone(), queue, instance),
        ),
        _ => Arc::new(memory::MemoryQueue::new(
            queue.retention,
            queue.max_age,
            instance,
        )),
    };
    Ok(Some(built))
}

/// A won dedupe claim, for `Queue::enqueue_all_claimed` to mark done: the store's key, the
/// claim's token and how long the key then stays done.
#[derive(Debug, Clone, Copy)]
pub struct ClaimDone<'a> {
    pub key: &'a str,
    pub token: &'a str,
    pub ttl: Duration,
}

/// For `hookgate check`: what Redis' own settings promise for a delivery answered `202`,
/// read from the server (within `connect_timeout + timeout`). `None` unless the queue
/// runs on Redis; an unreachable Redis is reported, not an error.
pub async fn redis_persistence(settings: &Settings) -> Option<String> {
    settings.queue.as_ref()?;
    let StoreBackend::Redis(redis) = &settings.store.backend else {
        return None;
    };
    let metrics = Arc::new(Metrics::new(std::iter::empty()));
    let persistence = match crate::store::redis::RedisConnection::new(redis, metrics) {
        Ok(connection) => self::redis::persistence::read(&connection).await,
        Err(e) => self::redis::Persistence::Unknown(e.to_string()),
    };
    Some(persistence.to_string())
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

    /// The copies of a fan-out delivery, stored together (`Queue::enqueue_all`).
    pub async fn enqueue_all(
        &self,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<String>, QueueError> {
        let ids = self.queue.enqueue_all(deliveries).await?;
        self.wake.notify_one();
        Ok(ids)
    }

    /// `Queue::enqueue_all_first`: stored with the dedupe key done, or `None`.
    pub async fn enqueue_all_first(
        &self,
        deliveries: &[NewDelivery],
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Vec<String>>, QueueError> {
        let stored = self.queue.enqueue_all_first(deliveries, key, ttl).await?;
        if stored.is_some() {
            self.wake.notify_one();
        }
        Ok(stored)
    }

    /// `enqueue_all` with the claim marked done in the same step where the backend can
    /// (`Queue::enqueue_all_claimed`).
    pub async fn enqueue_all_claimed(
        &self,
        deliveries: Vec<NewDelivery>,
        claim: ClaimDone<'_>,
    ) -> Result<(Vec<String>, bool), QueueError> {
        let stored = self.queue.enqueue_all_claimed(deliveries, claim).await?;
        self.wake.notify_one();
        Ok(stored)
    }
}
