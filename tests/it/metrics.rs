//! The admin listener: `hookgate_requests_total` moves for every outcome a sender can
//! cause, upstream answers are counted by route and class, and the health endpoints.
//! Outcomes that depend on the store run against the in-memory store and Redis.

use crate::support::*;

/// Asserts the counter for `outcome` went from 0 to 1 around `cause`.
async fn counts_once<F>(gw: &Gateway, source: &str, outcome: &str, cause: F)
where
    F: std::future::Future<Output = ()>,
{
    assert_eq!(
        gw.metrics().await.requests(source, outcome),
        0,
        "{outcome} before"
    );
    cause.await;
    assert_eq!(
        gw.metrics().await.requests(source, outcome),
        1,
        "{outcome} after"
    );
}

async fn forwarding_gateway() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    (upstream, gw)
}

#[tokio::test]
async fn a_forwarded_delivery_counts_as_forwarded_and_as_a_2xx_of_its_route() {
    let (_upstream, gw) = forwarding_gateway().await;

    counts_once(&gw, SOURCE, "forwarded", async {
        assert_eq!(
            gw.post(PATH, &signed_event("response.completed"))
                .await
                .status(),
            200
        );
    })
    .await;

    assert_eq!(gw.metrics().await.upstream_responses("openai/0", "2xx"), 1);
}

#[tokio::test]
async fn upstream_answers_are_labelled_with_the_route_name_when_it_has_one() {
    let upstream = Upstream::with(Behaviour::sequence([Answer::status(503), Answer::ok()])).await;
    let gw = Gateway::start(
        config()
            .named_route("responses", "response.*", &upstream)
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");

    assert_eq!(gw.post(PATH, &event).await.status(), 503);
    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    assert_eq!(
        gw.post(PATH, &signed_event("batch.completed"))
            .await
            .status(),
        200
    );

    let scrape = gw.metrics().await;
    assert_eq!(scrape.upstream_responses("openai/responses", "5xx"), 1);
    assert_eq!(scrape.upstream_responses("openai/responses", "2xx"), 1);
    assert_eq!(scrape.upstream_responses("openai/1", "2xx"), 1);
}

async fn a_duplicate_counts_as_duplicate(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");
    assert_eq!(gw.post(PATH, &event).await.status(), 200);

    counts_once(&gw, SOURCE, "duplicate", async {
        assert_eq!(gw.post(PATH, &event).await.json()["duplicate"], true);
    })
    .await;
}

async fn a_copy_refused_while_in_flight_counts_as_in_flight(store: TestStore) {
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");
    let first = gw.client().post_in_background(PATH, &event);
    upstream.wait_for(1).await;

    counts_once(&gw, SOURCE, "in_flight", async {
        assert_eq!(gw.post(PATH, &event).await.status(), 409);
    })
    .await;

    upstream.release();
    assert_eq!(first.await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_bad_signature_counts_as_invalid_signature() {
    let (_upstream, gw) = forwarding_gateway().await;

    counts_once(&gw, SOURCE, "invalid_signature", async {
        let forged = signed_event_with(OTHER_SECRET, "response.completed");
        assert_eq!(gw.post(PATH, &forged).await.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn an_old_timestamp_counts_as_stale() {
    let (_upstream, gw) = forwarding_gateway().await;

    counts_once(&gw, SOURCE, "stale", async {
        let old = signed_raw(
            SECRET,
            &fresh_id(),
            now_unix() - 3600,
            r#"{"type":"response.completed"}"#,
        );
        assert_eq!(gw.post(PATH, &old).await.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn a_body_without_an_event_type_counts_as_invalid_payload() {
    let (_upstream, gw) = forwarding_gateway().await;

    counts_once(&gw, SOURCE, "invalid_payload", async {
        assert_eq!(
            gw.post(PATH, &signed_body(r#"{"data":{}}"#)).await.status(),
            400
        );
    })
    .await;
}

#[tokio::test]
async fn an_event_without_a_route_counts_as_unrouted() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("response.*", &upstream)).await;

    counts_once(&gw, SOURCE, "unrouted", async {
        assert_eq!(
            gw.post(PATH, &signed_event("batch.completed"))
                .await
                .status(),
            202
        );
    })
    .await;
}

async fn a_request_over_the_rate_limit_counts_as_rate_limited(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .rate_limit(0.01, 1)
            .route("*", &upstream),
    )
    .await;
    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );

    counts_once(&gw, SOURCE, "rate_limited", async {
        assert_eq!(
            gw.post(PATH, &signed_event("response.completed"))
                .await
                .status(),
            429
        );
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_cap_counts_as_too_large() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().max_body_bytes(64).route("*", &upstream)).await;

    counts_once(&gw, SOURCE, "too_large", async {
        let big = signed_body(&format!(r#"{{"type":"a","pad":"{}"}}"#, "x".repeat(128)));
        assert_eq!(gw.post(PATH, &big).await.status(), 413);
    })
    .await;
}

#[tokio::test]
async fn an_upstream_failure_counts_as_upstream_error_and_as_its_class() {
    let upstream = Upstream::with(Answer::status(500)).await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    counts_once(&gw, SOURCE, "upstream_error", async {
        assert_eq!(
            gw.post(PATH, &signed_event("response.completed"))
                .await
                .status(),
            500
        );
    })
    .await;

    assert_eq!(gw.metrics().await.upstream_responses("openai/0", "5xx"), 1);
}

#[tokio::test]
async fn an_upstream_timeout_counts_as_upstream_timeout() {
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(config().upstream_timeout("1s").route("*", &upstream)).await;

    counts_once(&gw, SOURCE, "upstream_timeout", async {
        assert_eq!(
            gw.post(PATH, &signed_event("response.completed"))
                .await
                .status(),
            504
        );
    })
    .await;

    assert_eq!(
        gw.metrics().await.upstream_responses("openai/0", "timeout"),
        1
    );
}

#[tokio::test]
async fn a_request_for_an_unknown_path_counts_as_not_found_under_source_none() {
    let (_upstream, gw) = forwarding_gateway().await;

    counts_once(&gw, "none", "not_found", async {
        let reply = gw
            .post("/webhooks/nobody", &signed_event("response.completed"))
            .await;
        assert_eq!(reply.status(), 404);
    })
    .await;
}

#[tokio::test]
async fn healthz_answers_200() {
    let (_upstream, gw) = forwarding_gateway().await;

    let reply = gw.admin("/healthz").await;

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.json()["status"], "ok");
}

async fn readyz_answers_200_while_the_store_answers(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;

    let reply = gw.admin("/readyz").await;

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.json()["status"], "ready");
}

on_each_store! {
    a_duplicate_counts_as_duplicate,
    a_copy_refused_while_in_flight_counts_as_in_flight,
    a_request_over_the_rate_limit_counts_as_rate_limited,
    readyz_answers_200_while_the_store_answers,
}
