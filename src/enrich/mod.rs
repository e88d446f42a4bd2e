//! Enrichment (`enrich` on a queue-mode route): the object behind a thin event, fetched
//! from the sender's API before the delivery's first attempt and delivered with it as
//! `{"event": <the event as received>, "object": <the API's answer>}`, re-signed by
//! hookgate, with `X-Hookgate-Enriched: <provider>`.
//!
//! What an event names, the request and what the answer means are pure decisions of
//! each provider (`openai.rs`); `after_failure` decides, over the queue's retry policy,
//! when a failed fetch is tried again. `Enricher` does the I/O: one pooled client for
//! every route (rustls on ring, the system's roots whatever `[upstream_tls]` says: the
//! API key never goes to an unverified server), the route's timeout, its metrics, and
//! one loud log line when the API refuses the key. The queue's worker calls it in one
//! place, before an attempt; the queue keeps the object with the record
//! (`Queue::attach`), so a retry to the backend never fetches it again.
//!
//! Nothing here logs, records or forwards the API key, or keeps the API's error
//! messages (a 401's message quotes part of the key).

pub mod openai;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use zeroize::Zeroizing;

use crate::config::{EnrichProvider, EnrichSettings, UpstreamTrust};
use crate::forward::{self, HttpClient};
use crate::metrics::{EnrichMetrics, EnrichResult};
use crate::queue::policy::RetryPolicy;
use crate::tls;

/// Says that the body is `{"event", "object"}` and whose API the object came from.
pub const X_HOOKGATE_ENRICHED: HeaderName = HeaderName::from_static("x-hookgate-enriched");

/// The largest object kept with a delivery (a response with images can be megabytes).
pub const MAX_OBJECT_BYTES: usize = 16 << 20;
/// An error answer is read this far, for its `type` and `code`.
const MAX_ERROR_BYTES: usize = 16 << 10;
/// Connecting is bounded by this and by the route's `timeout`, whichever ends first.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What an enrich route does with one delivery before its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The event names no object (`realtime.call.incoming`, `eval.run.*`): delivered as
    /// received, at once.
    AsReceived,
    /// The object was fetched before: this is the body to deliver.
    Ready(Bytes),
    /// Fetch it first.
    Fetch(ObjectRef),
    /// The event's family names an object but the event gives no usable id: final.
    Unfetchable(FetchFailure),
}

/// An object of the provider's API: its path under `api_base`, and the id the answer
/// must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub path: String,
    pub id: String,
}

/// A fetch that did not bring the object back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    pub result: EnrichResult,
    /// The API's status, when it answered.
    pub status: Option<u16>,
    /// How long the API asked to wait before the next request.
    pub retry_after: Option<Duration>,
    /// For the record and the log: what happened, never the key, never the API's message.
    pub detail: String,
}

impl FetchFailure {
    /// Whether trying again later can help.
    pub fn retried(&self) -> bool {
        matches!(
            self.result,
            EnrichResult::RateLimited
                | EnrichResult::ServerError
                | EnrichResult::Timeout
                | EnrichResult::Unreachable
                | EnrichResult::InvalidAnswer
        )
    }
}

/// What follows a failed fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchVerdict {
    Retry {
        delay: Duration,
    },
    /// No more fetches, and why (added to the failure's detail in the record).
    Final(&'static str),
}

/// After a fetch that failed, `failed_before` others having failed since the delivery
/// was (re)queued, `age` after that: retried like an attempt (the queue's backoff, and
/// never sooner than the API's `Retry-After`) but without counting as one, so only
/// `max_age` ends the retries; a refused key, a missing object or a refusal is final.
pub fn after_failure(
    failure: &FetchFailure,
    policy: &RetryPolicy<'_>,
    failed_before: u32,
    age: Duration,
    sample: f64,
) -> FetchVerdict {
    if !failure.retried() {
        return FetchVerdict::Final(match failure.result {
            EnrichResult::KeyRefused => {
                "not retried: fix the route's enrich.api_key (or its organization or project), \
                 then replay"
            }
            _ => "not retried",
        });
    }
    let delay =
        policy
            .backoff
            .delay_at_least(failed_before.saturating_add(1), sample, failure.retry_after);
    if age.saturating_add(delay) > policy.max_age {
        return FetchVerdict::Final("queue.max_age reached");
    }
    FetchVerdict::Retry { delay }
}

/// The body a backend gets for an enriched delivery: the event's bytes exactly as the
/// sender signed them, and the object's exactly as the API answered (both checked JSON
/// before), so nothing is re-encoded.
pub fn enriched_body(event: &[u8], object: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(event.len() + object.len() + 22);
    body.put_slice(br#"{"event":"#);
    body.put_slice(event);
    body.put_slice(br#","object":"#);
    body.put_slice(object);
    body.put_u8(b'}');
    body.freeze()
}

/// One route's enrichment: its provider's API, with the route's key and timeout.
pub struct Enricher {
    settings: Arc<EnrichSettings>,
    metrics: EnrichMetrics,
    /// `<source>/<route>`, for the log.
    route: String,
    /// The refused key has been logged loudly for this route (since start or reload).
    key_refused_logged: AtomicBool,
}

impl Enricher {
    pub fn new(settings: Arc<EnrichSettings>, metrics: EnrichMetrics, route: &str) -> Self {
        Enricher {
            settings,
            metrics,
            route: route.to_owned(),
            key_refused_logged: AtomicBool::new(false),
        }
    }

    /// The provider's name, as `X-Hookgate-Enriched` gives it.
    pub fn provider(&self) -> &'static str {
        match self.settings.provider {
            EnrichProvider::Openai => "openai",
        }
    }

    /// The provider's name for people.
    fn display_name(&self) -> &'static str {
        match self.settings.provider {
            EnrichProvider::Openai => "OpenAI",
        }
    }

    /// What to do before an attempt of the delivery whose event is `body`, of
    /// `event_type`, given the object the record keeps (if one was fetched before).
    pub fn plan(&self, event_type: &str, body: &[u8], kept: Option<&Bytes>) -> Plan {
        if let Some(object) = kept {
            return Plan::Ready(enriched_body(body, object));
        }
        let plan = match self.settings.provider {
            EnrichProvider::Openai => openai::plan(event_type, body),
        };
        if let Plan::Unfetchable(failure) = &plan {
            self.metrics.observe(failure.result, None);
        }
        plan
    }

    /// `GET {api_base}{path}` with the route's credentials, within its timeout: the API's
    /// status and the object. Counted in `hookgate_enrich_*`.
    pub async fn fetch(&self, object: &ObjectRef) -> Result<(u16, Bytes), FetchFailure> {
        let started = Instant::now();
        let fetched = self.exchange(object).await.map_err(|mut failure| {
            failure.detail = format!("GET {}: {}", object.path, failure.detail);
            failure
        });
        let result = match &fetched {
            Ok(_) => EnrichResult::Fetched,
            Err(failure) => failure.result,
        };
        self.metrics.observe(result, Some(started.elapsed()));
        if result == EnrichResult::KeyRefused
            && !self.key_refused_logged.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                route = %self.route,
                status = fetched.as_ref().err().and_then(|f| f.status),
                "enrich: the {} API REFUSED THE API KEY of route {}: every delivery on it that \
                 needs an object becomes failed_final until its enrich.api_key (or organization \
                 or project) is fixed; replay them then (hookgate deliveries replay --status \
                 failed_final)",
                self.display_name(),
                self.route,
            );
        }
        fetched
    }

    async fn exchange(&self, object: &ObjectRef) -> Result<(u16, Bytes), FetchFailure> {
        let settings = &self.settings;
        let failed = |result, detail: String| FetchFailure {
            result,
            status: None,
            retry_after: None,
            detail,
        };
        let uri: Uri = format!("{}{}", settings.api_base, object.path)
            .parse()
            .map_err(|e| failed(EnrichResult::Refused, format!("not a valid URL: {e}")))?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, bearer(settings.api_key.expose()));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("hookgate/", env!("CARGO_PKG_VERSION"))),
        );
        // Both were checked printable ASCII when the config was read.
        let provider_headers = match settings.provider {
            EnrichProvider::Openai => [
                (openai::ORGANIZATION, &settings.organization),
                (openai::PROJECT, &settings.project),
            ],
        };
        for (name, value) in provider_headers {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }

        let deadline = tokio::time::Instant::now() + settings.timeout;
        let timeout = || {
            failed(
                EnrichResult::Timeout,
                format!(
                    "no answer from the {} API within enrich.timeout ({})",
                    self.display_name(),
                    crate::config::duration::written(settings.timeout)
                ),
            )
        };
        // Host and port only: an authority may carry credentials (user:password@).
        let host = request.uri().host().unwrap_or_default().to_owned();
        let port = request
            .uri()
            .port_u16()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let response = tokio::time::timeout_at(deadline, client().request(request))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| {
                let cause = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string());
                failed(
                    EnrichResult::Unreachable,
                    format!(
                        "the {} API at {host}{port} is unreachable: {cause}",
                        self.display_name()
                    ),
                )
            })?;
        let (parts, body) = response.into_parts();
        let limit = if parts.status.is_success() {
            MAX_OBJECT_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let body = match tokio::time::timeout_at(deadline, Limited::new(body, limit).collect())
            .await
        {
            Ok(Ok(collected)) => openai::Body::Whole(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => openai::Body::TooLarge,
            Ok(Err(_)) => openai::Body::Broken,
            Err(_) if parts.status.is_success() => return Err(timeout()),
            Err(_) => openai::Body::Broken,
        };
        let object = match settings.provider {
            EnrichProvider::Openai => openai::classify(
                parts.status,
                &parts.headers,
                body,
                &object.id,
                SystemTime::now(),
                MAX_OBJECT_BYTES,
            ),
        }?;
        Ok((parts.status.as_u16(), object))
    }
}

/// `Bearer <key>`, marked sensitive (HTTP/2 never indexes it). The text is zeroed once
/// the header holds its copy.
fn bearer(key: &str) -> HeaderValue {
    let text = Zeroizing::new(format!("Bearer {key}"));
    let mut value = HeaderValue::from_str(&text)
        .expect("enrich.api_key was checked printable ASCII when the config was read");
    value.set_sensitive(true);
    value
}

/// The pooled HTTP/1.1 + HTTP/2 client every enrich route shares, made on first use.
fn client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        forward::http_client(
            tls::upstream_client_config_for(&UpstreamTrust::System),
            CONNECT_TIMEOUT,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::policy::{BackoffPolicy, RetryOn};

    fn failure(result: EnrichResult, retry_after: Option<Duration>) -> FetchFailure {
        FetchFailure {
            result,
            status: None,
            retry_after,
            detail: String::new(),
        }
    }

    fn decide(failure: &FetchFailure, failed_before: u32, age: Duration) -> FetchVerdict {
        let retry_on = RetryOn::parse(&[]).unwrap();
        let policy = RetryPolicy {
            retry_on: &retry_on,
            max_attempts: 1,
            backoff: BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: false,
            },
            max_age: Duration::from_secs(3600),
        };
        after_failure(failure, &policy, failed_before, age, 0.5)
    }

    const YOUNG: Duration = Duration::from_secs(10);

    #[test]
    fn a_failed_fetch_backs_off_like_an_attempt_whatever_max_attempts_and_retry_on_say() {
        let throttled = failure(EnrichResult::ServerError, None);
        let delays: Vec<FetchVerdict> = (0..4).map(|n| decide(&throttled, n, YOUNG)).collect();
        let secs = |s| FetchVerdict::Retry {
            delay: Duration::from_secs(s),
        };
        assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8)]);
        assert_eq!(decide(&throttled, 40, YOUNG), secs(60));
    }

    #[test]
    fn retry_after_is_honoured_and_never_shortens_the_backoff() {
        let asked = |after| failure(EnrichResult::RateLimited, Some(after));
        assert_eq!(
            decide(&asked(Duration::from_secs(30)), 0, YOUNG),
            FetchVerdict::Retry {
                delay: Duration::from_secs(30)
            }
        );
        assert_eq!(
            decide(&asked(Duration::from_millis(10)), 2, YOUNG),
            FetchVerdict::Retry {
                delay: Duration::from_secs(4)
            }
        );
    }

    #[test]
    fn max_age_ends_the_retries_and_refusals_are_final_at_once() {
        let throttled = failure(EnrichResult::RateLimited, Some(Duration::from_secs(120)));
        assert_eq!(
            decide(&throttled, 0, Duration::from_secs(3500)),
            FetchVerdict::Final("queue.max_age reached")
        );
        for result in [EnrichResult::NotFound, EnrichResult::Refused] {
            assert_eq!(
                decide(&failure(result, None), 0, YOUNG),
                FetchVerdict::Final("not retried")
            );
        }
        let FetchVerdict::Final(why) = decide(&failure(EnrichResult::KeyRefused, None), 0, YOUNG)
        else {
            panic!("a refused key is retried");
        };
        assert!(why.contains("enrich.api_key"), "{why}");
    }

    #[test]
    fn the_enriched_body_holds_both_documents_byte_for_byte() {
        let event = br#"{"type":"response.completed","data":{"id":"resp_1"}}"#;
        let object = br#"{"id":"resp_1","output":[{"text":"caf\u00e9"}]}"#;
        let body = enriched_body(event, object);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["event"]["data"]["id"], "resp_1");
        assert_eq!(parsed["object"]["output"][0]["text"], "café");
        assert_eq!(
            body,
            [&br#"{"event":"#[..], event, br#","object":"#, object, b"}"].concat()
        );
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        let value = bearer("sk-test-1234");
        assert!(value.is_sensitive());
        assert_eq!(value, "Bearer sk-test-1234");
        assert_eq!(format!("{value:?}"), "Sensitive");
    }
}
