//! The web console (`/ui/` on the admin listener): an overview of the gateway, the
//! deliveries of queue mode (filtered, searched, paged), one delivery's timeline and
//! attempts, and replay of dead letters. Plain server-rendered HTML (`views.rs`,
//! askama templates that escape everything) with one small first-party script
//! (`static/console.js`: times in the viewer's zone, the overview's refresh); it needs
//! nothing from the internet.
//!
//! It is an admin surface, guarded in this order (`serve`):
//! - without `admin.token` it answers only on a loopback listener and only to a `Host`
//!   that names loopback (a page on another site cannot reach it through DNS
//!   rebinding); with a token, a login form takes the token and opens a session
//!   (`session.rs`): an `HttpOnly`, `SameSite=Strict` cookie, `Secure` over TLS
//!   (`over_tls`);
//! - every POST carries the session's CSRF token and, when the browser says where it
//!   comes from (`Origin`, `Sec-Fetch-Site`), must come from the console itself;
//! - every answer forbids framing and inline scripts (a strict Content-Security-Policy),
//!   sends no referrer and is never cached (`harden`).
//!
//! It does not own what it shows: the queue, the store, the metrics (`history.rs` keeps
//! an hour of readings for the "last hour" figures) and the running configuration
//! (`reload::Live`) belong to their modules.

pub mod history;
mod pages;
pub mod session;
pub mod views;

use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use tokio::sync::watch;

use crate::admin::{Query, names_loopback, requested_host, same_origin};
use crate::config::AdminAuth;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::reload::Live;
use crate::store::Store;
use history::{History, Reading};
use session::{LOGIN_COOKIE, LOGIN_FORM_SECONDS, SESSION_COOKIE, Session, Sessions};
use views::{Chrome, LoginPage, MessagePage};

pub type Reply = Response<Full<Bytes>>;

/// No script but the console's own file, no style but its own sheet, no framing, forms
/// only to itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// A form body the console reads at most (its forms are a few fields).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// How long a failed login waits before it is answered: guessing costs time.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");
/// Asked for by every page; without it each page load logged a 401 or 404 for
/// `/favicon.ico` in the browser's console.
const ICON: &str = include_str!("static/icon.svg");

/// Whether `path` is the console's (the admin listener hands these to `Console::serve`).
pub fn owns(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

pub struct Console {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    queue: Option<Arc<dyn Queue>>,
    live: Arc<Live>,
    sessions: Sessions,
    history: History,
    /// Whether the admin listener is on loopback: without a token, the console is
    /// served only there.
    loopback: bool,
}

/// A request as a page handler needs it: the session it belongs to.
pub(crate) struct Visit<'a> {
    pub session: Session,
    pub auth: &'a AdminAuth,
    pub query: Query,
}

impl Console {
    pub fn new(
        metrics: Arc<Metrics>,
        store: Arc<dyn Store>,
        queue: Option<Arc<dyn Queue>>,
        live: Arc<Live>,
        admin_listen: std::net::SocketAddr,
    ) -> Console {
        // The first reading now, before any request: "since start" counts them all.
        let history = History::default();
        history.record(tokio::time::Instant::now(), Reading::of(metrics.registry()));
        Console {
            metrics,
            store,
            queue,
            live,
            sessions: Sessions::default(),
            history,
            loopback: admin_listen.ip().is_loopback(),
        }
    }

    /// Reads the counters the overview shows every `SAMPLE_EVERY` until `stop`.
    pub async fn sample(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let first = tokio::time::Instant::now() + history::SAMPLE_EVERY;
        let mut every = tokio::time::interval_at(first, history::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let reading = Reading::of(self.metrics.registry());
                    self.history.record(tokio::time::Instant::now(), reading);
                }
                _ = stop.changed() => return,
            }
        }
    }

    pub async fn serve<B>(&self, req: Request<B>) -> Reply
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let secure = over_tls(&parts);
        let mut reply = self.answer(parts, body, secure).await;
        harden(&mut reply);
        reply
    }

    async fn answer<B>(&self, parts: http::request::Parts, body: B, secure: bool) -> Reply
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = parts.uri.path();
        let method = &parts.method;
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/ui") => return redirect("/ui/"),
            (&Method::GET | &Method::HEAD, "/ui/static/console.css") => {
                return asset(CSS, "text/css; charset=utf-8");
            }
            (&Method::GET | &Method::HEAD, "/ui/static/console.js") => {
                return asset(JS, "text/javascript; charset=utf-8");
            }
            (&Method::GET | &Method::HEAD, "/ui/static/icon.svg") => {
                return asset(ICON, "image/svg+xml");
            }
            _ => {}
        }
        let auth = self.live.admin_auth();
        if auth.token.is_none()
            && !(self.loopback
                && requested_host(&parts.headers, &parts.uri).is_some_and(names_loopback))
        {
            return message(
                StatusCode::FORBIDDEN,
                "Not served here",
                "Without admin.token the console answers only on a loopback admin listener, \
                 reached as localhost. Set admin.token to serve it elsewhere.",
            );
        }
        if method == Method::POST && !same_origin(&parts.headers) {
            return message(
                StatusCode::FORBIDDEN,
                "Refused",
                "This form was not sent from the console's own pages.",
            );
        }
        let query = Query::parse(parts.uri.query().unwrap_or(""));
        let read_timeout = self.live.gateway().body_read_timeout();
        if path == "/ui/login" {
            return match *method {
                Method::POST => match read_form(body, read_timeout.min(LOGIN_FORM_READ)).await {
                    Ok(form) => self.log_in(&parts.headers, &auth, &form, secure).await,
                    Err(refused) => refused,
                },
                Method::GET | Method::HEAD => {
                    self.login_form(&parts.headers, &auth, &query, None, secure)
                }
                _ => not_allowed("GET, HEAD, POST"),
            };
        }
        let now = Instant::now();
        let cookie = session::cookie(&parts.headers, SESSION_COOKIE);
        let mut opened_cookie = None;
        let found = match &auth.token {
            Some(token) => cookie.and_then(|id| {
                self.sessions
                    .find(id, Some(token), auth.session_timeout, now)
            }),
            // Nobody to log in without a token: a session only carries the CSRF token.
            None => {
                let (fresh, session) = self.sessions.tokenless(cookie, now);
                opened_cookie =
                    fresh.map(|id| session::set_cookie(SESSION_COOKIE, &id, secure, None));
                Some(session)
            }
        };
        let session = match found {
            Some(session) => session,
            None => {
                let back = match *method {
                    Method::GET | Method::HEAD => parts
                        .uri
                        .path_and_query()
                        .map_or("/ui/", |pq| pq.as_str())
                        .to_owned(),
                    _ => "/ui/".to_owned(),
                };
                let login = format!(
                    "/ui/login?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("next", &back)
                        .finish()
                );
                return redirect(&login);
            }
        };
        // Read only once the session is known: a visitor who has none is sent to the
        // login form without the body being waited for.
        let form = if method == Method::POST {
            match read_form(body, read_timeout).await {
                Ok(form) => form,
                Err(refused) => return refused,
            }
        } else {
            Query::parse("")
        };
        if method == Method::POST
            && !session::same_token(&session.csrf, form.get("csrf").unwrap_or(""))
        {
            tracing::warn!(
                path,
                "console: a form without the session's CSRF token was refused"
            );
            return message(
                StatusCode::FORBIDDEN,
                "Refused",
                "This form did not carry the session's CSRF token. Reload the page and try again.",
            );
        }
        let visit = Visit {
            session,
            auth: &auth,
            query,
        };
        let mut reply = self.route(method, path, &visit, &form).await;
        if let Some(cookie) = opened_cookie {
            reply.headers_mut().append(SET_COOKIE, cookie);
        }
        if path == "/ui/logout" && method == Method::POST {
            if let Some(id) = session::cookie(&parts.headers, SESSION_COOKIE) {
                self.sessions.close(id);
            }
            reply.headers_mut().append(
                SET_COOKIE,
                session::set_cookie(SESSION_COOKIE, "", secure, Some(0)),
            );
        }
        reply
    }

    async fn route(&self, method: &Method, path: &str, visit: &Visit<'_>, form: &Query) -> Reply {
        let rest = path.trim_start_matches("/ui/");
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (method, segments.as_slice()) {
            (&Method::GET | &Method::HEAD, []) => self.overview(visit).await,
            (&Method::GET | &Method::HEAD, ["deliveries"]) => self.deliveries(visit).await,
            (&Method::GET | &Method::HEAD, ["deliveries", id]) => self.delivery(visit, id).await,
            (&Method::POST, ["deliveries", id, "replay"]) => self.replay_one(id).await,
            (&Method::GET | &Method::HEAD, ["replay"]) => self.confirm_replay(visit).await,
            (&Method::POST, ["replay"]) => self.replay_matching(visit, form).await,
            (&Method::POST, ["logout"]) => redirect("/ui/login"),
            (_, page) => match allowed(page) {
                Some(allow) => not_allowed(allow),
                None => message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no console page here.",
                ),
            },
        }
    }

    /// The frame of a page for this visit.
    fn chrome(&self, visit: &Visit<'_>, title: &str, section: &'static str) -> Chrome {
        Chrome {
            signed_in: true,
            logout: visit.auth.token.is_some(),
            csrf: visit.session.csrf.clone(),
            ..Chrome::new(title, section)
        }
    }

    fn login_form(
        &self,
        headers: &HeaderMap,
        auth: &AdminAuth,
        query: &Query,
        error: Option<String>,
        secure: bool,
    ) -> Reply {
        if auth.token.is_none() {
            return redirect("/ui/");
        }
        // The browser's login token, if it has one of ours: a second login form (another
        // tab whose session ended too) then leaves the first one valid, where a new
        // token made the first always refused as stale.
        let csrf = match session::cookie(headers, LOGIN_COOKIE) {
            Some(held) if held.len() == 64 && held.bytes().all(|b| b.is_ascii_hexdigit()) => {
                held.to_owned()
            }
            _ => crate::random::hex(32),
        };
        let page = LoginPage {
            chrome: Chrome::new("Log in", "login"),
            csrf: csrf.clone(),
            next: safe_next(query.get("next")).to_owned(),
            error,
        };
        let status = if page.error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut reply = html(status, &page);
        reply.headers_mut().append(
            SET_COOKIE,
            session::set_cookie(LOGIN_COOKIE, &csrf, secure, Some(LOGIN_FORM_SECONDS)),
        );
        reply
    }

    async fn log_in(
        &self,
        headers: &HeaderMap,
        auth: &AdminAuth,
        form: &Query,
        secure: bool,
    ) -> Reply {
        let Some(token) = &auth.token else {
            return redirect("/ui/");
        };
        let expected = session::cookie(headers, LOGIN_COOKIE).unwrap_or("");
        if !session::same_token(expected, form.get("csrf").unwrap_or("")) {
            return message(
                StatusCode::FORBIDDEN,
                "Refused",
                "The login form was stale or not sent from this console. Load it again.",
            );
        }
        if !token.matches(form.get("token").unwrap_or("").as_bytes()) {
            self.metrics.admin_unauthorized();
            tracing::warn!("console: login with a wrong admin token");
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            let query = Query::parse(&format!(
                "next={}",
                form_urlencoded::byte_serialize(form.get("next").unwrap_or("").as_bytes())
                    .collect::<String>()
            ));
            return self.login_form(
                headers,
                auth,
                &query,
                Some("That is not the admin token.".to_owned()),
                secure,
            );
        }
        let (id, _) = self.sessions.open(token, Instant::now());
        tracing::info!("console: logged in");
        let mut reply = redirect(safe_next(form.get("next")));
        let cookies = reply.headers_mut();
        cookies.append(
            SET_COOKIE,
            session::set_cookie(SESSION_COOKIE, &id, secure, None),
        );
        cookies.append(
            SET_COOKIE,
            session::set_cookie(LOGIN_COOKIE, "", secure, Some(0)),
        );
        reply
    }
}

/// Where to go after login: a console path, never another site (`//host`).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        // Printable ASCII only, as a `Location` header carries it: one with a control
        // character was dropped from the redirect, which left a login on a blank page.
        Some(next)
            if next.starts_with("/ui/")
                && !next.starts_with("//")
                && !next.contains('\\')
                && next.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            next
        }
        _ => "/ui/",
    }
}

/// Whether the browser reached the console over TLS, so that its cookies are `Secure`:
/// the request came over TLS, or a proxy in front that terminated it says so
/// (`X-Forwarded-Proto: https`; the admin listener itself serves plain HTTP). A client
/// that claims it falsely only keeps its own cookies from being sent back over HTTP.
fn over_tls(parts: &http::request::Parts) -> bool {
    parts.uri.scheme_str() == Some("https")
        || parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The methods a console page answers (for a 405's `Allow`), `None` for no page.
fn allowed(page: &[&str]) -> Option<&'static str> {
    match page {
        [] | ["deliveries"] | ["deliveries", _] => Some("GET, HEAD"),
        ["deliveries", _, "replay"] | ["logout"] => Some("POST"),
        ["replay"] => Some("GET, HEAD, POST"),
        _ => None,
    }
}

/// A page asked with a method it does not answer, as the admin API answers it.
fn not_allowed(allow: &'static str) -> Reply {
    let mut reply = message(
        StatusCode::METHOD_NOT_ALLOWED,
        "Not allowed",
        &format!("This page answers {allow} only."),
    );
    reply
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    reply
}

/// The form a POST carries, within `MAX_FORM_BYTES` and `timeout`: a body that never
/// comes would otherwise hold one of the admin listener's connections for good, and
/// `ADMIN_MAX_CONNECTIONS` of them its health checks and metrics with it.
/// The login form is read before anyone has logged in, and is a hundred bytes a browser
/// sends with its head: waiting `body_read_timeout` (30 s) for it let anyone hold the
/// admin listener's few connections three times longer than a slow head could.
const LOGIN_FORM_READ: std::time::Duration = std::time::Duration::from_secs(5);

async fn read_form<B>(body: B, timeout: std::time::Duration) -> Result<Query, Reply>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, Limited::new(body, MAX_FORM_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok(Query::from_bytes(&collected.to_bytes())),
        Ok(Err(_)) => Err(message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Refused",
            "The form could not be read.",
        )),
        Err(_) => Err(message(
            StatusCode::REQUEST_TIMEOUT,
            "Refused",
            "The form did not arrive in time.",
        )),
    }
}

/// The headers every console answer carries.
fn harden(reply: &mut Reply) {
    let headers = reply.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(headers, CONTENT_SECURITY_POLICY, CSP);
    set(headers, X_FRAME_OPTIONS, "DENY");
    set(headers, REFERRER_POLICY, "no-referrer");
    set(headers, X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, CACHE_CONTROL, "no-store");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
}

fn html(status: StatusCode, page: &impl Template) -> Reply {
    let body = page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "console: a page failed to render");
        "<!DOCTYPE html><title>hookgate</title><p>This page could not be shown.".to_owned()
    });
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    reply
}

/// A page that says one thing, with a way back.
fn message(status: StatusCode, heading: &str, text: &str) -> Reply {
    html(
        status,
        &MessagePage {
            chrome: Chrome::new(heading, ""),
            heading: heading.to_owned(),
            text: text.to_owned(),
            error: !status.is_success(),
            link_href: "/ui/".to_owned(),
            link_label: "Back to the console".to_owned(),
        },
    )
}

/// 303: after a form, the browser GETs the next page (a reload does not post again).
fn redirect(to: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(to) {
        reply.headers_mut().insert(LOCATION, location);
    }
    reply
}

fn asset(text: &'static str, content_type: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Versioned URLs (`?v=`): a new release is a new URL.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_only_sends_the_browser_on_to_console_paths() {
        assert_eq!(
            safe_next(Some("/ui/deliveries?status=failed_final")),
            "/ui/deliveries?status=failed_final"
        );
        for bad in [
            "//evil.example/ui/",
            "https://evil.example",
            "/ui",
            "/\\evil",
            "/metrics",
            "/ui/\r\nX: y",
            "/ui/caf\u{e9}",
            "/ui/a b",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn a_page_asked_with_another_method_names_the_methods_it_answers() {
        assert_eq!(allowed(&["deliveries"]), Some("GET, HEAD"));
        assert_eq!(allowed(&["deliveries", "dlv_1", "replay"]), Some("POST"));
        assert_eq!(allowed(&["replay"]), Some("GET, HEAD, POST"));
        assert_eq!(allowed(&["nothing"]), None);
        let reply = not_allowed("POST");
        assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers()[http::header::ALLOW], "POST");
    }

    #[test]
    fn every_answer_is_hardened() {
        let mut reply = redirect("/ui/");
        harden(&mut reply);
        let h = reply.headers();
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[CACHE_CONTROL], "no-store");
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert!(csp.contains("frame-ancestors 'none'"));
        let mut css = asset(CSS, "text/css");
        harden(&mut css);
        assert_eq!(css.headers()[CACHE_CONTROL], "max-age=3600");
    }
}
