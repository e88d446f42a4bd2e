//! hookgate's schema: versioned migrations embedded in the binary, applied under an
//! advisory lock (instances starting together apply each once), recorded in
//! `schema_version`. A database whose version is newer than this binary's is refused.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::pool::{client_config, tls};
use crate::config::PostgresSettings;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_inline_ts_ms.sql"),
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot reach PostgreSQL: {0}")]
    Unreachable(String),
    #[error(
        "the database's hookgate schema is at version {found}, newer than this binary's \
         {known}: run a newer hookgate (or restore the database)"
    )]
    Newer { found: i32, known: i32 },
    #[error("migration to schema version {version} failed: {detail}")]
    Failed { version: i32, detail: String },
    #[error(
        "another session holds the migration lock of schema \"{schema}\" and has run no \
         statement for 30 s (waited {waited:?}): a stuck `hookgate migrate`, or a session \
         the server keeps for a client gone; see pg_locks where locktype = 'advisory'"
    )]
    Locked { schema: String, waited: Duration },
}

/// How long `migrate` waits for a migration lock whose holder runs no statement.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Whether the session holding the advisory lock on `hashtext($1)` is running a
/// statement (a bigint lock key is split into `classid`, its high 32 bits, and `objid`).
const HOLDER_BUSY: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks l \
     JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
       AND l.classid::bigint = (hashtext($1)::bigint >> 32) & 4294967295 \
       AND l.objid::bigint = hashtext($1)::bigint & 4294967295 \
       AND a.state = 'active')";

/// Where the schema stood and stands after `migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

async fn connect(settings: &PostgresSettings) -> Result<Client, SchemaError> {
    let config = client_config(settings);
    let connecting = config.connect(tls(settings));
    let (client, connection) =
        tokio::time::timeout(settings.connect_timeout + settings.timeout, connecting)
            .await
            .map_err(|_| SchemaError::Unreachable("timed out".to_owned()))?
            .map_err(|e| SchemaError::Unreachable(super::pool::pg_error(e).to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres migration connection ended");
        }
    });
    Ok(client)
}

fn unreachable(e: tokio_postgres::Error) -> SchemaError {
    SchemaError::Unreachable(super::pool::pg_error(e).to_string())
}

/// `query` bounded like every store operation (`connect_timeout + timeout`): a server
/// that accepted the connection and then stalled held `serve`, `migrate` and `check`
/// with no word.
async fn bounded<T>(
    settings: &PostgresSettings,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, SchemaError> {
    bounded_schema(settings, async { query.await.map_err(unreachable) }).await
}

/// The schema version in the database (0 before the first migration).
async fn version(client: &Client, schema: &str) -> Result<i32, SchemaError> {
    let exists = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("\"{schema}\".schema_version")],
        )
        .await
        .map_err(unreachable)?
        .get::<_, bool>(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .map_err(unreachable)?;
    Ok(row.get(0))
}

/// The database's schema version, for `hookgate check`.
pub async fn status(settings: &PostgresSettings) -> Result<i32, SchemaError> {
    let client = connect(settings).await?;
    bounded_schema(settings, version(&client, &settings.schema)).await
}

/// `bounded` for a step that already speaks `SchemaError`.
async fn bounded_schema<T>(
    settings: &PostgresSettings,
    step: impl Future<Output = Result<T, SchemaError>>,
) -> Result<T, SchemaError> {
    tokio::time::timeout(settings.connect_timeout + settings.timeout, step)
        .await
        .map_err(|_| SchemaError::Unreachable("timed out".to_owned()))?
}

/// Brings the schema to `SCHEMA_VERSION`, each missing migration in its own
/// transaction, under a session advisory lock: instances that start together wait for
/// the first, then find nothing left to do.
pub async fn migrate(settings: &PostgresSettings) -> Result<Migrated, SchemaError> {
    let client = connect(settings).await?;
    let schema = &settings.schema;
    let lock_key = format!("hookgate migrations {schema}");
    // Tried, not waited for: waited on for as long as its holder is running a
    // statement (another instance migrating, however long that takes); a holder idle
    // for `LOCK_PATIENCE` (a stuck `hookgate migrate`, a client gone whose session the
    // server still holds) is named instead of waited on for good.
    let started = Instant::now();
    let mut idle_since = started;
    for tries in 0u32.. {
        let locked = bounded(
            settings,
            client.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&lock_key]),
        )
        .await?;
        if locked.get::<_, bool>(0) {
            break;
        }
        let busy = bounded(settings, client.query_one(HOLDER_BUSY, &[&lock_key])).await?;
        if busy.get::<_, bool>(0) {
            idle_since = Instant::now();
        }
        if idle_since.elapsed() >= LOCK_PATIENCE {
            return Err(SchemaError::Locked {
                schema: schema.clone(),
                waited: started.elapsed(),
            });
        }
        // At once, then every 5 s.
        if tries % 20 == 0 {
            tracing::info!(
                schema,
                "postgres: waiting for another session's migration of the schema"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let result = apply(&client, schema).await;
    // Closing the session would release it too; say so explicitly while it is open.
    let _ = client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key])
        .await;
    result
}

async fn apply(client: &Client, schema: &str) -> Result<Migrated, SchemaError> {
    let from = version(client, schema).await?;
    if from > SCHEMA_VERSION {
        return Err(SchemaError::Newer {
            found: from,
            known: SCHEMA_VERSION,
        });
    }
    // Created only when missing: `CREATE SCHEMA IF NOT EXISTS` needs `CREATE` on the
    // database even when the schema is there, which a role granted only the schema's
    // tables after the first migration does not have (every later one failed).
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(|e| SchemaError::Failed {
            version: from + 1,
            detail: super::pool::pg_error(e).to_string(),
        })?
        .is_some();
    let create = if exists {
        String::new()
    } else {
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n")
    };
    for version in from + 1..=SCHEMA_VERSION {
        let failed = |e: tokio_postgres::Error| SchemaError::Failed {
            version,
            detail: super::pool::pg_error(e).to_string(),
        };
        let sql = MIGRATIONS[(version - 1) as usize];
        // Every migration after the first finds the schema and `schema_version` there:
        // `client_min_messages` keeps PostgreSQL's "already exists, skipping" notices
        // out of the log.
        let script = format!(
            "BEGIN;\n\
             SET LOCAL client_min_messages = warning;\n\
             {create}\
             SET LOCAL search_path = \"{schema}\";\n\
             CREATE TABLE IF NOT EXISTS schema_version (\n\
               version integer PRIMARY KEY,\n\
               applied_at timestamptz NOT NULL DEFAULT now()\n\
             );\n\
             {sql}\n\
             INSERT INTO schema_version (version) VALUES ({version});\n\
             COMMIT;"
        );
        if let Err(e) = client.batch_execute(&script).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(failed(e));
        }
        tracing::info!(schema, version, "postgres schema migrated");
    }
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}
