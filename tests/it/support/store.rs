//! `TestStore`, the store a shared test body runs against, and `on_each_store!`, which
//! runs one test body on the in-memory store, on a Redis of its own and on PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{PostgresServer, RedisCluster, RedisServer, fresh_schema};

/// The store a shared test body runs against. A Redis server lives as long as this.
pub enum TestStore {
    Memory,
    Redis(RedisServer),
    /// The Redis Cluster the tests share (`RedisCluster::shared_or_skip`), under a key
    /// prefix of this test's own.
    SharedCluster {
        nodes: Vec<String>,
        key_prefix: String,
    },
    /// The PostgreSQL server the tests share (`PostgresServer::shared_or_skip`), under a
    /// schema of this test's own.
    Postgres {
        url: String,
        schema: String,
    },
}

impl TestStore {
    pub fn memory() -> TestStore {
        TestStore::Memory
    }

    /// A fresh `redis-server` for this test, or `None` when the test is skipped.
    pub async fn redis() -> Option<TestStore> {
        RedisServer::start_or_skip().await.map(TestStore::Redis)
    }

    /// The shared Redis Cluster under a fresh key prefix, or `None` when the test is
    /// skipped.
    pub async fn shared_cluster() -> Option<TestStore> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nodes = RedisCluster::shared_or_skip().await?;
        let key_prefix = format!("test-{}:", NEXT.fetch_add(1, Ordering::Relaxed));
        Some(TestStore::SharedCluster { nodes, key_prefix })
    }

    /// The shared PostgreSQL server under a fresh schema, or `None` when the test is
    /// skipped.
    pub fn postgres() -> Option<TestStore> {
        let url = PostgresServer::shared_or_skip()?;
        Some(TestStore::Postgres {
            url,
            schema: fresh_schema(),
        })
    }
}

/// Runs each named `async fn(TestStore)` in the calling module as three tests,
/// `memory::<name>`, `redis::<name>` and `postgres::<name>`; an optional `(flavor = ...)` after a name is
/// passed to `#[tokio::test]`.
macro_rules! on_each_store {
    ($($name:ident $(($($runtime:tt)*))?),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test $(($($runtime)*))?]
                async fn $name() {
                    super::$name($crate::support::TestStore::memory()).await
                }
            )+
        }

        mod redis {
            $(
                #[tokio::test $(($($runtime)*))?]
                async fn $name() {
                    let Some(store) = $crate::support::TestStore::redis().await else {
                        return;
                    };
                    super::$name(store).await
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test $(($($runtime)*))?]
                async fn $name() {
                    let Some(store) = $crate::support::TestStore::postgres() else {
                        return;
                    };
                    super::$name(store).await
                }
            )+
        }
    };
}

pub(crate) use on_each_store;
