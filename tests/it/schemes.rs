//! Every signature scheme through a real gateway and upstream: Stripe, GitHub, generic
//! HMAC and Standard Webhooks' Ed25519 variant; routes that re-sign for their backend;
//! secrets rotated out with `not_after`; `hookgate_verified_total`; and the binary's
//! `sign --scheme`, `verify` (explaining a mismatch) and `check` (provider typos).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use hookgate::sign::{SignInput, SignedRequest, build_with};
use hookgate::verify::standard_webhooks::{public_key, signing_key};
use hookgate::verify::{self, SchemeOptions, SecretText};
use http::HeaderName;

use crate::support::*;

const HOOKGATE: &str = env!("CARGO_BIN_EXE_hookgate");

const STRIPE_PATH: &str = "/webhooks/stripe";
const STRIPE_SECRET: &str = "whsec_c3RyaXBlLWludGVncmF0aW9uLXRlc3Q=";
const GITHUB_PATH: &str = "/webhooks/github";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const HMAC_PATH: &str = "/webhooks/billing";
const HMAC_SECRET: &str = "in-house-secret";
/// What the backends behind a `resign` route verify with.
const BACKEND_SECRET: &str = "whsec_YmFja2VuZC1zZWNyZXQtZm9yLWludGVncmF0aW9u";

/// How a test signs: a scheme's options and a secret.
struct Sender<'a> {
    options: Box<dyn SchemeOptions>,
    secret: &'a str,
}

impl<'a> Sender<'a> {
    /// `scheme` with none of its keys set.
    fn new(scheme: &'static str, secret: &'a str) -> Sender<'a> {
        let scheme = verify::scheme(scheme).expect("a known scheme");
        Sender {
            options: (scheme.options)(Default::default()).expect("the scheme's defaults"),
            secret,
        }
    }

    /// `event_type` signed now (or at `timestamp`), with `id` or a fresh one.
    fn event(&self, event_type: &str, id: Option<&str>, timestamp: Option<i64>) -> SignedRequest {
        build_with(
            &*self.options,
            &SignInput {
                secret: self.secret,
                event_type,
                data: Some(r#"{"id":"obj_1","amount":4200}"#),
                id,
                timestamp,
            },
            SystemTime::now(),
        )
        .expect("signable")
    }
}

fn stripe() -> Sender<'static> {
    Sender::new("stripe", STRIPE_SECRET)
}

fn stripe_source() -> String {
    format!("scheme = \"stripe\"\nsecrets = [{STRIPE_SECRET:?}]")
}

fn github() -> Sender<'static> {
    Sender::new("github", GITHUB_SECRET)
}

fn github_source() -> String {
    format!("scheme = \"github\"\nsecrets = [{GITHUB_SECRET:?}]")
}

fn hmac() -> Sender<'static> {
    Sender {
        options: Box::new(verify::hmac::Options {
            signature_header: Some(HeaderName::from_static("x-billing-signature")),
            encoding: Some(verify::hmac::Encoding::Base64),
            prefix: Some("sha256=".to_owned()),
            timestamp_header: Some(HeaderName::from_static("x-billing-timestamp")),
            id_header: Some(HeaderName::from_static("x-billing-delivery")),
            signed_content: Some("{timestamp}.{id}.{body}".to_owned()),
            ..verify::hmac::Options::default()
        }),
        secret: HMAC_SECRET,
    }
}

fn hmac_source() -> String {
    format!(
        "scheme = \"hmac\"\nsecrets = [{HMAC_SECRET:?}]\nsignature_header = \"X-Billing-Signature\"\n\
         encoding = \"base64\"\nprefix = \"sha256=\"\ntimestamp_header = \"X-Billing-Timestamp\"\n\
         tolerance = \"2m\"\nid_header = \"X-Billing-Delivery\"\nsigned_content = \"{{timestamp}}.{{id}}.{{body}}\""
    )
}

/// The default `openai` source needs a route; these tests send elsewhere.
fn base(upstream: &Upstream) -> Config {
    config().route("*", upstream)
}

#[tokio::test]
async fn a_stripe_event_is_forwarded_with_its_signature_and_its_retry_is_a_duplicate_by_event_id() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source("stripe", STRIPE_PATH, &stripe_source())
            .route("invoice.*", &upstream),
    )
    .await;
    let event = stripe().event("invoice.paid", Some("evt_it_1"), None);

    let reply = gw.post(STRIPE_PATH, &event).await;
    // Stripe signs each retry anew; the event id stays, and it is the dedupe key.
    let retry = gw
        .post(
            STRIPE_PATH,
            &stripe().event("invoice.paid", Some("evt_it_1"), None),
        )
        .await;

    assert!(reply.forwarded(), "{reply:?}");
    assert_eq!(retry.json()["duplicate"], true, "{retry:?}");
    let received = upstream.only();
    assert_eq!(
        received.header("stripe-signature"),
        event.header("stripe-signature")
    );
    assert_eq!(received.header("x-hookgate-event-type"), "invoice.paid");
    assert_eq!(received.body, event.body.as_bytes());
}

#[tokio::test]
async fn stripe_deliveries_that_are_tampered_stale_malformed_or_signed_standard_webhooks_style_are_refused()
 {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source("stripe", STRIPE_PATH, &stripe_source())
            .route("*", &upstream),
    )
    .await;
    let good = stripe().event("invoice.paid", None, None);
    let tampered = good.clone().with_body(&good.body.replace("4200", "1"));
    let stale = stripe().event("invoice.paid", None, Some(now_unix() - 3600));
    // The classic mix-up: a library that base64-decodes the whsec_ secret.
    let decoded = hookgate::verify::standard_webhooks::key_from_secret(STRIPE_SECRET).unwrap();
    let decoded_text = String::from_utf8(decoded).unwrap();
    let swh_style = Sender::new("stripe", &decoded_text).event("invoice.paid", None, None);
    let malformed = good
        .clone()
        .with_header("stripe-signature", &format!("t={}", now_unix()));

    for (delivery, reason) in [
        (&tampered, "invalid_signature"),
        (&swh_style, "invalid_signature"),
        (&stale, "timestamp_too_old"),
        (&malformed, "malformed_signature"),
    ] {
        let reply = gw.post(STRIPE_PATH, delivery).await;
        assert_eq!(reply.status(), 400, "{reason}: {reply:?}");
        assert_eq!(reply.error(), reason);
    }
    let missing = gw
        .post(STRIPE_PATH, &good.without_header("stripe-signature"))
        .await;
    assert_eq!(missing.error(), "missing_header");
    assert_eq!(missing.json()["header"], "stripe-signature");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_sender_that_copied_stripes_format_under_its_own_header_is_verified() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source(
                "copycat",
                "/webhooks/copycat",
                &format!(
                    "{}\nsignature_header = \"OpenAI-Signature\"",
                    stripe_source()
                ),
            )
            .route("*", &upstream),
    )
    .await;
    let mut sender = stripe();
    sender.options = Box::new(verify::stripe::Options {
        signature_header: Some(HeaderName::from_static("openai-signature")),
        ..verify::stripe::Options::default()
    });

    let reply = gw
        .post("/webhooks/copycat", &sender.event("thing.done", None, None))
        .await;
    let under_stripes_name = gw
        .post(
            "/webhooks/copycat",
            &stripe().event("thing.done", None, None),
        )
        .await;

    assert!(reply.forwarded(), "{reply:?}");
    assert_eq!(under_stripes_name.json()["header"], "openai-signature");
}

#[tokio::test]
async fn a_github_delivery_is_routed_by_its_event_header_and_a_redelivery_is_a_duplicate() {
    let pushes = Upstream::start().await;
    let pulls = Upstream::start().await;
    let gw = Gateway::start(
        base(&pushes)
            .scheme_source("github", GITHUB_PATH, &github_source())
            .named_route("pushes", "push", &pushes)
            .named_route("pulls", "pull_request", &pulls),
    )
    .await;
    let push = github().event("push", Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"), None);

    assert!(gw.post(GITHUB_PATH, &push).await.forwarded());
    assert!(
        gw.post(GITHUB_PATH, &github().event("pull_request", None, None))
            .await
            .forwarded()
    );
    let redelivery = gw.post(GITHUB_PATH, &push).await;

    assert_eq!(redelivery.json()["duplicate"], true);
    assert_eq!(pushes.only().header("x-github-event"), "push");
    assert_eq!(pulls.only().header("x-hookgate-event-type"), "pull_request");
}

#[tokio::test]
async fn a_github_delivery_without_its_event_or_delivery_header_is_answered_400_naming_it() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source("github", GITHUB_PATH, &github_source())
            .route("*", &upstream),
    )
    .await;

    for header in ["x-github-event", "x-github-delivery"] {
        let delivery = github().event("push", None, None).without_header(header);
        let reply = gw.post(GITHUB_PATH, &delivery).await;

        assert_eq!(reply.status(), 400, "{header}: {reply:?}");
        assert_eq!(reply.error(), "missing_header");
        assert_eq!(reply.json()["header"], header);
    }
    let tampered = github().event("push", None, None);
    let tampered = tampered.clone().with_body(&tampered.body.replace('1', "2"));
    assert_eq!(
        gw.post(GITHUB_PATH, &tampered).await.error(),
        "invalid_signature"
    );
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn an_in_house_hmac_delivery_is_verified_with_its_template_and_a_stale_one_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source("billing", HMAC_PATH, &hmac_source())
            .route("order.*", &upstream),
    )
    .await;
    let order = hmac().event("order.paid", Some("dlv_1"), None);

    let reply = gw.post(HMAC_PATH, &order).await;
    let retry = gw.post(HMAC_PATH, &order).await;
    let stale = gw
        .post(
            HMAC_PATH,
            &hmac().event("order.paid", None, Some(now_unix() - 121)),
        )
        .await;
    let other_id = gw
        .post(
            HMAC_PATH,
            &order.clone().with_header("x-billing-delivery", "dlv_2"),
        )
        .await;

    assert!(reply.forwarded(), "{reply:?}");
    assert_eq!(retry.json()["duplicate"], true);
    assert_eq!(stale.error(), "timestamp_too_old");
    assert_eq!(other_id.error(), "invalid_signature");
    assert_eq!(upstream.only().header("x-billing-delivery"), "dlv_1");
}

#[tokio::test]
async fn a_standard_webhooks_v1a_delivery_is_verified_with_the_senders_whpk_public_key() {
    let upstream = Upstream::start().await;
    let private = "whsk_aG9va2dhdGUtZWQyNTUxOS1pbnRlZ3JhdGlvbi1rZXk=";
    let public = public_key(&signing_key(private).unwrap());
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source(
                "asym",
                "/webhooks/asym",
                &format!("scheme = \"standard-webhooks\"\nsecrets = [{public:?}]"),
            )
            .route("*", &upstream),
    )
    .await;
    let delivery = Sender::new("standard-webhooks", private).event("user.created", None, None);
    assert!(delivery.header("webhook-signature").starts_with("v1a,"));

    let reply = gw.post("/webhooks/asym", &delivery).await;
    let tampered = gw
        .post(
            "/webhooks/asym",
            &delivery
                .clone()
                .with_body(&delivery.body.replace("4200", "1")),
        )
        .await;
    // An HMAC signature cannot pass for an Ed25519 one.
    let hmac_signed = gw
        .post("/webhooks/asym", &signed_event("user.created"))
        .await;

    assert!(reply.forwarded(), "{reply:?}");
    assert_eq!(tampered.error(), "invalid_signature");
    assert_eq!(hmac_signed.error(), "invalid_signature");
}

/// What a backend does with a re-signed delivery: Standard Webhooks with its own secret.
fn backend_verifies(received: &Received) -> Result<(), String> {
    let secrets = [SecretText::new(BACKEND_SECRET)];
    let built = verify::standard_webhooks::Options::default()
        .build(&secrets)
        .map_err(|e| e.to_string())?;
    built
        .verifier
        .verify(&received.headers, &received.body, SystemTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A gateway with a GitHub source whose every event is re-signed for `upstream`.
async fn resigned_github(upstream: &Upstream) -> Gateway {
    Gateway::start(
        base(upstream)
            .scheme_source("github", GITHUB_PATH, &github_source())
            .resigned_route("*", upstream, BACKEND_SECRET),
    )
    .await
}

#[tokio::test]
async fn a_resigned_route_forwards_hookgates_own_standard_webhooks_signature_the_backend_can_verify()
 {
    let upstream = Upstream::start().await;
    let gw = resigned_github(&upstream).await;
    let push = github().event("push", Some("delivery-guid-1"), None);

    assert!(gw.post(GITHUB_PATH, &push).await.forwarded());

    let received = upstream.only();
    assert_eq!(backend_verifies(&received), Ok(()));
    assert_eq!(received.header("x-hookgate-verified"), "github");
    // GitHub signs the body only, not X-GitHub-Delivery: the id is the claim key, the
    // delivery id with the hash of the event (the bare id let a replayed body sent first
    // under a future delivery's id make a deduplicating backend drop the genuine one).
    let id = received.header("webhook-id");
    let hash = id
        .strip_prefix("delivery-guid-1:")
        .expect("the delivery id first");
    assert!(
        hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let age = now_unix() - received.header("webhook-timestamp").parse::<i64>().unwrap();
    assert!((0..=5).contains(&age), "a fresh timestamp, not {age}s old");
    // The sender's own signature still travels, for backends that check it.
    assert_eq!(
        received.header("x-hub-signature-256"),
        push.header("x-hub-signature-256")
    );
}

/// Two signed GitHub requests under one delivery id (a body captured earlier, replayed
/// under the id of a delivery yet to come) reach a re-signed backend under two
/// `webhook-id`s, so a backend deduplicating on it keeps the genuine one; a redelivery
/// of either stays a duplicate.
#[tokio::test]
async fn a_resigned_github_route_gives_each_signed_event_under_one_id_its_own_webhook_id() {
    let upstream = Upstream::start().await;
    let gw = resigned_github(&upstream).await;
    let replayed = github().event("ping", Some("delivery-guid-7"), None);
    let genuine = github().event("push", Some("delivery-guid-7"), None);

    assert!(gw.post(GITHUB_PATH, &replayed).await.forwarded());
    assert!(gw.post(GITHUB_PATH, &genuine).await.forwarded());
    assert_eq!(
        gw.post(GITHUB_PATH, &genuine).await.json()["duplicate"],
        true
    );

    let ids: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "{ids:?}");
}

#[tokio::test]
async fn a_resigned_standard_webhooks_source_replaces_the_senders_signature_and_drops_a_forged_verified_header()
 {
    let resigned = Upstream::start().await;
    let plain = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .resigned_route("response.*", &resigned, BACKEND_SECRET)
            .route("*", &plain),
    )
    .await;
    let forged = |event: &str| {
        signed_event(event).with_header("x-hookgate-verified", "forged-by-the-client")
    };

    assert!(
        gw.post(PATH, &forged("response.completed"))
            .await
            .forwarded()
    );
    assert!(gw.post(PATH, &forged("batch.completed")).await.forwarded());

    let received = resigned.only();
    assert_eq!(backend_verifies(&received), Ok(()));
    assert_eq!(received.header("x-hookgate-verified"), "standard-webhooks");
    assert!(plain.only().headers.get("x-hookgate-verified").is_none());
}

/// A gateway with a source at `/webhooks/rotating` verifying with `SECRET`, and with
/// `OTHER_SECRET` until `not_after`.
async fn rotating_gateway(upstream: &Upstream, not_after: &str) -> Gateway {
    Gateway::start(
        base(upstream)
            .scheme_source(
                "rotating",
                "/webhooks/rotating",
                &format!(
                    "scheme = \"standard-webhooks\"\nsecrets = [{SECRET:?}, \
                     {{ secret = {OTHER_SECRET:?}, not_after = {not_after:?} }}]"
                ),
            )
            .route("*", upstream),
    )
    .await
}

#[tokio::test]
async fn a_secret_past_its_not_after_is_ignored_while_the_current_one_verifies() {
    let upstream = Upstream::start().await;
    let gw = rotating_gateway(&upstream, "2001-01-01T00:00:00Z").await;

    let current = gw
        .post("/webhooks/rotating", &signed_event_with(SECRET, "a.b"))
        .await;
    let expired = gw
        .post(
            "/webhooks/rotating",
            &signed_event_with(OTHER_SECRET, "a.b"),
        )
        .await;

    assert!(current.forwarded(), "{current:?}");
    assert_eq!(expired.error(), "invalid_signature");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn a_secret_before_its_not_after_still_verifies() {
    let upstream = Upstream::start().await;
    let gw = rotating_gateway(&upstream, "2999-01-01T00:00:00Z").await;

    let old = gw
        .post(
            "/webhooks/rotating",
            &signed_event_with(OTHER_SECRET, "a.b"),
        )
        .await;

    assert!(old.forwarded(), "{old:?}");
}

#[tokio::test]
async fn hookgate_verified_total_counts_deliveries_by_the_position_of_the_matching_secret() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .secrets(&[SECRET, OTHER_SECRET])
            .route("*", &upstream),
    )
    .await;
    let series =
        |secret: &str| format!(r#"hookgate_verified_total{{secret="{secret}",source="{SOURCE}"}}"#);
    let before = gw.metrics().await;
    assert_eq!(before.value(&series("0")), Some(0.0), "pre-created");
    assert_eq!(before.value(&series("1")), Some(0.0), "pre-created");

    for secret in [OTHER_SECRET, OTHER_SECRET, SECRET] {
        assert!(
            gw.post(PATH, &signed_event_with(secret, "a.b"))
                .await
                .forwarded()
        );
    }
    // A failed verification counts nowhere.
    gw.post(PATH, &signed_body("{}").with_body("{\"x\":1}"))
        .await;

    let after = gw.metrics().await;
    assert_eq!(after.value(&series("0")), Some(1.0));
    assert_eq!(after.value(&series("1")), Some(2.0));
}

// ---------------------------------------------------------------------------------
// The binary: sign --scheme, verify, check
// ---------------------------------------------------------------------------------

fn hookgate(args: &[&str]) -> Command {
    let mut command = Command::new(HOOKGATE);
    command
        .args(args)
        .env_remove("HOOKGATE_CONFIG")
        .env_remove("HOOKGATE_SIGN_SECRET")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn hookgate_sign_scheme_produces_each_format_the_gateway_accepts() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        base(&upstream)
            .scheme_source("stripe", STRIPE_PATH, &stripe_source())
            .route("*", &upstream)
            .scheme_source("github", GITHUB_PATH, &github_source())
            .route("*", &upstream)
            .scheme_source("billing", HMAC_PATH, &hmac_source())
            .route("*", &upstream),
    )
    .await;
    let hmac_flags = [
        "--signature-header",
        "X-Billing-Signature",
        "--encoding",
        "base64",
        "--prefix",
        "sha256=",
        "--timestamp-header",
        "X-Billing-Timestamp",
        "--id-header",
        "X-Billing-Delivery",
        "--signed-content",
        "{timestamp}.{id}.{body}",
    ];
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        ("standard-webhooks", SECRET, PATH, vec![]),
        ("stripe", STRIPE_SECRET, STRIPE_PATH, vec![]),
        ("github", GITHUB_SECRET, GITHUB_PATH, vec![]),
        ("hmac", HMAC_SECRET, HMAC_PATH, hmac_flags.to_vec()),
    ];

    for (scheme, secret, path, flags) in cases {
        let url = gw.url(path);
        let mut args = vec![
            "sign",
            "--scheme",
            scheme,
            "--secret",
            secret,
            "--type",
            "thing.done",
            "--send",
            &url,
        ];
        args.extend(flags);
        let output = tokio::process::Command::from(hookgate(&args))
            .output()
            .await
            .expect("run hookgate sign");

        assert!(
            output.status.success(),
            "{scheme}: {}\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        assert!(text(&output.stdout).contains("HTTP 200 OK"), "{scheme}");
    }
    assert_eq!(upstream.received().len(), 4);
}

#[test]
fn hookgate_sign_refuses_an_option_the_scheme_does_not_read() {
    let output = hookgate(&[
        "sign",
        "--scheme",
        "github",
        "--secret",
        "s",
        "--type",
        "push",
        "--encoding",
        "hex",
    ])
    .output()
    .unwrap();

    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("--encoding does not apply to --scheme github"),
        "{}",
        text(&output.stderr)
    );
}

/// A config with a stripe source, and a directory for captures.
struct Workspace {
    file: ConfigFile,
    config: PathBuf,
}

fn workspace(extra: &str) -> Workspace {
    let scheme_keys = format!("{}\n{extra}", stripe_source());
    let file = ConfigFile::new(source_block(
        "stripe",
        STRIPE_PATH,
        &scheme_keys,
        &["invoice.*"],
        NOWHERE,
    ));
    Workspace {
        config: file.path(),
        file,
    }
}

impl Workspace {
    /// Writes `delivery` as a raw HTTP/1.1 request, `body` replacing its body.
    fn capture(&self, delivery: &SignedRequest, body: &str) -> PathBuf {
        let mut raw = format!("POST {STRIPE_PATH} HTTP/1.1\r\nHost: hooks.example.com\r\n");
        for (name, value) in &delivery.headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let path = self.file.dir().join("request.http");
        std::fs::write(&path, raw).unwrap();
        path
    }

    fn verify(&self, request: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "verify",
            "--config",
            self.config.to_str().unwrap(),
            "--request",
            request.to_str().unwrap(),
        ];
        args.extend(extra);
        hookgate(&args).output().expect("run hookgate verify")
    }
}

#[test]
fn hookgate_verify_accepts_a_good_capture_and_shows_what_the_gateway_would_do() {
    let ws = workspace("");
    let delivery = stripe().event("invoice.paid", Some("evt_cap_1"), None);
    let request = ws.capture(&delivery, &delivery.body);

    let output = ws.verify(&request, &[]);

    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    for expected in [
        "source: stripe (scheme stripe, POST /webhooks/stripe",
        "read stripe-signature: t=",
        "signed content {t}.{body}:",
        "secrets[0] (its text as the HMAC key): MATCHES",
        "verdict: VERIFIED with secrets[0]",
        "dedupe key (/id): evt_cap_1",
        "event type (/type): invoice.paid -> route 0 -> http://127.0.0.1:9/hooks",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    assert!(!stdout.contains(STRIPE_SECRET), "never the secret");
}

#[test]
fn hookgate_verify_explains_a_body_changed_after_signing() {
    let ws = workspace("");
    let delivery = stripe().event("invoice.paid", None, None);
    // A capture tool (or an editor) added a newline: the classic invisible change.
    let request = ws.capture(&delivery, &format!("{}\n", delivery.body));

    let output = ws.verify(&request, &[]);

    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("verdict: REFUSED: 400 {\"error\":\"invalid_signature\"}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("secrets[0] (its text as the HMAC key): no match"),
        "{stdout}"
    );
    assert!(
        stdout.contains("it verifies after removing the trailing newline"),
        "{stdout}"
    );
}

#[test]
fn hookgate_verify_tells_a_stale_capture_from_a_wrong_secret_and_judges_it_at_its_time() {
    let ws = workspace("");
    let sent = now_unix() - 2 * 3600;
    let delivery = stripe().event("invoice.paid", None, Some(sent));
    let request = ws.capture(&delivery, &delivery.body);

    let now = ws.verify(&request, &[]);
    let then = ws.verify(&request, &["--at", &sent.to_string()]);

    let stdout = text(&now.stdout);
    assert_eq!(now.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("timestamp_too_old"), "{stdout}");
    assert!(stdout.contains("OUTSIDE the tolerance of 5m"), "{stdout}");
    assert!(
        stdout.contains("the signature is right (secrets[0]); only the time is off by 2h"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("--at {sent}")), "{stdout}");
    assert!(then.status.success(), "{}", text(&then.stdout));
}

#[test]
fn hookgate_verify_names_a_secret_pasted_with_its_signature_prefix() {
    let ws = workspace("");
    let config = std::fs::read_to_string(&ws.config)
        .unwrap()
        .replace(STRIPE_SECRET, &format!("v1,{STRIPE_SECRET}"));
    std::fs::write(&ws.config, config).unwrap();
    let delivery = stripe().event("invoice.paid", None, None);
    let request = ws.capture(&delivery, &delivery.body);

    let output = ws.verify(&request, &[]);

    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("sources[0].secrets[0] starts with \"v1,\", as signatures do"),
        "{stdout}"
    );
}

#[test]
fn hookgate_verify_reads_headers_and_body_from_separate_files() {
    let ws = workspace("");
    let delivery = stripe().event("invoice.paid", None, None);
    let headers = ws.file.dir().join("headers.txt");
    let body = ws.file.dir().join("body.json");
    let lines: Vec<String> = delivery
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    std::fs::write(&headers, lines.join("\n")).unwrap();
    std::fs::write(&body, &delivery.body).unwrap();

    let output = hookgate(&[
        "verify",
        "--config",
        ws.config.to_str().unwrap(),
        "--source",
        "stripe",
        "--headers",
        headers.to_str().unwrap(),
        "--body",
        body.to_str().unwrap(),
    ])
    .output()
    .unwrap();

    assert!(output.status.success(), "{}", text(&output.stdout));
}

#[test]
fn hookgate_check_warns_about_route_patterns_that_match_no_openai_event_type() {
    let file = ConfigFile::new(source_block(
        SOURCE,
        PATH,
        &format!("scheme = \"standard-webhooks\"\nsecrets = [{SECRET:?}]\nprovider = \"openai\""),
        &["response.complete", "batch.*"],
        NOWHERE,
    ));
    let path = file.path();

    let output = hookgate(&["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();

    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {}: sources[0].routes[0].events[0] \"response.complete\" matches none of \
             OpenAI's published event types; did you mean \"response.completed\"?",
            path.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("batch.*"), "{stderr}");
}

#[test]
fn hookgate_check_refuses_a_scheme_key_the_scheme_does_not_read() {
    let ws = workspace("encoding = \"hex\"");

    let output = hookgate(&["check", "--config", ws.config.to_str().unwrap()])
        .output()
        .unwrap();

    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: sources[0].encoding does not apply to scheme \"stripe\"",
            ws.config.display()
        )),
        "{stderr}"
    );
}
