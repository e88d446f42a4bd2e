//! What one client may make the gateway spend, each bound tested by replaying the
//! attack that used to get around it against the real binary on loopback: signature
//! work per request (a flood of `v1a` entries), the penalty box under a flood of
//! distinct failing clients, and body bytes held over HTTP/2 and HTTP/1.1.

use std::time::Duration;

use base64::Engine as _;
use hookgate::verify::standard_webhooks::{public_key, sign_v1a, signing_key};

use crate::support::*;

/// `v1a` entries in the flood request: 9 ms of CPU per request before the cap.
const FLOOD_ENTRIES: usize = 170;

/// A Standard Webhooks source that checks `v1a` with one Ed25519 public key.
fn ed25519_source() -> (Config, ring::signature::Ed25519KeyPair) {
    let pair = signing_key(&format!(
        "whsk_{}",
        base64::engine::general_purpose::STANDARD.encode([42u8; 32])
    ))
    .unwrap();
    let config = config()
        .secrets(&[&public_key(&pair)])
        .set("penalty_box", "max_failures", "0");
    (config, pair)
}

/// A `v1a` entry no key signed: well-formed, so only an Ed25519 check can refuse it.
fn forged_v1a(n: u8) -> String {
    format!(
        "v1a,{}",
        base64::engine::general_purpose::STANDARD.encode([n; 64])
    )
}

/// Requests per block of the CPU comparison; blocks of the two kinds alternate.
const CPU_BLOCK: usize = 100;

/// A flood of 170 `v1a` entries is refused `malformed_signature` before any Ed25519
/// check, so it costs the gateway no more CPU than a forged request carrying a single
/// entry (which costs one check). Before the cap it cost about 170 times as much.
#[tokio::test]
async fn a_v1a_signature_flood_is_refused_for_the_cost_of_one_ordinary_forgery() {
    let upstream = Upstream::start().await;
    let (config, pair) = ed25519_source();
    let gw = GatewayProcess::spawn(config.route("*", &upstream)).await;
    let client = gw.client();
    let flood: Vec<String> = (0..FLOOD_ENTRIES as u8).map(forged_v1a).collect();
    let flood = flood.join(" ");
    let single = forged_v1a(1);

    let genuine = {
        let event = signed_event("response.completed");
        let signature = sign_v1a(
            &pair,
            event.header("webhook-id"),
            event.header("webhook-timestamp").parse().unwrap(),
            event.body.as_bytes(),
        );
        event.with_header("webhook-signature", &signature)
    };
    assert_eq!(client.post(PATH, &genuine).await.status(), 200);
    let (mut flood_ns, mut single_ns) = (0u64, 0u64);
    for _ in 0..2 {
        for (signature, reason, total) in [
            (&single, "invalid_signature", &mut single_ns),
            (&flood, "malformed_signature", &mut flood_ns),
        ] {
            let before = cpu_ns(gw.pid());
            for _ in 0..CPU_BLOCK {
                let forged =
                    signed_event("response.completed").with_header("webhook-signature", signature);
                let reply = client.post(PATH, &forged).await;
                assert_eq!(reply.error(), reason, "{reply:?}");
            }
            *total += cpu_ns(gw.pid()) - before;
        }
    }

    let per_request = |ns: u64| Duration::from_nanos(ns / (2 * CPU_BLOCK) as u64);
    let (flood, single) = (per_request(flood_ns), per_request(single_ns));
    assert!(
        flood < single * 3,
        "a {FLOOD_ENTRIES}-entry flood cost {flood:?} of CPU per request, a single forged entry {single:?}"
    );
    assert_eq!(upstream.received().len(), 1);
}

/// Many distinct clients failing verification, as through a proxy that names each
/// (`X-Forwarded-For` from a trusted peer), fill the penalty box to `max_clients` and no
/// further; a client boxed before the flood stays boxed, a client tracked before it is
/// still counted and boxed, and a genuine sender is served throughout.
#[tokio::test]
async fn a_flood_of_distinct_failing_clients_fills_the_penalty_box_to_its_bound_and_no_further() {
    const MAX_CLIENTS: usize = 500;
    const FLOOD: u32 = 2_000;
    const SENDERS: u32 = 8;
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::spawn(
        config()
            .set("rate_limit", "trusted_proxies", r#"["127.0.0.1/32"]"#)
            .set("penalty_box", "max_failures", "3")
            .set("penalty_box", "window", "\"10m\"")
            .set("penalty_box", "max_clients", &MAX_CLIENTS.to_string())
            .route("*", &upstream),
    )
    .await;
    let client = gw.client();
    let forged_from = |ip: &str| {
        signed_event_with(OTHER_SECRET, "response.completed").with_header("x-forwarded-for", ip)
    };
    for _ in 0..4 {
        let reply = client.post(PATH, &forged_from("192.0.2.1")).await;
        assert_eq!(reply.error(), "invalid_signature");
    }
    assert_eq!(
        client.post(PATH, &forged_from("192.0.2.1")).await.error(),
        "penalty_box"
    );
    let counting = forged_from("192.0.2.2");
    assert_eq!(
        client.post(PATH, &counting).await.error(),
        "invalid_signature"
    );

    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let client = gw.client();
        senders.spawn(async move {
            for n in (sender..FLOOD).step_by(SENDERS as usize) {
                let ip = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
                let forged = signed_event_with(OTHER_SECRET, "response.completed")
                    .with_header("x-forwarded-for", &ip);
                let reply = client.post(PATH, &forged).await;
                assert_eq!(reply.error(), "invalid_signature", "{ip}: {reply:?}");
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.expect("a flooding sender");
    }

    let scrape = gw.metrics().await;
    assert_eq!(
        scrape.value("hookgate_penalty_box_clients"),
        Some(MAX_CLIENTS as f64)
    );
    assert_eq!(
        client.post(PATH, &forged_from("192.0.2.1")).await.error(),
        "penalty_box"
    );
    for _ in 0..3 {
        let reply = client.post(PATH, &forged_from("192.0.2.2")).await;
        assert_eq!(reply.error(), "invalid_signature");
    }
    assert_eq!(
        client.post(PATH, &forged_from("192.0.2.2")).await.error(),
        "penalty_box"
    );
    let genuine = signed_event("response.completed").with_header("x-forwarded-for", "198.51.100.7");
    assert_eq!(client.post(PATH, &genuine).await.status(), 200);
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(
        gw.metrics().await.value("hookgate_penalty_box_total"),
        Some(2.0)
    );
}

/// On-CPU nanoseconds of every thread of a process (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process runs");
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}
