//! What reaches the upstream, and where: routing by event type, the raw bytes, and the
//! headers the gateway passes, sets, replaces and drops.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn a_forwarded_delivery_is_answered_with_the_upstream_status_and_body() {
    let upstream = Upstream::with(
        Answer::status(201)
            .body(r#"{"stored":"yes"}"#)
            .header("content-type", "application/vnd.backend+json"),
    )
    .await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 201);
    assert_eq!(reply.text(), r#"{"stored":"yes"}"#);
    assert_eq!(
        reply.header("content-type"),
        Some("application/vnd.backend+json")
    );
    assert_eq!(upstream.only().method, http::Method::POST);
}

#[tokio::test]
async fn an_exact_pattern_routes_only_that_event_type() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("response.completed", upstream.url("/exact"))
            .route("*", upstream.url("/rest")),
    )
    .await;

    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );
    assert_eq!(
        gw.post(PATH, &signed_event("response.completed.v2"))
            .await
            .status(),
        200
    );

    let paths: Vec<String> = upstream.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/exact", "/rest"]);
}

#[tokio::test]
async fn a_trailing_wildcard_routes_every_type_under_its_prefix_but_not_the_prefix_itself() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("batch.*", upstream.url("/batch"))
            .route("*", upstream.url("/rest")),
    )
    .await;

    for event_type in [
        "batch.completed",
        "batch.failed",
        "batch",
        "batchy.completed",
    ] {
        assert_eq!(gw.post(PATH, &signed_event(event_type)).await.status(), 200);
    }

    let paths: Vec<String> = upstream.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/batch", "/batch", "/rest", "/rest"]);
}

#[tokio::test]
async fn a_catch_all_route_takes_whatever_no_earlier_route_matched() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("response.*", upstream.url("/responses"))
            .route("*", upstream.url("/other")),
    )
    .await;

    assert_eq!(
        gw.post(PATH, &signed_event("eval.run.succeeded"))
            .await
            .status(),
        200
    );

    assert_eq!(upstream.only().path, "/other");
}

#[tokio::test]
async fn the_first_matching_route_wins_over_later_ones() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("response.*", upstream.url("/first"))
            .route("response.completed", upstream.url("/second"))
            .route("*", upstream.url("/third")),
    )
    .await;

    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );

    assert_eq!(upstream.only().path, "/first");
}

#[tokio::test]
async fn an_event_no_route_matches_is_answered_202_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("response.*", &upstream)).await;

    let reply = gw.post(PATH, &signed_event("batch.completed")).await;

    assert_eq!(reply.status(), 202);
    assert_eq!(reply.json(), serde_json::json!({"routed": false}));
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn the_body_reaches_the_upstream_byte_for_byte() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    // Key order, spacing, escapes and number spelling that any re-serialisation would change.
    let body = "{ \"z\":1,\n\t\"type\" : \"order.created\" ,\"data\":{\"name\":\"caf\\u00e9 \\ud83d\\ude00\",\
                \"raw\":\"na\u{ef}ve\",\"n\":1.50e3,\"empty\":{ }} }\r\n  ";

    let reply = gw.post(PATH, &signed_body(body)).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.only().body, Bytes::from(body.to_owned()));
}

#[tokio::test]
async fn content_type_and_signature_headers_arrive_unchanged() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let delivery = signed_event("response.completed")
        .with_header("content-type", "application/json; charset=utf-8");

    assert_eq!(gw.post(PATH, &delivery).await.status(), 200);

    let received = upstream.only();
    for name in [
        "content-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert_eq!(received.header(name), delivery.header(name), "{name}");
    }
}

#[tokio::test]
async fn the_gateway_tells_the_upstream_the_client_the_scheme_the_source_and_the_event_type() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );

    let received = upstream.only();
    assert_eq!(received.header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(received.header("x-forwarded-proto"), "http");
    assert_eq!(received.header("x-hookgate-source"), SOURCE);
    assert_eq!(
        received.header("x-hookgate-event-type"),
        "response.completed"
    );
}

/// Behind a load balancer that ends TLS, the backend must learn the client used https
/// (one answering a redirect to https otherwise made every delivery a 502): a trusted
/// proxy's `X-Forwarded-Proto` is passed on, in proxy and queue mode; anyone else's is
/// replaced by what the listener speaks.
#[tokio::test]
async fn a_trusted_proxys_forwarded_proto_reaches_the_upstream_and_no_one_elses() {
    for (trusted, expected) in [("127.0.0.1/32", "https"), ("10.0.0.0/8", "http")] {
        let trust = format!(r#"["{trusted}"]"#);
        let upstream = Upstream::start().await;
        let proxy = Gateway::start(
            config()
                .set("rate_limit", "trusted_proxies", &trust)
                .route("*", &upstream),
        )
        .await;
        let event = signed_event("response.completed").with_header("x-forwarded-proto", "https");
        assert!(proxy.post(PATH, &event).await.forwarded());
        assert_eq!(
            upstream.only().header("x-forwarded-proto"),
            expected,
            "{trusted}"
        );

        let upstream = Upstream::start().await;
        let queue = Gateway::start(
            config()
                .queued()
                .set("rate_limit", "trusted_proxies", &trust)
                .route("*", &upstream),
        )
        .await;
        let event = signed_event("response.completed").with_header("x-forwarded-proto", "https");
        enqueue(&queue.client(), &event).await;
        upstream.wait_for(1).await;
        assert_eq!(
            upstream.only().header("x-forwarded-proto"),
            expected,
            "queued, {trusted}"
        );
    }
}

#[tokio::test]
async fn a_client_sent_x_hookgate_source_is_replaced() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let delivery = signed_event("response.completed")
        .with_header("x-hookgate-source", "trusted-internal")
        .with_header("x-hookgate-verified", "true");

    assert_eq!(gw.post(PATH, &delivery).await.status(), 200);

    let received = upstream.only();
    let sources: Vec<_> = received
        .headers
        .get_all("x-hookgate-source")
        .iter()
        .collect();
    assert_eq!(sources, [SOURCE]);
    assert!(received.headers.get("x-hookgate-verified").is_none());
}

#[tokio::test]
async fn a_client_sent_x_forwarded_for_is_not_believed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let delivery = signed_event("response.completed").with_header("x-forwarded-for", "6.6.6.6");

    assert_eq!(gw.post(PATH, &delivery).await.status(), 200);

    assert_eq!(upstream.only().header("x-forwarded-for"), "127.0.0.1");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let delivery = signed_event("response.completed");
    let mut request = Request::post(gw.url(PATH))
        .header("connection", "x-foo")
        .header("x-foo", "hop secret")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept");
    for (name, value) in &delivery.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(delivery.body.clone())))
        .unwrap();

    assert_eq!(gw.send(request).await.status(), 200);

    let received = upstream.only();
    assert!(
        received.headers.get("x-foo").is_none(),
        "{:?}",
        received.headers
    );
    assert!(
        received.headers.get("keep-alive").is_none(),
        "{:?}",
        received.headers
    );
    let connection = received
        .headers
        .get("connection")
        .map(|v| v.to_str().unwrap());
    assert!(
        !connection.unwrap_or("").contains("x-foo"),
        "{connection:?}"
    );
    assert_eq!(received.header("x-end-to-end"), "kept");
}

#[tokio::test]
async fn each_source_forwards_to_its_own_routes() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("*", upstream.url("/from-openai"))
            .source("billing", "/webhooks/billing")
            .route("*", upstream.url("/from-billing")),
    )
    .await;

    assert_eq!(
        gw.post("/webhooks/billing", &signed_event("invoice.paid"))
            .await
            .status(),
        200
    );

    let received = upstream.only();
    assert_eq!(received.path, "/from-billing");
    assert_eq!(received.header("x-hookgate-source"), "billing");
}

/// An upstream connection idle for longer than backends keep theirs open (Node,
/// uvicorn and Apache close theirs after 5 s) is not used again: reused as the backend
/// closed it, it failed the delivery with a 502 although the backend never read it.
#[tokio::test]
async fn an_upstream_connection_idle_past_4_seconds_is_not_used_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counting.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(br#"{"ok":true}"#),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let gw = Gateway::start(config().route("*", format!("http://{addr}/hooks"))).await;

    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "kept alive meanwhile");
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());

    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a fresh connection");
    server.abort();
}
