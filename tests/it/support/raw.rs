//! Raw connections for the hardening tests: from a chosen loopback address (so one test
//! plays several client IPs), request heads written byte by byte, and reads until the
//! gateway closes. (The gateway as a separate process is `GatewayProcess`.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::{PATH, PATIENCE, delivery_request};

/// A TCP connection to `to` from `from` (any 127.x.y.z address works on Linux loopback),
/// so one test can play several client IPs.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: IpAddr = from.parse().expect("a loopback address");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

/// Reads until the peer closes the connection (end of file or reset) and returns what
/// was read and when it ended; panics after `PATIENCE`.
pub async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Instant::now()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the gateway kept the connection open for {PATIENCE:?}"),
        }
    }
}

/// Writes a request head, and nothing after it.
pub async fn send_head(stream: &mut TcpStream, head: &str) {
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the head");
}

/// A delivery's request head (its body is not sent), with `Content-Length` as declared.
pub fn delivery_head(delivery: &hookgate::sign::SignedRequest) -> String {
    let mut head = format!("POST {PATH} HTTP/1.1\r\nhost: gateway\r\n");
    for (name, value) in &delivery.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", delivery.body.len()));
    head
}

/// Sends `delivery` whole over a fresh HTTP/1.1 connection and returns the connection
/// without reading the answer: dropping it is a sender hanging up mid-request.
pub async fn sent_without_waiting(
    gateway: SocketAddr,
    delivery: &hookgate::sign::SignedRequest,
) -> TcpStream {
    let mut stream = connect_from("127.0.0.1", gateway).await.expect("connect");
    send_head(&mut stream, &delivery_head(delivery)).await;
    stream
        .write_all(delivery.body.as_bytes())
        .await
        .expect("write the body");
    stream
}

/// POSTs `delivery` over a fresh HTTP/1.1 connection from the loopback address `from`.
pub async fn post_from(
    from: &str,
    gateway: SocketAddr,
    delivery: &hookgate::sign::SignedRequest,
) -> (http::StatusCode, String) {
    post_from_to(from, gateway, PATH, delivery).await
}

/// `post_from` to the source at `path`.
pub async fn post_from_to(
    from: &str,
    gateway: SocketAddr,
    path: &str,
    delivery: &hookgate::sign::SignedRequest,
) -> (http::StatusCode, String) {
    let stream = connect_from(from, gateway).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = delivery_request(path, delivery);
    let (parts, body) = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers")
        .into_parts();
    let body = body.collect().await.expect("read the body").to_bytes();
    (parts.status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits out nothing: a named pause between the bytes of a slow client, which is the
/// attack under test rather than a guess at timing.
pub async fn trickle_pause() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}
