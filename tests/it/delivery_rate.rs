//! `rate = { per_second, burst }` in queue mode: deliveries started per second to each
//! upstream, measured at the upstream; across two instances sharing one Redis.

use std::time::Duration;

use crate::support::*;

fn rated(store: &TestStore, to: impl Target, rate: &str) -> Config {
    config()
        .store(store)
        .queued()
        .route("*", to)
        .route_option("rate", rate)
        .upstream_timeout("5s")
        .queue_option("workers", "8")
        .queue_option("visibility_timeout", r#""1s""#)
}

/// The gaps between the arrivals the upstream saw, in order.
fn spans(upstream: &Upstream) -> (usize, Duration) {
    let mut at: Vec<_> = upstream.received().into_iter().map(|r| r.at).collect();
    at.sort();
    (at.len(), at[at.len() - 1] - at[0])
}

#[tokio::test]
async fn rate_is_honoured_at_the_upstream_across_two_instances_sharing_redis() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let rate = r#"{ per_second = 10, burst = 2 }"#;
    let a = Gateway::start(rated(&store, &upstream, rate)).await;
    let b = Gateway::start(rated(&store, &upstream, rate)).await;
    let deliveries = Deliveries::of(&a);

    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        enqueue(&gw.client(), &signed_event("batch.completed")).await;
    }
    upstream.wait_for(20).await;
    deliveries.wait_for_count("processed", 20).await;

    // 10/s with a burst of 2: the first 2 at once, then one per 100 ms: 20 take >= 1.8 s.
    let (count, span) = spans(&upstream);
    assert_eq!(count, 20);
    assert!(span >= Duration::from_millis(1700), "{span:?}");
    // However the enqueues were spread in time: no 5 arrivals in a row within 300 ms
    // (2 at once and one per 100 ms), which a bucket per instance (20/s together)
    // would let through. 100 ms of slack for the machine's scheduling.
    let mut at: Vec<_> = upstream.received().into_iter().map(|r| r.at).collect();
    at.sort();
    for five in at.windows(5) {
        let within = five[4] - five[0];
        assert!(
            within >= Duration::from_millis(200),
            "5 arrivals within {within:?}"
        );
    }
    // No attempt was spent on waiting: every delivery took one.
    for record in deliveries.list("status=processed").await {
        assert_eq!(record["attempts"], 1, "{record:#}");
    }
    // Both instances delivered some: the bucket is shared, not one per instance.
    let mut instances = std::collections::HashSet::new();
    for record in deliveries.list("status=processed").await {
        let id = record["id"].as_str().unwrap().to_owned();
        let detail = deliveries.record(&id).await;
        instances.insert(
            detail["history"][0]["instance"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
}

on_each_store!(rate_spaces_deliveries_to_one_upstream_and_spends_no_attempt_waiting);

/// `n` deliveries queued at once to a route started 20 times a second, all delivered.
async fn delivered_at_20_a_second(store: &TestStore, n: usize) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(rated(store, &upstream, r#"{ per_second = 20, burst = 1 }"#)).await;
    for _ in 0..n {
        enqueue(&gw.client(), &signed_event("batch.completed")).await;
    }
    Deliveries::of(&gw).wait_for_count("processed", n).await;
    (upstream, gw)
}

async fn rate_spaces_deliveries_to_one_upstream_and_spends_no_attempt_waiting(store: TestStore) {
    let (upstream, gw) = delivered_at_20_a_second(&store, 10).await;
    let deliveries = Deliveries::of(&gw);

    let (count, span) = spans(&upstream);
    assert_eq!(count, 10);
    assert!(
        span >= Duration::from_millis(400),
        "9 gaps of 50 ms at least: {span:?}"
    );
    for record in deliveries.list("status=processed").await {
        assert_eq!(record["attempts"], 1, "{record:#}");
    }
}

#[test]
fn rate_in_proxy_mode_and_bad_rates_are_config_errors_naming_the_key_and_line() {
    let text = config()
        .route("*", NOWHERE)
        .route_option("rate", r#"{ per_second = 5 }"#)
        .to_string();
    let e = hookgate::config::parse(&text, "test.toml").expect_err("refused");
    assert_eq!(e.key.as_deref(), Some("sources[0].routes[0].rate"));
    assert!(e.message.contains("only applies to queue mode"), "{e}");
    assert!(e.line.is_some(), "{e}");
    for (toml, key) in [
        (
            r#"{ per_second = 0 }"#,
            "sources[0].routes[0].rate.per_second",
        ),
        (
            r#"{ per_second = -1.5 }"#,
            "sources[0].routes[0].rate.per_second",
        ),
        // Slower than one start per 100 years: its wait overflowed the clock, and the
        // worker attempting it panicked, leaving the delivery taken for good.
        (
            r#"{ per_second = 1e-20 }"#,
            "sources[0].routes[0].rate.per_second",
        ),
        (
            r#"{ per_second = 1e-6, burst = 4000000 }"#,
            "sources[0].routes[0].rate.per_second",
        ),
        (
            r#"{ per_second = 5, burst = 0 }"#,
            "sources[0].routes[0].rate.burst",
        ),
    ] {
        let text = config()
            .queued()
            .route("*", NOWHERE)
            .route_option("rate", toml)
            .to_string();
        let e = hookgate::config::parse(&text, "test.toml").expect_err("refused");
        assert_eq!(e.key.as_deref(), Some(key), "{toml}: {e}");
        assert!(e.line.is_some(), "{e}");
    }
    let text = config()
        .queued()
        .route("*", NOWHERE)
        .route_option("rate", r#"{ per_second = 2.5 }"#)
        .to_string();
    let summary = hookgate::config::parse(&text, "test.toml")
        .unwrap()
        .summary();
    assert!(
        summary.contains("rate: 2.5 deliveries started per second to each upstream, burst 3"),
        "{summary}"
    );
}

/// Deliveries the rate put back each wait for a turn of their own: told the same wait,
/// a backlog came back all at once every interval, one started and the rest were paced
/// and put back again, a store round trip each (about `workers - 1` defers per start).
async fn a_backlog_held_back_by_rate_is_put_back_about_once_per_delivery(store: TestStore) {
    let (upstream, gw) = delivered_at_20_a_second(&store, 30).await;
    assert_eq!(spans(&upstream).0, 30);
    let defers = gw
        .metrics()
        .await
        .value(r#"hookgate_store_duration_seconds_count{op="defer"}"#)
        .unwrap_or(0.0);
    // Each of the 29 after the first put back about once: a turn missed by a worker's
    // poll puts one back at the end, so up to 3 each; without turns, 8 workers made
    // about 7 defers per start (some 400 in all).
    assert!(defers <= 90.0, "{defers} defers for 30 deliveries");
}

#[tokio::test]
async fn a_backlog_held_back_by_rate_is_put_back_about_once_per_delivery_on_redis() {
    if let Some(store) = TestStore::redis().await {
        a_backlog_held_back_by_rate_is_put_back_about_once_per_delivery(store).await;
    }
}

#[tokio::test]
async fn a_backlog_held_back_by_rate_is_put_back_about_once_per_delivery_on_postgres() {
    if let Some(store) = TestStore::postgres() {
        a_backlog_held_back_by_rate_is_put_back_about_once_per_delivery(store).await;
    }
}

/// A burst larger than `rate × max_age` dead-letters what could not start in time; the
/// turns handed to those are given back. Kept, each pushed every later turn out an
/// interval, and once the burst was over a lone delivery the bucket refused for a
/// moment got a turn past its `max_age` and was dead-lettered unsent, the route idle.
#[tokio::test]
async fn turns_of_deliveries_dead_lettered_in_a_burst_are_not_kept_from_later_ones() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        rated(
            &TestStore::Memory,
            &upstream,
            r#"{ per_second = 2, burst = 1 }"#,
        )
        .queue_option("max_age", r#""3s""#),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    for _ in 0..30 {
        enqueue(&gw.client(), &signed_event("batch.completed")).await;
    }
    eventually("the burst settled", async || {
        let list = deliveries.list("").await;
        list.iter()
            .all(|d| d["state"] == "processed" || d["state"] == "failed_final")
    })
    .await;
    let sent = upstream.received().len();
    assert!(
        (4..30).contains(&sent),
        "{sent} of 30 within max_age at 2/s"
    );

    // The route is idle: two at once, the second a turn (half a second) behind.
    let a = enqueue(&gw.client(), &signed_event("batch.completed")).await;
    let b = enqueue(&gw.client(), &signed_event("batch.completed")).await;
    deliveries.wait_for_state(&a, "processed").await;
    let record = deliveries.wait_for_state(&b, "processed").await;
    assert_eq!(record["attempts"], 1, "{record:#}");
}
