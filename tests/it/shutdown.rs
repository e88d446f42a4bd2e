//! Graceful shutdown: stop accepting at once, let the requests already inside finish.

use std::io::ErrorKind;

use tokio::net::TcpStream;

use crate::support::*;

async fn refuses_connections(gw: &Gateway) -> bool {
    refused(gw.addr()).await
}

async fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

#[tokio::test]
async fn a_delivery_in_flight_at_shutdown_completes_and_new_connections_are_refused() {
    let upstream = Upstream::with(Answer::held()).await;
    let mut gw = Gateway::start(config().route("*", &upstream)).await;
    let in_flight = gw
        .client()
        .post_in_background(PATH, &signed_event("response.completed"));
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

/// A forward that would outlast the drain (an upstream slower than the time left) is
/// given only the time left, less a share for its settle: the sender is answered 504,
/// the access line written and the claim released, rather than the connection closed
/// with nothing sent when the drain ran out, the claim left in flight although the
/// backend had the delivery, and the sender's retry forwarded again once it expired.
#[tokio::test]
async fn a_forward_that_would_outlast_the_drain_is_answered_within_it() {
    let upstream = Upstream::with(Answer::held()).await;
    let mut gw = Gateway::start(
        config()
            .set("server", "shutdown_timeout", "\"2s\"")
            .route("*", &upstream),
    )
    .await;
    let in_flight = gw
        .client()
        .post_in_background(PATH, &signed_event("response.completed"));
    upstream.wait_for(1).await;

    let started = std::time::Instant::now();
    let stopping = gw.begin_shutdown();
    let reply = in_flight.await.unwrap();

    assert_eq!(reply.status(), 504, "{reply:?}");
    assert_eq!(reply.json()["error"], "upstream_timeout", "{reply:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

/// An HTTP/2 client that went silent after its request was answered (it reads neither
/// the rest of the answer nor the shutdown's GOAWAY and PING) is closed a short grace
/// after the shutdown, not held open until `shutdown_timeout`, which kept the process
/// from exiting.
#[tokio::test]
async fn a_silent_http2_client_with_nothing_in_progress_does_not_hold_the_shutdown() {
    let upstream = Upstream::start().await;
    let mut gw = Gateway::start(
        config()
            .set("server", "shutdown_timeout", "\"30s\"")
            .route("*", &upstream),
    )
    .await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    // A window of one byte: the answer's body waits on the client's window updates.
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(1)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::pin!(connection);
    let request = delivery_request(
        &format!("http://{}{PATH}", gw.addr()),
        &signed_event("response.completed"),
    );
    // The connection is driven only until the answer is in, then never read again.
    let reply = tokio::select! {
        reply = sender.send_request(request) => reply.unwrap(),
        _ = &mut connection => panic!("the connection ended before the answer"),
    };
    assert_eq!(reply.status(), 200);

    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(15), gw.begin_shutdown())
        .await
        .expect("the shutdown does not wait for the silent client")
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Held, never polled, to here: the client stays connected and silent.
    let _ = &connection;
}

/// A sender that hung up left its pipeline running (so its forward is still settled),
/// but no connection holds it: the shutdown must still wait for it, or the process exits
/// mid-forward with the claim never settled and the access line never written.
#[tokio::test]
async fn shutdown_waits_for_the_delivery_of_a_sender_that_hung_up() {
    let upstream = Upstream::with(Answer::held()).await;
    let mut gw = Gateway::start(config().route("*", &upstream)).await;
    let event = signed_event("response.completed");
    let hanging = sent_without_waiting(gw.addr(), &event).await;
    upstream.wait_for(1).await;
    drop(hanging);
    gw.wait_for_open_connections(0).await;

    let stopping = gw.begin_shutdown();
    eventually("the listener closes", || refuses_connections(&gw)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the forward still in progress"
    );
    upstream.release();
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("shutdown finishes once the forward is answered")
        .unwrap();
    assert_eq!(upstream.received().len(), 1);
}

/// A gateway process routing `response.completed` to an upstream that answers at once
/// and everything else to one that holds its answers.
struct Draining {
    fast: Upstream,
    held: Upstream,
}

impl Draining {
    async fn start() -> (Draining, Config) {
        let draining = Draining {
            fast: Upstream::start().await,
            held: Upstream::with(Answer::held()).await,
        };
        let config = config()
            .route("response.completed", &draining.fast)
            .route("*", &draining.held);
        (draining, config)
    }

    /// `answered` deliveries answered 200 in waves of 20, then `in_flight` held at the
    /// upstream while SIGTERM arrives: every one is answered 200 and the process exits 0.
    async fn answer_then_drain(&self, gw: &mut GatewayProcess, answered: usize, in_flight: usize) {
        let send = |event: &'static str| gw.client().post_in_background(PATH, &signed_event(event));
        for _ in 0..answered / 20 {
            let wave = (0..20).map(|_| send("response.completed"));
            for reply in futures_util::future::join_all(wave).await {
                let reply = reply.unwrap();
                assert_eq!(reply.status(), 200, "{reply:?}");
            }
        }
        assert_eq!(self.fast.received().len(), answered);
        let held: Vec<_> = (0..in_flight).map(|_| send("response.failed")).collect();
        self.held.wait_for(in_flight).await;
        gw.terminate();
        // Released only once shutdown has begun, so these are answered while draining.
        let addr = gw.addr;
        eventually("the listener closes", || refused(addr)).await;
        self.held.release();
        for reply in held {
            let reply = reply.await.unwrap();
            assert_eq!(reply.status(), 200, "{reply:?}");
        }
        let exit = gw.wait_exit();
        assert!(exit.success(), "hookgate exits cleanly on SIGTERM: {exit}");
    }
}

/// The log's JSON lines.
fn log_events(gw: &GatewayProcess) -> Vec<serde_json::Value> {
    gw.log()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The access log is written by a thread of its own through a buffer; a clean shutdown
/// must still leave one line per answered request, also for the requests answered while
/// the gateway was already shutting down.
#[tokio::test]
async fn a_clean_shutdown_flushes_every_access_log_line() {
    const ANSWERED: usize = 300;
    const IN_FLIGHT: usize = 20;
    let (draining, config) = Draining::start().await;
    let mut gw = GatewayProcess::spawn(config).await;

    draining
        .answer_then_drain(&mut gw, ANSWERED, IN_FLIGHT)
        .await;

    let access_lines = log_events(&gw)
        .iter()
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
    let (draining, config) = Draining::start().await;
    let mut gw = GatewayProcess::spawn_on_one_cpu(config).await;
    // The line reaches the log just after the address reached `spawn`.
    gw.log_containing(r#""message":"listening""#).await;
    let listening = log_events(&gw)
        .into_iter()
        .find(|event| event["message"] == "listening")
        .expect("a listening line");
    assert_eq!(listening["threads"], 1, "{listening}");

    draining.answer_then_drain(&mut gw, 200, 10).await;
}

/// In-memory queue: a delivery whose body arrives once the workers have stopped is
/// answered 503 (the sender retries elsewhere or later), not 202: nothing would deliver
/// it, and it was lost without a word.
#[tokio::test]
async fn the_in_memory_queue_refuses_deliveries_once_its_workers_have_stopped() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let mut gw = Gateway::start(config().queued().route("*", &upstream)).await;
    let event = signed_event("response.completed");
    let mut stream = connect_from("127.0.0.1", gw.addr()).await.expect("connect");
    send_head(&mut stream, &delivery_head(&event)).await;
    stream
        .write_all(&event.body.as_bytes()[..10])
        .await
        .unwrap();
    // The gateway is reading the body: a request in progress, which the shutdown lets
    // finish (a head not read yet is an idle connection, closed at once).
    eventually("the body being read", || async {
        gw.metrics()
            .await
            .value("hookgate_body_buffer_bytes")
            .is_some_and(|held| held > 0.0)
    })
    .await;

    let stopping = gw.begin_shutdown();
    eventually("the listener closes", || refuses_connections(&gw)).await;
    // The workers stop on the same signal, at once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stream
        .write_all(&event.body.as_bytes()[10..])
        .await
        .unwrap();

    let (answer, _) = read_until_closed(&mut stream).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("queue_unavailable"), "{answer}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("shuts down")
        .unwrap();
    assert!(upstream.received().is_empty());
}
