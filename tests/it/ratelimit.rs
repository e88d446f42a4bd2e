//! Per-client rate limiting, which runs before anything else looks at a request;
//! against the in-memory store and against Redis.

use crate::support::*;

/// One new request per 100 s after a burst of 3: nothing refills during the test, however
/// slow the machine, so the 4th request is the first one over the limit.
const RATE: f64 = 0.01;
const BURST: u32 = 3;

async fn a_client_over_its_burst_is_answered_429_with_retry_after_and_not_forwarded(
    store: TestStore,
) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .rate_limit(RATE, BURST)
            .route("*", &upstream),
    )
    .await;

    for n in 0..BURST {
        let reply = gw.post(PATH, &signed_event("response.completed")).await;
        assert_eq!(reply.status(), 200, "request {n}: {reply:?}");
    }
    let over = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(over.status(), 429, "{over:?}");
    assert_eq!(over.error(), "rate_limited");
    assert!(over.retry_after() >= 1);
    assert_eq!(upstream.received().len(), BURST as usize);
}

async fn the_rate_limit_counts_requests_before_they_are_verified(store: TestStore) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store(&store)
            .rate_limit(RATE, BURST)
            .route("*", &upstream),
    )
    .await;

    for _ in 0..BURST {
        let unsigned = signed_event("response.completed").without_header("webhook-signature");
        assert_eq!(gw.post(PATH, &unsigned).await.status(), 400);
    }
    let valid = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(valid.status(), 429, "{valid:?}");
    assert!(upstream.received().is_empty());
}

/// A sender's burst arrives all at once; on Redis, checks arriving together share one
/// script run, which must still let exactly `burst` of them through.
async fn a_burst_of_concurrent_requests_lets_exactly_the_burst_through(store: TestStore) {
    twelve_at_once_let_exactly_the_burst_through(config().store(&store)).await;
}

/// Twelve signed requests at once from one client, through a gateway on `store_config`
/// with a burst of `BURST`: exactly `BURST` are forwarded, the others answered 429.
pub async fn twelve_at_once_let_exactly_the_burst_through(store_config: Config) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(store_config.rate_limit(RATE, BURST).route("*", &upstream)).await;

    let requests = (0..12).map(|_| signed_event("response.completed"));
    let replies = post_at_once(&[gw.client()], requests).await;

    let mut statuses: Vec<_> = replies.iter().map(Reply::status).collect();
    statuses.sort();
    let mut expected = vec![200; BURST as usize];
    expected.resize(12, 429);
    assert_eq!(statuses, expected);
    assert_eq!(upstream.received().len(), BURST as usize);
}

on_each_store! {
    a_client_over_its_burst_is_answered_429_with_retry_after_and_not_forwarded,
    a_burst_of_concurrent_requests_lets_exactly_the_burst_through,
    the_rate_limit_counts_requests_before_they_are_verified,
}
