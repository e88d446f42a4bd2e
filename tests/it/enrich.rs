//! OpenAI-native delivery (`enrich`): the object behind a thin OpenAI event is fetched
//! from the API (a stand-in speaking its wire format: `OpenAiApi`) before the first
//! attempt, and the backend gets `{"event", "object"}` signed by hookgate. Real gateways
//! (in-process, and a child process for its log), a real backend, real Redis; shared
//! bodies run on the in-memory queue and on Redis.

use std::time::Duration;

use hookgate::sign::SignedRequest;
use hookgate::verify::standard_webhooks::{key_from_secret, sign};
use http::Method;

use crate::support::*;

/// hookgate's own signature for the backend (`resign`).
const BACKEND_SECRET: &str = "whsec_ZW5yaWNoLWJhY2tlbmQtc2VjcmV0LWZvci10ZXN0cyE=";
/// Backoff with no jitter, so its lower bounds are exact.
const BACKOFF: &str = r#"{ initial = "100ms", max = "400ms", jitter = false }"#;
const ROUTE: &str = "openai/0";

/// A queue-mode gateway on `store` whose one route enriches every event from `api` and
/// delivers to `backend`, re-signed; fetches time out after `timeout`.
fn enrich_config(store: &TestStore, api: &OpenAiApi, backend: &Upstream, timeout: &str) -> Config {
    enrich_config_with_key(store, api, backend, timeout, OPENAI_KEY)
}

fn enrich_config_with_key(
    store: &TestStore,
    api: &OpenAiApi,
    backend: &Upstream,
    timeout: &str,
    key: &str,
) -> Config {
    config()
        .store(store)
        .queued()
        .resigned_route("*", backend, BACKEND_SECRET)
        .enrich(&format!(
            "{{ provider = \"openai\", api_key = \"{key}\", api_base = \"{}\", \
             organization = \"org-hookgate\", project = \"proj_tickets\", timeout = \"{timeout}\" }}",
            api.api_base()
        ))
        .upstream_timeout("5s")
        .queue_option("workers", "4")
        .queue_option("backoff", BACKOFF)
        .queue_option("visibility_timeout", r#""2s""#)
}

/// An event as OpenAI sends it (`data` as given), signed with `SECRET` under a fresh
/// `webhook-id`.
fn openai_event(event_type: &str, data: &str) -> SignedRequest {
    signed_body(&format!(
        r#"{{"id":"evt_{}","object":"event","created_at":{},"type":"{event_type}","data":{data}}}"#,
        fresh_id().trim_start_matches("msg_"),
        now_unix()
    ))
}

/// What the backend must get for `event` enriched with `object`: both byte for byte.
fn enriched(event: &SignedRequest, object: &str) -> String {
    format!(r#"{{"event":{},"object":{object}}}"#, event.body)
}

#[track_caller]
fn assert_signed_by_hookgate(received: &Received) {
    let key = key_from_secret(BACKEND_SECRET).expect("a valid secret");
    let timestamp: i64 = received
        .header("webhook-timestamp")
        .parse()
        .expect("a timestamp");
    let expected = sign(
        &key,
        received.header("webhook-id"),
        timestamp,
        &received.body,
    );
    assert_eq!(received.header("webhook-signature"), expected);
    assert_eq!(received.header("x-hookgate-verified"), "standard-webhooks");
}

/// What the backend received for `event` (by its `webhook-id`), in arrival order.
fn received_for(backend: &Upstream, event: &SignedRequest) -> Vec<Received> {
    backend
        .received()
        .into_iter()
        .filter(|r| r.header("webhook-id") == event.header("webhook-id"))
        .collect()
}

/// `(step, status, result)` of each history entry of a record.
fn steps(record: &serde_json::Value) -> Vec<(String, Option<u64>, String)> {
    record["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|entry| {
            (
                entry["step"].as_str().unwrap_or("deliver").to_owned(),
                entry["status"].as_u64(),
                entry["result"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn step(step: &str, status: Option<u64>, result: &str) -> (String, Option<u64>, String) {
    (step.to_owned(), status, result.to_owned())
}

on_each_store!(
    each_family_is_fetched_from_its_path_and_delivered_as_event_and_object_signed_by_hookgate,
    a_retry_or_replay_to_the_backend_delivers_the_kept_object_without_fetching_again,
    a_rate_limited_fetch_waits_for_retry_after_and_is_not_counted_as_an_attempt,
    a_failing_or_hung_api_is_retried_with_the_backoff_until_it_answers,
    a_refused_api_key_makes_the_delivery_failed_final_saying_so,
    a_missing_object_makes_the_delivery_failed_final_saying_so,
    a_sip_call_and_an_eval_run_are_delivered_as_received_at_once,
    the_api_key_never_appears_in_logs_records_or_the_upstream_request_and_a_refusal_is_logged_once,
);

async fn each_family_is_fetched_from_its_path_and_delivered_as_event_and_object_signed_by_hookgate(
    store: TestStore,
) {
    let api = OpenAiApi::start().await;
    let families = [
        (
            openai_event("response.completed", r#"{"id":"resp_e1"}"#),
            "/responses/resp_e1",
            response_object("resp_e1"),
        ),
        (
            openai_event("batch.completed", r#"{"id":"batch_e1"}"#),
            "/batches/batch_e1",
            batch_object("batch_e1"),
        ),
        (
            openai_event("fine_tuning.job.succeeded", r#"{"id":"ftjob-e1"}"#),
            "/fine_tuning/jobs/ftjob-e1",
            fine_tuning_job_object("ftjob-e1"),
        ),
    ];
    for (_, path, object) in &families {
        api.store(path, object);
    }
    let backend = Upstream::start().await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "5s")).await;
    let deliveries = Deliveries::of(&gw);

    let mut ids = Vec::new();
    for (event, _, _) in &families {
        ids.push(enqueue(&gw.client(), event).await);
    }
    for id in &ids {
        deliveries.wait_for_state(id, "processed").await;
    }

    let asked: Vec<String> = api.received().iter().map(|r| r.path.clone()).collect();
    for ((event, path, object), id) in families.iter().zip(&ids) {
        assert!(asked.contains(&format!("/v1{path}")), "{path} in {asked:?}");
        let [got] = &received_for(&backend, event)[..] else {
            panic!("one delivery of {}", event.header("webhook-id"));
        };
        assert_eq!(
            String::from_utf8_lossy(&got.body),
            enriched(event, object),
            "the event and the object, byte for byte"
        );
        assert_eq!(got.header("content-type"), "application/json");
        assert_eq!(got.header("x-hookgate-enriched"), "openai");
        assert_eq!(got.header("x-hookgate-attempt"), "1");
        assert_signed_by_hookgate(got);
        let record = deliveries.record(id).await;
        assert_eq!(record["attempts"], 1);
        assert_eq!(
            steps(&record),
            [
                step("fetch", Some(200), "fetched"),
                step("deliver", Some(200), "processed")
            ]
        );
        // Delivered: the object goes with the body (only dead letters keep them).
        let with_body = deliveries
            .request(Method::GET, &format!("/deliveries/{id}?body=true"))
            .await
            .json();
        assert!(with_body.get("object").is_none(), "{with_body}");
    }
    for request in api.received() {
        assert_eq!(request.method, Method::GET);
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
        assert_eq!(request.header("openai-organization"), Some("org-hookgate"));
        assert_eq!(request.header("openai-project"), Some("proj_tickets"));
        assert_eq!(request.header("accept"), Some("application/json"));
        assert!(request.body.is_empty());
        // Nothing of the sender's request reaches the API.
        for sender in [
            "webhook-id",
            "webhook-signature",
            "webhook-timestamp",
            "x-forwarded-for",
            "x-hookgate-source",
            "content-type",
        ] {
            assert_eq!(request.header(sender), None, "{sender} sent to the API");
        }
    }
    let metrics = gw.metrics().await;
    let fetched = format!(r#"hookgate_enrich_requests_total{{result="fetched",route="{ROUTE}"}}"#);
    assert_eq!(metrics.value(&fetched), Some(3.0));
    let timed = format!(r#"hookgate_enrich_duration_seconds_count{{route="{ROUTE}"}}"#);
    assert_eq!(metrics.value(&timed), Some(3.0));
}

async fn a_retry_or_replay_to_the_backend_delivers_the_kept_object_without_fetching_again(
    store: TestStore,
) {
    let api = OpenAiApi::start().await;
    api.store("/responses/resp_r1", &response_object("resp_r1"));
    let backend = Upstream::with(Behaviour::sequence([
        Answer::status(500),
        Answer::status(400),
        Answer::ok(),
    ]))
    .await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "5s")).await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("response.completed", r#"{"id":"resp_r1"}"#);

    let id = enqueue(&gw.client(), &event).await;
    let dead = deliveries.wait_for_state(&id, "failed_final").await;

    assert_eq!(dead["attempts"], 2);
    assert_eq!(
        steps(&dead),
        [
            step("fetch", Some(200), "fetched"),
            step("deliver", Some(500), "failed_retryable"),
            step("deliver", Some(400), "failed_final"),
        ]
    );
    // A dead letter keeps the object, as it keeps the body.
    let with_body = deliveries
        .request(Method::GET, &format!("/deliveries/{id}?body=true"))
        .await
        .json();
    assert_eq!(
        with_body["object"],
        response_object("resp_r1"),
        "{with_body}"
    );

    let replay = deliveries
        .request(Method::POST, &format!("/deliveries/{id}/replay"))
        .await;
    assert_eq!(replay.status(), 200, "{replay:?}");
    deliveries.wait_for_state(&id, "processed").await;

    let got = received_for(&backend, &event);
    assert_eq!(got.len(), 3);
    for attempt in &got {
        assert_eq!(
            String::from_utf8_lossy(&attempt.body),
            enriched(&event, &response_object("resp_r1"))
        );
        assert_signed_by_hookgate(attempt);
    }
    assert_eq!(api.received().len(), 1, "fetched once, for every attempt");
}

async fn a_rate_limited_fetch_waits_for_retry_after_and_is_not_counted_as_an_attempt(
    store: TestStore,
) {
    let api = OpenAiApi::start().await;
    api.store("/batches/batch_t1", &batch_object("batch_t1"));
    api.then([ApiAnswer::RateLimited {
        retry_after_secs: 1,
    }]);
    let backend = Upstream::start().await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "5s")).await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("batch.completed", r#"{"id":"batch_t1"}"#);

    let id = enqueue(&gw.client(), &event).await;
    let record = deliveries.wait_for_state(&id, "processed").await;

    let asked = api.received();
    assert_eq!(asked.len(), 2, "throttled, then fetched");
    let waited = asked[1].at - asked[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, not {waited:?} (the backoff alone is 100 ms)"
    );
    assert_eq!(record["attempts"], 1, "the throttled fetch was no attempt");
    assert_eq!(
        steps(&record),
        [
            step("fetch", Some(429), "failed_retryable"),
            step("fetch", Some(200), "fetched"),
            step("deliver", Some(200), "processed"),
        ]
    );
    let throttled = record["history"][0]["error"].as_str().unwrap();
    assert!(
        throttled.starts_with(
            "GET /batches/batch_t1: the OpenAI API answered 429 (requests, rate_limit_exceeded) \
             (x-request-id req_"
        ),
        "{throttled}"
    );
    let [got] = &received_for(&backend, &event)[..] else {
        panic!("one delivery");
    };
    assert_eq!(got.header("x-hookgate-attempt"), "1");
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        enriched(&event, &batch_object("batch_t1"))
    );
}

async fn a_failing_or_hung_api_is_retried_with_the_backoff_until_it_answers(store: TestStore) {
    let api = OpenAiApi::start().await;
    api.store(
        "/fine_tuning/jobs/ftjob-h1",
        &fine_tuning_job_object("ftjob-h1"),
    );
    api.then([ApiAnswer::ServerError, ApiAnswer::Hang]);
    let backend = Upstream::start().await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "300ms")).await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("fine_tuning.job.succeeded", r#"{"id":"ftjob-h1"}"#);

    let id = enqueue(&gw.client(), &event).await;
    let record = deliveries.wait_for_state(&id, "processed").await;

    assert_eq!(api.received().len(), 3);
    assert_eq!(record["attempts"], 1);
    assert_eq!(
        steps(&record),
        [
            step("fetch", Some(500), "failed_retryable"),
            step("fetch", None, "failed_retryable"),
            step("fetch", Some(200), "fetched"),
            step("deliver", Some(200), "processed"),
        ]
    );
    let hung = &record["history"][1];
    assert_eq!(
        hung["error"],
        "GET /fine_tuning/jobs/ftjob-h1: no answer from the OpenAI API within enrich.timeout (300ms)"
    );
    assert!(hung["duration_ms"].as_u64().unwrap() >= 300, "{hung}");
    let asked = api.received();
    assert!(
        asked[1].at - asked[0].at >= Duration::from_millis(100),
        "the backoff after the first failed fetch"
    );
    let started = |n: usize| record["history"][n]["started_at"].as_u64().unwrap();
    assert!(
        started(2) - started(1) >= 300 + 200,
        "the timeout, then the doubled backoff: {record:#}"
    );
    assert_eq!(received_for(&backend, &event).len(), 1);
    let metrics = gw.metrics().await;
    for (result, n) in [("server_error", 1.0), ("timeout", 1.0), ("fetched", 1.0)] {
        let series =
            format!(r#"hookgate_enrich_requests_total{{result="{result}",route="{ROUTE}"}}"#);
        assert_eq!(metrics.value(&series), Some(n), "{series}");
    }
}

async fn a_refused_api_key_makes_the_delivery_failed_final_saying_so(store: TestStore) {
    let api = OpenAiApi::with_key("sk-proj-someOtherProjectsKey").await;
    api.store("/responses/resp_k1", &response_object("resp_k1"));
    let backend = Upstream::start().await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "5s")).await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("response.completed", r#"{"id":"resp_k1"}"#);

    let id = enqueue(&gw.client(), &event).await;
    let record = deliveries.wait_for_state(&id, "failed_final").await;

    assert_eq!(record["attempts"], 0, "never attempted");
    assert_eq!(record["last_status"], 401);
    let error = record["last_error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "GET /responses/resp_k1: the OpenAI API answered 401 (invalid_request_error, \
             invalid_api_key): the API key was refused"
        ),
        "{error}"
    );
    assert!(
        error.ends_with(
            "not retried: fix the route's enrich.api_key (or its organization or project), then replay"
        ),
        "{error}"
    );
    assert!(
        !error.contains("Incorrect API key"),
        "never the API's message: {error}"
    );
    assert_eq!(steps(&record), [step("fetch", Some(401), "failed_final")]);
    assert_eq!(api.received().len(), 1, "not retried");
    assert!(backend.received().is_empty());
    let metrics = gw.metrics().await;
    let refused =
        format!(r#"hookgate_enrich_requests_total{{result="key_refused",route="{ROUTE}"}}"#);
    assert_eq!(metrics.value(&refused), Some(1.0));
    let dead = format!(r#"hookgate_deliveries_total{{result="failed_final",route="{ROUTE}"}}"#);
    assert_eq!(metrics.value(&dead), Some(1.0));
}

async fn a_missing_object_makes_the_delivery_failed_final_saying_so(store: TestStore) {
    let api = OpenAiApi::start().await;
    let backend = Upstream::start().await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "5s")).await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("response.completed", r#"{"id":"resp_expired"}"#);

    let id = enqueue(&gw.client(), &event).await;
    let record = deliveries.wait_for_state(&id, "failed_final").await;

    assert_eq!(record["attempts"], 0);
    assert_eq!(record["last_status"], 404);
    let error = record["last_error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "GET /responses/resp_expired: the OpenAI API answered 404 (invalid_request_error): \
             no such object (it expired, or belongs to another project or organization)"
        ),
        "{error}"
    );
    assert!(error.ends_with("; not retried"), "{error}");
    assert_eq!(api.received().len(), 1);

    // An object of another project is a 404 too, even though it exists.
    api.store(
        "/responses/resp_elsewhere",
        &response_object("resp_elsewhere"),
    );
    api.then([ApiAnswer::NotFound]);
    let elsewhere = openai_event("response.completed", r#"{"id":"resp_elsewhere"}"#);
    let id = enqueue(&gw.client(), &elsewhere).await;
    let record = deliveries.wait_for_state(&id, "failed_final").await;
    assert_eq!(record["last_status"], 404);
    assert_eq!(steps(&record), [step("fetch", Some(404), "failed_final")]);
    assert_eq!(api.received().len(), 2);
    assert!(backend.received().is_empty());
}

async fn a_sip_call_and_an_eval_run_are_delivered_as_received_at_once(store: TestStore) {
    let api = OpenAiApi::start().await;
    let backend = Upstream::start().await;
    let gw = Gateway::start(enrich_config(&store, &api, &backend, "5s")).await;
    let deliveries = Deliveries::of(&gw);
    let call = openai_event(
        "realtime.call.incoming",
        r#"{"call_id":"rtc_479a275623b54bdb9b6fbae2f7cbd408","sip_headers":[{"name":"From","value":"sip:+142555512112@sip.example.com"},{"name":"To","value":"sip:+18005551212@sip.example.com"}]}"#,
    );
    let eval_run = openai_event("eval.run.succeeded", r#"{"id":"evalrun_abc123"}"#);

    for event in [&call, &eval_run] {
        let id = enqueue(&gw.client(), event).await;
        let record = deliveries.wait_for_state(&id, "processed").await;
        assert_eq!(steps(&record), [step("deliver", Some(200), "processed")]);
        let [got] = &received_for(&backend, event)[..] else {
            panic!("one delivery");
        };
        assert_eq!(got.body, event.body.as_bytes(), "the event as received");
        assert_eq!(got.header("content-type"), "application/json");
        assert!(got.headers.get("x-hookgate-enriched").is_none());
        assert_signed_by_hookgate(got);
    }
    assert!(api.received().is_empty(), "nothing fetched");
}

#[tokio::test]
async fn a_key_fixed_by_a_reload_then_a_replay_delivers_what_the_refused_key_left_dead() {
    let api = OpenAiApi::start().await;
    api.store("/responses/resp_f1", &response_object("resp_f1"));
    let backend = Upstream::start().await;
    let memory = TestStore::memory();
    let wrong = enrich_config_with_key(&memory, &api, &backend, "5s", "sk-proj-revokedKey000");
    let file = ConfigFile::new(wrong);
    let gw = Gateway::start_file(&file.path()).await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("response.completed", r#"{"id":"resp_f1"}"#);
    let id = enqueue(&gw.client(), &event).await;
    deliveries.wait_for_state(&id, "failed_final").await;

    file.write(enrich_config(&memory, &api, &backend, "5s"));
    gw.reload().await.expect("the fixed config loads");
    let replay = deliveries
        .request(Method::POST, &format!("/deliveries/{id}/replay"))
        .await;

    assert_eq!(replay.status(), 200, "{replay:?}");
    let record = deliveries.wait_for_state(&id, "processed").await;
    assert_eq!(
        steps(&record),
        [
            step("fetch", Some(401), "failed_final"),
            step("fetch", Some(200), "fetched"),
            step("deliver", Some(200), "processed"),
        ]
    );
    let [got] = &received_for(&backend, &event)[..] else {
        panic!("one delivery");
    };
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        enriched(&event, &response_object("resp_f1"))
    );
}

#[tokio::test]
async fn an_unreachable_api_is_retried_without_counting_attempts_and_the_record_says_where() {
    let down = closed_port().await;
    let backend = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .queued()
            .resigned_route("*", &backend, BACKEND_SECRET)
            .enrich(&format!(
                "{{ provider = \"openai\", api_key = \"{OPENAI_KEY}\", api_base = \"http://{down}/v1\" }}"
            ))
            .queue_option("backoff", BACKOFF),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    let event = openai_event("response.completed", r#"{"id":"resp_u1"}"#);

    let id = enqueue(&gw.client(), &event).await;
    let record = eventually("two failed fetches", async || {
        let record = deliveries.record(&id).await;
        let fetches = record["history"]
            .as_array()
            .map_or(0, |h| h.iter().filter(|e| e["step"] == "fetch").count());
        if fetches >= 2 {
            Ok(record)
        } else {
            Err(format!("{record:#}"))
        }
    })
    .await;

    // Every step that ended is a fetch; the only attempt counted is one that has begun
    // and not ended (the next fetch may be under way as the record is read).
    let history = record["history"].as_array().unwrap();
    let (ended, open): (Vec<_>, Vec<_>) = history.iter().partition(|e| e.get("result").is_some());
    assert!(open.len() <= 1, "{record:#}");
    assert_eq!(record["attempts"], open.len(), "{record:#}");
    for fetch in ended {
        assert_eq!(fetch["step"], "fetch");
        let error = fetch["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!(
                "GET /responses/resp_u1: the OpenAI API at 127.0.0.1:{} is unreachable: ",
                down.port()
            )),
            "{error}"
        );
    }
    assert!(backend.received().is_empty());
    let unreachable =
        format!(r#"hookgate_enrich_requests_total{{result="unreachable",route="{ROUTE}"}}"#);
    assert!(gw.metrics().await.value(&unreachable).unwrap() >= 2.0);
}

async fn the_api_key_never_appears_in_logs_records_or_the_upstream_request_and_a_refusal_is_logged_once(
    store: TestStore,
) {
    let api = OpenAiApi::start().await;
    api.store("/responses/resp_s1", &response_object("resp_s1"));
    api.then([ApiAnswer::KeyRefused, ApiAnswer::KeyRefused]);
    let backend = Upstream::start().await;
    let gw =
        GatewayProcess::spawn_logging(enrich_config(&store, &api, &backend, "5s"), "debug").await;
    let deliveries = Deliveries::at(gw.admin_addr);
    let refused = [
        openai_event("response.completed", r#"{"id":"resp_s1"}"#),
        openai_event("response.failed", r#"{"id":"resp_s1"}"#),
    ];
    let fetched = openai_event("response.completed", r#"{"id":"resp_s1"}"#);

    let mut ids = Vec::new();
    for event in &refused {
        let id = enqueue(&gw.client(), event).await;
        deliveries.wait_for_state(&id, "failed_final").await;
        ids.push(id);
    }
    let id = enqueue(&gw.client(), &fetched).await;
    deliveries.wait_for_state(&id, "processed").await;
    ids.push(id);

    let log = gw.log_containing("REFUSED THE API KEY").await;
    let loud: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("REFUSED THE API KEY"))
        .collect();
    assert_eq!(loud.len(), 1, "logged once, loudly:\n{log}");
    assert!(loud[0].contains(r#""level":"ERROR""#), "{}", loud[0]);
    assert!(loud[0].contains(ROUTE), "{}", loud[0]);
    // The key, and the API's own partial quote of it, appear nowhere.
    let hidden = [
        OPENAI_KEY,
        &OPENAI_KEY[OPENAI_KEY.len() - 12..],
        "Incorrect API key",
    ];
    for text in hidden {
        assert!(!log.contains(text), "{text:?} in the log:\n{log}");
    }
    for id in &ids {
        let record = deliveries
            .request(Method::GET, &format!("/deliveries/{id}?body=true"))
            .await
            .text();
        for text in hidden {
            assert!(!record.contains(text), "{text:?} in the record: {record}");
        }
    }
    let [got] = &received_for(&backend, &fetched)[..] else {
        panic!("one delivery");
    };
    let sent = format!("{:?} {}", got.headers, String::from_utf8_lossy(&got.body));
    for text in hidden {
        assert!(!sent.contains(text), "{text:?} sent to the backend: {sent}");
    }
    assert_eq!(backend.received().len(), 1);
}

#[tokio::test]
async fn check_shows_each_routes_enrichment_but_never_its_key() {
    let api = OpenAiApi::start().await;
    let backend = Upstream::start().await;
    let file = ConfigFile::new(enrich_config(&TestStore::memory(), &api, &backend, "5s"));

    let (ok, stdout, stderr) =
        hookgate_cli(&["check", "--config", &file.path().display().to_string()]).await;

    assert!(ok, "{stdout}\n{stderr}");
    let line = format!(
        "enrich openai: objects fetched from {} before the first attempt (timeout 5s, \
         organization org-hookgate, project proj_tickets; API key not shown)",
        api.api_base()
    );
    assert!(stdout.contains(&line), "{stdout}");
    assert!(!stdout.contains(OPENAI_KEY) && !stderr.contains(OPENAI_KEY));
}

/// The fenced block of the README's `enrich` section that starts with a comment naming
/// `file`, as written there.
fn readme_backend(file: &str) -> String {
    const README: &str = include_str!("../../README.md");
    let section = README
        .split_once("### OpenAI-native delivery: `enrich`")
        .expect("the README has the enrich section")
        .1;
    let start = section
        .find(&format!("# {file}:"))
        .or_else(|| section.find(&format!("// {file}:")))
        .unwrap_or_else(|| panic!("a block for {file} in the enrich section"));
    let code = &section[start..];
    code[..code.find("\n```").expect("the block ends")].to_owned()
}

/// The README's backend code in `file`, run by `program` behind a gateway whose route
/// enriches events and re-signs them with `secret` (the backend's `WEBHOOK_SECRET`).
async fn the_readme_backend_reads_the_object_after_checking_hookgates_signature(
    program: &'static str,
    file: &str,
    secret: &str,
) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = dir.path().join(file);
    std::fs::write(&script, readme_backend(file)).expect("write the README's code");
    let script = script.display().to_string();
    let Some(backend) = crate::examples::Example::spawn_with_secret(program, &[&script], secret)
    else {
        return;
    };
    let api = OpenAiApi::start().await;
    api.store("/responses/resp_abc123", &response_object("resp_abc123"));
    let gw = Gateway::start(
        config()
            .queued()
            .resigned_route("*", backend.url().as_str(), secret)
            .enrich(&format!(
                "{{ provider = \"openai\", api_key = \"{OPENAI_KEY}\", api_base = \"{}\" }}",
                api.api_base()
            ))
            .queue_option("backoff", BACKOFF),
    )
    .await;
    let deliveries = Deliveries::of(&gw);

    let id = enqueue(
        &gw.client(),
        &openai_event("response.completed", r#"{"id":"resp_abc123"}"#),
    )
    .await;
    deliveries.wait_for_state(&id, "processed").await;
    backend.expect_line("response.completed resp_abc123 completed");
    let call = openai_event(
        "realtime.call.incoming",
        r#"{"call_id":"rtc_1","sip_headers":[]}"#,
    );
    let id = enqueue(&gw.client(), &call).await;
    deliveries.wait_for_state(&id, "processed").await;
    backend.expect_line("realtime.call.incoming - -");

    // Not signed with the backend's secret: refused.
    let forged = gw
        .client()
        .post_url(
            &backend.url(),
            &signed_raw(OTHER_SECRET, &fresh_id(), now_unix(), "{}"),
        )
        .await;
    assert_eq!(forged.status(), 401);
}

#[tokio::test]
async fn the_readme_python_backend_reads_the_object_after_checking_hookgates_signature() {
    the_readme_backend_reads_the_object_after_checking_hookgates_signature(
        "python3",
        "enriched_backend.py",
        SECRET,
    )
    .await;
}

/// The README's code reads a secret as hookgate does: text that is not `whsec_` is its
/// own bytes (both blocks refused every delivery with such a secret, or crashed), and
/// `whsec_` base64 may come without padding.
#[tokio::test]
async fn the_readme_backends_read_a_secret_as_hookgate_does() {
    the_readme_backend_reads_the_object_after_checking_hookgates_signature(
        "python3",
        "enriched_backend.py",
        "a raw backend secret",
    )
    .await;
    the_readme_backend_reads_the_object_after_checking_hookgates_signature(
        "node",
        "enriched-backend.js",
        "whsec_bmV3LWJhY2tlbmQtc2VjcmV0LXVucGFkZGVkIQ",
    )
    .await;
    the_readme_backend_reads_the_object_after_checking_hookgates_signature(
        "python3",
        "enriched_backend.py",
        "whsec_bmV3LWJhY2tlbmQtc2VjcmV0LXVucGFkZGVkIQ",
    )
    .await;
}

#[tokio::test]
async fn the_readme_node_backend_reads_the_object_after_checking_hookgates_signature() {
    the_readme_backend_reads_the_object_after_checking_hookgates_signature(
        "node",
        "enriched-backend.js",
        SECRET,
    )
    .await;
}
