//! The durable queue on PostgreSQL, shared by every instance using the same database:
//! one `deliveries` row is a delivery's record and its queue entry at once, so an
//! enqueue is one `INSERT` (atomic by itself) and the 202 goes out after its commit.
//! The history is the `attempts` table. Both are a documented interface (README,
//! "PostgreSQL").
//!
//! A worker takes due rows (`due_at` passed, no live lease) with `FOR UPDATE SKIP
//! LOCKED`, so instances taking at once never get the same one, and holds each under a
//! lease (`lease_token`, `lease_until` on the database's clock) that `keep_alive`
//! renews; a lease that ran out (its instance died) lets another instance take the
//! delivery after `queue.visibility_timeout`. After an enqueue commits, the instance
//! `NOTIFY`s the schema's channel from a task of its own (`Announcer`: one `NOTIFY` in
//! flight at a time, covering every enqueue committed before it), and each instance
//! `LISTEN`s on a connection of its own to wake its idle workers at once (`wake_on`);
//! polling stays as the fallback. Final rows keep `final_at` and are
//! deleted `queue.retention` later in small batches (`take` sweeps at most once a
//! second); processed rows drop their headers, body and object at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::record::{
    Cursor, DeliveryList, IdGenerator, RecordBody, decode_headers, encode_headers, header_listing,
};
use super::{
    Attempt, BoxFuture, ClaimDone, Deferred, Detail, Job, Lease, ListFilter, NewDelivery, Queue,
    QueueError, QueueStats, Replayed, Settlement, State, Step, Summary, UnixMillis, now_millis,
};
use crate::config::QueueSettings;
use crate::route::RatePolicy;
use crate::store::postgres::{CLAIM, PgPool, channel, listen_forever, on_indexes};

const ENQUEUE: &str = "INSERT INTO deliveries (id, state, source, route, webhook_id, \
     event_type, received_at, queued_at, updated_at, due_at, headers, body, trace_context) \
     VALUES ($1, 'queued', $2, $3, $4, $5, ms_ts($6), ms_ts($6), ms_ts($6), ms_ts($6), \
     $7::text::jsonb, $8, $9)";

/// One delivery as `ENQUEUE` stores it: its new id and the values of `$1` to `$9`.
struct NewRow<'a> {
    id: String,
    delivery: &'a NewDelivery,
    received_at: i64,
    headers: String,
    body: &'a [u8],
}

impl<'a> NewRow<'a> {
    fn of(ids: &IdGenerator, delivery: &'a NewDelivery) -> Self {
        NewRow {
            id: ids.next(delivery.received_at),
            delivery,
            received_at: delivery.received_at as i64,
            headers: encode_headers(&delivery.headers),
            body: &delivery.body,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        let d = self.delivery;
        [
            &self.id,
            &d.source,
            &d.route,
            &d.webhook_id,
            &d.event_type,
            &self.received_at,
            &self.headers,
            &self.body,
            &d.trace_context,
        ]
    }
}

/// Takes one start from the GCRA bucket `$1` (interval `$2`, tolerance `$3` seconds, on
/// the database's clock); a row comes back when allowed. A bucket a slower rate emptied
/// by more than a minute past what this rate could (a reload raised it) is read as this
/// rate's emptiest that still allows a start: the new rate applies from the next start.
/// The minute is for `now()`, fixed when each statement starts: a statement that waited
/// for the row's lock finds a bucket a later one wrote, a little past its own reach.
const PACE: &str = "INSERT INTO paces AS p (key, tat) \
     VALUES ($1, now() + make_interval(secs => $2)) \
     ON CONFLICT (key) DO UPDATE SET tat = CASE \
       WHEN p.tat > now() + make_interval(secs => $2::float8 + $3::float8 + 60) \
       THEN now() + make_interval(secs => $3) ELSE greatest(p.tat, now()) END \
       + make_interval(secs => $2) \
     WHERE p.tat > now() + make_interval(secs => $2::float8 + $3::float8 + 60) \
       OR greatest(p.tat, now()) - now() <= make_interval(secs => $3) \
     RETURNING 1";

/// How long a denied start waits: past the tolerance, in seconds.
const PACE_WAIT: &str = "SELECT greatest(extract(epoch FROM tat - now())::float8 - $2, 0) \
     FROM paces WHERE key = $1";

/// Marks the dedupe claim `$1` of token `$2` done for `$3` seconds, if still held.
const CLAIM_DONE: &str = "UPDATE dedupe SET token = NULL, \
     expires_at = now() + make_interval(secs => $3) \
     WHERE key = $1 AND token = $2 AND expires_at > now()";

/// `ENQUEUE` ($1 to $9, `NewRow::params`) only if the dedupe claim `$10` of token `$11`
/// is still held, marking it done for `$12` seconds in the same statement (one
/// transaction); a row comes back when stored. A claim released meanwhile (its enqueue
/// timed out, and this statement ran late) or expired stores nothing: the key's new
/// holder may store the delivery itself. Neither `NOTIFY`s: see `Announcer`.
const ENQUEUE_CLAIMED: &str = "WITH done AS ( \
       UPDATE dedupe SET token = NULL, expires_at = now() + make_interval(secs => $12) \
       WHERE key = $10 AND token = $11 AND expires_at > now() RETURNING 1) \
     INSERT INTO deliveries (id, state, source, route, webhook_id, \
     event_type, received_at, queued_at, updated_at, due_at, headers, body, trace_context) \
     SELECT $1, 'queued', $2, $3, $4, $5, ms_ts($6), ms_ts($6), ms_ts($6), ms_ts($6), \
     $7::text::jsonb, $8, $9 FROM done \
     RETURNING 1";

/// Leases up to `$2` due deliveries to `$3` for `$4` seconds. Rows come back unordered.
/// A lapsed lease `$3` itself holds keeps its token: taken back after its renewals
/// failed, it is the lease its attempt in progress holds, which the worker leaves to it
/// (with a new token it looked like another delivery, and was attempted a second time).
const TAKE: &str = "WITH due AS ( \
       SELECT id FROM deliveries \
       WHERE due_at <= ms_ts($1) AND (lease_until IS NULL OR lease_until < now()) \
       ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
     UPDATE deliveries d SET lease_token = CASE WHEN d.lease_owner = $3 \
         AND d.lease_token IS NOT NULL THEN d.lease_token ELSE gen_random_uuid()::text END, \
       lease_owner = $3, \
       lease_until = now() + make_interval(secs => $4) \
     FROM due WHERE d.id = due.id \
     RETURNING d.id, d.source || '/' || d.route, d.lease_token, ts_ms(d.due_at)";

/// Puts the leased delivery `$1` (token `$2`) back to wait until `$3` without an
/// attempt (one taken over from an instance that died in its attempt `queued`, no longer
/// `processing`), or, when `$3` is past `$4` seconds after it was queued, dead-letters it at
/// `$5` with the last error `$6`; returns whether it was dead-lettered.
const DEFER: &str = "WITH d AS ( \
       SELECT id, ms_ts($3) > queued_at + make_interval(secs => $4) AS gone FROM deliveries \
       WHERE id = $1 AND lease_token = $2 AND state NOT IN ('processed', 'failed_final') \
       FOR UPDATE) \
     UPDATE deliveries t SET \
       state = CASE WHEN d.gone THEN 'failed_final' \
         WHEN t.state = 'processing' THEN 'queued' ELSE t.state END, \
       next_attempt_at = CASE WHEN d.gone THEN NULL ELSE ms_ts($3) END, \
       due_at = CASE WHEN d.gone THEN NULL ELSE ms_ts($3) END, \
       final_at = CASE WHEN d.gone THEN ms_ts($5) END, \
       updated_at = CASE WHEN d.gone OR t.state = 'processing' THEN ms_ts($5) \
         ELSE t.updated_at END, \
       last_error = CASE WHEN d.gone THEN $6 ELSE t.last_error END, \
       lease_token = NULL, lease_owner = NULL, lease_until = NULL \
     FROM d WHERE t.id = d.id RETURNING d.gone, t.attempts";

const SEEN: &str = "INSERT INTO instances (name, last_seen) VALUES ($1, now()) \
     ON CONFLICT (name) DO UPDATE SET last_seen = now()";

const BEGIN: &str = "WITH d AS ( \
       UPDATE deliveries SET state = 'processing', attempts = attempts + 1, \
         history_len = history_len + 1, updated_at = ms_ts($2), next_attempt_at = NULL \
       WHERE id = $1 AND lease_token = $4 AND state NOT IN ('processed', 'failed_final') \
       RETURNING id, attempts, history_len - 1 AS idx, source, route, webhook_id, \
         event_type, coalesce(headers::text, ''), coalesce(body, ''::bytea), \
         ts_ms(queued_at), ts_ms(received_at), object, failed_fetches, trace_context), \
     h AS (INSERT INTO attempts (delivery_id, idx, attempt, started_at, instance) \
       SELECT id, idx, attempts, ms_ts($2), $3 FROM d) \
     SELECT * FROM d";

/// The columns of an `attempts` row from `$n..$n+8`, as `UPDATE ... SET (..) = (..)`.
const ENTRY_COLUMNS: &str =
    "(attempt, step, started_at, duration_ms, status, error, result, instance, answer, trace_id)";

fn entry_values(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "({}, {}, ms_ts({}), {}, {}, {}, {}, {}, {}, {})",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9)
    )
}

/// An attempt as the parameters `entry_values` names.
struct EntryParams {
    attempt: i32,
    step: &'static str,
    started_at: i64,
    duration_ms: Option<i64>,
    status: Option<i32>,
    error: Option<String>,
    result: Option<String>,
    instance: String,
    answer: Option<String>,
    trace_id: Option<String>,
}

impl EntryParams {
    fn of(a: &Attempt) -> EntryParams {
        EntryParams {
            attempt: a.attempt as i32,
            step: step_name(a.step),
            started_at: a.started_at as i64,
            duration_ms: a.duration_ms.map(|d| d as i64),
            status: a.status.map(i32::from),
            error: a.error.clone(),
            result: a.result.clone(),
            instance: a.instance.clone(),
            answer: a.answer.clone(),
            trace_id: a.trace_id.clone(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.attempt,
            &self.step,
            &self.started_at,
            &self.duration_ms,
            &self.status,
            &self.error,
            &self.result,
            &self.instance,
            &self.answer,
            &self.trace_id,
        ]
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Deliver => "deliver",
        Step::Fetch => "fetch",
    }
}

const SUMMARY_COLUMNS: &str = "id, state, source, route, webhook_id, event_type, attempts, \
     ts_ms(received_at), ts_ms(updated_at), ts_ms(next_attempt_at), last_status, last_error, \
     ts_ms(queued_at)";

pub struct PostgresQueue {
    pool: Arc<PgPool>,
    instance: String,
    ids: IdGenerator,
    visibility: Duration,
    retention: Duration,
    /// A deferral past this after the delivery was queued dead-letters it (`defer`).
    max_age: Duration,
    /// When `take` last swept final records past the retention (ms).
    swept_at: AtomicU64,
    /// A sweep is under way (`sweep`): one at a time, in a task of its own.
    sweeping: Arc<AtomicBool>,
    /// `NOTIFY`'s channel for new deliveries (`wake_on`).
    channel: String,
    announcer: Announcer,
    /// When `take` last recorded this instance's `last_seen` (ms).
    seen_at: AtomicU64,
    /// A `seen` is in flight: one at a time (a locked row held each for the operation's
    /// deadline, and a pile of them would hold the pool's connections).
    seeing: Arc<AtomicBool>,
    description: String,
    sql: Sql,
}

/// Tells other instances' idle workers about new deliveries, outside the enqueues'
/// transactions: a `NOTIFY` makes its transaction's commit take a lock that every
/// notifying transaction shares, for the length of its WAL flush, so one per enqueue
/// queued the ingresses' commits behind each other. Here one task sends them, one at a
/// time, each after the enqueues that asked for it committed; enqueues committed while
/// one is in flight share the next. (This instance's own workers are woken in process
/// by `queue::Ingress`.)
#[derive(Default)]
struct Announcer {
    wanted: Arc<tokio::sync::Notify>,
    started: std::sync::OnceLock<()>,
}

impl Announcer {
    /// After an enqueue committed: asks for one `NOTIFY` on `channel` (starting the task
    /// on the first call; it ends when `pool` is dropped).
    fn announce(&self, pool: &Arc<PgPool>, channel: &str) {
        self.started.get_or_init(|| {
            let (pool, channel, wanted) = (
                Arc::downgrade(pool),
                channel.to_owned(),
                self.wanted.clone(),
            );
            tokio::spawn(async move {
                const CHECK: Duration = Duration::from_secs(5);
                loop {
                    let asked = tokio::select! {
                        _ = wanted.notified() => true,
                        _ = tokio::time::sleep(CHECK) => false,
                    };
                    let Some(pool) = pool.upgrade() else { return };
                    if !asked {
                        continue;
                    }
                    // A failure is logged by `call`; the workers' polling covers it.
                    let _ = pool
                        .call("notify", async |client| {
                            let statement = client.prepare_cached(NOTIFY).await?;
                            client.execute(&statement, &[&channel]).await
                        })
                        .await;
                }
            });
        });
        self.wanted.notify_one();
    }
}

const NOTIFY: &str = "SELECT pg_notify($1, '')";

/// One batch of the retention sweep: final records `$1` seconds past final, `$2` at
/// most, oldest first. A row someone holds locked (a replay in progress, an operator's
/// `SELECT ... FOR UPDATE`) is skipped, not waited for: waiting, the batch hit the
/// operation's deadline, rolled back, and tried the same rows again a second later. So
/// is a record one of whose `attempts` rows someone holds locked (the delete cascades
/// into them): its attempts are locked here first, skipping the locked ones, and a
/// record is deleted only if all of its were got. The condition is repeated outside the
/// subquery all the same, so a row that changed once selected is checked as it now is.
/// Public for the test that races it.
pub const RETENTION: &str = "WITH cand AS ( \
       SELECT id FROM deliveries WHERE final_at < now() - make_interval(secs => $1) \
       ORDER BY final_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
     every AS (SELECT delivery_id, count(*) AS n FROM attempts \
       WHERE delivery_id IN (SELECT id FROM cand) GROUP BY delivery_id), \
     got AS (SELECT delivery_id, count(*) AS n FROM (SELECT delivery_id FROM attempts \
       WHERE delivery_id IN (SELECT id FROM cand) FOR UPDATE SKIP LOCKED) l \
       GROUP BY delivery_id) \
     DELETE FROM deliveries d USING cand WHERE d.id = cand.id \
       AND d.final_at < now() - make_interval(secs => $1) \
       AND NOT EXISTS (SELECT 1 FROM every e LEFT JOIN got g USING (delivery_id) \
         WHERE e.delivery_id = d.id AND e.n <> coalesce(g.n, 0))";

/// Statements that depend on nothing but are too long to write inline.
struct Sql {
    enqueue_first: String,
    settle: String,
    attach: String,
    hand_back: String,
}

impl PostgresQueue {
    pub(crate) fn new(pool: Arc<PgPool>, settings: &QueueSettings, instance: &str) -> Self {
        let description = format!(
            "PostgreSQL tables in schema {:?} (deliveries, attempts), shared by every \
             instance using the database",
            pool.schema
        );
        PostgresQueue {
            channel: channel(&pool.schema),
            pool,
            instance: instance.to_owned(),
            ids: IdGenerator::default(),
            visibility: settings.visibility_timeout,
            retention: settings.retention,
            max_age: settings.max_age,
            swept_at: AtomicU64::new(0),
            sweeping: Arc::new(AtomicBool::new(false)),
            announcer: Announcer::default(),
            seen_at: AtomicU64::new(0),
            seeing: Arc::new(AtomicBool::new(false)),
            description,
            sql: Sql {
                // The store's `CLAIM` of the dedupe key ($1, a NULL token $2 so it is
                // written done, $3 seconds), then `ENQUEUE` of $4.. (`NewRow::params`)
                // only if it won: one statement; a row comes back when stored.
                enqueue_first: format!(
                    "WITH claim AS ({CLAIM}) \
                     INSERT INTO deliveries (id, state, source, route, webhook_id, \
                     event_type, received_at, queued_at, updated_at, due_at, headers, body, \
                     trace_context) \
                     SELECT $4, 'queued', $5, $6, $7, $8, ms_ts($9), ms_ts($9), ms_ts($9), \
                     ms_ts($9), $10::text::jsonb, $11, $12 FROM claim \
                     RETURNING 1"
                ),
                // $1 id, $2 state, $3 1 for a failed fetch, $4 now, $5 status, $6 error,
                // $7 next attempt (retry) or NULL, $8 token, $9 history index, $10.. entry.
                // The delivery moves on only while the lease is still this one (not
                // taken over, not settled already by an earlier try of the same
                // settle); the attempt's own history entry is written either way.
                settle: format!(
                    "WITH d AS ( \
                       UPDATE deliveries SET state = $2, \
                         attempts = greatest(attempts - $3, 0), \
                         failed_fetches = failed_fetches + $3, \
                         updated_at = ms_ts($4), last_status = $5, last_error = $6, \
                         next_attempt_at = ms_ts($7), due_at = ms_ts($7), \
                         final_at = CASE WHEN $7::bigint IS NULL THEN ms_ts($4) END, \
                         headers = CASE WHEN $2 = 'processed' THEN NULL ELSE headers END, \
                         body = CASE WHEN $2 = 'processed' THEN NULL ELSE body END, \
                         object = CASE WHEN $2 = 'processed' THEN NULL ELSE object END, \
                         lease_owner = NULL, lease_until = NULL, lease_token = NULL \
                       WHERE id = $1 AND lease_token = $8 RETURNING id) \
                     UPDATE attempts SET {ENTRY_COLUMNS} = {} \
                     WHERE delivery_id = $1 AND idx = $9 \
                     RETURNING (SELECT count(*) FROM d)",
                    entry_values(10)
                ),
                // $1 id, $2 object, $3 now, $4 history index, $5 next attempt number,
                // $6 instance, $7.. the fetch entry, $17 token.
                attach: format!(
                    "WITH d AS ( \
                       UPDATE deliveries SET object = $2, updated_at = ms_ts($3), \
                         history_len = history_len + 1 \
                       WHERE id = $1 AND lease_token = $17 RETURNING history_len - 1 AS idx), \
                     closed AS (UPDATE attempts SET {ENTRY_COLUMNS} = {} \
                       WHERE delivery_id = $1 AND idx = $4 AND EXISTS (SELECT 1 FROM d)), \
                     opened AS (INSERT INTO attempts (delivery_id, idx, attempt, started_at, instance) \
                       SELECT $1, idx, $5, ms_ts($3), $6 FROM d) \
                     SELECT idx FROM d",
                    entry_values(7)
                ),
                // $1 id, $2 now, $3 1 for an interrupted fetch, $4 token, $5 history
                // index or -1, $6.. the interrupted entry.
                hand_back: format!(
                    "WITH d AS ( \
                       UPDATE deliveries SET state = 'queued', updated_at = ms_ts($2), \
                         due_at = ms_ts($2), attempts = greatest(attempts - $3, 0), \
                         lease_token = NULL, lease_owner = NULL, lease_until = NULL \
                       WHERE id = $1 AND lease_token = $4 \
                         AND state NOT IN ('processed', 'failed_final') \
                       RETURNING id) \
                     UPDATE attempts SET {ENTRY_COLUMNS} = {} \
                     WHERE delivery_id = $1 AND idx = $5",
                    entry_values(6)
                ),
            },
        }
    }

    /// One delivery stored with `claim` marked done, in one statement.
    async fn enqueue_claimed(
        &self,
        delivery: NewDelivery,
        claim: ClaimDone<'_>,
    ) -> Result<(String, bool), QueueError> {
        let row = NewRow::of(&self.ids, &delivery);
        let ttl = claim.ttl.as_secs_f64();
        let mut params = row.params().to_vec();
        params.extend([&claim.key as &(dyn ToSql + Sync), &claim.token, &ttl]);
        let stored = self
            .pool
            .call("enqueue", async |client| {
                let statement = client.prepare_cached(ENQUEUE_CLAIMED).await?;
                client.execute(&statement, &params).await
            })
            .await?;
        if stored == 0 {
            return Err(QueueError::ClaimLost);
        }
        self.announcer.announce(&self.pool, &self.channel);
        Ok((row.id, true))
    }

    /// Several deliveries (a fan-out's copies) in one transaction, with `claim` marked
    /// done in it when given, and stored only if that claim is still held (as
    /// `ENQUEUE_CLAIMED`).
    async fn store_together(
        &self,
        deliveries: Vec<NewDelivery>,
        claim: Option<ClaimDone<'_>>,
    ) -> Result<(Vec<String>, bool), QueueError> {
        let rows: Vec<NewRow> = deliveries
            .iter()
            .map(|d| NewRow::of(&self.ids, d))
            .collect();
        let held = self
            .pool
            .call("enqueue", async |client| {
                let tx = client.transaction().await?;
                if let Some(claim) = &claim {
                    let statement = tx.prepare_cached(CLAIM_DONE).await?;
                    let ttl = claim.ttl.as_secs_f64();
                    let done = tx
                        .execute(&statement, &[&claim.key, &claim.token, &ttl])
                        .await?;
                    if done == 0 {
                        // Dropped, the transaction rolls back: nothing stored.
                        return Ok(false);
                    }
                }
                insert_rows(&tx, &rows).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await?;
        if !held {
            return Err(QueueError::ClaimLost);
        }
        self.announcer.announce(&self.pool, &self.channel);
        Ok((
            rows.into_iter().map(|row| row.id).collect(),
            claim.is_some(),
        ))
    }

    /// Records that this instance is alive (`instances.last_seen`, which `prune` reads by
    /// the hour), in a task of its own. Best effort, never waited for: failing after a
    /// take had committed its leases made the take fail (the worker never saw, nor
    /// renewed, the deliveries it held), and waited for while its row was locked it held
    /// the leases back past the visibility timeout, for the next take to take again.
    fn seen(&self) {
        if self.seeing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, instance, seeing) = (
            self.pool.clone(),
            self.instance.clone(),
            self.seeing.clone(),
        );
        tokio::spawn(async move {
            let seen = pool
                .call("seen", async |client| {
                    let statement = client.prepare_cached(SEEN).await?;
                    client.execute(&statement, &[&instance]).await
                })
                .await;
            seeing.store(false, Ordering::Release);
            if let Err(e) = seen {
                tracing::warn!(error = %e, "queue: cannot record this instance as alive");
            }
        });
    }

    /// Deletes final records past the retention, a small batch at a time, at most
    /// once a second per instance, oldest first, through `deliveries_final` (`on_indexes`),
    /// in a task of its own, one at a time: a sweep never holds up the take that started
    /// it (awaited there, a batch waiting out its deadline on a row someone held locked
    /// kept the workers from taking anything for seconds at a time). A sweep that fails
    /// (counted as `retention`) is tried again a second later.
    fn sweep(&self) {
        const BATCH: i64 = 500;
        const MAX_BATCHES: usize = 20;
        let now = now_millis();
        let last = self.swept_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1_000
            || self
                .swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            || self.sweeping.swap(true, Ordering::Acquire)
        {
            return;
        }
        let (pool, sweeping) = (self.pool.clone(), self.sweeping.clone());
        let retention = self.retention.as_secs_f64();
        tokio::spawn(async move {
            for _ in 0..MAX_BATCHES {
                let deleted = pool
                    .call("retention", async |client| {
                        let tx = on_indexes(client).await?;
                        let statement = tx.prepare_cached(RETENTION).await?;
                        let deleted = tx.execute(&statement, &[&retention, &BATCH]).await?;
                        tx.commit().await?;
                        Ok(deleted)
                    })
                    .await;
                match deleted {
                    Ok(deleted) if deleted < BATCH as u64 => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "queue: the retention sweep failed");
                        break;
                    }
                }
            }
            sweeping.store(false, Ordering::Release);
        });
    }
}

/// `ENQUEUE` of every row in `tx` (a fan-out's copies, stored together).
async fn insert_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[NewRow<'_>],
) -> Result<(), tokio_postgres::Error> {
    let statement = tx.prepare_cached(ENQUEUE).await?;
    for row in rows {
        tx.execute(&statement, &row.params()).await?;
    }
    Ok(())
}

fn millis(value: Option<i64>) -> Option<UnixMillis> {
    value.map(|v| v.max(0) as UnixMillis)
}

fn summary(row: &Row) -> Result<(Summary, UnixMillis), QueueError> {
    let id: String = row.get(0);
    let state: String = row.get(1);
    let state = State::parse(&state)
        .ok_or_else(|| QueueError::malformed(&id, format!("state {state:?}")))?;
    Ok((
        Summary {
            state,
            source: row.get(2),
            route: row.get(3),
            webhook_id: row.get(4),
            event_type: row.get(5),
            attempts: row.get::<_, i32>(6).max(0) as u32,
            received_at: millis(row.get(7)).unwrap_or(0),
            updated_at: millis(row.get(8)).unwrap_or(0),
            next_attempt_at: millis(row.get(9)),
            last_status: row.get::<_, Option<i32>>(10).map(|s| s as u16),
            last_error: row.get(11),
            id,
        },
        millis(row.get(12)).unwrap_or(0),
    ))
}

fn attempt_of(row: &Row) -> Attempt {
    let step: String = row.get(1);
    Attempt {
        attempt: row.get::<_, i32>(0).max(0) as u32,
        step: if step == "fetch" {
            Step::Fetch
        } else {
            Step::Deliver
        },
        started_at: millis(row.get(2)).unwrap_or(0),
        duration_ms: row.get::<_, Option<i64>>(3).map(|d| d.max(0) as u64),
        status: row.get::<_, Option<i32>>(4).map(|s| s as u16),
        error: row.get(5),
        result: row.get(6),
        instance: row.get(7),
        answer: row.get(8),
        trace_id: row.get(9),
    }
}

impl Queue for PostgresQueue {
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<String, QueueError>> {
        Box::pin(async move {
            let row = NewRow::of(&self.ids, &delivery);
            self.pool
                .call("enqueue", async |client| {
                    let statement = client.prepare_cached(ENQUEUE).await?;
                    client.execute(&statement, &row.params()).await
                })
                .await?;
            self.announcer.announce(&self.pool, &self.channel);
            Ok(row.id)
        })
    }

    fn enqueue_all(
        &self,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(async move {
            if deliveries.len() == 1 {
                let delivery = deliveries.into_iter().next().expect("one delivery");
                return Ok(vec![self.enqueue(delivery).await?]);
            }
            Ok(self.store_together(deliveries, None).await?.0)
        })
    }

    fn enqueue_all_claimed<'a>(
        &'a self,
        deliveries: Vec<NewDelivery>,
        claim: ClaimDone<'a>,
    ) -> BoxFuture<'a, Result<(Vec<String>, bool), QueueError>> {
        Box::pin(async move {
            if deliveries.len() == 1 {
                let delivery = deliveries.into_iter().next().expect("one delivery");
                let (id, settled) = self.enqueue_claimed(delivery, claim).await?;
                return Ok((vec![id], settled));
            }
            self.store_together(deliveries, Some(claim)).await
        })
    }

    fn dedupe_in_enqueue(&self) -> bool {
        true
    }

    fn enqueue_all_first<'a>(
        &'a self,
        deliveries: &'a [NewDelivery],
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, QueueError>> {
        Box::pin(async move {
            let rows: Vec<NewRow> = deliveries
                .iter()
                .map(|d| NewRow::of(&self.ids, d))
                .collect();
            let ttl = ttl.as_secs_f64();
            let done: Option<&str> = None;
            let claim: [&(dyn ToSql + Sync); 3] = [&key, &done, &ttl];
            let stored = self
                .pool
                .call("enqueue", async |client| {
                    if let [row] = rows.as_slice() {
                        let statement = client.prepare_cached(&self.sql.enqueue_first).await?;
                        let params: Vec<_> = claim.iter().copied().chain(row.params()).collect();
                        return Ok(client.query_opt(&statement, &params).await?.is_some());
                    }
                    // A fan-out's copies: the key, then every copy, in one transaction.
                    let tx = client.transaction().await?;
                    let statement = tx.prepare_cached(CLAIM).await?;
                    if tx.query_opt(&statement, &claim).await?.is_none() {
                        return Ok(false);
                    }
                    insert_rows(&tx, &rows).await?;
                    tx.commit().await?;
                    Ok(true)
                })
                .await?;
            if !stored {
                return Ok(None);
            }
            self.announcer.announce(&self.pool, &self.channel);
            Ok(Some(rows.into_iter().map(|row| row.id).collect()))
        })
    }

    fn defer<'a>(
        &'a self,
        lease: &'a Lease,
        until: UnixMillis,
        now: UnixMillis,
        why: &'a str,
    ) -> BoxFuture<'a, Result<Deferred, QueueError>> {
        Box::pin(async move {
            let (until, now) = (until as i64, now as i64);
            let max_age = self.max_age.as_secs_f64();
            let row = self
                .pool
                .call("defer", async |client| {
                    let statement = client.prepare_cached(DEFER).await?;
                    client
                        .query_opt(
                            &statement,
                            &[
                                &lease.delivery_id,
                                &lease.token,
                                &until,
                                &max_age,
                                &now,
                                &why,
                            ],
                        )
                        .await
                })
                .await?;
            Ok(match row {
                Some(row) if row.get::<_, bool>(0) => Deferred::DeadLettered {
                    attempts: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                },
                _ => Deferred::Waiting,
            })
        })
    }

    fn take(&self, max: usize, now: UnixMillis) -> BoxFuture<'_, Result<Vec<Lease>, QueueError>> {
        Box::pin(async move {
            self.sweep();
            if max == 0 {
                return Ok(Vec::new());
            }
            let (now, max) = (now as i64, max as i64);
            let visibility = self.visibility.as_secs_f64();
            let rows = self
                .pool
                .call("take", async |client| {
                    let statement = client.prepare_cached(TAKE).await?;
                    client
                        .query(&statement, &[&now, &max, &self.instance, &visibility])
                        .await
                })
                .await?;
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            // `last_seen` only matters by the hour (`prune`): once a second is plenty.
            let now = now_millis();
            let seen = self.seen_at.load(Ordering::Relaxed);
            if now.saturating_sub(seen) >= 1_000
                && self
                    .seen_at
                    .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.seen();
            }
            let mut taken: Vec<(i64, Lease)> = rows
                .iter()
                .map(|row| {
                    (
                        row.get::<_, i64>(3),
                        Lease {
                            delivery_id: row.get(0),
                            route: row.get(1),
                            token: row.get(2),
                        },
                    )
                })
                .collect();
            taken.sort_by(|(a, x), (b, y)| (a, &x.delivery_id).cmp(&(b, &y.delivery_id)));
            Ok(taken.into_iter().map(|(_, lease)| lease).collect())
        })
    }

    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        Box::pin(async move {
            let now = now as i64;
            let row = self
                .pool
                .call("begin", async |client| {
                    let statement = client.prepare_cached(BEGIN).await?;
                    client
                        .query_opt(
                            &statement,
                            &[&lease.delivery_id, &now, &self.instance, &lease.token],
                        )
                        .await
                })
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let id = &lease.delivery_id;
            let headers: String = row.get(7);
            let body: Vec<u8> = row.get(8);
            let object: Option<Vec<u8>> = row.get(11);
            Ok(Some(Job {
                lease: lease.clone(),
                delivery: NewDelivery {
                    source: row.get(3),
                    route: row.get(4),
                    webhook_id: row.get(5),
                    event_type: row.get(6),
                    headers: decode_headers(&headers).map_err(|e| QueueError::malformed(id, e))?,
                    body: Bytes::from(body),
                    received_at: millis(row.get(10)).unwrap_or(0),
                    trace_context: row.get(13),
                },
                attempt: row.get::<_, i32>(1).max(0) as u32,
                enqueued_at: millis(row.get(9)).unwrap_or(0),
                history_index: row.get::<_, i32>(2).max(0) as u64,
                object: object.map(Bytes::from),
                failed_fetches: row.get::<_, i32>(12).max(0) as u32,
            }))
        })
    }

    fn settle<'a>(
        &'a self,
        job: &'a Job,
        attempt: &'a Attempt,
        settlement: Settlement,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let state = settlement.state().as_str();
            let fetch: i32 = (attempt.step == Step::Fetch).into();
            let now = now as i64;
            let status = attempt.status.map(i32::from);
            let retry_at = match settlement {
                Settlement::RetryAt(at) => Some(at as i64),
                _ => None,
            };
            let index = job.history_index as i32;
            let entry = EntryParams::of(attempt);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![
                &job.lease.delivery_id,
                &state,
                &fetch,
                &now,
                &status,
                &attempt.error,
                &retry_at,
                &job.lease.token,
                &index,
            ];
            params.extend(entry.params());
            let moved = self
                .pool
                .call("settle", async |client| {
                    let statement = client.prepare_cached(&self.sql.settle).await?;
                    client.query_opt(&statement, &params).await
                })
                .await?;
            Ok(moved.is_some_and(|row| row.get::<_, i64>(0) > 0))
        })
    }

    fn attach<'a>(
        &'a self,
        job: &'a Job,
        fetched: &'a Attempt,
        object: Bytes,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Job, QueueError>> {
        Box::pin(async move {
            let id = &job.lease.delivery_id;
            let stored: &[u8] = &object;
            let now = now as i64;
            let index = job.history_index as i32;
            let next = job.attempt as i32;
            let entry = EntryParams::of(fetched);
            let mut params: Vec<&(dyn ToSql + Sync)> =
                vec![id, &stored, &now, &index, &next, &self.instance];
            params.extend(entry.params());
            params.push(&job.lease.token);
            let row = self
                .pool
                .call("attach", async |client| {
                    let statement = client.prepare_cached(&self.sql.attach).await?;
                    client.query_opt(&statement, &params).await
                })
                .await?;
            let row = row.ok_or_else(|| QueueError::lease_lost(id))?;
            Ok(Job {
                history_index: row.get::<_, i32>(0).max(0) as u64,
                object: Some(Bytes::copy_from_slice(&object)),
                ..job.clone()
            })
        })
    }

    fn hand_back<'a>(
        &'a self,
        lease: &'a Lease,
        interrupted: Option<(&'a Job, &'a Attempt)>,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let now = now as i64;
            let fetch: i32 = interrupted
                .is_some_and(|(_, a)| a.step == Step::Fetch)
                .into();
            let index: i32 = interrupted.map_or(-1, |(job, _)| job.history_index as i32);
            let entry = EntryParams::of(interrupted.map_or(&Attempt::default(), |(_, a)| a));
            let mut params: Vec<&(dyn ToSql + Sync)> =
                vec![&lease.delivery_id, &now, &fetch, &lease.token, &index];
            params.extend(entry.params());
            self.pool
                .call("hand_back", async |client| {
                    let statement = client.prepare_cached(&self.sql.hand_back).await?;
                    client.execute(&statement, &params).await
                })
                .await?;
            Ok(())
        })
    }

    /// Shared by every instance: the bucket is a row of `paces`, on the database's clock.
    fn pace<'a>(
        &'a self,
        key: &'a str,
        rate: RatePolicy,
    ) -> BoxFuture<'a, Result<Option<Duration>, QueueError>> {
        Box::pin(async move {
            let (interval, tolerance) = crate::store::gcra(rate.per_second, rate.burst.get());
            let (interval, tolerance) = (interval.as_secs_f64(), tolerance.as_secs_f64());
            let wait = self
                .pool
                .call("pace", async |client| {
                    let statement = client.prepare_cached(PACE).await?;
                    if client
                        .query_opt(&statement, &[&key, &interval, &tolerance])
                        .await?
                        .is_some()
                    {
                        return Ok(None);
                    }
                    let statement = client.prepare_cached(PACE_WAIT).await?;
                    let row = client.query_opt(&statement, &[&key, &tolerance]).await?;
                    Ok(Some(row.map_or(0.0, |row| row.get::<_, f64>(0))))
                })
                .await?;
            Ok(wait.map(Duration::from_secs_f64))
        })
    }

    fn keep_alive<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            // By id (the primary key): nothing indexes the lease columns, and a renewal
            // by token alone read the whole table every third of the visibility timeout
            // (58 ms a renewal in the benchmark). A token names one lease, so the two
            // lists need not be paired.
            let ids: Vec<&str> = leases.iter().map(|l| l.delivery_id.as_str()).collect();
            let tokens: Vec<&str> = leases.iter().map(|l| l.token.as_str()).collect();
            let visibility = self.visibility.as_secs_f64();
            // The leases first: a `seen` that is slow or fails must not cost them.
            if !tokens.is_empty() {
                self.pool
                    .call("keep_alive", async |client| {
                        let statement = client
                            .prepare_cached(
                                "UPDATE deliveries SET lease_until = now() + make_interval(secs => $2) \
                                 WHERE id = ANY($4) AND lease_token = ANY($1) AND lease_owner = $3",
                            )
                            .await?;
                        client
                            .execute(&statement, &[&tokens, &visibility, &self.instance, &ids])
                            .await
                    })
                    .await?;
            }
            self.seen();
            Ok(())
        })
    }

    fn prune(&self, idle: Duration) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            let idle = idle.as_secs_f64();
            Ok(self
                .pool
                .call("prune", async |client| {
                    let statement = client
                        .prepare_cached(
                            "DELETE FROM instances i WHERE name <> $1 \
                             AND last_seen <= now() - make_interval(secs => $2) \
                             AND NOT EXISTS (SELECT 1 FROM deliveries d \
                               WHERE d.due_at IS NOT NULL AND d.lease_owner = i.name)",
                        )
                        .await?;
                    client.execute(&statement, &[&self.instance, &idle]).await
                })
                .await?)
        })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<DeliveryList, QueueError>> {
        Box::pin(async move {
            if filter.matches_nothing() {
                return Ok(DeliveryList::default());
            }
            let limit = filter.limit.max(1) as i64;
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
            let mut conditions: Vec<String> = Vec::new();
            let mut add = |condition: &str, given: Vec<Box<dyn ToSql + Sync + Send>>| {
                let mut text = condition.to_owned();
                for value in given {
                    values.push(value);
                    text = text.replacen('?', &format!("${}", values.len()), 1);
                }
                conditions.push(text);
            };
            if let Some(state) = filter.state {
                add("state = ?", vec![Box::new(state.as_str())]);
            }
            if let Some(source) = &filter.source {
                add("source = ?", vec![Box::new(source.clone())]);
            }
            if let Some(route) = &filter.route {
                add("route = ?", vec![Box::new(route.clone())]);
            }
            if let Some(event_type) = &filter.event_type {
                add("event_type = ?", vec![Box::new(event_type.clone())]);
            }
            if let Some(search) = &filter.search {
                add(
                    "(id = ? OR webhook_id = ?)",
                    vec![Box::new(search.clone()), Box::new(search.clone())],
                );
            }
            if let Some(since) = filter.since {
                add("queued_at >= ms_ts(?)", vec![Box::new(since as i64)]);
            }
            if let Some(until) = filter.until {
                add("queued_at < ms_ts(?)", vec![Box::new(until as i64)]);
            }
            if let Some(after) = &filter.after {
                add(
                    "(queued_at, id) < (ms_ts(?), ?)",
                    vec![Box::new(after.queued_at as i64), Box::new(after.id.clone())],
                );
            }
            let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM deliveries");
            if !conditions.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&conditions.join(" AND "));
            }
            values.push(Box::new(limit + 1));
            sql.push_str(&format!(
                " ORDER BY queued_at DESC, id DESC LIMIT ${}",
                values.len()
            ));
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            let rows = self
                .pool
                .call("list", async |client| {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &params).await
                })
                .await?;
            let mut page = DeliveryList::default();
            for row in rows.iter().take(limit as usize) {
                let (summary, queued_at) = summary(row)?;
                page.next = Some(Cursor {
                    queued_at,
                    id: summary.id.clone(),
                });
                page.deliveries.push(summary);
            }
            if rows.len() <= limit as usize {
                page.next = None;
            }
            Ok(page)
        })
    }

    fn show<'a>(
        &'a self,
        id: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Detail>, QueueError>> {
        Box::pin(async move {
            let found = self
                .pool
                .call("show", async |client| {
                    let record = client
                        .prepare_cached(&format!(
                            "SELECT {SUMMARY_COLUMNS}, replays, coalesce(headers::text, ''), \
                             CASE WHEN $2 THEN body END, CASE WHEN $2 THEN object END \
                             FROM deliveries WHERE id = $1"
                        ))
                        .await?;
                    let Some(row) = client.query_opt(&record, &[&id, &with_body]).await? else {
                        return Ok(None);
                    };
                    let history = client
                        .prepare_cached(
                            "SELECT attempt, step, ts_ms(started_at), duration_ms, status, \
                             error, result, instance, answer, trace_id FROM attempts \
                             WHERE delivery_id = $1 ORDER BY idx",
                        )
                        .await?;
                    let attempts = client.query(&history, &[&id]).await?;
                    Ok(Some((row, attempts)))
                })
                .await?;
            let Some((row, attempts)) = found else {
                return Ok(None);
            };
            let (summary, queued_at) = summary(&row)?;
            let headers: String = row.get(14);
            let stored = decode_headers(&headers).map_err(|e| QueueError::malformed(id, e))?;
            let (header_names, headers) = header_listing(&stored, with_body);
            let body: Option<Vec<u8>> = row.get(15);
            let object: Option<Vec<u8>> = row.get(16);
            Ok(Some(Detail {
                summary,
                enqueued_at: queued_at,
                replays: row.get::<_, i32>(13).max(0) as u32,
                history: attempts.iter().map(attempt_of).collect(),
                header_names,
                headers,
                body: with_body.then(|| RecordBody::new(body.as_deref().unwrap_or_default())),
                object: object.map(|o| String::from_utf8_lossy(&o).into_owned()),
                body_dropped: false,
            }))
        })
    }

    fn replay<'a>(
        &'a self,
        id: &'a str,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Replayed, QueueError>> {
        Box::pin(async move {
            let now = now as i64;
            let row = self
                .pool
                .call("replay", async |client| {
                    let statement = client
                        .prepare_cached(
                            "WITH old AS (SELECT state FROM deliveries WHERE id = $1), \
                             replayed AS ( \
                               UPDATE deliveries SET state = 'queued', attempts = 0, \
                                 failed_fetches = 0, replays = replays + 1, \
                                 updated_at = ms_ts($2), queued_at = ms_ts($2), \
                                 due_at = ms_ts($2), next_attempt_at = NULL, final_at = NULL, \
                                 lease_token = NULL, lease_owner = NULL, lease_until = NULL \
                               WHERE id = $1 AND state = 'failed_final' RETURNING 1) \
                             SELECT old.state, EXISTS (SELECT 1 FROM replayed) FROM old",
                        )
                        .await?;
                    let row = client.query_opt(&statement, &[&id, &now]).await?;
                    if row.as_ref().is_none_or(|row| row.get::<_, bool>(1)) {
                        return Ok(row);
                    }
                    // Not replayed: `old` read the state from before the statement, and
                    // a replay or retention delete that committed while it waited for
                    // the row is only seen by a statement of its own.
                    let now_state = client
                        .prepare_cached("SELECT state, false FROM deliveries WHERE id = $1")
                        .await?;
                    client.query_opt(&now_state, &[&id]).await
                })
                .await?;
            let Some(row) = row else {
                return Ok(Replayed::NotFound);
            };
            let was: String = row.get(0);
            let was = State::parse(&was)
                .ok_or_else(|| QueueError::malformed(id, format!("state {was:?}")))?;
            Ok(if row.get::<_, bool>(1) {
                Replayed::Queued { was }
            } else {
                Replayed::NotReplayable(was)
            })
        })
    }

    fn failed_since(&self, since: UnixMillis) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(async move {
            let since = since as i64;
            let rows = self
                .pool
                .call("failed_since", async |client| {
                    let statement = client
                        .prepare_cached(
                            "SELECT id FROM deliveries WHERE state = 'failed_final' \
                             AND updated_at >= ms_ts($1) ORDER BY updated_at, id",
                        )
                        .await?;
                    client.query(&statement, &[&since]).await
                })
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(async move {
            let row = self
                .pool
                .call("stats", async |client| {
                    let tx = on_indexes(client).await?;
                    let statement = tx
                        .prepare_cached(
                            "SELECT \
                               (SELECT count(*) FROM deliveries WHERE due_at IS NOT NULL), \
                               (SELECT greatest(ts_ms(now()) - ts_ms(due_at), 0) FROM deliveries \
                                WHERE due_at <= now() \
                                  AND (lease_until IS NULL OR lease_until < now()) \
                                ORDER BY due_at LIMIT 1), \
                               (SELECT count(*) FROM deliveries WHERE state = 'failed_final')",
                        )
                        .await?;
                    let row = tx.query_one(&statement, &[]).await?;
                    tx.commit().await?;
                    Ok(row)
                })
                .await?;
            Ok(QueueStats {
                depth: row.get::<_, i64>(0).max(0) as u64,
                oldest_age: Duration::from_millis(row.get::<_, Option<i64>>(1).unwrap_or(0) as u64),
                dead_letters: row.get::<_, i64>(2).max(0) as u64,
            })
        })
    }

    fn wake_on(&self, wake: Arc<tokio::sync::Notify>) {
        tokio::spawn(listen_forever(Arc::downgrade(&self.pool), wake));
    }

    fn durable(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
