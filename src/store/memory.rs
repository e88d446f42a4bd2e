//! The in-memory store: claims in a map with expiry queues, GCRA buckets in governor.
//!
//! It is exact within one process and shares nothing between instances; run several
//! instances only with the Redis store. Time is `tokio::time::Instant`, so tests pause
//! and advance it instead of sleeping.
//!
//! Memory is bounded by what the TTLs hold: the deliveries of the last `dedupe.ttl` (a
//! rate times a TTL, not a fixed cap, as a delivery must be remembered as long as it is
//! promised to be). Each TTL has its own FIFO queue (one TTL per queue means expiry
//! order is insertion order), swept on every claim and by a background task, and idle
//! rate-limit buckets are dropped by the same task. Keys are held as 128-bit keyed
//! fingerprints, not copies, so an entry costs the same whatever the id's length.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::{BoxFuture, ClaimState, RateDecision, Settled, Store, StoreError, ready};
use crate::config::RateLimitSettings;

/// How often idle buckets and expired claims are dropped when no traffic sweeps them.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub struct MemoryStore {
    inner: Arc<Inner>,
}

type Limiter = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, TokioClock, NoOpMiddleware<Nanos>>;

struct Inner {
    claims: Mutex<Claims>,
    /// Swapped whole when a reload changes the rate: governor's quota is fixed per limiter.
    limiter: ArcSwap<(RateLimitSettings, Limiter)>,
    clock: TokioClock,
}

/// governor's clock on tokio time, so `tokio::time::pause` governs rate limits too.
#[derive(Debug, Clone)]
struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// A key or token as 128 bits of keyed SipHash: fixed size whatever the sender's id
/// length, and unguessable per process, so nobody can aim two ids at one slot.
type Fingerprint = u128;

/// Milliseconds since the store started, on tokio's clock.
type Millis = u64;

/// Keys in the order they expire (all share one TTL).
type ExpiryQueue = VecDeque<(Millis, Fingerprint)>;

/// Dedupe state, about 90 bytes per key (map slot, queue slot, growth slack) rather
/// than a copy of each key: a week of deliveries stays small.
struct Claims {
    map: HashMap<Fingerprint, Entry, BuildHasherDefault<PassThrough>>,
    /// Expiry queues, one per TTL in use (in flight and done): each stays sorted.
    queues: Vec<(Duration, ExpiryQueue)>,
    hashers: (RandomState, RandomState),
    start: Instant,
}

#[derive(Clone, Copy)]
struct Entry {
    expires: Millis,
    /// The claiming token's fingerprint (low 64 bits), or `DONE`.
    holder: u64,
}

/// `holder` of a delivery that was forwarded successfully (a token fingerprint is
/// this value with probability 2^-64, and would only make one claim look done).
const DONE: u64 = 0;

/// The fingerprints are already uniformly random: hashing them again is wasted work.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

impl Claims {
    fn new(start: Instant) -> Self {
        Claims {
            map: HashMap::default(),
            queues: Vec::new(),
            hashers: (RandomState::new(), RandomState::new()),
            start,
        }
    }

    fn fingerprint(&self, text: &str) -> Fingerprint {
        let high = self.hashers.0.hash_one(text);
        let low = self.hashers.1.hash_one(text);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// The low half of `fingerprint(token)`: enough to tell claims apart.
    fn holder(&self, token: &str) -> u64 {
        self.hashers.1.hash_one(token).max(1)
    }

    fn millis(&self, at: Instant) -> Millis {
        at.saturating_duration_since(self.start).as_millis() as Millis
    }

    fn live(&self, key: Fingerprint, now: Millis) -> Option<Entry> {
        self.map.get(&key).copied().filter(|e| e.expires > now)
    }

    fn insert(&mut self, key: Fingerprint, holder: u64, ttl: Duration, now: Millis) {
        let expires = now + ttl.as_millis() as Millis;
        let queue = match self.queues.iter_mut().position(|(t, _)| *t == ttl) {
            Some(i) => &mut self.queues[i].1,
            None => {
                self.queues.push((ttl, VecDeque::new()));
                &mut self.queues.last_mut().expect("just pushed").1
            }
        };
        queue.push_back((expires, key));
        self.map.insert(key, Entry { expires, holder });
    }

    /// Drops entries whose time has come; an entry renewed since its queue slot stays.
    fn sweep(&mut self, now: Millis) {
        for (_, queue) in &mut self.queues {
            while let Some(&(deadline, key)) = queue.front() {
                if deadline > now {
                    break;
                }
                queue.pop_front();
                if self.map.get(&key).is_some_and(|e| e.expires <= now) {
                    self.map.remove(&key);
                }
            }
        }
        if self.map.capacity() > 64 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to_fit();
            for (_, queue) in &mut self.queues {
                queue.shrink_to_fit();
            }
        }
    }
}

impl MemoryStore {
    /// Starts the background sweeper; call inside a tokio runtime.
    pub fn new(rate: RateLimitSettings) -> Self {
        let clock = TokioClock {
            start: Instant::now(),
        };
        let inner = Arc::new(Inner {
            claims: Mutex::new(Claims::new(clock.start)),
            limiter: ArcSwap::from_pointee((
                rate,
                RateLimiter::dashmap_with_clock(quota(rate), clock.clone()),
            )),
            clock,
        });
        tokio::spawn(sweep_forever(Arc::downgrade(&inner)));
        MemoryStore { inner }
    }

    /// Number of client keys with rate-limit state, for tests and metrics.
    pub fn tracked_clients(&self) -> usize {
        self.inner.limiter.load().1.len()
    }

    /// Number of dedupe keys held (in flight or done), for tests and metrics.
    pub fn tracked_keys(&self) -> usize {
        self.inner.lock_claims().map.len()
    }

    /// Drops expired claims and idle buckets now rather than at the next tick.
    pub fn sweep(&self) {
        self.inner.sweep();
    }
}

impl Inner {
    fn lock_claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        // A panic while holding the lock cannot leave a half-written entry behind
        // (each operation is one map call), so poisoning is safe to ignore.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweep(&self) {
        let mut claims = self.lock_claims();
        let now = claims.millis(Instant::now());
        claims.sweep(now);
        drop(claims);
        let limiter = self.limiter.load();
        limiter.1.retain_recent();
        limiter.1.shrink_to_fit();
    }
}

async fn sweep_forever(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.sweep();
    }
}

/// `requests_per_second` sustained, `burst` at once: one cell every 1/rps seconds.
fn quota(rate: RateLimitSettings) -> Quota {
    let period =
        Duration::from_secs_f64(1.0 / rate.requests_per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .expect("period is at least one nanosecond")
        .allow_burst(burst)
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimState, StoreError>> {
        let mut claims = self.inner.lock_claims();
        let now = claims.millis(Instant::now());
        claims.sweep(now);
        let key = claims.fingerprint(key);
        let state = match claims.live(key, now) {
            Some(Entry { holder: DONE, .. }) => ClaimState::Done,
            Some(Entry { expires, .. }) => ClaimState::InFlight {
                remaining: Duration::from_millis(expires - now),
            },
            None => {
                let holder = claims.holder(token);
                claims.insert(key, holder, ttl, now);
                ClaimState::Won
            }
        };
        ready(Ok(state))
    }

    fn commit<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        let mut claims = self.inner.lock_claims();
        let now = claims.millis(Instant::now());
        let (key, holder) = (claims.fingerprint(key), claims.holder(token));
        let settled = match claims.live(key, now) {
            // Ours, or expired with nobody else holding it: the delivery did go through.
            Some(Entry { holder: h, .. }) if h == holder => Settled::Applied,
            None => Settled::Applied,
            Some(_) => Settled::Superseded,
        };
        if settled == Settled::Applied {
            claims.insert(key, DONE, ttl, now);
        }
        ready(Ok(settled))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        let mut claims = self.inner.lock_claims();
        let now = claims.millis(Instant::now());
        let (key, holder) = (claims.fingerprint(key), claims.holder(token));
        let settled = match claims.live(key, now) {
            Some(Entry { holder: h, .. }) if h == holder => {
                claims.map.remove(&key);
                Settled::Applied
            }
            _ => Settled::Superseded,
        };
        ready(Ok(settled))
    }

    fn rate_check(&self, client: IpAddr) -> BoxFuture<'_, Result<RateDecision, StoreError>> {
        let decision = match self.inner.limiter.load().1.check_key(&client) {
            Ok(()) => RateDecision::Allow,
            Err(not_until) => RateDecision::Deny {
                retry_after: not_until.wait_time_from(self.inner.clock.now()),
            },
        };
        ready(Ok(decision))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }

    /// A new rate starts every client's bucket afresh (governor's quota is per limiter).
    fn set_rate(&self, rate: RateLimitSettings) {
        let current = self.inner.limiter.load();
        if current.0 != rate {
            self.inner.limiter.store(Arc::new((
                rate,
                RateLimiter::dashmap_with_clock(quota(rate), self.inner.clock.clone()),
            )));
        }
    }

    fn describe(&self) -> String {
        let rate = self.inner.limiter.load().0;
        format!(
            "in-memory (this instance only; {} req/s, burst {})",
            rate.requests_per_second, rate.burst
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(rps: f64, burst: u32) -> MemoryStore {
        MemoryStore::new(RateLimitSettings {
            requests_per_second: rps,
            burst,
        })
    }

    const FLIGHT: Duration = Duration::from_secs(15);
    const DONE: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_dropped_from_memory() {
        let s = store(10.0, 10);
        for i in 0..1000 {
            let key = format!("k{i}");
            s.claim(&key, "t", FLIGHT).await.unwrap();
            if i % 2 == 0 {
                s.commit(&key, "t", DONE).await.unwrap();
            }
        }
        assert_eq!(s.tracked_keys(), 1000);
        tokio::time::advance(FLIGHT).await;
        s.sweep();
        assert_eq!(s.tracked_keys(), 500);
        tokio::time::advance(DONE).await;
        s.sweep();
        assert_eq!(s.tracked_keys(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_from_the_next_request() {
        let s = store(1.0, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(s.rate_check(ip).await.unwrap(), RateDecision::Allow);
        assert!(matches!(
            s.rate_check(ip).await.unwrap(),
            RateDecision::Deny { .. }
        ));
        s.set_rate(RateLimitSettings {
            requests_per_second: 1.0,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(s.rate_check(ip).await.unwrap(), RateDecision::Allow);
        }
        assert!(s.describe().contains("burst 3"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_of_many_clients_are_evicted() {
        let s = store(50.0, 100);
        for i in 0..200_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            s.rate_check(ip).await.unwrap();
        }
        assert_eq!(s.tracked_clients(), 200_000);
        tokio::time::advance(Duration::from_secs(2)).await;
        s.sweep();
        assert_eq!(s.tracked_clients(), 0);
    }
}
