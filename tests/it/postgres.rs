//! PostgreSQL end to end: the schema's migrations, several instances sharing one
//! database, an instance killed mid-delivery, the database stopped and started under
//! load, and rate limits (in memory per instance). A real PostgreSQL each time: the
//! shared test server under a schema of the test's own, or a server of the test's own
//! where the test stops it. The `Store` and `Queue` contracts run on PostgreSQL in
//! `contract`; the SQL the README documents runs in `readme_queries_*`.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;

/// A queue-mode gateway config on PostgreSQL at `url` in `schema`, delivering to `to`.
fn queue_config(url: &str, schema: &str, to: impl Target) -> Config {
    config()
        .postgres(url, schema)
        .queued()
        .route("*", to)
        .upstream_timeout("5s")
        .queue_option("workers", "4")
        .queue_option(
            "backoff",
            r#"{ initial = "100ms", max = "400ms", jitter = false }"#,
        )
        .queue_option("visibility_timeout", r#""1s""#)
}

fn settings(config: &Config) -> hookgate::Settings {
    hookgate::config::parse(&config.to_string(), "postgres.toml").expect("a valid config")
}

fn postgres_settings(settings: &hookgate::Settings) -> &hookgate::config::PostgresSettings {
    match &settings.store.backend {
        hookgate::config::StoreBackend::Postgres(pg) => pg,
        other => panic!("not postgres: {other:?}"),
    }
}

/// A connection to the shared server for looking at what hookgate wrote.
async fn sql(url: &str, query: &str) -> Vec<Vec<Option<String>>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(connection);
    client
        .simple_query(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn one(rows: &[Vec<Option<String>>]) -> String {
    rows[0][0].clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_starting_at_once_apply_the_migrations_once() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::start().await;
    let config = queue_config(&url, &schema, &upstream);

    let text = config.to_string();
    let (a, b) = tokio::join!(Gateway::start(&text), Gateway::start(&text));

    let versions = sql(
        &url,
        &format!("SELECT version FROM {schema}.schema_version ORDER BY version"),
    )
    .await;
    let each_once: Vec<_> = (1..=hookgate::store::postgres::SCHEMA_VERSION)
        .map(|v| vec![Some(v.to_string())])
        .collect();
    assert_eq!(versions, each_once);
    let id = enqueue(&a.client(), &signed_event("response.completed")).await;
    Deliveries::of(&b).wait_for_state(&id, "processed").await;
    // Both report themselves ready and durable.
    let ready = b.admin("/readyz").await;
    assert_eq!(ready.status(), 200, "{ready:?}");
    assert_eq!(ready.json()["queue"]["durable"], true);
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_at_start_and_named_by_check() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let config = queue_config(&url, &schema, "http://127.0.0.1:9/hooks");
    let file = ConfigFile::new(&config);
    let path = file.path();
    let path = path.to_str().expect("a UTF-8 temp path");
    let (ok, out, err) = hookgate_cli(&["check", "--config", path]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("schema: no hookgate schema yet"), "{out}");

    let current = hookgate::store::postgres::SCHEMA_VERSION;
    let (ok, out, err) = hookgate_cli(&["migrate", "--config", path]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("schema version {current} (was 0)")),
        "{out}"
    );
    let (_, out, _) = hookgate_cli(&["check", "--config", path]).await;
    assert!(
        out.contains(&format!("schema: version {current} (current)")),
        "{out}"
    );
    assert!(out.contains(&format!("schema \"{schema}\"")), "{out}");

    // A schema left at version 1 by an earlier release (version 2 only redeclares
    // `ts_ms` STABLE) is brought up by `migrate`, its rows kept.
    sql(
        &url,
        &format!(
            "DELETE FROM {schema}.schema_version WHERE version >= 2; \
             ALTER FUNCTION {schema}.ts_ms(timestamptz) IMMUTABLE; \
             INSERT INTO {schema}.dedupe VALUES ('kept', NULL, now() + interval '1 hour')"
        ),
    )
    .await;
    let (_, out, _) = hookgate_cli(&["check", "--config", path]).await;
    assert!(
        out.contains(&format!(
            "schema: version 1; serve or `hookgate migrate` brings it to {current}"
        )),
        "{out}"
    );
    let (ok, out, err) = hookgate_cli(&["migrate", "--config", path]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("schema version {current} (was 1)")),
        "{out}"
    );
    let volatility = sql(
        &url,
        &format!(
            "SELECT p.provolatile FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = '{schema}' AND p.proname = 'ts_ms'"
        ),
    )
    .await;
    assert_eq!(one(&volatility), "s", "ts_ms is STABLE, so it is inlined");
    let kept = sql(&url, &format!("SELECT count(*) FROM {schema}.dedupe")).await;
    assert_eq!(one(&kept), "1");

    sql(
        &url,
        &format!("INSERT INTO {schema}.schema_version VALUES (99)"),
    )
    .await;
    let (_, out, _) = hookgate_cli(&["check", "--config", path]).await;
    assert!(
        out.contains(&format!("version 99, NEWER than this binary's {current}")),
        "{out}"
    );
    let refused = hookgate::start(settings(&config))
        .await
        .err()
        .expect("refused");
    let said = refused.to_string();
    assert!(
        said.contains(&format!(
            "schema is at version 99, newer than this binary's {current}"
        )),
        "{said}"
    );
}

#[tokio::test]
async fn a_queued_delivery_is_stored_with_its_dedupe_key_done_in_one_step() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(queue_config(&url, &schema, &upstream)).await;
    let event = signed_event("response.completed");

    let id = enqueue(&gw.client(), &event).await;

    let rows = sql(
        &url,
        &format!(
            "SELECT d.state IN ('queued', 'processing'), k.token IS NULL \
             FROM {schema}.deliveries d JOIN {schema}.dedupe k \
             ON k.key = d.source || ':' || d.webhook_id WHERE d.id = '{id}'"
        ),
    )
    .await;
    assert_eq!(rows, [[Some("t".to_owned()), Some("t".to_owned())]]);
    let repeat = gw.post(PATH, &event).await;
    assert_eq!(repeat.status(), 200, "{repeat:?}");
    assert_eq!(repeat.json()["duplicate"], true);
    upstream.release();
}

/// A first delivery is stored with its key in one statement, without a claim before
/// it; a key something holds (a claim in flight elsewhere, a done mark) is claimed as
/// on every other store, and an expired one is free again.
#[tokio::test]
async fn a_first_delivery_needs_no_claim_and_a_held_key_is_claimed_as_usual() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(queue_config(&url, &schema, &upstream)).await;
    let claims = |scrape: &Scrape| {
        scrape
            .value(r#"hookgate_store_duration_seconds_count{op="claim"}"#)
            .unwrap_or(0.0)
    };
    let stored = async |id: &str| {
        one(&sql(
            &url,
            &format!("SELECT count(*) FROM {schema}.deliveries WHERE webhook_id = '{id}'"),
        )
        .await)
    };

    let first = signed_event("response.completed");
    enqueue(&gw.client(), &first).await;
    let claims_after_first = claims(&gw.metrics().await);
    let repeat = gw.post(PATH, &first).await;
    let claims_after_repeat = claims(&gw.metrics().await);

    let elsewhere = signed_event("response.completed");
    sql(
        &url,
        &format!(
            "INSERT INTO {schema}.dedupe VALUES ('{SOURCE}:{}', 'another-instance', \
             now() + interval '30 seconds')",
            elsewhere.id
        ),
    )
    .await;
    let in_flight = gw.post(PATH, &elsewhere).await;
    let stored_while_held = stored(&elsewhere.id).await;
    sql(
        &url,
        &format!(
            "UPDATE {schema}.dedupe SET expires_at = now() - interval '1 second' \
             WHERE key = '{SOURCE}:{}'",
            elsewhere.id
        ),
    )
    .await;
    let after_expiry = gw.post(PATH, &elsewhere).await;

    assert_eq!(claims_after_first, 0.0, "no claim before a first delivery");
    assert_eq!(repeat.json()["duplicate"], true, "{repeat:?}");
    // (The claim of a held key, then the look at what holds it: both count as `claim`.)
    assert!(
        claims_after_repeat > 0.0,
        "a held key is claimed to learn what holds it"
    );
    assert_eq!(in_flight.status(), 409, "{in_flight:?}");
    assert_eq!(in_flight.error(), "in_flight");
    assert_eq!(stored_while_held, "0");
    assert_eq!(after_expiry.status(), 202, "{after_expiry:?}");
    assert_eq!(stored(&elsewhere.id).await, "1");
    upstream.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_through_two_instances_on_one_database_are_each_delivered_once() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::start().await;
    let config = || queue_config(&url, &schema, &upstream).queue_option("workers", "16");
    let a = Gateway::start(config()).await;
    let b = Gateway::start(config()).await;

    enqueue_through_both(&a, &b, 1000).await;
    upstream.wait_for(1000).await;
    Deliveries::of(&a).wait_for_count("processed", 1000).await;

    let left = sql(
        &url,
        &format!("SELECT count(*) FROM {schema}.deliveries WHERE due_at IS NOT NULL"),
    )
    .await;
    assert_eq!(one(&left), "0", "nothing left to deliver");
    let counts = upstream.count_by_webhook_id();
    assert_eq!(counts.len(), 1000);
    assert!(
        counts.values().all(|&n| n == 1),
        "a webhook-id was delivered twice"
    );
    let processed = |s: &Scrape| {
        s.value(r#"hookgate_deliveries_total{result="processed",route="openai/0"}"#)
            .unwrap_or(0.0)
    };
    let (scrape_a, scrape_b) = (a.metrics().await, b.metrics().await);
    assert_eq!(processed(&scrape_a) + processed(&scrape_b), 1000.0);
    assert!(processed(&scrape_a) > 0.0 && processed(&scrape_b) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_sigkill_mid_delivery_is_replaced_after_the_visibility_timeout() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    // The first attempt hangs (the instance holding it is killed); the next is answered.
    let upstream = Upstream::with(Behaviour::sequence([Answer::held(), Answer::ok()])).await;
    let mut doomed = GatewayProcess::spawn(queue_config(&url, &schema, &upstream)).await;
    let id = enqueue(&doomed.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;

    let survivor = GatewayProcess::spawn(queue_config(&url, &schema, &upstream)).await;
    doomed.kill();
    let killed = std::time::Instant::now();
    upstream.wait_for(2).await;
    let deliveries = Deliveries::at(survivor.admin_addr);
    let record = deliveries.wait_for_state(&id, "processed").await;

    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "taken over too early"
    );
    let received = upstream.received();
    assert_eq!(received.len(), 2, "{}", survivor.log());
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
    let history = record["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{record:#}");
    assert!(history[0].get("result").is_none(), "{record:#}");
    assert_ne!(history[0]["instance"], history[1]["instance"]);
    assert_eq!(history[1]["result"], "processed");
    upstream.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_seconds_loses_no_accepted_delivery_and_answers_503_meanwhile() {
    let Some(mut server) = PostgresServer::start_or_skip() else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        queue_config(&server.url(), "hookgate", &upstream)
            .store_option("timeout", "300ms")
            .store_option("connect_timeout", "300ms"),
    )
    .await;
    let client = gw.client();
    // Senders that keep posting new events, each retrying its event until accepted,
    // as webhook senders do; they record what was accepted and every 503.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (client, stopped) = (client.clone(), stopped.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (Vec::new(), 0);
                while !*stopped.borrow() {
                    let event = signed_event("response.completed");
                    loop {
                        let reply = client.post(PATH, &event).await;
                        match reply.status().as_u16() {
                            202 => break accepted.push(event.header("webhook-id").to_owned()),
                            // Stored by an attempt whose answer was lost with the database:
                            // done as far as the sender is concerned.
                            200 if reply.json()["duplicate"] == true => {
                                break accepted.push(event.header("webhook-id").to_owned());
                            }
                            503 => refused += 1,
                            // Claimed by an attempt whose claim could not be released
                            // while the database was down: retry when told to.
                            409 => {
                                let wait = Duration::from_secs(reply.retry_after());
                                tokio::time::sleep(wait).await;
                            }
                            other => panic!("unexpected {other}: {reply:?}"),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let upstream = &upstream;
    eventually("deliveries accepted", async || {
        upstream.received().len() >= 20
    })
    .await;

    server.stop();
    let gw_ref = &gw;
    eventually("/readyz answering 503", async || {
        gw_ref.admin("/readyz").await.status() == 503
    })
    .await;
    let down = gw.post(PATH, &signed_event("response.completed")).await;
    assert_eq!(down.status(), 503, "{down:?}");
    assert!(down.retry_after() >= 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    eventually("/readyz answering 200 again", async || {
        gw_ref.admin("/readyz").await.status() == 200
    })
    .await;
    let received_at_restart = upstream.received().len();
    eventually("new deliveries after the restart", async || {
        upstream.received().len() >= received_at_restart + 20
    })
    .await;
    stop.send(true).unwrap();
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for sender in senders {
        let (a, r) = sender.await.unwrap();
        accepted.extend(a);
        refused += r;
    }
    assert!(refused > 0, "no 503 while PostgreSQL was down");
    eventually("every accepted delivery delivered", async || {
        let got: HashSet<String> = upstream.count_by_webhook_id().into_keys().collect();
        accepted.iter().all(|id| got.contains(id))
    })
    .await;
    // At least once: an attempt that was in flight as the database went away (its
    // result could not be recorded) is made again, so at most one per worker arrives
    // twice, with the same webhook-id and delivery id for the backend to dedupe on.
    let counts = upstream.count_by_webhook_id();
    let twice: Vec<_> = counts.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.len() <= 4, "delivered more than once: {twice:?}");
    assert!(counts.values().all(|&n| n <= 2), "{twice:?}");
    assert_eq!(counts.len(), accepted.len());
}

#[tokio::test]
async fn rate_limits_on_postgres_are_kept_in_memory_by_each_instance() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::start().await;
    let config = || {
        config()
            .postgres(&url, &schema)
            .rate_limit(0.1, 2)
            .route("*", &upstream)
    };
    let a = Gateway::start(config()).await;
    let b = Gateway::start(config()).await;

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(a.post(PATH, &signed_event("a.b")).await.status().as_u16());
    }
    // The other instance has a bucket of its own for the same client.
    statuses.push(b.post(PATH, &signed_event("a.b")).await.status().as_u16());

    assert_eq!(statuses, [200, 200, 429, 200]);
    let rows = sql(
        &url,
        &format!("SELECT count(*) FROM {schema}.dedupe WHERE token IS NULL"),
    )
    .await;
    assert_eq!(one(&rows), "3", "dedupe is shared in PostgreSQL");
    let stored = settings(&config());
    assert!(
        stored
            .summary()
            .contains("rate limits in memory per instance"),
        "{}",
        stored.summary()
    );
    let _ = postgres_settings(&stored);
}

/// The ```sql blocks of the README's "PostgreSQL" section, in order.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## PostgreSQL\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a PostgreSQL section");
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

/// The statements an instance runs by itself (the retention sweep and the queue's stats
/// every second, lease renewals while a delivery is in flight) read indexes, never the
/// whole `deliveries` table, whatever the planner's statistics say: a table keeping a
/// week of records must not be read in full every second. Here 20,000 final records
/// within the retention, before any statistics were gathered (autovacuum off), so the
/// planner goes by its default guesses: almost every row due, a third past the
/// retention. An instance holds one delivery in flight (its lease renewed every third
/// of a second) for 8 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_reads_the_whole_deliveries_table_by_itself() {
    let Some(server) = PostgresServer::start_or_skip() else {
        return;
    };
    let url = server.url();
    let schema = fresh_schema();
    let upstream = Upstream::with(Answer::held()).await;
    let config = queue_config(&url, &schema, &upstream);
    let file = ConfigFile::new(&config);
    let path = file.path();
    let (ok, out, err) =
        hookgate_cli(&["migrate", "--config", path.to_str().expect("UTF-8")]).await;
    assert!(ok, "{out}{err}");
    sql(
        &url,
        &format!(
            "SET search_path = {schema}; \
             ALTER TABLE deliveries SET (autovacuum_enabled = false); \
             INSERT INTO deliveries (id, state, source, route, webhook_id, event_type, \
               received_at, queued_at, updated_at, due_at, final_at) \
             SELECT 'dlv_' || n, 'processed', 'openai', '0', 'msg_' || n, 'ping', \
               now(), now(), now(), NULL, now() \
             FROM generate_series(1, 20000) n;"
        ),
    )
    .await;
    let seq_scans = async || {
        // Every other session gone, so each one's counts have reached the statistics.
        eventually("only this session is connected", async || {
            let others = sql(
                &url,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await;
            (one(&others) == "0").then_some(())
        })
        .await;
        let scans = sql(
            &url,
            &format!(
                "SELECT seq_scan FROM pg_stat_user_tables \
                 WHERE schemaname = '{schema}' AND relname = 'deliveries'"
            ),
        )
        .await;
        one(&scans).parse::<u64>().expect("a count")
    };
    let before = seq_scans().await;

    let mut gw = Gateway::start(config).await;
    enqueue(&gw.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    upstream.release();
    gw.begin_shutdown().await.expect("shut down");
    drop(gw);

    assert_eq!(
        seq_scans().await,
        before,
        "an instance read the whole deliveries table by itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_queries_answer_what_the_readme_says() {
    let queries = readme_queries();
    assert_eq!(queries.len(), 4, "{queries:#?}");
    let Some(server) = PostgresServer::start_or_skip() else {
        return;
    };
    // The first delivery is accepted, the second refused for good (a dead letter).
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::ok(),
        Answer::status(400).body(r#"{"error":"unknown customer"}"#),
    ]))
    .await;
    let gw = Gateway::start(queue_config(&server.url(), "hookgate", &upstream)).await;
    let deliveries = Deliveries::of(&gw);
    let (delivered, refused) = (
        signed_event("response.completed"),
        signed_event("response.failed"),
    );
    let delivered_id = enqueue(&gw.client(), &delivered).await;
    deliveries.wait_for_state(&delivered_id, "processed").await;
    let refused_id = enqueue(&gw.client(), &refused).await;
    deliveries.wait_for_state(&refused_id, "failed_final").await;

    // One delivery's history: the record with its one attempt, answered 200.
    let webhook_id = delivered.header("webhook-id");
    let rows = server.psql(&[("webhook_id", webhook_id)], &queries[0]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row: Vec<&str> = rows[0].split('|').collect();
    assert_eq!(row[0], delivered_id);
    assert_eq!(
        (row[1], row[2], row[3], row[4], row[6]),
        ("processed", SOURCE, "0", "response.completed", "1")
    );
    assert_eq!(
        (row[7], row[8], row[10], row[11]),
        ("0", "deliver", "200", "processed")
    );

    // Dead letters of the last day: the refused one, with what the backend said.
    let rows = server.psql(&[], &queries[1]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row: Vec<&str> = rows[0].split('|').collect();
    assert_eq!(
        (row[0], row[2], row[3]),
        (refused_id.as_str(), "0", "response.failed")
    );
    assert_eq!((row[5], row[6]), ("1", "400"));

    // Per route and state.
    let rows = server.psql(&[], &queries[2]);
    assert_eq!(rows, ["openai/0|failed_final|1", "openai/0|processed|1"]);

    // One sender in a window: both, oldest first; none in an earlier window.
    let window = [
        ("source", SOURCE),
        ("since", "2000-01-01 00:00+00"),
        ("until", "2100-01-01 00:00+00"),
    ];
    let rows = server.psql(&window, &queries[3]);
    let ids: Vec<&str> = rows.iter().map(|r| r.split('|').next().unwrap()).collect();
    assert_eq!(ids, [delivered_id.as_str(), refused_id.as_str()]);
    let before = [
        ("source", SOURCE),
        ("since", "2000-01-01 00:00+00"),
        ("until", "2001-01-01 00:00+00"),
    ];
    assert!(server.psql(&before, &queries[3]).is_empty());
}

#[tokio::test]
async fn an_enqueue_on_one_instance_wakes_the_idle_workers_of_another_at_once() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let settings = settings(&queue_config(&url, &fresh_schema(), "http://127.0.0.1:9/"));
    hookgate::store::prepare(&settings).await.unwrap();
    let queue = |instance: &str| {
        let metrics = std::sync::Arc::new(hookgate::metrics::Metrics::new([SOURCE]));
        let (_, backend) = hookgate::store::build(&settings, metrics.clone()).unwrap();
        hookgate::queue::build(&settings, &backend, metrics, instance)
            .unwrap()
            .unwrap()
    };
    let (a, b) = (queue("instance-a"), queue("instance-b"));
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    b.wake_on(wake.clone());
    // Once listening, it wakes the workers once (for what came while it was not).
    tokio::time::timeout(PATIENCE, wake.notified())
        .await
        .expect("listening");

    let id = a
        .enqueue(hookgate::queue::NewDelivery {
            source: SOURCE.to_owned(),
            route: "0".to_owned(),
            webhook_id: "msg_wake".to_owned(),
            event_type: "response.completed".to_owned(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"{}"),
            received_at: hookgate::queue::now_millis(),
            trace_context: None,
        })
        .await
        .unwrap();

    tokio::time::timeout(Duration::from_secs(2), wake.notified())
        .await
        .expect("woken by the other instance's enqueue");
    let taken = b.take(10, hookgate::queue::now_millis()).await.unwrap();
    assert_eq!(taken[0].delivery_id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_is_verified_against_the_configured_ca_file_or_the_system_roots() {
    let cert = DevCert::generate();
    let Some(server) = PostgresServer::start_with_tls_or_skip(&cert.cert, &cert.key) else {
        return;
    };
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        server.port()
    );
    let upstream = Upstream::start().await;
    let trusting = queue_config(&url, "hookgate", &upstream)
        .store_option("ca_file", cert.cert.to_str().expect("a UTF-8 path"));

    let gw = Gateway::start(trusting).await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::of(&gw).wait_for_state(&id, "processed").await;

    let encrypted = sql(
        &server.url(),
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'hookgate'",
    )
    .await;
    let (tls, all) = (
        encrypted[0][0].clone().unwrap(),
        encrypted[0][1].clone().unwrap(),
    );
    assert_eq!(tls, all, "every hookgate connection uses TLS");
    assert_ne!(all, "0");
    // The dev certificate is in no system store: without the CA file, no connection.
    let refused = hookgate::start(settings(&queue_config(&url, "hookgate", &upstream)))
        .await
        .err()
        .expect("refused");
    let said = refused.to_string();
    assert!(said.contains("cannot reach PostgreSQL"), "{said}");
}

/// The sweep of expired dedupe keys once deleted a key that a claim renewed while the
/// sweep waited for its row lock (READ COMMITTED checks an updated row again against
/// the statement's condition, which named only the key): the live claim was lost, and
/// a copy arriving then was forwarded a second time.
#[tokio::test]
async fn the_dedupe_sweep_never_deletes_a_claim_renewed_while_it_waited() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    // Starting applies the schema; its own sweep runs only every 30 s.
    let _gw = Gateway::start(&queue_config(&url, &schema, NOWHERE).to_string()).await;
    let claimer = session(&url, &schema).await;
    let sweeper = session(&url, &schema).await;
    claimer
        .batch_execute(
            "INSERT INTO dedupe (key, token, expires_at) \
             VALUES ('k', 'expired', now() - interval '1 minute')",
        )
        .await
        .unwrap();
    // A claim renewing the expired key, not committed yet.
    claimer
        .batch_execute(
            "BEGIN; \
             UPDATE dedupe SET token = 'live', expires_at = now() + interval '1 hour' \
             WHERE key = 'k'",
        )
        .await
        .unwrap();

    let sweep = waiting_for_a_lock(&url, sweeper, hookgate::store::postgres::SWEEP, vec![]).await;
    claimer.batch_execute("COMMIT").await.unwrap();

    assert_eq!(sweep.await.unwrap(), 0, "nothing expired is left to delete");
    let kept = sql(
        &url,
        &format!("SELECT token FROM {schema}.dedupe WHERE key = 'k'"),
    )
    .await;
    assert_eq!(kept, [[Some("live".to_owned())]]);
}

/// A connection of its own to `url`, working in `schema`.
async fn session(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .unwrap();
    client
}

/// Runs `statement` on `client` in a task, and returns once it waits for a row lock
/// another session holds; the task answers the rows it changed.
async fn waiting_for_a_lock(
    url: &str,
    client: tokio_postgres::Client,
    statement: &'static str,
    params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
) -> tokio::task::JoinHandle<u64> {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let running = tokio::spawn(async move {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        client.execute(statement, &params).await.unwrap()
    });
    eventually("the statement waiting for a row lock", async || {
        let waiting = sql(
            url,
            &format!("SELECT count(*) FROM pg_locks WHERE pid = {pid} AND NOT granted"),
        )
        .await;
        one(&waiting) != "0"
    })
    .await;
    running
}

/// The retention sweep once deleted a dead letter that was replayed while the sweep
/// waited for its row lock (the same READ COMMITTED recheck as the dedupe sweep's):
/// the replay answered "queued" and the delivery was gone. It now skips a row someone
/// holds locked, at once, and the replay stands.
#[tokio::test]
async fn the_retention_sweep_never_deletes_a_dead_letter_being_replayed() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::with(Answer::status(400)).await;
    let gw = Gateway::start(&queue_config(&url, &schema, &upstream).to_string()).await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::of(&gw)
        .wait_for_state(&id, "failed_final")
        .await;
    let replayer = session(&url, &schema).await;
    let sweeper = session(&url, &schema).await;
    // A replay of the dead letter (as `Queue::replay` writes it), not committed yet.
    replayer
        .batch_execute(&format!(
            "BEGIN; UPDATE deliveries SET state = 'queued', final_at = NULL, \
             due_at = now() + interval '1 hour' WHERE id = '{id}'"
        ))
        .await
        .unwrap();

    let swept = tokio::time::timeout(
        Duration::from_secs(5),
        sweeper.execute(hookgate::queue::postgres::RETENTION, &[&0.0f64, &500i64]),
    )
    .await
    .expect("the sweep skips the locked row instead of waiting for it")
    .unwrap();
    replayer.batch_execute("COMMIT").await.unwrap();

    assert_eq!(swept, 0, "the row being replayed is not deleted");
    let kept = sql(
        &url,
        &format!("SELECT state FROM {schema}.deliveries WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(kept, [[Some("queued".to_owned())]]);
}

/// A statement that ran past `store.timeout` was only abandoned by the client: the
/// server went on and committed it later (a delivery stored after its sender was told
/// 503), and the connection went back to the pool still busy with it. It is cancelled
/// on the server now, and the connection is not reused.
#[tokio::test]
async fn a_statement_past_the_store_timeout_is_cancelled_not_committed_later() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::start().await;
    let config = queue_config(&url, &schema, &upstream)
        .store_option("timeout", "300ms")
        .store_option("connect_timeout", "300ms");
    let gw = Gateway::start(&config.to_string()).await;
    let event = signed_event("response.completed");
    // Another transaction writing the delivery's key: the enqueue's insert of it waits
    // for that transaction to end (past parsing, so the statement is running).
    let locker = session(&url, &schema).await;
    locker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO dedupe (key, token, expires_at) \
             VALUES ('{SOURCE}:{}', 'other', now() - interval '1 minute')",
            event.header("webhook-id")
        ))
        .await
        .unwrap();

    let locker_pid: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let refused = gw.post(PATH, &event).await;
    assert_eq!(refused.status(), 503, "{refused:?}");
    // The enqueue no longer waits behind the locker: cancelled (abandoned, it would
    // wait until the locker ends, then commit). Only then does what held it end.
    eventually("the enqueue cancelled on the server", async || {
        let blocked = sql(
            &url,
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE {locker_pid} = ANY(pg_blocking_pids(pid))"
            ),
        )
        .await;
        one(&blocked) == "0"
    })
    .await;
    locker.batch_execute("ROLLBACK").await.unwrap();

    let stored = sql(&url, &format!("SELECT count(*) FROM {schema}.deliveries")).await;
    assert_eq!(
        one(&stored),
        "0",
        "the refused delivery was stored after all"
    );
    let waiting = sql(&url, &format!("SELECT count(*) FROM {schema}.dedupe")).await;
    assert_eq!(one(&waiting), "0", "nor its key written done");
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::of(&gw).wait_for_state(&id, "processed").await;
}

/// A replay that waited for a dead letter another replay was queuing again answered
/// 409 with the state from before it waited (`failed_final`): the state it reports now
/// is the delivery's as it is.
#[tokio::test]
async fn a_replay_that_lost_the_race_to_another_reports_the_state_it_found() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::with(Answer::status(400)).await;
    let gw = Gateway::start(&queue_config(&url, &schema, &upstream).to_string()).await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let deliveries = Deliveries::of(&gw);
    deliveries.wait_for_state(&id, "failed_final").await;
    let other = session(&url, &schema).await;
    // Another replay (as `Queue::replay` writes it), not committed yet.
    other
        .batch_execute(&format!(
            "BEGIN; UPDATE deliveries SET state = 'queued', final_at = NULL, \
             due_at = now() + interval '1 hour' WHERE id = '{id}'"
        ))
        .await
        .unwrap();

    let replay = {
        let deliveries = Deliveries::of(&gw);
        let path = format!("/deliveries/{id}/replay");
        tokio::spawn(async move { deliveries.request(http::Method::POST, &path).await })
    };
    eventually("the replay waiting for the row", async || {
        let waiting = sql(
            &url,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%replayed AS%'",
        )
        .await;
        one(&waiting) != "0"
    })
    .await;
    other.batch_execute("COMMIT").await.unwrap();

    let answer = replay.await.unwrap();
    assert_eq!(answer.status(), 409, "{answer:?}");
    assert_eq!(
        answer.json(),
        serde_json::json!({"error": "not_replayable", "state": "queued"})
    );
}

/// A schema named with a keyword (`user`, `order`, ...) passes the config's check, and
/// must migrate and serve: unquoted in the migrations it failed with a syntax error.
#[tokio::test]
async fn a_schema_named_with_a_keyword_migrates_and_serves() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&queue_config(&url, "user", &upstream).to_string()).await;

    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;

    Deliveries::of(&gw).wait_for_state(&id, "processed").await;
    let stored = sql(&url, r#"SELECT count(*) FROM "user".deliveries"#).await;
    assert_eq!(one(&stored), "1");
}

/// A role that owns the schema but may no longer create schemas in the database (as
/// the README advises once the first migration ran) still applies later migrations:
/// each one ran `CREATE SCHEMA IF NOT EXISTS`, which PostgreSQL checks against the
/// database's `CREATE` privilege even when the schema is there, so every instance of
/// the next release refused to start.
#[tokio::test]
async fn a_later_migration_needs_no_create_privilege_on_the_database() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let role = format!("owner_{schema}");
    sql(
        &url,
        &format!("CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE postgres TO {role}"),
    )
    .await;
    let owners = url.replacen("postgres@", &format!("{role}@"), 1);
    let file = ConfigFile::new(queue_config(&owners, &schema, "http://127.0.0.1:9/hooks"));
    let path = file.path();
    let path = path.to_str().expect("a UTF-8 temp path");
    let (ok, out, err) = hookgate_cli(&["migrate", "--config", path]).await;
    assert!(ok, "{out}{err}");
    // Back to version 1, and the database's CREATE taken away.
    sql(
        &url,
        &format!(
            "DELETE FROM {schema}.schema_version WHERE version >= 2; \
             ALTER FUNCTION {schema}.ts_ms(timestamptz) IMMUTABLE; \
             REVOKE CREATE ON DATABASE postgres FROM {role}"
        ),
    )
    .await;

    let (ok, out, err) = hookgate_cli(&["migrate", "--config", path]).await;

    assert!(ok, "{out}{err}");
    assert!(out.contains("(was 1)"), "{out}");
    sql(
        &url,
        &format!("DROP SCHEMA {schema} CASCADE; DROP ROLE {role}"),
    )
    .await;
}

/// A retention batch meeting a row someone holds locked skips it: waiting for it, the
/// batch hit its deadline and rolled back, and every `take` (which swept first) failed
/// with it, so nothing was delivered on any instance while the lock was held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_record_someone_holds_locked_holds_up_neither_retention_nor_delivery() {
    retention_and_delivery_go_on_past_a_lock_on("deliveries WHERE id").await;
}

/// The same with one of the record's `attempts` rows locked, which the delete cascades
/// into: every batch waited for it until its deadline, so retention made no progress,
/// and the takes that ran the sweep first were held up for seconds at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_attempt_of_a_final_record_holds_up_neither_retention_nor_delivery() {
    retention_and_delivery_go_on_past_a_lock_on("attempts WHERE delivery_id").await;
}

/// `rows` names the table and the column a row of the locked record is found by.
async fn retention_and_delivery_go_on_past_a_lock_on(rows: &str) {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(queue_config(&url, &schema, &upstream).queue_option("retention", r#""1s""#))
            .await;
    let deliveries = Deliveries::of(&gw);
    let locked = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let other = enqueue(&gw.client(), &signed_event("response.completed")).await;
    deliveries.wait_for_state(&locked, "processed").await;
    deliveries.wait_for_state(&other, "processed").await;
    let operator = session(&url, &schema).await;
    operator
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {rows} = '{locked}' FOR UPDATE"
        ))
        .await
        .unwrap();
    // Past the retention: the sweep tries both, deletes the one not locked.
    let count = |id: String| {
        let url = url.clone();
        let schema = schema.clone();
        async move {
            one(&sql(
                &url,
                &format!("SELECT count(*) FROM {schema}.deliveries WHERE id = '{id}'"),
            )
            .await)
        }
    };
    eventually("the unlocked final record swept", async || {
        match count(other.clone()).await.as_str() {
            "0" => Ok(()),
            n => Err(n.to_owned()),
        }
    })
    .await;
    let third = enqueue(&gw.client(), &signed_event("response.completed")).await;
    deliveries.wait_for_state(&third, "processed").await;
    assert_eq!(count(locked.clone()).await, "1");
    operator.batch_execute("ROLLBACK").await.unwrap();
    eventually("the locked one swept once let go", async || {
        match count(locked.clone()).await.as_str() {
            "0" => Ok(()),
            n => Err(n.to_owned()),
        }
    })
    .await;
}

/// Recording the instance alive (`instances.last_seen`) is best effort: when it failed
/// after a take had committed its leases, the take failed, and the worker never saw the
/// deliveries it held (each waited out the visibility timeout, again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_whose_instance_row_cannot_be_written_still_delivers() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(queue_config(&url, &schema, &upstream)).await;
    let first = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::of(&gw)
        .wait_for_state(&first, "processed")
        .await;
    let operator = session(&url, &schema).await;
    operator
        .batch_execute("BEGIN; SELECT 1 FROM instances FOR UPDATE")
        .await
        .unwrap();
    // `last_seen` is written at most once a second, by a take that took something.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    enqueue(&gw.client(), &signed_event("response.completed")).await;
    upstream.wait_for(2).await;
    // Delivered although writing `last_seen` failed meanwhile (its lock held).
    eventually("a failed write of last_seen", async || {
        match gw
            .metrics()
            .await
            .value(r#"hookgate_store_errors_total{op="seen"}"#)
        {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let errors = gw
        .metrics()
        .await
        .value(r#"hookgate_store_errors_total{op="take"}"#)
        .unwrap_or(0.0);
    operator.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(errors, 0.0, "the take itself never failed");
}

/// A session that holds the migration lock and never lets go (a stuck `hookgate
/// migrate`, a vanished client's session) stops the start with a reason, after a
/// bounded wait; start waited on it for good, without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_lock_held_for_good_stops_the_start_with_a_reason() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let config = queue_config(&url, &schema, "http://127.0.0.1:9/hooks");
    let holder = session(&url, "public").await;
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtext($1))",
            &[&format!("hookgate migrations {schema}")],
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(60), hookgate::start(settings(&config)))
        .await
        .expect("gave up within its patience")
        .err()
        .expect("refused");
    let said = refused.to_string();
    assert!(said.contains("migration lock"), "{said}");
    assert!(started.elapsed() >= Duration::from_secs(29), "{said}");
    // Let go, it starts (and migrates) at once.
    drop(holder);
    let gw = hookgate::start(settings(&config)).await;
    assert!(gw.is_ok(), "{:?}", gw.err().map(|e| e.to_string()));
}

/// Another instance migrating, however long it takes, is waited for: a start gives up
/// only on a lock whose holder runs no statement (a fixed 30 s failed every other
/// instance of a rollout whose migration took longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_running_longer_than_the_patience_is_waited_for() {
    let Some(url) = PostgresServer::shared_or_skip() else {
        return;
    };
    let schema = fresh_schema();
    let config = queue_config(&url, &schema, "http://127.0.0.1:9/hooks");
    let holder = session(&url, "public").await;
    let key = format!("hookgate migrations {schema}");
    holder
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
        .await
        .unwrap();
    // A statement running past the 30 s patience while the lock is held, then let go.
    let migrating = tokio::spawn(async move {
        holder.batch_execute("SELECT pg_sleep(34)").await.unwrap();
        holder
            .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])
            .await
            .unwrap();
        holder
    });
    let started = std::time::Instant::now();
    let gw = tokio::time::timeout(Duration::from_secs(90), hookgate::start(settings(&config)))
        .await
        .expect("started once the lock was let go");
    assert!(gw.is_ok(), "{:?}", gw.err().map(|e| e.to_string()));
    assert!(started.elapsed() >= Duration::from_secs(33));
    drop(migrating.await.unwrap());
}
