//! Two-phase deduplication, so that nothing is lost and nothing is forwarded twice.
//!
//! A verified delivery first *claims* its key as in flight (short expiry); a 2xx from the
//! upstream *commits* it as done for `dedupe.ttl`; any failure *releases* it so the
//! sender's retry is forwarded. Commit and release only ever touch this request's own
//! claim (a random token), so a claim that expired under a slow upstream cannot erase a
//! newer one. The store does the atomic part; this module does the policy.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{DedupeSettings, OnError};
use crate::metrics::Metrics;
use crate::queue::ClaimDone;
use crate::reject::Reject;
use crate::store::{ClaimState, Settled, Store, StoreError};
use crate::verify::push_hex;

pub struct Dedupe {
    store: Arc<dyn Store>,
    settings: DedupeSettings,
    on_error: OnError,
    metrics: Arc<Metrics>,
    /// Random per process, so tokens from different instances never collide in a shared store.
    instance: u64,
    counter: AtomicU64,
    /// `release_later` tasks running.
    late_releases: Arc<AtomicUsize>,
}

/// `release_later` tasks at once, at most.
const MAX_LATE_RELEASES: usize = 1024;

/// Whether a settle that found the claim no longer its token's says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Superseded {
    Warn,
    Quiet,
}

/// The pause before a settle that failed is asked once more (`Dedupe::settle`).
const SETTLE_AGAIN_AFTER: Duration = Duration::from_millis(100);

/// Proof that this request holds a delivery's key; settle it exactly once.
#[derive(Debug)]
pub struct Claim {
    key: String,
    token: String,
    /// Before this instant the claim cannot have expired in the store: half its TTL
    /// after the claim was sent, a margin for clocks that drift or jump.
    unexpired_until: Instant,
    /// False when the store failed and `on_error = "allow"` let the request through
    /// unguarded: there is nothing to settle.
    held: bool,
}

impl Claim {
    /// False when the store failed and `on_error = "allow"` let the request through.
    pub fn held(&self) -> bool {
        self.held
    }
}

#[derive(Debug)]
pub enum Claimed {
    Won(Claim),
    /// Already forwarded successfully: answer 200, do not forward.
    AlreadyDone,
}

impl Dedupe {
    pub fn new(
        store: Arc<dyn Store>,
        settings: DedupeSettings,
        on_error: OnError,
        metrics: Arc<Metrics>,
    ) -> Self {
        Dedupe {
            store,
            settings,
            on_error,
            metrics,
            instance: RandomState::new().hash_one(std::process::id()),
            counter: AtomicU64::new(0),
            late_releases: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The key of a delivery: its source and the sender's delivery id.
    pub fn key(source: &str, id: &str) -> String {
        let mut key = String::with_capacity(source.len() + 1 + id.len());
        key.push_str(source);
        key.push(':');
        key.push_str(id);
        key
    }

    /// The store key of a delivery and how long it stays done, for a queue that writes
    /// the key as it stores a first delivery (`Queue::enqueue_all_first`).
    pub fn done_key(&self, source: &str, id: &str) -> (String, Duration) {
        (Self::key(source, id), self.settings.ttl)
    }

    /// A token no other claim, in this process or another, will hold: the instance's
    /// random id and a counter, in hex.
    fn token(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut token = String::with_capacity(32);
        for word in [self.instance, n] {
            push_hex(&mut token, &word.to_be_bytes());
        }
        token
    }

    pub async fn claim(&self, source: &str, id: &str) -> Result<Claimed, Reject> {
        let key = Self::key(source, id);
        let token = self.token();
        let unexpired_until = Instant::now() + self.settings.in_flight_ttl / 2;
        let state = self
            .store
            .claim(&key, &token, self.settings.in_flight_ttl)
            .await;
        match state {
            Ok(ClaimState::Won) => Ok(Claimed::Won(Claim {
                key,
                token,
                unexpired_until,
                held: true,
            })),
            Ok(ClaimState::Done) => Ok(Claimed::AlreadyDone),
            Ok(ClaimState::InFlight { remaining }) => Err(Reject::InFlight {
                retry_after: remaining,
            }),
            Err(_) if self.on_error == OnError::Allow => {
                self.metrics.store_fail_open("claim");
                // Forwarded unguarded, as `allow` says; a claim that landed late would
                // answer the sender's retry 409 until it expired, whatever the upstream
                // said.
                self.release_later(key.clone(), token.clone());
                Ok(Claimed::Won(Claim {
                    key,
                    token,
                    unexpired_until,
                    held: false,
                }))
            }
            Err(e) => {
                self.release_later(key, token);
                Err(Reject::Store(e))
            }
        }
    }

    /// Takes back, in a task of its own, a claim whose answer did not come (a timeout, a
    /// connection that broke after the claim was sent; the sender is told 503): the store
    /// may have written it all the same, and its retry
    /// then got 409 `in_flight` until the claim expired, for a delivery nobody was
    /// forwarding. The release is the token's own (it never touches another's claim),
    /// asked at once and, unless it applied, after 1 s and 5 s (a claim held in a buffer,
    /// or on a connection being replaced after the timeout, may still arrive), while the
    /// claim may live. At most `MAX_LATE_RELEASES` at once: past that (a long outage),
    /// such claims are left to expire.
    fn release_later(&self, key: String, token: String) {
        const AGAIN: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
        if self.late_releases.fetch_add(1, Ordering::Relaxed) >= MAX_LATE_RELEASES {
            self.late_releases.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let (store, pending) = (self.store.clone(), self.late_releases.clone());
        let until = tokio::time::Instant::now() + self.settings.in_flight_ttl;
        tokio::spawn(async move {
            let mut again = AGAIN.iter();
            loop {
                if let Ok(Settled::Applied) = store.release(&key, &token).await {
                    break;
                }
                match again.next() {
                    Some(wait) if tokio::time::Instant::now() + *wait < until => {
                        tokio::time::sleep(*wait).await;
                    }
                    _ => break,
                }
            }
            pending.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// The claim for a queue that marks it done as it stores the delivery
    /// (`Queue::enqueue_claimed`); `None` when it is not held (nothing to settle).
    pub fn done_with<'a>(&self, claim: &'a Claim) -> Option<ClaimDone<'a>> {
        claim.held.then_some(ClaimDone {
            key: &claim.key,
            token: &claim.token,
            ttl: self.settings.ttl,
        })
    }

    /// Commits on success, releases otherwise. The answer to the sender is already
    /// decided by the upstream, so a store failure here is logged, not returned: a
    /// failed commit can at worst let a later retry through again, a failed release
    /// only delays the retry until the claim expires. The error is returned for the
    /// stage's span, which says the store failed.
    pub async fn settle(&self, claim: Claim, success: bool) -> Result<(), StoreError> {
        self.settle_as(claim, success, Superseded::Warn).await
    }

    /// `settle`, saying so or not when the claim was no longer this token's.
    async fn settle_as(
        &self,
        claim: Claim,
        success: bool,
        superseded: Superseded,
    ) -> Result<(), StoreError> {
        if !claim.held {
            return Ok(());
        }
        let mut result = self.settle_once(&claim, success).await;
        // Not after a timeout: a store that slow is not asked twice while the sender
        // waits for its answer.
        if let Err(StoreError::Unavailable(_)) = result {
            // Asked once more: a connection that broke while idle (the store restarted)
            // fails the first command sent on it, and the next one finds the store back.
            // A commit lost so left the delivery in flight, then forgotten: the sender's
            // retry was forwarded again. Both are the claim's own token's, so a second
            // ask changes nothing when the first went through, and then finds the key
            // no longer held by this token: not a superseded claim to warn about.
            tokio::time::sleep(SETTLE_AGAIN_AFTER).await;
            result = match self.settle_once(&claim, success).await {
                Ok(Settled::Superseded) => Ok(Settled::Applied),
                again => again,
            };
        }
        let phase = if success { "commit" } else { "release" };
        match result {
            Ok(Settled::Applied) => Ok(()),
            Ok(Settled::Superseded) if superseded == Superseded::Warn => {
                tracing::warn!(
                    key = %claim.key,
                    phase,
                    "dedupe claim expired before the upstream answered; raise dedupe.in_flight_ttl"
                );
                Ok(())
            }
            Ok(Settled::Superseded) => Ok(()),
            Err(e) => {
                tracing::error!(key = %claim.key, phase, error = %e, "dedupe store failed");
                Err(e)
            }
        }
    }

    async fn settle_once(&self, claim: &Claim, success: bool) -> Result<Settled, StoreError> {
        if success && Instant::now() < claim.unexpired_until {
            self.store
                .commit_unexpired(&claim.key, &claim.token, self.settings.ttl)
                .await
        } else if success {
            self.store
                .commit(&claim.key, &claim.token, self.settings.ttl)
                .await
        } else {
            self.store.release(&claim.key, &claim.token).await
        }
    }

    /// Settles `claim` once `stored` can tell whether what it guarded was stored (a
    /// queue whose store timed out after the delivery was sent: `QueueError::
    /// MaybeStored`): committed if it was, so the sender's retry is a duplicate,
    /// released if not, so the retry is stored. Until then the claim stays in flight
    /// and retries get 409. Asked at once, then after pauses that double from 500 ms to
    /// 5 s (a store slow enough to time enqueues out is not asked the more for it), for
    /// as long as the claim lasts, after which it is left to expire.
    pub async fn settle_when_known<E, F>(&self, claim: Claim, mut stored: impl FnMut() -> F)
    where
        E: std::fmt::Display,
        F: Future<Output = Result<bool, E>>,
    {
        // tokio's clock, as the pauses are.
        let until = tokio::time::Instant::now() + self.settings.in_flight_ttl;
        let mut pause = Duration::from_millis(500);
        loop {
            match stored().await {
                Ok(stored) => {
                    tracing::info!(key = %claim.key, stored, "dedupe: an uncertain enqueue is settled");
                    // Logged by `settle`; the claim expires if the store failed. A queue
                    // that marks the claim as it stores (a single Redis) has marked it
                    // done already when it stored: no claim lost to warn about.
                    let _ = self.settle_as(claim, stored, Superseded::Quiet).await;
                    return;
                }
                Err(e) if tokio::time::Instant::now() + pause >= until => {
                    tracing::warn!(key = %claim.key, error = %e, "dedupe: cannot tell whether an uncertain enqueue stored its delivery; its claim expires");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitSettings;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn dedupe() -> Dedupe {
        let store = Arc::new(MemoryStore::new(RateLimitSettings {
            requests_per_second: 1.0,
            burst: 1,
        }));
        Dedupe::new(
            store,
            DedupeSettings {
                ttl: Duration::from_secs(60),
                in_flight_ttl: Duration::from_secs(5),
                in_flight_ttl_derived: false,
            },
            OnError::Reject,
            Arc::new(Metrics::new([])),
        )
    }

    async fn won(dedupe: &Dedupe, id: &str) -> Claim {
        match dedupe.claim("s", id).await {
            Ok(Claimed::Won(claim)) => claim,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_whose_enqueue_is_uncertain_is_settled_by_what_the_queue_says() {
        let dedupe = dedupe();

        let mut asks = 0;
        let claim = won(&dedupe, "stored").await;
        let stored = || {
            asks += 1;
            let answer = if asks < 3 { Err("slow") } else { Ok(true) };
            async move { answer }
        };
        dedupe.settle_when_known(claim, stored).await;
        assert_eq!(asks, 3, "asked until it could say");
        assert!(matches!(
            dedupe.claim("s", "stored").await,
            Ok(Claimed::AlreadyDone)
        ));

        let claim = won(&dedupe, "lost").await;
        dedupe
            .settle_when_known(claim, || async { Ok::<_, &str>(false) })
            .await;
        won(&dedupe, "lost").await;

        let claim = won(&dedupe, "unknown").await;
        dedupe
            .settle_when_known(claim, || async { Err::<bool, _>("down") })
            .await;
        assert!(matches!(
            dedupe.claim("s", "unknown").await,
            Err(Reject::InFlight { .. })
        ));
    }

    #[tokio::test]
    async fn tokens_are_distinct_fixed_width_hex() {
        let dedupe = dedupe();
        let (a, b) = (dedupe.token(), dedupe.token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(Dedupe::key("openai", "msg_1"), "openai:msg_1");
    }
}
