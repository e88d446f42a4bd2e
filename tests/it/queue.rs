//! Queue mode end to end: real gateways (in-process, and as child processes to kill),
//! real upstreams, real Redis. Shared bodies run on the in-memory queue and on Redis.
//!
//! Durations are short (backoff from 100 ms, visibility 1 s) and every wait is on a
//! condition (`eventually`); the only timing assertions are lower bounds the design
//! guarantees.

use std::time::Duration;

use http::Method;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// Backoff with no jitter, so its lower bounds are exact.
const BACKOFF: &str = r#"{ initial = "100ms", max = "400ms", jitter = false }"#;

/// A queue-mode gateway config on `store`, delivering everything to `to`.
fn queue_config(store: &TestStore, to: impl Target) -> Config {
    config()
        .store(store)
        .queued()
        .route("*", to)
        .upstream_timeout("5s")
        .queue_option("workers", "4")
        .queue_option("backoff", BACKOFF)
        .queue_option("visibility_timeout", r#""1s""#)
}

on_each_store!(
    a_queued_delivery_is_answered_202_then_delivered_with_the_senders_webhook_id,
    an_upstream_down_for_a_while_then_up_gets_every_event_exactly_once,
    an_upstream_answering_500_three_times_then_200_gets_four_attempts_spaced_by_the_backoff,
    a_non_retryable_400_is_final_listed_and_replay_delivers_it_once_the_upstream_is_fixed,
    replay_with_status_failed_final_re_drives_every_dead_letter,
    ingress_answers_202_while_every_upstream_hangs,
    max_concurrency_is_honoured_at_the_upstream,
);

async fn a_queued_delivery_is_answered_202_then_delivered_with_the_senders_webhook_id(
    store: TestStore,
) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(queue_config(&store, &upstream)).await;
    let deliveries = Deliveries::of(&gw);
    // A value that is not ASCII is delivered too, as proxy mode forwards it (it was
    // left out of the stored headers).
    let event = signed_event("response.completed").with_header("x-note", "Zürich");

    let id = enqueue(&gw.client(), &event).await;
    upstream.wait_for(1).await;
    let record = deliveries.wait_for_state(&id, "processed").await;

    let got = upstream.only();
    assert_eq!(got.header("webhook-id"), event.header("webhook-id"));
    assert_eq!(
        got.header("webhook-signature"),
        event.header("webhook-signature")
    );
    assert_eq!(got.header("x-hookgate-delivery-id"), id);
    assert_eq!(got.header("x-hookgate-attempt"), "1");
    assert_eq!(got.header("x-hookgate-source"), SOURCE);
    assert_eq!(got.body, event.body.as_bytes(), "the exact bytes");
    assert_eq!(
        got.headers.get("x-note").map(|v| v.as_bytes()),
        Some("Zürich".as_bytes())
    );
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["last_status"], 200);
    assert_eq!(record["webhook_id"], event.header("webhook-id"));
    assert!(
        record.get("body").is_none(),
        "no body unless asked: {record}"
    );
    // Delivered: its body is not kept (only dead letters keep what a replay needs).
    let with_body = deliveries
        .request(Method::GET, &format!("/deliveries/{id}?body=true"))
        .await
        .json();
    // Said so, rather than shown as an empty body the sender never sent.
    assert!(with_body.get("body").is_none(), "{with_body}");
    assert!(with_body.get("headers").is_none(), "{with_body}");
    assert_eq!(with_body["body_dropped"], true, "{with_body}");
    let replay = deliveries
        .request(Method::POST, &format!("/deliveries/{id}/replay"))
        .await;
    assert_eq!(replay.status(), 409);
    assert_eq!(replay.json()["error"], "not_replayable");
    assert_eq!(replay.json()["state"], "processed");

    // A sender's retry of a stored delivery is a duplicate, as in proxy mode.
    let again = gw.post(PATH, &event).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json()["duplicate"], true);

    let scrape = gw.metrics().await;
    assert_eq!(scrape.requests(SOURCE, "queued"), 1);
    assert_eq!(
        scrape.value(r#"hookgate_deliveries_total{result="processed",route="openai/0"}"#),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(r#"hookgate_delivery_attempts_count{route="openai/0"}"#),
        Some(1.0)
    );
    assert!(scrape.value("hookgate_queue_depth").is_some());
    assert!(scrape.value("hookgate_queue_oldest_age_seconds").is_some());
}

async fn an_upstream_down_for_a_while_then_up_gets_every_event_exactly_once(store: TestStore) {
    let down = closed_port().await;
    let gw = Gateway::start(
        queue_config(&store, format!("http://{down}/hooks")).queue_option("max_attempts", "1000"),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(enqueue(&gw.client(), &signed_event("response.completed")).await);
    }
    // Every delivery has failed at least twice while the upstream was down.
    for id in &ids {
        eventually(format!("{id} being retried"), async || {
            deliveries.record(id).await["attempts"].as_u64() >= Some(2)
        })
        .await;
    }

    let upstream = Upstream::with_at(down, Answer::ok()).await;
    for id in &ids {
        let record = deliveries.wait_for_state(id, "processed").await;
        assert_eq!(record["last_status"], 200);
    }

    // Every record is final, so nothing more can arrive: count what did.
    let counts = upstream.count_by_webhook_id();
    assert_eq!(counts.len(), 20, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let history = deliveries.record(&ids[0]).await["history"].clone();
    assert!(history.as_array().unwrap().len() >= 3, "{history:#}");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{history:#}"
    );
}

async fn an_upstream_answering_500_three_times_then_200_gets_four_attempts_spaced_by_the_backoff(
    store: TestStore,
) {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
        Answer::ok(),
    ]))
    .await;
    let backoff = r#"{ initial = "200ms", max = "2s", jitter = false }"#;
    let gw = Gateway::start(queue_config(&store, &upstream).queue_option("backoff", backoff)).await;
    let deliveries = Deliveries::of(&gw);

    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let record = deliveries.wait_for_state(&id, "processed").await;

    assert_eq!(record["attempts"], 4, "{record:#}");
    let statuses: Vec<u64> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    let received = upstream.received();
    assert_eq!(received.len(), 4);
    assert!(
        received
            .iter()
            .all(|r| r.header("webhook-id") == received[0].header("webhook-id"))
    );
    let attempts: Vec<&str> = received
        .iter()
        .map(|r| r.header("x-hookgate-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    // Attempt n+1 never comes before attempt n plus its backoff (200, 400, 800 ms).
    // Schedules are wall-clock milliseconds and the upstream measures monotonic time,
    // hence 2 ms of slack.
    for (n, wait) in [200u64, 400, 800].into_iter().enumerate() {
        let gap = received[n + 1].at - received[n].at;
        assert!(
            gap + Duration::from_millis(2) >= Duration::from_millis(wait),
            "attempt {} came {gap:?} after attempt {}, before its {wait} ms backoff",
            n + 2,
            n + 1
        );
    }
}

async fn a_non_retryable_400_is_final_listed_and_replay_delivers_it_once_the_upstream_is_fixed(
    store: TestStore,
) {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(400).body(r#"{"error":"unknown customer"}"#),
        Answer::ok(),
    ]))
    .await;
    let gw = Gateway::start(queue_config(&store, &upstream)).await;
    let deliveries = Deliveries::of(&gw);
    let admin = deliveries.base().to_owned();

    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let record = deliveries.wait_for_state(&id, "failed_final").await;
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["last_status"], 400);
    let error = record["last_error"].as_str().unwrap();
    assert!(error.contains("unknown customer"), "{error}");
    assert!(error.contains("not retryable"), "{error}");

    let (ok, listed, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        &admin,
        "list",
        "--status",
        "failed_final",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        listed.contains(&id) && listed.contains("failed_final"),
        "{listed}"
    );
    // With --config, only [admin] is read: the webhook secrets the rest names are in
    // the server's environment, not the operator's shell (it failed on the first).
    let file = ConfigFile::new(format!(
        "[admin]\nlisten = \"{}\"\n\n[[sources]]\nname = \"s\"\npath = \"/s\"\n\
         scheme = \"github\"\nsecrets = [\"${{HOOKGATE_TEST_NEVER_SET}}\"]\n\
         [[sources.routes]]\nevents = [\"*\"]\nupstream = \"http://127.0.0.1:9/\"\n",
        admin.trim_start_matches("http://")
    ));
    let path = file.path().display().to_string();
    let (ok, listed, stderr) = hookgate_cli(&["deliveries", "--config", &path, "list"]).await;
    assert!(ok && listed.contains(&id), "{stderr}{listed}");
    // Nor is admin.token's variable needed when the token is given: the file's listen
    // address is all that is read.
    let with_token = std::fs::read_to_string(file.path()).unwrap().replacen(
        "[admin]\n",
        "[admin]\ntoken = \"${HOOKGATE_TEST_NEVER_SET_TOKEN}\"\n",
        1,
    );
    std::fs::write(file.path(), with_token).unwrap();
    let (ok, listed, stderr) =
        hookgate_cli(&["deliveries", "--config", &path, "--token", "t0ken", "list"]).await;
    assert!(ok && listed.contains(&id), "{stderr}{listed}");
    let (ok, _, stderr) = hookgate_cli(&["deliveries", "--config", &path, "list"]).await;
    assert!(
        !ok && stderr.contains("HOOKGATE_TEST_NEVER_SET_TOKEN"),
        "without --token, the file's is needed: {stderr}"
    );
    let (ok, shown, stderr) = hookgate_cli(&["deliveries", "--admin", &admin, "show", &id]).await;
    assert!(ok, "{stderr}");
    assert!(
        shown.contains("history:") && shown.contains("400"),
        "{shown}"
    );
    assert!(!shown.contains("resp_1"), "no body without --body: {shown}");
    let (_, with_body, _) =
        hookgate_cli(&["deliveries", "--admin", &admin, "show", &id, "--body"]).await;
    assert!(
        with_body.contains(r#""id":"resp_1""#),
        "a dead letter keeps its body: {with_body}"
    );

    // The backend is fixed (its next answer is 200): replay the dead letter.
    let (ok, replayed, stderr) =
        hookgate_cli(&["deliveries", "--admin", &admin, "replay", &id]).await;
    assert!(ok, "{stderr}");
    assert!(replayed.contains("replayed"), "{replayed}");
    let record = deliveries.wait_for_state(&id, "processed").await;

    assert_eq!(record["replays"], 1);
    assert_eq!(record["attempts"], 1, "counting starts again: {record:#}");
    assert_eq!(record["history"].as_array().unwrap().len(), 2);
    let counts = upstream.count_by_webhook_id();
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [2],
        "{counts:?}"
    );
    let (ok, _, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        &admin,
        "replay",
        "dlv_000000000000ffffffffffffffff",
    ])
    .await;
    assert!(!ok && stderr.contains("not_found"), "{stderr}");
}

async fn replay_with_status_failed_final_re_drives_every_dead_letter(store: TestStore) {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(422),
        Answer::status(422),
        Answer::ok(),
    ]))
    .await;
    let gw = Gateway::start(queue_config(&store, &upstream).queue_option("workers", "1")).await;
    let deliveries = Deliveries::of(&gw);
    let a = enqueue(&gw.client(), &signed_event("response.completed")).await;
    deliveries.wait_for_state(&a, "failed_final").await;
    let b = enqueue(&gw.client(), &signed_event("response.completed")).await;
    deliveries.wait_for_state(&b, "failed_final").await;

    let (ok, out, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        deliveries.base(),
        "replay",
        "--status",
        "failed_final",
        "--since",
        "1h",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(out.contains("replayed 2"), "{out}");
    deliveries.wait_for_state(&a, "processed").await;
    deliveries.wait_for_state(&b, "processed").await;
    assert!(deliveries.list("status=failed_final").await.is_empty());
    assert_eq!(upstream.received().len(), 4);
}

async fn ingress_answers_202_while_every_upstream_hangs(store: TestStore) {
    let upstream = Upstream::with(Answer::held()).await;
    // Held answers must outlast the posting however slow the machine: no retries here.
    let gw = Gateway::start(
        queue_config(&store, &upstream)
            .queue_option("workers", "2")
            .upstream_timeout("60s"),
    )
    .await;

    let posts: Vec<_> = (0..20)
        .map(|_| {
            let client = gw.client();
            tokio::spawn(async move { enqueue(&client, &signed_event("response.completed")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for post in posts {
        ids.push(post.await.unwrap());
    }
    // All 20 were answered while the two workers sit on hanging upstream calls.
    upstream.wait_for(2).await;
    assert_eq!(upstream.in_flight(), 2);
    assert!(upstream.received().len() <= 2);

    upstream.release();
    let deliveries = Deliveries::of(&gw);
    for id in &ids {
        deliveries.wait_for_state(id, "processed").await;
    }
    assert_eq!(upstream.count_by_webhook_id().len(), 20);
}

async fn max_concurrency_is_honoured_at_the_upstream(store: TestStore) {
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(
        queue_config(&store, &upstream)
            .max_concurrency(2)
            .queue_option("workers", "8")
            .upstream_timeout("60s"),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(enqueue(&gw.client(), &signed_event("response.completed")).await);
    }

    upstream.wait_for(2).await;
    assert_eq!(upstream.in_flight(), 2);
    upstream.release();
    for id in &ids {
        deliveries.wait_for_state(id, "processed").await;
    }

    assert_eq!(upstream.received().len(), 6);
    assert_eq!(upstream.max_in_flight(), 2, "never more than 2 at once");
}

// ---------------------------------------------------------------------------------
// What only the Redis queue does: several instances, one queue
// ---------------------------------------------------------------------------------

/// SIGKILLs while ingress is storing deliveries store none of them twice: on a single
/// Redis the script that stores a delivery marks its dedupe key done. Stored, then
/// marked by a second command, an instance killed between the two left the key in
/// flight, and once it expired the sender's retry stored a second delivery (an audit
/// killed an instance 0-40 ms after 20 deliveries, ten times: 22 of 200 stored twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_ingress_store_no_delivery_twice() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::start().await;
    // A claim left in flight by a killed instance expires after 1 s + 5 s.
    let config = queue_config(&store, &upstream).upstream_timeout("1s");
    let events: Vec<_> = (0..60)
        .map(|_| signed_event("response.completed"))
        .collect();
    for (round, batch) in events.chunks(20).enumerate() {
        let mut doomed = GatewayProcess::spawn(&config).await;
        let client = doomed.client();
        let sent: Vec<_> = batch
            .iter()
            .map(|event| client.post_in_background(PATH, event))
            .collect();
        tokio::time::sleep(Duration::from_millis(5 + 10 * round as u64)).await;
        doomed.kill();
        for answer in sent {
            let _ = answer.await; // answered, or cut off by the kill
        }
    }
    // The sender retries each until it is acknowledged.
    let gw = GatewayProcess::spawn(&config).await;
    for event in &events {
        let client = gw.client();
        eventually("the retry acknowledged", async || {
            let reply = client.post(PATH, event).await;
            reply.status() == 202 || reply.status() == 200
        })
        .await;
    }
    let deliveries = Deliveries::at(gw.admin_addr);
    deliveries.wait_for_count("processed", events.len()).await;
    let records = deliveries.list("").await;
    let mut per_id = std::collections::HashMap::<String, usize>::new();
    for record in &records {
        *per_id
            .entry(record["webhook_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(per_id.len(), events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_sigkill_mid_delivery_is_replaced_by_another_that_delivers_it() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    // The first attempt hangs (the instance holding it is killed); the next is answered.
    let upstream = Upstream::with(Behaviour::sequence([Answer::held(), Answer::ok()])).await;
    let mut doomed = GatewayProcess::spawn(queue_config(&store, &upstream)).await;
    let id = enqueue(&doomed.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;

    let survivor = GatewayProcess::spawn(queue_config(&store, &upstream)).await;
    doomed.kill();
    upstream.wait_for(2).await;
    let deliveries = Deliveries::at(survivor.admin_addr);
    let record = deliveries.wait_for_state(&id, "processed").await;

    let received = upstream.received();
    assert_eq!(received.len(), 2, "{}", survivor.log());
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id"),
        "the same webhook-id on every attempt"
    );
    assert_eq!(received[1].header("x-hookgate-delivery-id"), id);
    let history = record["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{record:#}");
    assert!(
        history[0].get("result").is_none(),
        "the killed attempt never finished"
    );
    assert_ne!(history[0]["instance"], history[1]["instance"]);
    assert_eq!(history[1]["result"], "processed");
    upstream.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_through_two_instances_are_each_delivered_exactly_once() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let config = || queue_config(&store, &upstream).queue_option("workers", "16");
    let a = Gateway::start(config()).await;
    let b = Gateway::start(config()).await;

    enqueue_through_both(&a, &b, 1000).await;
    upstream.wait_for(1000).await;
    Deliveries::of(&a).wait_for_count("processed", 1000).await;

    // Nothing is left anywhere in the queue, so nothing more can arrive.
    let TestStore::Redis(redis) = &store else {
        unreachable!()
    };
    let ready: u64 = redis
        .query(::redis::cmd("XLEN").arg("hookgate:{queue}:ready"))
        .await;
    let scheduled: u64 = redis
        .query(::redis::cmd("ZCARD").arg("hookgate:{queue}:scheduled"))
        .await;
    assert_eq!((ready, scheduled), (0, 0));
    let counts = upstream.count_by_webhook_id();
    assert_eq!(counts.len(), 1000);
    assert!(
        counts.values().all(|&n| n == 1),
        "a webhook-id was delivered twice"
    );
    let scrape_a = a.metrics().await;
    let scrape_b = b.metrics().await;
    let processed = |s: &Scrape| {
        s.value(r#"hookgate_deliveries_total{result="processed",route="openai/0"}"#)
            .unwrap()
    };
    assert_eq!(processed(&scrape_a) + processed(&scrape_b), 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_an_attempt_in_flight_and_another_instance_delivers_it() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::with(Behaviour::sequence([Answer::held(), Answer::ok()])).await;
    let mut leaving =
        Gateway::start(queue_config(&store, &upstream).shutdown_timeout("200ms")).await;
    let id = enqueue(&leaving.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;

    let staying = Gateway::start(queue_config(&store, &upstream)).await;
    tokio::time::timeout(PATIENCE, leaving.begin_shutdown())
        .await
        .expect("shutdown finishes")
        .unwrap();
    let record = Deliveries::of(&staying)
        .wait_for_state(&id, "processed")
        .await;

    let history = record["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{record:#}");
    assert_eq!(history[0]["result"], "handed_back");
    assert_eq!(history[1]["result"], "processed");
    assert_eq!(upstream.received().len(), 2);
    upstream.release();
}

#[tokio::test]
async fn when_the_queue_cannot_store_a_delivery_ingress_answers_503_and_the_retry_is_queued() {
    let Some(TestStore::Redis(mut redis)) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::start().await;
    // on_error = "allow" lets the claim through without Redis, so the append is what fails.
    let gw = Gateway::start(
        config()
            .redis(&redis)
            .store_option("on_error", "allow")
            .store_option("timeout", "200ms")
            .store_option("connect_timeout", "200ms")
            .queued()
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");
    redis.stop();

    let refused = gw.post(PATH, &event).await;
    assert_eq!(refused.status(), 503, "{refused:?}");
    assert_eq!(refused.error(), "queue_unavailable");
    assert_eq!(refused.retry_after(), 5);

    redis.restart().await;
    let id = eventually("the retry being queued", async || {
        let reply = gw.post(PATH, &event).await;
        if reply.status() == 202 {
            Ok(reply.json()["delivery_id"].as_str().unwrap().to_owned())
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
    Deliveries::of(&gw).wait_for_state(&id, "processed").await;
    assert_eq!(upstream.received().len(), 1);
}

/// An enqueue whose answer comes after the store's deadline: the sender gets its 503,
/// yet Redis may still run it (here: a proxy holds it back past the deadline, then
/// passes it on). Releasing the claim at once, as for a failure that stored nothing,
/// let the sender's retry store the delivery a second time. The claim now stays in
/// flight (409) until the queue says whether the record exists, and a "no" fences the
/// late enqueue off: either way the delivery is stored, and delivered, once.
#[tokio::test]
async fn an_enqueue_that_redis_ran_after_its_deadline_is_not_stored_again_by_the_retry() {
    const HELD: Duration = Duration::from_millis(900);
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let target = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = DelayingProxy::start(target, b"hold-me-back", HELD).await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store_option("redis_url", &proxy.redis_url())
            .store_option("timeout", "300ms")
            .queued()
            .route("*", &upstream),
    )
    .await;
    // Redis learns the enqueue script first: the held one must find it loaded, as it
    // would on any running Redis, or it would only fail with NOSCRIPT.
    assert_eq!(gw.post(PATH, &signed_event("a.b")).await.status(), 202);
    upstream.wait_for(1).await;
    let event = signed_body(r#"{"type":"response.completed","note":"hold-me-back"}"#);

    let refused = gw.post(PATH, &event).await;
    assert_eq!(refused.status(), 503, "{refused:?}");
    assert_eq!(refused.error(), "queue_unavailable");

    let retried = eventually("the retry being answered", async || {
        let reply = gw.post(PATH, &event).await;
        match reply.status().as_u16() {
            200 | 202 => Ok(reply),
            // 503 while Redis is still slow; 409 while the first claim waits for the
            // first enqueue's fate.
            409 | 503 => Err(format!("{reply:?}")),
            _ => panic!("{reply:?}"),
        }
    })
    .await;
    // Stored by the first enqueue (the retry is a duplicate), or by the retry alone.
    if retried.status() == 200 {
        assert_eq!(retried.json(), serde_json::json!({"duplicate": true}));
    }
    upstream.wait_for(2).await;
    // Long enough for the held enqueue to have reached Redis and run (or been fenced).
    tokio::time::sleep(HELD * 2).await;
    let listed = Deliveries::of(&gw).list("").await;
    assert_eq!(
        listed.len(),
        2,
        "the first delivery and this one: {listed:?}"
    );
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_queued_delivery_is_delivered_through_redis_cluster() {
    let Some(cluster) = TestStore::shared_cluster().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store(&cluster)
            .queued()
            .route("*", &upstream)
            .queue_option("backoff", BACKOFF),
    )
    .await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let record = Deliveries::of(&gw).wait_for_state(&id, "processed").await;
    assert_eq!(record["attempts"], 1);
    assert_eq!(upstream.received().len(), 1);
}

// ---------------------------------------------------------------------------------
// Readiness and the admin API's protection
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_in_memory_queue_says_in_readyz_that_it_is_not_durable() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(queue_config(&TestStore::memory(), &upstream)).await;
    let ready = gw.admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json()["queue"]["durable"], false);
    assert!(
        ready.json()["queue"]["detail"]
            .as_str()
            .unwrap()
            .contains("NOT durable")
    );
}

/// A 202 from the Redis queue is only as durable as Redis' append-only file: without
/// one (Redis' default, and the test servers'), `hookgate check`, `/readyz`, the log and
/// a gauge say that a Redis restart loses acknowledged deliveries; with one, that it
/// does not.
#[tokio::test]
async fn the_redis_queue_reads_redis_persistence_and_says_when_a_202_is_not_durable() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let config = config().redis(&redis).queued().route("*", &upstream);
    let file = ConfigFile::new(&config);
    let path = file.path().display().to_string();
    let persistence = "hookgate_queue_persistence{backend=\"redis\"}";

    let (ok, out, err) = hookgate_cli(&["check", "--config", &path]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("queue persistence: NOT durable") && out.contains("appendonly no"),
        "{out}"
    );
    let gw = GatewayProcess::spawn(&config).await;
    eventually("readyz says the queue is not durable", async || {
        let ready = gw
            .client()
            .get(&format!("http://{}/readyz", gw.admin_addr))
            .await;
        ready.json()["queue"]["durable"] == false
            && ready.json()["queue"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("appendonly no"))
    })
    .await;
    assert_eq!(gw.metrics().await.value(persistence), Some(0.0));
    let warning = "a Redis restart loses every delivery acknowledged";
    assert!(
        gw.log_containing(warning)
            .await
            .contains(r#""level":"WARN""#)
    );
    drop(gw);

    let _: () = redis
        .query(
            ::redis::cmd("CONFIG")
                .arg("SET")
                .arg("appendonly")
                .arg("yes"),
        )
        .await;
    let (ok, out, err) = hookgate_cli(&["check", "--config", &path]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("queue persistence: durable across Redis restarts (appendonly yes, appendfsync everysec)"),
        "{out}"
    );
    let gw = Gateway::start(config).await;
    eventually("readyz says the queue is durable", async || {
        let ready = gw.admin("/readyz").await;
        ready.json()["queue"]["durable"] == true
            && ready.json()["queue"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("appendonly yes"))
    })
    .await;
    assert_eq!(gw.metrics().await.value(persistence), Some(1.0));
    drop(gw);

    // An append-only file does not help a Redis that evicts keys at its memory limit:
    // the queue's stream and records go with the rest, no restart needed.
    for (key, value) in [("maxmemory", "100mb"), ("maxmemory-policy", "allkeys-lru")] {
        let _: () = redis
            .query(::redis::cmd("CONFIG").arg("SET").arg(key).arg(value))
            .await;
    }
    let (ok, out, err) = hookgate_cli(&["check", "--config", &path]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("queue persistence: NOT durable: Redis evicts keys")
            && out.contains("maxmemory-policy allkeys-lru"),
        "{out}"
    );
}

#[tokio::test]
async fn the_deliveries_api_needs_the_admin_token_once_one_is_configured() {
    const TOKEN: &str = "test-token-0123456789";
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        queue_config(&TestStore::memory(), &upstream)
            .admin_token(TOKEN)
            .set("admin", "public_paths", r#"["/metrics", "/readyz"]"#),
    )
    .await;

    let anonymous = Deliveries::of(&gw)
        .request(Method::GET, "/deliveries")
        .await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let wrong = Deliveries::of(&gw)
        .with_token("test-token-9876543210")
        .request(Method::POST, "/deliveries/replay?status=failed_final")
        .await;
    assert_eq!(wrong.status(), 401);
    let right = Deliveries::of(&gw)
        .with_token(TOKEN)
        .request(Method::GET, "/deliveries")
        .await;
    assert_eq!(right.status(), 200, "{right:?}");
    // Paths made public stay open for scrapers and probes; /deliveries never can be.
    assert_eq!(gw.admin("/metrics").await.status(), 200);
    assert_eq!(gw.admin("/readyz").await.status(), 200);
    let (ok, _, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        Deliveries::of(&gw).base(),
        "--token",
        TOKEN,
        "list",
    ])
    .await;
    assert!(ok, "{stderr}");
}

#[tokio::test]
async fn a_proxy_mode_gateway_has_no_deliveries_api() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let reply = Deliveries::of(&gw)
        .request(Method::GET, "/deliveries")
        .await;
    assert_eq!(reply.status(), 404);
    assert_eq!(reply.error(), "queue_not_configured");
}

#[tokio::test]
async fn a_resigning_route_in_queue_mode_signs_each_attempt_afresh_for_the_backend() {
    const BACKEND_SECRET: &str = "whsec_YmFja2VuZC1zZWNyZXQtZm9yLXF1ZXVlLW1vZGU=";
    let upstream = Upstream::with(Behaviour::sequence([Answer::status(500), Answer::ok()])).await;
    let gw = Gateway::start(
        config()
            .queued()
            .resigned_route("*", &upstream, BACKEND_SECRET)
            .upstream_timeout("5s")
            .queue_option("workers", "2")
            .queue_option("backoff", BACKOFF),
    )
    .await;
    let event = signed_event("response.completed");

    let id = enqueue(&gw.client(), &event).await;
    upstream.wait_for(2).await;
    Deliveries::of(&gw).wait_for_state(&id, "processed").await;

    let key = hookgate::verify::standard_webhooks::key_from_secret(BACKEND_SECRET).unwrap();
    for attempt in upstream.received() {
        let timestamp: i64 = attempt.header("webhook-timestamp").parse().unwrap();
        let expected = hookgate::verify::standard_webhooks::sign(
            &key,
            attempt.header("webhook-id"),
            timestamp,
            &attempt.body,
        );
        assert_eq!(attempt.header("webhook-signature"), expected);
        assert_eq!(attempt.header("webhook-id"), event.header("webhook-id"));
        assert_eq!(attempt.header("x-hookgate-verified"), "standard-webhooks");
        assert!((now_unix() - timestamp).abs() <= 5, "a fresh timestamp");
    }
}

/// A backend answering 429 (or 503) with `Retry-After` is left alone that long: the
/// retry once came on the backoff alone (here 50 ms), inside the pause it asked for.
#[tokio::test]
async fn a_retry_waits_for_the_backends_retry_after() {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(429).header("retry-after", "2"),
        Answer::ok(),
    ]))
    .await;
    let gw = Gateway::start(config().queued().route("*", &upstream).queue_option(
        "backoff",
        r#"{ initial = "50ms", max = "100ms", jitter = false }"#,
    ))
    .await;

    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let record = Deliveries::of(&gw).wait_for_state(&id, "processed").await;

    let started: Vec<u64> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["started_at"].as_u64().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "{record:#}");
    assert!(
        started[1] - started[0] >= 1_900,
        "the retry came {} ms later",
        started[1] - started[0]
    );
}

/// Dead letters of the bulk replay tests, on each run's Redis.
const DEAD: usize = 600;

/// A gateway on Redis holding `DEAD` dead letters (its upstream refuses everything),
/// and the Redis server, which lives as long as the caller keeps it.
/// The sets listing dead letters expire with the last record they list: trimmed only
/// when another delivery was dead-lettered, they kept the ids of records long gone
/// (an audit found 7,605 with no expiry and no record left).
#[tokio::test]
async fn the_dead_letter_sets_expire_with_their_records() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::with(Behaviour::always(Answer::status(400))).await;
    let gw =
        Gateway::start(queue_config(&store, &upstream).queue_option("retention", "\"2s\"")).await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::of(&gw)
        .wait_for_state(&id, "failed_final")
        .await;
    let TestStore::Redis(redis) = &store else {
        unreachable!("a Redis store")
    };
    for key in [
        "hookgate:{queue}:x:state:failed_final",
        "hookgate:{queue}:dead",
    ] {
        let pttl = redis.pttl(key).await;
        assert!((1..=2000).contains(&pttl), "{key}: {pttl}");
    }
}

async fn dead_letters_on_redis() -> Option<(Gateway, Upstream, TestStore)> {
    let store = TestStore::redis().await?;
    let upstream = Upstream::with(Behaviour::always(Answer::status(400))).await;
    let gw = Gateway::start(queue_config(&store, &upstream).queue_option("workers", "32")).await;
    enqueue_through_both(&gw, &gw, DEAD).await;
    Deliveries::of(&gw)
        .wait_for_count("failed_final", DEAD)
        .await;
    Some((gw, upstream, store))
}

/// Each dead letter replayed is attempted again (and refused again): all of them, once.
async fn each_attempted_once_more(upstream: &Upstream) {
    upstream.wait_for(2 * DEAD).await;
    let counts = upstream.count_by_webhook_id();
    assert_eq!(counts.len(), DEAD);
    assert!(counts.values().all(|&n| n == 2), "{counts:?}");
}

/// A bulk replay runs to its end however soon its client gives up: run in the request's
/// own future, a client that hung up (the CLI after 30 s) cut it short part-way, and the
/// dead letters already replayed were neither answered nor logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_runs_to_its_end_when_its_client_hangs_up() {
    let Some((gw, upstream, _redis)) = dead_letters_on_redis().await else {
        return;
    };

    let mut admin = tokio::net::TcpStream::connect(gw.admin_addr())
        .await
        .unwrap();
    admin
        .write_all(
            b"POST /deliveries/replay?status=failed_final HTTP/1.1\r\n\
              Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(admin);

    each_attempted_once_more(&upstream).await;
}

/// The console's bulk replay too runs to its end when the browser goes away (a tab
/// closed, a proxy in front timing out): it was cut short part-way, unanswered and
/// unlogged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_bulk_replay_runs_to_its_end_when_the_browser_goes_away() {
    let Some((gw, upstream, _redis)) = dead_letters_on_redis().await else {
        return;
    };
    // The confirmation page: the session (a loopback console without a token opens one
    // for anyone) and the form the browser would post.
    let page = gw
        .send(
            http::Request::get(gw.admin_url("/ui/replay?status=failed_final"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(page.status(), 200, "{}", page.text());
    let cookie = page.cookie();
    let form: Vec<String> = page
        .text()
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|field| {
            let (name, rest) = field.split_once("\" value=\"").expect("a value");
            format!("{name}={}", rest.split('"').next().unwrap())
        })
        .collect();
    let form = form.join("&");
    assert!(form.contains(&format!("count={DEAD}")), "{form}");
    let url = gw.admin_url("");
    let host = url.trim_start_matches("http://").trim_end_matches('/');

    let mut browser = tokio::net::TcpStream::connect(host).await.unwrap();
    browser
        .write_all(
            format!(
                "POST /ui/replay HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\
                 Sec-Fetch-Site: same-origin\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{form}",
                form.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(browser);

    each_attempted_once_more(&upstream).await;
}

/// The admin API's methods as HTTP has them: HEAD as GET, a 405 naming what is allowed,
/// `Bearer` in any case, and `/deliveries/replay` never read as a delivery id.
#[tokio::test]
async fn the_deliveries_api_answers_methods_and_schemes_as_http_has_them() {
    const TOKEN: &str = "test-token-0123456789";
    let upstream = Upstream::start().await;
    let gw = Gateway::start(queue_config(&TestStore::memory(), &upstream).admin_token(TOKEN)).await;
    let api = Deliveries::of(&gw).with_token(TOKEN);

    assert_eq!(api.request(Method::HEAD, "/deliveries").await.status(), 200);
    for (method, path, allow) in [
        (Method::DELETE, "/deliveries", "GET, HEAD"),
        (Method::GET, "/deliveries/replay", "POST"),
        (Method::GET, "/deliveries/d_1/replay", "POST"),
        (Method::PUT, "/reload", "POST"),
        (Method::POST, "/metrics", "GET, HEAD"),
    ] {
        let reply = api.request(method.clone(), path).await;
        assert_eq!(reply.status(), 405, "{method} {path}");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }

    let send = |authorization: &'static str| {
        let client = gw.client();
        let url = format!("http://{}/deliveries", gw.admin_addr());
        async move {
            let request = http::Request::get(url)
                .header("authorization", authorization)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client.send(request).await.status()
        }
    };
    assert_eq!(send("bearer test-token-0123456789").await, 200);
    assert_eq!(send("BEARER  test-token-0123456789").await, 200);
    assert_eq!(send("Bearertest-token-0123456789").await, 401);
    assert_eq!(send("Basic test-token-0123456789").await, 401);
}

/// `hookgate deliveries ... | head` closes the pipe before the output is written: that
/// is no error (it panicked with a backtrace).
#[tokio::test]
async fn the_deliveries_command_ends_quietly_when_its_reader_is_gone() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(queue_config(&TestStore::memory(), &upstream)).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["deliveries", "--admin", Deliveries::of(&gw).base(), "list"])
        .env_remove("HOOKGATE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A delivery whose attempts never finish (each kills its instance, as a poison body
/// might) is dead-lettered once `max_attempts` have begun: only a settle checked the
/// limit, so it was taken over and sent again after every crash, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_never_finish_end_at_max_attempts() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::with(Answer::held()).await;
    let config = || queue_config(&store, &upstream).queue_option("max_attempts", "2");
    let mut first = GatewayProcess::spawn(config()).await;
    let id = enqueue(&first.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;
    let mut second = GatewayProcess::spawn(config()).await;
    first.kill();
    upstream.wait_for(2).await;
    let third = GatewayProcess::spawn(config()).await;
    second.kill();

    let record = Deliveries::at(third.admin_addr)
        .wait_for_state(&id, "failed_final")
        .await;
    assert_eq!(upstream.received().len(), 2, "not sent a third time");
    let history = record["history"].as_array().unwrap();
    assert!(
        history
            .last()
            .and_then(|a| a["error"].as_str())
            .is_some_and(|e| e.contains("never finished")),
        "{record:#}"
    );
    upstream.release();
}

/// A Redis that refuses `CONFIG GET` (managed services disable it, or an ACL forbids
/// it) answered: its refusal is no failing store. Counted as a store error every 5 s,
/// it kept the critical `HookgateStoreErrors` alert firing for a store that worked.
#[tokio::test]
async fn a_redis_refusing_config_get_is_unknown_persistence_not_a_store_error() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let _: () = redis
        .query(
            ::redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg("-config"),
        )
        .await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().redis(&redis).queued().route("*", &upstream)).await;

    eventually("readyz says CONFIG GET is refused", async || {
        let ready = gw.admin("/readyz").await;
        ready.json()["queue"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("refuses CONFIG GET") && d.contains("NOPERM"))
    })
    .await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::of(&gw).wait_for_state(&id, "processed").await;

    let scrape = gw.metrics().await;
    assert_eq!(
        scrape.value("hookgate_queue_persistence{backend=\"redis\"}"),
        Some(-1.0)
    );
    assert_eq!(
        scrape.value("hookgate_store_errors_total{op=\"config_get\"}"),
        None
    );
}

/// A queue count that failed (timed out while Redis stalled) is asked again a second
/// later: paced by what it took, as a slow count is, the gauges stayed stale for up to a
/// minute after Redis was back.
#[tokio::test]
async fn the_queue_gauges_are_counted_again_soon_after_a_stalled_store_is_back() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(
        config()
            .redis(&redis)
            .queued()
            .route("*", &upstream)
            .impatient_store(),
    )
    .await;
    {
        let _paused = redis.pause();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for _ in 0..3 {
        enqueue(&gw.client(), &signed_event("response.completed")).await;
    }

    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while gw.metrics().await.value("hookgate_queue_depth") != Some(3.0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "the queue depth was not counted within 10 s"
    );
    upstream.release();
}
