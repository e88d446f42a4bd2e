//! The binary's command line: `check` and `serve` on bad configs (exit code, and a
//! message that names the file and the key), `--version`, and `sign --send`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::*;

const HOOKGATE: &str = env!("CARGO_BIN_EXE_hookgate");

/// A valid config with two sources; each bad case changes one thing in it.
fn good() -> String {
    let standard_webhooks =
        |secret: &str| format!("scheme = \"standard-webhooks\"\nsecrets = [{secret:?}]");
    format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [limits]\nupstream_timeout = \"10s\"\n\n{}\n{}",
        source_block(
            SOURCE,
            PATH,
            &standard_webhooks(SECRET),
            &["*"],
            "http://127.0.0.1:9001/hooks"
        ),
        source_block(
            "billing",
            "/webhooks/billing",
            &standard_webhooks(OTHER_SECRET),
            &["invoice.*"],
            "http://127.0.0.1:9002/hooks"
        ),
    )
}

fn hookgate(args: &[&str]) -> Command {
    let mut command = Command::new(HOOKGATE);
    command
        .args(args)
        .env_remove("HOOKGATE_CONFIG")
        .env_remove("HOOKGATE_IT_SURELY_UNSET")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

fn check(path: &Path) -> Output {
    hookgate(&["check", "--config", path.to_str().unwrap()])
        .output()
        .expect("run hookgate check")
}

/// Runs `hookgate check` on `text`; asserts it fails and that stderr names the file and
/// every one of `mentions`.
fn assert_rejected(text: &str, mentions: &[&str]) {
    let file = ConfigFile::new(text);
    let output = check(&file.path());
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        !output.status.success(),
        "accepted:\n{text}\nstdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(file.path().to_str().unwrap()),
        "the file is not named: {stderr}"
    );
    for mention in mentions {
        assert!(
            stderr.contains(mention),
            "{mention:?} is not named: {stderr}"
        );
    }
}

/// `good()` with the last `from` replaced by `to`: the second source's, where both have
/// one.
fn good_with(from: &str, to: &str) -> String {
    let good = good();
    assert!(good.contains(from), "{from:?} is not in the good config");
    let at = good.rfind(from).unwrap();
    format!("{}{to}{}", &good[..at], &good[at + from.len()..])
}

#[test]
fn check_accepts_a_good_config_and_prints_its_summary() {
    let file = ConfigFile::new(good());

    let output = check(&file.path());

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(file.path().to_str().unwrap()), "{stdout}");
    assert!(stdout.contains("openai POST /webhooks/openai"), "{stdout}");
    assert!(
        stdout.contains("billing POST /webhooks/billing"),
        "{stdout}"
    );
    assert!(stdout.contains("http://127.0.0.1:9002/hooks"), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    assert!(
        !stdout.contains("whsec_"),
        "the summary must not print secrets: {stdout}"
    );
}

#[test]
fn check_rejects_an_unknown_key_naming_it_and_its_line() {
    let text = good_with("[limits]\n", "[limits]\nupstream_timeot = \"5s\"\n");
    assert_rejected(&text, &["unknown field `upstream_timeot`", "line 9"]);
}

#[test]
fn check_rejects_an_invalid_duration_naming_the_key() {
    let text = good_with(
        "upstream_timeout = \"10s\"",
        "upstream_timeout = \"10 parsecs\"",
    );
    assert_rejected(&text, &["upstream_timeout", "line 9"]);
}

#[test]
fn check_rejects_a_secret_whose_environment_variable_is_unset_naming_the_variable() {
    let text = good_with(
        "\"whsec_c29tZWJvZHktZWxzZXMtc2VjcmV0LWZvci10ZXN0cyE=\"",
        "\"${HOOKGATE_IT_SURELY_UNSET}\"",
    );
    assert_rejected(
        &text,
        &[
            "environment variable HOOKGATE_IT_SURELY_UNSET is not set",
            "secrets",
        ],
    );
}

#[test]
fn check_rejects_a_source_without_secrets_naming_the_key() {
    let text = good_with(
        "secrets = [\"whsec_c29tZWJvZHktZWxzZXMtc2VjcmV0LWZvci10ZXN0cyE=\"]\n",
        "",
    );
    assert_rejected(&text, &["sources[1].secrets"]);
}

#[test]
fn check_rejects_an_upstream_that_is_not_http_naming_the_key() {
    let text = good_with("http://127.0.0.1:9002/hooks", "ftp://127.0.0.1/hooks");
    assert_rejected(&text, &["sources[1].routes[0].upstream"]);
}

#[test]
fn check_rejects_two_sources_on_one_path_naming_the_second() {
    let text = good_with(
        "path = \"/webhooks/billing\"",
        "path = \"/webhooks/openai\"",
    );
    assert_rejected(
        &text,
        &["sources[1].path \"/webhooks/openai\" is already used by sources[0]"],
    );
}

#[test]
fn check_rejects_a_source_without_routes_naming_it() {
    let good = good();
    let at = good.rfind("[[sources.routes]]").unwrap();
    assert_rejected(
        &good[..at],
        &["sources[1] (\"billing\") has no [[sources.routes]]"],
    );
}

#[test]
fn check_rejects_an_unknown_scheme_naming_the_key_and_the_known_schemes() {
    let text = good_with(
        "scheme = \"standard-webhooks\"",
        "scheme = \"carrier-pigeon\"",
    );
    assert_rejected(
        &text,
        &["sources[1].scheme \"carrier-pigeon\"", "standard-webhooks"],
    );
}

#[test]
fn check_rejects_a_config_file_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");

    let output = check(&missing);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn serve_exits_non_zero_on_a_bad_config_without_listening() {
    let text = good_with(
        "scheme = \"standard-webhooks\"",
        "scheme = \"carrier-pigeon\"",
    );
    let file = ConfigFile::new(&text);
    let child = tokio::process::Command::from(hookgate(&[
        "serve",
        "--config",
        file.path().to_str().unwrap(),
    ]))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("start hookgate serve");

    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("serve exits instead of serving")
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("sources[1].scheme"), "{stderr}");
    assert!(stderr.contains(file.path().to_str().unwrap()), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn version_prints_the_package_version() {
    let output = hookgate(&["--version"]).output().unwrap();

    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!("hookgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn sign_send_insecure_delivers_to_a_tls_gateway_and_prints_http_200() {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().tls(&cert).route("*", &upstream)).await;
    let url = format!("https://127.0.0.1:{}{PATH}", gw.addr().port());

    let output = tokio::process::Command::from(hookgate(&[
        "sign",
        "--secret",
        SECRET,
        "--type",
        "response.completed",
        "--id",
        "msg_from_the_cli",
        "--send",
        &url,
        "--insecure",
    ]))
    .kill_on_drop(true)
    .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("HTTP 200"), "{stdout}");
    assert!(stdout.contains("webhook-id: msg_from_the_cli"), "{stdout}");
    let received = upstream.only();
    assert_eq!(received.header("webhook-id"), "msg_from_the_cli");
    assert_eq!(
        received.header("x-hookgate-event-type"),
        "response.completed"
    );
}

#[tokio::test]
async fn sign_send_to_a_gateway_that_rejects_the_delivery_exits_non_zero() {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().tls(&cert).route("*", &upstream)).await;
    let url = format!("https://127.0.0.1:{}{PATH}", gw.addr().port());

    let output = tokio::process::Command::from(hookgate(&[
        "sign",
        "--secret",
        OTHER_SECRET,
        "--type",
        "response.completed",
        "--send",
        &url,
        "--insecure",
    ]))
    .kill_on_drop(true)
    .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("HTTP 400"), "{stdout}");
    assert!(upstream.received().is_empty());
}

/// `hookgate check ... | grep -q ok` closes the pipe once it read enough: `check` of a
/// valid file panicked writing the rest and exited 101, failing deploy scripts run with
/// `pipefail` now and then.
#[test]
fn check_exits_0_when_its_reader_closes_the_pipe_early() {
    let file = ConfigFile::new(config().route("*", NOWHERE));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "--config", &file.path().display().to_string()])
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
