//! Graceful shutdown: stop accepting at once, let the requests already inside finish.

use std::io::ErrorKind;

use tokio::net::TcpStream;

use crate::support::*;

async fn refuses_connections(gw: &Gateway) -> bool {
    matches!(
        TcpStream::connect(gw.addr()).await,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

#[tokio::test]
async fn a_delivery_in_flight_at_shutdown_completes_and_new_connections_are_refused() {
    let upstream = Upstream::with(Answer::held()).await;
    let mut gw = Gateway::start(config().route("*", &upstream)).await;
    let in_flight = tokio::spawn({
        let client = gw.client();
        async move { client.post(PATH, &signed_event("response.completed")).await }
    });
    upstream.wait_for(1).await;

    let stopping = gw.begin_shutdown();
    eventually("the listener closes", || refuses_connections(&gw)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the open request"
    );
    upstream.release();

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status(), 200, "{reply:?}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("shutdown finishes once the request is answered")
        .unwrap();
    assert!(refuses_connections(&gw).await);
    assert_eq!(upstream.received().len(), 1);
}

/// The access log is written by a thread of its own through a buffer; a clean shutdown
/// must still leave one line per answered request, also for the requests answered while
/// the gateway was already shutting down.
#[tokio::test]
async fn a_clean_shutdown_flushes_every_access_log_line() {
    const ANSWERED: usize = 300;
    const IN_FLIGHT: usize = 20;
    let fast = Upstream::start().await;
    let held = Upstream::with(Answer::held()).await;
    let mut gw = GatewayProcess::spawn(
        config()
            .route("response.completed", &fast)
            .route("*", &held),
    )
    .await;
    let send = |client: TestClient, event: &'static str| async move {
        client.post(PATH, &signed_event(event)).await
    };
    for _ in 0..ANSWERED / 20 {
        let wave = (0..20).map(|_| send(gw.client(), "response.completed"));
        for reply in futures_util::future::join_all(wave).await {
            assert_eq!(reply.status(), 200, "{reply:?}");
        }
    }
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(send(gw.client(), "response.failed")))
        .collect();
    held.wait_for(IN_FLIGHT).await;
    gw.terminate();
    held.release();
    for reply in in_flight {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status(), 200, "{reply:?}");
    }
    let exit = gw.wait_exit();
    assert!(exit.success(), "hookgate exits cleanly on SIGTERM: {exit}");
    let access_lines = gw
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == "hookgate::access")
        .count();
    assert_eq!(
        access_lines,
        ANSWERED + IN_FLIGHT,
        "one access line per request"
    );
}

/// Given one CPU, the gateway runs every task on its main thread (a current-thread
/// runtime, `main.rs`): requests, the upstream client, timers and the shutdown must all
/// still make progress there, with nothing waiting on a thread that does not exist.
#[tokio::test]
async fn a_gateway_given_one_cpu_runs_on_one_thread_and_still_drains_on_shutdown() {
    const ANSWERED: usize = 200;
    const IN_FLIGHT: usize = 10;
    let fast = Upstream::start().await;
    let held = Upstream::with(Answer::held()).await;
    let mut gw = GatewayProcess::spawn_on_one_cpu(
        config()
            .route("response.completed", &fast)
            .route("*", &held),
    )
    .await;
    let listening = gw
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "listening")
        .expect("a listening line");
    assert_eq!(listening["threads"], 1, "{listening}");

    let send = |client: TestClient, event: &'static str| async move {
        client.post(PATH, &signed_event(event)).await
    };
    for _ in 0..ANSWERED / 20 {
        let wave = (0..20).map(|_| send(gw.client(), "response.completed"));
        for reply in futures_util::future::join_all(wave).await {
            assert_eq!(reply.status(), 200, "{reply:?}");
        }
    }
    assert_eq!(fast.received().len(), ANSWERED);
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(send(gw.client(), "response.failed")))
        .collect();
    held.wait_for(IN_FLIGHT).await;
    gw.terminate();
    held.release();
    for reply in in_flight {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status(), 200, "{reply:?}");
    }
    let exit = gw.wait_exit();
    assert!(exit.success(), "hookgate exits cleanly on SIGTERM: {exit}");
}
