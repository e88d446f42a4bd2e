//! The PostgreSQL connections the store and the queue share: a `deadpool` pool of
//! `tokio-postgres` clients (TLS by rustls when the URL's `sslmode` asks for it), every
//! operation bounded by `connect_timeout + timeout`, timed and counted
//! (`hookgate_store_*{op}`). Every connection's `search_path` is the configured schema,
//! so hookgate's SQL names its tables unqualified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresSettings;
use crate::metrics::Metrics;
use crate::store::StoreError;

pub(crate) struct PgPool {
    pool: Pool,
    metrics: Arc<Metrics>,
    /// The longest one operation may take, waiting for a connection included.
    deadline: Duration,
    pub(crate) schema: String,
    /// For connections of their own, outside the pool (`listen`).
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// The client config with the schema as `search_path`, after any `options` the URL
/// gives (they were replaced). Quoted: a plain name may still be a keyword (`user`).
pub(crate) fn client_config(settings: &PostgresSettings) -> tokio_postgres::Config {
    let mut config = settings.config.clone();
    let search_path = format!("-c search_path=\"{}\"", settings.schema);
    let options = match settings.config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {search_path}"),
        _ => search_path,
    };
    config.options(options);
    config
}

/// rustls (ring), trusting the system's roots or the configured CA file. Used only when
/// the URL's `sslmode` is `prefer` (the default: TLS when the server offers it) or
/// `require`.
pub(crate) fn tls(settings: &PostgresSettings) -> MakeRustlsConnect {
    MakeRustlsConnect::new(crate::tls::upstream_client_config_for(&settings.trust))
}

impl PgPool {
    /// Sets up the pool without connecting: PostgreSQL may come up after hookgate.
    pub fn new(settings: &PostgresSettings, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let manager = Manager::from_config(
            client_config(settings),
            tls(settings),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout + settings.timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(PgPool {
            pool,
            metrics,
            deadline: settings.connect_timeout + settings.timeout,
            schema: settings.schema.clone(),
            config: client_config(settings),
            tls: tls(settings),
        })
    }

    /// Runs `request` on a pooled client within the deadline, timing it and counting a
    /// failure under `op`.
    pub async fn call<T>(
        &self,
        op: &str,
        request: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.deadline;
        let result = match tokio::time::timeout_at(deadline, self.pool.get()).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(e)) => Err(pool_error(e)),
            Ok(Ok(mut client)) => {
                match tokio::time::timeout_at(deadline, request(&mut client)).await {
                    Ok(result) => result.map_err(pg_error),
                    Err(_) => {
                        self.abandon(client);
                        Err(StoreError::Timeout)
                    }
                }
            }
        };
        self.metrics.store_op(op, started.elapsed(), result.is_ok());
        if let Err(e) = &result {
            tracing::warn!(op, error = %e, "postgres store operation failed");
        }
        result
    }

    /// A client whose statement ran past the deadline: dropping the future left it
    /// running on the server, where it would still commit (an enqueue the sender was
    /// told failed, a take leasing rows nobody holds) and hold the connection for
    /// whoever got it next. It is cancelled on the server, and the connection leaves
    /// the pool, closed only once the cancel was sent (closing first lets a statement
    /// in progress finish).
    fn abandon(&self, client: deadpool_postgres::Client) {
        let client = deadpool_postgres::Object::take(client);
        let cancel = client.cancel_token();
        let tls = self.tls.clone();
        let deadline = self.deadline;
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(deadline, cancel.cancel_query(tls)).await {
                tracing::warn!(error = %pg_error(e), "postgres: cannot cancel a statement that timed out");
            }
            drop(client);
        });
    }
}

/// A transaction in which the planner may not read a table in full: for the statements
/// an instance runs by itself (the queue's retention sweep and stats every second, the
/// dedupe sweep), whose cost must follow what they find, not what the table keeps. Left
/// to its estimates, PostgreSQL read all of `deliveries` for them: its statistics lag a
/// table whose rows change state within seconds, and a prepared statement's generic plan
/// guesses that a third of the rows are past a bound it does not know (measured in the
/// benchmark: 43 ms a sweep and 50 ms a stats query at 22,000 rows, every second).
pub(crate) async fn on_indexes(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL enable_seqscan = off").await?;
    Ok(tx)
}

/// The channel `NOTIFY` announces new deliveries on: one per schema.
pub(crate) fn channel(schema: &str) -> String {
    format!("hookgate_{schema}")
}

/// Wakes `wake` whenever a delivery is enqueued in this schema by any instance (`LISTEN`
/// on a connection of its own, reconnecting after a failure), until `pool` is dropped.
pub(crate) async fn listen_forever(pool: std::sync::Weak<PgPool>, wake: Arc<tokio::sync::Notify>) {
    const RECONNECT: Duration = Duration::from_secs(1);
    const CHECK: Duration = Duration::from_secs(5);
    loop {
        let Some((config, tls, channel, deadline)) = pool.upgrade().map(|p| {
            (
                p.config.clone(),
                p.tls.clone(),
                channel(&p.schema),
                p.deadline,
            )
        }) else {
            return;
        };
        let connected = tokio::time::timeout(deadline, config.connect(tls)).await;
        let Ok(Ok((client, mut connection))) = connected else {
            tokio::time::sleep(RECONNECT).await;
            continue;
        };
        let statement = format!("LISTEN {channel}");
        let listen = client.batch_execute(&statement);
        // The connection must be polled for the LISTEN to be answered.
        let listened = tokio::select! {
            result = listen => result.is_ok(),
            _ = std::future::poll_fn(|cx| connection.poll_message(cx)) => false,
        };
        if !listened {
            tokio::time::sleep(RECONNECT).await;
            continue;
        }
        // A delivery enqueued while not listening is found by the workers' polling.
        wake.notify_one();
        loop {
            let message = tokio::select! {
                message = std::future::poll_fn(|cx| connection.poll_message(cx)) => message,
                _ = tokio::time::sleep(CHECK) => {
                    if pool.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => StoreError::Timeout,
        PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Never the query's parameters: only what the server or the client said went wrong.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!("{}: {}", db.code().code(), db.message())),
        // The client's own words are general ("error connecting to server"): the cause
        // ("Connection refused", a certificate rejected) follows.
        None => {
            let mut said = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                said = format!("{said}: {cause}");
                source = cause.source();
            }
            StoreError::Unavailable(said)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, schema: &str) -> PostgresSettings {
        PostgresSettings {
            config: url.parse().unwrap(),
            schema: schema.to_owned(),
            pool_size: 1,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            trust: crate::tls::UpstreamTrust::System,
        }
    }

    /// The URL's own `options` are kept (they were replaced by the search path), and the
    /// schema is quoted (a plain name may be a keyword).
    #[test]
    fn the_search_path_follows_the_urls_options_quoted() {
        let given = settings(
            "postgres://h@db/x?options=-c%20statement_timeout%3D5000",
            "user",
        );
        assert_eq!(
            client_config(&given).get_options(),
            Some(r#"-c statement_timeout=5000 -c search_path="user""#)
        );
        let none = settings("postgres://h@db/x", "hookgate");
        assert_eq!(
            client_config(&none).get_options(),
            Some(r#"-c search_path="hookgate""#)
        );
    }
}
