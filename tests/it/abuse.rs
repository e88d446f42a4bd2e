//! Abuse controls on the request path: a source's `allow_ips`, and the penalty box for
//! clients that keep failing verification. Both answer before the body is read.

use crate::support::*;

#[tokio::test]
async fn a_client_outside_the_sources_allow_ips_is_answered_403_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .allow_ips(&["192.0.2.0/24", "2001:db8::/32"])
            .route("*", &upstream),
    )
    .await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 403, "{reply:?}");
    assert_eq!(reply.error(), "ip_not_allowed");
    assert!(upstream.received().is_empty());
    assert_eq!(gw.metrics().await.requests(SOURCE, "ip_not_allowed"), 1);
}

#[tokio::test]
async fn a_client_inside_the_sources_allow_ips_is_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .allow_ips(&["192.0.2.0/24", "127.0.0.0/8"])
            .route("*", &upstream),
    )
    .await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn allow_ips_judges_the_client_a_trusted_proxy_names() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("rate_limit", "trusted_proxies", r#"["127.0.0.1/32"]"#)
            .allow_ips(&["198.51.100.0/24"])
            .route("*", &upstream),
    )
    .await;

    let sender = signed_event("response.completed").with_header("x-forwarded-for", "198.51.100.7");
    let stranger = signed_event("response.completed").with_header("x-forwarded-for", "203.0.113.9");

    assert_eq!(gw.post(PATH, &sender).await.status(), 200);
    assert_eq!(gw.post(PATH, &stranger).await.status(), 403);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn a_client_failing_verification_too_often_is_refused_429_penalty_box_before_its_body_is_read()
 {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("penalty_box", "max_failures", "3")
            .set("penalty_box", "cooldown", "\"10m\"")
            .route("*", &upstream),
    )
    .await;
    let forged = || signed_event_with(OTHER_SECRET, "response.completed");
    for _ in 0..4 {
        let (status, _) = post_from("127.0.0.2", gw.addr(), &forged()).await;
        assert_eq!(status, 400);
    }

    // A head announcing a body that never comes: the answer cannot have waited for it.
    let mut stream = connect_from("127.0.0.2", gw.addr()).await.unwrap();
    send_head(
        &mut stream,
        &delivery_head(&signed_event("response.completed")),
    )
    .await;
    let (received, _) = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&received);
    let (other_ip, _) =
        post_from("127.0.0.3", gw.addr(), &signed_event("response.completed")).await;

    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains(r#"{"error":"penalty_box"}"#), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 600"),
        "{text}"
    );
    assert_eq!(other_ip, 200);
    assert_eq!(upstream.received().len(), 1);
    let scrape = gw.metrics().await;
    assert_eq!(scrape.requests(SOURCE, "penalty_box"), 1);
    assert_eq!(scrape.value("hookgate_penalty_box_total"), Some(1.0));
}

#[tokio::test]
async fn failures_up_to_max_failures_do_not_box_a_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("penalty_box", "max_failures", "3")
            .route("*", &upstream),
    )
    .await;
    for _ in 0..3 {
        let reply = gw
            .post(PATH, &signed_event_with(OTHER_SECRET, "response.completed"))
            .await;
        assert_eq!(reply.error(), "invalid_signature");
    }

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(
        gw.metrics().await.value("hookgate_penalty_box_total"),
        Some(0.0)
    );
}

/// A sender's addresses (`allow_ips`) are shared by all its customers: anyone with an
/// account there can have it send requests signed with their own secret here. Those
/// failures put the sender in the penalty box, and its genuine deliveries were refused.
#[tokio::test]
async fn failures_from_a_sources_allowed_addresses_never_box_the_sender() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("penalty_box", "max_failures", "3")
            .allow_ips(&["127.0.0.0/8"])
            .route("*", &upstream),
    )
    .await;
    for _ in 0..10 {
        let (status, _) = post_from(
            "127.0.0.2",
            gw.addr(),
            &signed_event_with(OTHER_SECRET, "response.completed"),
        )
        .await;
        assert_eq!(status, 400);
    }

    let (status, _) = post_from("127.0.0.2", gw.addr(), &signed_event("response.completed")).await;

    assert_eq!(status, 200);
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(
        gw.metrics().await.value("hookgate_penalty_box_total"),
        Some(0.0)
    );
}

/// Boxed through another source (one without `allow_ips`, where failures count), a
/// sender's shared address still reaches the source that lists it.
#[tokio::test]
async fn a_sender_boxed_through_another_source_still_reaches_the_source_that_lists_it() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("penalty_box", "max_failures", "3")
            .allow_ips(&["127.0.0.0/8"])
            .route("*", &upstream)
            .source("other", "/webhooks/other")
            .route("*", &upstream),
    )
    .await;
    for _ in 0..5 {
        let (status, _) = post_from_to(
            "127.0.0.2",
            gw.addr(),
            "/webhooks/other",
            &signed_event_with(OTHER_SECRET, "response.completed"),
        )
        .await;
        assert!(status == 400 || status == 429, "{status}");
    }
    assert_eq!(
        gw.metrics().await.value("hookgate_penalty_box_total"),
        Some(1.0)
    );

    let (status, _) = post_from("127.0.0.2", gw.addr(), &signed_event("response.completed")).await;

    assert_eq!(status, 200);
}
