//! `match` conditions on routes: each operator against real upstreams, the order of
//! routes with conditions, bodies that are not JSON, and the config errors.

use hookgate::sign::SignedRequest;

use crate::support::*;

/// A signed `response.completed` event with `data` as given.
fn event_with(data: &str) -> SignedRequest {
    signed_body(&format!(
        r#"{{"id":"evt_1","type":"response.completed","data":{data}}}"#
    ))
}

/// Routes `cond` to `/matched`, everything else to `/rest`; posts `data`, and returns
/// the path the event reached.
async fn routed(cond: &str, data: &str) -> String {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("response.*", upstream.url("/matched"))
            .route_option("match", &format!("[{cond}]"))
            .route("*", upstream.url("/rest")),
    )
    .await;
    assert_eq!(gw.post(PATH, &event_with(data)).await.status(), 200);
    upstream.only().path
}

#[tokio::test]
async fn equals_routes_a_matching_string_number_or_boolean_and_nothing_else() {
    let tenant = r#"{ pointer = "/data/tenant", equals = "acme" }"#;
    assert_eq!(routed(tenant, r#"{"tenant":"acme"}"#).await, "/matched");
    assert_eq!(routed(tenant, r#"{"tenant":"globex"}"#).await, "/rest");
    let level = r#"{ pointer = "/data/level", equals = 3 }"#;
    assert_eq!(routed(level, r#"{"level":3}"#).await, "/matched");
    assert_eq!(routed(level, r#"{"level":3.0}"#).await, "/matched");
    assert_eq!(routed(level, r#"{"level":4}"#).await, "/rest");
    let urgent = r#"{ pointer = "/data/urgent", equals = true }"#;
    assert_eq!(routed(urgent, r#"{"urgent":true}"#).await, "/matched");
    assert_eq!(routed(urgent, r#"{"urgent":false}"#).await, "/rest");
}

#[tokio::test]
async fn equals_never_matches_across_types() {
    let level = r#"{ pointer = "/data/level", equals = 3 }"#;
    assert_eq!(routed(level, r#"{"level":"3"}"#).await, "/rest");
    let tenant = r#"{ pointer = "/data/tenant", equals = "true" }"#;
    assert_eq!(routed(tenant, r#"{"tenant":true}"#).await, "/rest");
    assert_eq!(routed(tenant, r#"{"tenant":["true"]}"#).await, "/rest");
}

#[tokio::test]
async fn in_routes_any_listed_value() {
    let status = r#"{ pointer = "/data/status", in = ["completed", "incomplete", 7] }"#;
    assert_eq!(
        routed(status, r#"{"status":"incomplete"}"#).await,
        "/matched"
    );
    assert_eq!(routed(status, r#"{"status":7}"#).await, "/matched");
    assert_eq!(routed(status, r#"{"status":"failed"}"#).await, "/rest");
    assert_eq!(routed(status, r#"{"status":"7"}"#).await, "/rest");
}

#[tokio::test]
async fn exists_routes_on_presence_or_absence() {
    let present = r#"{ pointer = "/data/priority", exists = true }"#;
    assert_eq!(routed(present, r#"{"priority":null}"#).await, "/matched");
    assert_eq!(routed(present, r#"{"other":1}"#).await, "/rest");
    let absent = r#"{ pointer = "/data/priority", exists = false }"#;
    assert_eq!(routed(absent, r#"{"other":1}"#).await, "/matched");
    assert_eq!(routed(absent, r#"{"priority":"high"}"#).await, "/rest");
}

#[tokio::test]
async fn prefix_routes_strings_that_start_with_it() {
    let org = r#"{ pointer = "/data/org", prefix = "org_acme" }"#;
    assert_eq!(routed(org, r#"{"org":"org_acme_eu"}"#).await, "/matched");
    assert_eq!(routed(org, r#"{"org":"org_globex"}"#).await, "/rest");
    assert_eq!(routed(org, r#"{"org":{"id":"org_acme"}}"#).await, "/rest");
}

#[tokio::test]
async fn a_missing_field_or_a_path_through_a_non_object_does_not_match() {
    let tenant = r#"{ pointer = "/data/metadata/tenant", equals = "acme" }"#;
    assert_eq!(routed(tenant, r#"{}"#).await, "/rest");
    assert_eq!(routed(tenant, r#"{"metadata":"acme"}"#).await, "/rest");
    assert_eq!(
        routed(tenant, r#"{"metadata":{"tenant":"acme"}}"#).await,
        "/matched"
    );
}

#[tokio::test]
async fn every_condition_of_a_route_must_hold() {
    let both = r#"{ pointer = "/data/tenant", equals = "acme" }, { pointer = "/data/status", in = ["completed"] }"#;
    assert_eq!(
        routed(both, r#"{"tenant":"acme","status":"completed"}"#).await,
        "/matched"
    );
    assert_eq!(
        routed(both, r#"{"tenant":"acme","status":"failed"}"#).await,
        "/rest"
    );
}

#[tokio::test]
async fn the_first_applicable_route_wins_and_conditions_are_tried_in_order() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("batch.*", upstream.url("/batch"))
            .route("response.*", upstream.url("/acme"))
            .route_option(
                "match",
                r#"[{ pointer = "/data/tenant", equals = "acme" }]"#,
            )
            .route("*", upstream.url("/priority"))
            .route_option(
                "match",
                r#"[{ pointer = "/data/priority", exists = true }]"#,
            )
            .route("response.*", upstream.url("/responses")),
    )
    .await;

    for data in [
        r#"{"tenant":"acme","priority":1}"#,
        r#"{"tenant":"globex","priority":1}"#,
        r#"{"tenant":"globex"}"#,
    ] {
        assert_eq!(gw.post(PATH, &event_with(data)).await.status(), 200);
    }
    let batch = signed_body(r#"{"type":"batch.completed","data":{"tenant":"acme"}}"#);
    assert_eq!(gw.post(PATH, &batch).await.status(), 200);
    let unrouted = signed_body(r#"{"type":"eval.run.failed","data":{}}"#);
    assert_eq!(gw.post(PATH, &unrouted).await.status(), 202);

    let paths: Vec<String> = upstream.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/acme", "/priority", "/responses", "/batch"]);
}

#[tokio::test]
async fn a_body_that_is_not_json_never_takes_a_route_with_conditions() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .source_option("event_type", r#"{ header = "x-event-type" }"#)
            .route("*", upstream.url("/absent"))
            .route_option("match", r#"[{ pointer = "/data/tenant", exists = false }]"#)
            .route("*", upstream.url("/rest")),
    )
    .await;

    let plain = signed_body("tenant=acme").with_header("x-event-type", "order.created");
    assert_eq!(gw.post(PATH, &plain).await.status(), 200);
    let json = signed_body(r#"{"data":{}}"#).with_header("x-event-type", "order.created");
    assert_eq!(gw.post(PATH, &json).await.status(), 200);

    let paths: Vec<String> = upstream.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/rest", "/absent"]);
}

#[tokio::test]
async fn conditions_never_read_unsigned_headers() {
    // A header named like the pointer's field changes nothing: only the body counts.
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .route("*", upstream.url("/acme"))
            .route_option(
                "match",
                r#"[{ pointer = "/data/tenant", equals = "acme" }]"#,
            )
            .route("*", upstream.url("/rest")),
    )
    .await;
    let event = event_with(r#"{"tenant":"globex"}"#).with_header("tenant", "acme");
    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    assert_eq!(upstream.only().path, "/rest");
}

/// The config error for a route with `match = [cond]`, as `hookgate::config::parse` gives it.
fn match_error(conditions: &str) -> hookgate::ConfigError {
    let text = config()
        .route("*", NOWHERE)
        .route_option("match", conditions)
        .to_string();
    hookgate::config::parse(&text, "test.toml").expect_err("the config is refused")
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> u32 {
    let index = text
        .lines()
        .position(|l| l.contains(needle))
        .expect("the line is there");
    u32::try_from(index + 1).unwrap()
}

#[test]
fn every_bad_condition_is_a_config_error_naming_its_key_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"[{ pointer = "data/tenant", equals = "x" }]"#,
            "sources[0].routes[0].match[0].pointer",
            "must start with '/'",
        ),
        (
            r#"[{ pointer = "/data/~2", equals = "x" }]"#,
            "sources[0].routes[0].match[0].pointer",
            "'~' must be followed",
        ),
        (
            r#"[{ pointer = "", equals = "x" }]"#,
            "sources[0].routes[0].match[0].pointer",
            "is empty",
        ),
        (
            r#"[{ pointer = "/a", exists = true }, { pointer = "/s", in = [] }]"#,
            "sources[0].routes[0].match[1].in",
            "is empty",
        ),
        (
            r#"[{ pointer = "/s" }]"#,
            "sources[0].routes[0].match[0]",
            "has no operator",
        ),
        (
            r#"[{ pointer = "/s", equals = "a", prefix = "b" }]"#,
            "sources[0].routes[0].match[0]",
            "has 2 operators",
        ),
        (
            r#"[{ pointer = "/s", equals = [1] }]"#,
            "sources[0].routes[0].match[0].equals",
            "is a list",
        ),
        (
            r#"[{ pointer = "/s", in = ["a", { b = 1 }] }]"#,
            "sources[0].routes[0].match[0].in[1]",
            "is a table",
        ),
        (
            r#"[{ pointer = "/s", equals = 1979-05-27 }]"#,
            "sources[0].routes[0].match[0].equals",
            "is a date",
        ),
    ];
    for (conditions, key, says) in cases {
        let e = match_error(conditions);
        assert_eq!(e.key.as_deref(), Some(*key), "{conditions}: {e}");
        assert!(e.message.starts_with(key), "{conditions}: {e}");
        assert!(e.message.contains(says), "{conditions}: {e}");
        let text = config()
            .route("*", NOWHERE)
            .route_option("match", conditions)
            .to_string();
        assert_eq!(
            e.line,
            Some(line_of(&text, "match = ")),
            "{conditions}: {e}"
        );
    }
}

#[test]
fn an_unknown_operator_is_refused_by_toml_with_its_line() {
    let e = match_error(r#"[{ pointer = "/s", contains = "a" }]"#);
    assert!(e.to_string().contains("contains"), "{e}");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn check_shows_a_routes_conditions() {
    let text = config()
        .route("response.*", NOWHERE)
        .route_option(
            "match",
            r#"[{ pointer = "/data/tenant", equals = "acme" }, { pointer = "/data/status", in = ["completed", 2] }, { pointer = "/data/p", exists = true }, { pointer = "/data/org", prefix = "org_" }]"#,
        )
        .to_string();
    let settings = hookgate::config::parse(&text, "test.toml").expect("a valid config");
    let summary = settings.summary();
    assert!(
        summary.contains(
            r#"match /data/tenant = "acme" and /data/status in ["completed", 2] and /data/p exists and /data/org starts with "org_""#
        ),
        "{summary}"
    );
}

#[test]
fn provider_openai_warns_about_match_pointers_its_events_never_have() {
    let text = config()
        .source_option("provider", r#""openai""#)
        .route("response.*", NOWHERE)
        .route_option("match", r#"[{ pointer = "/data/metadata/tenant", equals = "acme" }, { pointer = "/data/id", prefix = "resp_" }, { pointer = "/tenant", exists = true }]"#)
        .to_string();
    let settings = hookgate::config::parse(&text, "test.toml").expect("a valid config");
    let warnings = settings.warnings.join("\n");
    assert!(
        warnings.contains(
            r#"sources[0].routes[0].match[0].pointer "/data/metadata/tenant" can never exist"#
        ),
        "{warnings}"
    );
    assert!(
        warnings.contains(
            r#"sources[0].routes[0].match[2].pointer "/tenant" names a field no OpenAI event has"#
        ),
        "{warnings}"
    );
    assert!(!warnings.contains("match[1]"), "{warnings}");
}
