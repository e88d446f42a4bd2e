//! The in-memory queue: queue mode without Redis, for one instance and for trying it out.
//!
//! NOT durable: every delivery in it, waiting or final, is lost when the process ends
//! (start-up, `hookgate check` and `/readyz` say so). It shares nothing with other
//! instances, so there is nothing to take over and `keep_alive` has nothing to do.
//! Final records are dropped `retention` after they became final.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::record::{IdGenerator, RecordBody, decode_headers, encode_headers, header_listing};
use super::{
    Attempt, BoxFuture, Detail, Job, Lease, ListFilter, NewDelivery, Queue, QueueError, QueueStats,
    Replayed, Settlement, State, Summary, UnixMillis, now_millis,
};
use crate::store::ready;

pub struct MemoryQueue {
    inner: Mutex<Inner>,
    retention: Duration,
    instance: String,
    ids: IdGenerator,
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
    /// Position in `Inner::order`.
    order_key: (UnixMillis, u64),
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
    order: BTreeMap<(UnixMillis, u64), String>,
    /// Final ids by expiry.
    expiry: BTreeSet<(UnixMillis, String)>,
    next_token: u64,
}

impl MemoryQueue {
    pub fn new(retention: Duration, instance: &str) -> Self {
        MemoryQueue {
            inner: Mutex::new(Inner::default()),
            retention,
            instance: instance.to_owned(),
            ids: IdGenerator::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every operation leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn reorder(&mut self, id: &str, at: UnixMillis) {
        self.next_token += 1;
        let key = (at, self.next_token);
        if let Some(record) = self.records.get_mut(id) {
            self.order.remove(&record.order_key);
            record.order_key = key;
            self.order.insert(key, id.to_owned());
        }
    }

    fn forget_expired(&mut self, now: UnixMillis) {
        while self.expiry.first().is_some_and(|(at, _)| *at <= now) {
            let (_, id) = self.expiry.pop_first().expect("a first entry");
            let expired = self
                .records
                .get(&id)
                .is_some_and(|r| r.expires_at.is_some_and(|e| e <= now));
            if expired && let Some(record) = self.records.remove(&id) {
                self.order.remove(&record.order_key);
            }
        }
    }
}

impl Queue for MemoryQueue {
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<String, QueueError>> {
        let now = delivery.received_at;
        let id = self.ids.next(now);
        let mut inner = self.lock();
        inner.next_token += 1;
        let order_key = (now, inner.next_token);
        inner.order.insert(order_key, id.clone());
        inner.records.insert(
            id.clone(),
            Record {
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
                order_key,
                expires_at: None,
            },
        );
        inner.ready.push_back((id.clone(), now));
        ready(Ok(id))
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
        let record = match inner.records.get_mut(&lease.delivery_id) {
            Some(record) if !record.summary.state.is_final() => record,
            _ => {
                inner.taken.remove(&lease.token);
                return ready(Ok(None));
            }
        };
        record.summary.attempts += 1;
        record.summary.state = State::Processing;
        record.summary.updated_at = now;
        record.summary.next_attempt_at = None;
        record.history.push(Attempt {
            attempt: record.summary.attempts,
            started_at: now,
            duration_ms: None,
            status: None,
            error: None,
            result: None,
            instance: self.instance.clone(),
        });
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
            },
            attempt: record.summary.attempts,
            enqueued_at: record.enqueued_at,
            history_index: (record.history.len() - 1) as u64,
        };
        ready(Ok(Some(job)))
    }

    fn settle<'a>(
        &'a self,
        job: &'a Job,
        attempt: &'a Attempt,
        settlement: Settlement,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let mut inner = self.lock();
        inner.taken.remove(&job.lease.token);
        let id = &job.lease.delivery_id;
        let retention = self.retention.as_millis() as UnixMillis;
        let Some(record) = inner.records.get_mut(id) else {
            return ready(Ok(()));
        };
        record.summary.state = settlement.state();
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
                }
                record.expires_at = Some(now + retention);
                inner.expiry.insert((now + retention, id.clone()));
            }
        }
        ready(Ok(()))
    }

    fn hand_back<'a>(
        &'a self,
        lease: &'a Lease,
        interrupted: Option<(&'a Job, &'a Attempt)>,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let mut inner = self.lock();
        inner.taken.remove(&lease.token);
        if let Some(record) = inner.records.get_mut(&lease.delivery_id)
            && !record.summary.state.is_final()
        {
            record.summary.state = State::Queued;
            record.summary.updated_at = now;
            if let Some((job, attempt)) = interrupted
                && let Some(entry) = record.history.get_mut(job.history_index as usize)
            {
                *entry = attempt.clone();
            }
            inner.ready.push_front((lease.delivery_id.clone(), now));
        }
        ready(Ok(()))
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
    ) -> BoxFuture<'a, Result<Vec<Summary>, QueueError>> {
        let mut inner = self.lock();
        inner.forget_expired(now_millis());
        let found = inner
            .order
            .values()
            .rev()
            .filter_map(|id| inner.records.get(id))
            .map(|r| &r.summary)
            .filter(|s| filter.matches(s))
            .take(filter.limit)
            .cloned()
            .collect();
        ready(Ok(found))
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
        let Some(record) = inner.records.get_mut(id) else {
            return ready(Ok(Replayed::NotFound));
        };
        let was = record.summary.state;
        if was != State::FailedFinal {
            return ready(Ok(Replayed::NotReplayable(was)));
        }
        record.summary.state = State::Queued;
        record.summary.attempts = 0;
        record.summary.updated_at = now;
        record.summary.next_attempt_at = None;
        record.enqueued_at = now;
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
        };
        ready(Ok(stats))
    }

    fn durable(&self) -> bool {
        false
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
        }
    }

    fn attempt(job: &Job, status: u16) -> Attempt {
        Attempt {
            attempt: job.attempt,
            started_at: 0,
            duration_ms: Some(1),
            status: Some(status),
            error: None,
            result: None,
            instance: "test".into(),
        }
    }

    #[tokio::test]
    async fn a_handed_back_delivery_is_taken_first_and_final_records_expire() {
        let q = MemoryQueue::new(Duration::from_millis(100), "test");
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
