//! Circuit breakers: stop sending to an upstream that keeps failing, then probe it.
//!
//! One breaker per upstream of a route with `breaker = { failures, cooldown }`, keyed by
//! the route's label and the upstream's name or index, and holding the upstream's URL:
//! a reload that points the key at another URL starts it afresh. Closed, it counts
//! failed attempts in a row (no connection, a timeout, a broken exchange, a 5xx; never a
//! 4xx or any other answer: the backend is up and said no); at `failures` it opens for
//! `cooldown`.
//! Open, nothing is sent (the pipeline answers 503 `upstream_circuit_open`, the workers
//! defer the delivery without an attempt). Once the cooldown is over, the next request
//! is let through as the one probe (half-open): its success closes the breaker, its
//! failure opens it for another cooldown; others wait meanwhile. A probe given back
//! without an outcome leaves it half-open for the next request to probe.
//!
//! State is per instance, in memory: it is decided on every attempt, and a shared one
//! would cost a store round trip each time and a way to agree on one probe across
//! instances. Each instance learns of an outage from its own `failures` attempts, so a
//! dead upstream gets at most `failures` attempts per instance, then one probe per
//! instance per cooldown. Time is passed in (`now`, tokio's clock), never read here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

use crate::metrics::{BreakerMetrics, Metrics};
use crate::route::{BreakerPolicy, Route};
use crate::upstream::UpstreamOutcome;

/// How long a request waits for a probe in flight to decide, at most.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// The breakers of this instance, kept across reloads (a reload that keeps a route's
/// breaker keeps its state; a changed policy applies from the next decision).
pub struct Breakers {
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
}

/// The breakers, and what the running configuration's keys stand for: one lock for
/// both, taken once per admission.
#[derive(Default)]
struct Table {
    by_upstream: HashMap<(String, String), Arc<Breaker>>,
    /// Once a reload set it (`keep_only`): the upstream each key stands for in the
    /// running configuration. A request or attempt still running on the configuration
    /// before gets no breaker for a key that now means another upstream, or none: it
    /// would record the old upstream's outcome in the new one's breaker, or bring a
    /// removed route's breaker and its series back.
    running: Option<HashMap<(String, String), Uri>>,
}

/// What `Breakers::admit` decided.
pub enum Admission {
    /// Send; tell the pass what happened (`Pass::record`).
    Pass(Pass),
    /// Do not send: the breaker is open (or a probe is deciding) for about this long.
    Open { retry_after: Duration },
}

impl Breakers {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Breakers {
            table: Mutex::default(),
            metrics,
        }
    }

    /// Whether `route` (one upstream: a route, or a fan-out route's copy) may be sent to
    /// now. A route without a breaker always passes.
    pub fn admit(&self, route: &Route, now: Instant) -> Admission {
        let Some(policy) = route.breaker() else {
            return Admission::Pass(Pass(None));
        };
        match self.breaker(route, policy) {
            Some(breaker) => breaker.admit(now),
            None => Admission::Pass(Pass(None)),
        }
    }

    /// `None` for a route of a configuration a reload replaced whose key now stands for
    /// another upstream, or for none.
    fn breaker(&self, route: &Route, policy: BreakerPolicy) -> Option<Arc<Breaker>> {
        let key = (
            route.base_label().to_owned(),
            route.upstream_key().to_owned(),
        );
        let url = route.upstream();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table
            .running
            .as_ref()
            .is_some_and(|r| r.get(&key) != Some(url))
        {
            return None;
        }
        let breaker = table.by_upstream.entry(key).or_insert_with(|| {
            let metrics = self
                .metrics
                .breaker(route.base_label(), route.upstream_key());
            metrics.state.set(0);
            Arc::new(Breaker {
                url: url.clone(),
                inner: Mutex::new(Inner {
                    policy,
                    state: State::Closed { failures: 0 },
                }),
                metrics,
            })
        });
        if breaker.url != *url {
            return None;
        }
        breaker.lock().policy = policy;
        Some(breaker.clone())
    }

    /// Forgets the breakers (and their series) of upstreams that `routes` (every route
    /// of a reloaded configuration) no longer has, or has without a breaker, or under
    /// the same key but another URL: a removed route's last state would otherwise stay
    /// on the gauge and its alert for good, and come back with the route; and a route
    /// pointed away from a dead upstream stayed open (an unnamed upstream's key is its
    /// position, so removing one fan-out upstream moved its state onto the next).
    pub fn keep_only<'a>(&self, routes: impl IntoIterator<Item = &'a Route>) {
        let kept: HashMap<(String, String), Uri> = routes
            .into_iter()
            .flat_map(Route::copies)
            .filter(|copy| copy.breaker().is_some())
            .map(|copy| {
                let key = (copy.base_label().to_owned(), copy.upstream_key().to_owned());
                (key, copy.upstream().clone())
            })
            .collect();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.by_upstream.retain(|key, breaker| {
            let keep = kept.get(key) == Some(&breaker.url);
            if !keep {
                self.metrics.forget_breaker(&key.0, &key.1);
            }
            keep
        });
        table.running = Some(kept);
    }
}

/// One upstream's breaker.
struct Breaker {
    /// The upstream it judges.
    url: Uri,
    inner: Mutex<Inner>,
    metrics: BreakerMetrics,
}

struct Inner {
    policy: BreakerPolicy,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over: one probe decides. `probing` while it is out; a probe
    /// given back without an outcome leaves the next request to probe.
    HalfOpen {
        probing: bool,
    },
}

impl State {
    fn gauge(self) -> i64 {
        match self {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

impl Breaker {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: Arc<Self>, now: Instant) -> Admission {
        let mut inner = self.lock();
        match inner.state {
            State::Closed { .. } => {
                drop(inner);
                Admission::Pass(Pass(Some((self, false))))
            }
            State::Open { until } if now < until => Admission::Open {
                retry_after: until - now,
            },
            State::Open { .. } => {
                self.enter(&mut inner, State::HalfOpen { probing: true });
                drop(inner);
                Admission::Pass(Pass(Some((self, true))))
            }
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                drop(inner);
                Admission::Pass(Pass(Some((self, true))))
            }
            State::HalfOpen { probing: true } => Admission::Open {
                retry_after: PROBE_WAIT.min(inner.policy.cooldown),
            },
        }
    }

    fn record(self: &Arc<Self>, failed: bool, probe: bool, now: Instant) {
        let mut inner = self.lock();
        let cooldown = inner.policy.cooldown;
        match (inner.state, failed) {
            (State::HalfOpen { .. }, false) if probe => {
                self.enter(&mut inner, State::Closed { failures: 0 })
            }
            (State::HalfOpen { .. }, true) if probe => self.enter(
                &mut inner,
                State::Open {
                    until: now + cooldown,
                },
            ),
            (State::Closed { .. }, false) => inner.state = State::Closed { failures: 0 },
            (State::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= inner.policy.failures.get() {
                    self.enter(
                        &mut inner,
                        State::Open {
                            until: now + cooldown,
                        },
                    );
                } else {
                    inner.state = State::Closed { failures };
                }
            }
            // An attempt let through before the breaker opened, ending late: the
            // breaker already decided.
            _ => {}
        }
    }

    /// The probe ended without an outcome (the attempt was handed back, deferred by
    /// the route's rate, or its fetch failed): the next request probes at once. No
    /// transition: the upstream neither failed nor answered.
    fn abandon_probe(&self) {
        let mut inner = self.lock();
        if inner.state == (State::HalfOpen { probing: true }) {
            inner.state = State::HalfOpen { probing: false };
        }
    }

    fn enter(self: &Arc<Self>, inner: &mut Inner, state: State) {
        inner.state = state;
        self.metrics.state.set(state.gauge());
        self.metrics.transitions[state.gauge() as usize].inc();
        // The gauge says half-open once the cooldown is over, traffic or not: decided
        // only by the next request, it said open for as long as none came, and the
        // breaker's alert fired for a route that merely had no traffic.
        if let State::Open { until } = state
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let breaker = Arc::downgrade(self);
            runtime.spawn(async move {
                tokio::time::sleep_until(until).await;
                if let Some(breaker) = breaker.upgrade() {
                    breaker.cooled(until);
                }
            });
        }
    }

    /// The cooldown that ended at `until` is over: half-open, the next request probes
    /// (unless the breaker moved on meanwhile).
    fn cooled(self: &Arc<Self>, until: Instant) {
        let mut inner = self.lock();
        if inner.state == (State::Open { until }) {
            self.enter(&mut inner, State::HalfOpen { probing: false });
        }
    }
}

/// Leave to send once; `record` tells the breaker the outcome. Dropped without a
/// record, a probe is given back (the next request probes).
pub struct Pass(Option<(Arc<Breaker>, bool)>);

impl Pass {
    /// A pass no breaker watches.
    pub fn none() -> Pass {
        Pass(None)
    }

    pub fn record(mut self, outcome: &UpstreamOutcome, now: Instant) {
        if let Some((breaker, probe)) = self.0.take() {
            breaker.record(is_failure(outcome), probe, now);
        }
    }

    pub fn is_probe(&self) -> bool {
        self.0.as_ref().is_some_and(|(_, probe)| *probe)
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some((breaker, true)) = self.0.take() {
            breaker.abandon_probe();
        }
    }
}

/// What counts against an upstream: no answer, or a 5xx. A 4xx (and a redirect or 410)
/// is the backend answering: it is up.
pub fn is_failure(outcome: &UpstreamOutcome) -> bool {
    match outcome {
        UpstreamOutcome::Answered(reply) => reply.status.is_server_error(),
        UpstreamOutcome::Redirect(_) | UpstreamOutcome::Gone => false,
        UpstreamOutcome::Timeout | UpstreamOutcome::Unreachable(_) | UpstreamOutcome::Broken(_) => {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;
    use crate::upstream::UpstreamReply;

    fn route(failures: u32, cooldown_ms: u64) -> Route {
        Route::new("src", "r", &["*".to_owned()], "http://127.0.0.1:9/")
            .unwrap()
            .with_breaker(Some(BreakerPolicy {
                failures: NonZeroU32::new(failures).unwrap(),
                cooldown: Duration::from_millis(cooldown_ms),
            }))
    }

    fn answered(status: u16) -> UpstreamOutcome {
        UpstreamOutcome::Answered(UpstreamReply {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::new(),
            retry_after: None,
        })
    }

    fn pass(breakers: &Breakers, route: &Route, now: Instant) -> Pass {
        match breakers.admit(route, now) {
            Admission::Pass(pass) => pass,
            Admission::Open { retry_after } => panic!("open for {retry_after:?}"),
        }
    }

    fn open_for(breakers: &Breakers, route: &Route, now: Instant) -> Duration {
        match breakers.admit(route, now) {
            Admission::Pass(_) => panic!("passed"),
            Admission::Open { retry_after } => retry_after,
        }
    }

    fn gauge(metrics: &Metrics) -> String {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&metrics.registry().gather())
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("hookgate_breaker"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn consecutive_failures_open_it_then_one_probe_closes_it() {
        let metrics = Arc::new(Metrics::new([]));
        let breakers = Breakers::new(metrics.clone());
        let route = route(3, 1000);
        let t = Instant::now();
        for failure in [answered(500), UpstreamOutcome::Timeout] {
            pass(&breakers, &route, t).record(&failure, t);
        }
        // A success resets the count; 4xx are answers, not failures.
        pass(&breakers, &route, t).record(&answered(404), t);
        for _ in 0..2 {
            pass(&breakers, &route, t).record(&answered(503), t);
        }
        assert!(matches!(breakers.admit(&route, t), Admission::Pass(_)));
        pass(&breakers, &route, t).record(&UpstreamOutcome::Unreachable("x".into()), t);

        assert_eq!(
            open_for(&breakers, &route, t + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        let probe = pass(&breakers, &route, t + Duration::from_millis(1000));
        assert!(probe.is_probe());
        assert_eq!(
            open_for(&breakers, &route, t + Duration::from_millis(1001)),
            Duration::from_secs(1)
        );
        assert!(
            gauge(&metrics).contains(r#"hookgate_breaker_state{route="src/r",upstream="0"} 2"#)
        );
        probe.record(&answered(200), t + Duration::from_millis(1002));
        assert!(!pass(&breakers, &route, t + Duration::from_millis(1003)).is_probe());
        let text = gauge(&metrics);
        assert!(
            text.contains(r#"hookgate_breaker_state{route="src/r",upstream="0"} 0"#),
            "{text}"
        );
        for to in ["open", "half_open", "closed"] {
            assert!(
                text.contains(&format!(
                    r#"hookgate_breaker_transitions_total{{route="src/r",to="{to}",upstream="0"}} 1"#
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cooldown_and_an_abandoned_one_frees_the_probe() {
        let breakers = Breakers::new(Arc::new(Metrics::new([])));
        let route = route(1, 1000);
        let t = Instant::now();
        pass(&breakers, &route, t).record(&answered(502), t);
        let later = t + Duration::from_millis(1500);
        pass(&breakers, &route, later).record(&UpstreamOutcome::Timeout, later);
        assert_eq!(
            open_for(&breakers, &route, later),
            Duration::from_millis(1000)
        );

        let after = later + Duration::from_millis(1000);
        drop(pass(&breakers, &route, after));
        assert!(pass(&breakers, &route, Instant::now().max(after)).is_probe());
    }

    /// A probe given back (deferred by the route's rate, a failed fetch, a shutdown)
    /// is no transition: it once counted an `open` and a `half_open` each time.
    #[test]
    fn a_probe_given_back_leaves_it_half_open_without_a_transition() {
        let metrics = Arc::new(Metrics::new([]));
        let breakers = Breakers::new(metrics.clone());
        let route = route(1, 1000);
        let t = Instant::now();
        pass(&breakers, &route, t).record(&answered(500), t);
        let after = t + Duration::from_millis(1000);
        for _ in 0..3 {
            let probe = pass(&breakers, &route, after);
            assert!(probe.is_probe());
            open_for(&breakers, &route, after);
            drop(probe);
        }
        let text = gauge(&metrics);
        for (to, times) in [("open", 1), ("half_open", 1), ("closed", 0)] {
            assert!(
                text.contains(&format!(
                    r#"hookgate_breaker_transitions_total{{route="src/r",to="{to}",upstream="0"}} {times}"#
                )),
                "{text}"
            );
        }
        assert!(text.contains(r#"hookgate_breaker_state{route="src/r",upstream="0"} 2"#));
        pass(&breakers, &route, after).record(&answered(204), after);
        assert!(!pass(&breakers, &route, after).is_probe());
    }

    /// A reload that removes a route (or its breaker) ends its series: an open
    /// breaker's gauge once stayed at 1, and its alert firing, until a restart.
    #[test]
    fn a_reload_without_the_route_forgets_its_breaker_and_its_series() {
        let metrics = Arc::new(Metrics::new([]));
        let breakers = Breakers::new(metrics.clone());
        let kept = route(1, 60_000);
        let gone = Route::new("src", "gone", &["*".to_owned()], "http://127.0.0.1:9/")
            .unwrap()
            .with_breaker(kept.breaker());
        let t = Instant::now();
        for route in [&kept, &gone] {
            pass(&breakers, route, t).record(&UpstreamOutcome::Timeout, t);
        }
        assert!(
            gauge(&metrics).contains(r#"hookgate_breaker_state{route="src/gone",upstream="0"} 1"#)
        );

        breakers.keep_only([&kept]);
        let text = gauge(&metrics);
        assert!(!text.contains("src/gone"), "{text}");
        assert!(
            text.contains(r#"hookgate_breaker_state{route="src/r",upstream="0"} 1"#),
            "{text}"
        );
        open_for(&breakers, &kept, t);
        // A request still on the configuration before brings neither back.
        assert!(matches!(
            breakers.admit(&gone, t),
            Admission::Pass(Pass(None))
        ));
        assert!(!gauge(&metrics).contains("src/gone"));
        // Back in a later reload, it starts closed.
        breakers.keep_only([&kept, &gone]);
        assert!(!pass(&breakers, &gone, t).is_probe());
        breakers.keep_only([
            &Route::new("src", "r", &["*".to_owned()], "http://127.0.0.1:9/").unwrap(),
        ]);
        assert!(!gauge(&metrics).contains("breaker_state"));
    }

    /// A reload that points a route's upstream elsewhere (away from the dead one, the
    /// usual fix in an incident) starts its breaker afresh; an attempt still on the
    /// configuration before gets no breaker (it stayed open, and a removed fan-out
    /// upstream's state moved onto the next one by position).
    #[test]
    fn a_reload_that_points_an_upstream_elsewhere_starts_its_breaker_afresh() {
        let breakers = Breakers::new(Arc::new(Metrics::new([])));
        let dead = route(1, 60_000);
        let t = Instant::now();
        pass(&breakers, &dead, t).record(&UpstreamOutcome::Timeout, t);
        open_for(&breakers, &dead, t);
        let healthy = Route::new("src", "r", &["*".to_owned()], "http://127.0.0.1:10/")
            .unwrap()
            .with_breaker(dead.breaker());

        breakers.keep_only([&healthy]);

        assert!(!pass(&breakers, &healthy, t).is_probe(), "closed");
        assert!(matches!(
            breakers.admit(&dead, t),
            Admission::Pass(Pass(None))
        ));
        // The same URL kept keeps its state.
        pass(&breakers, &healthy, t).record(&UpstreamOutcome::Timeout, t);
        breakers.keep_only([&healthy]);
        open_for(&breakers, &healthy, t);
    }

    #[test]
    fn a_route_without_a_breaker_always_passes() {
        let breakers = Breakers::new(Arc::new(Metrics::new([])));
        let route = Route::new("s", "r", &["*".to_owned()], "http://127.0.0.1:9/").unwrap();
        let t = Instant::now();
        for _ in 0..10 {
            pass(&breakers, &route, t).record(&UpstreamOutcome::Timeout, t);
        }
    }
}
