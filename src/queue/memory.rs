//! The in-memory queue: queue mode without Redis, for one instance and for trying it out.
//!
//! NOT durable: every delivery in it, waiting or final, is lost when the process ends
//! (start-up, `hookgate check` and `/readyz` say so). It shares nothing with other
//! instances, so there is nothing to take over and `keep_alive` has nothing to do.
//! Final records are dropped `retention` after they became final.
//!
//! Listing narrows by an index per filtered field (`Facet`), each ordered like the
//! list, so a selective filter over many records reads only what it shows.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::record::{
    Cursor, DeliveryList, IdGenerator, RecordBody, decode_headers, encode_headers, header_listing,
};
use super::{
    Attempt, BoxFuture, Deferred, Detail, Job, Lease, ListFilter, NewDelivery, Queue, QueueError,
    QueueStats, Replayed, Settlement, State, Step, Summary, UnixMillis, now_millis,
};
use crate::route::RatePolicy;
use crate::store::{StoreError, ready};

pub struct MemoryQueue {
    /// GCRA theoretical arrival times by `pace` key (one per upstream with a `rate`).
    paces: Mutex<HashMap<String, tokio::time::Instant>>,
    inner: Mutex<Inner>,
    retention: Duration,
    /// A deferral past this after the delivery was queued dead-letters it (`defer`).
    max_age: Duration,
    instance: String,
    ids: IdGenerator,
    /// Set once the workers have stopped (`stop_accepting`).
    stopped: AtomicBool,
}

struct Record {
    summary: Summary,
    /// `<source>/<route>`
    route_label: String,
    enqueued_at: UnixMillis,
    replays: u32,
    history: Vec<Attempt>,
    /// As stored in Redis too: JSON pairs (`encode_headers`).
    headers: String,
    body: Bytes,
    /// The object fetched for an `enrich` route; dropped with the body.
    object: Option<Bytes>,
    failed_fetches: u32,
    /// `NewDelivery::trace_context`.
    trace_context: Option<String>,
    /// Position in `Inner::order` and in every facet index: (queued at, id).
    order_key: (UnixMillis, String),
    /// When a final record is forgotten.
    expires_at: Option<UnixMillis>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Record>,
    /// Ready ids with the time they became ready.
    ready: VecDeque<(String, UnixMillis)>,
    /// Retries by due time.
    scheduled: BTreeSet<(UnixMillis, String)>,
    /// Taken and not yet settled: token → id.
    taken: HashMap<String, String>,
    /// Every id by (re)queue time, for listing newest first.
    order: BTreeSet<(UnixMillis, String)>,
    /// The same per value of each field a list can filter on.
    facets: HashMap<Facet, BTreeSet<(UnixMillis, String)>>,
    /// Final ids by expiry.
    expiry: BTreeSet<(UnixMillis, String)>,
    next_token: u64,
}

impl MemoryQueue {
    pub fn new(retention: Duration, max_age: Duration, instance: &str) -> Self {
        MemoryQueue {
            paces: Mutex::default(),
            inner: Mutex::new(Inner::default()),
            retention,
            max_age,
            instance: instance.to_owned(),
            ids: IdGenerator::default(),
            stopped: AtomicBool::new(false),
        }
    }

    /// Once the workers have stopped, nothing here would be delivered.
    fn refusing(&self) -> Option<QueueError> {
        self.stopped.load(Ordering::Relaxed).then(|| {
            QueueError::Store(StoreError::Unavailable(
                "shutting down: the in-memory queue's workers have stopped".to_owned(),
            ))
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every operation leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores one new delivery `queued` and ready; returns its id.
    fn insert_new(&self, inner: &mut Inner, delivery: NewDelivery) -> String {
        let now = delivery.received_at;
        let id = self.ids.next(now);
        inner.insert(Record {
            route_label: delivery.route_label(),
            summary: Summary {
                id: id.clone(),
                state: State::Queued,
                source: delivery.source,
                route: delivery.route,
                webhook_id: delivery.webhook_id,
                event_type: delivery.event_type,
                attempts: 0,
                received_at: now,
                updated_at: now,
                next_attempt_at: None,
                last_status: None,
                last_error: None,
            },
            enqueued_at: now,
            replays: 0,
            history: Vec::new(),
            // Compact copies: parsed header values and the body are slices of the
            // connection's read buffer, which a record kept for `retention` would pin.
            headers: encode_headers(&delivery.headers),
            body: Bytes::copy_from_slice(&delivery.body),
            object: None,
            failed_fetches: 0,
            trace_context: delivery.trace_context,
            order_key: (now, id.clone()),
            expires_at: None,
        });
        inner.ready.push_back((id.clone(), now));
        id
    }
}

/// A field value a list can filter on, with the index of the records that have it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Facet {
    State(State),
    Source(String),
    Route(String),
    EventType(String),
    WebhookId(String),
}

impl Facet {
    fn of(summary: &Summary) -> [Facet; 5] {
        [
            Facet::State(summary.state),
            Facet::Source(summary.source.clone()),
            Facet::Route(summary.route.clone()),
            Facet::EventType(summary.event_type.clone()),
            Facet::WebhookId(summary.webhook_id.clone()),
        ]
    }

    /// The indexes that narrow `filter`; none means the whole order.
    fn narrowing(filter: &ListFilter) -> Vec<Facet> {
        let mut facets = Vec::new();
        facets.extend(filter.state.map(Facet::State));
        facets.extend(filter.source.clone().map(Facet::Source));
        facets.extend(filter.route.clone().map(Facet::Route));
        facets.extend(filter.event_type.clone().map(Facet::EventType));
        facets
    }
}

/// Records a page may look at before it ends early with a cursor: bounds the time the
/// lock is held however selective the filter is.
const LIST_SCAN_BUDGET: usize = 50_000;

impl Inner {
    fn index(&mut self, facet: Facet, key: &(UnixMillis, String)) {
        self.facets.entry(facet).or_default().insert(key.clone());
    }

    fn unindex(&mut self, facet: &Facet, key: &(UnixMillis, String)) {
        if let Some(set) = self.facets.get_mut(facet) {
            set.remove(key);
            if set.is_empty() {
                self.facets.remove(facet);
            }
        }
    }

    /// Files a new record under its position and every facet.
    fn insert(&mut self, record: Record) {
        let key = record.order_key.clone();
        self.order.insert(key.clone());
        for facet in Facet::of(&record.summary) {
            self.index(facet, &key);
        }
        self.records.insert(key.1.clone(), record);
    }

    fn remove(&mut self, id: &str) {
        if let Some(record) = self.records.remove(id) {
            self.order.remove(&record.order_key);
            for facet in Facet::of(&record.summary) {
                self.unindex(&facet, &record.order_key);
            }
        }
    }

    /// Moves a record to `state`, in its index too; returns the record.
    fn set_state(&mut self, id: &str, state: State) -> Option<&mut Record> {
        let record = self.records.get(id)?;
        let (was, key) = (record.summary.state, record.order_key.clone());
        if was != state {
            self.unindex(&Facet::State(was), &key);
            self.index(Facet::State(state), &key);
        }
        let record = self.records.get_mut(id)?;
        record.summary.state = state;
        Some(record)
    }

    /// Moves a record to the top of the order (a replay queues it again at `at`).
    fn reorder(&mut self, id: &str, at: UnixMillis) {
        if let Some(record) = self.records.remove(id) {
            let mut record = record;
            self.order.remove(&record.order_key);
            for facet in Facet::of(&record.summary) {
                self.unindex(&facet, &record.order_key);
            }
            record.order_key = (at, id.to_owned());
            self.insert(record);
        }
    }

    fn forget_expired(&mut self, now: UnixMillis) {
        while self.expiry.first().is_some_and(|(at, _)| *at <= now) {
            let (_, id) = self.expiry.pop_first().expect("a first entry");
            let expired = self
                .records
                .get(&id)
                .is_some_and(|r| r.expires_at.is_some_and(|e| e <= now));
            if expired {
                self.remove(&id);
            }
        }
    }

    /// One page: candidates from the smallest index that narrows the filter (or a
    /// search's own few), newest first, from the cursor on.
    fn list(&self, filter: &ListFilter) -> DeliveryList {
        let upper = match (&filter.after, filter.until) {
            (Some(c), Some(until)) if until <= c.queued_at => (until, String::new()),
            (Some(c), _) => (c.queued_at, c.id.clone()),
            (None, Some(until)) => (until, String::new()),
            (None, None) => (UnixMillis::MAX, String::new()),
        };
        let lower = (filter.since.unwrap_or(0), String::new());
        // An empty window (`since` at or past `until` or the cursor): `range` would
        // panic on bounds the wrong way round.
        if lower >= upper {
            return DeliveryList::default();
        }
        let searched: Vec<&(UnixMillis, String)>;
        let candidates: Box<dyn Iterator<Item = &(UnixMillis, String)>> = match &filter.search {
            Some(q) => {
                let mut found: Vec<&(UnixMillis, String)> = self
                    .facets
                    .get(&Facet::WebhookId(q.clone()))
                    .into_iter()
                    .flatten()
                    .chain(self.records.get(q).map(|r| &r.order_key))
                    .filter(|key| **key < upper && **key >= lower)
                    .collect();
                found.sort_by(|a, b| b.cmp(a));
                found.dedup();
                searched = found;
                Box::new(searched.iter().copied())
            }
            None => {
                let narrowest = Facet::narrowing(filter)
                    .iter()
                    .map(|facet| self.facets.get(facet))
                    .min_by_key(|set| set.map_or(0, BTreeSet::len));
                let set = match narrowest {
                    Some(None) => return DeliveryList::default(),
                    Some(Some(set)) => set,
                    None => &self.order,
                };
                Box::new(set.range(lower..upper).rev())
            }
        };
        let mut page = DeliveryList::default();
        let mut last_seen: Option<&(UnixMillis, String)> = None;
        for (scanned, key) in candidates.enumerate() {
            if page.deliveries.len() >= filter.limit || scanned >= LIST_SCAN_BUDGET {
                // More remain: the next page starts after the last one looked at.
                page.next = last_seen.map(|(queued_at, id)| Cursor {
                    queued_at: *queued_at,
                    id: id.clone(),
                });
                break;
            }
            last_seen = Some(key);
            if let Some(record) = self.records.get(&key.1)
                && filter.matches(&record.summary)
            {
                page.deliveries.push(record.summary.clone());
            }
        }
        page
    }
}

impl Queue for MemoryQueue {
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<String, QueueError>> {
        if let Some(refused) = self.refusing() {
            return ready(Err(refused));
        }
        let mut inner = self.lock();
        ready(Ok(self.insert_new(&mut inner, delivery)))
    }

    fn enqueue_all(
        &self,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        if let Some(refused) = self.refusing() {
            return ready(Err(refused));
        }
        // One lock for all: no take sees some copies before the others are stored.
        let mut inner = self.lock();
        let ids = deliveries
            .into_iter()
            .map(|delivery| self.insert_new(&mut inner, delivery))
            .collect();
        ready(Ok(ids))
    }

    fn take(&self, max: usize, now: UnixMillis) -> BoxFuture<'_, Result<Vec<Lease>, QueueError>> {
        let mut inner = self.lock();
        inner.forget_expired(now);
        while inner.scheduled.first().is_some_and(|(at, _)| *at <= now) {
            let (_, id) = inner.scheduled.pop_first().expect("a first entry");
            inner.ready.push_back((id, now));
        }
        let mut leases = Vec::new();
        while leases.len() < max {
            let Some((id, _)) = inner.ready.pop_front() else {
                break;
            };
            let Some(record) = inner.records.get(&id) else {
                continue;
            };
            let route = record.route_label.clone();
            inner.next_token += 1;
            let token = inner.next_token.to_string();
            inner.taken.insert(token.clone(), id.clone());
            leases.push(Lease {
                delivery_id: id,
                route,
                token,
            });
        }
        ready(Ok(leases))
    }

    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        let mut inner = self.lock();
        if !inner.taken.contains_key(&lease.token) {
            return ready(Ok(None));
        }
        if inner
            .records
            .get(&lease.delivery_id)
            .is_none_or(|r| r.summary.state.is_final())
        {
            inner.taken.remove(&lease.token);
            return ready(Ok(None));
        }
        let record = inner
            .set_state(&lease.delivery_id, State::Processing)
            .expect("checked above");
        record.summary.attempts += 1;
        record.summary.updated_at = now;
        record.summary.next_attempt_at = None;
        record.history.push(Attempt::opened(
            record.summary.attempts,
            now,
            &self.instance,
        ));
        let job = Job {
            lease: lease.clone(),
            delivery: NewDelivery {
                source: record.summary.source.clone(),
                route: record.summary.route.clone(),
                webhook_id: record.summary.webhook_id.clone(),
                event_type: record.summary.event_type.clone(),
                headers: decode_headers(&record.headers).unwrap_or_default(),
                body: record.body.clone(),
                received_at: record.summary.received_at,
                trace_context: record.trace_context.clone(),
            },
            attempt: record.summary.attempts,
            enqueued_at: record.enqueued_at,
            history_index: (record.history.len() - 1) as u64,
            object: record.object.clone(),
            failed_fetches: record.failed_fetches,
        };
        ready(Ok(Some(job)))
    }

    fn settle<'a>(
        &'a self,
        job: &'a Job,
        attempt: &'a Attempt,
        settlement: Settlement,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        let mut inner = self.lock();
        if inner.taken.remove(&job.lease.token).is_none() {
            return ready(Ok(false));
        }
        let id = &job.lease.delivery_id;
        let retention = self.retention.as_millis() as UnixMillis;
        let Some(record) = inner.set_state(id, settlement.state()) else {
            return ready(Ok(false));
        };
        if attempt.step == Step::Fetch {
            record.summary.attempts = record.summary.attempts.saturating_sub(1);
            record.failed_fetches += 1;
        }
        record.summary.updated_at = now;
        record.summary.last_status = attempt.status;
        record.summary.last_error = attempt.error.clone();
        if let Some(entry) = record.history.get_mut(job.history_index as usize) {
            *entry = attempt.clone();
        }
        match settlement {
            Settlement::RetryAt(at) => {
                record.summary.next_attempt_at = Some(at);
                inner.scheduled.insert((at, id.clone()));
            }
            Settlement::Processed | Settlement::Final => {
                if settlement == Settlement::Processed {
                    // Delivered: only dead letters keep what a replay needs.
                    record.body = Bytes::new();
                    record.headers = String::from("[]");
                    record.object = None;
                }
                record.expires_at = Some(now + retention);
                inner.expiry.insert((now + retention, id.clone()));
            }
        }
        ready(Ok(true))
    }

    fn attach<'a>(
        &'a self,
        job: &'a Job,
        fetched: &'a Attempt,
        object: Bytes,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Job, QueueError>> {
        let mut inner = self.lock();
        let id = &job.lease.delivery_id;
        if !inner.taken.contains_key(&job.lease.token) {
            return ready(Err(QueueError::lease_lost(id)));
        }
        let Some(record) = inner.records.get_mut(id) else {
            return ready(Err(QueueError::lease_lost(id)));
        };
        // A compact copy: the object arrived in the HTTP client's buffers.
        let object = Bytes::copy_from_slice(&object);
        record.object = Some(object.clone());
        record.summary.updated_at = now;
        if let Some(entry) = record.history.get_mut(job.history_index as usize) {
            *entry = fetched.clone();
        }
        record
            .history
            .push(Attempt::opened(job.attempt, now, &self.instance));
        ready(Ok(Job {
            history_index: (record.history.len() - 1) as u64,
            object: Some(object),
            ..job.clone()
        }))
    }

    fn hand_back<'a>(
        &'a self,
        lease: &'a Lease,
        interrupted: Option<(&'a Job, &'a Attempt)>,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let mut inner = self.lock();
        if inner.taken.remove(&lease.token).is_none() {
            return ready(Ok(()));
        }
        let open = inner
            .records
            .get(&lease.delivery_id)
            .is_some_and(|r| !r.summary.state.is_final());
        if open && let Some(record) = inner.set_state(&lease.delivery_id, State::Queued) {
            record.summary.updated_at = now;
            if let Some((job, attempt)) = interrupted {
                if attempt.step == Step::Fetch {
                    record.summary.attempts = record.summary.attempts.saturating_sub(1);
                }
                if let Some(entry) = record.history.get_mut(job.history_index as usize) {
                    *entry = attempt.clone();
                }
            }
            inner.ready.push_front((lease.delivery_id.clone(), now));
        }
        ready(Ok(()))
    }

    fn defer<'a>(
        &'a self,
        lease: &'a Lease,
        until: UnixMillis,
        now: UnixMillis,
        why: &'a str,
    ) -> BoxFuture<'a, Result<Deferred, QueueError>> {
        let mut inner = self.lock();
        if inner.taken.remove(&lease.token).is_none() {
            return ready(Ok(Deferred::Waiting));
        }
        let id = &lease.delivery_id;
        let Some(record) = inner.records.get_mut(id) else {
            return ready(Ok(Deferred::Waiting));
        };
        if record.summary.state.is_final() {
            return ready(Ok(Deferred::Waiting));
        }
        if until <= record.enqueued_at + self.max_age.as_millis() as UnixMillis {
            record.summary.next_attempt_at = Some(until);
            // Taken over from an instance that died in its attempt: waiting now.
            if record.summary.state == State::Processing {
                let record = inner.set_state(id, State::Queued).expect("checked above");
                record.summary.updated_at = now;
            }
            inner.scheduled.insert((until, id.clone()));
            return ready(Ok(Deferred::Waiting));
        }
        let expires_at = now + self.retention.as_millis() as UnixMillis;
        let record = inner
            .set_state(id, State::FailedFinal)
            .expect("checked above");
        record.summary.updated_at = now;
        record.summary.next_attempt_at = None;
        record.summary.last_error = Some(why.to_owned());
        record.expires_at = Some(expires_at);
        let attempts = record.summary.attempts;
        inner.expiry.insert((expires_at, id.clone()));
        ready(Ok(Deferred::DeadLettered { attempts }))
    }

    fn pace<'a>(
        &'a self,
        key: &'a str,
        rate: RatePolicy,
    ) -> BoxFuture<'a, Result<Option<Duration>, QueueError>> {
        let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let (interval, tolerance) = crate::store::gcra(rate.per_second, rate.burst.get());
        // A bucket a slower rate emptied past what this rate could (a reload raised
        // it) is read as this rate's emptiest that still allows a start: the new rate
        // applies from the next start.
        let mut tat = paces.get(key).copied().unwrap_or(now).max(now);
        if tat > now + tolerance + interval {
            tat = now + tolerance;
        }
        let ahead = tat - now;
        if ahead > tolerance {
            return ready(Ok(Some(ahead - tolerance)));
        }
        paces.insert(key.to_owned(), tat + interval);
        ready(Ok(None))
    }

    fn keep_alive<'a>(&'a self, _leases: &'a [Lease]) -> BoxFuture<'a, Result<(), QueueError>> {
        ready(Ok(()))
    }

    fn prune(&self, _idle: Duration) -> BoxFuture<'_, Result<u64, QueueError>> {
        ready(Ok(0))
    }

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<DeliveryList, QueueError>> {
        let mut inner = self.lock();
        inner.forget_expired(now_millis());
        ready(Ok(inner.list(filter)))
    }

    fn show<'a>(
        &'a self,
        id: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Detail>, QueueError>> {
        let inner = self.lock();
        let detail = inner.records.get(id).map(|r| {
            let stored = decode_headers(&r.headers).unwrap_or_default();
            let (header_names, headers) = header_listing(&stored, with_body);
            Detail {
                summary: r.summary.clone(),
                enqueued_at: r.enqueued_at,
                replays: r.replays,
                history: r.history.clone(),
                header_names,
                headers,
                body: with_body.then(|| RecordBody::new(&r.body)),
                object: r
                    .object
                    .as_ref()
                    .filter(|_| with_body)
                    .map(|o| String::from_utf8_lossy(o).into_owned()),
                body_dropped: false,
            }
        });
        ready(Ok(detail))
    }

    fn replay<'a>(
        &'a self,
        id: &'a str,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Replayed, QueueError>> {
        let mut inner = self.lock();
        let Some(was) = inner.records.get(id).map(|r| r.summary.state) else {
            return ready(Ok(Replayed::NotFound));
        };
        if was != State::FailedFinal {
            return ready(Ok(Replayed::NotReplayable(was)));
        }
        let record = inner.set_state(id, State::Queued).expect("found above");
        record.summary.attempts = 0;
        record.summary.updated_at = now;
        record.summary.next_attempt_at = None;
        record.enqueued_at = now;
        record.failed_fetches = 0;
        record.replays += 1;
        record.expires_at = None;
        inner.reorder(id, now);
        inner.ready.push_back((id.to_owned(), now));
        ready(Ok(Replayed::Queued { was }))
    }

    fn failed_since(&self, since: UnixMillis) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        let inner = self.lock();
        let mut failed: Vec<(UnixMillis, String)> = inner
            .records
            .values()
            .filter(|r| r.summary.state == State::FailedFinal && r.summary.updated_at >= since)
            .map(|r| (r.summary.updated_at, r.summary.id.clone()))
            .collect();
        failed.sort();
        ready(Ok(failed.into_iter().map(|(_, id)| id).collect()))
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        let inner = self.lock();
        let now = now_millis();
        let oldest = inner.ready.iter().map(|(_, at)| *at).min();
        let stats = QueueStats {
            depth: (inner.ready.len() + inner.scheduled.len() + inner.taken.len()) as u64,
            oldest_age: Duration::from_millis(oldest.map_or(0, |at| now.saturating_sub(at))),
            dead_letters: inner
                .facets
                .get(&Facet::State(State::FailedFinal))
                .map_or(0, |set| set.len() as u64),
        };
        ready(Ok(stats))
    }

    fn durable(&self) -> bool {
        false
    }

    fn in_process(&self) -> bool {
        true
    }

    fn stop_accepting(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn describe(&self) -> String {
        "in memory: NOT durable, every queued delivery is lost when this process stops; \
         not shared with other instances (configure [store] for Redis)"
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn delivery(n: u64) -> NewDelivery {
        NewDelivery {
            source: "openai".into(),
            route: "0".into(),
            webhook_id: format!("msg_{n}"),
            event_type: "response.completed".into(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            received_at: 1_000 + n,
            trace_context: None,
        }
    }

    fn attempt(job: &Job, status: u16) -> Attempt {
        Attempt {
            attempt: job.attempt,
            step: Step::Deliver,
            started_at: 0,
            duration_ms: Some(1),
            status: Some(status),
            error: None,
            result: None,
            instance: "test".into(),
            answer: None,
            trace_id: None,
        }
    }

    #[tokio::test]
    async fn a_handed_back_delivery_is_taken_first_and_final_records_expire() {
        let q = MemoryQueue::new(
            Duration::from_millis(100),
            Duration::from_secs(3600),
            "test",
        );
        let first = q.enqueue(delivery(1)).await.unwrap();
        q.enqueue(delivery(2)).await.unwrap();
        let lease = q.take(1, 2_000).await.unwrap().remove(0);
        assert_eq!(lease.delivery_id, first);
        q.hand_back(&lease, None, 2_000).await.unwrap();
        let lease = q.take(1, 2_000).await.unwrap().remove(0);
        assert_eq!(lease.delivery_id, first);
        let job = q.begin(&lease, 2_000).await.unwrap().unwrap();
        q.settle(&job, &attempt(&job, 200), Settlement::Processed, 2_000)
            .await
            .unwrap();
        q.take(0, 2_100).await.unwrap();
        assert!(q.show(&first, false).await.unwrap().is_none());
    }
}
