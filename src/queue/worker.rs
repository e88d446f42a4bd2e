//! The workers: take deliveries from the queue, attempt them through the `Forwarder`,
//! settle each attempt by the retry policy.
//!
//! One loop per instance takes as many deliveries as there are free workers
//! (`queue.workers`), each attempted in its own task; a route with `max_concurrency`
//! also needs one of its slots, and a delivery waiting for one holds its worker. A
//! separate task renews this instance's hold on everything it has taken (every third of
//! `queue.visibility_timeout`), so only a dead instance's deliveries are taken over.
//!
//! Shutdown stops taking at once and hands back deliveries still waiting for a route
//! slot; attempts in flight get `server.shutdown_timeout` to finish, then are cut short
//! and handed back (the next instance attempts them again, with the same `webhook-id`).
//! Each attempt is one log line (target `hookgate::delivery`), never with the body.
//!
//! On an `enrich` route the object behind the event is fetched before the attempt
//! (`before_attempt`), once: a fetch is a step of its own in the history (and its own
//! log line), a failed one is retried with the backoff without counting as an attempt.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::record::answer_start;
use super::{
    Attempt, Deferred, Job, Lease, Queue, Settlement, State, Step, Verdict, decide, jitter_sample,
    now_millis,
};
use crate::breaker::Admission;
use crate::config::{DeliveryMode, QueueSettings, Settings};
use crate::enrich::{self, Enricher, FetchVerdict, Plan};
use crate::event::KeyBinding;
use crate::forward::{self, Forwarder};
use crate::log_gate::LogGate;
use crate::metrics::{DeliveryMetrics, Metrics, RouteMetrics};
use crate::route::{RatePolicy, Route};
use crate::telemetry::{Span, Telemetry};
use crate::upstream::UpstreamOutcome;

/// How often the queue is asked for work when there was none (a local enqueue wakes the
/// workers at once; this bounds the wait for deliveries enqueued by other instances
/// and for retries coming due).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a delivery waits, without an attempt, when this instance has no such route.
const ROUTE_MISSING_WAIT: Duration = Duration::from_secs(30);
/// How often `hookgate_queue_depth` and `hookgate_queue_oldest_age_seconds` are refreshed
/// when asking is cheap. Where the answer costs the store more as the queue grows
/// (PostgreSQL counts the due rows through their index, one by one), every instance asking
/// every second would keep a database core busy with gauges during the very backlog they
/// report; so the pause after each refresh is `STATS_BUDGET` times what it took, within
/// `STATS_INTERVAL..=STATS_MAX_INTERVAL`: the gauges take at most 1 % of the time.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
const STATS_BUDGET: u32 = 100;
const STATS_MAX_INTERVAL: Duration = Duration::from_secs(60);
/// How often stopped instances are forgotten, and how long one must have been idle.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_IDLE: Duration = Duration::from_secs(3600);
/// Waits between tries to record an attempt's result while the store is failing.
const SETTLE_RETRIES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

pub const X_HOOKGATE_DELIVERY_ID: HeaderName = HeaderName::from_static("x-hookgate-delivery-id");
pub const X_HOOKGATE_ATTEMPT: HeaderName = HeaderName::from_static("x-hookgate-attempt");

/// A queue-mode route as the workers need it.
struct Lane {
    route: Route,
    /// The source's scheme, for `X-Hookgate-Verified` when the route re-signs.
    scheme: &'static str,
    /// The source's key binding: a re-signed attempt's `webhook-id` is the claim key.
    binding: KeyBinding,
    upstream: RouteMetrics,
    deliveries: DeliveryMetrics,
    /// `max_concurrency` slots, shared by this instance's workers.
    limit: Option<Arc<Semaphore>>,
    /// `enrich`: the object behind the event, fetched before the first attempt.
    enrich: Option<Enricher>,
    /// `rate`: the next start this instance has not yet promised to a delivery it put
    /// back (`Lane::turn`).
    next_turn: Mutex<Option<tokio::time::Instant>>,
}

impl Lane {
    /// How long a delivery the route's `rate` refused (`wait`: until the bucket's next
    /// free start) waits: for a turn of its own, one interval after the last one this
    /// instance gave out. Each told the same `wait`, a backlog of N came back all at
    /// once, one started and the rest were paced and put back again, N store round
    /// trips every interval; with turns they come back one an interval.
    fn turn(&self, wait: Duration, rate: RatePolicy) -> Duration {
        let (interval, _) = crate::store::gcra(rate.per_second, 1);
        let now = tokio::time::Instant::now();
        let mut next = self.next_turn.lock().unwrap_or_else(|p| p.into_inner());
        let at = next.map_or(now + wait, |next| next.max(now + wait));
        *next = Some(at + interval);
        at - now
    }

    /// Gives back a turn `turn` gave out that no delivery will take: its deferral
    /// dead-lettered the delivery (the turn was past `max_age`) or failed. Kept, each
    /// such turn pushed every later one out by an interval: after a burst that outran
    /// `max_age`, a lone delivery the bucket refused even briefly got a turn past its
    /// `max_age` and was dead-lettered unsent, with the route idle.
    fn give_back(&self, rate: RatePolicy) {
        let (interval, _) = crate::store::gcra(rate.per_second, 1);
        let now = tokio::time::Instant::now();
        let mut next = self.next_turn.lock().unwrap_or_else(|p| p.into_inner());
        *next = next
            .and_then(|at| at.checked_sub(interval))
            .filter(|at| *at > now);
    }
}

/// Releases a delivery's lease when its attempt panics, so that it is no longer renewed
/// and another instance (or this one) takes it over after the visibility timeout; held
/// and renewed for good, it was never attempted again nor dead-lettered.
struct ReleaseOnPanic<'a> {
    workers: &'a Workers,
    lease: &'a Lease,
}

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.workers.release(self.lease);
        }
    }
}

pub struct Workers {
    queue: Arc<dyn Queue>,
    policy: QueueSettings,
    /// By `<source>/<route>`; replaced whole by a reload.
    lanes: ArcSwap<HashMap<String, Arc<Lane>>>,
    forward: Arc<Forwarder>,
    metrics: Arc<Metrics>,
    instance: String,
    slots: Arc<Semaphore>,
    /// Everything taken and not yet settled or handed back: renewed by `keep_alive`.
    held: Mutex<HashSet<Lease>>,
    /// A worker finished: there may be room to take more.
    freed: Notify,
    /// Ingress enqueued something.
    wake: Arc<Notify>,
    telemetry: Telemetry,
    /// Deliveries to a route this instance lacks are logged at most once a minute.
    unrouted: LogGate,
}

impl Workers {
    pub fn new(
        settings: &Settings,
        queue: Arc<dyn Queue>,
        forward: Arc<Forwarder>,
        metrics: Arc<Metrics>,
        instance: String,
        wake: Arc<Notify>,
        telemetry: Telemetry,
    ) -> Option<Arc<Workers>> {
        let policy = settings.queue.clone()?;
        let lanes = lanes(settings, &metrics, &HashMap::new());
        Some(Arc::new(Workers {
            slots: Arc::new(Semaphore::new(policy.workers)),
            queue,
            policy,
            lanes: ArcSwap::from_pointee(lanes),
            forward,
            metrics,
            instance,
            held: Mutex::new(HashSet::new()),
            freed: Notify::new(),
            wake,
            telemetry,
            unrouted: LogGate::new(Duration::from_secs(60)),
        }))
    }

    /// Takes the queue-mode routes of reloaded settings. A route whose `max_concurrency`
    /// is unchanged keeps its slots, so attempts in progress still count against it.
    pub fn set_routes(&self, settings: &Settings) {
        let current = self.lanes.load();
        self.lanes
            .store(Arc::new(lanes(settings, &self.metrics, &current)));
    }

    /// Runs until `stop` turns true, then shuts down within `grace` (see the module doc).
    pub fn start(self: &Arc<Self>, stop: watch::Receiver<bool>, grace: Duration) -> JoinHandle<()> {
        tokio::spawn(self.clone().run(stop, grace))
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, grace: Duration) {
        let (stopping_tx, stopping) = watch::channel(false);
        let (cut_short_tx, cut_short) = watch::channel(false);
        let keeper = tokio::spawn(self.clone().keep_alive_forever());
        let stats = tokio::spawn(self.clone().stats_forever());
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let free = self.slots.available_permits();
            let mut took = 0;
            if free > 0 {
                match self.queue.take(free, now_millis()).await {
                    Ok(leases) => {
                        failures = 0;
                        took = leases.len();
                        for lease in leases {
                            // Taken back by this instance itself (Redis' XAUTOCLAIM
                            // does not skip its own consumer) after its renewals failed
                            // for the visibility timeout: the attempt holding it goes
                            // on, and a second one would race it to the settle.
                            if self.holds(&lease) {
                                continue;
                            }
                            let slot = self
                                .slots
                                .clone()
                                .try_acquire_owned()
                                .expect("no more leases than free workers");
                            self.hold(&lease);
                            tasks.spawn(self.clone().deliver(
                                lease,
                                slot,
                                stopping.clone(),
                                cut_short.clone(),
                            ));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures % 100 == 0 {
                            tracing::warn!(error = %e, failures, "queue: cannot take deliveries");
                        }
                    }
                }
            }
            if took > 0 && took == free {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = until(&mut stop) => {}
                _ = self.wake.notified() => {}
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }

        // Answered 202 from now on, a delivery in an in-process queue would be lost.
        self.queue.stop_accepting();
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "queue: no new work; finishing or handing back deliveries in flight"
            );
        }
        let _ = stopping_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "queue: shutdown timeout reached; handing back attempts still in flight"
            );
            let _ = cut_short_tx.send(true);
            while tasks.join_next().await.is_some() {}
        }
        keeper.abort();
        stats.abort();
        if self.queue.in_process()
            && let Ok(stats) = self.queue.stats().await
            && stats.depth > 0
        {
            tracing::warn!(
                lost = stats.depth,
                "queue: in-memory queue not empty at shutdown; these deliveries are lost"
            );
        }
    }

    fn hold(&self, lease: &Lease) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease.clone());
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(lease)
    }

    fn release(&self, lease: &Lease) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lease);
        self.freed.notify_one();
    }

    async fn keep_alive_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.policy.visibility_timeout / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let leases: Vec<Lease> = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if leases.is_empty() {
                continue;
            }
            if let Err(e) = self.queue.keep_alive(&leases).await {
                tracing::warn!(error = %e, held = leases.len(), "queue: cannot renew held deliveries");
            }
        }
    }

    /// Refreshes the queue gauges (every second while that is cheap: `stats_pause`); now
    /// and then forgets stopped instances.
    async fn stats_forever(self: Arc<Self>) {
        self.metrics.queue_counting();
        let mut pruned = tokio::time::Instant::now();
        let mut failed = 0u32;
        loop {
            let asked = tokio::time::Instant::now();
            // A count that failed (timed out in a store stall), and the first one after
            // it (slowed by the reconnection), say nothing of what a count costs: paced
            // by their time, the gauges stayed stale for a minute after the store was back.
            // Failed counts are asked again after 1, 2, 4 ... 60 s.
            let pause = match self.queue.stats().await {
                Ok(stats) => {
                    self.metrics.queue_stats(stats.depth, stats.oldest_age);
                    if std::mem::take(&mut failed) > 0 {
                        STATS_INTERVAL
                    } else {
                        stats_pause(asked.elapsed())
                    }
                }
                Err(_) => {
                    failed = (failed + 1).min(7);
                    (STATS_INTERVAL * (1 << (failed - 1))).min(STATS_MAX_INTERVAL)
                }
            };
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                match self.queue.prune(PRUNE_IDLE).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "queue: forgot stopped instances"),
                    Err(e) => tracing::warn!(error = %e, "queue: cannot prune stopped instances"),
                }
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn hand_back(&self, lease: &Lease, interrupted: Option<(&Job, &Attempt)>) {
        if let Err(e) = self.queue.hand_back(lease, interrupted, now_millis()).await {
            // Still pending under this instance, which stops renewing it now: another
            // instance takes it over after the visibility timeout.
            tracing::warn!(delivery_id = %lease.delivery_id, error = %e, "queue: hand back failed");
        }
        self.release(lease);
    }

    /// Puts a taken delivery back to wait `wait` without an attempt (`Queue::defer`),
    /// `why` (for the record's last error should the wait reach past `max_age`). `true`
    /// when it waits (or another instance holds it now); `false` when it was
    /// dead-lettered or could not be put back.
    async fn defer(
        &self,
        lane: Option<&Arc<Lane>>,
        lease: &Lease,
        wait: Duration,
        why: &str,
    ) -> bool {
        let now = now_millis();
        let until = now + wait.as_millis().max(1) as u64;
        let why = format!("{why} until past queue.max_age; not attempted");
        let waits = match self.queue.defer(lease, until, now, &why).await {
            Ok(Deferred::Waiting) => true,
            Ok(Deferred::DeadLettered { attempts }) => {
                tracing::warn!(delivery_id = %lease.delivery_id, route = %lease.route, error = %why, "queue: dead-lettered without an attempt");
                // The delivery's own line too: one followed through `hookgate::delivery`
                // ended at its last retry's `failed_retryable` otherwise. Its record is
                // not loaded before an attempt, so the line has no webhook id or type.
                let (source, route) = lease.route.split_once('/').unwrap_or(("", &lease.route));
                tracing::info!(
                    target: "hookgate::delivery",
                    source,
                    route,
                    delivery_id = %lease.delivery_id,
                    step = "none",
                    attempt = attempts,
                    result = State::FailedFinal.as_str(),
                    error = %why,
                );
                // A route this instance lacks has no lane, but its dead letter counts as
                // any other (HookgateDeadLetters): it needs a replay once the route is back.
                match lane {
                    Some(lane) => lane.deliveries.observe(State::FailedFinal, attempts),
                    None => self
                        .metrics
                        .delivery(&lease.route)
                        .observe(State::FailedFinal, attempts),
                }
                false
            }
            // Still pending under this instance: it is taken over after the
            // visibility timeout, like a hand back that failed.
            Err(e) => {
                tracing::warn!(delivery_id = %lease.delivery_id, error = %e, "queue: cannot defer a delivery");
                false
            }
        };
        self.release(lease);
        waits
    }

    /// One delivery, from its lease to its settlement.
    async fn deliver(
        self: Arc<Self>,
        lease: Lease,
        _worker: OwnedSemaphorePermit,
        mut stopping: watch::Receiver<bool>,
        mut cut_short: watch::Receiver<bool>,
    ) {
        let _unwind = ReleaseOnPanic {
            workers: &self,
            lease: &lease,
        };
        let lanes = self.lanes.load_full();
        // A route this instance does not have (added on the instances already updated
        // in a rolling deploy, or removed here by a reload): nothing can be sent, so no
        // attempt is spent; the delivery waits for an instance that has it, and
        // `max_age` ends the wait.
        let Some(lane) = lanes.get(&lease.route) else {
            if let Some(held_back) = self.unrouted.admit(std::time::Instant::now()) {
                tracing::warn!(delivery_id = %lease.delivery_id, route = %lease.route, held_back, "queue: the delivery's route is not configured on this instance; it waits for one that has it, without an attempt");
            }
            let why = format!("route {} is not configured on this instance", lease.route);
            self.defer(None, &lease, ROUTE_MISSING_WAIT, &why).await;
            return;
        };
        // An open breaker: the delivery waits in the queue, no attempt spent, and this
        // worker moves on to other upstreams' deliveries.
        let why = "the upstream's circuit breaker stayed open";
        let mut pass = match self.forward.admit(&lane.route, tokio::time::Instant::now()) {
            Admission::Open { retry_after } => {
                self.defer(Some(lane), &lease, retry_after, why).await;
                return;
            }
            Admission::Pass(pass) => pass,
        };
        let _route_slot: Option<OwnedSemaphorePermit> = match lane.limit.clone() {
            Some(limit) => tokio::select! {
                permit = limit.acquire_owned() => permit.ok(),
                _ = until(&mut stopping) => {
                    self.hand_back(&lease, None).await;
                    return;
                }
            },
            None => None,
        };
        // The wait for a slot lasts as long as the attempts ahead of it, which are what
        // opens a breaker: a pass from before it is asked again (a probe is kept), so
        // the workers queued behind a dying upstream do not all send anyway.
        if lane.limit.is_some() && !pass.is_probe() {
            match self.forward.admit(&lane.route, tokio::time::Instant::now()) {
                Admission::Open { retry_after } => {
                    self.defer(Some(lane), &lease, retry_after, why).await;
                    return;
                }
                Admission::Pass(fresh) => pass = fresh,
            }
        }
        if *stopping.borrow() {
            self.hand_back(&lease, None).await;
            return;
        }
        // `rate`: a start now would exceed the upstream's rate (counted across every
        // instance on a shared queue): the delivery waits in the queue, no attempt spent.
        if let Some(rate) = lane.route.rate() {
            match self.queue.pace(lane.route.label(), rate).await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    let wait = lane.turn(wait, rate);
                    let why = "the route's rate kept it waiting";
                    if !self.defer(Some(lane), &lease, wait, why).await {
                        lane.give_back(rate);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(delivery_id = %lease.delivery_id, error = %e, "queue: cannot check the route's rate");
                    let why = "the route's rate could not be checked";
                    self.defer(Some(lane), &lease, Duration::from_secs(1), why)
                        .await;
                    return;
                }
            }
        }
        // A reload while this delivery waited (for a `max_concurrency` slot, most of
        // all): attempted now, it would go to the upstream, `resign` secret and limits
        // of the configuration it was taken under, for as long as the backlog lasts. It
        // is handed back, to be taken again at once under the running one.
        if !Arc::ptr_eq(&lanes, &self.lanes.load()) {
            self.hand_back(&lease, None).await;
            return;
        }
        let job = match self.queue.begin(&lease, now_millis()).await {
            Ok(Some(job)) => job,
            Ok(None) => return self.release(&lease),
            Err(e) => {
                tracing::warn!(delivery_id = %lease.delivery_id, error = %e, "queue: cannot begin an attempt");
                return self.release(&lease);
            }
        };
        // Past `max_attempts` already as it begins: the attempts before it never reached
        // their settle (their instance was killed or crashed in them, which a poison
        // delivery can do every time), and only a settle checks the limit. Final now,
        // unsent, as that settle would have made it. (`max_age` is left to the settles:
        // a delivery a backlog kept waiting past it is still attempted once due.)
        if job.attempt > self.policy.max_attempts {
            return self.unfinished_past_limits(lane, &job).await;
        }
        let span = self.attempt_span(&job).await;
        let Some((job, body, enriched_by)) =
            self.before_attempt(lane, job, &span, &mut cut_short).await
        else {
            span.end();
            return;
        };
        let started_at = now_millis();
        let started = Instant::now();
        let delivery = &job.delivery;
        let mut headers = attempt_headers(&job);
        if let Some(provider) = enriched_by {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                enrich::X_HOOKGATE_ENRICHED,
                HeaderValue::from_static(provider),
            );
        }
        // A re-signed attempt's `webhook-id` is the claim key, as in proxy mode: where the
        // sender's id is unsigned, the id with the hash of the event, so that a backend
        // deduplicating on `webhook-id` cannot be made to drop the genuine delivery by a
        // replayed body sent first under its id. Hashed only for a route that re-signs.
        let resigned_id = match lane.route.resign() {
            Some(_) => {
                lane.binding
                    .claim_key(&delivery.webhook_id, &delivery.event_type, &delivery.body)
            }
            None => std::borrow::Cow::Borrowed(delivery.webhook_id.as_str()),
        };
        forward::prepare(
            &lane.route,
            &mut headers,
            &resigned_id,
            lane.scheme,
            &body,
            std::time::SystemTime::now(),
        );
        let call = span.upstream_call(lane.route.upstream());
        call.inject(&mut headers);
        let send = self
            .forward
            .send(&lane.route, &lane.upstream, headers, body.clone(), false);
        let (outcome, error) = tokio::select! {
            outcome = send => {
                call.upstream(&outcome);
                call.end();
                let error = failure(&lease.route, &outcome);
                (outcome, error)
            }
            _ = until(&mut cut_short) => {
                let attempt = self.interrupted(&job, Step::Deliver, started_at, started, &span);
                self.hand_back(&lease, Some((&job, &attempt))).await;
                span.set("hookgate.attempt.result", "handed_back");
                return;
            }
        };
        pass.record(&outcome, tokio::time::Instant::now());
        let status = outcome.status().map(|s| s.as_u16());
        let now = now_millis();
        let age = Duration::from_millis(now.saturating_sub(job.enqueued_at));
        let verdict = decide(
            &self.policy.retry_policy(),
            job.attempt,
            &outcome,
            age,
            jitter_sample(),
        );
        let (settlement, error) = match verdict {
            Verdict::Processed => (Settlement::Processed, error),
            Verdict::Retry { delay } => {
                (Settlement::RetryAt(now + delay.as_millis() as u64), error)
            }
            Verdict::Final(reason) => (
                Settlement::Final,
                Some(match error {
                    Some(e) => format!("{e}; {}", reason.describe()),
                    None => reason.describe().to_owned(),
                }),
            ),
        };
        let attempt = Attempt {
            attempt: job.attempt,
            step: Step::Deliver,
            started_at,
            duration_ms: Some(started.elapsed().as_millis() as u64),
            status,
            error,
            result: Some(settlement.state().as_str().to_owned()),
            instance: self.instance.clone(),
            answer: match &outcome {
                UpstreamOutcome::Answered(reply) => answer_start(&reply.body),
                _ => None,
            },
            trace_id: span.trace_id(),
        };
        let moved = self.settle(&job, &attempt, settlement).await;
        span.set("hookgate.attempt.result", settlement.state().as_str());
        if let Some(status) = status {
            span.set("http.response.status_code", i64::from(status));
        }
        if settlement != Settlement::Processed {
            span.fail(settlement.state().as_str());
        }
        span.end();
        if moved {
            lane.deliveries.observe(settlement.state(), job.attempt);
        }
        log_step(&job, &attempt, Some(settlement));
        self.release(&lease);
    }

    /// Dead-letters `job`, begun past `max_attempts`, without sending it. Its history
    /// tells the two causes apart (attempts without a result, or with one); the job
    /// does not carry it.
    async fn unfinished_past_limits(&self, lane: &Lane, job: &Job) {
        let error = format!(
            "not attempted: attempt {} of at most {}; the attempts before it never finished \
             (their instance stopped or crashed in them), or queue.max_attempts was lowered \
             since the last one",
            job.attempt, self.policy.max_attempts,
        );
        let attempt = Attempt {
            attempt: job.attempt,
            step: Step::Deliver,
            started_at: now_millis(),
            duration_ms: Some(0),
            status: None,
            error: Some(error),
            result: Some(State::FailedFinal.as_str().to_owned()),
            instance: self.instance.clone(),
            answer: None,
            trace_id: None,
        };
        tracing::warn!(delivery_id = %job.lease.delivery_id, route = %job.lease.route, attempt = job.attempt, "queue: dead-lettered unsent: the attempts before this one never finished");
        if self.settle(job, &attempt, Settlement::Final).await {
            lane.deliveries.observe(State::FailedFinal, job.attempt);
            log_step(job, &attempt, Some(Settlement::Final));
        }
        self.release(&job.lease);
    }

    /// The body of the attempt: the event as received, or on an `enrich` route `{"event",
    /// "object"}` with the object the record keeps, fetched first if it has none (then
    /// also the provider that enriched it). `None` when there is no attempt now: the
    /// fetch failed (and was settled as a retry or a final failure), the instance is
    /// shutting down (handed back), or the object could not be stored (left to be taken
    /// over, as when a settlement cannot be recorded).
    /// `span` (the attempt's) says what became of an attempt that ends here.
    async fn before_attempt(
        &self,
        lane: &Arc<Lane>,
        job: Job,
        span: &Span,
        cut_short: &mut watch::Receiver<bool>,
    ) -> Option<(Job, Bytes, Option<&'static str>)> {
        let Some(enricher) = lane.enrich.as_ref() else {
            let body = job.delivery.body.clone();
            return Some((job, body, None));
        };
        let enriched_by = Some(enricher.provider());
        let delivery = &job.delivery;
        let object = match enricher.plan(&delivery.event_type, &delivery.body, job.object.as_ref())
        {
            Plan::AsReceived => {
                let body = job.delivery.body.clone();
                return Some((job, body, None));
            }
            Plan::Ready(body) => return Some((job, body, enriched_by)),
            Plan::Fetch(object) => object,
            Plan::Unfetchable(failure) => {
                self.fetch_failed(lane, &job, span, now_millis(), Duration::ZERO, failure)
                    .await;
                return None;
            }
        };
        let started_at = now_millis();
        let started = Instant::now();
        let fetched = tokio::select! {
            fetched = enricher.fetch(&object) => fetched,
            _ = until(cut_short) => {
                let step = self.interrupted(&job, Step::Fetch, started_at, started, span);
                self.hand_back(&job.lease, Some((&job, &step))).await;
                span.set("hookgate.attempt.result", "handed_back");
                return None;
            }
        };
        let (status, fetched) = match fetched {
            Ok(fetched) => fetched,
            Err(failure) => {
                self.fetch_failed(lane, &job, span, started_at, started.elapsed(), failure)
                    .await;
                return None;
            }
        };
        let step = Attempt {
            attempt: job.attempt,
            step: Step::Fetch,
            started_at,
            duration_ms: Some(started.elapsed().as_millis() as u64),
            status: Some(status),
            error: None,
            result: Some("fetched".to_owned()),
            instance: self.instance.clone(),
            answer: None,
            trace_id: span.trace_id(),
        };
        log_step(&job, &step, None);
        match self.queue.attach(&job, &step, fetched, now_millis()).await {
            Ok(job) => {
                let object = job.object.clone().unwrap_or_default();
                let body = enrich::enriched_body(&job.delivery.body, &object);
                Some((job, body, enriched_by))
            }
            Err(e) => {
                tracing::warn!(delivery_id = %job.lease.delivery_id, error = %e, "queue: cannot keep a fetched object");
                span.fail("the fetched object could not be stored");
                self.release(&job.lease);
                None
            }
        }
    }

    /// A step of `job` that shutdown cut short, as its history entry records it.
    fn interrupted(
        &self,
        job: &Job,
        step: Step,
        started_at: u64,
        started: Instant,
        span: &Span,
    ) -> Attempt {
        Attempt {
            attempt: job.attempt,
            step,
            started_at,
            duration_ms: Some(started.elapsed().as_millis() as u64),
            status: None,
            error: Some("interrupted: the instance shut down; handed back".to_owned()),
            result: Some("handed_back".to_owned()),
            instance: self.instance.clone(),
            answer: None,
            trace_id: span.trace_id(),
        }
    }

    /// Settles a failed fetch as `enrich::after_failure` says: a retry that is not an
    /// attempt, or a final failure.
    async fn fetch_failed(
        &self,
        lane: &Lane,
        job: &Job,
        span: &Span,
        started_at: u64,
        took: Duration,
        failure: enrich::FetchFailure,
    ) {
        let now = now_millis();
        let age = Duration::from_millis(now.saturating_sub(job.enqueued_at));
        let verdict = enrich::after_failure(
            &failure,
            &self.policy.retry_policy(),
            job.failed_fetches,
            age,
            jitter_sample(),
        );
        let (settlement, error) = match verdict {
            FetchVerdict::Retry { delay } => (
                Settlement::RetryAt(now + delay.as_millis() as u64),
                failure.detail,
            ),
            FetchVerdict::Final(why) => (Settlement::Final, format!("{}; {why}", failure.detail)),
        };
        let step = Attempt {
            attempt: job.attempt,
            step: Step::Fetch,
            started_at,
            duration_ms: Some(took.as_millis() as u64),
            status: failure.status,
            error: Some(error),
            result: Some(settlement.state().as_str().to_owned()),
            instance: self.instance.clone(),
            answer: None,
            trace_id: span.trace_id(),
        };
        let moved = self.settle(job, &step, settlement).await;
        if moved && settlement == Settlement::Final {
            lane.deliveries
                .observe(settlement.state(), job.attempt.saturating_sub(1));
        }
        log_step(job, &step, Some(settlement));
        span.set("hookgate.attempt.result", settlement.state().as_str());
        span.fail(&format!(
            "fetching the object failed: {}",
            settlement.state().as_str()
        ));
        self.release(&job.lease);
    }

    /// The span of the attempt `job` begins, in the trace its delivery was stored with:
    /// its number, its delivery and route, this instance, and the wait before it (since
    /// the delivery was queued, or since the attempt before it ended, which is read
    /// from the record's history only when the span is sampled).
    async fn attempt_span(&self, job: &Job) -> Span {
        let span = self
            .telemetry
            .attempt(job.delivery.trace_context.as_deref());
        if !span.is_recording() {
            return span;
        }
        let now = now_millis();
        span.set("hookgate.attempt", i64::from(job.attempt));
        span.set("hookgate.delivery_id", job.lease.delivery_id.clone());
        span.set("hookgate.route", job.lease.route.clone());
        span.set("hookgate.webhook_id", job.delivery.webhook_id.clone());
        span.set("hookgate.event_type", job.delivery.event_type.clone());
        span.set("hookgate.instance", self.instance.clone());
        let since = if job.attempt <= 1 {
            Some(job.enqueued_at)
        } else {
            match self.queue.show(&job.lease.delivery_id, false).await {
                Ok(Some(record)) => record
                    .history
                    .iter()
                    .rev()
                    .filter(|a| a.step.is_deliver() && a.attempt + 1 == job.attempt)
                    .find_map(|a| Some(a.started_at + a.duration_ms?)),
                _ => None,
            }
        };
        if let Some(since) = since {
            span.set("hookgate.attempt.wait_ms", now.saturating_sub(since) as i64);
        }
        span
    }

    /// Records the attempt, retrying briefly while the store fails. If it never
    /// succeeds the delivery stays taken by this instance, which stops renewing it, and
    /// another instance attempts it again after the visibility timeout. Whether the
    /// settle moved the delivery on, so that its outcome is counted once: not when the
    /// lease had been taken over, nor when it never went through (the attempt after the
    /// takeover is counted). A try that failed and a retry that found the lease gone is
    /// taken as the first try having gone through.
    async fn settle(&self, job: &Job, attempt: &Attempt, settlement: Settlement) -> bool {
        let mut last = None;
        for wait in SETTLE_RETRIES {
            tokio::time::sleep(wait).await;
            match self
                .queue
                .settle(job, attempt, settlement, now_millis())
                .await
            {
                Ok(moved) => return moved || last.is_some(),
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::error!(
                delivery_id = %job.lease.delivery_id,
                error = %e,
                "queue: cannot record an attempt's result; it will be attempted again"
            );
        }
        false
    }
}

/// The log line of an attempt or of a fetch (`step = "fetch"`), never with the body.
/// `settlement` is how it moved the delivery on, when it did.
fn log_step(job: &Job, step: &Attempt, settlement: Option<Settlement>) {
    let delivery = &job.delivery;
    tracing::info!(
        target: "hookgate::delivery",
        source = %delivery.source,
        route = %delivery.route,
        delivery_id = %job.lease.delivery_id,
        webhook_id = %delivery.webhook_id,
        event_type = %delivery.event_type,
        step = (step.step == Step::Fetch).then_some("fetch"),
        attempt = job.attempt,
        status = step.status,
        result = step.result.as_deref(),
        next_attempt_at = match settlement { Some(Settlement::RetryAt(at)) => Some(at), _ => None },
        duration_ms = step.duration_ms,
        error = step.error.as_deref(),
    );
}

/// The pause before the next refresh of the queue gauges, after one that took `took`.
fn stats_pause(took: Duration) -> Duration {
    (took * STATS_BUDGET).clamp(STATS_INTERVAL, STATS_MAX_INTERVAL)
}

/// Resolves once `flag` is true (or its sender is gone), holding no borrow of it.
async fn until(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// The queue-mode routes of `settings`, reusing the slots of `current` where the limit
/// is the same.
fn lanes(
    settings: &Settings,
    metrics: &Metrics,
    current: &HashMap<String, Arc<Lane>>,
) -> HashMap<String, Arc<Lane>> {
    let mut lanes: HashMap<String, Arc<Lane>> = settings
        .sources
        .iter()
        .filter(|s| s.delivery == DeliveryMode::Queue)
        // A fan-out route has a lane per upstream, keyed `<source>/<route>/<upstream>`
        // as its copies' records are (`Route::copies`).
        .flat_map(|s| {
            s.routes.iter().flat_map(move |configured| {
                configured
                    .copies()
                    .into_iter()
                    .map(move |route| (s, configured.name(), route))
            })
        })
        .map(|(source, configured, route)| {
            let limit = match current.get(route.label()) {
                Some(lane) if lane.route.max_concurrency() == route.max_concurrency() => {
                    lane.limit.clone()
                }
                _ => route
                    .max_concurrency()
                    .map(|n| Arc::new(Semaphore::new(n.get() as usize))),
            };
            let lane = Lane {
                scheme: source.scheme,
                binding: source.binding,
                upstream: metrics.route(route.label()),
                deliveries: metrics.delivery(route.label()),
                limit,
                enrich: source.enrich.get(configured).map(|settings| {
                    Enricher::new(
                        settings.clone(),
                        metrics.enrich(route.label()),
                        route.label(),
                    )
                }),
                route: route.clone(),
                next_turn: Mutex::new(None),
            };
            (route.label().to_owned(), Arc::new(lane))
        })
        .collect();
    // A delivery is addressed to `<route>` while its route has one upstream and to
    // `<route>/<key>` once it has several: deliveries queued before a reload or deploy
    // that changed the count are delivered by the lane they now stand for (they waited
    // for a route no instance had, until `max_age` dead-lettered them).
    let routes = settings
        .sources
        .iter()
        .filter(|s| s.delivery == DeliveryMode::Queue)
        .flat_map(|s| s.routes.iter());
    for route in routes {
        let base = route.base_label();
        let (alias, lane) = match route.upstreams() {
            [one] => (format!("{base}/{}", one.key), base.to_owned()),
            [first, ..] => (base.to_owned(), format!("{base}/{}", first.key)),
            [] => continue,
        };
        if let (false, Some(lane)) = (lanes.contains_key(&alias), lanes.get(&lane).cloned()) {
            lanes.insert(alias, lane);
        }
    }
    lanes
}

/// The stored headers plus which delivery and attempt this is. `webhook-id` is the
/// sender's, unchanged on every attempt, so the upstream can deduplicate too.
fn attempt_headers(job: &Job) -> http::HeaderMap {
    let mut headers = job.delivery.headers.clone();
    if let Ok(id) = HeaderValue::from_str(&job.lease.delivery_id) {
        headers.insert(X_HOOKGATE_DELIVERY_ID, id);
    }
    headers.insert(X_HOOKGATE_ATTEMPT, HeaderValue::from(job.attempt));
    headers
}

/// What the attempt's record says went wrong, if anything: the upstream's error
/// answer with the start of its body, or the failed exchange.
fn failure(route: &str, outcome: &UpstreamOutcome) -> Option<String> {
    match outcome {
        UpstreamOutcome::Answered(reply) if reply.status.is_success() => None,
        UpstreamOutcome::Answered(reply) => Some(format!(
            "the upstream answered {}{}",
            reply.status.as_u16(),
            excerpt(&reply.body)
        )),
        failed => Some(format!("upstream of route {route}: {failed}")),
    }
}

/// The start of an upstream's error body, as the backend said it: enough to see why
/// ("invalid customer id"), bounded so a record stays small.
fn excerpt(body: &Bytes) -> String {
    const MAX: usize = 200;
    if body.is_empty() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    format!(": {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamReply;
    use http::StatusCode;

    fn answered(status: u16, body: &'static str) -> UpstreamOutcome {
        UpstreamOutcome::Answered(UpstreamReply {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::from_static(body.as_bytes()),
            retry_after: None,
        })
    }

    #[test]
    fn attempt_records_say_what_went_wrong() {
        assert_eq!(failure("openai/0", &answered(204, "")), None);
        assert_eq!(
            failure("openai/0", &answered(400, "{\"e\":\"bad\"}\n")).unwrap(),
            "the upstream answered 400: {\"e\":\"bad\"}"
        );
        let unreachable = UpstreamOutcome::Unreachable("127.0.0.1:9: refused".into());
        assert_eq!(
            failure("openai/0", &unreachable).unwrap(),
            "upstream of route openai/0: unreachable: 127.0.0.1:9: refused"
        );
        assert_eq!(
            failure("openai/0", &UpstreamOutcome::Gone).unwrap(),
            "upstream of route openai/0: answered 410 Gone"
        );
    }

    #[test]
    fn the_gauges_are_refreshed_every_second_while_asking_is_cheap_and_less_often_when_not() {
        for (took_ms, pause_s) in [(0, 1), (10, 1), (50, 5), (200, 20), (3_000, 60)] {
            let took = Duration::from_millis(took_ms);
            assert_eq!(stats_pause(took), Duration::from_secs(pause_s), "{took:?}");
        }
    }
}
