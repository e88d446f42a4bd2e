//! The example "legacy" backends under `examples/` (Python and Node, standard library
//! only), run for real behind a gateway: they receive the sender's exact bytes and
//! `webhook-*` headers, so their own signature check passes; a forged request sent to
//! them directly fails it. A WSGI backend (Python's `wsgiref`, which merges header
//! spellings into one `HTTP_*` variable as CGI does) shows what such backends make of
//! spoofed forwarding headers. Skipped when `python3` / `node` are missing, unless
//! `HOOKGATE_REQUIRE_EXAMPLES=1` (CI).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::*;

const REQUIRE: &str = "HOOKGATE_REQUIRE_EXAMPLES";

/// One example backend child process, killed on drop; its stdout lines arrive on `lines`.
/// Also runs the README's backend code (`enrich.rs`).
pub struct Example {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Example {
    fn start(program: &'static str, script: &str) -> Option<Example> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/").to_owned() + script;
        Example::spawn(program, &[&script])
    }

    /// `program` with `args`, once it prints `listening`. The port is picked free, then
    /// bound by the child: when another test takes it in between, the child exits and
    /// another port is tried.
    pub fn spawn(program: &'static str, args: &[&str]) -> Option<Example> {
        Example::spawn_with_secret(program, args, SECRET)
    }

    /// `spawn` with `secret` as its `WEBHOOK_SECRET`.
    pub fn spawn_with_secret(
        program: &'static str,
        args: &[&str],
        secret: &str,
    ) -> Option<Example> {
        // The Debian package that installs it.
        let package = if program == "node" { "nodejs" } else { program };
        if !skips::installed_or_skip(program, package, REQUIRE) {
            return None;
        }
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new(program)
                .args(args)
                .env("WEBHOOK_SECRET", secret)
                .env("PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the example backend");
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let example = Example { child, port, lines };
            if example.next_line_with("listening").is_some() {
                return Some(example);
            }
        }
        panic!("{program} {args:?} never printed a line with \"listening\"");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// The next stdout line containing `text`, or a failure after `PATIENCE`.
    pub fn expect_line(&self, text: &str) -> String {
        self.next_line_with(text)
            .unwrap_or_else(|| panic!("the example never printed a line with {text:?}"))
    }

    /// The next stdout line containing `text`; `None` once the child has closed its
    /// stdout (it exited) or after `PATIENCE`.
    fn next_line_with(&self, text: &str) -> Option<String> {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn a_backend_behind_the_gateway_verifies_what_it_receives(
    program: &'static str,
    script: &str,
) {
    let Some(example) = Example::start(program, script) else {
        return;
    };
    let gw = Gateway::start(config().route("*", example.url().as_str())).await;
    let event = signed_event("response.completed");

    let reply = gw.post(PATH, &event).await;

    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.json()["verdict"], "ok");
    let line = example.expect_line("response.completed");
    assert!(line.contains(": ok "), "{line}");
    assert!(line.contains("source=openai"), "{line}");
}

/// A secret as hookgate reads it (`whsec_` with or without base64 padding, or any other
/// text as its bytes), and two of them while a `resign` secret is rotated: the backend
/// takes a delivery signed with either. (The first with a raw secret answered 401 to
/// every delivery, or crashed on an unpadded one.)
async fn a_backend_given_two_secrets_takes_deliveries_resigned_with_either(
    program: &'static str,
    script: &str,
) {
    const NEW: &str = "whsec_bmV3LWJhY2tlbmQtc2VjcmV0LXVucGFkZGVkIQ"; // no padding
    const OLD: &str = "old-backend-secret";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/").to_owned() + script;
    let both = format!("{NEW} {OLD}");
    let Some(example) = Example::spawn_with_secret(program, &[&script], &both) else {
        return;
    };
    for secret in [OLD, NEW] {
        let gw = Gateway::start(config().resigned_route("*", example.url().as_str(), secret)).await;

        let reply = gw.post(PATH, &signed_event("response.completed")).await;

        assert_eq!(reply.status(), 200, "{secret}: {}", reply.text());
        assert_eq!(reply.json()["verdict"], "ok");
    }
    let gw = Gateway::start(config().resigned_route("*", example.url().as_str(), "another")).await;
    let reply = gw.post(PATH, &signed_event("response.completed")).await;
    assert_eq!(reply.status(), 401, "{}", reply.text());
}

#[tokio::test]
async fn the_python_backend_given_two_secrets_takes_deliveries_resigned_with_either() {
    a_backend_given_two_secrets_takes_deliveries_resigned_with_either(
        "python3",
        "python-upstream/app.py",
    )
    .await;
}

#[tokio::test]
async fn the_node_backend_given_two_secrets_takes_deliveries_resigned_with_either() {
    a_backend_given_two_secrets_takes_deliveries_resigned_with_either(
        "node",
        "node-upstream/server.js",
    )
    .await;
}

async fn a_forged_request_sent_straight_to_the_backend_is_refused(
    program: &'static str,
    script: &str,
) {
    let Some(example) = Example::start(program, script) else {
        return;
    };
    let gw = Gateway::start(config().route("*", example.url().as_str())).await;
    let mut forged = signed_event("response.completed");
    forged.body = forged.body.replace("response.completed", "response.failed");

    let reply = gw.client().post_url(&example.url(), &forged).await;

    assert_eq!(reply.status(), 401);
    assert_eq!(reply.json()["verdict"], "invalid signature");
}

#[tokio::test]
async fn the_python_backend_behind_the_gateway_verifies_what_it_receives() {
    a_backend_behind_the_gateway_verifies_what_it_receives("python3", "python-upstream/app.py")
        .await;
}

#[tokio::test]
async fn the_python_backend_refuses_a_forged_request_sent_straight_to_it() {
    a_forged_request_sent_straight_to_the_backend_is_refused("python3", "python-upstream/app.py")
        .await;
}

#[tokio::test]
async fn the_node_backend_behind_the_gateway_verifies_what_it_receives() {
    a_backend_behind_the_gateway_verifies_what_it_receives("node", "node-upstream/server.js").await;
}

#[tokio::test]
async fn the_node_backend_refuses_a_forged_request_sent_straight_to_it() {
    a_forged_request_sent_straight_to_the_backend_is_refused("node", "node-upstream/server.js")
        .await;
}

/// A WSGI app on `wsgiref` that prints the `HTTP_*` variables of each request as one
/// JSON line and answers `200 {"ok":true}`.
const WSGI_ENVIRON_PRINTER: &str = r#"
import json, os
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    print("environ " + json.dumps(seen), flush=True)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"ok":true}']

server = make_server("127.0.0.1", int(os.environ["PORT"]), app, handler_class=Quiet)
print("listening", flush=True)
server.serve_forever()
"#;

#[tokio::test]
async fn a_wsgi_backend_sees_only_the_gateways_forwarding_variables() {
    let Some(backend) = Example::spawn("python3", &["-c", WSGI_ENVIRON_PRINTER]) else {
        return;
    };
    let gw = Gateway::start(config().route("*", backend.url().as_str())).await;
    let event = signed_event("response.completed");
    let mut request = delivery_request(&gw.url(PATH), &event);
    for (name, value) in [
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7"),
        ("X_Hookgate_Verified", "stripe,standard-webhooks"),
        ("X_Real_IP", "6.6.6.6"),
        ("X-Forwarded-Port", "1"),
    ] {
        request
            .headers_mut()
            .append(name, value.parse().expect("a header value"));
    }

    let reply = gw.send(request).await;

    assert!(reply.forwarded(), "{reply:?}");
    let line = backend.expect_line("environ ");
    let environ: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("environ ")).expect("a JSON line");
    assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{environ}");
    assert_eq!(environ["HTTP_X_HOOKGATE_SOURCE"], SOURCE, "{environ}");
    assert_eq!(
        environ["HTTP_WEBHOOK_ID"],
        event.header("webhook-id"),
        "{environ}"
    );
    for spoofed in [
        "HTTP_X_HOOKGATE_VERIFIED",
        "HTTP_X_REAL_IP",
        "HTTP_X_FORWARDED_PORT",
    ] {
        assert!(environ.get(spoofed).is_none(), "{spoofed} in {environ}");
    }
}
