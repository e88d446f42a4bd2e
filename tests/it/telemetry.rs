//! OpenTelemetry tracing end to end: a real gateway exporting over OTLP/HTTP to a real
//! receiver in the test (`Collector`, decoding the protobuf with opentelemetry-proto),
//! real upstreams, real Redis for the multi-instance case.

use std::time::{Duration, Instant};

use hookgate::sign::SignedRequest;
use http::HeaderName;

use crate::support::*;

const SENDER_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const SENDER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SENDER_SPAN_ID: &str = "b7ad6b7169203331";
const COLLECTOR_TOKEN: &str = "otel-token-8d1f0c2b77";

/// `event` as a sender that traces would send it, with its own `traceparent`.
fn with_traceparent(mut event: SignedRequest, traceparent: &str) -> SignedRequest {
    event.headers.push((
        HeaderName::from_static("traceparent"),
        traceparent.to_owned(),
    ));
    event
}

fn one<'a>(spans: &'a [CollectedSpan], name: &str) -> &'a CollectedSpan {
    let found: Vec<&CollectedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0]
}

#[tokio::test]
async fn a_forwarded_delivery_is_one_trace_a_server_span_with_its_stages_and_the_upstream_call() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(telemetry(
        config().route("*", &upstream),
        collector.endpoint(),
    ))
    .await;
    let event = signed_event("response.completed");

    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    let spans = collector.wait_for("hookgate.request", 1).await;

    let request = one(&spans, "hookgate.request");
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(request.parent_span_id, "", "a new trace: {request:#?}");
    assert_eq!(request.service, "hookgate");
    assert_eq!(request.attr("hookgate.source"), Some(SOURCE));
    assert_eq!(request.attr("hookgate.route"), Some("0"));
    assert_eq!(request.attr("hookgate.outcome"), Some("forwarded"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.attr("hookgate.webhook_id"), Some(event.id.as_str()));
    assert_eq!(
        request.attr("hookgate.event_type"),
        Some("response.completed")
    );
    let children: Vec<&str> = {
        let mut c: Vec<&CollectedSpan> = spans
            .iter()
            .filter(|s| s.parent_span_id == request.span_id)
            .collect();
        c.sort_by_key(|s| s.start_unix_nano);
        c.iter().map(|s| s.name.as_str()).collect()
    };
    assert_eq!(
        children,
        [
            "hookgate.rate_limit",
            "hookgate.verify",
            "hookgate.dedupe.claim",
            "hookgate.upstream",
            "hookgate.dedupe.settle"
        ]
    );
    assert!(spans.iter().all(|s| s.trace_id == request.trace_id));
    let call = one(&spans, "hookgate.upstream");
    assert_eq!(call.kind, 3, "a client span");
    assert_eq!(call.attr("http.response.status_code"), Some("200"));
    assert_eq!(call.attr("server.address"), Some("127.0.0.1"));
    assert!(call.start_unix_nano >= request.start_unix_nano);
    assert!(call.end_unix_nano <= request.end_unix_nano);
    // The backend continues hookgate's trace from its client span.
    assert_eq!(upstream.only().header("traceparent"), call.traceparent());
}

#[tokio::test]
async fn a_senders_traceparent_is_linked_from_a_new_trace_by_default() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(telemetry(
        config().route("*", &upstream),
        collector.endpoint(),
    ))
    .await;
    let event = with_traceparent(signed_event("response.completed"), SENDER_TRACEPARENT)
        .with_header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");

    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    let spans = collector.wait_for("hookgate.request", 1).await;

    let request = one(&spans, "hookgate.request");
    assert_ne!(request.trace_id, SENDER_TRACE_ID, "a trace of its own");
    assert_eq!(request.parent_span_id, "");
    assert_eq!(
        request.links,
        [(SENDER_TRACE_ID.to_owned(), SENDER_SPAN_ID.to_owned())]
    );
    // The link names the sender's span, not its tracestate (sender-chosen text).
    assert_eq!(request.link_states, [""]);
    let call = one(&spans, "hookgate.upstream");
    assert_eq!(upstream.only().header("traceparent"), call.traceparent());
}

#[tokio::test]
async fn a_senders_traceparent_is_continued_when_trust_incoming_traceparent_is_set() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        telemetry(config().route("*", &upstream), collector.endpoint()).set(
            "telemetry",
            "trust_incoming_traceparent",
            "true",
        ),
    )
    .await;
    let event = with_traceparent(signed_event("response.completed"), SENDER_TRACEPARENT);

    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    let spans = collector.wait_for("hookgate.request", 1).await;

    let request = one(&spans, "hookgate.request");
    assert_eq!(request.trace_id, SENDER_TRACE_ID, "the sender's trace");
    assert_eq!(request.parent_span_id, SENDER_SPAN_ID);
    assert!(request.links.is_empty());
    let call = one(&spans, "hookgate.upstream");
    assert_eq!(call.trace_id, SENDER_TRACE_ID);
    assert_eq!(upstream.only().header("traceparent"), call.traceparent());
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_whether_trusted_or_not() {
    // A bad digit; ids too short (the SDK's propagator took them); a trailing `-`.
    let malformed = [
        "00-0af7651916cd43dd8448eb211c80319c-zzzz6b7169203331-01",
        "00-1-1-1",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
    ];
    for (trust, traceparent) in ["false", "true"]
        .into_iter()
        .flat_map(|trust| malformed.map(|t| (trust, t)))
    {
        let collector = Collector::start().await;
        let upstream = Upstream::start().await;
        let gw = Gateway::start(
            telemetry(config().route("*", &upstream), collector.endpoint()).set(
                "telemetry",
                "trust_incoming_traceparent",
                trust,
            ),
        )
        .await;
        let event = with_traceparent(signed_event("response.completed"), traceparent);

        assert_eq!(gw.post(PATH, &event).await.status(), 200);
        let spans = collector.wait_for("hookgate.request", 1).await;

        let request = one(&spans, "hookgate.request");
        assert_eq!(request.parent_span_id, "", "trust = {trust}, {traceparent}");
        assert!(request.links.is_empty(), "trust = {trust}, {traceparent}");
        assert_ne!(request.trace_id, SENDER_TRACE_ID);
        assert!(!request.trace_id.starts_with("0000000000"), "{traceparent}");
        let call = one(&spans, "hookgate.upstream");
        assert_eq!(upstream.only().header("traceparent"), call.traceparent());
    }
}

on_each_store!(
    a_queued_delivery_failing_twice_then_delivered_is_one_trace_with_three_attempt_spans
);

async fn a_queued_delivery_failing_twice_then_delivered_is_one_trace_with_three_attempt_spans(
    store: TestStore,
) {
    let collector = Collector::start().await;
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(500),
        Answer::status(503),
        Answer::ok(),
    ]))
    .await;
    let config = config()
        .store(&store)
        .queued()
        .route("*", &upstream)
        .queue_option(
            "backoff",
            r#"{ initial = "50ms", max = "100ms", jitter = false }"#,
        );
    let gw = Gateway::start(telemetry(config, collector.endpoint())).await;
    let deliveries = Deliveries::of(&gw);

    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let record = deliveries.wait_for_state(&id, "processed").await;
    let spans = collector.wait_for("hookgate.attempt", 3).await;

    let request = one(&spans, "hookgate.request");
    assert_eq!(request.attr("hookgate.outcome"), Some("queued"));
    assert_eq!(request.attr("hookgate.delivery_id"), Some(id.as_str()));
    one(&spans, "hookgate.enqueue");
    let mut attempts: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.name == "hookgate.attempt")
        .collect();
    attempts.sort_by_key(|s| s.start_unix_nano);
    let described: Vec<(Option<&str>, Option<&str>, Option<&str>)> = attempts
        .iter()
        .map(|a| {
            (
                a.attr("hookgate.attempt"),
                a.attr("hookgate.attempt.result"),
                a.attr("http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            (Some("1"), Some("failed_retryable"), Some("500")),
            (Some("2"), Some("failed_retryable"), Some("503")),
            (Some("3"), Some("processed"), Some("200")),
        ]
    );
    for attempt in &attempts {
        assert_eq!(attempt.trace_id, request.trace_id, "one trace");
        assert_eq!(attempt.parent_span_id, request.span_id);
        assert_eq!(attempt.kind, 5, "a consumer span");
        assert_eq!(attempt.attr("hookgate.delivery_id"), Some(id.as_str()));
        let wait: u64 = attempt
            .attr("hookgate.attempt.wait_ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait < 10_000, "{attempt:#?}");
    }
    // The retries waited at least the backoff (50 ms, then 100 ms).
    let waits: Vec<u64> = attempts[1..]
        .iter()
        .map(|a| a.attr("hookgate.attempt.wait_ms").unwrap().parse().unwrap())
        .collect();
    assert!(waits[0] >= 45 && waits[1] >= 95, "{waits:?}");
    // Each attempt's request carried the traceparent of its own client span.
    let calls: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.name == "hookgate.upstream")
        .collect();
    assert_eq!(calls.len(), 3);
    for (received, attempt) in upstream.received().iter().zip(&attempts) {
        let call = calls
            .iter()
            .find(|c| c.traceparent() == received.header("traceparent"))
            .unwrap_or_else(|| panic!("a client span for {received:?}"));
        assert_eq!(call.parent_span_id, attempt.span_id);
    }
    // The record's history names the trace of every attempt.
    let history = record["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{record:#}");
    assert!(
        history.iter().all(|a| a["trace_id"] == request.trace_id),
        "{record:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_taken_over_by_a_second_instance_after_a_kill_is_in_the_same_trace() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let collector = Collector::start().await;
    // The first attempt hangs (the instance holding it is killed); the next is answered.
    let upstream = Upstream::with(Behaviour::sequence([Answer::held(), Answer::ok()])).await;
    let config = || {
        telemetry(
            config()
                .store(&store)
                .queued()
                .route("*", &upstream)
                .queue_option("visibility_timeout", r#""1s""#),
            collector.endpoint(),
        )
    };
    let mut doomed = GatewayProcess::spawn(config()).await;
    let id = enqueue(&doomed.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;
    let spans = collector.wait_for("hookgate.request", 1).await;
    let request = one(&spans, "hookgate.request").clone();

    let survivor = GatewayProcess::spawn(config()).await;
    // Its access line is written (lines leave in batches) before it is killed.
    doomed.log_containing("hookgate::access").await;
    doomed.kill();
    let record = Deliveries::at(survivor.admin_addr)
        .wait_for_state(&id, "processed")
        .await;
    let spans = collector.wait_for("hookgate.attempt", 1).await;

    // The killed attempt never ended, so its span never left; the survivor's is in the
    // trace the first instance started.
    let attempt = one(&spans, "hookgate.attempt");
    assert_eq!(attempt.attr("hookgate.attempt"), Some("2"));
    assert_eq!(attempt.trace_id, request.trace_id);
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(record["history"][1]["trace_id"], request.trace_id);
    assert_eq!(
        attempt.attr("hookgate.instance"),
        record["history"][1]["instance"].as_str()
    );
    let call = one(&spans, "hookgate.upstream");
    assert_eq!(
        upstream.received()[1].header("traceparent"),
        call.traceparent()
    );
    // The access log line of the first instance names the trace.
    let access = doomed
        .log()
        .lines()
        .find(|l| l.contains("hookgate::access"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("an access log line:\n{}", doomed.log()));
    assert!(access.contains(&request.trace_id), "{access}");
    upstream.release();
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_changes_no_answer_and_the_dropped_spans_are_counted() {
    let down = format!("http://{}", closed_port().await);
    let hanging = Upstream::with(Answer::held()).await;
    for endpoint in [down, hanging.url("")] {
        let upstream = Upstream::start().await;
        // An export that the request path waited for would take the whole timeout:
        // far longer than any request may.
        let gw = Gateway::start(
            telemetry(config().route("*", &upstream), &endpoint)
                .set("telemetry", "export_timeout", "\"5s\"")
                .set("telemetry", "max_queued_spans", "8"),
        )
        .await;
        for _ in 0..20 {
            let started = Instant::now();
            let reply = gw.post(PATH, &signed_event("response.completed")).await;
            assert_eq!(reply.status(), 200, "{endpoint}");
            assert!(reply.forwarded());
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "{endpoint}: {:?}",
                started.elapsed()
            );
        }
        assert_eq!(upstream.received().len(), 20);
        let dropped = eventually(format!("dropped spans counted ({endpoint})"), async || {
            let value = gw
                .metrics()
                .await
                .value("hookgate_telemetry_spans_dropped_total")
                .unwrap_or(0.0);
            (value >= 20.0).then_some(value)
        })
        .await;
        assert!(dropped <= 20.0 * 6.0, "at most every span: {dropped}");
    }
    hanging.release();
}

#[tokio::test]
async fn no_span_attribute_holds_a_body_a_signature_or_a_secret() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    // The client's address comes through a trusted proxy, so that it differs from the
    // upstream's (127.0.0.1, which `server.address` names) and its absence means
    // something: the check for "127.0.0.1:" could not fail (nothing writes a port).
    const CLIENT_IP: &str = "203.0.113.7";
    let gw = Gateway::start(
        telemetry(config().route("*", &upstream), collector.endpoint())
            .set(
                "telemetry",
                "headers",
                &format!("{{ authorization = \"Bearer {COLLECTOR_TOKEN}\" }}"),
            )
            .set("rate_limit", "trusted_proxies", r#"["127.0.0.0/8"]"#),
    )
    .await;
    let event = signed_body(r#"{"type":"response.completed","data":{"marker":"body-only-7f3a"}}"#)
        .with_header("x-forwarded-for", CLIENT_IP);
    let signature = event.header("webhook-signature").to_owned();
    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    // The id a forged request claims is unverified: its access line may name it, its
    // span must not.
    let forged_id = fresh_id();
    let unsigned = signed_raw(OTHER_SECRET, &forged_id, now_unix(), r#"{"type":"x"}"#)
        .with_header("x-forwarded-for", CLIENT_IP);
    assert_eq!(gw.post(PATH, &unsigned).await.status(), 400);
    let spans = collector.wait_for("hookgate.request", 2).await;

    let signature_value = signature.trim_start_matches("v1,");
    for span in &spans {
        let status = ("status".to_owned(), span.status_message.clone());
        for (key, value) in span.attributes.iter().chain([(&status.0, &status.1)]) {
            for secret in [
                "body-only-7f3a",
                signature_value,
                SECRET,
                COLLECTOR_TOKEN,
                CLIENT_IP,
                &forged_id,
            ] {
                assert!(
                    !value.contains(secret),
                    "{}: {key} = {value} holds {secret}",
                    span.name
                );
            }
        }
    }
    // The collector's token went with the exports, never into a span.
    assert!(collector.export_headers().iter().all(|h| {
        h.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&*format!("Bearer {COLLECTOR_TOKEN}"))
    }));
    let failed = spans
        .iter()
        .find(|s| s.name == "hookgate.verify" && s.status_code == 2);
    assert!(
        failed.is_some(),
        "the failed verification is marked: {spans:#?}"
    );
}

#[tokio::test]
async fn a_trace_sampled_out_exports_nothing_and_the_upstream_sees_it_unsampled() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        telemetry(config().route("*", &upstream), collector.endpoint())
            .set("telemetry", "sample_ratio", "0.0")
            .set("telemetry", "trust_incoming_traceparent", "true"),
    )
    .await;

    // A new trace, sampled out by the ratio; then a continued one the sender sampled.
    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );
    let sampled = with_traceparent(signed_event("response.completed"), SENDER_TRACEPARENT);
    assert_eq!(gw.post(PATH, &sampled).await.status(), 200);
    let spans = collector.wait_for("hookgate.request", 1).await;

    assert!(
        spans.iter().all(|s| s.trace_id == SENDER_TRACE_ID),
        "nothing of the sampled-out request: {spans:#?}"
    );
    let received = upstream.received();
    let unsampled = received[0].header("traceparent");
    assert!(
        unsampled.len() == 55 && unsampled.ends_with("-00"),
        "{unsampled}"
    );
    assert_eq!(
        received[1].header("traceparent"),
        one(&spans, "hookgate.upstream").traceparent()
    );
}

/// Forwarding to `upstream`, exporting to `collector` only once an hour (at start) on
/// the interval: what is exported before is exported for another reason.
fn exporting_hourly(collector: &Collector, upstream: &Upstream) -> Config {
    config()
        .route("*", upstream)
        .set(
            "telemetry",
            "otlp_endpoint",
            &format!("{:?}", collector.endpoint()),
        )
        .set("telemetry", "export_interval", "\"1h\"")
}

#[tokio::test]
async fn spans_still_queued_at_shutdown_are_exported_before_it_returns() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let mut gw = Gateway::start(exporting_hourly(&collector, &upstream)).await;
    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );

    tokio::time::timeout(PATIENCE, gw.begin_shutdown())
        .await
        .expect("shuts down in time")
        .expect("the shutdown task");

    // The first tick of the export task may have come before the request; the rest
    // waited for the shutdown's flush.
    let spans = collector.spans();
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "hookgate.request")
            .count(),
        1,
        "{spans:#?}"
    );
    assert_eq!(
        spans.len(),
        6,
        "the request and its five stages: {spans:#?}"
    );
}

/// An attempt that ends before its send (an `enrich` fetch refused for good) once left
/// its span without a result and with an OK status: the trace never showed the outcome.
#[tokio::test]
async fn an_attempt_ended_by_its_fetch_says_so_in_its_span() {
    let collector = Collector::start().await;
    let api = OpenAiApi::with_key("sk-proj-someOtherProjectsKey").await;
    let backend = Upstream::start().await;
    let config = config()
        .queued()
        .resigned_route(
            "*",
            &backend,
            "whsec_ZW5yaWNoLWJhY2tlbmQtc2VjcmV0LWZvci10ZXN0cyE=",
        )
        .enrich(&format!(
            "{{ provider = \"openai\", api_key = \"{OPENAI_KEY}\", api_base = \"{}\" }}",
            api.api_base()
        ));
    let gw = Gateway::start(telemetry(config, collector.endpoint())).await;
    let event = signed_body(&format!(
        r#"{{"id":"evt_t1","object":"event","created_at":{},"type":"response.completed","data":{{"id":"resp_t1"}}}}"#,
        now_unix()
    ));

    let id = enqueue(&gw.client(), &event).await;
    let record = Deliveries::of(&gw)
        .wait_for_state(&id, "failed_final")
        .await;
    let spans = collector.wait_for("hookgate.attempt", 1).await;

    let attempt = one(&spans, "hookgate.attempt");
    assert_eq!(
        attempt.attr("hookgate.attempt.result"),
        Some("failed_final"),
        "{attempt:#?}"
    );
    assert_eq!(attempt.status_code, 2, "an error: {attempt:#?}");
    assert!(backend.received().is_empty());
    // The fetch's record carries its trace, as an attempt's does (it had none).
    let history = record["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{record:#}");
    for step in history {
        assert_eq!(step["trace_id"], attempt.trace_id, "{record:#}");
    }
}

/// A commit the store failed once left `hookgate.dedupe.settle` OK: only the log said.
#[tokio::test]
async fn a_settle_the_store_failed_is_an_error_span() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let collector = Collector::start().await;
    let upstream = Upstream::with(Answer::held()).await;
    let config = config()
        .redis(&redis)
        .store_option("timeout", "300ms")
        .store_option("connect_timeout", "300ms")
        .route("*", &upstream);
    let gw = Gateway::start(telemetry(config, collector.endpoint())).await;
    let in_flight = gw
        .client()
        .post_in_background(PATH, &signed_event("response.completed"));
    upstream.wait_for(1).await;

    redis.stop();
    upstream.release();
    assert_eq!(in_flight.await.unwrap().status(), 200);
    let spans = collector.wait_for("hookgate.request", 1).await;

    assert_eq!(one(&spans, "hookgate.dedupe.claim").status_code, 0);
    let settle = one(&spans, "hookgate.dedupe.settle");
    assert_eq!(settle.status_code, 2, "the store failed: {settle:#?}");
}

/// A full batch is exported at once, not at the next `export_interval`: waiting for the
/// interval capped what was exported at `max_queued_spans` per interval (4,096 spans a
/// second by default), so a gateway past about 700 traced requests a second dropped the
/// rest. Here the interval is an hour, and 600 spans (100 requests) are exported anyway,
/// and none is dropped though the queue holds fewer.
#[tokio::test]
async fn a_full_batch_of_spans_is_exported_without_waiting_for_the_interval() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(exporting_hourly(&collector, &upstream).set(
        "telemetry",
        "max_queued_spans",
        "520",
    ))
    .await;
    // The first tick of the interval, at start, exports nothing yet.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let client = gw.client();
    for _ in 0..100 {
        assert!(
            client
                .post(PATH, &signed_event("response.completed"))
                .await
                .forwarded()
        );
    }

    let exported = collector.wait_for("hookgate.request", 80).await;
    assert!(exported.len() >= 80, "{}", exported.len());
    let dropped = gw
        .metrics()
        .await
        .value("hookgate_telemetry_spans_dropped_total")
        .unwrap_or(0.0);
    assert_eq!(dropped, 0.0);
}

/// A claim the store failed, let through unguarded by `on_error = "allow"`, is an error
/// span: it said OK, though the README's table says the store failed.
#[tokio::test]
async fn a_claim_the_store_failed_and_let_through_is_an_error_span() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let config = config()
        .redis(&redis)
        .store_option("timeout", "300ms")
        .store_option("connect_timeout", "300ms")
        .store_option("on_error", "allow")
        .route("*", &upstream);
    let gw = Gateway::start(telemetry(config, collector.endpoint())).await;
    redis.stop();

    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .status(),
        200
    );
    let spans = collector.wait_for("hookgate.request", 1).await;

    let claim = one(&spans, "hookgate.dedupe.claim");
    assert_eq!(claim.status_code, 2, "the store failed: {claim:#?}");
    assert_eq!(upstream.received().len(), 1);
}

/// With tracing on, a queued delivery keeps neither the sender's `traceparent` nor its
/// `tracestate` among its headers: its trace is the record's `trace_context`. Kept, the
/// record held the sender's tracestate, and an instance delivering with tracing off
/// forwarded the sender's untrusted context.
#[tokio::test]
async fn a_queued_delivery_keeps_no_trace_context_of_the_senders() {
    let collector = Collector::start().await;
    let upstream = Upstream::with(Answer::status(400)).await;
    let config = config().queued().route("*", &upstream);
    let gw = Gateway::start(telemetry(config, collector.endpoint())).await;
    let deliveries = Deliveries::of(&gw);
    let event = with_traceparent(signed_event("response.completed"), SENDER_TRACEPARENT)
        .with_header("tracestate", "vendor=SENDERSTATE");

    let id = enqueue(&gw.client(), &event).await;
    deliveries.wait_for_state(&id, "failed_final").await;
    let record = deliveries
        .request(http::Method::GET, &format!("/deliveries/{id}?body=true"))
        .await
        .json();

    let names: Vec<&str> = record["headers"]
        .as_array()
        .expect("the header values of a dead letter")
        .iter()
        .map(|pair| pair[0].as_str().unwrap())
        .collect();
    assert!(names.contains(&"webhook-id"), "{record:#}");
    assert!(!names.contains(&"traceparent"), "{record:#}");
    assert!(!names.contains(&"tracestate"), "{record:#}");
}

/// The exporter says "network error" for any request it could not send; the warning
/// names the cause, here the refused connection (a refused certificate, likewise).
#[tokio::test]
async fn the_dropped_spans_warning_says_why_the_collector_could_not_be_reached() {
    let down = format!("http://{}", closed_port().await);
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::spawn(telemetry(config().route("*", &upstream), &down)).await;
    assert!(
        gw.client()
            .post(PATH, &signed_event("response.completed"))
            .await
            .forwarded()
    );

    let log = gw.log_containing("trace spans dropped").await;

    let warning = log
        .lines()
        .find(|l| l.contains("trace spans dropped"))
        .unwrap();
    assert!(
        warning.to_lowercase().contains("connection refused"),
        "{warning}"
    );
}
