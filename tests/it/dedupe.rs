//! Deduplication by webhook-id: forwarded once, answered as a duplicate afterwards,
//! refused while a copy is in flight, exactly once under a burst of copies, and settled
//! when the sender hangs up mid-forward; each against every store.

use crate::support::*;

async fn replayed_delivery_is_answered_200_and_not_forwarded(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    let again = gw.post(PATH, &event).await;

    assert_eq!(again.status(), 200);
    assert_eq!(again.json(), serde_json::json!({"duplicate": true}));
    assert_eq!(upstream.received().len(), 1);
}

async fn a_copy_arriving_while_the_first_is_in_flight_is_answered_409_with_retry_after(
    store: TestStore,
) {
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");
    let first = gw.client().post_in_background(PATH, &event);
    upstream.wait_for(1).await;

    let copy = gw.post(PATH, &event).await;

    assert_eq!(copy.status(), 409, "{copy:?}");
    assert_eq!(copy.error(), "in_flight");
    assert!(copy.retry_after() >= 1);
    upstream.release();
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(upstream.received().len(), 1);
}

async fn the_same_id_from_another_source_is_a_different_delivery(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .route("*", &upstream)
            .source("billing", "/webhooks/billing")
            .route("*", &upstream),
    )
    .await;
    let event = signed_event("response.completed");

    assert_eq!(gw.post(PATH, &event).await.status(), 200);
    let other = gw.post("/webhooks/billing", &event).await;

    assert_eq!(other.status(), 200);
    assert_eq!(other.json(), serde_json::json!({"ok": true}));
    assert_eq!(upstream.received().len(), 2);
}

async fn fifty_concurrent_copies_of_one_delivery_are_forwarded_exactly_once(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    assert_forwarded_exactly_once(&[gw.client()], &event, 50, &upstream).await;
}

/// A sender that hangs up while its delivery is at the upstream cancels nothing: the
/// forward finishes, its outcome is settled, and the sender's retry is a duplicate
/// rather than a second forward (or a 409 until the claim expires).
async fn a_sender_hanging_up_mid_forward_still_gets_its_delivery_settled(store: TestStore) {
    let upstream = Upstream::with(Answer::held()).await;
    let gw = Gateway::start(config().store(&store).route("*", &upstream)).await;
    let event = signed_event("response.completed");
    let hanging = sent_without_waiting(gw.addr(), &event).await;
    upstream.wait_for(1).await;

    drop(hanging);
    gw.wait_for_open_connections(0).await;
    upstream.release();

    eventually("the hung-up delivery is settled", || async {
        gw.metrics().await.requests(SOURCE, "forwarded") == 1
    })
    .await;
    let retry = gw.post(PATH, &event).await;
    assert_eq!(retry.status(), 200, "{retry:?}");
    assert_eq!(retry.json(), serde_json::json!({"duplicate": true}));
    assert_eq!(upstream.received().len(), 1);
}

on_each_store! {
    a_sender_hanging_up_mid_forward_still_gets_its_delivery_settled,
    replayed_delivery_is_answered_200_and_not_forwarded,
    a_copy_arriving_while_the_first_is_in_flight_is_answered_409_with_retry_after,
    the_same_id_from_another_source_is_a_different_delivery,
    fifty_concurrent_copies_of_one_delivery_are_forwarded_exactly_once(
        flavor = "multi_thread",
        worker_threads = 2
    ),
}
