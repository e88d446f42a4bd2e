//! The Redis store on a three-node Redis Cluster: dedupe and the rate limit work with
//! keys spread over the nodes (each script touches one key, so the cluster routes it by
//! that key). The tests share one cluster, each under a key prefix of its own, except
//! the one that reads every node's keys, which starts a cluster of its own.

use crate::support::*;

#[tokio::test]
async fn a_replayed_delivery_through_a_cluster_store_is_answered_as_a_duplicate() {
    let Some(cluster) = TestStore::shared_cluster().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().store(&cluster).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    assert!(gw.post(PATH, &event).await.forwarded());
    let again = gw.post(PATH, &event).await;

    assert_eq!(again.status(), 200);
    assert_eq!(again.json(), serde_json::json!({"duplicate": true}));
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_copies_through_a_cluster_store_are_forwarded_exactly_once() {
    let Some(cluster) = TestStore::shared_cluster().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().store(&cluster).route("*", &upstream)).await;
    let event = signed_event("response.completed");

    assert_forwarded_exactly_once(&[gw.client()], &event, 20, &upstream).await;
}

#[tokio::test]
async fn distinct_deliveries_through_a_cluster_store_are_forwarded_with_keys_on_every_node() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().redis_cluster(&cluster).route("*", &upstream)).await;
    // Fixed ids, so the keys' slots (and the nodes owning them) are the same every run.
    let ids: Vec<String> = (0..12).map(|n| format!("msg_cluster_{n}")).collect();

    for id in &ids {
        let event = signed_raw(SECRET, id, now_unix(), r#"{"type":"response.completed"}"#);
        let reply = gw.post(PATH, &event).await;
        assert!(reply.forwarded(), "{id}: {reply:?}");
    }

    assert_eq!(upstream.received().len(), ids.len());
    let mut found = Vec::new();
    for node in cluster.nodes() {
        let keys = node.keys("hookgate:dedupe:*").await;
        assert!(
            !keys.is_empty(),
            "node {} holds no dedupe key; the keys did not spread",
            node.port()
        );
        for key in keys {
            assert_eq!(node.get(&key).await.as_deref(), Some("done"), "{key}");
            found.push(key);
        }
    }
    found.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .map(|id| format!("hookgate:dedupe:{SOURCE}:{id}"))
        .collect();
    expected.sort();
    assert_eq!(found, expected);
}

#[tokio::test]
async fn a_client_over_its_burst_is_answered_429_through_a_cluster_store() {
    let Some(cluster) = TestStore::shared_cluster().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .store(&cluster)
            .rate_limit(0.01, 3)
            .route("*", &upstream),
    )
    .await;

    for n in 0..3 {
        let reply = gw.post(PATH, &signed_event("response.completed")).await;
        assert!(reply.forwarded(), "request {n}: {reply:?}");
    }
    let over = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(over.status(), 429, "{over:?}");
    assert_eq!(over.error(), "rate_limited");
    assert!(over.retry_after() >= 1);
    assert_eq!(upstream.received().len(), 3);
}

#[tokio::test]
async fn a_burst_of_concurrent_requests_through_a_cluster_store_lets_exactly_the_burst_through() {
    let Some(cluster) = TestStore::shared_cluster().await else {
        return;
    };
    // Checks arriving together share one script run on the node holding the key.
    crate::ratelimit::twelve_at_once_let_exactly_the_burst_through(config().store(&cluster)).await;
}

/// Every primary of a cluster is asked; the test cluster's nodes run without an
/// append-only file, so a 202 from a queue on it is reported as not durable.
#[tokio::test]
async fn hookgate_check_reads_the_persistence_of_every_cluster_primary() {
    let Some(store) = TestStore::shared_cluster().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().store(&store).queued().route("*", &upstream));
    let (ok, out, err) =
        hookgate_cli(&["check", "--config", &file.path().display().to_string()]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("queue persistence: NOT durable") && out.contains("appendonly no"),
        "{out}"
    );
}

/// The node of `cluster` that serves `slot` (by each node's own `CLUSTER NODES` line).
async fn owner_of(cluster: &RedisCluster, slot: i64) -> usize {
    for (index, node) in cluster.nodes().iter().enumerate() {
        let nodes: String = node.query(redis::cmd("CLUSTER").arg("NODES")).await;
        let mine = nodes
            .lines()
            .find(|line| line.contains("myself"))
            .expect("its own line");
        let serves = mine.split_whitespace().skip(8).any(|range| {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            match (from.parse::<i64>(), to.parse::<i64>()) {
                (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                _ => false,
            }
        });
        if serves {
            return index;
        }
    }
    panic!("no node serves slot {slot}");
}

/// Redis Cluster's slot of a key without a hash tag: CRC16 (XMODEM) mod 16384.
fn key_slot(key: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in key.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

async fn node_id(node: &RedisServer) -> String {
    node.query(redis::cmd("CLUSTER").arg("MYID")).await
}

/// A resharding under way: the claims of new keys in a migrating slot are answered
/// `ASK` by the slot's old node, and once the slot has moved `MOVED`. Both prove the
/// command never ran and are followed: the deliveries are forwarded once and their
/// copies answered as duplicates. (The client is told not to retry, so it did not
/// follow them, and every new delivery in a migrating slot was answered 503.)
#[tokio::test]
async fn deliveries_in_a_slot_being_resharded_are_forwarded_once() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().redis_cluster(&cluster).route("*", &upstream)).await;
    let key = format!("hookgate:dedupe:{SOURCE}:msg_resharded_1");
    let slot: i64 = cluster.nodes()[0]
        .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key))
        .await;
    let from = owner_of(&cluster, slot).await;
    let to = (from + 1) % cluster.nodes().len();
    let (from_id, to_id) = (
        node_id(&cluster.nodes()[from]).await,
        node_id(&cluster.nodes()[to]).await,
    );
    let setslot = |state: &str, id: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
        cmd
    };
    let _: String = cluster.nodes()[to]
        .query(&setslot("IMPORTING", &from_id))
        .await;
    let _: String = cluster.nodes()[from]
        .query(&setslot("MIGRATING", &to_id))
        .await;
    // A second delivery whose key falls in the same slot.
    let second = (2..)
        .map(|n| format!("msg_resharded_{n}"))
        .find(|id| i64::from(key_slot(&format!("hookgate:dedupe:{SOURCE}:{id}"))) == slot)
        .expect("some id in the slot");
    let ids = ["msg_resharded_1", second.as_str()];

    let event = |id: &str| signed_raw(SECRET, id, now_unix(), r#"{"type":"response.completed"}"#);
    let first = event(ids[0]);
    let reply = gw.post(PATH, &first).await;
    assert!(reply.forwarded(), "ASK: {reply:?}");
    let again = gw.post(PATH, &first).await;
    assert_eq!(
        again.json(),
        serde_json::json!({"duplicate": true}),
        "{again:?}"
    );

    // The slot moves for good: its old node answers MOVED.
    for node in cluster.nodes() {
        let _: String = node.query(&setslot("NODE", &to_id)).await;
    }
    let reply = gw.post(PATH, &event(ids[1])).await;
    assert!(reply.forwarded(), "MOVED: {reply:?}");
    assert_eq!(upstream.received().len(), 2);
}
