//! Errors a newcomer meets first say what to do next: an untrusted certificate, plain
//! HTTP to the TLS listener (and TLS to a plain one), a port already in use, several
//! unset environment variables, failed handshakes in the gateway's log; and the access
//! log line of a failed forward names the backend.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const HANDSHAKE_FAILED: &str =
    r#"hookgate_connections_closed_total{listener="server",reason="tls_handshake_failed"}"#;

/// `hookgate sign --send URL` with `flags`; returns (success, stdout, stderr).
async fn sign_send(url: &str, flags: &[&str]) -> (bool, String, String) {
    let mut args = vec!["sign", "--secret", SECRET, "--type", "response.completed"];
    args.extend(["--send", url]);
    args.extend(flags);
    hookgate_cli(&args).await
}

/// Plain HTTP/1.1 sent to `addr`; returns everything the server answered.
async fn plain_http(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /webhooks/openai HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .expect("read the answer");
    answer
}

/// A gateway on a dev certificate, forwarding everything to a recording upstream.
async fn tls_gateway() -> (DevCert, Upstream, Gateway) {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().tls(&cert).route("*", &upstream)).await;
    (cert, upstream, gw)
}

#[tokio::test]
async fn plain_http_to_the_tls_listener_is_answered_400_tls_required_and_counted() {
    let (_cert, upstream, gw) = tls_gateway().await;

    let answer = plain_http(gw.addr()).await;

    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(hookgate::tls::PLAIN_HTTP_ANSWER),
        "{answer}"
    );
    assert!(answer.contains(r#""error":"tls_required""#), "{answer}");
    assert!(upstream.received().is_empty());
    eventually("the failed handshake is counted", || async {
        gw.metrics().await.value(HANDSHAKE_FAILED) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn sign_send_with_http_to_the_tls_listener_shows_the_gateways_explanation() {
    let (_cert, _upstream, gw) = tls_gateway().await;

    let (ok, stdout, _) = sign_send(&format!("http://{}{PATH}", gw.addr()), &[]).await;

    assert!(!ok);
    assert!(stdout.contains("HTTP 400 Bad Request"), "{stdout}");
    assert!(stdout.contains("use https://"), "{stdout}");
}

#[tokio::test]
async fn failed_handshakes_are_logged_at_debug_with_peer_and_reason_at_most_once_a_second() {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::spawn_logging(
        config().tls(&cert).route("*", &upstream),
        "info,hookgate::server=debug",
    )
    .await;

    for _ in 0..5 {
        plain_http(gw.addr).await;
    }

    eventually("all five failed handshakes are counted", || async {
        gw.metrics().await.value(HANDSHAKE_FAILED) == Some(5.0)
    })
    .await;
    let log = gw.log_containing("TLS handshake failed").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|event: &serde_json::Value| event["message"] == "TLS handshake failed")
        .collect();
    assert_eq!(lines.len(), 1, "one line for a burst of five:\n{log}");
    let line = &lines[0];
    assert_eq!(line["level"], "DEBUG");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(
        line["reason"].as_str().unwrap().contains("plain HTTP"),
        "{line}"
    );
    assert_eq!(line["left_out"], 0, "{line}");
}

#[tokio::test]
async fn sign_send_to_an_untrusted_certificate_suggests_cacert_or_insecure() {
    let (cert, _upstream, gw) = tls_gateway().await;
    let url = format!("https://localhost:{}{PATH}", gw.addr().port());

    let (ok, _, stderr) = sign_send(&url, &[]).await;
    assert!(!ok);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(
        stderr.contains("\nhint: ") && stderr.contains("--cacert") && stderr.contains("--insecure"),
        "{stderr}"
    );

    let other = DevCert::generate();
    let wrong_ca = other.cert.to_str().unwrap();
    let (ok, _, stderr) = sign_send(&url, &["--cacert", wrong_ca]).await;
    assert!(!ok);
    assert!(stderr.contains("not the one in --cacert"), "{stderr}");

    let right_ca = cert.cert.to_str().unwrap();
    let (ok, stdout, stderr) = sign_send(&url, &["--cacert", right_ca]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("HTTP 200 OK"), "{stdout}");
}

/// A TLS server that is not hookgate answers plain HTTP with a TLS alert, which an HTTP
/// client reads as a malformed answer.
#[tokio::test]
async fn sign_send_with_http_to_another_tls_server_suggests_https() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            // A fatal TLS alert (protocol_version), as rustls or OpenSSL would send.
            let _ = stream
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
                .await;
        }
    });

    let (ok, _, stderr) = sign_send(&format!("http://{addr}{PATH}"), &[]).await;

    assert!(!ok);
    assert!(
        stderr.contains("hint: the server did not answer in HTTP"),
        "{stderr}"
    );
    assert!(stderr.contains("use https://"), "{stderr}");
}

#[tokio::test]
async fn sign_send_with_https_to_a_plain_listener_suggests_http() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    let (ok, _, stderr) = sign_send(&format!("https://{}{PATH}", gw.addr()), &[]).await;

    assert!(!ok);
    assert!(
        stderr.contains("hint: the server did not answer in TLS"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_on_a_port_in_use_names_the_key_and_the_file_and_prints_the_os_error_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = config().route("*", NOWHERE).to_string().replacen(
        "127.0.0.1:0",
        &format!("127.0.0.1:{port}"),
        1,
    );
    assert!(
        text.contains(&format!("listen = \"127.0.0.1:{port}\"")),
        "{text}"
    );
    let file = ConfigFile::new(&text);
    let path = file.path();

    let (ok, _, stderr) = hookgate_cli(&["serve", "--config", path.to_str().unwrap()]).await;

    assert!(!ok);
    let shown = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (server.listen in {shown})"
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("stop it, or change server.listen"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_names_every_unset_environment_variable_at_once() {
    let file = ConfigFile::new(format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{HOOKGATE_IT_UNSET_TOKEN}}\"\n\n\
         [store]\nredis_url = \"${{HOOKGATE_IT_UNSET_REDIS}}\"\n\n{}",
        source_block(
            "a",
            "/a",
            "scheme = \"standard-webhooks\"\nsecrets = [\"${HOOKGATE_IT_UNSET_SECRET}\"]",
            &["*"],
            NOWHERE,
        )
    ));
    let path = file.path();

    let (ok, _, stderr) = hookgate_cli(&["check", "--config", path.to_str().unwrap()]).await;

    assert!(!ok);
    assert!(
        stderr.contains("line 3"),
        "the first one with toml's line: {stderr}"
    );
    assert!(
        stderr.contains(
            "3 environment variables are not set: HOOKGATE_IT_UNSET_REDIS, \
             HOOKGATE_IT_UNSET_SECRET, HOOKGATE_IT_UNSET_TOKEN"
        ),
        "{stderr}"
    );
}

/// An admin listener that is not there: the error says why (its first cause alone read
/// "tcp connect error").
#[tokio::test]
async fn deliveries_against_a_closed_port_says_the_connection_was_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ok, _, stderr) =
        hookgate_cli(&["deliveries", "--admin", &admin, "--token", "t", "list"]).await;
    assert!(!ok);
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

/// The admin listener behind a TLS-terminating proxy: here the TLS webhook listener
/// stands in for the proxy (it answers /deliveries 404, which is enough to show trust).
#[tokio::test]
async fn deliveries_over_https_suggests_cacert_and_takes_it() {
    let (cert, _upstream, gw) = tls_gateway().await;
    let admin = format!("https://localhost:{}", gw.addr().port());

    let (ok, _, stderr) =
        hookgate_cli(&["deliveries", "--admin", &admin, "--token", "t", "list"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach the admin listener"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: ") && stderr.contains("--cacert"),
        "{stderr}"
    );

    let ca = cert.cert.to_str().unwrap();
    let (ok, _, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        &admin,
        "--token",
        "t",
        "--cacert",
        ca,
        "list",
    ])
    .await;
    assert!(!ok);
    assert!(stderr.contains("the admin API answered 404"), "{stderr}");
}

/// The access log line a user reads when a backend is down: the upstream's host and
/// port, and the duration in whole microseconds (`0.218`, not `0.21756999999999999`).
#[tokio::test]
async fn the_access_log_names_the_unreachable_upstreams_host_and_rounds_its_duration() {
    let closed = closed_port().await;
    let gw = GatewayProcess::spawn(config().route("*", format!("http://{closed}/hooks"))).await;

    let reply = gw
        .client()
        .post(PATH, &signed_event("response.completed"))
        .await;
    assert_eq!(reply.status(), 502);

    let mut line = String::new();
    eventually("the access log line is written", || {
        line = gw
            .log()
            .lines()
            .find(|l| l.contains(r#""target":"hookgate::access""#))
            .unwrap_or_default()
            .to_owned();
        std::future::ready(!line.is_empty())
    })
    .await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("unreachable: {closed}: ")),
        "{detail}"
    );
    let duration = line
        .split(r#""duration_ms":"#)
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .unwrap();
    let decimals = duration.split('.').nth(1).map_or(0, str::len);
    assert!(decimals <= 3, "duration_ms {duration} in {line}");
}

/// `dev-cert` writes what it is asked or says why not: `--out DIR --key FILE` ignored
/// the key, and one file for both wrote the key over the certificate.
#[tokio::test]
async fn dev_cert_refuses_half_a_pair_and_one_file_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (ok, _, stderr) =
        hookgate_cli(&["dev-cert", "--out", &at("o"), "--key", &at("k.pem")]).await;
    assert!(
        !ok && stderr.contains("--cert and --key go together"),
        "{stderr}"
    );
    let (ok, _, stderr) = hookgate_cli(&[
        "dev-cert",
        "--cert",
        &at("same.pem"),
        "--key",
        &at("same.pem"),
    ])
    .await;
    assert!(!ok && stderr.contains("same file"), "{stderr}");
    assert!(!dir.path().join("o").exists() && !dir.path().join("same.pem").exists());
    let (ok, out, stderr) =
        hookgate_cli(&["dev-cert", "--cert", &at("c.pem"), "--key", &at("k.pem")]).await;
    assert!(ok, "{stderr}");
    assert!(out.starts_with("wrote "), "{out}");
}
