//! Hostile connections: slow heads, silent and idle connections, oversized heads, too
//! many connections in all or from one IP, thousands of idle sockets, and an HTTP/2
//! rapid-reset flood. Each must cost the attacker more than the gateway, and none may
//! stop a valid delivery from another client.

use std::time::Duration;

use http::{Request, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

fn closed(scrape: &Scrape, reason: &str) -> u64 {
    scrape
        .value(&format!(
            r#"hookgate_connections_closed_total{{listener="server",reason="{reason}"}}"#
        ))
        .unwrap_or(0.0) as u64
}

fn refused(scrape: &Scrape, reason: &str) -> u64 {
    scrape
        .value(&format!(
            r#"hookgate_connections_refused_total{{listener="server",reason="{reason}"}}"#
        ))
        .unwrap_or(0.0) as u64
}

fn open(scrape: &Scrape) -> u64 {
    scrape
        .value(r#"hookgate_connections_open{listener="server"}"#)
        .unwrap_or(0.0) as u64
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_within_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "header_read_timeout", "\"1s\"")
            .route("*", &upstream),
    )
    .await;
    let started = Instant::now();
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One header line every 200 ms: the head is never finished.
    let trickle = tokio::spawn(async move {
        let _ = writer
            .write_all(format!("POST {PATH} HTTP/1.1\r\nhost: gateway\r\n").as_bytes())
            .await;
        for i in 0.. {
            trickle_pause().await;
            if writer
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });

    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read(&mut reader, &mut buf),
    )
    .await
    .expect("the gateway cuts the connection");
    let elapsed = started.elapsed();
    trickle.abort();

    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "cut after {elapsed:?}");
    eventually("the cut is counted", || async {
        closed(&gw.metrics().await, "header_timeout") == 1
    })
    .await;
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "header_read_timeout", "\"1s\"")
            .route("*", &upstream),
    )
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();

    let (received, ended) = read_until_closed(&mut stream).await;

    assert!(received.is_empty());
    assert!(
        ended - started < Duration::from_secs(4),
        "{:?}",
        ended - started
    );
    eventually("the cut is counted", || async {
        closed(&gw.metrics().await, "header_timeout") == 1
    })
    .await;
}

#[tokio::test]
async fn a_tls_handshake_that_never_completes_is_cut_after_the_handshake_timeout() {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .tls(&cert)
            .set("server.tls", "handshake_timeout", "\"1s\"")
            .route("*", &upstream),
    )
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();

    let (_, ended) = read_until_closed(&mut stream).await;

    assert!(
        ended - started < Duration::from_secs(4),
        "{:?}",
        ended - started
    );
    eventually("the cut is counted", || async {
        closed(&gw.metrics().await, "tls_handshake_timeout") == 1
    })
    .await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "idle_timeout", "\"1s\"")
            .route("*", &upstream),
    )
    .await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let reply = sender
        .send_request(delivery_request(
            &format!("http://{}{PATH}", gw.addr()),
            &signed_event("response.completed"),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.version(), Version::HTTP_2);
    let answered = Instant::now();

    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the gateway closes the idle connection")
        .unwrap()
        .expect("closed with GOAWAY, cleanly");

    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(900), "{idle:?}");
    assert!(idle < Duration::from_secs(4), "{idle:?}");
    eventually("the close is counted", || async {
        closed(&gw.metrics().await, "idle_timeout") == 1
    })
    .await;
}

#[tokio::test]
async fn headers_over_the_limits_are_answered_431_headers_too_large_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "max_headers", "20")
            .set("limits", "max_header_bytes", "4096")
            .route("*", &upstream),
    )
    .await;
    let mut many = delivery_request(&gw.url(PATH), &signed_event("response.completed"));
    for i in 0..20 {
        let name = http::HeaderName::try_from(format!("x-extra-{i}")).unwrap();
        many.headers_mut()
            .insert(name, http::HeaderValue::from_static("1"));
    }
    let big = delivery_request(
        &gw.url(PATH),
        &signed_event("response.completed").with_header("x-big", &"a".repeat(5000)),
    );

    for request in [many, big] {
        let reply = gw.send(request).await;

        assert_eq!(reply.status(), 431, "{reply:?}");
        assert_eq!(reply.error(), "headers_too_large");
    }
    assert!(upstream.received().is_empty());
    assert_eq!(gw.metrics().await.requests(SOURCE, "headers_too_large"), 2);
}

#[tokio::test]
async fn a_head_beyond_twice_the_limits_is_refused_431_by_the_parser_and_the_connection_closed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "max_header_bytes", "4096")
            .route("*", &upstream),
    )
    .await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = delivery_head(
        &signed_event("response.completed").with_header("x-big", &"a".repeat(20_000)),
    );

    send_head(&mut stream, &head).await;
    let (received, _) = read_until_closed(&mut stream).await;

    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(upstream.received().is_empty());
    eventually("the close is counted", || async {
        closed(&gw.metrics().await, "headers_too_large") == 1
    })
    .await;
}

/// Heads the parser cannot read are answered 400 by it, before there is a request to
/// count: they were counted nowhere, so a scanner or fuzzer sending them was invisible.
#[tokio::test]
async fn a_head_the_parser_cannot_read_is_answered_400_and_counted() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let heads = [
        "POST /webhooks/openai HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
        "POST /webhooks/openai HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
        "P@ST /webhooks/openai HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for head in heads {
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        send_head(&mut stream, head).await;
        let (received, _) = read_until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 400"), "{head:?}: {text}");
    }
    eventually("every malformed head counted", || async {
        closed(&gw.metrics().await, "malformed_request") == heads.len() as u64
    })
    .await;
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn connections_over_max_connections_per_ip_are_reset_while_other_ips_are_served() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "max_connections_per_ip", "2")
            .route("*", &upstream),
    )
    .await;
    let _held = [
        connect_from("127.0.0.2", gw.addr()).await.unwrap(),
        connect_from("127.0.0.2", gw.addr()).await.unwrap(),
    ];
    eventually("both are admitted", || async {
        open(&gw.metrics().await) == 2
    })
    .await;

    let mut third = connect_from("127.0.0.2", gw.addr()).await.unwrap();
    let (received, _) = read_until_closed(&mut third).await;
    let (status, _) = post_from("127.0.0.3", gw.addr(), &signed_event("response.completed")).await;

    assert!(received.is_empty());
    assert_eq!(status, 200);
    let scrape = gw.metrics().await;
    assert_eq!(refused(&scrape, "per_ip_limit"), 1);
    assert_eq!(refused(&scrape, "max_connections"), 0);
}

#[tokio::test]
async fn connections_over_max_connections_are_reset_and_counted() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "max_connections", "2")
            .route("*", &upstream),
    )
    .await;
    let held = [
        connect_from("127.0.0.2", gw.addr()).await.unwrap(),
        connect_from("127.0.0.3", gw.addr()).await.unwrap(),
    ];
    eventually("both are admitted", || async {
        open(&gw.metrics().await) == 2
    })
    .await;

    let mut third = connect_from("127.0.0.4", gw.addr()).await.unwrap();
    let (received, _) = read_until_closed(&mut third).await;
    assert!(received.is_empty());
    assert_eq!(refused(&gw.metrics().await, "max_connections"), 1);

    drop(held);
    eventually("the slots come back", || async {
        open(&gw.metrics().await) == 0
    })
    .await;
    let (status, _) = post_from("127.0.0.4", gw.addr(), &signed_event("response.completed")).await;
    assert_eq!(status, 200);
}

/// 10,000 connections that never send a byte, from 40 client addresses (under the
/// per-IP limit), all admitted and held open; then a valid delivery from another client.
/// The gateway runs as its own process: both ends of 10,000 sockets would not fit in
/// one process's open-files limit.
#[tokio::test]
async fn ten_thousand_idle_connections_do_not_stop_a_valid_delivery() {
    const IDLE: usize = 10_000;
    const ADDRESSES: usize = 40;
    if !skips::open_files_or_skip(IDLE as u64 + 1_000) {
        return;
    }
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::spawn(
        config()
            .set("limits", "max_connections", "12000")
            .set("limits", "header_read_timeout", "\"10m\"")
            .set("limits", "idle_timeout", "\"10m\"")
            .route("*", &upstream),
    )
    .await;

    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let from = format!("127.0.1.{}", 1 + i % ADDRESSES);
        idle.push(
            connect_from(&from, gw.addr)
                .await
                .expect("connect an idle socket"),
        );
    }
    eventually("every idle connection is admitted and held", || async {
        open(&gw.metrics().await) == IDLE as u64
    })
    .await;
    let started = Instant::now();
    let (status, body) = post_from("127.0.0.1", gw.addr, &signed_event("response.completed")).await;

    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream.received().len(), 1);
    let scrape = gw.metrics().await;
    assert!(open(&scrape) >= IDLE as u64);
    assert_eq!(
        refused(&scrape, "max_connections") + refused(&scrape, "per_ip_limit"),
        0
    );
    drop(idle);
}

/// Rapid reset (CVE-2023-44487): open a stream and cancel it at once, thousands of times
/// on one connection. The gateway drops the connection (or, for streams reset before
/// they were picked up, sends GOAWAY `ENHANCE_YOUR_CALM`), and another client's
/// deliveries are served meanwhile.
#[tokio::test]
async fn an_http2_rapid_reset_burst_is_cut_off_and_does_not_stall_another_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut attacker, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let url = format!("http://{}{PATH}", gw.addr());
    let flood = tokio::spawn(async move {
        let held = attacker.clone(); // the gateway, not the attacker, must end the connection
        for _ in 0..10_000 {
            let Ok(ready) = attacker.ready().await else {
                break;
            };
            attacker = ready;
            let request = Request::post(&url).body(()).unwrap();
            let Ok((_response, mut stream)) = attacker.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
        }
        held
    });

    let client = gw.client();
    for _ in 0..20 {
        let started = Instant::now();
        let reply = client.post(PATH, &signed_event("response.completed")).await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let _attacker = tokio::time::timeout(PATIENCE, flood)
        .await
        .unwrap()
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, connection).await;

    let ended = ended
        .expect("the gateway ends the flooding connection")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    assert_eq!(upstream.received().len(), 20);
    eventually("the cut is counted", || async {
        closed(&gw.metrics().await, "http2_reset_flood") == 1
    })
    .await;
}

/// An HTTP/2 client that grants no flow-control window can be sent no answer: each of
/// its streams, answered at once without a secret, stayed open with its answer until
/// the connection was idle (100 streams on each of 256 connections, about 80 MiB per
/// client IP). Its connection is cut once the client IP has as many answers unsent as
/// it may have connections; a client that reads its answers is never cut.
#[tokio::test]
async fn an_http2_client_that_reads_no_answers_is_cut_off_at_its_share() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "max_connections_per_ip", "4")
            .route("*", &upstream),
    )
    .await;
    let url = format!("http://{}{PATH}", gw.addr());

    // A client that reads: 20 streams at once, every answer taken.
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let reader = tokio::spawn(connection);
    let mut answers = Vec::new();
    for _ in 0..20 {
        let mut client = client.clone().ready().await.unwrap();
        let request = Request::post(&url).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        answers.push(response);
    }
    for answer in answers {
        assert_eq!(answer.await.unwrap().status(), 400, "unsigned");
    }

    // A client that grants no window, or one byte (hyper hands h2 an answer once one
    // byte fits, and h2 keeps the rest): its answers cannot be sent.
    for (cut, window) in [0, 1].into_iter().enumerate() {
        let stream = TcpStream::connect(gw.addr()).await.unwrap();
        let (mut stalled, connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<_, bytes::Bytes>(stream)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let mut pending = Vec::new();
        for _ in 0..10 {
            let Ok(ready) = stalled.ready().await else {
                break;
            };
            stalled = ready;
            let request = Request::post(&url).body(()).unwrap();
            let Ok((response, _)) = stalled.send_request(request, true) else {
                break;
            };
            pending.push(response);
        }
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .unwrap_or_else(|_| panic!("window {window}: cut long before it is idle"))
            .unwrap()
            .ok();
        let scrape = gw.metrics().await;
        assert_eq!(closed(&scrape, "answers_unread"), cut as u64 + 1);
        drop(pending);
    }
    assert!(
        !reader.is_finished(),
        "the reading client's connection is kept"
    );
}

/// A client's reset of a stream whose body the gateway was reading counts once toward
/// `http2_max_resets`: hyper dropping the unanswered request and the body failing
/// under the pipeline each counted it, and a client was cut off at half the limit.
#[tokio::test]
async fn a_stream_reset_while_its_body_is_read_counts_once_toward_the_limit() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .set("limits", "http2_max_resets", "10")
            .route("*", &upstream),
    )
    .await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let url = format!("http://{}{PATH}", gw.addr());
    let request = |event: &hookgate::verify::SignedRequest| {
        let mut request = Request::post(&url);
        for (name, value) in &event.headers {
            request = request.header(name, value);
        }
        request.body(()).unwrap()
    };
    for _ in 0..9 {
        client = client.ready().await.unwrap();
        let event = signed_event("response.completed");
        let (_response, mut stream) = client.send_request(request(&event), false).unwrap();
        stream
            .send_data(
                bytes::Bytes::copy_from_slice(&event.body.as_bytes()[..10]),
                false,
            )
            .unwrap();
        // The gateway reads the body's first bytes, then the client gives up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    client = client.ready().await.expect("the connection still open");
    let event = signed_event("response.completed");
    let (response, mut stream) = client.send_request(request(&event), false).unwrap();
    stream
        .send_data(bytes::Bytes::from(event.body.clone()), true)
        .unwrap();
    assert_eq!(response.await.expect("answered").status(), 200);
    assert_eq!(upstream.received().len(), 1);
    connection.abort();
}
