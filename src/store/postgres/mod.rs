//! The PostgreSQL store: dedupe claims in the `dedupe` table of hookgate's schema,
//! shared by every instance using the same database, with the same two-phase claim /
//! commit / release semantics as Redis (each one statement, atomic by itself: an
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE` that only replaces an expired row).
//!
//! Rate limits stay in memory, per instance (`memory::MemoryStore`'s GCRA buckets):
//! PostgreSQL is a poor place for a counter every request writes. With several
//! instances behind a load balancer, a client may get up to `burst` (and the rate) from
//! each instance it reaches.
//!
//! Times (claim expiry) are the database's clock, so instances' clocks may differ.
//! Expired rows are deleted in small batches by a background sweep.

mod pool;
pub mod schema;

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(crate) use self::pool::{PgPool, channel, listen_forever, on_indexes};
pub use self::schema::{Migrated, SCHEMA_VERSION, SchemaError, migrate, status};
use super::memory::MemoryStore;
use super::{BoxFuture, ClaimState, RateDecision, Settled, Store, StoreError};
use crate::config::{PostgresSettings, RateLimitSettings};
use crate::metrics::Metrics;

/// Claims `$1` for `$2` for `$3` seconds unless a live row holds it; returns a row
/// only when won. A NULL `$2` writes the key done at once (the queue's first
/// deliveries, `Queue::enqueue_all_first`).
pub(crate) const CLAIM: &str = "INSERT INTO dedupe (key, token, expires_at) \
     VALUES ($1, $2, now() + make_interval(secs => $3)) \
     ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at \
     WHERE dedupe.expires_at <= now() \
     RETURNING 1";

/// What holds `$1` now: done (no token) or in flight for so many seconds.
const HOLDER: &str = "SELECT token IS NULL, \
     greatest(extract(epoch FROM expires_at - now()), 0)::float8 \
     FROM dedupe WHERE key = $1 AND expires_at > now()";

/// Marks `$1` done for `$3` seconds if it holds `$2`, has expired or is absent.
const COMMIT: &str = "INSERT INTO dedupe (key, token, expires_at) \
     VALUES ($1, NULL, now() + make_interval(secs => $3)) \
     ON CONFLICT (key) DO UPDATE SET token = NULL, expires_at = EXCLUDED.expires_at \
     WHERE dedupe.token = $2 OR dedupe.expires_at <= now() \
     RETURNING 1";

/// Deletes `$1` only if its live claim is `$2`'s.
const RELEASE: &str = "DELETE FROM dedupe WHERE key = $1 AND token = $2 AND expires_at > now()";

/// One batch of the sweep of expired claims: small, so no long lock; oldest first,
/// through `dedupe_expires_at` (`on_indexes`). The outer condition is repeated: a row
/// a claim or commit renewed after the subquery picked it is checked again as it now
/// is (READ COMMITTED re-reads an updated row against the `WHERE`, not the subquery),
/// so a live claim is never deleted. Public for the test that races it.
pub const SWEEP: &str = "DELETE FROM dedupe WHERE expires_at < now() AND key IN \
     (SELECT key FROM dedupe WHERE expires_at < now() ORDER BY expires_at LIMIT 1000)";

/// How often expired dedupe rows are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct PostgresStore {
    pool: Arc<PgPool>,
    /// Rate limits: in memory, per instance (see the module doc).
    rate: MemoryStore,
    description: String,
}

impl PostgresStore {
    /// Creates the store on its own pool, without connecting (the schema is applied
    /// before, by `migrate`).
    pub fn new(
        settings: &PostgresSettings,
        rate: RateLimitSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let pool = Arc::new(PgPool::new(settings, metrics)?);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep_forever(Arc::downgrade(&pool)));
        }
        Ok(PostgresStore {
            pool,
            rate: MemoryStore::new(rate),
            description: format!(
                "{} (dedupe shared by every instance using it; rate limits in memory, \
                 per instance)",
                settings.target()
            ),
        })
    }

    /// The pool, for the queue on the same database (`store::Backend`).
    pub(crate) fn pool(&self) -> Arc<PgPool> {
        self.pool.clone()
    }
}

/// Deletes expired claims until the store is dropped.
async fn sweep_forever(pool: Weak<PgPool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        loop {
            let deleted = pool
                .call("sweep", async |client| {
                    let tx = on_indexes(client).await?;
                    let statement = tx.prepare_cached(SWEEP).await?;
                    let deleted = tx.execute(&statement, &[]).await?;
                    tx.commit().await?;
                    Ok(deleted)
                })
                .await;
            if !matches!(deleted, Ok(1000)) {
                break;
            }
        }
    }
}

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl Store for PostgresStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimState, StoreError>> {
        Box::pin(async move {
            // A second round when the claim that held the key ended between the two
            // statements: the key is free, so it is claimed, as Redis' script does.
            for _ in 0..2 {
                let won = self
                    .pool
                    .call("claim", async |client| {
                        let statement = client.prepare_cached(CLAIM).await?;
                        client
                            .query_opt(&statement, &[&key, &token, &seconds(ttl)])
                            .await
                    })
                    .await?;
                if won.is_some() {
                    return Ok(ClaimState::Won);
                }
                // Held by someone (rare): by whom, asked only now. Held it is, whatever
                // this asking meets: failing, it must not let a copy through (`on_error
                // = "allow"` forwarded one beside the claim in flight, or a replay of a
                // delivery done), so the sender is asked to come back soon.
                let holder = self
                    .pool
                    .call("claim", async |client| {
                        let statement = client.prepare_cached(HOLDER).await?;
                        client.query_opt(&statement, &[&key]).await
                    })
                    .await;
                match holder {
                    Ok(Some(row)) if row.get::<_, bool>(0) => return Ok(ClaimState::Done),
                    Ok(Some(row)) => {
                        return Ok(ClaimState::InFlight {
                            remaining: Duration::from_secs_f64(row.get::<_, f64>(1)),
                        });
                    }
                    Ok(None) => continue,
                    Err(_) => break,
                }
            }
            Ok(ClaimState::InFlight {
                remaining: crate::store::HOLDER_UNKNOWN,
            })
        })
    }

    fn commit<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        Box::pin(async move {
            let applied = self
                .pool
                .call("commit", async |client| {
                    let statement = client.prepare_cached(COMMIT).await?;
                    client
                        .query_opt(&statement, &[&key, &token, &seconds(ttl)])
                        .await
                })
                .await?;
            Ok(Settled::of(applied.is_some()))
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        Box::pin(async move {
            let deleted = self
                .pool
                .call("release", async |client| {
                    let statement = client.prepare_cached(RELEASE).await?;
                    client.execute(&statement, &[&key, &token]).await
                })
                .await?;
            Ok(Settled::of(deleted == 1))
        })
    }

    fn rate_check(&self, client: IpAddr) -> BoxFuture<'_, Result<RateDecision, StoreError>> {
        self.rate.rate_check(client)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.pool
                .call("ping", async |client| client.simple_query("SELECT 1").await)
                .await
                .map(|_| ())
        })
    }

    fn set_rate(&self, rate: RateLimitSettings) {
        self.rate.set_rate(rate);
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
