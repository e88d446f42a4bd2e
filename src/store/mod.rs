//! The shared state behind dedupe and rate limiting, behind one object-safe trait.
//!
//! A store knows nothing of HTTP or sources: it holds claims on opaque keys and GCRA
//! state per client key. `memory.rs` is the embedded default; a new store is one file
//! here and one arm in `build`.

pub mod coalesce;
pub mod memory;
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{RateLimitSettings, Settings, StoreBackend};
use crate::metrics::Metrics;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An answer known at once, as the in-memory backends give it.
pub(crate) fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

/// Where a dedupe key stands after a claim attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// This request now holds the key as in flight.
    Won,
    /// Another request holds it; it expires in `remaining` unless settled first.
    InFlight { remaining: Duration },
    /// A copy of this delivery was already forwarded successfully.
    Done,
}

/// Whether a commit or release found this request's own claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Applied,
    /// The claim had expired and another request owns the key now; nothing was touched.
    Superseded,
}

impl Settled {
    /// `Applied` when the store changed the claim, else `Superseded`.
    pub fn of(applied: bool) -> Self {
        if applied {
            Settled::Applied
        } else {
            Settled::Superseded
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    Deny { retry_after: Duration },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store timed out")]
    Timeout,
}

/// What a claim answers as the time left to another's claim when it knows the key is
/// held but not for how long (the store failed while asking): a sender retries after
/// it (`Retry-After`).
pub const HOLDER_UNKNOWN: Duration = Duration::from_secs(1);

pub trait Store: Send + Sync {
    /// Claims `key` for `token` for `ttl`, unless it is done or claimed by someone else.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimState, StoreError>>;

    /// Marks `key` done for `ttl` if it still holds `token` or has expired meanwhile;
    /// never overwrites a newer claim.
    fn commit<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Settled, StoreError>>;

    /// `commit` for a claim that cannot have expired yet (it was made well within its
    /// TTL, so the key still holds `token` unless the store lost it): a store may then
    /// skip the compare, which on Redis saves a script run per delivery. Should the key
    /// hold something else after all (a clock jump or an eviction on the store's side),
    /// marking it done is still the truth, since this copy was forwarded successfully;
    /// the answer is then `Superseded`, as for `commit`.
    fn commit_unexpired<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        self.commit(key, token, ttl)
    }

    /// Deletes `key` only if it still holds `token`.
    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Settled, StoreError>>;

    /// Takes one request from the GCRA bucket of `client`.
    fn rate_check(&self, client: IpAddr) -> BoxFuture<'_, Result<RateDecision, StoreError>>;

    /// Succeeds while the store can serve requests; drives `/readyz`.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Applies a reloaded `[rate_limit]` from the next request on.
    fn set_rate(&self, rate: RateLimitSettings);

    /// One line for `hookgate check` and the start-up log.
    fn describe(&self) -> String;
}

/// GCRA's emission interval (1 / `per_second`, at least 1 µs) and burst tolerance
/// (`burst - 1` intervals): the parameters of every bucket here, the client rate limit's
/// and queue mode's `rate`.
pub fn gcra(per_second: f64, burst: u32) -> (Duration, Duration) {
    let interval = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_micros(1));
    (interval, interval * burst.saturating_sub(1))
}

/// The store the settings ask for, and what its backend holds open, for the queue on
/// the same backend to share (`queue::build`). Does not connect: a store that is down
/// at start-up makes `/readyz` fail and requests follow `store.on_error`, until it
/// comes up.
///
/// A new backend is one file here implementing `Store`, one arm below, and the
/// `StoreBackend` variant that selects it (`config`); it must pass the contract suite
/// in `tests/it/contract/store.rs`. A backend that also holds queue-mode deliveries
/// implements `queue::Queue` in `queue/<backend>.rs` and gets its arm in `queue::build`,
/// with a `Backend` variant for what the two share.
pub fn build(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<(Arc<dyn Store>, Backend), StoreError> {
    Ok(match &settings.store.backend {
        StoreBackend::Memory => (
            Arc::new(memory::MemoryStore::new(settings.rate_limit)),
            Backend(Shared::Memory),
        ),
        StoreBackend::Redis(redis) => {
            let store = self::redis::RedisStore::new(redis, settings.rate_limit, metrics)?;
            let shared = Backend(Shared::Redis(store.connection()));
            (Arc::new(store), shared)
        }
        StoreBackend::Postgres(pg) => {
            let store = self::postgres::PostgresStore::new(pg, settings.rate_limit, metrics)?;
            let shared = Backend(Shared::Postgres(store.pool()));
            (Arc::new(store), shared)
        }
    })
}

/// What a backend needs done before serving: on PostgreSQL, the schema brought to this
/// binary's version (`hookgate migrate` does the same ahead of a deploy).
pub async fn prepare(settings: &Settings) -> Result<(), self::postgres::SchemaError> {
    if let StoreBackend::Postgres(pg) = &settings.store.backend {
        let migrated = self::postgres::migrate(pg).await?;
        tracing::info!(
            from = migrated.from,
            to = migrated.to,
            "postgres schema version {}",
            migrated.to
        );
    }
    Ok(())
}

/// What a store's backend holds open (a connection, a pool), handed to the queue on the
/// same backend so ingress' enqueue rides the store's connection. Opaque: only the
/// backends look inside.
pub struct Backend(pub(crate) Shared);

pub(crate) enum Shared {
    Memory,
    Redis(Arc<self::redis::RedisConnection>),
    Postgres(Arc<self::postgres::PgPool>),
}
