//! Console sessions: who logged in with the admin token, until when, and the CSRF token
//! every form of a session carries.
//!
//! A session id is 32 random bytes from the OS generator (`crate::random`), sent only as
//! an `HttpOnly`, `SameSite=Strict` cookie; the table keys sessions by the id's SHA-256,
//! so neither a lookup's timing nor a memory dump gives an id away. A session ends on
//! logout, after `admin.session_timeout` without a request, `MAX_AGE` after login, or
//! as soon as the admin token it was opened under is no longer the configured one (a
//! reload that rotates the token logs everyone out). Sessions live in this process: a
//! restart logs everyone out, which for an admin surface is the safe side.
//!
//! The login form has no session yet: its CSRF token is a random value the form carries
//! and a short-lived cookie repeats (double submit), so a form posted from another site
//! cannot log a browser in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::random;

/// The session cookie.
pub const SESSION_COOKIE: &str = "hookgate_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "hookgate_login";
/// A session ends this long after login, however busy.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; the oldest is dropped for a new one beyond this.
const MAX_SESSIONS: usize = 1024;
/// How long the login form's cookie lives.
pub const LOGIN_FORM_SECONDS: u64 = 1800;

type Digest32 = [u8; 32];

fn digest(text: &[u8]) -> Digest32 {
    Sha256::digest(text).into()
}

/// What a request's session gives the page: the token its forms must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    opened: Instant,
    last_seen: Instant,
    /// The SHA-256 of the admin token it was opened under (`None`: no token configured).
    token: Option<Digest32>,
}

pub struct Sessions {
    table: Mutex<HashMap<Digest32, Session>>,
    /// This process's key for the CSRF tokens of sessions without an admin token.
    key: [u8; 32],
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            table: Mutex::default(),
            key: digest(random::hex(32).as_bytes()),
        }
    }
}

impl Sessions {
    /// The session of a visitor when no admin token is configured, and the id for a
    /// new cookie when `cookie` is not one of ours. There is no one to log in and
    /// nothing to keep: the session is its cookie, its CSRF token an HMAC of the cookie
    /// under this process's key. Kept in the table, every request without the cookie
    /// opened a session, and 1,024 of them pushed out the operator's open page, whose
    /// next form was then refused.
    pub fn tokenless(&self, cookie: Option<&str>, now: Instant) -> (Option<String>, Session) {
        let (fresh, id) = match cookie {
            Some(id) if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (None, id.to_owned())
            }
            _ => {
                let id = random::hex(32);
                (Some(id.clone()), id)
            }
        };
        let mut mac = crate::verify::hmac_key(&self.key);
        hmac::Mac::update(&mut mac, id.as_bytes());
        let session = Session {
            csrf: crate::verify::hex_encode(&hmac::Mac::finalize(mac).into_bytes()),
            opened: now,
            last_seen: now,
            token: None,
        };
        (fresh, session)
    }

    /// Opens a session for whoever proved `token`; returns the id for the cookie and the
    /// session. (Without a token a session is its cookie alone: `tokenless`.)
    pub fn open(&self, token: &Secret, now: Instant) -> (String, Session) {
        let id = random::hex(32);
        let session = Session {
            csrf: random::hex(32),
            opened: now,
            last_seen: now,
            token: Some(digest(token.expose().as_bytes())),
        };
        let mut table = self.lock();
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(key, _)| *key)
        {
            table.remove(&oldest);
        }
        table.insert(digest(id.as_bytes()), session.clone());
        (id, session)
    }

    /// The live session with this cookie value, marked as seen now; `None` when it is
    /// unknown, idle longer than `idle`, older than `MAX_AGE`, or was opened under
    /// another admin token than `token` (it is then forgotten).
    pub fn find(
        &self,
        id: &str,
        token: Option<&Secret>,
        idle: Duration,
        now: Instant,
    ) -> Option<Session> {
        let key = digest(id.as_bytes());
        let mut table = self.lock();
        let session = table.get_mut(&key)?;
        let current = token.map(|t| digest(t.expose().as_bytes()));
        let same_token = match (&session.token, &current) {
            (Some(a), Some(b)) => bool::from(a.ct_eq(b)),
            (None, None) => true,
            _ => false,
        };
        let expired = now.duration_since(session.last_seen) > idle
            || now.duration_since(session.opened) > MAX_AGE;
        if expired || !same_token {
            table.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(&digest(id.as_bytes()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest32, Session>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a submitted token is the expected one, in constant time.
pub fn same_token(expected: &str, submitted: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, for the console's paths only,
/// `Secure` when the browser reached the console over TLS. `max_age` of `Some(0)`
/// deletes the cookie; `None` makes it last until the browser closes.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(seconds) = max_age {
        text.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).expect("cookie names and random hex values are header-safe")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Secret {
        Secret::from(text.to_owned())
    }

    #[test]
    fn a_session_is_found_by_its_id_until_it_idles_out() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let admin = token("t0ken");
        let (id, opened) = sessions.open(&admin, t0);
        assert_eq!(id.len(), 64);
        let idle = Duration::from_secs(60);

        let found = sessions.find(&id, Some(&admin), idle, t0 + Duration::from_secs(59));
        assert_eq!(found.map(|s| s.csrf), Some(opened.csrf.clone()));
        // Each request renews it.
        let later = t0 + Duration::from_secs(118);
        assert!(sessions.find(&id, Some(&admin), idle, later).is_some());
        assert!(
            sessions
                .find(
                    &id,
                    Some(&admin),
                    idle,
                    later + idle + Duration::from_secs(1)
                )
                .is_none()
        );
        assert!(
            sessions.find(&id, Some(&admin), idle, later).is_none(),
            "forgotten"
        );
        assert!(sessions.find("nope", Some(&admin), idle, t0).is_none());
    }

    #[test]
    fn a_session_ends_at_its_max_age_on_logout_and_when_the_token_changes() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let admin = token("t0ken");
        let day = Duration::from_secs(86_400);
        let (id, _) = sessions.open(&admin, t0);
        assert!(
            sessions
                .find(
                    &id,
                    Some(&admin),
                    day,
                    t0 + MAX_AGE + Duration::from_secs(1)
                )
                .is_none()
        );

        let (id, _) = sessions.open(&admin, t0);
        assert!(
            sessions
                .find(&id, Some(&token("rotated")), day, t0)
                .is_none()
        );
        assert!(
            sessions.find(&id, Some(&admin), day, t0).is_none(),
            "forgotten"
        );

        let (id, _) = sessions.open(&admin, t0);
        sessions.close(&id);
        assert!(sessions.find(&id, Some(&admin), day, t0).is_none());
    }

    #[test]
    fn ids_and_csrf_tokens_differ_and_the_table_is_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let admin = token("admin");
        let (a, sa) = sessions.open(&admin, t0);
        let (b, sb) = sessions.open(&admin, t0);
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        for i in 0..MAX_SESSIONS as u64 {
            sessions.open(&admin, t0 + Duration::from_millis(i + 1));
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn without_a_token_a_session_is_its_cookie_and_takes_no_room() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (Some(id), first) = sessions.tokenless(None, t0) else {
            panic!("a visitor without the cookie is given one");
        };
        // However many visitors come without the cookie, the first one's forms still
        // carry the token its cookie gives.
        for _ in 0..2 * MAX_SESSIONS {
            assert!(sessions.tokenless(None, t0).0.is_some());
        }
        assert_eq!(sessions.lock().len(), 0);
        let (fresh, again) = sessions.tokenless(Some(&id), t0);
        assert_eq!(fresh, None);
        assert_eq!(again.csrf, first.csrf);
        // Another cookie, another token; one not of our making is replaced.
        let (_, other) = sessions.tokenless(Some(&"0".repeat(64)), t0);
        assert_ne!(other.csrf, first.csrf);
        assert!(sessions.tokenless(Some("forged"), t0).0.is_some());
        // Another process's key, another token.
        assert_ne!(
            Sessions::default().tokenless(Some(&id), t0).1.csrf,
            first.csrf
        );
    }

    #[test]
    fn tokens_compare_whole_and_never_empty() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        assert!(!same_token("", ""));
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header_and_written_strict() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; hookgate_session=abc"),
        );
        headers.append(COOKIE, HeaderValue::from_static("hookgate_login=xyz"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
        assert_eq!(
            set_cookie(SESSION_COOKIE, "abc", false, None),
            "hookgate_session=abc; Path=/ui; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            set_cookie(SESSION_COOKIE, "", true, Some(0)),
            "hookgate_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
        );
    }
}
