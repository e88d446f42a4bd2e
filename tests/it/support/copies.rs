//! Many requests in the same instant, as a sender's burst or its retries arrive, and
//! what exactly-once means to a sender when copies of one delivery race.

use hookgate::sign::SignedRequest;

use super::{PATH, Reply, TestClient, Upstream};

/// Posts every delivery to `PATH` at once, through `clients` in turn, and returns the
/// replies in the order of `deliveries`. Each post is its own task, all spawned before
/// any is awaited, so they reach the gateways together.
pub async fn post_at_once(
    clients: &[TestClient],
    deliveries: impl IntoIterator<Item = SignedRequest>,
) -> Vec<Reply> {
    let posts: Vec<_> = deliveries
        .into_iter()
        .zip(clients.iter().cycle())
        .map(|(delivery, client)| {
            let client = client.clone();
            tokio::spawn(async move { client.post(PATH, &delivery).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(posts.len());
    for post in posts {
        replies.push(post.await.expect("the post task"));
    }
    replies
}

/// Posts `copies` copies of `delivery` at once through `clients` in turn and asserts
/// exactly-once as the sender sees it: one copy forwarded (the upstream's own answer
/// passed through), every other answered as a duplicate (200) or as in flight (409, to
/// retry later), and the upstream reached once.
pub async fn assert_forwarded_exactly_once(
    clients: &[TestClient],
    delivery: &SignedRequest,
    copies: usize,
    upstream: &Upstream,
) {
    let replies = post_at_once(clients, std::iter::repeat_n(delivery.clone(), copies)).await;

    let mut forwarded = 0;
    for reply in replies {
        match reply.status().as_u16() {
            200 if reply.forwarded() => forwarded += 1,
            200 => assert_eq!(reply.json(), serde_json::json!({"duplicate": true})),
            409 => assert_eq!(reply.error(), "in_flight"),
            _ => panic!("unexpected answer {reply:?}"),
        }
    }
    assert_eq!(forwarded, 1, "copies forwarded");
    assert_eq!(
        upstream.received().len(),
        1,
        "requests the upstream received"
    );
}
