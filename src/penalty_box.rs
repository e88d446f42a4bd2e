//! The penalty box: a client that keeps failing signature verification is refused for a
//! cool-down, before any byte of its body is read.
//!
//! A failure is any `VerifyError` (missing, malformed, wrong or stale signature). More
//! than `max_failures` of them within `window` (counted from the first) put the client's
//! key (its IP, IPv6 by /64, as for the rate limit) in the box for `cooldown`. The state
//! is in memory, per instance, and bounded: at most `max_clients` clients are tracked,
//! counting or boxed. A new client finding no room takes the place of the oldest
//! record if that one has expired; otherwise it is not tracked, and boxes already given
//! out stay. It deliberately does not use the store: the check must stay cheaper than
//! the rate limit's round trip it protects.
//!
//! Every operation costs O(1) whatever the number of clients tracked, so a flood of new
//! failing clients cannot slow the requests of others down (a sweep of the whole table
//! under one lock once cost ~900 µs per new client at 100,000 clients). The clients are
//! spread over `SHARDS` tables by a keyed hash, each behind its own lock, and each table
//! keeps its records in two insertion-ordered maps (`hashlink`): counting clients by the
//! start of their window and boxed clients by the end of their cool-down. One window and
//! one cool-down hold for all, so each map's front is its next record to expire: finding
//! an expired record is a look at the front, never a search.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hashlink::LinkedHashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::metrics::LatestGauge;
use tokio::time::Instant;

use crate::client_ip::rate_key;
use crate::config::PenaltyBoxSettings;

/// Tables the clients are spread over, so that requests of different clients seldom
/// wait for one another's lock.
const SHARDS: usize = 16;

/// Expired records each failure drops from the front of each of its table's maps,
/// besides the one it may replace: expired records leave faster than new ones come.
const EXPIRED_DROPPED_PER_FAILURE: usize = 2;

pub struct PenaltyBox {
    settings: PenaltyBoxSettings,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// The records held, counting and boxed, and `hookgate_penalty_box_clients`.
    held: AtomicI64,
    tracked: LatestGauge,
}

/// One table: its records and how many it may hold. Keys are hashed with SipHash under
/// a per-process key, so nobody can aim many IPs at one bucket.
struct Shard {
    /// Clients counting failures, oldest window first.
    counting: LinkedHashMap<IpAddr, Counting, RandomState>,
    /// Boxed clients and the end of their cool-down, earliest first.
    boxed: LinkedHashMap<IpAddr, Instant, RandomState>,
    capacity: usize,
}

#[derive(Debug, Clone, Copy)]
struct Counting {
    window_start: Instant,
    failures: u32,
}

/// What recording a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// This failure put the client in the box.
    Boxed,
    /// The table was full of live records: this failure was not counted.
    Untracked,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Shard {
            counting: LinkedHashMap::with_hasher(RandomState::new()),
            boxed: LinkedHashMap::with_hasher(RandomState::new()),
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.counting.len() + self.boxed.len()
    }

    /// Drops up to `most` expired records from the front of each map; returns how many.
    fn drop_expired(&mut self, now: Instant, window: Duration, most: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..most {
            match self.counting.front() {
                Some((_, c)) if c.window_start + window <= now => {
                    self.counting.pop_front();
                    dropped += 1;
                }
                _ => break,
            }
        }
        for _ in 0..most {
            match self.boxed.front() {
                Some((_, until)) if *until <= now => {
                    self.boxed.pop_front();
                    dropped += 1;
                }
                _ => break,
            }
        }
        dropped
    }
}

impl PenaltyBox {
    pub fn settings(&self) -> &PenaltyBoxSettings {
        &self.settings
    }

    pub fn new(settings: PenaltyBoxSettings, tracked: LatestGauge) -> Self {
        let shards = SHARDS.min(settings.max_clients).max(1);
        // The capacities add up to exactly `max_clients`.
        let capacity = |i: usize| {
            settings.max_clients / shards + usize::from(i < settings.max_clients % shards)
        };
        PenaltyBox {
            settings,
            shards: (0..shards)
                .map(|i| Mutex::new(Shard::new(capacity(i))))
                .collect(),
            hasher: RandomState::new(),
            held: AtomicI64::new(0),
            tracked,
        }
    }

    fn enabled(&self) -> bool {
        self.settings.max_failures > 0
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<Shard> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    /// How long `client` stays refused, if it is in the box at `now`.
    pub fn remaining(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        if !self.enabled() {
            return None;
        }
        let key = rate_key(client);
        let shard = self.shard(&key).lock().expect("not poisoned");
        let until = *shard.boxed.get(&key)?;
        (until > now).then(|| until - now)
    }

    /// Counts one failed verification of `client` at `now`.
    pub fn failed(&self, client: IpAddr, now: Instant) -> Recorded {
        if !self.enabled() {
            return Recorded::Counted;
        }
        let key = rate_key(client);
        let window = self.settings.window;
        let mut shard = self.shard(&key).lock().expect("not poisoned");
        let mut dropped = shard.drop_expired(now, window, EXPIRED_DROPPED_PER_FAILURE);
        let mut added = 0i64;
        let recorded = 'record: {
            match shard.boxed.get(&key) {
                // Refused before verification, so only a request already past the check
                // when the box closed gets here: nothing more to count.
                Some(until) if *until > now => break 'record Recorded::Counted,
                Some(_) => {
                    shard.boxed.remove(&key);
                    dropped += 1;
                }
                None => {}
            }
            let failures = match shard.counting.get_mut(&key) {
                Some(c) if c.window_start + window > now => {
                    c.failures += 1;
                    c.failures
                }
                known => {
                    if known.is_some() {
                        shard.counting.remove(&key);
                        dropped += 1;
                    } else if shard.len() >= shard.capacity {
                        dropped += shard.drop_expired(now, window, 1);
                        if shard.len() >= shard.capacity {
                            break 'record Recorded::Untracked;
                        }
                    }
                    // At the back: its window starts last.
                    let fresh = Counting {
                        window_start: now,
                        failures: 1,
                    };
                    shard.counting.insert(key, fresh);
                    added = 1;
                    fresh.failures
                }
            };
            if failures > self.settings.max_failures {
                shard.counting.remove(&key);
                shard.boxed.insert(key, now + self.settings.cooldown);
                break 'record Recorded::Boxed;
            }
            Recorded::Counted
        };
        let change = added - dropped as i64;
        if change != 0 {
            let held = self.held.fetch_add(change, Ordering::Relaxed) + change;
            self.tracked.set(held);
        }
        recorded
    }

    /// Clients tracked now (boxed or counting).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().expect("not poisoned").len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_failures: u32, max_clients: usize) -> PenaltyBoxSettings {
        PenaltyBoxSettings {
            max_failures,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(600),
            max_clients,
        }
    }

    fn gauge() -> prometheus::IntGauge {
        prometheus::IntGauge::new("tracked", "test").unwrap()
    }

    fn pbox(max_failures: u32) -> PenaltyBox {
        PenaltyBox::new(settings(max_failures, 100_000), LatestGauge::alone(gauge()))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The `n`th of many distinct clients.
    fn nth(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn more_than_max_failures_within_the_window_box_the_client_for_the_cooldown() {
        let b = pbox(3);
        let t0 = Instant::now();
        let client = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(b.failed(client, t0), Recorded::Counted);
        }
        assert_eq!(b.remaining(client, t0), None);
        assert_eq!(b.failed(client, t0), Recorded::Boxed);
        assert_eq!(b.remaining(client, t0), Some(Duration::from_secs(600)));
        let later = t0 + Duration::from_secs(599);
        assert_eq!(b.remaining(client, later), Some(Duration::from_secs(1)));
        assert_eq!(b.remaining(client, t0 + Duration::from_secs(600)), None);
        assert_eq!(b.remaining(ip("203.0.113.8"), t0), None);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_add_up() {
        let b = pbox(3);
        let t0 = Instant::now();
        let client = ip("203.0.113.7");
        for i in 0..10 {
            let at = t0 + Duration::from_secs(61 * i);
            assert_eq!(b.failed(client, at), Recorded::Counted);
            assert_eq!(b.remaining(client, at), None);
        }
        assert_eq!(b.tracked(), 1);
    }

    #[test]
    fn a_client_counts_afresh_after_its_cooldown() {
        let b = pbox(1);
        let t0 = Instant::now();
        let client = ip("203.0.113.7");
        b.failed(client, t0);
        assert_eq!(b.failed(client, t0), Recorded::Boxed);
        let after = t0 + Duration::from_secs(600);
        assert_eq!(b.failed(client, after), Recorded::Counted);
        assert_eq!(b.remaining(client, after), None);
        assert_eq!(b.failed(client, after), Recorded::Boxed);
        assert_eq!(b.tracked(), 1);
    }

    #[test]
    fn ipv6_clients_are_boxed_by_their_64() {
        let b = pbox(1);
        let t0 = Instant::now();
        b.failed(ip("2001:db8:1:2::1"), t0);
        b.failed(ip("2001:db8:1:2::2"), t0);
        assert!(b.remaining(ip("2001:db8:1:2::3"), t0).is_some());
        assert!(b.remaining(ip("2001:db8:1:3::1"), t0).is_none());
    }

    #[test]
    fn zero_max_failures_turns_the_box_off() {
        let b = pbox(0);
        let t0 = Instant::now();
        let client = ip("203.0.113.7");
        for _ in 0..100 {
            assert_eq!(b.failed(client, t0), Recorded::Counted);
        }
        assert_eq!(b.remaining(client, t0), None);
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn no_more_than_max_clients_are_tracked_and_the_gauge_says_how_many() {
        let tracked = gauge();
        let b = PenaltyBox::new(settings(5, 1000), LatestGauge::alone(tracked.clone()));
        let t0 = Instant::now();
        let mut untracked = 0;
        for n in 0..5000 {
            if b.failed(nth(n), t0) == Recorded::Untracked {
                untracked += 1;
            }
        }
        assert_eq!(b.tracked(), 1000);
        assert_eq!(untracked, 4000);
        assert_eq!(tracked.get(), 1000);
    }

    #[test]
    fn a_flood_of_new_clients_neither_evicts_nor_shortens_a_box() {
        let b = PenaltyBox::new(settings(1, 1000), LatestGauge::alone(gauge()));
        let t0 = Instant::now();
        let boxed = ip("203.0.113.7");
        b.failed(boxed, t0);
        assert_eq!(b.failed(boxed, t0), Recorded::Boxed);
        for n in 0..50_000 {
            b.failed(nth(n), t0 + Duration::from_millis(u64::from(n)));
        }
        let later = t0 + Duration::from_secs(59);
        assert_eq!(b.remaining(boxed, later), Some(Duration::from_secs(541)));
        assert!(b.tracked() <= 1000);
    }

    #[test]
    fn a_full_table_takes_a_new_client_in_place_of_an_expired_record_without_a_sweep() {
        let tracked = gauge();
        let b = PenaltyBox::new(settings(5, 1600), LatestGauge::alone(tracked.clone()));
        let t0 = Instant::now();
        for n in 0..100_000 {
            b.failed(nth(n), t0);
        }
        assert_eq!(b.tracked(), 1600);
        // Every record has expired; one failure frees a few slots of one table, not all.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(b.failed(ip("198.51.100.1"), later), Recorded::Counted);
        let freed = 1600 + 1 - b.tracked();
        assert!(
            (1..=2 * EXPIRED_DROPPED_PER_FAILURE + 1).contains(&freed),
            "{freed} records freed by one failure"
        );
        assert_eq!(tracked.get() as usize, b.tracked());
        assert_eq!(b.failed(ip("198.51.100.1"), later), Recorded::Counted);
    }

    #[test]
    fn expired_records_drain_as_failures_come() {
        let tracked = gauge();
        let b = PenaltyBox::new(settings(5, 1000), LatestGauge::alone(tracked.clone()));
        let t0 = Instant::now();
        for n in 0..1000 {
            b.failed(nth(n), t0);
        }
        let later = t0 + Duration::from_secs(61);
        let mut found_room = Vec::new();
        for n in 1_000_000..1_001_000 {
            if b.failed(nth(n), later) == Recorded::Counted {
                found_room.push(n);
            }
        }
        // Every expired record has left: what is tracked is the new clients that found
        // room (a table receiving more new clients than it holds keeps the rest out).
        assert_eq!(b.tracked(), found_room.len());
        assert_eq!(tracked.get() as usize, found_room.len());
        for n in found_room {
            assert_eq!(b.failed(nth(n), later), Recorded::Counted);
        }
    }

    /// A reload that changes `[penalty_box]` starts a new, empty box: the old one, still used by requests from before
    /// it, no longer moves the gauge (it left an offset for good).
    #[test]
    fn only_the_latest_box_writes_the_gauge() {
        let metrics = crate::metrics::Metrics::new([]);
        let old = PenaltyBox::new(settings(5, 1000), metrics.penalty_box_clients());
        old.failed(nth(1), Instant::now());
        let clients = |m: &crate::metrics::Metrics| {
            let text = m.render();
            text.lines()
                .find_map(|l| l.strip_prefix("hookgate_penalty_box_clients "))
                .map(str::to_owned)
        };
        assert_eq!(clients(&metrics).as_deref(), Some("1"));

        let new = PenaltyBox::new(settings(5, 1000), metrics.penalty_box_clients());
        old.failed(nth(2), Instant::now());
        assert_eq!(clients(&metrics).as_deref(), Some("0"));
        new.failed(nth(3), Instant::now());
        assert_eq!(clients(&metrics).as_deref(), Some("1"));
    }
}
