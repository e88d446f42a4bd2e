//! Signature and freshness checks as a sender sees them: each failure is a 400 with
//! its documented reason, nothing unverified reaches the upstream, and rotation works.

use crate::support::*;

/// A body that would be routed, so only verification can stop it.
const BODY: &str = r#"{"type":"response.completed","data":{"id":"resp_1"}}"#;

async fn gateway() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    (upstream, gw)
}

#[tokio::test]
async fn a_delivery_without_any_one_webhook_header_is_answered_400_missing_header_naming_it() {
    let (upstream, gw) = gateway().await;

    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let reply = gw.post(PATH, &signed_body(BODY).without_header(name)).await;

        assert_eq!(reply.status(), 400, "{name}: {reply:?}");
        assert_eq!(reply.error(), "missing_header", "{name}");
        assert_eq!(reply.json()["header"], name);
    }
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_signature_header_with_no_v1_signature_is_answered_400_malformed_signature() {
    let (upstream, gw) = gateway().await;

    for bad in ["garbage", "v2,c2lnbmF0dXJl", "v1,not base64!", "v1,YWJj"] {
        let reply = gw
            .post(
                PATH,
                &signed_body(BODY).with_header("webhook-signature", bad),
            )
            .await;

        assert_eq!(reply.status(), 400, "{bad:?}: {reply:?}");
        assert_eq!(reply.error(), "malformed_signature", "{bad:?}");
    }
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_delivery_signed_with_another_secret_is_answered_400_invalid_signature() {
    let (upstream, gw) = gateway().await;

    let reply = gw
        .post(
            PATH,
            &signed_raw(OTHER_SECRET, &fresh_id(), now_unix(), BODY),
        )
        .await;

    assert_eq!(reply.status(), 400);
    assert_eq!(reply.error(), "invalid_signature");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_tampered_body_is_answered_400_invalid_signature() {
    let (upstream, gw) = gateway().await;
    let tampered = signed_body(BODY).with_body(&BODY.replace("resp_1", "resp_2"));

    let reply = gw.post(PATH, &tampered).await;

    assert_eq!(reply.status(), 400);
    assert_eq!(reply.error(), "invalid_signature");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_timestamp_older_than_the_tolerance_is_answered_400_timestamp_too_old() {
    let (upstream, gw) = gateway().await;
    // Correctly signed, but an hour old: a replayed capture (tolerance is 5 minutes).
    let stale = signed_raw(SECRET, &fresh_id(), now_unix() - 3600, BODY);

    let reply = gw.post(PATH, &stale).await;

    assert_eq!(reply.status(), 400);
    assert_eq!(reply.error(), "timestamp_too_old");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_timestamp_further_ahead_than_the_tolerance_is_answered_400_timestamp_too_new() {
    let (upstream, gw) = gateway().await;
    let early = signed_raw(SECRET, &fresh_id(), now_unix() + 3600, BODY);

    let reply = gw.post(PATH, &early).await;

    assert_eq!(reply.status(), 400);
    assert_eq!(reply.error(), "timestamp_too_new");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_timestamp_that_is_not_unix_seconds_is_answered_400_malformed_timestamp() {
    let (upstream, gw) = gateway().await;

    for bad in ["yesterday", "1700000000.5", "-1700000000", "+1700000000"] {
        let reply = gw
            .post(
                PATH,
                &signed_body(BODY).with_header("webhook-timestamp", bad),
            )
            .await;

        assert_eq!(reply.status(), 400, "{bad:?}: {reply:?}");
        assert_eq!(reply.error(), "malformed_timestamp", "{bad:?}");
    }
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_source_with_two_secrets_accepts_deliveries_signed_with_either() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .secrets(&[SECRET, OTHER_SECRET])
            .route("*", &upstream),
    )
    .await;

    let old = gw
        .post(PATH, &signed_event_with(SECRET, "response.completed"))
        .await;
    let new = gw
        .post(PATH, &signed_event_with(OTHER_SECRET, "response.completed"))
        .await;

    assert_eq!(old.status(), 200, "{old:?}");
    assert_eq!(new.status(), 200, "{new:?}");
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_header_with_several_signatures_is_accepted_when_any_one_matches() {
    let (upstream, gw) = gateway().await;
    let id = fresh_id();
    let timestamp = now_unix();
    let wrong = signed_raw(OTHER_SECRET, &id, timestamp, BODY);
    let right = signed_raw(SECRET, &id, timestamp, BODY);
    let header = format!(
        "{} v2,c2lnbmF0dXJl {} v1,YWJj",
        wrong.header("webhook-signature"),
        right.header("webhook-signature")
    );

    let reply = gw
        .post(
            PATH,
            &right.clone().with_header("webhook-signature", &header),
        )
        .await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.only().header("webhook-signature"), header);
}

#[tokio::test]
async fn a_header_with_several_signatures_none_matching_is_answered_400_invalid_signature() {
    let (upstream, gw) = gateway().await;
    let id = fresh_id();
    let timestamp = now_unix();
    let wrong = signed_raw(OTHER_SECRET, &id, timestamp, BODY);
    let header = format!(
        "{} {}",
        wrong.header("webhook-signature"),
        wrong.header("webhook-signature")
    );

    let reply = gw
        .post(
            PATH,
            &signed_raw(SECRET, &id, timestamp, BODY).with_header("webhook-signature", &header),
        )
        .await;

    assert_eq!(reply.status(), 400);
    assert_eq!(reply.error(), "invalid_signature");
    assert!(upstream.received().is_empty());
}
