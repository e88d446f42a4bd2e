//! What only the Redis store does: dedupe shared by several gateway instances, commits
//! without a script, rate checks grouped into one script run, Redis going away and
//! coming back under a running gateway, and the key layout other tools rely on. What
//! every store does (claims, stale claims, expiry, rate limits) is the store contract
//! (`contract::store`), run against Redis too.

use std::sync::Arc;
use std::time::Duration;

use hookgate::config::StoreBackend;
use hookgate::metrics::Metrics;
use hookgate::store::redis::RedisStore;
use hookgate::store::{ClaimState, RateDecision, Settled, Store};

use crate::support::*;

/// In-flight and done TTLs that never run out during a test.
const LONG: Duration = Duration::from_secs(600);
const DONE: Duration = Duration::from_secs(3600);

/// A `RedisStore` on `redis`, built from settings as the gateway builds it.
fn redis_store(redis: &RedisServer) -> RedisStore {
    redis_store_from(config().redis(redis))
}

/// A store on `redis` that gives up on it after 600 ms (`connect_timeout + timeout`).
fn impatient_store(redis: &RedisServer) -> RedisStore {
    redis_store_from(config().redis(redis).impatient_store())
}

fn redis_store_from(config: Config) -> RedisStore {
    let text = config.route("*", NOWHERE).to_string();
    let settings = hookgate::config::parse(&text, "test.toml").expect("a valid config");
    let StoreBackend::Redis(redis_settings) = &settings.store.backend else {
        panic!("[store] selects Redis");
    };
    RedisStore::new(
        redis_settings,
        settings.rate_limit,
        Arc::new(Metrics::new([SOURCE])),
    )
    .expect("a Redis store")
}

// ---------------------------------------------------------------------------------
// Several instances, one Redis
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_copies_spread_over_two_instances_sharing_redis_are_forwarded_exactly_once() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let a = Gateway::start(config().redis(&redis).route("*", &upstream)).await;
    let b = Gateway::start(config().redis(&redis).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    assert_forwarded_exactly_once(&[a.client(), b.client()], &event, 100, &upstream).await;
}

#[tokio::test]
async fn a_retry_after_an_upstream_failure_on_one_instance_is_forwarded_by_the_other() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::with(Behaviour::sequence([Answer::status(500), Answer::ok()])).await;
    let a = Gateway::start(config().redis(&redis).route("*", &upstream)).await;
    let b = Gateway::start(config().redis(&redis).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    let failed = a.post(PATH, &event).await;
    let retry = b.post(PATH, &event).await;
    let again = a.post(PATH, &event).await;

    assert_eq!(failed.status(), 500);
    assert!(retry.forwarded(), "{retry:?}");
    assert_eq!(again.json(), serde_json::json!({"duplicate": true}));
    assert_eq!(upstream.received().len(), 2);
}

// ---------------------------------------------------------------------------------
// The commit of a claim that cannot have expired: one plain `SET XX GET`
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_unexpired_commit_marks_its_own_claim_done_without_a_script() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store(&redis);
    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    let _: () = redis.query(redis::cmd("CONFIG").arg("RESETSTAT")).await;

    let settled = store.commit_unexpired("k", "a", DONE).await.unwrap();

    assert_eq!(settled, Settled::Applied);
    assert_eq!(
        redis.get("hookgate:dedupe:k").await.as_deref(),
        Some("done")
    );
    let ttl = redis.pttl("hookgate:dedupe:k").await;
    assert!(ttl > LONG.as_millis() as i64, "the done TTL applies: {ttl}");
    let stats: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    assert!(!stats.contains("cmdstat_evalsha"), "{stats}");
    assert_eq!(store.claim("k", "b", LONG).await.unwrap(), ClaimState::Done);
}

#[tokio::test]
async fn an_unexpired_commit_whose_key_vanished_still_marks_it_done() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store(&redis);
    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    // As after an eviction or a FLUSHDB on Redis' side.
    let _: i64 = redis
        .query(redis::cmd("DEL").arg("hookgate:dedupe:k"))
        .await;

    let settled = store.commit_unexpired("k", "a", DONE).await.unwrap();

    assert_eq!(settled, Settled::Applied);
    assert_eq!(store.claim("k", "b", LONG).await.unwrap(), ClaimState::Done);
}

#[tokio::test]
async fn an_unexpired_commit_that_finds_another_claim_says_superseded() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store(&redis);
    // The claim of "a" was lost on Redis' side and "b" claimed the key meanwhile.
    assert_eq!(store.claim("k", "b", LONG).await.unwrap(), ClaimState::Won);

    let settled = store.commit_unexpired("k", "a", DONE).await.unwrap();

    // "a" was forwarded successfully, so the key is done, which "b" then learns.
    assert_eq!(settled, Settled::Superseded);
    assert_eq!(store.claim("k", "c", LONG).await.unwrap(), ClaimState::Done);
    assert_eq!(
        store.commit("k", "b", DONE).await.unwrap(),
        Settled::Superseded
    );
}

// ---------------------------------------------------------------------------------
// Rate checks of one client arriving together: one script run for the group
// ---------------------------------------------------------------------------------

/// How many times Redis ran a script (`EVALSHA`) so far.
async fn script_runs(redis: &RedisServer) -> u64 {
    let stats: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().parse().expect("a count")
        })
}

#[tokio::test]
async fn rate_checks_arriving_together_share_one_script_run_and_answer_as_checks_in_a_row() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    // A burst of 5 and nothing refilled during the test (one request per 100 s).
    let store = Arc::new(redis_store_from(config().rate_limit(0.01, 5).redis(&redis)));
    let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    assert_eq!(store.rate_check(client).await.unwrap(), RateDecision::Allow);
    assert_eq!(store.rate_check(client).await.unwrap(), RateDecision::Allow);
    let before = script_runs(&redis).await;

    // Ten at once, with three tokens left: the first three pass, as in a row.
    let decisions = rate_checks_at_once(&store, client, 10).await;

    assert_eq!(
        script_runs(&redis).await - before,
        1,
        "one run for the group"
    );
    let decisions: Vec<_> = decisions.into_iter().map(Result::unwrap).collect();
    assert_eq!(decisions[..3], [RateDecision::Allow; 3]);
    let waits: Vec<_> = decisions[3..]
        .iter()
        .map(|decision| match decision {
            RateDecision::Deny { retry_after } => *retry_after,
            RateDecision::Allow => panic!("over the burst: {decisions:?}"),
        })
        .collect();
    // A denial takes nothing from the bucket: every denied request waits for the same
    // next token, about 100 s away.
    assert!(waits.iter().all(|wait| *wait == waits[0]), "{waits:?}");
    assert!(waits[0] > Duration::from_secs(90) && waits[0] <= Duration::from_secs(100));
    // Another group of the same client, once the bucket is empty: all denied.
    let again = rate_checks_at_once(&store, client, 4).await;
    assert!(
        again
            .iter()
            .all(|d| matches!(d, Ok(RateDecision::Deny { .. }))),
        "{again:?}"
    );
    // Other clients keep their own buckets, even in the same tick.
    let other: std::net::IpAddr = "192.0.2.8".parse().unwrap();
    let (mine, theirs) = tokio::join!(store.rate_check(client), store.rate_check(other));
    assert!(matches!(mine, Ok(RateDecision::Deny { .. })), "{mine:?}");
    assert_eq!(theirs.unwrap(), RateDecision::Allow);
}

/// `n` rate checks of `client` spawned together, so they are ready in the same tick;
/// their answers in the order they were spawned (and run, on the test's runtime).
async fn rate_checks_at_once(
    store: &Arc<RedisStore>,
    client: std::net::IpAddr,
    n: usize,
) -> Vec<Result<RateDecision, hookgate::store::StoreError>> {
    let checks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.rate_check(client).await })
        })
        .collect();
    let mut decisions = Vec::new();
    for check in checks {
        decisions.push(check.await.unwrap());
    }
    decisions
}

// ---------------------------------------------------------------------------------
// A Redis that stops answering
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn operations_on_a_redis_that_stops_answering_time_out_within_the_deadline() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = impatient_store(&redis);
    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    // Every client but this one waits for 5 s; the store's deadline is 600 ms.
    let _: () = redis
        .query(redis::cmd("CLIENT").arg("PAUSE").arg(5000).arg("ALL"))
        .await;

    let started = std::time::Instant::now();
    let (claim, rate, commit) = tokio::join!(
        store.claim("k2", "b", LONG),
        store.rate_check("192.0.2.1".parse().unwrap()),
        store.commit_unexpired("k", "a", DONE),
    );
    let took = started.elapsed();

    assert!(
        matches!(claim, Err(hookgate::store::StoreError::Timeout)),
        "{claim:?}"
    );
    assert!(
        matches!(rate, Err(hookgate::store::StoreError::Timeout)),
        "{rate:?}"
    );
    assert!(
        matches!(commit, Err(hookgate::store::StoreError::Timeout)),
        "{commit:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// A Redis that is down refuses connections: a call says so, within the deadline,
/// and is not mistaken for one that timed out (whose remedy, a silent connection
/// replaced, is another). The client's own reconnection backoff used to outlast the
/// deadline, so every call to a Redis that was down failed as "store timed out".
#[tokio::test]
async fn operations_on_a_redis_that_refuses_connections_fail_as_refused_within_the_deadline() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = impatient_store(&redis);
    redis.stop();

    let started = std::time::Instant::now();
    let claim = store.claim("k", "a", LONG).await;
    let took = started.elapsed();
    // Refusals are asked again for up to half the 600 ms deadline, so that a commit
    // asked once more after it still ends within about the deadline.
    assert!(took >= Duration::from_millis(50), "took {took:?}");
    assert!(took < Duration::from_millis(450), "took {took:?}");

    match &claim {
        Err(hookgate::store::StoreError::Unavailable(why)) => {
            assert!(why.to_lowercase().contains("refused"), "{why}")
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
}

/// A call made while Redis restarts is asked again for half the deadline, so a Redis back
/// within that answers the call itself rather than the sender's retry.
#[tokio::test]
async fn a_call_made_while_redis_restarts_is_answered_once_it_is_back_within_the_deadline() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store_from(
        config()
            .redis(&redis)
            .store_option("timeout", "1s")
            .store_option("connect_timeout", "2s"),
    );
    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    redis.stop();
    // The first call on the connection that broke fails as broken, which does not
    // prove it never ran: only a refusal is asked again.
    assert!(store.claim("k1", "a", LONG).await.is_err());

    let (claim, ()) = tokio::join!(store.claim("k2", "b", LONG), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.restart().await;
    });

    assert_eq!(claim.unwrap(), ClaimState::Won);
}

// ---------------------------------------------------------------------------------
// Redis going away under a running gateway
// ---------------------------------------------------------------------------------

/// A gateway on `redis` that gives up on it quickly, with `store.on_error = on_error`.
fn impatient(redis: &RedisServer, on_error: &str, upstream: &Upstream) -> Config {
    config()
        .redis(redis)
        .store_option("on_error", on_error)
        .impatient_store()
        .route("*", upstream)
}

#[tokio::test]
async fn with_on_error_reject_a_delivery_while_redis_is_down_is_answered_503_and_not_forwarded() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(impatient(&redis, "reject", &upstream)).await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());

    redis.stop();
    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 503, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"error": "store_unavailable"})
    );
    assert!(reply.retry_after() >= 1);
    assert_eq!(upstream.received().len(), 1);
    let ready = gw.admin("/readyz").await;
    assert_eq!(ready.status(), 503, "{ready:?}");
    assert_eq!(ready.json()["status"], "not_ready");
}

#[tokio::test]
async fn after_redis_comes_back_on_the_same_port_the_gateway_is_ready_and_forwards_again() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(impatient(&redis, "reject", &upstream)).await;
    let event = signed_event("response.completed");
    assert_eq!(gw.admin("/readyz").await.status(), 200);
    redis.stop();
    assert_eq!(gw.post(PATH, &event).await.status(), 503);

    redis.restart().await;

    let gw = &gw;
    eventually("/readyz answers 200 again", || async move {
        gw.admin("/readyz").await.status() == 200
    })
    .await;
    let retry = gw.post(PATH, &event).await;
    assert!(retry.forwarded(), "{retry:?}");
    assert_eq!(upstream.received().len(), 1);
}

/// Redis restarted while the gateway had nothing to do: the connection broke idle, and
/// the next call on it failed as broken (one that may have run, so not asked again).
/// The first delivery after every restart was answered 503 and `/readyz` said not
/// ready, however long Redis had been back; an idle connection is pinged now.
#[tokio::test]
async fn a_redis_restarted_while_the_gateway_was_idle_is_used_at_once_once_back() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().redis(&redis).route("*", &upstream)).await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());

    redis.restart().await;
    // A ping a second while idle: two and a half leave room for a busy machine.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let ready = gw.admin("/readyz").await;
    assert_eq!(ready.status(), 200, "{ready:?}");
    let reply = gw.post(PATH, &signed_event("response.completed")).await;
    assert!(reply.forwarded(), "{reply:?}");
}

/// A Redis restarted (with its data kept) while a delivery was forwarded: the commit is
/// the first command on a connection that broke while idle, which fails; asked again,
/// it finds Redis back. Lost, the key stayed in flight and was then forgotten, and the
/// sender's retry was forwarded a second time.
#[tokio::test]
async fn a_commit_after_redis_restarted_with_its_data_marks_the_delivery_done() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(config().redis(&redis).route("*", &upstream)).await;
    let event = signed_event("response.completed");
    let first = gw.client().post_in_background(PATH, &event);
    upstream.wait_for(1).await;
    redis.save().await;
    redis.restart().await;
    upstream.release();
    assert_eq!(first.await.unwrap().status(), 200);

    let retry = gw.post(PATH, &event).await;
    assert_eq!(retry.status(), 200, "{retry:?}");
    assert_eq!(retry.json()["duplicate"], true, "{retry:?}");
    assert_eq!(upstream.received().len(), 1);
}

/// A connection that goes silent (Redis failed over behind a virtual IP, a middlebox
/// dropping its packets) while new connections are answered: the call that times out
/// on it has it replaced, and the next deliveries are stored and forwarded. redis-rs
/// reconnects only once a connection broke, and this one never did: every delivery
/// was answered 503 until TCP gave up on the socket, about 15 minutes later.
#[tokio::test]
async fn a_redis_connection_gone_silent_is_replaced_after_a_timeout() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let target = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = SilencingProxy::start(target).await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store_option("redis_url", &proxy.redis_url())
            .store_option("timeout", "300ms")
            .store_option("connect_timeout", "300ms")
            .route("*", &upstream),
    )
    .await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());

    proxy.silence();
    assert_eq!(gw.post(PATH, &signed_event("a.b")).await.status(), 503);

    let gw = &gw;
    eventually(
        "a delivery forwarded over a new connection",
        || async move { gw.post(PATH, &signed_event("a.b")).await.forwarded() },
    )
    .await;
    assert_eq!(gw.admin("/readyz").await.status(), 200);
}

/// After Redis was down for longer than the client's reconnection attempts last, it
/// kept the last attempt's refusal and answered the first call after Redis was back
/// with it: a refused call never ran, so it is asked once more, on the new connection.
#[tokio::test]
async fn the_first_delivery_after_a_long_redis_outage_is_forwarded() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(impatient(&redis, "reject", &upstream)).await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());
    redis.stop();
    assert_eq!(gw.post(PATH, &signed_event("a.b")).await.status(), 503);
    // Long enough for the client's last reconnection attempt to have failed.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    redis.restart().await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;
    assert!(reply.forwarded(), "{reply:?}");
}

/// A claim whose answer did not come in time (503) but that Redis wrote after all: it
/// is taken back, so the sender's retry is forwarded once Redis answers again, instead
/// of 409 `in_flight` until the claim expired, for a delivery nobody was forwarding.
#[tokio::test]
async fn a_claim_that_timed_out_but_landed_is_taken_back() {
    late_claim_taken_back("reject", b"msg_claim_lands_late").await;
}

/// The same with `on_error = "allow"`: the delivery is forwarded unguarded, and the
/// claim that landed after was left in place, answering the retry 409 for a minute.
#[tokio::test]
async fn with_on_error_allow_a_claim_that_timed_out_but_landed_is_taken_back() {
    late_claim_taken_back("allow", b"msg_allowed_claim_lands_late").await;
}

async fn late_claim_taken_back(on_error: &str, id: &'static [u8]) {
    const HELD: Duration = Duration::from_millis(900);
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let target = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    // The claim is the one command that names the delivery's id.
    let proxy = DelayingProxy::start(target, id, HELD).await;
    let upstream = Upstream::start().await;
    // A claim left in place would hold the key for longer than the test waits.
    let gw = Gateway::start(
        config()
            .store_option("redis_url", &proxy.redis_url())
            .store_option("timeout", "300ms")
            .store_option("on_error", on_error)
            .set("dedupe", "in_flight_ttl", "\"60s\"")
            .route("*", &upstream),
    )
    .await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());
    let event = signed_raw(
        SECRET,
        std::str::from_utf8(id).unwrap(),
        now_unix(),
        r#"{"type":"response.completed"}"#,
    );

    let first = gw.post(PATH, &event).await;
    match on_error {
        "allow" => assert!(first.forwarded(), "{first:?}"),
        _ => assert_eq!(first.status(), 503, "{first:?}"),
    }
    // The claim lands after that answer (held back 900 ms; the connection it was sent
    // on replaced after the timeout), and is taken back by the release asked 1 s later:
    // the retry comes once it has landed.
    tokio::time::sleep(HELD).await;

    let (gw, event) = (&gw, &event);
    eventually("the retry forwarded", || async move {
        gw.post(PATH, event).await.forwarded()
    })
    .await;
    let forwarded = if on_error == "allow" { 3 } else { 2 };
    assert_eq!(upstream.received().len(), forwarded);
}

/// A copy arriving while the first is forwarded: Redis answers that the key is in
/// flight, then fails the script that asks for how long. `on_error = "allow"` let the
/// copy through beside the one in flight; the first answer stands instead: 409.
#[tokio::test]
async fn with_on_error_allow_a_copy_found_in_flight_is_not_forwarded_when_redis_fails_next() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::with(Behaviour::always(
        Answer::ok().after(Duration::from_secs(2)),
    ))
    .await;
    let gw = Gateway::start(impatient(&redis, "allow", &upstream)).await;
    let event = signed_event("response.completed");

    let (first, copy) = tokio::join!(gw.post(PATH, &event), async {
        upstream.wait_for(1).await;
        // Scripts refused from now on: the claim's second step fails.
        let _: String = redis
            .query(
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg("default")
                    .arg("-evalsha")
                    .arg("-eval"),
            )
            .await;
        gw.post(PATH, &event).await
    });

    assert!(first.forwarded(), "{first:?}");
    assert_eq!(copy.status(), 409, "{copy:?}");
    assert_eq!(copy.error(), "in_flight");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn with_on_error_allow_a_delivery_while_redis_is_down_is_forwarded_and_counted() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(impatient(&redis, "allow", &upstream)).await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());

    redis.stop();
    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert!(reply.forwarded(), "{reply:?}");
    assert_eq!(upstream.received().len(), 2);
    let scrape = gw.metrics().await;
    for op in ["rate_check", "claim"] {
        let fail_open = format!(r#"hookgate_store_fail_open_total{{op="{op}"}}"#);
        assert_eq!(scrape.value(&fail_open), Some(1.0), "{fail_open}");
        let errors = format!(r#"hookgate_store_errors_total{{op="{op}"}}"#);
        assert_eq!(scrape.value(&errors), Some(1.0), "{errors}");
    }
}

// ---------------------------------------------------------------------------------
// Key layout
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_forwarded_delivery_leaves_its_key_done_for_the_dedupe_ttl() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    // A slow refill, so the client's rate key outlives the request.
    let gw = Gateway::start(
        config()
            .redis(&redis)
            .dedupe_ttl("1h")
            .rate_limit(0.01, 10)
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");

    assert!(gw.post(PATH, &event).await.forwarded());

    let key = format!("hookgate:dedupe:{SOURCE}:{}", event.header("webhook-id"));
    assert_eq!(redis.get(&key).await.as_deref(), Some("done"));
    let ttl_ms = 3_600_000;
    let pttl = redis.pttl(&key).await;
    assert!(ttl_ms / 2 < pttl && pttl <= ttl_ms, "PTTL {pttl} of {key}");
    assert_eq!(
        redis.keys("hookgate:*").await,
        vec![key, "hookgate:rate:127.0.0.1".to_owned()]
    );
}

#[tokio::test]
async fn a_delivery_in_flight_holds_its_key_as_inflight_for_the_in_flight_ttl() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::with(Answer::held()).await;
    // in_flight_ttl defaults to upstream_timeout + 5s.
    let gw = Gateway::start(
        config()
            .redis(&redis)
            .upstream_timeout("60s")
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");
    let first = gw.client().post_in_background(PATH, &event);
    upstream.wait_for(1).await;

    let key = format!("hookgate:dedupe:{SOURCE}:{}", event.header("webhook-id"));
    let value = redis.get(&key).await.expect("the key exists");
    let pttl = redis.pttl(&key).await;

    assert!(value.starts_with("inflight:"), "{value}");
    assert!(30_000 < pttl && pttl <= 65_000, "PTTL {pttl} of {key}");
    upstream.release();
    assert!(first.await.unwrap().forwarded());
    assert_eq!(redis.get(&key).await.as_deref(), Some("done"));
}

#[tokio::test]
async fn a_custom_key_prefix_is_used_for_every_key() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .redis(&redis)
            .store_option("key_prefix", "tenant-a/")
            .rate_limit(0.01, 10)
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");

    assert!(gw.post(PATH, &event).await.forwarded());

    let key = format!("tenant-a/dedupe:{SOURCE}:{}", event.header("webhook-id"));
    assert_eq!(redis.get(&key).await.as_deref(), Some("done"));
    assert_eq!(
        redis.keys("*").await,
        vec![key, "tenant-a/rate:127.0.0.1".to_owned()]
    );
}

#[tokio::test]
async fn the_script_claim_for_redis_before_7_keeps_the_same_contract() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store(&redis);
    store.use_script_claims();

    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    let ClaimState::InFlight { remaining } = store.claim("k", "b", LONG).await.unwrap() else {
        panic!("a second claim must find the first in flight");
    };
    assert!(remaining <= LONG && !remaining.is_zero(), "{remaining:?}");
    assert_eq!(
        store.commit("k", "a", DONE).await.unwrap(),
        Settled::Applied
    );
    assert_eq!(store.claim("k", "c", LONG).await.unwrap(), ClaimState::Done);
}

/// Before 6.2 Redis has no `SET ... GET`: a server that needed the claim script once
/// still got the usual commit as `SET XX PX GET`, which failed on every delivery (the
/// key was never marked done). Redis here is newer, so the test reads which commands ran.
#[tokio::test]
async fn with_script_claims_the_usual_commit_is_the_script_too() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store(&redis);
    store.use_script_claims();
    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    let _: () = redis.query(redis::cmd("CONFIG").arg("RESETSTAT")).await;

    assert_eq!(
        store.commit_unexpired("k", "a", DONE).await.unwrap(),
        Settled::Applied
    );
    // The script's own commands count too: what tells is that it ran.
    let stats: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
    assert_eq!(store.claim("k", "b", LONG).await.unwrap(), ClaimState::Done);
}

/// A claim that finds another in flight asks how long it has left in the same step:
/// asked apart, a commit landing in between made it answer 409 with the done key's
/// 72 h as `Retry-After` instead of "duplicate".
#[tokio::test]
async fn a_claim_finding_another_in_flight_is_answered_in_one_step() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = redis_store(&redis);
    assert_eq!(store.claim("k", "a", LONG).await.unwrap(), ClaimState::Won);
    let _: () = redis.query(redis::cmd("CONFIG").arg("RESETSTAT")).await;

    let ClaimState::InFlight { remaining } = store.claim("k", "b", LONG).await.unwrap() else {
        panic!("a second claim must find the first in flight");
    };
    assert!(remaining <= LONG && !remaining.is_zero(), "{remaining:?}");
    // The claim script (its `PTTL` inside it), not a `PTTL` of its own.
    let stats: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
}

#[tokio::test]
async fn concurrent_operations_batched_into_one_write_each_get_their_own_reply() {
    let Some(redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let store = Arc::new(redis_store(&redis));
    for i in 0..100 {
        let won = store.claim(&format!("k{i}"), &format!("t{i}"), LONG).await;
        assert_eq!(won.unwrap(), ClaimState::Won);
    }
    // All at once, so they share writes (scripts by EVALSHA go through the batcher; the
    // first ones also take the NOSCRIPT fallback): per key one commit with the claim's
    // token, which applies, and one with another token, which must not.
    let commits: Vec<_> = (0..200)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let (i, ours) = (n % 100, n < 100);
                let token = if ours {
                    format!("t{i}")
                } else {
                    format!("other{i}")
                };
                let settled = store.commit(&format!("k{i}"), &token, DONE).await.unwrap();
                (ours, settled)
            })
        })
        .collect();
    for commit in commits {
        let (ours, settled) = commit.await.unwrap();
        let expected = if ours {
            Settled::Applied
        } else {
            Settled::Superseded
        };
        assert_eq!(settled, expected);
    }
    for i in 0..100 {
        assert_eq!(
            redis.get(&format!("hookgate:dedupe:k{i}")).await.as_deref(),
            Some("done")
        );
    }
}
