//! When the upstream fails: what the sender is told, and that the claim is released so
//! the sender's retry is forwarded again (against the in-memory store and Redis).

use std::time::Duration;

use crate::support::*;

async fn an_upstream_500_is_passed_through_with_its_body_and_the_retry_is_forwarded(
    store: TestStore,
) {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(500)
            .body("backend exploded")
            .header("content-type", "text/plain"),
        Answer::ok(),
    ]))
    .await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    let failed = gw.post(PATH, &event).await;
    let retry = gw.post(PATH, &event).await;

    assert_eq!(failed.status(), 500);
    assert_eq!(failed.text(), "backend exploded");
    assert_eq!(failed.header("content-type"), Some("text/plain"));
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.json(), serde_json::json!({"ok": true}));
    assert_eq!(upstream.received().len(), 2);
}

async fn an_upstream_4xx_is_passed_through_and_the_retry_is_forwarded(store: TestStore) {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(422).body(r#"{"error":"unknown customer"}"#),
        Answer::ok(),
    ]))
    .await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    let failed = gw.post(PATH, &event).await;
    let retry = gw.post(PATH, &event).await;

    assert_eq!(failed.status(), 422);
    assert_eq!(failed.text(), r#"{"error":"unknown customer"}"#);
    assert_eq!(retry.status(), 200);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn an_upstream_redirect_is_answered_502_and_never_passed_through() {
    let upstream = Upstream::with(
        Answer::status(301)
            .body("moved")
            .header("location", "https://elsewhere.example/hooks"),
    )
    .await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 502);
    assert_eq!(reply.error(), "upstream_redirect");
    assert_eq!(reply.header("location"), None);
    assert_eq!(upstream.received().len(), 1);
}

/// A status from 600 to 999 is no HTTP status a sender knows: the gateway's own 502, and
/// counted as such (it was relayed, and counted under `1xx`).
#[tokio::test]
async fn an_upstream_status_past_599_is_answered_502_and_counted_as_no_class() {
    let upstream = Upstream::with(Answer::status(600).body("weird")).await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let event = signed_event("response.completed");

    let reply = gw.post(PATH, &event).await;

    assert_eq!(reply.status(), 502);
    assert_eq!(reply.error(), "upstream_failed");
    let scrape = gw.metrics().await;
    let class = |class: &str| {
        scrape.value(&format!(
            r#"hookgate_upstream_responses_total{{class="{class}",route="openai/0"}}"#
        ))
    };
    assert_eq!((class("other"), class("1xx")), (Some(1.0), Some(0.0)));
    // The claim was released: the retry is forwarded again.
    assert_eq!(gw.post(PATH, &event).await.status(), 502);
    assert_eq!(upstream.received().len(), 2);
}

async fn an_upstream_410_is_answered_502_so_the_sender_does_not_disable_the_endpoint(
    store: TestStore,
) {
    let upstream = Upstream::with(Answer::status(410).body("gone")).await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    let reply = gw.post(PATH, &event).await;

    assert_eq!(reply.status(), 502);
    assert_eq!(reply.error(), "upstream_gone");
    // The claim was released: the retry is forwarded (and fails the same way).
    assert_eq!(gw.post(PATH, &event).await.status(), 502);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn an_unreachable_upstream_is_answered_502_upstream_unreachable() {
    let nowhere = closed_port().await;
    let gw = Gateway::start(config().route("*", format!("http://{nowhere}/hooks"))).await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 502);
    assert_eq!(reply.error(), "upstream_unreachable");
}

async fn an_upstream_slower_than_the_timeout_is_answered_504_and_the_retry_is_forwarded(
    store: TestStore,
) {
    // The first answer never comes; the second is immediate.
    let upstream = Upstream::with(Behaviour::sequence([Answer::held(), Answer::ok()])).await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .upstream_timeout("1s")
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");

    let timed_out = gw.post(PATH, &event).await;
    let retry = gw.post(PATH, &event).await;

    assert_eq!(timed_out.status(), 504);
    assert_eq!(timed_out.error(), "upstream_timeout");
    assert_eq!(retry.status(), 200, "{retry:?}");
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_slow_upstream_that_answers_within_the_timeout_is_forwarded() {
    let upstream = Upstream::with(Answer::ok().after(Duration::from_millis(300))).await;
    let gw = Gateway::start(config().upstream_timeout("30s").route("*", &upstream)).await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.received().len(), 1);
}

on_each_store! {
    an_upstream_500_is_passed_through_with_its_body_and_the_retry_is_forwarded,
    an_upstream_4xx_is_passed_through_and_the_retry_is_forwarded,
    an_upstream_410_is_answered_502_so_the_sender_does_not_disable_the_endpoint,
    an_upstream_slower_than_the_timeout_is_answered_504_and_the_retry_is_forwarded,
}

/// A 2xx body is relayed up to 64 KiB; past that the sender gets the status alone (no
/// body, no `Content-Type`), as the README's status table says.
#[tokio::test]
async fn a_2xx_body_over_64_kib_is_relayed_as_the_status_alone() {
    let long: &'static str = Box::leak("x".repeat(80 * 1024).into_boxed_str());
    let fits: &'static str = Box::leak("y".repeat(60 * 1024).into_boxed_str());
    for (body, relayed) in [(long, ""), (fits, fits)] {
        let upstream =
            Upstream::with(Answer::ok().body(body).header("content-type", "text/plain")).await;
        let gw = Gateway::start(config().route("*", &upstream)).await;
        let reply = gw.post(PATH, &signed_event("response.completed")).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text(), relayed);
        assert_eq!(
            reply.header("content-type").is_some(),
            !relayed.is_empty(),
            "{reply:?}"
        );
    }
}
