//! Connection admission: how many connections a listener holds, in all and per client
//! IP, decided at accept before a byte is read; and the open-files budget they must fit.
//!
//! A refused connection is closed at once with a reset: there is no HTTP answer to give
//! before a request has been read. Peers in `rate_limit.trusted_proxies` are exempt from
//! the per-IP limit (a load balancer carries many clients on one address); they still
//! count toward the total. What happens on an admitted connection (timeouts, protocols)
//! is `server`'s business.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client_ip::rate_key;
use crate::metrics::{ConnectionMetrics, Refused};

/// File descriptors kept back from connections: upstream connections, Redis, the admin
/// listener, files. A quarter of the limit, at least this many.
const MIN_FD_RESERVE: u64 = 64;

pub struct Admission {
    slots: Arc<Semaphore>,
    max: u32,
    per_ip_max: u32,
    /// Per client IP: its connections, and the answers handed to them not sent yet
    /// (`Answers::unsent`), at most `per_ip_max` of each. An entry lives while either
    /// is above zero (an answer may outlive its connection by a moment).
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    /// `rate_limit.trusted_proxies`, swapped by a reload like the client-IP resolver's.
    exempt: ArcSwap<Vec<IpNet>>,
    metrics: ConnectionMetrics,
}

/// An admitted connection; dropping it gives its slots back.
pub struct Admitted {
    admission: Arc<Admission>,
    /// The per-IP key counted, if any.
    key: Option<IpAddr>,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    /// `per_ip_max = 0` means no per-IP limit.
    pub fn new(
        max: u32,
        per_ip_max: u32,
        exempt: Vec<IpNet>,
        metrics: ConnectionMetrics,
    ) -> Arc<Self> {
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            per_ip_max,
            per_ip: Mutex::new(HashMap::new()),
            exempt: ArcSwap::from_pointee(exempt),
            metrics,
        })
    }

    /// Peers exempt from the per-IP limit from now on (a reload); connections already
    /// admitted keep what they were counted as.
    pub fn set_exempt(&self, exempt: Vec<IpNet>) {
        self.exempt.store(Arc::new(exempt));
    }

    /// The counters of the listener this admits to.
    pub fn metrics(&self) -> &ConnectionMetrics {
        &self.metrics
    }

    /// Takes a slot for a connection from `peer`, or says why there is none.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refused> {
        let refuse = |reason| {
            self.metrics.refused(reason);
            Err(reason)
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return refuse(Refused::MaxConnections);
        };
        let peer = peer.to_canonical();
        let key =
            if self.per_ip_max == 0 || self.exempt.load().iter().any(|net| net.contains(&peer)) {
                None
            } else {
                let key = rate_key(peer);
                let mut per_ip = self.per_ip.lock().expect("not poisoned");
                let count = &mut per_ip.entry(key).or_default().connections;
                if *count >= self.per_ip_max {
                    drop(per_ip);
                    return refuse(Refused::PerIpLimit);
                }
                *count += 1;
                Some(key)
            };
        self.metrics.open.inc();
        Ok(Admitted {
            admission: self.clone(),
            key,
            _slot: slot,
        })
    }

    /// Returns once every admitted connection has ended.
    pub async fn drained(&self) {
        let _all = self
            .slots
            .acquire_many(self.max)
            .await
            .expect("the semaphore is never closed");
    }
}

impl Admitted {
    /// Where the connection counts the answers it has not sent yet.
    pub fn answers(&self) -> Answers {
        Answers {
            admission: self.admission.clone(),
            key: self.key,
        }
    }
}

/// A client IP's answers that its connections have not sent yet. An HTTP/2 client that
/// grants no flow-control window (`SETTINGS_INITIAL_WINDOW_SIZE = 0`) can be sent no
/// answer: each of its streams, answered at once (404, 429) without a secret, stayed
/// open with its answer until the connection was idle for `idle_timeout`, 100 streams
/// on each of its 256 connections, about 80 MiB per client IP. A client may have as
/// many unsent answers as it may have connections (`max_connections_per_ip`, what it
/// could be slow to read over HTTP/1.1, one answer per connection); a connection that
/// would make it more is cut off. A client that reads its answers holds none for long.
/// Exempt peers (`trusted_proxies`) and listeners without a per-IP limit count none.
#[derive(Clone)]
pub struct Answers {
    admission: Arc<Admission>,
    key: Option<IpAddr>,
}

impl Answers {
    /// One more answer not yet sent, held until the connection has sent it (or dropped
    /// it); `None` when the client IP has its limit already.
    pub fn unsent(&self) -> Option<Unsent> {
        let Some(key) = self.key else {
            return Some(Unsent(None));
        };
        let mut per_ip = self.admission.per_ip.lock().expect("not poisoned");
        let count = &mut per_ip.entry(key).or_default().unsent;
        if *count >= self.admission.per_ip_max {
            return None;
        }
        *count += 1;
        Some(Unsent(Some(self.clone())))
    }
}

/// An answer its connection has not sent yet; dropped once it has.
pub struct Unsent(Option<Answers>);

impl Drop for Unsent {
    fn drop(&mut self) {
        let Some(Answers {
            admission,
            key: Some(key),
        }) = &self.0
        else {
            return;
        };
        admission.forget(*key, |entry| entry.unsent -= 1);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.metrics.open.dec();
        if let Some(key) = self.key {
            self.admission.forget(key, |entry| entry.connections -= 1);
        }
    }
}

/// One client IP's counts (`Admission::per_ip`).
#[derive(Default)]
struct PerIp {
    connections: u32,
    unsent: u32,
}

impl Admission {
    /// Takes one off `key`'s counts (`less`), and drops its entry once both are zero.
    fn forget(&self, key: IpAddr, less: impl FnOnce(&mut PerIp)) {
        let mut per_ip = self.per_ip.lock().expect("not poisoned");
        if let Some(entry) = per_ip.get_mut(&key) {
            less(entry);
            if entry.connections == 0 && entry.unsent == 0 {
                per_ip.remove(&key);
            }
        }
    }
}

/// Raises this process's soft open-files limit to its hard limit (as Go does at start)
/// and returns the limit now in force; `None` where it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::increase_nofile_limit(u64::MAX).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connections a listener may hold so that, with the reserve kept for everything
/// else, the process stays inside its open-files limit.
pub fn fit_to_open_files(configured: u32, open_files_limit: Option<u64>) -> u32 {
    let Some(limit) = open_files_limit else {
        return configured;
    };
    let reserve = (limit / 4).max(MIN_FD_RESERVE);
    let room = limit.saturating_sub(reserve).max(1);
    configured.min(u32::try_from(room).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn admission(max: u32, per_ip: u32, exempt: &[&str]) -> Arc<Admission> {
        Admission::new(
            max,
            per_ip,
            exempt.iter().map(|n| n.parse().unwrap()).collect(),
            Metrics::new([]).connections("server"),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_total_is_capped_and_slots_come_back_on_drop() {
        let a = admission(2, 0, &[]);
        let first = a.admit(ip("192.0.2.1")).unwrap();
        let _second = a.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.3")).err(),
            Some(Refused::MaxConnections)
        );
        drop(first);
        assert!(a.admit(ip("192.0.2.3")).is_ok());
    }

    #[test]
    fn one_ip_cannot_take_more_than_its_share() {
        let a = admission(100, 2, &[]);
        let held: Vec<_> = (0..2).map(|_| a.admit(ip("192.0.2.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("192.0.2.1")).err(), Some(Refused::PerIpLimit));
        assert!(a.admit(ip("192.0.2.2")).is_ok());
        drop(held);
        assert!(a.admit(ip("192.0.2.1")).is_ok());
        assert!(a.per_ip.lock().unwrap().len() <= 2);
    }

    #[test]
    fn ipv6_peers_share_the_limit_of_their_64() {
        let a = admission(100, 1, &[]);
        let _held = a.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::2")).err(), Some(Refused::PerIpLimit));
        assert!(a.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_ip_limit_but_not_the_total() {
        let a = admission(3, 1, &["10.0.0.0/8"]);
        let _held: Vec<_> = (0..3).map(|_| a.admit(ip("10.0.0.5")).unwrap()).collect();
        assert_eq!(a.admit(ip("10.0.0.5")).err(), Some(Refused::MaxConnections));
    }

    #[test]
    fn connections_are_fitted_into_the_open_files_limit() {
        assert_eq!(fit_to_open_files(10_000, None), 10_000);
        assert_eq!(fit_to_open_files(10_000, Some(1_048_576)), 10_000);
        assert_eq!(fit_to_open_files(10_000, Some(1024)), 768);
        assert_eq!(fit_to_open_files(10_000, Some(100)), 36);
        assert_eq!(fit_to_open_files(10_000, Some(20_000)), 10_000);
        assert_eq!(fit_to_open_files(50_000, Some(20_000)), 15_000);
    }
}
