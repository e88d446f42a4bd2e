//! The `Queue` contract: what the workers, the admin API and `hookgate deliveries` rely
//! on from any queue backend, through the trait only.
//!
//! A delivery is enqueued `queued`, taken under a lease, begun as an attempt
//! (`processing`), and settled as processed, scheduled for a retry or final-failed; a
//! lease can be handed back (shutdown), and renewed so that no other instance takes it
//! over. Only final failures (dead letters) are replayed. Final records are kept for the
//! retention. Times are the `now` each call is given, except what the trait leaves to
//! the backend's clock (the age in `stats`, retention, the visibility timeout).

use std::time::Duration;

use bytes::Bytes;
use hookgate::queue::record::RecordBody;
use hookgate::queue::{
    Attempt, Deferred, Detail, Job, Lease, ListFilter, NewDelivery, Queue, Replayed, Settlement,
    State, Step, UnixMillis, is_delivery_id, now_millis,
};
use http::header::{HeaderMap, HeaderValue};
use tokio::time::{Instant, sleep};

use super::{Backend, INSTANCE, QueueOptions, assert_within, timed};
use crate::support::{SOURCE, eventually};

/// `<source>/<route>` of the deliveries made here.
const ROUTE_LABEL: &str = "openai/0";

/// What a store's clock (the wall clock, counted in whole milliseconds, which NTP may
/// slew) can differ from the test's monotonic one over a second.
const CLOCK_SLACK: Duration = Duration::from_millis(5);

/// A delivery as ingress hands it over: headers as they are forwarded (one repeated),
/// and a body that is not even UTF-8, since the queue must keep the exact bytes.
pub fn delivery(source: &str, n: u64, received_at: UnixMillis) -> NewDelivery {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("webhook-id", HeaderValue::from(n));
    headers.append("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
    headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
    let mut body = format!(r#"{{"type":"response.completed","n":{n}}}"#).into_bytes();
    body.push(0xff);
    NewDelivery {
        source: source.to_owned(),
        route: "0".to_owned(),
        webhook_id: format!("msg_contract_{n}"),
        event_type: "response.completed".to_owned(),
        headers,
        body: Bytes::from(body),
        received_at,
        trace_context: None,
    }
}

/// The attempt `job` made, as a worker records it once it ends (or is cut short).
fn ended(job: &Job, started_at: UnixMillis, status: Option<u16>, result: &str) -> Attempt {
    Attempt {
        attempt: job.attempt,
        step: Step::Deliver,
        started_at,
        duration_ms: Some(5),
        status,
        error: match status {
            Some(200..=299) => None,
            Some(status) => Some(format!("upstream answered {status}")),
            None => Some("upstream unreachable".to_owned()),
        },
        result: Some(result.to_owned()),
        instance: INSTANCE.to_owned(),
        answer: status.map(|status| format!("{{\"status\":{status}}}")),
        trace_id: None,
    }
}

fn all() -> ListFilter {
    ListFilter {
        limit: 100,
        ..ListFilter::default()
    }
}

async fn enqueue(queue: &dyn Queue, delivery: NewDelivery) -> String {
    let id = queue.enqueue(delivery).await.expect("enqueued");
    assert!(is_delivery_id(&id), "{id}");
    id
}

/// Takes the one delivery that is ready at `now`.
async fn take_one(queue: &dyn Queue, now: UnixMillis) -> Lease {
    let mut leases = queue.take(10, now).await.expect("take");
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases.remove(0)
}

async fn begin(queue: &dyn Queue, lease: &Lease, now: UnixMillis) -> Job {
    queue
        .begin(lease, now)
        .await
        .expect("begin")
        .unwrap_or_else(|| panic!("{} can be attempted", lease.delivery_id))
}

/// Ends `job`'s attempt at `now` as `settlement` says, with the status a worker would
/// have seen; returns the attempt as recorded.
async fn settle_as(
    queue: &dyn Queue,
    job: &Job,
    now: UnixMillis,
    settlement: Settlement,
) -> Attempt {
    let (status, result) = match settlement {
        Settlement::Processed => (200, "processed"),
        Settlement::RetryAt(_) => (503, "failed_retryable"),
        Settlement::Final => (400, "failed_final"),
    };
    let attempt = ended(job, now, Some(status), result);
    let moved = queue.settle(job, &attempt, settlement, now).await.unwrap();
    assert!(moved, "the settle moved the delivery on");
    attempt
}

/// Takes, begins and settles the one ready delivery; returns its id.
async fn attempt_once(queue: &dyn Queue, now: UnixMillis, settlement: Settlement) -> String {
    let lease = take_one(queue, now).await;
    let job = begin(queue, &lease, now).await;
    settle_as(queue, &job, now, settlement).await;
    lease.delivery_id
}

async fn show(queue: &dyn Queue, id: &str) -> Detail {
    queue
        .show(id, false)
        .await
        .expect("show")
        .unwrap_or_else(|| panic!("{id} has a record"))
}

async fn listed(queue: &dyn Queue, filter: ListFilter) -> Vec<String> {
    let found = queue.list(&filter).await.expect("list");
    found
        .deliveries
        .into_iter()
        .map(|summary| summary.id)
        .collect()
}

// ---------------------------------------------------------------------------------
// One instance
// ---------------------------------------------------------------------------------

pub async fn an_enqueued_delivery_is_shown_and_listed_as_queued_with_what_was_enqueued(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let new = delivery(SOURCE, 1, t);

    let id = enqueue(queue, new.clone()).await;

    let shown = show(queue, &id).await;
    let summary = &shown.summary;
    assert_eq!(summary.id, id);
    assert_eq!(summary.state, State::Queued);
    assert_eq!(
        (summary.source.as_str(), summary.route.as_str()),
        (SOURCE, "0")
    );
    assert_eq!(summary.webhook_id, new.webhook_id);
    assert_eq!(summary.event_type, new.event_type);
    assert_eq!(summary.attempts, 0);
    assert_eq!((summary.received_at, summary.updated_at), (t, t));
    assert_eq!(summary.next_attempt_at, None);
    assert_eq!((summary.last_status, &summary.last_error), (None, &None));
    assert_eq!((shown.enqueued_at, shown.replays), (t, 0));
    assert!(shown.history.is_empty());
    let names: Vec<&str> = new.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(shown.header_names, names);
    assert_eq!(
        (shown.headers, shown.body),
        (None, None),
        "no body unless asked"
    );

    let with_body = queue.show(&id, true).await.unwrap().unwrap();
    let pairs: Vec<(String, String)> = new
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(with_body.headers, Some(pairs));
    assert_eq!(with_body.body, Some(RecordBody::new(&new.body)));
    assert_eq!(
        queue.list(&all()).await.unwrap().deliveries,
        [shown.summary]
    );
    assert!(
        queue
            .show("dlv_000000000000ffffffffffffffff", false)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn a_taken_delivery_begins_as_an_attempt_with_everything_it_was_enqueued_with(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let new = delivery(SOURCE, 1, t);
    let id = enqueue(queue, new.clone()).await;

    let lease = take_one(queue, t + 1).await;
    let job = begin(queue, &lease, t + 2).await;

    assert_eq!(lease.delivery_id, id);
    assert_eq!(lease.route, ROUTE_LABEL);
    assert!(!lease.token.is_empty());
    assert_eq!(job.lease, lease);
    assert_eq!(
        (job.delivery.source.as_str(), job.delivery.route.as_str()),
        (SOURCE, "0")
    );
    assert_eq!(job.delivery.webhook_id, new.webhook_id);
    assert_eq!(job.delivery.event_type, new.event_type);
    assert_eq!(job.delivery.headers, new.headers);
    assert_eq!(job.delivery.body, new.body, "the exact bytes");
    assert_eq!((job.attempt, job.history_index, job.enqueued_at), (1, 0, t));
    assert_eq!((&job.object, job.failed_fetches), (&None, 0));
    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Processing);
    assert_eq!(shown.summary.attempts, 1);
    assert_eq!(shown.summary.updated_at, t + 2);
    assert_eq!(shown.history, [opened(1, t + 2)]);
    assert!(
        queue.take(10, t + 3).await.unwrap().is_empty(),
        "taken once"
    );
}

/// Tracing: the context ingress stored comes back with every attempt, retries too, and
/// an attempt's `trace_id` stays in the history; a delivery stored without one has none.
pub async fn the_trace_context_comes_back_with_every_attempt_and_the_history_keeps_trace_ids(
    queue: &dyn Queue,
) {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let t = now_millis();
    let traced = NewDelivery {
        trace_context: Some(TRACEPARENT.to_owned()),
        ..delivery(SOURCE, 1, t)
    };
    let id = enqueue(queue, traced).await;
    let job = begin(queue, &take_one(queue, t + 1).await, t + 1).await;
    assert_eq!(job.delivery.trace_context.as_deref(), Some(TRACEPARENT));
    let failed = Attempt {
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        ..ended(&job, t + 1, Some(503), "failed_retryable")
    };
    queue
        .settle(&job, &failed, Settlement::RetryAt(t + 10), t + 2)
        .await
        .unwrap();
    let retry = begin(queue, &take_one(queue, t + 10).await, t + 10).await;
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.delivery.trace_context.as_deref(), Some(TRACEPARENT));
    assert_eq!(show(queue, &id).await.history[0], failed);

    let plain = enqueue(queue, delivery(SOURCE, 2, t + 20)).await;
    let lease = take_one(queue, t + 21).await;
    assert_eq!(lease.delivery_id, plain);
    assert_eq!(
        begin(queue, &lease, t + 21).await.delivery.trace_context,
        None
    );
}

/// A fan-out route's copies of one sender delivery: one per upstream, stored together.
pub async fn enqueue_all_stores_every_copy_with_its_own_record_and_lease(queue: &dyn Queue) {
    let t = now_millis();
    let copies: Vec<NewDelivery> = ["batches/0", "batches/audit", "batches/2"]
        .into_iter()
        .map(|route| NewDelivery {
            route: route.to_owned(),
            ..delivery(SOURCE, 7, t)
        })
        .collect();

    let ids = queue.enqueue_all(copies.clone()).await.expect("enqueued");

    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| is_delivery_id(id)), "{ids:?}");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    for (id, copy) in ids.iter().zip(&copies) {
        let shown = show(queue, id).await.summary;
        assert_eq!(shown.state, State::Queued);
        assert_eq!(shown.route, copy.route);
        assert_eq!(shown.webhook_id, copy.webhook_id);
    }
    let audit = ListFilter {
        route: Some("batches/audit".to_owned()),
        ..all()
    };
    let listed = queue.list(&audit).await.unwrap().deliveries;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, ids[1]);
    let mut leases = queue.take(10, t + 1).await.unwrap();
    leases.sort_by(|a, b| a.route.cmp(&b.route));
    let routes: Vec<&str> = leases.iter().map(|l| l.route.as_str()).collect();
    assert_eq!(
        routes,
        [
            "openai/batches/0",
            "openai/batches/2",
            "openai/batches/audit"
        ]
    );
    assert!(queue.enqueue_all(Vec::new()).await.unwrap().is_empty());
}

/// Where the queue holds the dedupe keys (`dedupe_in_enqueue`), a first delivery is
/// stored with its key in one step and a second one under the same key is not stored;
/// elsewhere nothing is stored and the caller claims as usual.
pub async fn enqueue_all_first_stores_a_delivery_only_while_its_key_is_free(backend: &Backend) {
    let queue = backend.queue(INSTANCE, QueueOptions::default());
    let queue = &*queue;
    assert_eq!(queue.dedupe_in_enqueue(), backend.holds_dedupe_keys());
    let t = now_millis();
    let ttl = Duration::from_secs(60);
    let one = [delivery(SOURCE, 21, t)];
    let copies: Vec<NewDelivery> = ["a", "b"]
        .into_iter()
        .map(|route| NewDelivery {
            route: route.to_owned(),
            ..delivery(SOURCE, 22, t)
        })
        .collect();

    let first = queue
        .enqueue_all_first(&one, "openai:msg_21", ttl)
        .await
        .unwrap();
    let again = queue
        .enqueue_all_first(&one, "openai:msg_21", ttl)
        .await
        .unwrap();
    let fanned = queue
        .enqueue_all_first(&copies, "openai:msg_22", ttl)
        .await
        .unwrap();
    let fanned_again = queue
        .enqueue_all_first(&copies, "openai:msg_22", ttl)
        .await
        .unwrap();

    let listed = queue.list(&all()).await.unwrap().deliveries;
    if !queue.dedupe_in_enqueue() {
        assert_eq!((first, fanned), (None, None));
        assert!(listed.is_empty(), "{listed:?}");
        return;
    }
    let first = first.expect("stored while its key was free");
    let fanned = fanned.expect("every copy stored while its key was free");
    assert_eq!(
        (again, fanned_again),
        (None, None),
        "a held key stores nothing"
    );
    assert_eq!(first.len(), 1);
    assert_eq!(fanned.len(), 2);
    let mut stored: Vec<String> = listed.into_iter().map(|d| d.id).collect();
    stored.sort();
    let mut expected = [first, fanned].concat();
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(show(queue, &expected[0]).await.summary.state, State::Queued);
}

/// Where the queue can reach the dedupe keys (PostgreSQL, a single Redis), deliveries
/// stored under a claim are stored only while that claim is held, and with it marked
/// done in the same step: an enqueue that ran late, after its claim was released on a
/// timeout (or expired) and the key perhaps won by the sender's retry, once stored a
/// second copy; and an instance killed between storing and marking left the key to
/// expire, and the sender's retry stored a second copy. Elsewhere the claim is the
/// store's, not the queue's: the deliveries are stored and the claim is left for the
/// caller to commit.
pub async fn enqueue_all_claimed_stores_nothing_under_a_claim_no_longer_held(backend: &Backend) {
    let store = match backend.marks_claims_in_enqueue() {
        true => Some(backend.store()),
        false => None,
    };
    let queue = backend.queue(INSTANCE, QueueOptions::default());
    let queue = &*queue;
    assert_eq!(queue.dedupe_in_enqueue(), backend.holds_dedupe_keys());
    let t = now_millis();
    let released = hookgate::queue::ClaimDone {
        key: "openai:msg_31",
        token: "a-released-claim",
        ttl: Duration::from_secs(60),
    };
    let one = vec![delivery(SOURCE, 31, t)];
    let copies: Vec<NewDelivery> = ["a", "b"]
        .into_iter()
        .map(|route| NewDelivery {
            route: route.to_owned(),
            ..delivery(SOURCE, 31, t)
        })
        .collect();
    let Some(store) = store else {
        let (ids, settled) = queue.enqueue_all_claimed(copies, released).await.unwrap();
        assert!(!settled, "the claim is the store's: the caller commits it");
        let mut listed: Vec<String> = queue
            .list(&all())
            .await
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.id)
            .collect();
        listed.sort();
        let mut ids = ids;
        ids.sort();
        assert_eq!((listed, ids.len()), (ids, 2), "every copy stored");
        return;
    };
    for deliveries in [one, copies] {
        let e = queue
            .enqueue_all_claimed(deliveries, released)
            .await
            .unwrap_err();
        assert!(matches!(e, hookgate::queue::QueueError::ClaimLost), "{e}");
    }
    let listed = queue.list(&all()).await.unwrap().deliveries;
    assert!(listed.is_empty(), "nothing stored: {listed:?}");

    // Under a claim still held: stored, and the key done, with nothing left to commit.
    let ttl = Duration::from_secs(60);
    let won = store
        .claim("openai:msg_32", "a-held-claim", ttl)
        .await
        .unwrap();
    assert_eq!(won, hookgate::store::ClaimState::Won);
    let held = hookgate::queue::ClaimDone {
        key: "openai:msg_32",
        token: "a-held-claim",
        ttl,
    };
    let (ids, settled) = queue
        .enqueue_all_claimed(vec![delivery(SOURCE, 32, t)], held)
        .await
        .unwrap();
    assert!(settled, "marked done with the delivery stored");
    assert_eq!(show(queue, &ids[0]).await.summary.state, State::Queued);
    let after = store.claim("openai:msg_32", "a-retry", ttl).await.unwrap();
    assert_eq!(after, hookgate::store::ClaimState::Done);
}

/// A breaker or a rate puts a taken delivery back to wait, without an attempt.
pub async fn a_deferred_delivery_waits_until_its_time_without_an_attempt(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t + 1).await;

    let deferred = queue.defer(&lease, t + 5_000, t + 1, WHY).await.unwrap();

    assert_eq!(deferred, Deferred::Waiting);
    let shown = show(queue, &id).await.summary;
    assert_eq!(shown.state, State::Queued);
    assert_eq!(shown.attempts, 0);
    assert_eq!(shown.next_attempt_at, Some(t + 5_000));
    assert!(
        queue.take(10, t + 4_999).await.unwrap().is_empty(),
        "not before its time"
    );
    let again = take_one(queue, t + 5_000).await;
    assert_eq!(again.delivery_id, id);
    let job = begin(queue, &again, t + 5_001).await;
    assert_eq!(job.attempt, 1, "the wait was no attempt");
}

/// The last error of a deferral that reaches past `max_age`, as a worker words it.
const WHY: &str = "the upstream's circuit breaker stayed open until past queue.max_age";

/// `queue.max_age` of the contract's queues: hookgate's default.
const MAX_AGE_MS: UnixMillis = 72 * 3600 * 1000;

/// A wait that would end past `max_age` after the delivery was queued ends it now, as
/// a retry that would start past `max_age` does: dead-lettered (replayable), still
/// without an attempt, its last error saying why.
pub async fn a_deferral_past_max_age_dead_letters_the_delivery_without_an_attempt(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t + 1).await;
    let within = queue
        .defer(&lease, t + MAX_AGE_MS, t + 1, WHY)
        .await
        .unwrap();
    assert_eq!(within, Deferred::Waiting, "up to max_age it still waits");
    let lease = take_one(queue, t + MAX_AGE_MS).await;

    let past = queue
        .defer(&lease, t + MAX_AGE_MS + 1, t + 2, WHY)
        .await
        .unwrap();

    assert_eq!(past, Deferred::DeadLettered { attempts: 0 });
    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::FailedFinal);
    assert_eq!(shown.summary.attempts, 0);
    assert_eq!(shown.summary.last_error.as_deref(), Some(WHY));
    assert_eq!(shown.summary.next_attempt_at, None);
    assert_eq!(shown.summary.updated_at, t + 2);
    assert!(shown.history.is_empty(), "{:?}", shown.history);
    assert_eq!(
        queue.failed_since(t).await.unwrap(),
        std::slice::from_ref(&id)
    );
    assert!(queue.take(10, t + 3).await.unwrap().is_empty());
    assert_eq!(queue.stats().await.unwrap().depth, 0);
    assert_eq!(
        queue.replay(&id, t + 4).await.unwrap(),
        Replayed::Queued {
            was: State::FailedFinal
        }
    );
}

/// A delivery dead-lettered by a deferral says how many attempts it had (for
/// `hookgate_delivery_attempts`, which once recorded 0 for every such delivery).
pub async fn a_deferral_past_max_age_tells_the_attempts_the_delivery_had(queue: &dyn Queue) {
    let t = now_millis();
    enqueue(queue, delivery(SOURCE, 1, t)).await;
    attempt_once(queue, t + 1, Settlement::RetryAt(t + 2)).await;
    let lease = take_one(queue, t + 2).await;

    let past = queue
        .defer(&lease, t + MAX_AGE_MS + 1, t + 3, WHY)
        .await
        .unwrap();

    assert_eq!(past, Deferred::DeadLettered { attempts: 1 });
}

/// `rate`: a bucket per key allows its burst at once, then one start per interval.
pub async fn pace_allows_the_burst_then_one_start_per_interval_per_key(queue: &dyn Queue) {
    // One start per 5 s: nothing refills while the test runs, however slow the machine.
    const INTERVAL: Duration = Duration::from_secs(5);
    let rate = hookgate::route::RatePolicy {
        per_second: 0.2,
        burst: std::num::NonZeroU32::new(2).unwrap(),
    };
    let (allowed, first) = timed(queue.pace("openai/r/0", rate)).await;
    assert_eq!(allowed.unwrap(), None);
    assert_eq!(queue.pace("openai/r/0", rate).await.unwrap(), None);
    let (wait, asked) = timed(queue.pace("openai/r/0", rate)).await;
    let wait = wait.unwrap().expect("over the burst");
    // The burst's first start took the bucket's first interval: the third may start one
    // interval after it.
    assert_within(
        wait,
        INTERVAL.saturating_sub(asked.end - first.start),
        INTERVAL.saturating_sub(asked.start - first.end),
        "the wait past the burst",
    );
    // A denial takes nothing: the wait does not grow.
    let again = queue
        .pace("openai/r/0", rate)
        .await
        .unwrap()
        .expect("still over");
    assert!(again <= wait, "{again:?} after {wait:?}");
    assert_eq!(
        queue.pace("openai/r/1", rate).await.unwrap(),
        None,
        "another key"
    );
}

/// A route's `rate` raised by a reload applies from the next start: the bucket the
/// slower rate emptied is no emptier than the new rate can make one. (It was read as
/// it stood: a burst spent at one start a minute kept starts waiting for up to an hour
/// at a rate of a hundred a second.)
pub async fn a_raised_rate_applies_from_the_next_start(queue: &dyn Queue) {
    let slow = hookgate::route::RatePolicy {
        per_second: 1.0 / 3600.0,
        burst: std::num::NonZeroU32::new(3).unwrap(),
    };
    for _ in 0..3 {
        assert_eq!(queue.pace("openai/r/0", slow).await.unwrap(), None);
    }
    let wait = queue
        .pace("openai/r/0", slow)
        .await
        .unwrap()
        .expect("spent");
    assert!(wait > Duration::from_secs(3000), "{wait:?}");

    let fast = hookgate::route::RatePolicy {
        per_second: 100.0,
        burst: std::num::NonZeroU32::new(1).unwrap(),
    };
    // Starts go on at the new rate: each waits at most one interval of it.
    for _ in 0..5 {
        match queue.pace("openai/r/0", fast).await.unwrap() {
            None => {}
            Some(wait) => {
                assert!(wait <= Duration::from_millis(10), "{wait:?}");
                sleep(wait + Duration::from_millis(2)).await;
                assert_eq!(
                    queue.pace("openai/r/0", fast).await.unwrap(),
                    None,
                    "allowed once the wait is over"
                );
            }
        }
    }
}

/// Instances asking at once get no more starts than the rate allows between them. (On
/// PostgreSQL a statement that waited for the bucket's lock saw a later bucket than
/// its own `now()` expected, took it for one left by a slower rate and moved it back:
/// 119 starts for 100 with 8 clients.)
pub async fn pace_asked_at_once_allows_no_more_than_the_rate(queue: &dyn Queue) {
    const PER_SECOND: f64 = 40.0;
    const CLIENTS: usize = 8;
    const FOR: Duration = Duration::from_millis(1500);
    let rate = hookgate::route::RatePolicy {
        per_second: PER_SECOND,
        burst: std::num::NonZeroU32::new(1).unwrap(),
    };
    let started = Instant::now();
    let client = async || {
        let mut starts = 0u32;
        while started.elapsed() < FOR {
            match queue.pace("openai/r/0", rate).await.unwrap() {
                None => starts += 1,
                // Asked again early, as a backlog of several instances would.
                Some(wait) => sleep(wait.min(Duration::from_millis(5))).await,
            }
        }
        starts
    };
    let starts: u32 = futures_util::future::join_all((0..CLIENTS).map(|_| client()))
        .await
        .into_iter()
        .sum();
    let most = 1.0 + PER_SECOND * started.elapsed().as_secs_f64();
    assert!(
        f64::from(starts) <= most + 1.0,
        "{starts} starts in {:?}, at most {most:.0}",
        started.elapsed()
    );
    assert!(
        f64::from(starts) >= most / 3.0,
        "{starts}: the clients were starved"
    );
}

pub async fn deliveries_are_taken_oldest_first_and_at_most_as_many_as_asked(queue: &dyn Queue) {
    let t = now_millis();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(enqueue(queue, delivery(SOURCE, n, t + n)).await);
    }

    let first = queue.take(2, t + 10).await.unwrap();
    let rest = queue.take(10, t + 10).await.unwrap();

    let taken: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|l| l.delivery_id.as_str())
        .collect();
    assert_eq!((first.len(), rest.len()), (2, 1));
    assert_eq!(taken, ids);
    assert!(queue.take(10, t + 10).await.unwrap().is_empty());
    assert!(queue.take(0, t + 10).await.unwrap().is_empty());
}

pub async fn a_retry_is_taken_once_due_and_not_before_then_the_delivery_is_processed(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let new = delivery(SOURCE, 1, t);
    let id = enqueue(queue, new.clone()).await;
    let job = begin(queue, &take_one(queue, t).await, t).await;
    let failed = ended(&job, t, Some(503), "failed_retryable");

    queue
        .settle(&job, &failed, Settlement::RetryAt(t + 3_000), t + 5)
        .await
        .unwrap();

    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::FailedRetryable);
    assert_eq!(shown.summary.next_attempt_at, Some(t + 3_000));
    assert_eq!(shown.summary.last_status, Some(503));
    assert_eq!(shown.summary.last_error, failed.error);
    assert_eq!(shown.summary.updated_at, t + 5);
    assert_eq!(shown.history, std::slice::from_ref(&failed));
    assert!(
        queue.take(10, t + 2_999).await.unwrap().is_empty(),
        "not due yet"
    );
    assert_eq!(queue.stats().await.unwrap().depth, 1);

    let lease = take_one(queue, t + 3_000).await;
    let job = begin(queue, &lease, t + 3_000).await;

    assert_eq!(lease.delivery_id, id);
    assert_eq!(lease.route, ROUTE_LABEL);
    assert_eq!((job.attempt, job.history_index), (2, 1));
    assert_eq!(
        (&job.delivery.headers, &job.delivery.body),
        (&new.headers, &new.body)
    );
    assert_eq!(show(queue, &id).await.summary.next_attempt_at, None);
    let delivered = ended(&job, t + 3_000, Some(200), "processed");
    queue
        .settle(&job, &delivered, Settlement::Processed, t + 3_001)
        .await
        .unwrap();
    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Processed);
    assert_eq!(shown.summary.attempts, 2);
    assert_eq!(shown.summary.last_status, Some(200));
    assert_eq!(shown.summary.last_error, None);
    assert_eq!(shown.history, [failed, delivered]);
    assert_eq!(queue.stats().await.unwrap().depth, 0);
    assert!(queue.take(10, t + 10_000).await.unwrap().is_empty());
}

pub async fn a_processed_delivery_keeps_its_record_but_not_its_body_or_headers(queue: &dyn Queue) {
    let t = now_millis();
    enqueue(queue, delivery(SOURCE, 1, t)).await;

    let id = attempt_once(queue, t, Settlement::Processed).await;

    let shown = queue.show(&id, true).await.unwrap().unwrap();
    assert_eq!(shown.summary.state, State::Processed);
    assert_eq!(shown.body, Some(RecordBody::new(b"")));
    assert_eq!(shown.headers, Some(Vec::new()));
    assert!(shown.header_names.is_empty());
    assert_eq!(listed(queue, all()).await, [id.as_str()]);
}

pub async fn a_final_failure_keeps_what_a_replay_needs_and_is_found_by_failed_since(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let new = delivery(SOURCE, 1, t);
    let first = enqueue(queue, new.clone()).await;
    let second = enqueue(queue, delivery(SOURCE, 2, t)).await;
    let leases = queue.take(10, t).await.unwrap();
    assert_eq!(leases.len(), 2);

    for (lease, failed_at) in leases.iter().zip([t + 5, t + 9]) {
        let job = begin(queue, lease, t).await;
        settle_as(queue, &job, failed_at, Settlement::Final).await;
    }

    let shown = queue.show(&first, true).await.unwrap().unwrap();
    assert_eq!(shown.summary.state, State::FailedFinal);
    assert_eq!(shown.summary.last_status, Some(400));
    assert_eq!(shown.body, Some(RecordBody::new(&new.body)));
    assert_eq!(shown.header_names.len(), new.headers.keys_len());
    assert_eq!(
        queue.failed_since(0).await.unwrap(),
        [first.as_str(), second.as_str()]
    );
    assert_eq!(
        queue.failed_since(t + 5).await.unwrap(),
        [first.as_str(), second.as_str()]
    );
    assert_eq!(queue.failed_since(t + 6).await.unwrap(), [second.as_str()]);
    assert!(queue.failed_since(t + 10).await.unwrap().is_empty());
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 2));
}

pub async fn only_a_final_failure_can_be_replayed_and_a_replay_starts_counting_again(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let other = enqueue(queue, delivery(SOURCE, 2, t + 5)).await;
    let not_replayable = |state| Replayed::NotReplayable(state);
    assert_eq!(
        queue.replay(&id, t).await.unwrap(),
        not_replayable(State::Queued)
    );
    let lease = take_one_of(queue, &id, t).await;
    let job = begin(queue, &lease, t).await;
    assert_eq!(
        queue.replay(&id, t).await.unwrap(),
        not_replayable(State::Processing)
    );
    let failed = ended(&job, t, Some(400), "failed_final");
    queue
        .settle(&job, &failed, Settlement::Final, t + 10)
        .await
        .unwrap();
    assert_eq!(listed(queue, all()).await, [other.as_str(), id.as_str()]);

    let replayed = queue.replay(&id, t + 20).await.unwrap();

    assert_eq!(
        replayed,
        Replayed::Queued {
            was: State::FailedFinal
        }
    );
    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Queued);
    assert_eq!(shown.summary.attempts, 0);
    assert_eq!(shown.summary.updated_at, t + 20);
    assert_eq!(shown.summary.next_attempt_at, None);
    assert_eq!((shown.enqueued_at, shown.replays), (t + 20, 1));
    assert_eq!(
        shown.summary.last_status,
        Some(400),
        "the last outcome stays"
    );
    assert_eq!(shown.history, [failed]);
    assert!(queue.failed_since(0).await.unwrap().is_empty());
    assert_eq!(
        listed(queue, all()).await,
        [id.as_str(), other.as_str()],
        "newest first"
    );
    let lease = take_one_of(queue, &id, t + 21).await;
    let job = begin(queue, &lease, t + 21).await;
    assert_eq!(
        (job.attempt, job.history_index, job.enqueued_at),
        (1, 1, t + 20)
    );
    let delivered = ended(&job, t + 21, Some(200), "processed");
    queue
        .settle(&job, &delivered, Settlement::Processed, t + 22)
        .await
        .unwrap();
    assert_eq!(
        queue.replay(&id, t + 30).await.unwrap(),
        not_replayable(State::Processed)
    );
    assert_eq!(
        queue
            .replay("dlv_000000000000ffffffffffffffff", t)
            .await
            .unwrap(),
        Replayed::NotFound
    );
}

/// Takes everything ready at `now` and hands back all but the lease on `id`.
async fn take_one_of(queue: &dyn Queue, id: &str, now: UnixMillis) -> Lease {
    let mut mine = None;
    for lease in queue.take(10, now).await.unwrap() {
        if lease.delivery_id == id {
            mine = Some(lease);
        } else {
            queue.hand_back(&lease, None, now).await.unwrap();
        }
    }
    mine.unwrap_or_else(|| panic!("{id} is ready at {now}"))
}

pub async fn a_handed_back_delivery_is_queued_again_at_once_with_the_attempt_closed(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t + 1).await;
    let job = begin(queue, &lease, t + 1).await;
    let interrupted = ended(&job, t + 1, None, "handed_back");

    queue
        .hand_back(&lease, Some((&job, &interrupted)), t + 6)
        .await
        .unwrap();

    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Queued);
    assert_eq!(shown.summary.updated_at, t + 6);
    assert_eq!(shown.summary.attempts, 1);
    assert_eq!(shown.history, [interrupted]);
    let again = take_one(queue, t + 7).await;
    assert_eq!(again.delivery_id, id);
    let job = begin(queue, &again, t + 7).await;
    assert_eq!((job.attempt, job.history_index), (2, 1));
}

pub async fn a_delivery_handed_back_before_its_attempt_began_keeps_its_count(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t + 1).await;

    queue.hand_back(&lease, None, t + 2).await.unwrap();

    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Queued);
    assert_eq!(shown.summary.attempts, 0);
    assert!(shown.history.is_empty());
    let again = take_one(queue, t + 3).await;
    assert_eq!(again.delivery_id, id);
    let job = begin(queue, &again, t + 3).await;
    assert_eq!((job.attempt, job.history_index), (1, 0));
}

pub async fn a_lease_on_a_delivery_that_became_final_begins_and_hands_back_nothing(
    queue: &dyn Queue,
) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t).await;
    let job = begin(queue, &lease, t).await;
    let failed = ended(&job, t, Some(400), "failed_final");
    queue
        .settle(&job, &failed, Settlement::Final, t + 2)
        .await
        .unwrap();

    let begun = queue.begin(&lease, t + 3).await.unwrap();
    queue.hand_back(&lease, None, t + 4).await.unwrap();

    assert!(begun.is_none(), "{begun:?}");
    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::FailedFinal);
    assert_eq!(shown.summary.attempts, 1);
    assert_eq!(shown.summary.updated_at, t + 2);
    assert_eq!(shown.history, [failed]);
    assert!(queue.take(10, t + 5).await.unwrap().is_empty());
    assert_eq!(queue.stats().await.unwrap().depth, 0);
}

/// What ingress asks after an enqueue whose answer it never got (`MaybeStored`).
pub async fn stored_says_whether_an_enqueue_stored_its_deliveries(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let mut absent = id.clone();
    let last = absent.pop().expect("a non-empty id");
    absent.push(if last == '0' { '1' } else { '0' });

    assert!(queue.stored(std::slice::from_ref(&id)).await.unwrap());
    assert!(!queue.stored(std::slice::from_ref(&absent)).await.unwrap());
    assert!(!queue.stored(&[]).await.unwrap());
}

/// A worker that never saw the answer to its settle tries it again; by then the
/// delivery has been retried and processed by another attempt. The repeat (and a hand
/// back or deferral on the old lease) must not reopen it: a processed delivery has no
/// body left, so a reopened one would be attempted with an empty one.
pub async fn a_settle_repeated_after_it_went_through_changes_nothing(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t).await;
    let first = begin(queue, &lease, t).await;
    let failed = settle_as(queue, &first, t + 1, Settlement::RetryAt(t + 10)).await;
    let again = take_one(queue, t + 10).await;
    let second = begin(queue, &again, t + 10).await;
    let delivered = settle_as(queue, &second, t + 11, Settlement::Processed).await;

    let moved = queue
        .settle(&first, &failed, Settlement::RetryAt(t + 20), t + 12)
        .await
        .unwrap();
    assert!(
        !moved,
        "it says it moved nothing: the outcome is counted once"
    );
    queue.hand_back(&lease, None, t + 13).await.unwrap();
    queue.defer(&lease, t + 20, t + 14, WHY).await.unwrap();
    assert!(queue.begin(&lease, t + 14).await.unwrap().is_none());

    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Processed);
    assert_eq!(shown.summary.attempts, 2);
    assert_eq!(shown.summary.updated_at, t + 11);
    assert_eq!(shown.summary.next_attempt_at, None);
    assert_eq!(shown.history, [failed, delivered]);
    assert!(queue.take(10, t + 30).await.unwrap().is_empty());
    assert_eq!(queue.stats().await.unwrap().depth, 0);
}

/// A failed fetch is no attempt; settled twice (the first answer lost), it still
/// takes back one attempt and counts one failed fetch.
pub async fn a_failed_fetch_settled_twice_is_counted_once(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t).await;
    let job = begin(queue, &lease, t).await;
    let fetch = fetch_step(&job, t, Some(503), "failed_retryable");
    for _ in 0..2 {
        queue
            .settle(&job, &fetch, Settlement::RetryAt(t + 10), t + 1)
            .await
            .unwrap();
    }

    assert_eq!(show(queue, &id).await.summary.attempts, 0);
    let again = take_one(queue, t + 10).await;
    let job = begin(queue, &again, t + 10).await;
    assert_eq!((job.attempt, job.failed_fetches), (1, 1));
}

/// The fetch before `job`'s attempt (an `enrich` route), as a worker records it.
fn fetch_step(job: &Job, started_at: UnixMillis, status: Option<u16>, result: &str) -> Attempt {
    Attempt {
        step: Step::Fetch,
        error: (status != Some(200)).then(|| "the OpenAI API answered 429".to_owned()),
        ..ended(job, started_at, status, result)
    }
}

/// Attempt `attempt` as `begin` opens it at `now`, before it ends.
fn opened(attempt: u32, now: UnixMillis) -> Attempt {
    Attempt::opened(attempt, now, INSTANCE)
}

/// What `show` gives with the body: the object the record keeps, if any.
async fn kept_object(queue: &dyn Queue, id: &str) -> Option<String> {
    queue.show(id, true).await.unwrap().unwrap().object
}

pub async fn a_fetched_object_is_kept_for_every_later_attempt_and_a_failed_fetch_is_no_attempt(
    queue: &dyn Queue,
) {
    const OBJECT: &[u8] = br#"{"id":"resp_1","object":"response","status":"completed"}"#;
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let job = begin(queue, &take_one(queue, t).await, t).await;
    let throttled = fetch_step(&job, t, Some(429), "failed_retryable");

    queue
        .settle(&job, &throttled, Settlement::RetryAt(t + 1_000), t + 1)
        .await
        .unwrap();

    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::FailedRetryable);
    assert_eq!(
        shown.summary.attempts, 0,
        "a failed fetch is not an attempt"
    );
    assert_eq!(shown.summary.last_status, Some(429));
    assert_eq!(shown.history, std::slice::from_ref(&throttled));
    let job = begin(queue, &take_one(queue, t + 1_000).await, t + 1_000).await;
    assert_eq!((job.attempt, job.history_index), (1, 1));
    assert_eq!((&job.object, job.failed_fetches), (&None, 1));

    let fetched = fetch_step(&job, t + 1_000, Some(200), "fetched");
    let job = queue
        .attach(&job, &fetched, Bytes::from_static(OBJECT), t + 1_002)
        .await
        .unwrap();

    assert_eq!((job.attempt, job.history_index), (1, 2));
    assert_eq!(job.object.as_deref(), Some(OBJECT));
    let shown = show(queue, &id).await;
    assert_eq!(shown.summary.state, State::Processing);
    assert_eq!(shown.summary.attempts, 1);
    assert_eq!(shown.summary.updated_at, t + 1_002);
    assert_eq!(shown.object, None, "no object unless asked, like the body");
    assert_eq!(&shown.history[..2], [throttled.clone(), fetched.clone()]);
    assert_eq!(
        (
            shown.history[2].step,
            shown.history[2].attempt,
            shown.history[2].started_at
        ),
        (Step::Deliver, 1, t + 1_002),
        "the attempt after the fetch is open"
    );
    assert_eq!(
        kept_object(queue, &id).await.as_deref(),
        std::str::from_utf8(OBJECT).ok()
    );
    let refused = ended(&job, t + 1_002, Some(503), "failed_retryable");
    queue
        .settle(&job, &refused, Settlement::RetryAt(t + 2_000), t + 1_003)
        .await
        .unwrap();

    // The retry to the backend has the object: nothing is fetched again.
    let job = begin(queue, &take_one(queue, t + 2_000).await, t + 2_000).await;
    assert_eq!((job.attempt, job.history_index), (2, 3));
    assert_eq!(job.object.as_deref(), Some(OBJECT));
    assert_eq!(
        show(queue, &id).await.history,
        [throttled, fetched, refused, opened(2, t + 2_000)]
    );
    // A dead letter keeps it, so a replay delivers the same object; processed drops it.
    settle_as(queue, &job, t + 2_001, Settlement::Final).await;
    assert!(kept_object(queue, &id).await.is_some());
    queue.replay(&id, t + 3_000).await.unwrap();
    let job = begin(queue, &take_one(queue, t + 3_000).await, t + 3_000).await;
    assert_eq!((job.attempt, job.failed_fetches), (1, 0));
    assert_eq!(job.object.as_deref(), Some(OBJECT));
    settle_as(queue, &job, t + 3_001, Settlement::Processed).await;
    let shown = queue.show(&id, true).await.unwrap().unwrap();
    assert_eq!(
        (shown.object, shown.body),
        (None, Some(RecordBody::new(b"")))
    );
}

pub async fn a_fetch_that_fails_for_good_or_is_cut_short_is_no_attempt(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t).await;
    let job = begin(queue, &lease, t).await;
    let cut_short = fetch_step(&job, t, None, "handed_back");

    queue
        .hand_back(&lease, Some((&job, &cut_short)), t + 1)
        .await
        .unwrap();

    let shown = show(queue, &id).await;
    assert_eq!(
        (shown.summary.state, shown.summary.attempts),
        (State::Queued, 0)
    );
    assert_eq!(shown.history, std::slice::from_ref(&cut_short));
    let job = begin(queue, &take_one(queue, t + 2).await, t + 2).await;
    assert_eq!((job.attempt, job.history_index), (1, 1));
    let not_found = Attempt {
        status: Some(404),
        error: Some("the OpenAI API answered 404".to_owned()),
        ..fetch_step(&job, t + 2, Some(404), "failed_final")
    };
    queue
        .settle(&job, &not_found, Settlement::Final, t + 3)
        .await
        .unwrap();
    let shown = show(queue, &id).await;
    assert_eq!(
        (shown.summary.state, shown.summary.attempts),
        (State::FailedFinal, 0)
    );
    assert_eq!(shown.summary.last_error, not_found.error);
    assert_eq!(shown.history, [cut_short, not_found]);
    assert_eq!(queue.failed_since(0).await.unwrap(), [id.as_str()]);
}

pub async fn listing_filters_by_state_and_source_newest_first_up_to_the_limit(queue: &dyn Queue) {
    let t = now_millis();
    let a = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let b = enqueue(queue, delivery("billing", 2, t + 1)).await;
    let c = enqueue(queue, delivery(SOURCE, 3, t + 2)).await;
    let lease = take_one_of(queue, &a, t + 3).await;
    let job = begin(queue, &lease, t + 3).await;
    let failed = ended(&job, t + 3, Some(400), "failed_final");
    queue
        .settle(&job, &failed, Settlement::Final, t + 3)
        .await
        .unwrap();
    let filter = |state: Option<State>, source: Option<&str>, limit: usize| ListFilter {
        state,
        source: source.map(str::to_owned),
        limit,
        ..ListFilter::default()
    };

    assert_eq!(
        listed(queue, all()).await,
        [c.as_str(), b.as_str(), a.as_str()]
    );
    assert_eq!(
        listed(queue, filter(None, None, 2)).await,
        [c.as_str(), b.as_str()]
    );
    assert_eq!(
        listed(queue, filter(None, Some(SOURCE), 10)).await,
        [c.as_str(), a.as_str()]
    );
    let dead = filter(Some(State::FailedFinal), None, 10);
    assert_eq!(listed(queue, dead).await, [a.as_str()]);
    let waiting = filter(Some(State::Queued), Some("billing"), 10);
    assert_eq!(listed(queue, waiting).await, [b.as_str()]);
    let processed = filter(Some(State::Processed), None, 10);
    assert!(listed(queue, processed).await.is_empty());
    for summary in queue.list(&all()).await.unwrap().deliveries {
        assert_eq!(summary, show(queue, &summary.id).await.summary);
    }
}

/// A delivery of `n` on `route` with event type `event_type`, received at `at`.
fn routed(n: u64, route: &str, event_type: &str, at: UnixMillis) -> NewDelivery {
    NewDelivery {
        route: route.to_owned(),
        event_type: event_type.to_owned(),
        ..delivery(SOURCE, n, at)
    }
}

/// Every page of `filter`'s list, following `next` until there is none (at most 1000).
async fn every_page(queue: &dyn Queue, filter: ListFilter) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut filter = filter;
    for _ in 0..1000 {
        let page = queue.list(&filter).await.expect("list");
        assert!(page.deliveries.len() <= filter.limit, "{page:?}");
        pages.push(page.deliveries.into_iter().map(|s| s.id).collect());
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return pages,
        }
    }
    panic!("the cursor never ended")
}

pub async fn listing_filters_by_route_event_type_and_time_window(queue: &dyn Queue) {
    let t = now_millis();
    let a = enqueue(queue, routed(1, "0", "response.completed", t)).await;
    let b = enqueue(queue, routed(2, "billing", "invoice.paid", t + 10)).await;
    let c = enqueue(queue, routed(3, "billing", "invoice.failed", t + 20)).await;
    let d = enqueue(queue, routed(4, "0", "invoice.paid", t + 30)).await;
    let filter = |f: fn(&mut ListFilter)| {
        let mut filter = all();
        f(&mut filter);
        filter
    };

    let billing = filter(|f| f.route = Some("billing".into()));
    assert_eq!(listed(queue, billing).await, [c.as_str(), b.as_str()]);
    let paid = filter(|f| f.event_type = Some("invoice.paid".into()));
    assert_eq!(listed(queue, paid).await, [d.as_str(), b.as_str()]);
    let both = filter(|f| {
        f.route = Some("billing".into());
        f.event_type = Some("invoice.paid".into());
        f.source = Some(SOURCE.into());
    });
    assert_eq!(listed(queue, both).await, [b.as_str()]);
    let nowhere = filter(|f| f.event_type = Some("never.sent".into()));
    assert!(listed(queue, nowhere).await.is_empty());
    let window = ListFilter {
        since: Some(t + 10),
        until: Some(t + 30),
        ..all()
    };
    assert_eq!(
        listed(queue, window).await,
        [c.as_str(), b.as_str()],
        "since is inclusive, until exclusive"
    );
    // A window the wrong way round (times swapped, or the console's "within" window
    // moved past `until`) is empty: the in-memory queue panicked on it.
    let inverted = ListFilter {
        since: Some(t + 30),
        until: Some(t + 10),
        ..all()
    };
    assert!(listed(queue, inverted).await.is_empty());
    let searched = ListFilter {
        since: Some(t + 30),
        until: Some(t + 10),
        search: Some(b.clone()),
        ..all()
    };
    assert!(listed(queue, searched).await.is_empty());
    let since = ListFilter {
        since: Some(t + 1),
        route: Some("0".into()),
        ..all()
    };
    assert_eq!(listed(queue, since).await, [d.as_str()]);
    let until = ListFilter {
        until: Some(t + 1),
        ..all()
    };
    assert_eq!(listed(queue, until).await, [a.as_str()]);
}

pub async fn a_search_finds_a_delivery_by_its_id_or_by_the_senders_webhook_id(queue: &dyn Queue) {
    let t = now_millis();
    let first = enqueue(queue, delivery(SOURCE, 1, t)).await;
    // The sender sent the same webhook id again (after the dedupe TTL, say).
    let again = enqueue(queue, delivery(SOURCE, 1, t + 1)).await;
    let other = enqueue(queue, delivery(SOURCE, 2, t + 2)).await;
    let search = |q: &str| ListFilter {
        search: Some(q.to_owned()),
        ..all()
    };

    assert_eq!(
        listed(queue, search("msg_contract_1")).await,
        [again.as_str(), first.as_str()]
    );
    assert_eq!(listed(queue, search(&other)).await, [other.as_str()]);
    assert!(listed(queue, search("msg_contract_9")).await.is_empty());
    assert!(
        listed(queue, search("dlv_000000000000ffffffffffffffff"))
            .await
            .is_empty()
    );
    let narrowed = ListFilter {
        state: Some(State::Processed),
        ..search("msg_contract_1")
    };
    assert!(
        listed(queue, narrowed).await.is_empty(),
        "every filter holds"
    );
    let windowed = ListFilter {
        since: Some(t + 1),
        ..search("msg_contract_1")
    };
    assert_eq!(listed(queue, windowed).await, [again.as_str()]);
    let paged = every_page(
        queue,
        ListFilter {
            limit: 1,
            ..search("msg_contract_1")
        },
    )
    .await;
    assert_eq!(paged.concat(), [again.as_str(), first.as_str()]);
}

pub async fn pages_follow_their_cursor_through_every_match_once_newest_first(queue: &dyn Queue) {
    let t = now_millis();
    let mut ids = Vec::new();
    for n in 0..23 {
        // Three to a millisecond: ties in time are ordered by id.
        let route = if n % 3 == 0 { "billing" } else { "0" };
        ids.push(enqueue(queue, routed(n, route, "response.completed", t + n / 3)).await);
    }
    let newest_first = |ids: &[String]| {
        let mut ids = ids.to_vec();
        ids.reverse();
        ids
    };
    let page_of = |limit: usize| ListFilter { limit, ..all() };

    for limit in [1, 4, 23, 100] {
        let pages = every_page(queue, page_of(limit)).await;
        assert_eq!(pages.concat(), newest_first(&ids), "pages of {limit}");
        assert!(pages.iter().all(|p| p.len() <= limit));
    }
    let billing: Vec<String> = ids.iter().step_by(3).cloned().collect();
    let filtered = every_page(
        queue,
        ListFilter {
            route: Some("billing".into()),
            limit: 2,
            ..all()
        },
    )
    .await;
    assert_eq!(filtered.concat(), newest_first(&billing));
    let first = queue.list(&page_of(5)).await.unwrap();
    let next = first.next.expect("more than one page");
    let windowed = ListFilter {
        after: Some(next),
        since: Some(t + 2),
        ..page_of(100)
    };
    let rest: Vec<String> = newest_first(&ids)[5..]
        .iter()
        .filter(|id| ids.iter().position(|i| i == *id).unwrap() >= 6)
        .cloned()
        .collect();
    assert_eq!(
        listed(queue, windowed).await,
        rest,
        "a cursor inside a window"
    );
}

/// Deliveries queued at one time (a bulk replay gives all it replays one time): pages
/// go on from their cursor through every one of them once, with or without a filter.
pub async fn pages_through_many_deliveries_of_one_time_show_each_once(queue: &dyn Queue) {
    let t = now_millis();
    let mut ids = Vec::new();
    for n in 0..40 {
        let route = if n % 2 == 0 { "billing" } else { "0" };
        ids.push(enqueue(queue, routed(n, route, "response.completed", t)).await);
    }
    ids.sort();
    ids.reverse();

    let pages = every_page(queue, ListFilter { limit: 3, ..all() }).await;
    assert_eq!(pages.concat(), ids);
    let billing = every_page(
        queue,
        ListFilter {
            route: Some("billing".into()),
            limit: 4,
            ..all()
        },
    )
    .await
    .concat();
    assert_eq!(billing.len(), 20);
    let mut unique = billing.clone();
    unique.dedup();
    assert_eq!(unique, billing, "each once, newest first");
    let queued = every_page(
        queue,
        ListFilter {
            state: Some(State::Queued),
            since: Some(t),
            limit: 7,
            ..all()
        },
    )
    .await
    .concat();
    assert_eq!(queued, ids);
}

pub async fn a_replayed_dead_letter_moves_to_the_top_of_every_list_it_is_in(queue: &dyn Queue) {
    let t = now_millis();
    let dead = enqueue(queue, routed(1, "billing", "invoice.failed", t)).await;
    let later = enqueue(queue, routed(2, "billing", "invoice.failed", t + 5)).await;
    let lease = take_one_of(queue, &dead, t + 6).await;
    let job = begin(queue, &lease, t + 6).await;
    settle_as(queue, &job, t + 7, Settlement::Final).await;
    let dead_letters = ListFilter {
        state: Some(State::FailedFinal),
        ..all()
    };
    assert_eq!(listed(queue, dead_letters.clone()).await, [dead.as_str()]);
    assert_eq!(queue.stats().await.unwrap().dead_letters, 1);

    queue.replay(&dead, t + 10).await.unwrap();

    assert!(listed(queue, dead_letters).await.is_empty());
    assert_eq!(queue.stats().await.unwrap().dead_letters, 0);
    for filter in [
        all(),
        ListFilter {
            state: Some(State::Queued),
            ..all()
        },
        ListFilter {
            route: Some("billing".into()),
            ..all()
        },
        ListFilter {
            event_type: Some("invoice.failed".into()),
            source: Some(SOURCE.into()),
            ..all()
        },
    ] {
        assert_eq!(
            listed(queue, filter.clone()).await,
            [dead.as_str(), later.as_str()],
            "{filter:?}"
        );
    }
    let replayed_since = ListFilter {
        since: Some(t + 10),
        ..all()
    };
    assert_eq!(listed(queue, replayed_since).await, [dead.as_str()]);
}

pub async fn stats_count_the_deliveries_not_yet_final_and_the_oldest_waiting(queue: &dyn Queue) {
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.oldest_age), (0, Duration::ZERO));
    let before = Instant::now();
    let t = now_millis();
    let a = enqueue(queue, delivery(SOURCE, 1, t)).await;
    enqueue(queue, delivery(SOURCE, 2, t)).await;
    let enqueued = Instant::now();
    sleep(Duration::from_millis(50)).await;

    let (stats, asked) = timed(queue.stats()).await;

    let stats = stats.unwrap();
    assert_eq!(stats.depth, 2);
    assert_within(
        stats.oldest_age,
        asked.start - enqueued,
        asked.end - before,
        "the age of the oldest waiting delivery",
    );
    // Taken, scheduled for a retry, processed, final: counted until final.
    let lease = take_one_of(queue, &a, t).await;
    let job = begin(queue, &lease, t).await;
    assert_eq!(queue.stats().await.unwrap().depth, 2);
    let failed = ended(&job, t, Some(503), "failed_retryable");
    let retry_at = t + 60_000;
    let retry = Settlement::RetryAt(retry_at);
    queue.settle(&job, &failed, retry, t).await.unwrap();
    assert_eq!(queue.stats().await.unwrap().depth, 2);
    attempt_once(queue, t + 1, Settlement::Processed).await;
    assert_eq!(queue.stats().await.unwrap().depth, 1);
    attempt_once(queue, retry_at, Settlement::Final).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.oldest_age), (0, Duration::ZERO));
}

pub async fn an_instance_renews_its_own_leases_and_never_prunes_itself(queue: &dyn Queue) {
    let t = now_millis();
    let id = enqueue(queue, delivery(SOURCE, 1, t)).await;
    let lease = take_one(queue, t).await;

    queue
        .keep_alive(std::slice::from_ref(&lease))
        .await
        .unwrap();
    let job = begin(queue, &lease, t).await;
    let delivered = ended(&job, t, Some(200), "processed");
    queue
        .settle(&job, &delivered, Settlement::Processed, t)
        .await
        .unwrap();

    assert_eq!(show(queue, &id).await.summary.state, State::Processed);
    assert_eq!(queue.prune(Duration::ZERO).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------

pub async fn final_records_are_forgotten_after_the_retention_and_others_are_kept(
    backend: &Backend,
) {
    const RETENTION: Duration = Duration::from_secs(1);
    let queue = backend.queue(
        INSTANCE,
        QueueOptions {
            retention: RETENTION,
            ..QueueOptions::default()
        },
    );
    let queue = &*queue;
    let t = now_millis();
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(enqueue(queue, delivery(SOURCE, n, t)).await);
    }
    let [processed, failed, retrying, replayed] = &ids[..] else {
        unreachable!()
    };
    let mut jobs = Vec::new();
    for lease in queue.take(10, t).await.unwrap() {
        jobs.push(begin(queue, &lease, t).await);
    }
    assert_eq!(jobs.len(), 4);
    let (_, settled) = timed(async {
        settle_as(queue, &jobs[0], now_millis(), Settlement::Processed).await;
        settle_as(queue, &jobs[1], now_millis(), Settlement::Final).await;
    })
    .await;
    let later = Settlement::RetryAt(t + 3_600_000);
    settle_as(queue, &jobs[2], now_millis(), later).await;
    settle_as(queue, &jobs[3], now_millis(), Settlement::Final).await;
    queue.replay(replayed, now_millis()).await.unwrap();
    assert!(queue.show(processed, false).await.unwrap().is_some());
    assert!(queue.show(failed, false).await.unwrap().is_some());

    eventually("the final records being forgotten", async || {
        queue.list(&all()).await.unwrap();
        queue.take(0, now_millis()).await.unwrap();
        queue.show(processed, false).await.unwrap().is_none()
            && queue.show(failed, false).await.unwrap().is_none()
    })
    .await;

    // Clocks count whole milliseconds, and the store's is the wall clock, which NTP may
    // slew against the test's monotonic one: a few milliseconds of slack (CI measured
    // 997.9 ms, the 2 ms allowed for rounding alone not enough).
    let kept_for = settled.start.elapsed() + CLOCK_SLACK;
    assert!(kept_for >= RETENTION, "forgotten after {kept_for:?}");
    assert_eq!(
        listed(queue, all()).await,
        [replayed.as_str(), retrying.as_str()]
    );
    assert_eq!(
        show(queue, retrying).await.summary.state,
        State::FailedRetryable
    );
    assert_eq!(show(queue, replayed).await.summary.state, State::Queued);
}

// ---------------------------------------------------------------------------------
// Several instances on one backend
// ---------------------------------------------------------------------------------

pub async fn a_delivery_whose_lease_is_renewed_is_taken_over_once_renewals_stop(backend: &Backend) {
    const VISIBILITY: Duration = Duration::from_secs(1);
    let options = QueueOptions {
        visibility_timeout: VISIBILITY,
        ..QueueOptions::default()
    };
    let holder = backend.queue(INSTANCE, options);
    let other = backend.queue("instance-b", options);
    let t = now_millis();
    let id = enqueue(&*holder, delivery(SOURCE, 1, t)).await;
    let lease = take_one(&*holder, t).await;
    begin(&*holder, &lease, t).await;

    // Renewed well within the visibility timeout, for longer than it: never taken over.
    let renewing_until = Instant::now() + VISIBILITY * 3 / 2;
    let mut renewed;
    loop {
        renewed = Instant::now();
        holder
            .keep_alive(std::slice::from_ref(&lease))
            .await
            .unwrap();
        let taken = other.take(10, now_millis()).await.unwrap();
        assert!(
            taken.is_empty(),
            "taken over {:?} after a renewal: {taken:?}",
            renewed.elapsed()
        );
        if Instant::now() >= renewing_until {
            break;
        }
        sleep(VISIBILITY / 10).await;
    }

    let taken = eventually("another instance taking the delivery over", async || {
        let mut taken = other.take(10, now_millis()).await.unwrap();
        taken.pop()
    })
    .await;

    // The lease runs on the store's wall clock (CI measured 999.7 ms).
    let idle = renewed.elapsed() + CLOCK_SLACK;
    assert!(
        idle >= VISIBILITY,
        "taken over {idle:?} after the last renewal"
    );
    assert_eq!(taken.delivery_id, id);
    let job = begin(&*other, &taken, now_millis()).await;
    assert_eq!((job.attempt, job.history_index), (2, 1));
    let history = show(&*holder, &id).await.history;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].result, None, "the first attempt never ended");
    assert_eq!(history[0].instance, INSTANCE);
    assert_eq!(history[1].instance, "instance-b");
}

/// An instance whose renewals failed for the visibility timeout (the store stalled) while
/// its attempt went on takes the delivery back itself: the lease comes back as the one it
/// holds, so its worker leaves it to the attempt in progress. On PostgreSQL each take
/// made a new lease token, the worker took the lease for another delivery, and started a
/// second attempt beside the first: one instance delivered the event twice.
pub async fn a_lapsed_lease_taken_back_by_its_own_instance_is_the_lease_it_holds(
    backend: &Backend,
) {
    const VISIBILITY: Duration = Duration::from_secs(1);
    let options = QueueOptions {
        visibility_timeout: VISIBILITY,
        ..QueueOptions::default()
    };
    let holder = backend.queue(INSTANCE, options);
    let t = now_millis();
    let id = enqueue(&*holder, delivery(SOURCE, 1, t)).await;
    let lease = take_one(&*holder, t).await;
    begin(&*holder, &lease, t).await;

    let again = eventually("the lapsed lease taken back", async || {
        holder.take(10, now_millis()).await.unwrap().pop()
    })
    .await;

    assert_eq!(again.delivery_id, id);
    assert_eq!(again, lease, "the lease it holds");
    // Its attempt then settles as usual.
    holder
        .keep_alive(std::slice::from_ref(&lease))
        .await
        .unwrap();
}

/// An instance whose lease lapsed (it stopped renewing, say its connection to the
/// backend was cut for longer than the visibility timeout) and was taken over finishes
/// its attempt late: its settle, hand back, deferral and fetched object change nothing
/// of the delivery the other instance now holds (its attempt is still recorded in its
/// own history entry), and the other instance settles it as usual.
pub async fn a_lease_taken_over_by_another_instance_can_no_longer_move_the_delivery(
    backend: &Backend,
) {
    const VISIBILITY: Duration = Duration::from_secs(1);
    let options = QueueOptions {
        visibility_timeout: VISIBILITY,
        ..QueueOptions::default()
    };
    let late = backend.queue(INSTANCE, options);
    let other = backend.queue("instance-b", options);
    let t = now_millis();
    let id = enqueue(&*late, delivery(SOURCE, 1, t)).await;
    let lease = take_one(&*late, t).await;
    let stale = begin(&*late, &lease, t).await;
    let taken = eventually("another instance taking the delivery over", async || {
        other.take(10, now_millis()).await.unwrap().pop()
    })
    .await;
    let now = now_millis();
    let current = begin(&*other, &taken, now).await;
    assert_eq!(current.attempt, 2);

    let outcome = ended(&stale, now, Some(400), "failed_final");
    let moved = late
        .settle(&stale, &outcome, Settlement::Final, now + 1)
        .await
        .unwrap();
    assert!(
        !moved,
        "a settle by the instance that lost the lease moves nothing"
    );
    late.hand_back(&lease, None, now + 2).await.unwrap();
    late.defer(&lease, now + 60_000, now + 2, WHY)
        .await
        .unwrap();
    let fetched = fetch_step(&stale, now, Some(200), "fetched");
    let attached = late
        .attach(&stale, &fetched, Bytes::from_static(b"{}"), now + 3)
        .await;
    assert!(attached.is_err(), "{attached:?}");
    assert!(late.begin(&lease, now + 4).await.unwrap().is_none());

    let shown = show(&*other, &id).await;
    assert_eq!(shown.summary.state, State::Processing);
    assert_eq!(shown.summary.attempts, 2);
    assert_eq!(shown.history.len(), 2);
    assert_eq!(
        shown.history[0], outcome,
        "the late attempt is still recorded"
    );
    assert_eq!(shown.history[1].instance, "instance-b");

    let delivered = settle_as(&*other, &current, now + 5, Settlement::Processed).await;
    let shown = show(&*other, &id).await;
    assert_eq!(shown.summary.state, State::Processed);
    assert_eq!(shown.history, [outcome, delivered]);
    assert!(
        late.take(10, now_millis() + 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        other
            .take(10, now_millis() + 60_000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A delivery taken over from an instance that died in its attempt, then put back to
/// wait (its upstream's breaker open, its rate spent) without an attempt, is shown
/// waiting (`queued`), not still `processing` under the dead instance for as long as it
/// waits; the attempt that never ended stays in its history, open.
pub async fn a_delivery_taken_over_and_deferred_waits_as_queued(backend: &Backend) {
    const VISIBILITY: Duration = Duration::from_secs(1);
    let options = QueueOptions {
        visibility_timeout: VISIBILITY,
        ..QueueOptions::default()
    };
    let dead = backend.queue(INSTANCE, options);
    let other = backend.queue("instance-b", options);
    let t = now_millis();
    let id = enqueue(&*dead, delivery(SOURCE, 1, t)).await;
    let lease = take_one(&*dead, t).await;
    begin(&*dead, &lease, t).await;
    let taken = eventually("another instance taking the delivery over", async || {
        other.take(10, now_millis()).await.unwrap().pop()
    })
    .await;
    let now = now_millis();

    let deferred = other.defer(&taken, now + 60_000, now, WHY).await.unwrap();

    assert_eq!(deferred, Deferred::Waiting);
    let shown = show(&*other, &id).await;
    assert_eq!(shown.summary.state, State::Queued);
    assert_eq!(shown.summary.next_attempt_at, Some(now + 60_000));
    assert_eq!(
        shown.summary.attempts, 1,
        "the attempt that never ended still counts"
    );
    assert_eq!(shown.history.len(), 1);
    assert_eq!(shown.history[0].result, None);
    let listed = listed(
        &*other,
        ListFilter {
            state: Some(State::Processing),
            ..all()
        },
    )
    .await;
    assert!(listed.is_empty(), "listed as processing: {listed:?}");
    let again = take_one(&*other, now + 60_000).await;
    let job = begin(&*other, &again, now + 60_001).await;
    assert_eq!(job.attempt, 2);
}

pub async fn a_delivery_handed_back_is_taken_by_another_instance_at_once(backend: &Backend) {
    let leaving = backend.queue(INSTANCE, QueueOptions::default());
    let staying = backend.queue("instance-b", QueueOptions::default());
    let t = now_millis();
    let id = enqueue(&*leaving, delivery(SOURCE, 1, t)).await;
    let lease = take_one(&*leaving, t).await;
    let job = begin(&*leaving, &lease, t).await;
    let interrupted = ended(&job, t, None, "handed_back");

    leaving
        .hand_back(&lease, Some((&job, &interrupted)), t + 1)
        .await
        .unwrap();

    let taken = take_one(&*staying, t + 2).await;
    assert_eq!(taken.delivery_id, id);
    let job = begin(&*staying, &taken, t + 2).await;
    assert_eq!((job.attempt, job.history_index), (2, 1));
    let history = show(&*staying, &id).await.history;
    assert_eq!(history[0], interrupted);
    assert_eq!(history[1].instance, "instance-b");
}

pub async fn instances_taking_at_once_never_get_the_same_delivery(backend: &Backend) {
    let (a, b) = (
        backend.queue(INSTANCE, QueueOptions::default()),
        backend.queue("instance-b", QueueOptions::default()),
    );
    let (a, b) = (&*a, &*b);
    let t = now_millis();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(enqueue(a, delivery(SOURCE, n, t)).await);
    }

    let mut taken = Vec::new();
    loop {
        let (by_a, by_b) = tokio::join!(a.take(3, t), b.take(3, t));
        let (by_a, by_b) = (by_a.unwrap(), by_b.unwrap());
        if by_a.is_empty() && by_b.is_empty() {
            break;
        }
        taken.extend(by_a.into_iter().map(|lease| (a, lease)));
        taken.extend(by_b.into_iter().map(|lease| (b, lease)));
    }

    let mut got: Vec<&str> = taken.iter().map(|(_, l)| l.delivery_id.as_str()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every delivery taken exactly once");
    // Each instance settles what it took; both see every record.
    for (queue, lease) in &taken {
        let job = begin(*queue, lease, t + 1).await;
        settle_as(*queue, &job, t + 2, Settlement::Processed).await;
    }
    for queue in [a, b] {
        assert_eq!(queue.stats().await.unwrap().depth, 0);
        let processed = ListFilter {
            state: Some(State::Processed),
            ..all()
        };
        assert_eq!(listed(queue, processed).await.len(), 20);
    }
}

pub async fn stopped_instances_holding_nothing_are_pruned_but_not_one_holding_a_delivery(
    backend: &Backend,
) {
    let stopped = backend.queue(INSTANCE, QueueOptions::default());
    let holding = backend.queue("instance-b", QueueOptions::default());
    let pruning = backend.queue("instance-c", QueueOptions::default());
    let t = now_millis();
    // An instance joins when it first takes a delivery: one took one and stopped, one
    // holds one now.
    enqueue(&*stopped, delivery(SOURCE, 1, t)).await;
    attempt_once(&*stopped, t, Settlement::Processed).await;
    enqueue(&*stopped, delivery(SOURCE, 2, t)).await;
    let lease = take_one(&*holding, t).await;

    assert_eq!(pruning.prune(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(
        pruning.prune(Duration::ZERO).await.unwrap(),
        0,
        "the holder stays"
    );

    let job = begin(&*holding, &lease, t).await;
    let delivered = ended(&job, t, Some(200), "processed");
    holding
        .settle(&job, &delivered, Settlement::Processed, t)
        .await
        .unwrap();
    assert_eq!(pruning.prune(Duration::ZERO).await.unwrap(), 1);
}

/// A delivery first attempted long after it was queued (a backlog, a short `max_age`)
/// is listed, by every filter, as long as its record lives: queued, and then as a dead
/// letter. Redis trims its list indexes of entries older than `max_age + retention`,
/// which was only right for deliveries that end within `max_age`: this one was dropped
/// from every list while still queued, and its dead letter at once.
pub async fn a_delivery_past_max_age_and_retention_stays_listed_while_its_record_lives(
    backend: &Backend,
) {
    let queue = backend.queue(
        INSTANCE,
        QueueOptions {
            max_age: Some(Duration::from_secs(1)),
            retention: Duration::from_secs(3600),
            ..QueueOptions::default()
        },
    );
    let queue = &*queue;
    let now = now_millis();
    let old = enqueue(queue, delivery(SOURCE, 1, now - 2 * 3600 * 1000)).await;
    // Enough enqueues after it for every partition's indexes to be trimmed.
    let others = 64 * backend.partitions as u64 + 1;
    let listed_everywhere = async |state: State| {
        let filters = [
            all(),
            ListFilter {
                state: Some(state),
                ..all()
            },
            ListFilter {
                source: Some(SOURCE.to_owned()),
                ..all()
            },
            ListFilter {
                search: Some(old.clone()),
                ..all()
            },
        ];
        for filter in filters {
            let mut found = false;
            let mut filter = ListFilter {
                limit: 1000,
                ..filter
            };
            loop {
                let page = queue.list(&filter).await.unwrap();
                found |= page.deliveries.iter().any(|d| d.id == old);
                match page.next {
                    Some(next) if !found => filter.after = Some(next),
                    _ => break,
                }
            }
            assert!(found, "{old} ({state:?}) is not listed by {filter:?}");
        }
    };
    for n in 0..others {
        enqueue(queue, delivery(SOURCE, 100 + n, now + n)).await;
    }
    listed_everywhere(State::Queued).await;

    let lease = loop {
        let leases = queue.take(10, now + others).await.unwrap();
        assert!(!leases.is_empty(), "{old} was never taken");
        let (mine, rest): (Vec<Lease>, Vec<Lease>) =
            leases.into_iter().partition(|l| l.delivery_id == old);
        for lease in rest {
            queue.hand_back(&lease, None, now + others).await.unwrap();
        }
        if let Some(lease) = mine.into_iter().next() {
            break lease;
        }
    };
    let job = begin(queue, &lease, now + others).await;
    settle_as(queue, &job, now + others, Settlement::Final).await;
    for n in 0..others {
        enqueue(queue, delivery(SOURCE, 1000 + n, now + others + n)).await;
    }
    listed_everywhere(State::FailedFinal).await;
}

/// A filter holding a NUL matches nothing, on every backend, and fails nowhere
/// (PostgreSQL refused the parameter: 503 `queue_unavailable` for a typo'd query).
pub async fn a_filter_holding_a_nul_lists_nothing(queue: &dyn Queue) {
    enqueue(queue, delivery(SOURCE, 1, now_millis())).await;
    for filter in [
        ListFilter {
            event_type: Some("response.\0completed".to_owned()),
            ..all()
        },
        ListFilter {
            source: Some("\0".to_owned()),
            ..all()
        },
        ListFilter {
            search: Some("msg_\0".to_owned()),
            ..all()
        },
    ] {
        let page = queue.list(&filter).await.expect("no failure");
        assert!(page.deliveries.is_empty(), "{filter:?}");
    }
}
