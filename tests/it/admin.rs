//! The admin listener's bearer token: required off loopback, compared exactly, and
//! waived only for the paths `admin.public_paths` names.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

const TOKEN: &str = "an-admin-token-for-tests-0123456789";

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> Reply {
    let mut request = Request::get(gw.admin_url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    gw.send(request.body(Full::new(Bytes::new())).unwrap())
        .await
}

fn off_loopback(upstream: &Upstream) -> Config {
    config()
        .set("admin", "listen", "\"0.0.0.0:0\"")
        .set("admin", "token", &format!("{TOKEN:?}"))
        .route("*", upstream)
}

#[tokio::test]
async fn an_admin_listener_off_loopback_without_a_token_does_not_start() {
    let upstream = Upstream::start().await;
    let text = config()
        .set("admin", "listen", "\"0.0.0.0:0\"")
        .route("*", &upstream)
        .to_string();

    let error = hookgate::config::parse(&text, "test.toml")
        .unwrap_err()
        .to_string();

    assert!(
        error.contains("admin.listen 0.0.0.0:0 is not a loopback address"),
        "{error}"
    );
    assert!(error.contains("admin.token"), "{error}");
}

#[tokio::test]
async fn an_admin_listener_off_loopback_requires_the_bearer_token_on_every_path() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(off_loopback(&upstream)).await;

    for path in ["/metrics", "/healthz", "/readyz"] {
        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let reply = admin_get(&gw, path, token).await;

            assert_eq!(reply.status(), 401, "{path} {token:?}");
            assert_eq!(reply.error(), "unauthorized");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
        assert_eq!(
            admin_get(&gw, path, Some(TOKEN)).await.status(),
            200,
            "{path}"
        );
    }
    let metrics = admin_get(&gw, "/metrics", Some(TOKEN)).await.text();
    assert!(
        metrics.contains("hookgate_admin_unauthorized_total 9"),
        "{metrics}"
    );
}

#[tokio::test]
async fn public_paths_leave_metrics_open_and_nothing_else() {
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(off_loopback(&upstream).set("admin", "public_paths", r#"["/metrics"]"#))
            .await;

    assert_eq!(admin_get(&gw, "/metrics", None).await.status(), 200);
    assert_eq!(admin_get(&gw, "/readyz", None).await.status(), 401);
    assert_eq!(admin_get(&gw, "/healthz", None).await.status(), 401);
}

#[tokio::test]
async fn an_admin_listener_on_loopback_without_a_token_is_open() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;

    assert_eq!(admin_get(&gw, "/metrics", None).await.status(), 200);
}

/// Without a token only the loopback address guards the API: a page elsewhere once
/// reached it through DNS rebinding (its own name resolving to 127.0.0.1: bodies read)
/// or through the operator's browser (a no-cors POST: every dead letter replayed).
#[tokio::test]
async fn without_a_token_the_api_refuses_other_hosts_and_posts_from_other_sites() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().queued().route("*", &upstream)).await;
    let port = gw.admin_addr().port();
    let send = |method: &str, path: &str, headers: &[(&str, String)]| {
        let mut request = Request::builder().method(method).uri(gw.admin_url(path));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        gw.send(request.body(Full::new(Bytes::new())).unwrap())
    };

    let rebound = send(
        "GET",
        "/deliveries",
        &[("host", format!("rebind.evil.example:{port}"))],
    )
    .await;
    assert_eq!(rebound.status(), 403, "{rebound:?}");
    assert_eq!(rebound.error(), "host_not_loopback");
    let forged = send(
        "POST",
        "/deliveries/replay?status=failed_final",
        &[("origin", "https://evil.example".to_owned())],
    )
    .await;
    assert_eq!(forged.status(), 403, "{forged:?}");
    assert_eq!(forged.error(), "cross_site");
    let forged = send(
        "POST",
        "/reload",
        &[("sec-fetch-site", "cross-site".to_owned())],
    )
    .await;
    assert_eq!(forged.error(), "cross_site");

    // What the CLI, curl and Prometheus send still works.
    assert_eq!(send("GET", "/deliveries", &[]).await.status(), 200);
    let local = send("GET", "/metrics", &[("host", format!("localhost:{port}"))]).await;
    assert_eq!(local.status(), 200);
    let replay = send("POST", "/deliveries/replay?status=failed_final", &[]).await;
    assert_eq!(replay.status(), 200, "{replay:?}");
}

/// Sends a console form's head, and of its body only the first bytes.
async fn form_head_alone(gw: &Gateway, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let url = gw.admin_url("");
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nSec-Fetch-Site: same-origin\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 16000\r\n\r\ncsrf="
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn answer_of(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer, connection still open");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A login form is read before anyone has logged in: it gets 5 s to arrive, not the
/// 30 s of `body_read_timeout` that a logged-in operator's forms get.
#[tokio::test]
async fn a_login_form_that_never_arrives_is_refused_within_5_seconds() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(off_loopback(&upstream)).await;
    let started = std::time::Instant::now();
    let answer = answer_of(form_head_alone(&gw, "/ui/login").await).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

/// Console forms whose bodies never come: they once held the admin listener's
/// connections for as long as their senders liked, with no login needed, shutting out
/// `/healthz`, `/readyz` and `/metrics` (a Kubernetes probe failing, the pod restarted).
/// A login form is refused after `limits.body_read_timeout`; any other form without a
/// session is sent to the login page without its body being waited for.
#[tokio::test]
async fn console_forms_that_never_arrive_do_not_hold_the_admin_listener() {
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(off_loopback(&upstream).set("limits", "body_read_timeout", "\"1s\"")).await;

    // One IP's share of the listener's connections (16).
    let mut logins = Vec::new();
    for _ in 0..15 {
        logins.push(form_head_alone(&gw, "/ui/login").await);
    }
    let replay = form_head_alone(&gw, "/ui/replay").await;
    let beyond = answer_of(form_head_alone(&gw, "/ui/login").await).await;
    assert_eq!(
        beyond, "",
        "a 17th connection from one IP is closed at once"
    );

    let answer = answer_of(replay).await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains("location: /ui/login"), "{answer}");
    for login in logins {
        let answer = answer_of(login).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(admin_get(&gw, "/healthz", Some(TOKEN)).await.status(), 200);
}
