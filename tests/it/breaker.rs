//! Circuit breakers (`breaker = { failures, cooldown }`) with real upstreams: proxy mode
//! answers 503 without sending while open; queue mode lets deliveries wait without an
//! attempt, on the in-memory queue and on Redis; one probe decides.

use crate::support::*;

/// A proxy-mode gateway whose one route to `upstream` opens after 2 failures for 3 s: long
/// enough for the checks while it is open to finish on a slow machine.
async fn proxy_gateway(upstream: &Upstream) -> Gateway {
    Gateway::start(
        config()
            .named_route("fragile", "*", upstream)
            .route_option("breaker", r#"{ failures = 2, cooldown = "3s" }"#),
    )
    .await
}

const STATE: &str = r#"hookgate_breaker_state{route="openai/fragile",upstream="0"}"#;

fn transitions(scrape: &Scrape, route: &str, upstream: &str, to: &str) -> f64 {
    scrape
        .value(&format!(
            r#"hookgate_breaker_transitions_total{{route="{route}",to="{to}",upstream="{upstream}"}}"#
        ))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn proxy_mode_answers_503_with_retry_after_and_sends_nothing_while_open_then_a_probe_closes_it()
 {
    let upstream = Upstream::with(Behaviour::sequence([
        Answer::status(500),
        Answer::status(502),
        Answer::ok(),
    ]))
    .await;
    let gw = proxy_gateway(&upstream).await;

    assert_eq!(gw.post(PATH, &signed_event("a")).await.status(), 500);
    assert_eq!(gw.post(PATH, &signed_event("a")).await.status(), 502);
    assert_eq!(gw.metrics().await.value(STATE), Some(1.0));
    let event = signed_event("batch.completed");
    let refused = gw.post(PATH, &event).await;

    assert_eq!(refused.status(), 503);
    assert_eq!(refused.error(), "upstream_circuit_open");
    assert_eq!(refused.retry_after(), 3);
    // The claim was released: the same delivery is refused again, not held in flight.
    assert_eq!(gw.post(PATH, &event).await.error(), "upstream_circuit_open");
    assert_eq!(upstream.received().len(), 2, "nothing sent while open");

    // After the cooldown the sender's retry is the probe; its 200 closes the breaker.
    let delivered = eventually("the probe after the cooldown", async || {
        let reply = gw.post(PATH, &event).await;
        if reply.status() == 503 {
            Err(reply.error())
        } else {
            Ok(reply)
        }
    })
    .await;
    assert_eq!(delivered.status(), 200);
    assert_eq!(upstream.received().len(), 3);
    assert_eq!(gw.post(PATH, &signed_event("b")).await.status(), 200);
    let scrape = gw.metrics().await;
    assert_eq!(scrape.value(STATE), Some(0.0));
    for to in ["open", "half_open", "closed"] {
        assert_eq!(transitions(&scrape, "openai/fragile", "0", to), 1.0, "{to}");
    }
    assert!(scrape.requests(SOURCE, "circuit_open") >= 2);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_for_another_cooldown() {
    let upstream = Upstream::with(Answer::status(503)).await;
    let gw = proxy_gateway(&upstream).await;
    for _ in 0..2 {
        assert_eq!(gw.post(PATH, &signed_event("a")).await.status(), 503);
    }
    let event = signed_event("batch.completed");
    assert_eq!(gw.post(PATH, &event).await.error(), "upstream_circuit_open");

    // The probe reaches the upstream and fails: open again, nothing more sent.
    let probed = eventually("the probe after the cooldown", async || {
        let reply = gw.post(PATH, &event).await;
        if reply.header("retry-after").is_some() && upstream.received().len() == 2 {
            Err(reply.error())
        } else {
            Ok(reply)
        }
    })
    .await;
    assert_eq!(probed.status(), 503);
    assert_eq!(upstream.received().len(), 3);
    let again = gw.post(PATH, &event).await;
    assert_eq!(again.error(), "upstream_circuit_open");
    assert_eq!(again.retry_after(), 3);
    assert_eq!(upstream.received().len(), 3);
    let scrape = gw.metrics().await;
    assert_eq!(scrape.value(STATE), Some(1.0));
    assert_eq!(transitions(&scrape, "openai/fragile", "0", "open"), 2.0);
    assert_eq!(transitions(&scrape, "openai/fragile", "0", "closed"), 0.0);
}

#[tokio::test]
async fn a_4xx_is_an_answer_and_never_opens_the_breaker() {
    let upstream = Upstream::with(Answer::status(422)).await;
    let gw = proxy_gateway(&upstream).await;
    for _ in 0..5 {
        assert_eq!(gw.post(PATH, &signed_event("a")).await.status(), 422);
    }
    assert_eq!(upstream.received().len(), 5);
    assert_eq!(gw.metrics().await.value(STATE), Some(0.0));
}

on_each_store!(
    queue_mode_deliveries_wait_without_an_attempt_while_open_and_other_upstreams_are_unaffected,
    a_delivery_the_breaker_keeps_waiting_past_max_age_is_dead_lettered_without_an_attempt,
);

async fn queue_mode_deliveries_wait_without_an_attempt_while_open_and_other_upstreams_are_unaffected(
    store: TestStore,
) {
    let up = Upstream::start().await;
    let down = closed_port().await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .queued()
            .named_route("batches", "*", NOWHERE)
            .route_option(
                "upstreams",
                &format!(r#"["http://{down}/hooks", "{}"]"#, up.url("/hooks")),
            )
            .route_option("breaker", r#"{ failures = 2, cooldown = "1s" }"#)
            .upstream_timeout("5s")
            .queue_option("workers", "4")
            .queue_option(
                "backoff",
                r#"{ initial = "50ms", max = "100ms", jitter = false }"#,
            )
            .queue_option("max_attempts", "1000")
            .queue_option("visibility_timeout", r#""1s""#),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    let state = r#"hookgate_breaker_state{route="openai/batches",upstream="0"}"#;

    let first = copies(&gw).await;
    deliveries.wait_for_state(&first[1], "processed").await;
    eventually("the breaker of upstream 0 opening", async || {
        gw.metrics().await.value(state) == Some(1.0)
    })
    .await;
    let failed = deliveries.record(&first[0]).await["attempts"]
        .as_u64()
        .unwrap();

    let second = copies(&gw).await;
    deliveries.wait_for_state(&second[1], "processed").await;
    // Taken and put back to wait for the breaker: no attempt.
    let waiting = eventually("the second copy waiting for the breaker", async || {
        let record = deliveries.record(&second[0]).await;
        if record["next_attempt_at"].is_u64() {
            Ok(record)
        } else {
            Err(format!("{record:#}"))
        }
    })
    .await;
    assert_eq!(waiting["attempts"], 0, "{waiting:#}");
    assert_eq!(waiting["state"], "queued", "{waiting:#}");
    let before_probe = deliveries.record(&first[0]).await["attempts"]
        .as_u64()
        .unwrap();
    assert!(
        before_probe <= failed + 1,
        "at most the probe: {before_probe} vs {failed}"
    );

    let recovered = Upstream::with_at(down, Answer::ok()).await;
    let first0 = deliveries.wait_for_state(&first[0], "processed").await;
    let second0 = deliveries.wait_for_state(&second[0], "processed").await;
    assert_eq!(second0["attempts"], 1, "{second0:#}");
    assert!(first0["attempts"].as_u64() >= Some(3), "{first0:#}");
    assert_eq!(recovered.received().len(), 2);
    assert_eq!(up.received().len(), 2);
    let scrape = gw.metrics().await;
    assert_eq!(scrape.value(state), Some(0.0));
    assert!(transitions(&scrape, "openai/batches", "0", "closed") >= 1.0);
    assert_eq!(
        scrape.value(r#"hookgate_breaker_state{route="openai/batches",upstream="1"}"#),
        Some(0.0)
    );
}

/// Workers queued for a `max_concurrency` slot behind the attempts that open the
/// breaker are asked again once they get the slot: they once sent on a pass from
/// before the wait, so a dying upstream got every waiting worker's attempt. One failure
/// opens it: the two attempts sent at once are all that pass (with two failures to
/// open it, a waiting worker could take the first failed attempt's slot before the
/// second had failed, and rightly send).
#[tokio::test]
async fn workers_waiting_for_a_slot_do_not_send_once_the_attempts_ahead_opened_the_breaker() {
    let upstream = Upstream::with(Behaviour::always(
        Answer::status(500).after(std::time::Duration::from_millis(300)),
    ))
    .await;
    let gw = Gateway::start(
        config()
            .queued()
            .named_route("fragile", "*", &upstream)
            .max_concurrency(2)
            .route_option("breaker", r#"{ failures = 1, cooldown = "1m" }"#)
            .queue_option("workers", "8"),
    )
    .await;
    let client = gw.client();
    let events: Vec<_> = (0..8).map(|_| signed_event("response.completed")).collect();
    let ids = futures_util::future::join_all(events.iter().map(|e| enqueue(&client, e))).await;

    eventually("the breaker opening", async || {
        gw.metrics().await.value(STATE) == Some(1.0)
    })
    .await;
    let deliveries = Deliveries::of(&gw);
    for id in &ids {
        eventually("every delivery attempted or waiting", async || {
            let record = deliveries.record(id).await;
            record["attempts"] == 1 || record["next_attempt_at"].is_u64()
        })
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        upstream.received().len(),
        2,
        "the two attempts sent before it opened, none after"
    );
}

async fn copies(gw: &Gateway) -> Vec<String> {
    let reply = gw.post(PATH, &signed_event("batch.completed")).await;
    assert_eq!(reply.status(), 202, "{reply:?}");
    reply.json()["delivery_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bad_breakers_are_config_errors_naming_their_key_and_line() {
    for (toml, key) in [
        (
            r#"{ failures = 0, cooldown = "1s" }"#,
            "sources[0].routes[0].breaker.failures",
        ),
        (
            r#"{ failures = 1, cooldown = "0s" }"#,
            "sources[0].routes[0].breaker.cooldown",
        ),
    ] {
        let text = config()
            .route("*", NOWHERE)
            .route_option("breaker", toml)
            .to_string();
        let e = hookgate::config::parse(&text, "test.toml").expect_err("refused");
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.line.is_some(), "{e}");
    }
    let text = config()
        .route("*", NOWHERE)
        .route_option("breaker", r#"{ failures = 1 }"#)
        .to_string();
    let e = hookgate::config::parse(&text, "test.toml").expect_err("refused");
    assert!(e.to_string().contains("cooldown"), "{e}");
    let text = config()
        .route("*", NOWHERE)
        .route_option("breaker", r#"{ failures = 5, cooldown = "30s" }"#)
        .to_string();
    let summary = hookgate::config::parse(&text, "test.toml")
        .unwrap()
        .summary();
    assert!(
        summary.contains(
            "breaker: open after 5 failed attempts in a row to an upstream, for 30s (per instance)"
        ),
        "{summary}"
    );
}

#[tokio::test]
async fn the_console_overview_lists_the_breaker_with_its_state() {
    let upstream = Upstream::with(Answer::status(500)).await;
    let gw = proxy_gateway(&upstream).await;
    for _ in 0..2 {
        gw.post(PATH, &signed_event("a")).await;
    }

    let request = http::Request::get(gw.admin_url("/ui/"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let overview = gw.send(request).await;

    assert_eq!(overview.status(), 200);
    let text = overview.text();
    assert!(text.contains("Circuit breakers"), "{text}");
    assert!(
        text.contains(r#"<span class="chip warn">open</span> route=openai/fragile upstream=0"#),
        "{text}"
    );
}

/// `max_age` ends a wait behind an open breaker as it ends retries: a deferral that
/// would reach past it dead-letters the delivery (no attempt spent on it), and the
/// record says why.
async fn a_delivery_the_breaker_keeps_waiting_past_max_age_is_dead_lettered_without_an_attempt(
    store: TestStore,
) {
    let down = closed_port().await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .queued()
            .route("*", format!("http://{down}/hooks"))
            .route_option("breaker", r#"{ failures = 1, cooldown = "30s" }"#)
            .queue_option(
                "backoff",
                r#"{ initial = "50ms", max = "100ms", jitter = false }"#,
            )
            .queue_option("max_age", r#""3s""#),
    )
    .await;

    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;

    let record = Deliveries::of(&gw)
        .wait_for_state(&id, "failed_final")
        .await;
    assert_eq!(
        record["attempts"], 1,
        "the failed one; the wait was none: {record:#}"
    );
    let error = record["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("circuit breaker stayed open until past queue.max_age"),
        "{record:#}"
    );
}

/// Such a dead letter is in the delivery log too, where one follows an event: it ended
/// at its last `failed_retryable` line there (only a warning of another target said
/// more).
#[tokio::test]
async fn a_dead_letter_made_without_an_attempt_has_its_delivery_log_line() {
    let down = closed_port().await;
    let gw = GatewayProcess::spawn(
        config()
            .queued()
            .named_route("fragile", "*", format!("http://{down}/hooks"))
            .route_option("breaker", r#"{ failures = 1, cooldown = "30s" }"#)
            .queue_option(
                "backoff",
                r#"{ initial = "50ms", max = "100ms", jitter = false }"#,
            )
            .queue_option("max_age", r#""2s""#),
    )
    .await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    Deliveries::at(gw.admin_addr)
        .wait_for_state(&id, "failed_final")
        .await;
    let log = gw.log_containing(r#""result":"failed_final""#).await;
    let line = log
        .lines()
        .find(|l| {
            l.contains(r#""target":"hookgate::delivery""#)
                && l.contains(r#""result":"failed_final""#)
        })
        .unwrap_or_else(|| panic!("no delivery line for the dead letter:\n{log}"));
    for field in [
        format!(r#""delivery_id":"{id}""#),
        r#""source":"openai""#.to_owned(),
        r#""route":"fragile""#.to_owned(),
        r#""attempt":1"#.to_owned(),
    ] {
        assert!(line.contains(&field), "{field} in {line}");
    }
    assert!(line.contains("circuit breaker stayed open"), "{line}");
}

/// Pointing a route away from its dead upstream, the usual fix in an incident, takes
/// effect at the reload: the breaker judged the old upstream and starts afresh (it
/// stayed open for the rest of its cooldown, refusing every delivery).
#[tokio::test]
async fn a_reload_that_points_the_route_elsewhere_starts_its_breaker_afresh() {
    let dead = closed_port().await;
    let healthy = Upstream::start().await;
    let to = |upstream: String| {
        config()
            .named_route("fragile", "*", upstream)
            .route_option("breaker", r#"{ failures = 2, cooldown = "1m" }"#)
    };
    let file = ConfigFile::new(to(format!("http://{dead}/hooks")));
    let gw = Gateway::start_file(&file.path()).await;
    for _ in 0..2 {
        assert_eq!(gw.post(PATH, &signed_event("a")).await.status(), 502);
    }
    let refused = gw.post(PATH, &signed_event("a")).await;
    assert_eq!(refused.error(), "upstream_circuit_open");

    file.write(to(healthy.url("/hooks")));
    gw.reload().await.expect("a valid file");

    let reply = gw.post(PATH, &signed_event("a")).await;
    assert!(reply.forwarded(), "{reply:?}");
    assert_eq!(gw.metrics().await.value(STATE), Some(0.0));
}

/// Once the cooldown is over the breaker is half-open, traffic or not: decided only by
/// the next request, the gauge said open for as long as none came.
#[tokio::test]
async fn the_gauge_says_half_open_once_the_cooldown_is_over_without_traffic() {
    let upstream = Upstream::with(Answer::status(500)).await;
    let gw = Gateway::start(
        config()
            .named_route("fragile", "*", &upstream)
            // Long enough that the checks right after an opening see it open on a
            // slow machine.
            .route_option("breaker", r#"{ failures = 2, cooldown = "3s" }"#),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(gw.post(PATH, &signed_event("a")).await.status(), 500);
    }
    assert_eq!(gw.metrics().await.value(STATE), Some(1.0));
    eventually("half-open after the cooldown", async || {
        match gw.metrics().await.value(STATE) {
            Some(2.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let scrape = gw.metrics().await;
    assert_eq!(
        transitions(&scrape, "openai/fragile", "0", "half_open"),
        1.0
    );
    // The next request is the probe; its failure opens the breaker again.
    assert_eq!(gw.post(PATH, &signed_event("b")).await.status(), 500);
    let scrape = gw.metrics().await;
    assert_eq!(scrape.value(STATE), Some(1.0));
    assert_eq!(
        transitions(&scrape, "openai/fragile", "0", "half_open"),
        1.0
    );
    assert_eq!(transitions(&scrape, "openai/fragile", "0", "open"), 2.0);
}
