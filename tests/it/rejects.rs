//! Requests refused before verification or routing: wrong path, wrong method, a body
//! over the cap, a verified body that names no event type.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn a_post_to_a_path_no_source_serves_is_answered_404() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    let reply = gw
        .post("/webhooks/unknown", &signed_event("response.completed"))
        .await;

    assert_eq!(reply.status(), 404);
    assert_eq!(reply.error(), "not_found");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_method_other_than_post_is_answered_405_allowing_post() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    for method in [http::Method::GET, http::Method::PUT, http::Method::DELETE] {
        let request = Request::builder()
            .method(method.clone())
            .uri(gw.url(PATH))
            .body(Full::new(Bytes::new()))
            .unwrap();

        let reply = gw.send(request).await;

        assert_eq!(reply.status(), 405, "{method}");
        assert_eq!(reply.header("allow"), Some("POST"), "{method}");
        assert_eq!(reply.error(), "method_not_allowed");
    }
    assert!(upstream.received().is_empty());
}

/// A correctly signed delivery of about `size` bytes: only its size is wrong.
fn big_delivery(size: usize) -> hookgate::sign::SignedRequest {
    let padding = "x".repeat(size);
    signed_body(&format!(
        r#"{{"type":"response.completed","padding":"{padding}"}}"#
    ))
}

#[tokio::test]
async fn a_body_over_max_body_bytes_with_content_length_is_answered_413() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().max_body_bytes(1024).route("*", &upstream)).await;

    let reply = gw.post(PATH, &big_delivery(2048)).await;

    assert_eq!(reply.status(), 413);
    assert_eq!(reply.error(), "body_too_large");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_chunked_body_that_grows_over_max_body_bytes_is_answered_413() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().max_body_bytes(1024).route("*", &upstream)).await;
    let delivery = big_delivery(3000);
    let chunks: Vec<Bytes> = delivery
        .body
        .as_bytes()
        .chunks(500)
        .map(Bytes::copy_from_slice)
        .collect();

    let reply = gw.post_chunked(PATH, &delivery.headers, chunks).await;

    assert_eq!(reply.status(), 413, "{reply:?}");
    assert_eq!(reply.error(), "body_too_large");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_chunked_body_under_max_body_bytes_is_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().max_body_bytes(4096).route("*", &upstream)).await;
    let delivery = big_delivery(1000);
    let chunks: Vec<Bytes> = delivery
        .body
        .as_bytes()
        .chunks(300)
        .map(Bytes::copy_from_slice)
        .collect();

    let reply = gw.post_chunked(PATH, &delivery.headers, chunks).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.only().body, delivery.body.as_bytes());
}

#[tokio::test]
async fn a_signed_body_that_is_not_json_is_answered_400_invalid_payload() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    let reply = gw.post(PATH, &signed_body("type=response.completed")).await;

    assert_eq!(reply.status(), 400);
    assert_eq!(reply.error(), "invalid_payload");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_signed_json_body_without_a_string_event_type_is_answered_400_invalid_payload() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    for body in [
        r#"{"data":{}}"#,
        r#"{"type":5}"#,
        r#"{"type":""}"#,
        r#"["type"]"#,
    ] {
        let reply = gw.post(PATH, &signed_body(body)).await;

        assert_eq!(reply.status(), 400, "{body}: {reply:?}");
        assert_eq!(reply.error(), "invalid_payload", "{body}");
    }
    assert!(upstream.received().is_empty());
}

/// The id a sender quotes ("msg_x got 400 at 10:32") finds the refusal's access line:
/// a forged or stale request's claimed id (read from its header, never the body) and a
/// genuine delivery refused for its payload were logged without one.
#[tokio::test]
async fn refusals_after_the_headers_are_read_name_the_webhook_id_in_their_access_line() {
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::spawn(config().route("*", &upstream)).await;
    let client = gw.client();
    let forged = signed_raw(OTHER_SECRET, "msg_forged_1", now_unix(), "{\"type\":\"a\"}");
    let stale = signed_raw(SECRET, "msg_stale_1", now_unix() - 3600, "{\"type\":\"a\"}");
    let not_json = signed_raw(SECRET, "msg_not_json_1", now_unix(), "not json");

    assert_eq!(
        client.post(PATH, &forged).await.error(),
        "invalid_signature"
    );
    assert_eq!(client.post(PATH, &stale).await.error(), "timestamp_too_old");
    assert_eq!(
        client.post(PATH, &not_json).await.error(),
        "invalid_payload"
    );

    let log = gw.log_containing("msg_not_json_1").await;
    for (id, outcome) in [
        ("msg_forged_1", "invalid_signature"),
        ("msg_stale_1", "stale"),
        ("msg_not_json_1", "invalid_payload"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains("hookgate::access") && l.contains(outcome))
            .unwrap_or_else(|| panic!("an access line for {outcome}:\n{log}"));
        assert!(line.contains(id), "{line}");
    }
    assert!(upstream.received().is_empty());
}
