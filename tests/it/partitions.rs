//! The Redis queue in partitions on a three-node Redis Cluster of each test's own: the
//! partitions spread the queue's work over the nodes, and a node that is down delays
//! only its own partitions' deliveries.
//!
//! With `redis-cli --cluster create`'s even split of the slots, the hash tags `{queue}`
//! and `{queue:1}` .. `{queue:7}` of eight partitions fall 3, 2 and 3 on the three nodes.

use std::time::Duration;

use crate::support::*;

/// Eight partitions: 3/8, 2/8 and 3/8 of the queue on the three nodes (see above).
const PARTITIONS: &str = "8";

/// A queue-mode gateway on `cluster` in `PARTITIONS` partitions, delivering to `to`.
fn partitioned(cluster: &RedisCluster, to: &Upstream) -> Config {
    config()
        .redis_cluster(cluster)
        .queued()
        .route("*", to)
        .queue_option("partitions", PARTITIONS)
        .queue_option("workers", "16")
        .queue_option("visibility_timeout", r#""2s""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_queued_events_are_delivered_once_with_each_node_serving_its_share() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(partitioned(&cluster, &upstream)).await;
    let before = commands(&cluster).await;

    let client = gw.client();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..8 {
        let client = client.clone();
        senders.spawn(async move {
            for n in 0..75 {
                let event = signed_raw(
                    SECRET,
                    &format!("msg_spread_{sender}_{n}"),
                    now_unix(),
                    r#"{"type":"response.completed"}"#,
                );
                enqueue(&client, &event).await;
            }
        });
    }
    senders.join_all().await;
    upstream.wait_for(600).await;

    let counts = upstream.count_by_webhook_id();
    assert_eq!(counts.len(), 600);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let after = commands(&cluster).await;
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = served.iter().sum();
    eprintln!("commands served by each node: {served:?} of {total}");
    for (node, n) in served.iter().enumerate() {
        let share = *n as f64 / total as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "node {node} served {n} of {total} commands ({:.0}%); all: {served:?}",
            share * 100.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_delays_only_its_own_partitions_and_ingress_keeps_answering_202() {
    let Some(mut cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    // The first attempt of each of the first 24 deliveries fails, so they wait in their
    // partitions (retried after 4 s) while a node is taken down; everything after that
    // is answered 200.
    let mut answers = vec![Answer::status(503); 24];
    answers.push(Answer::ok());
    let upstream = Upstream::with(Behaviour::sequence(answers)).await;
    let gw = Gateway::start(
        partitioned(&cluster, &upstream)
            .queue_option(
                "backoff",
                r#"{ initial = "4s", max = "4s", jitter = false }"#,
            )
            // The dedupe keys on the node that is down are the store's concern, not the
            // queue's: with `allow`, a sender whose key lives there is still answered.
            .store_option("on_error", "allow")
            .store_option("timeout", "500ms")
            .store_option("connect_timeout", "500ms"),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    let client = gw.client();
    let mut first = Vec::new();
    for _ in 0..24 {
        first.push(enqueue(&client, &signed_event("response.completed")).await);
    }
    deliveries.wait_for_count("failed_retryable", 24).await;

    // The node holding partition 3 (and, by the slots, partition 7): saved, then
    // stopped, so that it comes back with what it held.
    let down = node_holding(&cluster, "hookgate:{queue:3}:*").await;
    let stranded: Vec<String> = first
        .iter()
        .filter(|id| id.ends_with("_p3") || id.ends_with("_p7"))
        .cloned()
        .collect();
    assert!(!stranded.is_empty(), "{first:?}");
    cluster.node_mut(down).save().await;
    cluster.node_mut(down).stop();

    // New senders are answered 202 (stored in a partition whose node is up) and
    // delivered, and the retries of the other partitions are delivered meanwhile.
    let mut later = Vec::new();
    for _ in 0..12 {
        let reply = client.post(PATH, &signed_event("response.completed")).await;
        assert_eq!(reply.status(), 202, "{reply:?}");
        later.push(reply.json()["delivery_id"].as_str().unwrap().to_owned());
    }
    let elsewhere = first.len() - stranded.len();
    let expected = 24 + elsewhere + later.len();
    upstream.wait_for(expected).await;
    // Their retries were due as the others' were: nothing of the stopped node's
    // partitions arrives while it is down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(upstream.received().len(), expected);
    assert!(
        later
            .iter()
            .all(|id| !id.ends_with("_p3") && !id.ends_with("_p7")),
        "{later:?}"
    );

    cluster.node_mut(down).restart().await;
    for id in &stranded {
        // 503 until the gateway's cluster connection reaches the node again.
        eventually(
            format!("{id} processed after the node came back"),
            async || {
                let reply = deliveries
                    .request(http::Method::GET, &format!("/deliveries/{id}"))
                    .await;
                if reply.status() == 200 && reply.json()["state"] == "processed" {
                    Ok(())
                } else {
                    Err(format!("{reply:?}"))
                }
            },
        )
        .await;
    }
    assert_eq!(upstream.received().len(), expected + stranded.len());
}

/// Every node's `data_commands`, in the cluster's order.
async fn commands(cluster: &RedisCluster) -> Vec<u64> {
    let mut counts = Vec::new();
    for node in cluster.nodes() {
        counts.push(node.data_commands().await);
    }
    counts
}

/// The index of the node holding keys matching `pattern`.
async fn node_holding(cluster: &RedisCluster, pattern: &str) -> usize {
    for (index, node) in cluster.nodes().iter().enumerate() {
        if !node.keys(pattern).await.is_empty() {
            return index;
        }
    }
    panic!("no node holds {pattern}");
}

/// Ingress' side alone (no workers to notice the node first): each enqueue whose
/// partition's node refuses is stored in another partition, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_partition_node_is_down_is_stored_once_in_another_partition() {
    let Some(mut cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let text = partitioned(&cluster, &upstream)
        .store_option("timeout", "500ms")
        .store_option("connect_timeout", "500ms")
        .to_string();
    let settings = hookgate::config::parse(&text, "partitions.toml").expect("a valid config");
    let metrics = || std::sync::Arc::new(hookgate::metrics::Metrics::new([SOURCE]));
    let (_, backend) = hookgate::store::build(&settings, metrics()).expect("the store builds");
    let queue = hookgate::queue::build(&settings, &backend, metrics(), "instance-a")
        .expect("the queue builds")
        .expect("a queue source makes a queue");
    let now = hookgate::queue::now_millis();
    let mut ids = Vec::new();
    for n in 0..8 {
        let delivery = crate::contract::queue::delivery(SOURCE, n, now);
        ids.push(queue.enqueue(delivery).await.expect("stored"));
    }
    let down = node_holding(&cluster, "hookgate:{queue:3}:*").await;
    cluster.node_mut(down).save().await;
    cluster.node_mut(down).stop();

    // The first enqueues to the dead node find their connection broken with the script
    // sent: they may have run, so they answer `MaybeStored` (503, the claim kept), never
    // storing a second copy elsewhere. Once the node is known to refuse, enqueues to its
    // partitions are stored in another one.
    let mut uncertain = Vec::new();
    let mut elsewhere = 0;
    for n in 8..24 {
        let delivery = crate::contract::queue::delivery(SOURCE, n, now);
        match queue.enqueue(delivery).await {
            Ok(id) => {
                assert!(!id.ends_with("_p3") && !id.ends_with("_p7"), "{id}");
                ids.push(id);
                elsewhere += 1;
            }
            Err(hookgate::queue::QueueError::MaybeStored { ids, .. }) => uncertain.push(ids),
            Err(e) => panic!("stored elsewhere or maybe stored: {e}"),
        }
    }
    assert!(uncertain.len() <= 2, "{uncertain:?}");
    assert!(elsewhere >= 14, "{elsewhere}");

    cluster.node_mut(down).restart().await;
    for sent in uncertain {
        let stored = eventually("the queue telling whether it was stored", async || {
            queue.stored(&sent).await.map_err(|e| e.to_string())
        })
        .await;
        if stored {
            ids.extend(sent);
        }
    }
    let filter = hookgate::queue::ListFilter {
        limit: 100,
        ..Default::default()
    };
    let listed = eventually("the list of every partition again", async || {
        queue.list(&filter).await.map_err(|e| e.to_string())
    })
    .await;
    let mut listed: Vec<String> = listed.deliveries.into_iter().map(|s| s.id).collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "every delivery stored once");
}

/// A node that hangs (it accepts connections and never answers) rather than refusing:
/// each of its partitions costs one take the store's timeout, once; after that the
/// workers take from the healthy partitions without waiting on it, and only a probe of
/// its own asks it again. Tried in line after each rest, its partitions cost every take
/// a timeout apiece, and the healthy ones were polled only between those waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hangs_costs_the_takes_one_timeout_per_partition_and_no_more() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let (queue, metrics) = impatient_queue(&cluster).await;
    // The workers' connection and the take script on every node before the node hangs
    // (the first take loads the script on every primary, which fails with one hung:
    // the take then fails for that one partition, which a probe brings back).
    let now = hookgate::queue::now_millis();
    assert!(
        queue
            .take(16, now)
            .await
            .expect("every node answers")
            .is_empty()
    );
    let mut ids = Vec::new();
    for n in 0..16 {
        let delivery = crate::contract::queue::delivery(SOURCE, n, now);
        ids.push(queue.enqueue(delivery).await.expect("stored"));
    }
    let hung = node_holding(&cluster, "hookgate:{queue:1}:*").await;
    let mut on_hung = Vec::new();
    for partition in 0..8 {
        let tag = match partition {
            0 => "{queue}".to_owned(),
            i => format!("{{queue:{i}}}"),
        };
        if node_holding(&cluster, &format!("hookgate:{tag}:*")).await == hung {
            on_hung.push(partition);
        }
    }
    let _paused = cluster.nodes()[hung].pause();

    // Takes for 6 s, three rests' worth: each partition of the hung node fails one take.
    let started = std::time::Instant::now();
    let mut taken = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        if let Ok(leases) = queue.take(16, hookgate::queue::now_millis()).await {
            taken.extend(leases.into_iter().map(|l| l.delivery_id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let failed_takes = failures(&metrics, "take");
    assert!(
        failed_takes <= on_hung.len() as u64,
        "{failed_takes} takes failed; the hung node holds partitions {on_hung:?}"
    );
    assert!(failures(&metrics, "probe") >= 1, "the hung node was probed");
    let healthy: Vec<&String> = ids
        .iter()
        .filter(|id| !on_hung.contains(&hookgate::queue::record::partition_of(id)))
        .collect();
    taken.sort();
    for id in healthy {
        assert!(taken.contains(id), "{id} was not taken: {taken:?}");
    }
}

/// The `rate` buckets live in partition 0: while its node hangs, a check fails once
/// by timing out and then at once, until a probe finds the node answering, instead of
/// holding a worker for the store's timeout each (16 rate-limited deliveries held every
/// worker, and the other partitions' deliveries waited behind them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_checks_do_not_wait_on_a_hung_partition_zero_twice() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let (queue, metrics) = impatient_queue(&cluster).await;
    let rate = hookgate::route::RatePolicy {
        per_second: 100.0,
        burst: std::num::NonZeroU32::new(100).unwrap(),
    };
    let now = hookgate::queue::now_millis();
    queue
        .enqueue(crate::contract::queue::delivery(SOURCE, 0, now))
        .await
        .expect("stored");
    assert_eq!(queue.pace("openai/0", rate).await.expect("answered"), None);
    let hung = node_holding(&cluster, "hookgate:{queue}:*").await;
    let _paused = cluster.nodes()[hung].pause();

    for _ in 0..10 {
        assert!(queue.pace("openai/0", rate).await.is_err());
    }

    assert_eq!(failures(&metrics, "pace"), 1, "only the first check waited");
}

/// After `partitions` was lowered, a dead letter in a partition dropped is still shown,
/// but its replay is refused (409 `partition_not_taken`): queued again there, no worker
/// would ever take it, and the replay said `replayed`.
#[tokio::test]
async fn a_dead_letter_in_a_partition_no_longer_taken_is_not_replayed_into_it() {
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let upstream = Upstream::with(Behaviour::always(Answer::status(400))).await;
    let queued = |partitions: &str| {
        config()
            .store(&store)
            .queued()
            .route("*", &upstream)
            .queue_option("partitions", partitions)
    };
    let gw = Gateway::start(queued("4")).await;
    let client = gw.client();
    for n in 0..4 {
        let event = signed_raw(
            SECRET,
            &format!("msg_lowered_{n}"),
            now_unix(),
            r#"{"type":"response.completed"}"#,
        );
        enqueue(&client, &event).await;
    }
    let deliveries = Deliveries::of(&gw);
    deliveries.wait_for_count("failed_final", 4).await;
    let listed = deliveries.list("status=failed_final").await;
    let last = listed
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .find(|id| id.ends_with("_p3"))
        .expect("one in partition 3");
    drop(gw);

    let gw = Gateway::start(queued("2")).await;
    let deliveries = Deliveries::of(&gw);
    assert_eq!(deliveries.record(&last).await["state"], "failed_final");
    let reply = deliveries
        .request(http::Method::POST, &format!("/deliveries/{last}/replay"))
        .await;

    assert_eq!(reply.status(), 409, "{reply:?}");
    assert_eq!(reply.error(), "partition_not_taken");
    assert_eq!(deliveries.record(&last).await["state"], "failed_final");
}

/// The queue alone (no gateway, no workers) on `cluster` in partitions, every store
/// call bounded by 1 s, and the metrics it counts in.
async fn impatient_queue(
    cluster: &RedisCluster,
) -> (
    std::sync::Arc<dyn hookgate::queue::Queue>,
    std::sync::Arc<hookgate::metrics::Metrics>,
) {
    let upstream = Upstream::start().await;
    let text = partitioned(cluster, &upstream)
        .store_option("timeout", "500ms")
        .store_option("connect_timeout", "500ms")
        .to_string();
    let settings = hookgate::config::parse(&text, "partitions.toml").expect("a valid config");
    let metrics = std::sync::Arc::new(hookgate::metrics::Metrics::new([SOURCE]));
    let (_, backend) =
        hookgate::store::build(&settings, metrics.clone()).expect("the store builds");
    let queue = hookgate::queue::build(&settings, &backend, metrics.clone(), "instance-a")
        .expect("the queue builds")
        .expect("a queue source makes a queue");
    (queue, metrics)
}

/// `hookgate_store_errors_total{op}` as `metrics` counted it.
fn failures(metrics: &hookgate::metrics::Metrics, op: &str) -> u64 {
    metrics
        .registry()
        .gather()
        .iter()
        .filter(|family| family.name() == "hookgate_store_errors_total")
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "op" && l.value() == op)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn hookgate_check_names_the_queues_partitions() {
    let Some(store) = TestStore::shared_cluster().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(
        config()
            .store(&store)
            .queued()
            .route("*", &upstream)
            .queue_option("partitions", PARTITIONS),
    );
    let (ok, out, err) =
        hookgate_cli(&["check", "--config", &file.path().display().to_string()]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("queue:  Redis Streams in 8 partitions, shared by every instance"),
        "{out}"
    );
}

/// Every partition's list indexes are trimmed of the entries of forgotten records. One
/// count of enqueues for all partitions decided the trims (one in 64), and enqueues go
/// to the partitions in turn: with 6 partitions, the trims always fell on partitions 0,
/// 2 and 4, and the others' indexes grew for good.
#[tokio::test]
async fn every_partitions_indexes_are_trimmed_of_forgotten_records() {
    const PARTITIONS: usize = 6;
    let Some(store) = TestStore::redis().await else {
        return;
    };
    let text = config()
        .store(&store)
        .queued()
        .route("*", NOWHERE)
        .queue_option("max_age", r#""1s""#)
        .queue_option("retention", r#""1s""#)
        .queue_option("partitions", &PARTITIONS.to_string())
        .to_string();
    let settings = hookgate::config::parse(&text, "partitions.toml").unwrap();
    let metrics = std::sync::Arc::new(hookgate::metrics::Metrics::new([SOURCE]));
    let (_, backend) = hookgate::store::build(&settings, metrics.clone()).unwrap();
    let queue = hookgate::queue::build(&settings, &backend, metrics, "trims")
        .unwrap()
        .unwrap();
    let old = hookgate::queue::now_millis() - 600_000;
    for n in 0..60 {
        queue
            .enqueue(crate::contract::queue::delivery(SOURCE, n, old + n))
            .await
            .unwrap();
    }
    // Each processed, so forgotten a second later.
    let now = hookgate::queue::now_millis();
    let mut processed = 0;
    while processed < 60 {
        let leases = queue.take(60, now).await.unwrap();
        assert!(!leases.is_empty(), "only {processed} of 60 taken");
        for lease in leases {
            let job = queue.begin(&lease, now).await.unwrap().unwrap();
            let attempt = hookgate::queue::Attempt {
                attempt: job.attempt,
                step: hookgate::queue::Step::Deliver,
                started_at: now,
                duration_ms: Some(1),
                status: Some(200),
                error: None,
                result: Some("processed".to_owned()),
                instance: "trims".to_owned(),
                answer: None,
                trace_id: None,
            };
            let done = hookgate::queue::Settlement::Processed;
            queue.settle(&job, &attempt, done, now).await.unwrap();
            processed += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let now = hookgate::queue::now_millis();
    for n in 0..(64 * PARTITIONS as u64 + PARTITIONS as u64) {
        queue
            .enqueue(crate::contract::queue::delivery(SOURCE, 1000 + n, now + n))
            .await
            .unwrap();
    }

    let TestStore::Redis(redis) = &store else {
        unreachable!()
    };
    let mut left = Vec::new();
    for i in 0..PARTITIONS {
        let base = match i {
            0 => "hookgate:{queue}:".to_owned(),
            i => format!("hookgate:{{queue:{i}}}:"),
        };
        for index in ["index", "x:source:openai"] {
            let key = format!("{base}{index}");
            let stale: u64 = redis
                .query(::redis::cmd("ZCOUNT").arg(&key).arg("-inf").arg(old + 1000))
                .await;
            if stale > 0 {
                left.push((key, stale));
            }
        }
    }
    assert!(
        left.is_empty(),
        "entries of forgotten records left: {left:?}"
    );
}
