//! The web console (`/ui/`), end to end: a real gateway in queue mode on Redis, real
//! upstreams, and Debian's Chromium driving the pages (`support::Browser`; skipped with
//! an install hint unless `HOOKGATE_REQUIRE_BROWSER=1`). The HTTP-level guards (login,
//! headers, loopback without a token) are checked without a browser too.
//!
//! `HOOKGATE_WRITE_SCREENSHOTS=1 cargo test --locked --test it console::the_readme_screenshots` rewrites
//! the README's pictures in `docs/`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::support::*;

const TOKEN: &str = "console-admin-token-0123456789";
/// Set by any script the pages run that came from a delivery (none ever should).
const PWNED: &str = "return window.__pwned === undefined ? null : String(window.__pwned)";

/// A queue-mode gateway on its own Redis: `invoice.*` to `billing`, the rest to
/// `responses`; the admin listener on loopback with `TOKEN`.
struct Stack {
    gw: Gateway,
    deliveries: Deliveries,
    _redis: RedisServer,
}

impl Stack {
    async fn start(
        billing: &Upstream,
        responses: &Upstream,
        extra: fn(Config) -> Config,
    ) -> Option<Stack> {
        let redis = RedisServer::start_or_skip().await?;
        let config = config()
            .redis(&redis)
            .queued()
            .admin_token(TOKEN)
            .named_route("billing", "invoice.*", billing)
            .named_route("responses", "*", responses);
        let gw = Gateway::start(extra(config)).await;
        let deliveries = Deliveries::of(&gw).with_token(TOKEN);
        Some(Stack {
            gw,
            deliveries,
            _redis: redis,
        })
    }

    fn ui(&self, path: &str) -> String {
        self.gw.admin_url(&format!("/ui{path}"))
    }

    /// Posts `event` and waits until its delivery reaches `state`; returns its id.
    async fn deliver(&self, event: &hookgate::sign::SignedRequest, state: &str) -> String {
        let id = enqueue(&self.gw.client(), event).await;
        self.deliveries.wait_for_state(&id, state).await;
        id
    }
}

/// Both a browser and the stack, or neither (skipped).
async fn browser() -> Option<Browser> {
    Browser::start_or_skip(1280, 1000).await
}

async fn log_in(browser: &Browser, stack: &Stack) {
    browser.goto(&stack.ui("/")).await;
    assert_eq!(browser.path().await, "/ui/login?next=%2Fui%2F");
    browser.type_into("#token", TOKEN).await;
    browser.click(".login button[type=submit]").await;
    browser.wait_for_text("h1", "Overview").await;
}

/// The state badge of the delivery page, after reloading until it reads `state`.
async fn wait_for_badge(browser: &Browser, state: &str) {
    eventually(format!("the page showing {state}"), async || {
        browser.client().refresh().await.expect("reload");
        let shown = browser.text("h1 .state").await;
        if shown == state { Ok(()) } else { Err(shown) }
    })
    .await;
}

#[tokio::test]
async fn an_operator_finds_a_dead_letter_replays_it_and_sees_it_processed() {
    let billing = Upstream::with(Behaviour::sequence([Answer::status(400), Answer::ok()])).await;
    let responses = Upstream::start().await;
    let Some(browser) = browser().await else {
        return;
    };
    let Some(stack) = Stack::start(&billing, &responses, |c| c).await else {
        return;
    };
    let processed = stack
        .deliver(&signed_event("response.completed"), "processed")
        .await;
    let dead = stack
        .deliver(&signed_event("invoice.payment_failed"), "failed_final")
        .await;

    log_in(&browser, &stack).await;
    browser.click("nav a[href='/ui/deliveries']").await;
    browser.wait_for_text("h1", "Deliveries").await;
    let ids: Vec<String> = rows(&browser).await;
    assert_eq!(ids, [dead.clone(), processed.clone()], "newest first");
    let states = texts(&browser, "table.deliveries td .state").await;
    assert_eq!(states, ["failed_final", "processed"]);

    browser.select("#f-status", "failed_final").await;
    browser.click("form.filters button[type=submit]").await;
    browser.find("a.button.danger").await;
    assert_eq!(rows(&browser).await, std::slice::from_ref(&dead));
    assert!(browser.path().await.contains("status=failed_final"));
    browser
        .click(&format!("a[href='/ui/deliveries/{dead}']"))
        .await;

    assert_eq!(browser.text("h1 .state").await, "failed_final");
    assert!(
        browser
            .text(".facts")
            .await
            .contains("invoice.payment_failed")
    );
    let attempt = texts(&browser, "section[aria-labelledby=attempts-h] tbody tr").await;
    assert_eq!(attempt.len(), 1, "{attempt:?}");
    assert!(attempt[0].contains("400"), "{attempt:?}");
    assert!(attempt[0].contains("failed_final"), "{attempt:?}");
    let timeline = browser.text(".timeline").await;
    assert!(timeline.contains("received and verified"), "{timeline}");
    assert!(timeline.contains("attempt 1: failed_final"), "{timeline}");

    browser.click("form.replay button").await;
    assert!(browser.text(".notice").await.starts_with("Replayed"));
    // The billing upstream answers 200 from its second request on: it was fixed.
    wait_for_badge(&browser, "processed").await;
    let attempts = texts(&browser, "section[aria-labelledby=attempts-h] tbody tr").await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts[1].contains("200") && attempts[1].contains("processed"));
    assert!(
        browser
            .text(".timeline")
            .await
            .contains("replayed: queued again")
    );
    assert_eq!(billing.received().len(), 2);
    assert_eq!(browser.run(PWNED).await, serde_json::Value::Null);
    browser.close().await;
}

#[tokio::test]
async fn dead_letters_matching_a_filter_are_replayed_after_a_confirmation_that_counts_them() {
    let billing = Upstream::with(Behaviour::sequence([
        Answer::status(400),
        Answer::status(400),
        Answer::status(400),
        Answer::ok(),
    ]))
    .await;
    let responses = Upstream::start().await;
    let Some(browser) = browser().await else {
        return;
    };
    let Some(stack) = Stack::start(&billing, &responses, |c| c).await else {
        return;
    };
    let mut paid = Vec::new();
    for _ in 0..2 {
        paid.push(
            stack
                .deliver(&signed_event("invoice.paid"), "failed_final")
                .await,
        );
    }
    let other = stack
        .deliver(&signed_event("invoice.voided"), "failed_final")
        .await;

    log_in(&browser, &stack).await;
    browser
        .goto(&stack.ui("/deliveries?status=failed_final&event_type=invoice.paid"))
        .await;
    browser.click("a.button.danger").await;
    assert_eq!(browser.text("#replay-count").await, "2");
    assert!(
        browser
            .text(".confirm")
            .await
            .contains("Replay 2 dead letters")
    );
    browser.click("main form button.danger").await;

    assert!(
        browser
            .text(".message p")
            .await
            .contains("Replayed 2 dead letters"),
        "{}",
        browser.text("main").await
    );
    for id in &paid {
        stack.deliveries.wait_for_state(id, "processed").await;
    }
    assert_eq!(
        stack.deliveries.record(&other).await["state"],
        "failed_final",
        "outside the filter"
    );
    browser.close().await;
}

#[tokio::test]
async fn events_carrying_html_and_script_show_as_text_and_nothing_runs() {
    let hostile_answer =
        "<img src=x onerror=\"window.__pwned='answer'\"><script>window.__pwned='answer2'</script>";
    let billing = Upstream::start().await;
    let responses = Upstream::with(Answer::status(422).body(hostile_answer)).await;
    let Some(browser) = browser().await else {
        return;
    };
    let Some(stack) = Stack::start(&billing, &responses, |c| c).await else {
        return;
    };
    let event_type = "<script>window.__pwned='type'</script>";
    // No '.': a Standard Webhooks id holding one is refused (`self` is `window`).
    let webhook_id = "<img/src=x/onerror=self['__pwned']='id'>";
    let body = format!(
        r#"{{"type":"{}","data":{{"note":"</pre><script>window.__pwned='body'</script><b onmouseover=alert(1)>hi</b>"}}}}"#,
        event_type.replace('"', "\\\"")
    );
    let event = signed_raw(SECRET, webhook_id, now_unix(), &body);
    let id = stack.deliver(&event, "failed_final").await;

    log_in(&browser, &stack).await;
    browser.goto(&stack.ui("/deliveries")).await;
    assert_eq!(browser.text("table.deliveries td.event").await, event_type);
    assert_eq!(
        texts(&browser, "table.deliveries td.webhook").await,
        [webhook_id.to_owned()]
    );
    assert!(
        browser
            .text("table.deliveries td.last")
            .await
            .contains(hostile_answer)
    );
    assert_eq!(browser.run(PWNED).await, serde_json::Value::Null);

    browser
        .click(&format!("a[href='/ui/deliveries/{id}']"))
        .await;
    let facts = browser.text(".facts").await;
    assert!(facts.contains(event_type), "{facts}");
    assert!(facts.contains(webhook_id), "{facts}");
    assert!(facts.contains(hostile_answer), "{facts}");
    let attempts = browser
        .text("section[aria-labelledby=attempts-h] tbody")
        .await;
    assert!(
        attempts.contains(hostile_answer),
        "the start of the answer: {attempts}"
    );
    assert!(
        browser.all("pre.body").await.is_empty(),
        "no body before the click"
    );
    browser.click("#show-body").await;
    let shown = browser.text("pre.body").await;
    assert!(
        shown.contains("</pre><script>window.__pwned='body'</script>"),
        "{shown}"
    );
    assert!(
        shown.starts_with("{\n  \"") && shown.contains("\n  \"data\": "),
        "laid-out JSON: {shown}"
    );
    assert!(browser.text("table.headers").await.contains(webhook_id));
    assert_eq!(browser.run(PWNED).await, serde_json::Value::Null);
    // Nothing was added to the page: the only scripts and images are the console's.
    let foreign = browser
        .run("return document.querySelectorAll('main script, main img, main b').length")
        .await;
    assert_eq!(foreign, 0);

    // The body's page is never cached and cannot be framed, as every console page.
    let session = browser
        .cookie("hookgate_session")
        .await
        .expect("a session cookie");
    let reply = stack
        .gw
        .client()
        .send(
            Request::get(stack.ui(&format!("/deliveries/{id}?body=1")))
                .header("cookie", format!("hookgate_session={session}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    let csp = reply.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    browser.close().await;
}

#[tokio::test]
async fn logging_out_and_an_expired_session_lead_back_to_the_login_form() {
    let upstream = Upstream::start().await;
    let Some(browser) = browser().await else {
        return;
    };
    let Some(stack) = Stack::start(&upstream, &upstream, |c| {
        c.set("admin", "session_timeout", "\"1s\"")
    })
    .await
    else {
        return;
    };

    browser.goto(&stack.ui("/login")).await;
    browser.type_into("#token", "not-the-token").await;
    browser.click(".login button[type=submit]").await;
    assert_eq!(
        browser.text(".login .error").await,
        "That is not the admin token."
    );
    assert_eq!(browser.cookie("hookgate_session").await, None);

    log_in(&browser, &stack).await;
    let cookie = browser.cookie("hookgate_session").await.expect("a session");
    browser.click(".logout button").await;
    browser.find("#token").await;
    assert!(browser.path().await.starts_with("/ui/login"));
    assert_eq!(browser.cookie("hookgate_session").await, None);
    // The old cookie is no longer a session, even if someone kept it.
    let reply = stack
        .gw
        .client()
        .send(
            Request::get(stack.ui("/deliveries"))
                .header("cookie", format!("hookgate_session={cookie}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status(), 303);
    browser.goto(&stack.ui("/deliveries")).await;
    assert_eq!(browser.path().await, "/ui/login?next=%2Fui%2Fdeliveries");

    browser.type_into("#token", TOKEN).await;
    browser.click(".login button[type=submit]").await;
    // Back where it was going.
    browser.wait_for_text("h1", "Deliveries").await;
    // Idle past admin.session_timeout (1s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    browser.goto(&stack.ui("/deliveries?status=queued")).await;
    browser.find("#token").await;
    assert_eq!(
        browser.path().await,
        "/ui/login?next=%2Fui%2Fdeliveries%3Fstatus%3Dqueued"
    );
    browser.close().await;
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_is_refused() {
    let billing = Upstream::with(Answer::status(400)).await;
    let Some(browser) = browser().await else {
        return;
    };
    let Some(stack) = Stack::start(&billing, &billing, |c| c).await else {
        return;
    };
    let dead = stack
        .deliver(&signed_event("invoice.paid"), "failed_final")
        .await;
    log_in(&browser, &stack).await;
    browser
        .goto(&stack.ui(&format!("/deliveries/{dead}")))
        .await;

    for tamper in [
        "f.querySelector('input[name=csrf]').remove()",
        "f.querySelector('input[name=csrf]').value = 'a'.repeat(64)",
    ] {
        browser
            .goto(&stack.ui(&format!("/deliveries/{dead}")))
            .await;
        browser
            .run(&format!(
                "const f = document.querySelector('form.replay'); {tamper}; f.submit(); return null"
            ))
            .await;
        browser.wait_for_text("main h1", "Refused").await;
        assert!(browser.text("main").await.contains("CSRF token"));
    }
    // A page elsewhere posting the same form, even with the right token, sends no
    // session cookie (SameSite=Strict) and says where it comes from.
    browser
        .goto(&stack.ui(&format!("/deliveries/{dead}")))
        .await;
    let csrf = browser
        .find("form.replay input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let action = stack.ui(&format!("/deliveries/{dead}/replay"));
    let page = format!(
        "<form method=post action='{action}'><input name=csrf value='{csrf}'></form>\
         <script>document.forms[0].submit()</script>"
    );
    browser
        .goto(&format!("data:text/html,{}", urlencode(&page)))
        .await;
    browser.wait_for_text("main h1", "Refused").await;

    assert_eq!(
        stack.deliveries.record(&dead).await["state"],
        "failed_final"
    );
    assert_eq!(billing.received().len(), 1, "never replayed");
    browser.close().await;
}

/// The README's pictures: the overview, the list and a delivery, as a visitor sees them.
#[tokio::test]
async fn the_readme_screenshots_show_the_overview_the_list_and_a_delivery() {
    let billing =
        Upstream::with(Answer::status(400).body(r#"{"error":"unknown customer cus_42"}"#)).await;
    let responses = Upstream::start().await;
    let Some(browser) = Browser::start_or_skip(1280, 900).await else {
        return;
    };
    let Some(stack) = Stack::start(&billing, &responses, |c| c).await else {
        return;
    };
    for event in [
        "response.completed",
        "batch.completed",
        "response.completed",
    ] {
        stack.deliver(&signed_event(event), "processed").await;
    }
    let dead = stack
        .deliver(&signed_event("invoice.payment_failed"), "failed_final")
        .await;
    stack
        .deliver(&signed_event("response.failed"), "processed")
        .await;

    log_in(&browser, &stack).await;
    browser.resize(1280, 1150).await;
    let overview = browser.screenshot().await;
    browser.goto(&stack.ui("/deliveries")).await;
    browser.find("table.deliveries").await;
    browser.resize(1280, 820).await;
    let list = browser.screenshot().await;
    browser
        .goto(&stack.ui(&format!("/deliveries/{dead}?body=1")))
        .await;
    browser.find("pre.body").await;
    browser.resize(1280, 1900).await;
    let delivery = browser.screenshot().await;
    browser.close().await;

    for (name, png) in [
        ("console-overview.png", overview),
        ("console-deliveries.png", list),
        ("console-delivery.png", delivery),
    ] {
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        if std::env::var("HOOKGATE_WRITE_SCREENSHOTS").as_deref() == Ok("1") {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs")
                .join(name);
            std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

// ---------------------------------------------------------------------------------
// Without a browser
// ---------------------------------------------------------------------------------

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(gw.admin_url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    gw.send(request.body(Full::new(Bytes::new())).unwrap())
        .await
}

#[tokio::test]
async fn with_a_token_every_page_asks_for_a_login_and_the_api_keeps_its_bearer_token() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().queued().admin_token(TOKEN).route("*", &upstream)).await;

    for path in [
        "/ui/",
        "/ui/deliveries?status=failed_final",
        "/ui/deliveries/dlv_x",
    ] {
        let reply = get(&gw, path, &[]).await;
        assert_eq!(reply.status(), 303, "{path}");
        assert!(
            reply
                .header("location")
                .unwrap()
                .starts_with("/ui/login?next=")
        );
        assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    }
    let login = get(&gw, "/ui/login", &[]).await;
    assert_eq!(login.status(), 200);
    let cookie = login.header("set-cookie").unwrap();
    assert!(cookie.starts_with("hookgate_login="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let behind_tls = get(&gw, "/ui/login", &[("x-forwarded-proto", "https")]).await;
    assert!(
        behind_tls
            .header("set-cookie")
            .unwrap()
            .ends_with("; Secure")
    );
    // The console's static files need no session; the API still needs the bearer token.
    assert_eq!(get(&gw, "/ui/static/console.js", &[]).await.status(), 200);
    assert_eq!(get(&gw, "/deliveries", &[]).await.status(), 401);
    let wrong = gw
        .send(
            Request::post(gw.admin_url("/ui/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from("token=guess&csrf=x")))
                .unwrap(),
        )
        .await;
    assert_eq!(wrong.status(), 403, "no login form cookie: a forged form");
}

/// Two login forms open (two tabs whose session ended): the first still logs in. Each
/// form made a new login token, so the first was always refused as stale.
#[tokio::test]
async fn of_two_login_forms_open_the_first_still_logs_in() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().queued().admin_token(TOKEN).route("*", &upstream)).await;
    let token_of = |reply: &Reply| {
        let cookie = reply.header("set-cookie").expect("a login cookie");
        let value = cookie
            .strip_prefix("hookgate_login=")
            .and_then(|rest| rest.split(';').next())
            .expect("hookgate_login=...")
            .to_owned();
        assert!(
            reply.text().contains(&format!(r#"value="{value}""#)),
            "the form carries its cookie's token"
        );
        value
    };
    let first = token_of(&get(&gw, "/ui/login", &[]).await);
    let cookie = format!("hookgate_login={first}");
    let second = token_of(&get(&gw, "/ui/login", &[("cookie", &cookie)]).await);
    assert_eq!(second, first, "the browser's token is kept");

    let login = gw
        .send(
            Request::post(gw.admin_url("/ui/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", &cookie)
                .body(Full::new(Bytes::from(format!(
                    "token={TOKEN}&csrf={first}&next=%2Fui%2F"
                ))))
                .unwrap(),
        )
        .await;
    assert_eq!(login.status(), 303, "{}", login.text());
    // Anything else in the cookie is no token of ours: a new one.
    let made = token_of(&get(&gw, "/ui/login", &[("cookie", "hookgate_login=x")]).await);
    assert_eq!(made.len(), 64);
}

#[tokio::test]
async fn without_a_token_the_console_is_open_on_loopback_to_loopback_names_only() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().queued().route("*", &upstream)).await;
    let port = gw.admin_addr().port();

    let local = get(&gw, "/ui/", &[]).await;
    assert_eq!(local.status(), 200, "{}", local.text());
    assert!(local.text().contains("<h1>Overview</h1>"));
    assert!(
        local
            .header("set-cookie")
            .unwrap()
            .starts_with("hookgate_session=")
    );
    let named = format!("localhost:{port}");
    assert_eq!(
        get(&gw, "/ui/deliveries", &[("host", &named)])
            .await
            .status(),
        200
    );
    // A name rebound to 127.0.0.1 by someone else's DNS is not loopback's.
    let rebound = format!("attacker.example:{port}");
    let reply = get(&gw, "/ui/deliveries", &[("host", &rebound)]).await;
    assert_eq!(reply.status(), 403);
    assert_eq!(
        get(&gw, "/ui/login", &[]).await.header("location"),
        Some("/ui/"),
        "nothing to log in with"
    );
}

#[tokio::test]
async fn in_proxy_mode_the_console_shows_the_overview_and_says_no_delivery_is_stored() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().route("*", &upstream)).await;
    assert!(
        gw.post(PATH, &signed_event("response.completed"))
            .await
            .forwarded()
    );

    let overview = get(&gw, "/ui/", &[]).await;
    assert_eq!(overview.status(), 200);
    assert!(
        overview.text().contains("forwarded 1"),
        "{}",
        overview.text()
    );
    assert!(
        overview
            .text()
            .contains("Every source forwards in proxy mode")
    );
    let list = get(&gw, "/ui/deliveries", &[]).await;
    assert_eq!(list.status(), 200);
    assert!(list.text().contains("Queue mode is off"), "{}", list.text());
    let one = get(&gw, "/ui/deliveries/dlv_000000000000ffffffffffffffff", &[]).await;
    assert_eq!(one.status(), 404);
}

#[tokio::test]
async fn the_overview_says_when_the_configuration_was_reloaded() {
    let upstream = Upstream::start().await;
    let file = ConfigFile::new(config().route("*", &upstream));
    let gw = Gateway::start_file(&file.path()).await;
    let before = get(&gw, "/ui/", &[]).await.text();
    assert!(before.contains("loaded at start"), "{before}");

    file.write(config().route("response.*", &upstream));
    gw.reload().await.expect("the new file is valid");

    let after = get(&gw, "/ui/", &[]).await.text();
    assert!(after.contains(">reloaded<"), "{after}");
    assert!(after.contains("response.*"), "the new summary: {after}");
}

#[tokio::test]
async fn the_deliveries_api_pages_by_cursor_and_names_a_bad_filter() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().queued().route("*", &upstream)).await;
    let deliveries = Deliveries::of(&gw);
    let client = gw.client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(enqueue(&client, &signed_event("invoice.paid")).await);
    }
    ids.reverse();

    let first = deliveries
        .request(Method::GET, "/deliveries?limit=2")
        .await
        .json();
    let page: Vec<&str> = first["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [ids[0].as_str(), ids[1].as_str()]);
    let next = first["next"].as_str().expect("a cursor");
    let rest = deliveries
        .request(Method::GET, &format!("/deliveries?limit=2&cursor={next}"))
        .await
        .json();
    assert_eq!(rest["deliveries"][0]["id"], ids[2].as_str());
    assert!(rest.get("next").is_none(), "{rest}");
    let search = deliveries
        .list(&format!("search={}&event_type=invoice.paid", ids[1]))
        .await;
    assert_eq!(search.len(), 1);
    for (query, reason) in [
        ("cursor=nope", "invalid_cursor"),
        ("since=yesterday", "invalid_since"),
        ("until=later", "invalid_until"),
        ("status=lost", "unknown_status"),
    ] {
        let reply = deliveries
            .request(Method::GET, &format!("/deliveries?{query}"))
            .await;
        assert_eq!(
            (reply.status().as_u16(), reply.error()),
            (400, reason.to_owned())
        );
    }
}

#[tokio::test]
async fn deliveries_list_filters_searches_and_prints_the_cursor_of_the_next_page() {
    let billing = Upstream::with(Answer::status(400)).await;
    let responses = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .queued()
            .named_route("billing", "invoice.*", &billing)
            .named_route("responses", "*", &responses),
    )
    .await;
    let deliveries = Deliveries::of(&gw);
    let client = gw.client();
    let paid = enqueue(&client, &signed_event("invoice.paid")).await;
    deliveries.wait_for_state(&paid, "failed_final").await;
    let mut done = Vec::new();
    for _ in 0..2 {
        let id = enqueue(&client, &signed_event("response.completed")).await;
        deliveries.wait_for_state(&id, "processed").await;
        done.push(id);
    }
    let list = |args: &'static [&'static str]| {
        let admin = deliveries.base().to_owned();
        async move {
            let mut all = vec!["deliveries", "--admin", admin.as_str(), "list"];
            all.extend_from_slice(args);
            let (ok, out, stderr) = hookgate_cli(&all).await;
            assert!(ok, "{stderr}");
            out
        }
    };

    let billing_only = list(&["--route", "billing", "--since", "1h"]).await;
    assert!(
        billing_only.contains(&paid) && billing_only.trim_end().ends_with("1 delivery"),
        "{billing_only}"
    );
    let by_type = list(&["--event-type", "response.completed", "--limit", "1"]).await;
    assert!(
        by_type.contains(&done[1]) && !by_type.contains(&done[0]),
        "{by_type}"
    );
    let cursor = by_type
        .rsplit_once("--cursor ")
        .map(|(_, c)| c.trim().to_owned())
        .unwrap_or_else(|| panic!("no cursor: {by_type}"));
    let admin = deliveries.base().to_owned();
    let (ok, next, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        &admin,
        "list",
        "--event-type",
        "response.completed",
        "--limit",
        "1",
        "--cursor",
        &cursor,
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        next.contains(&done[0]) && !next.contains(&done[1]),
        "{next}"
    );
    let (ok, found, stderr) =
        hookgate_cli(&["deliveries", "--admin", &admin, "list", "--search", &paid]).await;
    assert!(
        ok && found.contains(&paid) && found.trim_end().ends_with("1 delivery"),
        "{found}{stderr}"
    );
    let (ok, _, stderr) = hookgate_cli(&[
        "deliveries",
        "--admin",
        &admin,
        "list",
        "--until",
        "the weekend",
    ])
    .await;
    assert!(
        !ok && stderr.contains("\"the weekend\": expected RFC 3339"),
        "{stderr}"
    );
}

/// Logs in over plain HTTP as a browser would; returns the session cookie.
async fn http_login(gw: &Gateway) -> String {
    let form = get(gw, "/ui/login", &[]).await;
    let login_cookie = form.cookie();
    let page = form.text();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned();
    let reply = gw
        .send(
            Request::post(gw.admin_url("/ui/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", login_cookie)
                .body(Full::new(Bytes::from(format!(
                    "csrf={csrf}&token={TOKEN}&next=%2Fui%2F"
                ))))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status(), 303, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("/ui/"));
    reply.cookie()
}

#[tokio::test]
async fn the_overview_counts_by_source_and_route_and_shows_the_queue_and_config_without_secrets() {
    let billing = Upstream::with(Answer::status(400)).await;
    let responses = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .queued()
            .admin_token(TOKEN)
            .named_route("billing", "invoice.*", &billing)
            .named_route("responses", "*", &responses),
    )
    .await;
    let deliveries = Deliveries::of(&gw).with_token(TOKEN);
    let client = gw.client();
    let dead = enqueue(&client, &signed_event("invoice.paid")).await;
    deliveries.wait_for_state(&dead, "failed_final").await;
    for _ in 0..2 {
        let id = enqueue(&client, &signed_event("response.completed")).await;
        deliveries.wait_for_state(&id, "processed").await;
    }
    let forged = signed_event_with(OTHER_SECRET, "response.completed");
    assert_eq!(client.post(PATH, &forged).await.status(), 400);

    let cookie = http_login(&gw).await;
    let page = get(&gw, "/ui/", &[("cookie", &cookie)]).await;

    assert_eq!(page.status(), 200);
    let html = page.text();
    for shown in [
        "queued 3",
        "invalid_signature 1",
        "openai/billing",
        "4xx 1",
        "failed_final 1",
        "openai/responses",
        "2xx 2",
        "processed 2",
        "Dead letters</h2>\n    <p class=\"big\">1</p>",
        "bearer token required",
        "data-refresh=\"10\"",
    ] {
        assert!(html.contains(shown), "{shown:?} not in\n{html}");
    }
    assert!(!html.contains(TOKEN), "the admin token leaked");
    assert!(!html.contains(&SECRET[6..]), "a signing secret leaked");
    assert!(
        !html.contains("Circuit breakers"),
        "no breaker metrics here"
    );
}

async fn rows(browser: &Browser) -> Vec<String> {
    texts(browser, "table.deliveries td a.id").await
}

async fn texts(browser: &Browser, css: &str) -> Vec<String> {
    browser.find("main").await;
    let mut out = Vec::new();
    for element in browser.all(css).await {
        out.push(element.text().await.expect("text"));
    }
    out
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// With the queue unreadable the overview's dead letters are unknown, not 0 (an operator
/// read "Dead letters: 0" as "none"); the page's icon is served, not a 401 or 404 in the
/// browser's console on every page.
#[tokio::test]
async fn with_the_queue_unreadable_the_overview_says_its_dead_letters_are_unknown() {
    let Some(mut redis) = RedisServer::start_or_skip().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        config()
            .redis(&redis)
            .queued()
            .route("*", &upstream)
            .impatient_store(),
    )
    .await;
    redis.stop();

    let page = get(&gw, "/ui/", &[]).await.text();

    assert!(
        page.contains("Dead letters</h2>\n    <p class=\"big bad-text\">unknown</p>"),
        "{page}"
    );
    assert!(!page.contains("Show dead letters"), "{page}");
    let icon = get(&gw, "/ui/static/icon.svg", &[]).await;
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
}

/// The overview's refresh reloads only once the gateway answers, and says meanwhile that
/// it does not: a reload while it was down left the browser's error page, where no script
/// runs, and the screen never came back.
#[tokio::test]
async fn the_overview_says_when_the_gateway_stops_answering_and_keeps_its_page() {
    let Some(browser) = browser().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut gw = GatewayProcess::spawn(config().queued().route("*", &upstream)).await;
    browser.goto(&format!("http://{}/ui/", gw.admin_addr)).await;
    browser.wait_for_text("h1", "Overview").await;

    gw.kill();

    eventually("the page to say the gateway does not answer", async || {
        browser
            .run("return document.getElementById('unreachable')?.textContent || ''")
            .await
            .as_str()
            .is_some_and(|text| text.contains("has not answered"))
    })
    .await;
    assert_eq!(browser.text("h1").await, "Overview");
}

/// The filter's times are sent as UTC, read in the viewer's zone, and a time changed
/// after Back is the one sent: the form was rewritten on submit, and restored by the
/// back/forward cache it sent its old time whatever was typed next.
#[tokio::test]
async fn the_filter_sends_the_time_typed_even_after_going_back() {
    let Some(browser) = browser().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().queued().route("*", &upstream)).await;
    let set_since = |value: &'static str| {
        format!("document.getElementById('f-since').value = '{value}'; return true")
    };
    let utc =
        |value: &str| format!("return new Date('{value}').toISOString().replace(/:/g, '%3A')");
    browser.goto(&gw.admin_url("/ui/deliveries")).await;
    browser.wait_for_text("h1", "Deliveries").await;

    browser.run(&set_since("2026-12-07T21:50:31")).await;
    browser.click(".filters button[type=submit]").await;
    let first = browser.run(&utc("2026-12-07T21:50:31")).await;
    eventually("the first filter", async || {
        browser.path().await.contains(first.as_str().unwrap())
    })
    .await;
    browser.run("history.back(); return true").await;
    eventually("back on the unfiltered list", async || {
        !browser.path().await.contains("since=")
    })
    .await;
    browser.run(&set_since("2026-12-07T21:55:00")).await;
    browser.click(".filters button[type=submit]").await;

    let second = browser.run(&utc("2026-12-07T21:55:00")).await;
    eventually("the second filter", async || {
        browser.path().await.contains(second.as_str().unwrap())
    })
    .await;
}
