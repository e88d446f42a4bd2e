//! Fan-out: a queue-mode route with several `upstreams` gives each its own delivery
//! (record, attempts, retries, dead letter, replay), all stored before the 202, on the
//! in-memory queue and on Redis.

use crate::support::*;

const BACKOFF: &str = r#"{ initial = "100ms", max = "400ms", jitter = false }"#;

/// A queue-mode gateway on `store` whose one route fans out to `upstreams` (TOML list).
fn fanout_config(store: &TestStore, upstreams: &str) -> Config {
    config()
        .store(store)
        .queued()
        .named_route("batches", "*", NOWHERE)
        .route_option("upstreams", upstreams)
        .upstream_timeout("5s")
        .queue_option("workers", "4")
        .queue_option("backoff", BACKOFF)
        .queue_option("max_attempts", "1000")
        .queue_option("visibility_timeout", r#""1s""#)
}

/// The ids a fan-out 202 lists, one per upstream.
async fn enqueue_copies(gw: &Gateway, event: &hookgate::sign::SignedRequest) -> Vec<String> {
    let reply = gw.post(PATH, event).await;
    assert_eq!(reply.status(), 202, "{reply:?}");
    let json = reply.json();
    let ids: Vec<String> = json["delivery_ids"]
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(json["delivery_id"], ids[0].as_str());
    ids
}

on_each_store!(
    fanout_to_three_upstreams_one_down_delivers_each_once_with_its_own_record,
    a_repeat_of_a_fanned_out_delivery_stores_nothing,
    deliveries_list_filters_by_upstream,
    a_dead_letter_of_one_upstream_is_replayed_to_that_upstream_alone,
);

async fn fanout_to_three_upstreams_one_down_delivers_each_once_with_its_own_record(
    store: TestStore,
) {
    let billing = Upstream::start().await;
    let analytics = Upstream::start().await;
    let down = closed_port().await;
    let gw = Gateway::start(fanout_config(
        &store,
        &format!(
            r#"["{}", {{ url = "{}", name = "analytics" }}, "http://{down}/hooks"]"#,
            billing.url("/hooks"),
            analytics.url("/hooks"),
        ),
    ))
    .await;
    let deliveries = Deliveries::of(&gw);
    let event = signed_event("batch.completed");

    let ids = enqueue_copies(&gw, &event).await;
    assert_eq!(ids.len(), 3);
    let first = deliveries.wait_for_state(&ids[0], "processed").await;
    let second = deliveries.wait_for_state(&ids[1], "processed").await;
    assert_eq!(first["route"], "batches/0");
    assert_eq!(second["route"], "batches/analytics");
    eventually("the third copy being retried", async || {
        deliveries.record(&ids[2]).await["attempts"].as_u64() >= Some(2)
    })
    .await;
    let third = deliveries.record(&ids[2]).await;
    assert_eq!(third["route"], "batches/2");
    assert_ne!(third["state"], "processed");

    let recovered = Upstream::with_at(down, Answer::ok()).await;
    let third = deliveries.wait_for_state(&ids[2], "processed").await;
    assert!(third["attempts"].as_u64() >= Some(2), "{third:#}");

    let webhook_id = event.header("webhook-id");
    for (upstream, id) in [
        (&billing, &ids[0]),
        (&analytics, &ids[1]),
        (&recovered, &ids[2]),
    ] {
        let got = upstream.only();
        assert_eq!(got.header("webhook-id"), webhook_id);
        assert_eq!(got.header("x-hookgate-delivery-id"), id.as_str());
        assert_eq!(got.body, event.body.as_bytes());
    }
    for record in [&first, &second, &third] {
        assert_eq!(record["webhook_id"], webhook_id);
    }
    assert_eq!(first["attempts"], 1);
    assert_eq!(second["attempts"], 1);
}

async fn a_repeat_of_a_fanned_out_delivery_stores_nothing(store: TestStore) {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let gw = Gateway::start(fanout_config(
        &store,
        &format!(r#"["{}", "{}"]"#, a.url("/hooks"), b.url("/hooks")),
    ))
    .await;
    let deliveries = Deliveries::of(&gw);
    let event = signed_event("batch.completed");

    let ids = enqueue_copies(&gw, &event).await;
    for id in &ids {
        deliveries.wait_for_state(id, "processed").await;
    }
    let again = gw.post(PATH, &event).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json()["duplicate"], true);

    let stored = deliveries
        .list(&format!("search={}", event.header("webhook-id")))
        .await;
    assert_eq!(stored.len(), 2, "{stored:#?}");
    assert_eq!(a.received().len(), 1);
    assert_eq!(b.received().len(), 1);
}

async fn deliveries_list_filters_by_upstream(store: TestStore) {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let gw = Gateway::start(fanout_config(
        &store,
        &format!(
            r#"["{}", {{ url = "{}", name = "audit" }}]"#,
            a.url("/hooks"),
            b.url("/hooks")
        ),
    ))
    .await;
    let deliveries = Deliveries::of(&gw);
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(enqueue_copies(&gw, &signed_event("batch.completed")).await);
    }

    let audit = deliveries.list("route=batches&upstream=audit").await;
    let first = deliveries.list("route=batches/0").await;
    assert_eq!(audit.len(), 3, "{audit:#?}");
    assert_eq!(first.len(), 3, "{first:#?}");
    assert!(audit.iter().all(|d| d["route"] == "batches/audit"));
    assert!(first.iter().all(|d| d["route"] == "batches/0"));
    let refused = deliveries
        .request(http::Method::GET, "/deliveries?upstream=audit")
        .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json()["error"], "upstream_needs_route");
}

async fn a_dead_letter_of_one_upstream_is_replayed_to_that_upstream_alone(store: TestStore) {
    let good = Upstream::start().await;
    let refusing = Upstream::with(Behaviour::sequence([Answer::status(400), Answer::ok()])).await;
    let gw = Gateway::start(fanout_config(
        &store,
        &format!(
            r#"["{}", "{}"]"#,
            good.url("/hooks"),
            refusing.url("/hooks")
        ),
    ))
    .await;
    let deliveries = Deliveries::of(&gw);

    let ids = enqueue_copies(&gw, &signed_event("batch.completed")).await;
    deliveries.wait_for_state(&ids[0], "processed").await;
    deliveries.wait_for_state(&ids[1], "failed_final").await;
    let replay = deliveries
        .request(
            http::Method::POST,
            &format!("/deliveries/{}/replay", ids[1]),
        )
        .await;
    assert_eq!(replay.status(), 200, "{replay:?}");
    deliveries.wait_for_state(&ids[1], "processed").await;

    assert_eq!(good.received().len(), 1);
    assert_eq!(refusing.received().len(), 2);
}

/// The config error for the last route with `key = toml`, on a proxy or queue source.
fn route_error(queued: bool, key: &str, toml: &str) -> hookgate::ConfigError {
    let mut config = config();
    if queued {
        config = config.queued();
    }
    let text = config
        .route("*", NOWHERE)
        .route_option(key, toml)
        .to_string();
    hookgate::config::parse(&text, "test.toml").expect_err("the config is refused")
}

#[test]
fn fanout_in_proxy_mode_is_a_config_error_that_says_it_needs_queue_mode() {
    let e = route_error(false, "upstreams", r#"["http://a/", "http://b/"]"#);
    assert_eq!(e.key.as_deref(), Some("sources[0].routes[0].upstreams"));
    assert!(
        e.message.contains("fan-out needs delivery = \"queue\""),
        "{e}"
    );
    assert!(e.line.is_some(), "{e}");
    // One upstream in a list is no fan-out: fine in proxy mode.
    let text = config()
        .route("*", NOWHERE)
        .route_option("upstreams", r#"["http://a/"]"#)
        .to_string();
    hookgate::config::parse(&text, "test.toml").expect("one upstream is fine");
}

#[test]
fn every_bad_upstreams_list_is_a_config_error_naming_its_key_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"["http://a/", "ftp://b/"]"#,
            "sources[0].routes[0].upstreams[1]",
            "http",
        ),
        (r#"[]"#, "sources[0].routes[0]", "has no upstream"),
        (
            r#"[{ url = "http://a/", name = "x" }, { url = "http://b/", name = "x" }]"#,
            "sources[0].routes[0].upstreams[1].name",
            "already used",
        ),
        (
            r#"[{ url = "http://a/", name = "1" }, "http://b/"]"#,
            "sources[0].routes[0].upstreams[1].name",
            "already used",
        ),
        (
            r#"[{ url = "http://a/", name = "bad name" }, "http://b/"]"#,
            "sources[0].routes[0].upstreams[0].name",
            "must be 1 to 64",
        ),
    ];
    for (toml, key, says) in cases {
        let text = config()
            .queued()
            .route("*", NOWHERE)
            .route_option("upstreams", toml)
            .to_string();
        let e = hookgate::config::parse(&text, "test.toml").expect_err("refused");
        assert_eq!(e.key.as_deref(), Some(*key), "{toml}: {e}");
        assert!(e.message.contains(says), "{toml}: {e}");
        assert!(e.line.is_some(), "{toml}: {e}");
    }
    // Both keys at once.
    let text = config()
        .queued()
        .route("*", NOWHERE)
        .route_option("upstream_", "1")
        .to_string()
        .replace("upstream_ = 1", r#"upstreams = ["http://b/"]"#);
    let e = hookgate::config::parse(&text, "test.toml").expect_err("refused");
    assert!(e.message.contains("has both upstream and upstreams"), "{e}");
}

#[test]
fn check_lists_each_upstream_of_a_fanout_route_with_the_route_its_deliveries_are_under() {
    let text = config()
        .queued()
        .named_route("batches", "batch.*", NOWHERE)
        .route_option(
            "upstreams",
            r#"["http://billing.internal/hooks", { url = "http://audit.internal/hooks", name = "audit" }]"#,
        )
        .to_string();
    let summary = hookgate::config::parse(&text, "test.toml")
        .unwrap()
        .summary();
    assert!(summary.contains("fan-out to 2 upstreams"), "{summary}");
    assert!(
        summary.contains(
            "upstream audit -> http://audit.internal/hooks (deliveries listed as route batches/audit)"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("upstream 0 -> http://billing.internal/hooks"),
        "{summary}"
    );
}

/// A delivery is stored under `batches` while its route has one upstream and under
/// `batches/<upstream>` once it has several. A reload that changes the count in either
/// direction still delivers what was queued before, to the upstream it was for (they
/// waited for a route no instance had until `max_age` dead-lettered them).
#[tokio::test]
async fn deliveries_queued_before_a_reload_that_changes_the_count_of_upstreams_are_delivered() {
    let down = closed_port().await;
    let billing = Upstream::start().await;
    let audit = Upstream::start().await;
    let upstreams = |list: &str| fanout_config(&TestStore::Memory, list);
    let billing_down = format!(r#"{{ url = "http://{down}/hooks", name = "billing" }}"#);
    let billing_up = format!(
        r#"{{ url = "{}", name = "billing" }}"#,
        billing.url("/hooks")
    );
    let audit_up = format!(r#"{{ url = "{}", name = "audit" }}"#, audit.url("/hooks"));

    // One upstream, then two.
    let file = ConfigFile::new(upstreams(&format!("[{billing_down}]")));
    let gw = Gateway::start_file(&file.path()).await;
    let deliveries = Deliveries::of(&gw);
    let single = enqueue(&gw.client(), &signed_event("batch.completed")).await;
    eventually("the delivery retried", async || {
        deliveries.record(&single).await["attempts"].as_u64() >= Some(1)
    })
    .await;
    file.write(upstreams(&format!("[{billing_up}, {audit_up}]")));
    gw.reload().await.expect("a valid file");
    let record = deliveries.wait_for_state(&single, "processed").await;
    assert_eq!(record["route"], "batches", "{record:#}");
    assert_eq!(billing.received().len(), 1);
    assert!(audit.received().is_empty(), "it was for billing alone");

    // Two upstreams, then the one whose copy still waits.
    file.write(upstreams(&format!("[{billing_down}, {audit_up}]")));
    gw.reload().await.expect("a valid file");
    let ids = enqueue_copies(&gw, &signed_event("batch.completed")).await;
    deliveries.wait_for_state(&ids[1], "processed").await;
    eventually("billing's copy retried", async || {
        deliveries.record(&ids[0]).await["attempts"].as_u64() >= Some(1)
    })
    .await;
    file.write(upstreams(&format!("[{billing_up}]")));
    gw.reload().await.expect("a valid file");
    let record = deliveries.wait_for_state(&ids[0], "processed").await;
    assert_eq!(record["route"], "batches/billing", "{record:#}");
    assert_eq!(billing.received().len(), 2);
}
