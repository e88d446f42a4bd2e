//! The body budget: how many bytes of request bodies hookgate holds while it reads and
//! verifies them, in all (`limits.max_buffered_body_bytes`) and per client
//! (`limits.max_buffered_body_bytes_per_ip`; the client is the resolved client IP,
//! IPv6 by /64, as for the rate limit).
//!
//! Before a body byte is stored, its bytes are taken from the client's budget and then
//! from the process's: a declared `Content-Length` up front, anything beyond as it
//! arrives. A body that finds no room waits up to `WAIT` (bodies ahead of it finish in
//! milliseconds when their senders are honest), then is refused 503 `body_buffer_full`.
//! The bytes come back when the request has been verified or refused: a verified
//! delivery's body is then bounded by the rate limit and `limits.upstream_timeout`, and
//! an unsigned one is gone. So a client that opens many connections or streams and never
//! finishes its bodies pins at most its own share, and all clients together at most the
//! process's: without this, 100 HTTP/2 streams each nearly `max_body_bytes` long, on
//! connection after connection, held 1.9 GB from one IP until `body_read_timeout`.
//!
//! It does not bound what the transport holds before hookgate reads it: the HTTP/2
//! receive windows (`server`) and the HTTP/1.1 read buffer, per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::sync::Semaphore;

use crate::client_ip::rate_key;
use crate::config::Limits;
use crate::metrics::Metrics;

/// How long a body waits for room before it is refused.
pub const WAIT: Duration = Duration::from_secs(1);

/// `Retry-After` of a refusal: bodies ahead of it are read and verified by then, unless
/// they belong to a client that is holding them on purpose.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Whose budget was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The client's own share.
    Client,
    /// The process's ceiling.
    Process,
}

impl Scope {
    const ALL: [Scope; 2] = [Scope::Client, Scope::Process];

    /// The `scope` label of `hookgate_body_buffer_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Process => "process",
        }
    }
}

/// No room for a body's bytes within `WAIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {} body buffer budget stayed full", .0.label())]
pub struct Full(pub Scope);

pub struct BodyBudget {
    process: Semaphore,
    per_client: u32,
    /// Each client holding a reservation: its share and how many reservations hold it.
    clients: Mutex<HashMap<IpAddr, (Arc<Semaphore>, usize)>>,
    held: IntGauge,
    refused: [IntCounter; Scope::ALL.len()],
}

impl BodyBudget {
    /// `limits` were checked by `config`: the per-client share fits a `u32` and the
    /// process ceiling.
    pub fn new(limits: &Limits, metrics: &Metrics) -> Arc<Self> {
        let held = IntGauge::new(
            "hookgate_body_buffer_bytes",
            "Bytes of request bodies held now while they are read and verified (at most limits.max_buffered_body_bytes).",
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "hookgate_body_buffer_refused_total",
                "Requests refused 503 body_buffer_full because the client's (scope=\"client\") or the process's (scope=\"process\") body budget stayed full.",
            ),
            &["scope"],
        )
        .expect("valid metric");
        // A second gateway in one process (tests) has its own registry: no collision.
        let _ = metrics.registry().register(Box::new(held.clone()));
        let _ = metrics.registry().register(Box::new(refused.clone()));
        Arc::new(BodyBudget {
            process: Semaphore::new(limits.max_buffered_body_bytes),
            per_client: u32::try_from(limits.max_buffered_body_bytes_per_ip)
                .expect("checked by config"),
            clients: Mutex::new(HashMap::new()),
            held,
            refused: Scope::ALL.map(|s| refused.with_label_values(&[s.label()])),
        })
    }

    /// An empty reservation for a body from `client`; bytes are taken by `hold`.
    pub fn reserve(&self, client: IpAddr) -> Reservation<'_> {
        let key = rate_key(client);
        let mut clients = self.clients.lock().expect("not poisoned");
        let (share, users) = clients
            .entry(key)
            .or_insert_with(|| (Arc::new(Semaphore::new(self.per_client as usize)), 0));
        *users += 1;
        Reservation {
            budget: self,
            key,
            share: share.clone(),
            held: 0,
        }
    }

    /// Clients holding a reservation now, for tests.
    pub fn clients(&self) -> usize {
        self.clients.lock().expect("not poisoned").len()
    }
}

/// The bytes one body holds; dropping it gives them back.
pub struct Reservation<'b> {
    budget: &'b BodyBudget,
    key: IpAddr,
    share: Arc<Semaphore>,
    held: u32,
}

impl Reservation<'_> {
    /// Makes the body hold `total` bytes in all (never fewer than it holds), waiting up
    /// to `WAIT` in all for the client's share and then the process's. `total` must not
    /// exceed `limits.max_body_bytes`: the caller refuses larger bodies first.
    pub async fn hold(&mut self, total: usize) -> Result<(), Full> {
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        let Some(more) = total.checked_sub(self.held).filter(|&n| n > 0) else {
            return Ok(());
        };
        let budget = self.budget;
        let refuse = |scope: Scope| {
            budget.refused[scope as usize].inc();
            Err(Full(scope))
        };
        // One wait of `WAIT` for both: the client's share and then the process's each
        // waiting `WAIT` kept a body up to twice what the README promises.
        let deadline = tokio::time::Instant::now() + WAIT;
        match tokio::time::timeout_at(deadline, self.share.acquire_many(more)).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => return refuse(Scope::Client),
        }
        match tokio::time::timeout_at(deadline, budget.process.acquire_many(more)).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => {
                self.share.add_permits(more as usize);
                return refuse(Scope::Process);
            }
        }
        self.held += more;
        budget.held.add(i64::from(more));
        Ok(())
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held as usize
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let budget = self.budget;
        budget.process.add_permits(self.held as usize);
        self.share.add_permits(self.held as usize);
        budget.held.sub(i64::from(self.held));
        let mut clients = budget.clients.lock().expect("not poisoned");
        if let Some((_, users)) = clients.get_mut(&self.key) {
            *users -= 1;
            if *users == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_client: usize, process: usize) -> (Arc<BodyBudget>, Metrics) {
        let config = crate::config::EMBEDDED_DEFAULT;
        let mut limits = crate::config::parse(config, "default").unwrap().limits;
        limits.max_buffered_body_bytes_per_ip = per_client;
        limits.max_buffered_body_bytes = process;
        let metrics = Metrics::new([]);
        (BodyBudget::new(&limits, &metrics), metrics)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_holds_at_most_its_share_and_others_are_not_affected() {
        let (b, metrics) = budget(1000, 10_000);
        let mut first = b.reserve(ip("192.0.2.1"));
        first.hold(600).await.unwrap();
        let mut second = b.reserve(ip("192.0.2.1"));
        second.hold(400).await.unwrap();
        let mut third = b.reserve(ip("192.0.2.1"));
        assert_eq!(third.hold(1).await, Err(Full(Scope::Client)));
        let mut other = b.reserve(ip("192.0.2.2"));
        other.hold(1000).await.unwrap();
        assert_eq!(b.held.get(), 2000);
        let text = metrics.render();
        assert!(
            text.contains(r#"hookgate_body_buffer_refused_total{scope="client"} 1"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_clients_together_hold_at_most_the_process_ceiling() {
        let (b, _) = budget(1000, 2500);
        let mut held = Vec::new();
        for client in ["192.0.2.1", "192.0.2.2"] {
            let mut r = b.reserve(ip(client));
            r.hold(1000).await.unwrap();
            held.push(r);
        }
        let mut third = b.reserve(ip("192.0.2.3"));
        third.hold(500).await.unwrap();
        assert_eq!(third.hold(501).await, Err(Full(Scope::Process)));
        // The refused bytes went back to the client's share.
        drop(held);
        third.hold(1000).await.unwrap();
        assert_eq!(b.held.get(), 1000);
    }

    /// A body that waited for its client's share has only what is left of `WAIT` for
    /// the process's: it once waited `WAIT` for each.
    #[tokio::test(start_paused = true)]
    async fn a_body_waits_at_most_wait_in_all_for_both_shares() {
        let (b, _) = budget(1000, 1500);
        let mut other = b.reserve(ip("192.0.2.2"));
        other.hold(1000).await.unwrap();
        let mut first = b.reserve(ip("192.0.2.1"));
        first.hold(500).await.unwrap();
        let started = tokio::time::Instant::now();
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(ip("192.0.2.1")).hold(800).await })
        };
        // The client's share frees up at 0.9 s; the process stays full.
        tokio::time::sleep(WAIT * 9 / 10).await;
        drop(first);
        assert_eq!(waiting.await.unwrap(), Err(Full(Scope::Process)));
        assert!(started.elapsed() <= WAIT, "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_for_room_another_body_gives_back() {
        let (b, _) = budget(1000, 10_000);
        let mut first = b.reserve(ip("192.0.2.1"));
        first.hold(1000).await.unwrap();
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move {
                let mut second = b.reserve(ip("192.0.2.1"));
                second.hold(800).await.map(|()| second.held())
            })
        };
        tokio::time::sleep(WAIT / 2).await;
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(800));
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_share_the_budget_of_their_64() {
        let (b, _) = budget(1000, 10_000);
        let mut first = b.reserve(ip("2001:db8:1:2::1"));
        first.hold(1000).await.unwrap();
        let mut same = b.reserve(ip("2001:db8:1:2::2"));
        assert_eq!(same.hold(1).await, Err(Full(Scope::Client)));
        let mut other = b.reserve(ip("2001:db8:1:3::1"));
        other.hold(1000).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn everything_comes_back_and_no_client_is_remembered_once_bodies_end() {
        let (b, _) = budget(1000, 2000);
        for n in 0..100u32 {
            let mut r = b.reserve(IpAddr::from(n.to_be_bytes()));
            r.hold(700).await.unwrap();
            r.hold(1000).await.unwrap();
            r.hold(200).await.unwrap(); // already held: nothing more taken
            assert_eq!(r.held(), 1000);
        }
        assert_eq!(b.clients(), 0);
        assert_eq!(b.held.get(), 0);
        assert_eq!(b.process.available_permits(), 2000);
    }
}
