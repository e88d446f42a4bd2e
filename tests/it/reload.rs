//! Hot reload (SIGHUP, `POST /reload`): new routes, secrets, rate limits and certificates
//! apply without a restart; requests in progress finish; an invalid file changes nothing;
//! what needs a restart is said so.

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::Full;

use crate::support::*;

async fn post_reload(gw: &Gateway) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(gw.admin_url("/reload"))
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    gw.client().send(request).await
}

/// A gateway started on a file that routes everything to `upstream`, then reloaded with
/// `[limits] key = value` added (the file must outlive the gateway).
async fn reloaded_with_limit(
    upstream: &Upstream,
    key: &'static str,
    value: &str,
) -> (ConfigFile, Gateway, hookgate::reload::Reloaded) {
    let file = ConfigFile::new(config().route("*", upstream));
    let gw = Gateway::start_file(&file.path()).await;
    file.write(config().route("*", upstream).set("limits", key, value));
    let reloaded = gw.reload().await.expect("a valid file");
    (file, gw, reloaded)
}

#[tokio::test]
async fn a_reload_sends_new_deliveries_to_a_new_route_while_one_in_progress_finishes() {
    let before = Upstream::with(Answer::held()).await;
    let after = Upstream::start().await;
    let file = ConfigFile::new(config().route("*", &before));
    let gw = Gateway::start_file(&file.path()).await;
    let first = gw
        .client()
        .post_in_background(PATH, &signed_event("response.completed"));
    before.wait_for(1).await;

    file.write(config().route("*", &after));
    let reloaded = post_reload(&gw).await;

    assert_eq!(reloaded.status(), 200, "{}", reloaded.text());
    assert_eq!(reloaded.json()["reloaded"], true);
    assert_eq!(reloaded.json()["restart_needed"], serde_json::json!([]));
    assert!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .forwarded()
    );
    assert_eq!(after.received().len(), 1);
    before.release();
    assert_eq!(
        first.await.unwrap().status(),
        200,
        "the request in progress finished"
    );
    assert_eq!(before.received().len(), 1);
    let scrape = gw.metrics().await;
    assert_eq!(
        scrape.value(r#"hookgate_config_reloads_total{result="success"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_configuration_and_counts_an_error() {
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;

    file.write(format!(
        "{}\n[limits]\nupstream_timeout = \"soon\"\n",
        config().route("*", &upstream)
    ));
    let refused = post_reload(&gw).await;

    assert_eq!(refused.status(), 400);
    assert_eq!(refused.error(), "invalid_config");
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("hookgate.toml"), "{detail}");
    assert!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .forwarded()
    );
    let scrape = gw.metrics().await;
    assert_eq!(
        scrape.value(r#"hookgate_config_reloads_total{result="error"}"#),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(r#"hookgate_config_reloads_total{result="success"}"#),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_rotated_secret_and_a_new_rate_limit_apply_after_a_reload() {
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().route("*", &upstream).rate_limit(0.01, 100));
    let gw = Gateway::start_file(&file.path()).await;
    assert_eq!(
        gw.post(PATH, &signed_event_with(OTHER_SECRET, "response.completed"))
            .await
            .error(),
        "invalid_signature"
    );

    file.write(
        config()
            .secrets(&[SECRET, OTHER_SECRET])
            .route("*", &upstream)
            .rate_limit(0.01, 1),
    );
    gw.reload().await.expect("a valid file");

    let rotated = gw
        .post(PATH, &signed_event_with(OTHER_SECRET, "response.completed"))
        .await;
    assert!(rotated.forwarded(), "{rotated:?}");
    let limited = gw.post(PATH, &signed_event("response.completed")).await;
    assert_eq!(limited.status(), 429, "the new burst of 1 applies");
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_reported_and_the_rest_still_applies() {
    let upstream = Upstream::start().await;
    let (_file, gw, reloaded) = reloaded_with_limit(&upstream, "upstream_timeout", "\"3s\"").await;

    assert_eq!(
        reloaded.restart_needed,
        vec!["limits (connection, header-parser and upstream limits)"]
    );
    assert!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .forwarded()
    );
}

#[tokio::test]
async fn a_body_size_beyond_the_running_body_budget_is_refused_and_nothing_changes() {
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;

    file.write(
        config()
            .route("*", &upstream)
            .max_body_bytes(8 * 1024 * 1024)
            .set("limits", "max_buffered_body_bytes_per_ip", "8388608"),
    );
    let refused = gw
        .reload()
        .await
        .expect_err("a budget that cannot hold the body");

    assert!(
        refused.message.contains(
            "limits.max_body_bytes = 8388608 exceeds the running limits.max_buffered_body_bytes_per_ip (4194304)"
        ),
        "{refused}"
    );
    let big = signed_body(&format!(
        r#"{{"type":"x","pad":"{}"}}"#,
        "p".repeat(2 * 1024 * 1024)
    ));
    assert_eq!(gw.post(PATH, &big).await.status(), 413);
}

#[tokio::test]
async fn renewed_certificate_files_are_served_to_new_connections_after_a_reload() {
    let upstream = Upstream::start().await;
    let cert = DevCert::generate();
    let file = ConfigFile::new(config().tls(&cert).route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;
    let url = format!("https://localhost:{}{PATH}", gw.addr().port());
    let post = |pem: Vec<u8>| {
        let url = url.clone();
        async move {
            let client = https_client(&pem, Version::HTTP_11);
            let delivery = signed_event("response.completed");
            let mut builder = Request::post(url);
            for (name, value) in &delivery.headers {
                builder = builder.header(name, value);
            }
            let request = builder
                .body(Full::new(Bytes::from(delivery.body.clone())))
                .unwrap();
            client.request(request).await.map(|r| r.status())
        }
    };
    let old_pem = cert.pem.clone();
    assert_eq!(post(old_pem.clone()).await.unwrap(), 200);

    // Renewal: new files at the same paths (what certbot or cert-manager do).
    let renewed = DevCert::generate();
    write_atomically(&cert.cert, &String::from_utf8(renewed.pem.clone()).unwrap());
    write_atomically(&cert.key, &std::fs::read_to_string(&renewed.key).unwrap());
    gw.reload().await.expect("a valid file");

    assert_eq!(post(renewed.pem.clone()).await.unwrap(), 200);
    assert!(
        post(old_pem).await.is_err(),
        "a client trusting only the old certificate is refused"
    );
    let expiry = "hookgate_tls_certificate_expiry_timestamp_seconds";
    let expires = gw.metrics().await.value(expiry).expect("the expiry gauge");
    assert!(
        expires > hookgate::queue::now_millis() as f64 / 1000.0,
        "{expires}"
    );

    // An expired certificate (a stale copy deployed by mistake) is refused, and the
    // running one kept: swapped in, every sender's handshake failed.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let stale_key = rcgen::KeyPair::generate().unwrap();
    let stale = params.self_signed(&stale_key).unwrap();
    write_atomically(&cert.cert, &stale.pem());
    write_atomically(&cert.key, &stale_key.serialize_pem());
    let refused = gw
        .reload()
        .await
        .expect_err("an expired certificate")
        .to_string();
    assert!(refused.contains("expired at 2020-02-01"), "{refused}");
    assert_eq!(post(renewed.pem.clone()).await.unwrap(), 200);
    assert_eq!(gw.metrics().await.value(expiry), Some(expires));
}

#[tokio::test]
async fn sighup_reloads_a_running_process() {
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::spawn(config().route("*", &upstream)).await;
    let client = gw.client();
    let rotated = || signed_event_with(OTHER_SECRET, "response.completed");
    assert_eq!(client.post(PATH, &rotated()).await.status(), 400);

    gw.config_file().write(
        config()
            .secrets(&[SECRET, OTHER_SECRET])
            .route("*", &upstream),
    );
    gw.hangup();

    eventually("the process to reload on SIGHUP", || async {
        client.post(PATH, &rotated()).await.forwarded()
    })
    .await;
    eventually("the reload to be counted", || async {
        gw.metrics()
            .await
            .value(r#"hookgate_config_reloads_total{result="success"}"#)
            == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_lowered_header_limit_keeps_its_running_value_until_a_restart() {
    let upstream = Upstream::start().await;
    let (_file, gw, reloaded) = reloaded_with_limit(&upstream, "max_headers", "8").await;
    let mut request = delivery_request(&gw.url(PATH), &signed_event("response.completed"));
    for i in 0..10 {
        let name = http::HeaderName::try_from(format!("x-extra-{i}")).unwrap();
        request
            .headers_mut()
            .insert(name, http::HeaderValue::from_static("1"));
    }
    let reply = gw.send(request).await;

    assert_eq!(
        reloaded.restart_needed,
        vec!["limits (connection, header-parser and upstream limits)"]
    );
    // The listener's parser still takes 100 headers: the gateway's own check agrees.
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn trusted_proxies_added_by_a_reload_are_exempt_from_the_per_ip_connection_limit() {
    let upstream = Upstream::start().await;
    let one_per_ip = || {
        config()
            .set("limits", "max_connections_per_ip", "1")
            .route("*", &upstream)
    };
    let file = ConfigFile::new(one_per_ip());
    let gw = Gateway::start_file(&file.path()).await;
    let _held = connect_from("127.0.0.2", gw.addr()).await.unwrap();
    gw.wait_for_open_connections(1).await;

    file.write(one_per_ip().set("rate_limit", "trusted_proxies", r#"["127.0.0.2/32"]"#));
    let reloaded = gw.reload().await.expect("a valid file");
    let (status, _) = post_from("127.0.0.2", gw.addr(), &signed_event("response.completed")).await;

    assert_eq!(reloaded.restart_needed, Vec::<&str>::new());
    assert_eq!(
        status, 200,
        "a second connection from a now trusted proxy is admitted"
    );
    assert_eq!(upstream.received().len(), 1);
}

/// The file's own check holds `admin.token` against the file's `admin.listen`; the
/// listener cannot move without a restart, so a reload that drops the token while
/// moving `admin.listen` to loopback would leave the running, public listener open.
#[tokio::test]
async fn a_reload_cannot_drop_the_admin_token_while_the_admin_listener_is_public() {
    let upstream = Upstream::start().await;
    let public = config()
        .route("*", &upstream)
        .set("admin", "listen", "\"0.0.0.0:0\"")
        .admin_token("s3cret-admin-token");
    let file = ConfigFile::new(public);
    let gw = Gateway::start_file(&file.path()).await;
    assert_eq!(post_reload(&gw).await.status(), 401);

    file.write(
        config()
            .route("*", &upstream)
            .set("admin", "listen", "\"127.0.0.1:0\""),
    );
    let refused = gw
        .reload()
        .await
        .expect_err("a public listener without a token");

    assert_eq!(refused.key.as_deref(), Some("admin.token"), "{refused}");
    assert!(
        refused.message.contains("is not on a loopback address"),
        "{refused}"
    );
    assert_eq!(
        post_reload(&gw).await.status(),
        401,
        "still needs the token"
    );
}

/// `limits.upstream_timeout` needs a restart, so forwards keep waiting as long as they
/// did; a claim's default in-flight TTL (upstream timeout + 5 s) must keep following the
/// running timeout, or a copy arriving while a slow forward still runs would win the
/// expired claim and be forwarded again.
#[tokio::test]
async fn a_reload_shortening_the_upstream_timeout_keeps_claims_as_long_as_forwards_run() {
    let upstream = Upstream::with(Answer::held()).await;
    let file = ConfigFile::new(config().upstream_timeout("60s").route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;
    file.write(config().upstream_timeout("10s").route("*", &upstream));
    let reloaded = gw.reload().await.expect("a valid file");
    assert!(
        reloaded
            .restart_needed
            .iter()
            .any(|key| key.contains("upstream limits")),
        "{reloaded:?}"
    );

    let event = signed_event("response.completed");
    let first = gw.client().post_in_background(PATH, &event);
    upstream.wait_for(1).await;
    let copy = gw.post(PATH, &event).await;

    assert_eq!(copy.status(), 409, "{copy:?}");
    assert!(
        copy.retry_after() > 30,
        "the claim lasts the running 60s timeout + 5s: {copy:?}"
    );
    upstream.release();
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(upstream.received().len(), 1);
}

/// Turning `[server.tls]` on or off needs a restart: until then the listener speaks what
/// it spoke, and `X-Forwarded-Proto` at the upstream must keep saying that.
#[tokio::test]
async fn forwarded_proto_follows_the_running_listener_when_a_reload_turns_tls_on_or_off() {
    let upstream = Upstream::start().await;
    let cert = DevCert::generate();
    let plain = ConfigFile::new(config().route("*", &upstream));
    let gw = Gateway::start_file(&plain.path()).await;
    plain.write(config().tls(&cert).route("*", &upstream));
    let reloaded = gw.reload().await.expect("a valid file");
    assert!(
        reloaded
            .restart_needed
            .contains(&"[server.tls] (on or off)"),
        "{reloaded:?}"
    );
    assert_eq!(gw.post(PATH, &signed_event("a.b")).await.status(), 200);
    assert_eq!(upstream.only().header("x-forwarded-proto"), "http");

    let upstream = Upstream::start().await;
    let tls = ConfigFile::new(config().tls(&cert).route("*", &upstream));
    let gw = Gateway::start_file(&tls.path()).await;
    tls.write(config().route("*", &upstream));
    gw.reload().await.expect("a valid file");
    let delivery = signed_event("a.b");
    let mut request = Request::post(format!("https://localhost:{}{PATH}", gw.addr().port()));
    for (name, value) in &delivery.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(delivery.body.clone())))
        .unwrap();
    let reply = https_client(&cert.pem, Version::HTTP_11)
        .request(request)
        .await
        .expect("the listener still speaks TLS");
    assert_eq!(reply.status(), 200);
    assert_eq!(upstream.only().header("x-forwarded-proto"), "https");
}

/// Queue mode with one route, `name`, to `upstream`, retried every 50 ms for long.
fn retried_every_50ms(name: &str, upstream: &Upstream) -> Config {
    config()
        .queued()
        .named_route(name, "*", upstream)
        .queue_option(
            "backoff",
            r#"{ initial = "50ms", max = "50ms", jitter = false }"#,
        )
        .queue_option("max_attempts", "1000")
}

/// A queued delivery whose route this instance lacks (a reload removed it, or the
/// instances already updated in a rolling deploy added it) cannot be sent here: it
/// waits for an instance that has the route, without spending attempts as it once did.
#[tokio::test]
async fn a_queued_delivery_whose_route_this_instance_lacks_waits_without_an_attempt() {
    let upstream = Upstream::with(Answer::status(503)).await;
    let queued = |name: &str| retried_every_50ms(name, &upstream);
    let file = ConfigFile::new(queued("first"));
    let gw = Gateway::start_file(&file.path()).await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    let deliveries = Deliveries::of(&gw);
    eventually("a few failed attempts", async || {
        deliveries.record(&id).await["attempts"].as_u64() >= Some(2)
    })
    .await;

    file.write(queued("second"));
    gw.reload().await.expect("a valid file");
    let waiting = eventually("the delivery waiting for its route", async || {
        let record = deliveries.record(&id).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        match record["next_attempt_at"].as_u64() {
            Some(next) if next > now + 20_000 => Ok(record),
            _ => Err(format!("{record:#}")),
        }
    })
    .await;
    let sent = upstream.received().len();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let record = deliveries.record(&id).await;
    assert_eq!(record["attempts"], waiting["attempts"], "{record:#}");
    assert_eq!(record["state"], "failed_retryable", "{record:#}");
    assert_eq!(upstream.received().len(), sent);
}

/// An explicit `in_flight_ttl` is held against the upstream timeout forwards run with:
/// a file shortening both (the timeout needs a restart) once passed without a warning
/// while claims lasted less than the running forwards.
#[tokio::test]
async fn a_reload_warns_about_an_in_flight_ttl_shorter_than_the_running_upstream_timeout() {
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().upstream_timeout("30s").route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;
    file.write(
        config()
            .upstream_timeout("5s")
            .set("dedupe", "in_flight_ttl", "\"10s\"")
            .route("*", &upstream),
    );
    let reloaded = gw.reload().await.expect("a valid file");
    let warned: Vec<&String> = reloaded
        .warnings
        .iter()
        .filter(|w| w.starts_with("dedupe.in_flight_ttl"))
        .collect();
    assert_eq!(warned.len(), 1, "{reloaded:?}");
    assert!(
        warned[0].contains("shorter than limits.upstream_timeout (30s)"),
        "{reloaded:?}"
    );
}

/// A SIGHUP that arrives while the process is still starting (here: waiting for its
/// PostgreSQL store, which a listener that never answers stands in for) is no reason to
/// end it. SIGHUP's default action ended it (exit by signal), as a reload right after a
/// restart from a config-management handler would.
#[tokio::test]
async fn a_sighup_while_starting_does_not_end_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "postgres://hookgate@{}/hookgate?sslmode=disable",
        silent.local_addr().unwrap()
    );
    let file = ConfigFile::new(
        config()
            .set("store", "postgres_url", &format!("{url:?}"))
            .set("store", "connect_timeout", r#""20s""#)
            .set("store", "timeout", r#""20s""#)
            .route("*", NOWHERE),
    );
    // Killed if the test fails before it has exited; waited for within PATIENCE.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "--config"])
        .arg(file.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start hookgate");
    // Started: it has connected to the store and waits for its answer.
    let (held, _) = tokio::time::timeout(PATIENCE, silent.accept())
        .await
        .expect("hookgate connects to its store")
        .unwrap();

    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().expect("running").to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process while it was starting"
    );
    // The store goes away: the start fails, and the process says so and exits 1.
    drop((held, silent));
    let exit = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("hookgate exits once its store is gone")
        .unwrap();
    assert_eq!((exit.signal(), exit.code()), (None, Some(1)), "{exit}");
}

/// Deliveries taken before a reload and still waiting for a `max_concurrency` slot are
/// attempted under the running configuration: here, at the upstream the route was moved
/// to. They went to the old one, up to as long as the backlog took to drain.
#[tokio::test]
async fn deliveries_waiting_for_a_slot_at_a_reload_go_where_the_route_now_points() {
    let old = Upstream::with(Answer::held()).await;
    let new = Upstream::start().await;
    let to = |upstream: &Upstream| {
        config()
            .queued()
            .route("*", upstream)
            .max_concurrency(1)
            .queue_option("workers", "4")
    };
    let file = ConfigFile::new(to(&old));
    let gw = Gateway::start_file(&file.path()).await;
    let deliveries = Deliveries::of(&gw);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(enqueue(&gw.client(), &signed_event("response.completed")).await);
    }
    old.wait_for(1).await;
    // The other two were taken too, and wait for the one slot.
    eventually("every delivery taken", async || {
        gw.metrics().await.value("hookgate_queue_depth") == Some(3.0)
            && deliveries.list("status=queued").await.len() == 2
    })
    .await;

    file.write(to(&new));
    gw.reload().await.expect("a valid file");
    old.release();

    for id in &ids {
        deliveries.wait_for_state(id, "processed").await;
    }
    assert_eq!(old.received().len(), 1, "only the attempt already running");
    assert_eq!(new.received().len(), 2);
}

/// A delivery whose route this instance lacks, dead-lettered at `max_age`, is counted
/// as every dead letter is: it was counted nowhere, so `HookgateDeadLetters` never
/// said a replay was needed once the route is back.
#[tokio::test]
async fn a_delivery_dead_lettered_for_want_of_its_route_is_counted() {
    let upstream = Upstream::with(Answer::status(503)).await;
    let queued =
        |name: &str| retried_every_50ms(name, &upstream).queue_option("max_age", r#""10s""#);
    let file = ConfigFile::new(queued("first"));
    let gw = Gateway::start_file(&file.path()).await;
    let id = enqueue(&gw.client(), &signed_event("response.completed")).await;
    upstream.wait_for(1).await;

    file.write(queued("second"));
    gw.reload().await.expect("a valid file");
    // Its wait for the route (30 s at a time) ends past max_age: dead at once.
    Deliveries::of(&gw)
        .wait_for_state(&id, "failed_final")
        .await;
    let dead =
        format!(r#"hookgate_deliveries_total{{result="failed_final",route="{SOURCE}/first"}}"#);
    eventually("the dead letter counted", async || {
        match gw.metrics().await.value(&dead) {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// A reload that changes how a source makes its dedupe keys says so: what was already
/// forwarded, or is being forwarded, is not recognised under the new keys, and the
/// sender's retry of it is forwarded again (an audit saw it happen with "warnings":[]).
#[tokio::test]
async fn a_reload_that_changes_a_sources_dedupe_key_warns_that_retries_repeat() {
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;
    // Reloads `config` and says whether source `name` was warned about.
    let rekeyed = async |config: Config, name: &str| {
        file.write(config);
        let reloaded = gw.reload().await.expect("a valid file");
        let warning = format!("(\"{name}\") now makes its dedupe keys differently");
        reloaded.warnings.iter().any(|w| w.contains(&warning))
    };
    let timeout = config()
        .route("*", &upstream)
        .set("limits", "body_read_timeout", "\"7s\"");
    assert!(
        !rekeyed(timeout, "openai").await,
        "nothing of the keys changed"
    );
    let by_body_id = config()
        .route("*", &upstream)
        .source_option("dedupe_key", r#"{ json = "/id" }"#);
    assert!(rekeyed(by_body_id, "openai").await);

    // GitHub's keys hash the event type with the body: routing on the body's `action`
    // instead of the header makes every key anew.
    let github = |event_type: &str| {
        config()
            .route("*", &upstream)
            .scheme_source(
                "gh",
                "/webhooks/gh",
                &format!("scheme = \"github\"\nsecrets = [\"s3cret\"]\n{event_type}"),
            )
            .route("*", &upstream)
    };
    assert!(!rekeyed(github(""), "gh").await, "a new source");
    assert!(rekeyed(github("event_type = \"/action\""), "gh").await);
}

/// A route renamed or removed by a reload takes its series with it: they stayed for
/// good, frozen, and with route names that change (a version in them) the series grew
/// with every name the process had ever had (an audit: 283 to 725 in 17 reloads).
#[tokio::test]
async fn a_route_renamed_by_a_reload_leaves_no_series_behind() {
    let upstream = Upstream::start().await;
    let named = |name: &str| config().named_route(name, "*", &upstream);
    let file = ConfigFile::new(named("v1"));
    let gw = Gateway::start_file(&file.path()).await;
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());
    let before = gw.metrics().await.0;
    assert!(before.contains(r#"route="openai/v1""#), "{before}");

    file.write(named("v2"));
    gw.reload().await.expect("a valid file");
    assert!(gw.post(PATH, &signed_event("a.b")).await.forwarded());
    let after = gw.metrics().await.0;
    assert!(!after.contains(r#"route="openai/v1""#), "{after}");
    assert!(after.contains(r#"route="openai/v2""#), "{after}");
}

/// The console's "Running configuration" shows what runs: a `[queue]` change waits for
/// a restart, and the page showed the file's values meanwhile.
#[tokio::test]
async fn the_console_shows_the_running_values_of_what_waits_for_a_restart() {
    let upstream = Upstream::start().await;
    let with_workers = |workers: &str| {
        config()
            .queued()
            .route("*", &upstream)
            .queue_option("workers", workers)
    };
    let file = ConfigFile::new(with_workers("16"));
    let gw = Gateway::start_file(&file.path()).await;
    let page = gw.admin("/ui/").await.text();
    assert!(page.contains("16 workers"), "{page}");

    file.write(with_workers("4").set("log", "level", r#""debug""#));
    let reloaded = gw.reload().await.expect("a valid file");

    assert_eq!(reloaded.restart_needed, vec!["[queue]", "log.level"]);
    let page = gw.admin("/ui/").await.text();
    assert!(page.contains("16 workers"), "{page}");
    assert!(!page.contains("4 workers"), "{page}");
}

/// A reload that leaves `[penalty_box]` as it was keeps it: a new, empty box on every
/// reload (a secret rotated, a certificate renewed) let every boxed client back in. A
/// changed `[penalty_box]` starts empty, as documented.
#[tokio::test]
async fn a_reload_keeps_the_penalty_box_unless_it_changed() {
    let upstream = Upstream::start().await;
    let boxing = |cooldown: &str| {
        config()
            .set("penalty_box", "max_failures", "2")
            .set("penalty_box", "cooldown", cooldown)
            .route("*", &upstream)
    };
    let file = ConfigFile::new(boxing(r#""10m""#));
    let gw = Gateway::start_file(&file.path()).await;
    for _ in 0..3 {
        let forged = signed_event_with(OTHER_SECRET, "response.completed");
        assert_eq!(gw.post(PATH, &forged).await.error(), "invalid_signature");
    }
    assert_eq!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .error(),
        "penalty_box"
    );

    gw.reload().await.expect("the same file");
    let after_same = gw.post(PATH, &signed_event("response.completed")).await;
    file.write(boxing(r#""9m""#));
    gw.reload().await.expect("a valid file");
    let after_change = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(after_same.error(), "penalty_box", "{after_same:?}");
    assert!(after_change.forwarded(), "{after_change:?}");
}

/// A reload ends the series of a source it removed or renamed, and those of a secret it
/// removed from a source, as it does a route's: kept, each old name left 42 frozen lines
/// in `/metrics` for good, and names with versions or dates in them grew it at every
/// reload.
#[tokio::test]
async fn a_reload_ends_the_series_of_removed_sources_and_secrets() {
    let upstream = Upstream::start().await;
    let two = |name: &str, secrets: &[&str]| {
        config()
            .secrets(secrets)
            .route("*", &upstream)
            .source(name, "/other")
            .route("*", &upstream)
    };
    let file = ConfigFile::new(two("acme_v1", &[SECRET, OTHER_SECRET]));
    let gw = Gateway::start_file(&file.path()).await;
    assert!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .forwarded()
    );
    let verified = format!("hookgate_verified_total{{secret=\"1\",source=\"{SOURCE}\"}}");
    let scrape = gw.metrics().await;
    assert!(scrape.0.contains("acme_v1"));
    assert_eq!(scrape.value(&verified), Some(0.0));

    file.write(two("acme_v2", &[SECRET]));
    gw.reload().await.expect("a valid file");

    let scrape = gw.metrics().await;
    assert!(!scrape.0.contains("acme_v1"), "{}", scrape.0);
    assert!(scrape.0.contains("acme_v2"));
    assert_eq!(scrape.value(&verified), None);
    let kept = format!("hookgate_requests_total{{outcome=\"forwarded\",source=\"{SOURCE}\"}}");
    assert_eq!(scrape.value(&kept), Some(1.0));
}
