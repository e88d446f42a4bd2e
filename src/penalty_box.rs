//! The penalty box: a client that keeps failing signature verification is refused for a
//! cool-down, before any byte of its body is read.
//!
//! A failure is any `VerifyError` (missing, malformed, wrong or stale signature). More
//! than `max_failures` of them within `window` (counted from the first) put the client's
//! key (its IP, IPv6 by /64, as for the rate limit) in the box for `cooldown`. The state
//! is in memory, per instance, and bounded: when `MAX_TRACKED` clients are tracked,
//! expired records are swept, and a new client that still finds no room is not tracked
//! (boxes already given out stay). It deliberately does not use the store: the check
//! must stay cheaper than the rate limit's round trip it protects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::client_ip::rate_key;
use crate::config::PenaltyBoxSettings;

/// Clients tracked at once (about 40 bytes each).
const MAX_TRACKED: usize = 100_000;

pub struct PenaltyBox {
    settings: PenaltyBoxSettings,
    clients: Mutex<HashMap<IpAddr, Record>>,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    window_start: Instant,
    failures: u32,
    boxed_until: Option<Instant>,
}

impl Record {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.boxed_until {
            Some(until) => until <= now,
            None => self.window_start + window <= now,
        }
    }
}

/// What recording a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// This failure put the client in the box.
    Boxed,
}

impl PenaltyBox {
    pub fn new(settings: PenaltyBoxSettings) -> Self {
        PenaltyBox {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.settings.max_failures > 0
    }

    /// How long `client` stays refused, if it is in the box at `now`.
    pub fn remaining(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        if !self.enabled() {
            return None;
        }
        let clients = self.clients.lock().expect("not poisoned");
        let until = clients.get(&rate_key(client))?.boxed_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one failed verification of `client` at `now`.
    pub fn failed(&self, client: IpAddr, now: Instant) -> Recorded {
        if !self.enabled() {
            return Recorded::Counted;
        }
        let key = rate_key(client);
        let window = self.settings.window;
        let mut clients = self.clients.lock().expect("not poisoned");
        if clients.len() >= MAX_TRACKED && !clients.contains_key(&key) {
            clients.retain(|_, record| !record.expired(now, window));
            if clients.len() >= MAX_TRACKED {
                return Recorded::Counted;
            }
        }
        let fresh = Record {
            window_start: now,
            failures: 0,
            boxed_until: None,
        };
        let record = clients.entry(key).or_insert(fresh);
        if record.expired(now, window) {
            *record = fresh;
        }
        record.failures += 1;
        if record.boxed_until.is_none() && record.failures > self.settings.max_failures {
            record.boxed_until = Some(now + self.settings.cooldown);
            return Recorded::Boxed;
        }
        Recorded::Counted
    }

    /// Clients tracked now (boxed or counting), for tests.
    pub fn tracked(&self) -> usize {
        self.clients.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pbox(max_failures: u32) -> PenaltyBox {
        PenaltyBox::new(PenaltyBoxSettings {
            max_failures,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(600),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
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
    fn expired_records_are_swept_when_the_table_is_full() {
        let b = pbox(5);
        let t0 = Instant::now();
        {
            let mut clients = b.clients.lock().unwrap();
            for n in 0..MAX_TRACKED as u32 {
                clients.insert(
                    IpAddr::from(n.to_be_bytes()),
                    Record {
                        window_start: t0,
                        failures: 1,
                        boxed_until: None,
                    },
                );
            }
        }
        let later = t0 + Duration::from_secs(61);
        b.failed(ip("198.51.100.1"), later);
        assert_eq!(b.tracked(), 1);
    }
}
