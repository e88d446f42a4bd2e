//! `OpenAiApi`: a stand-in of the OpenAI API, which cannot be reached from here, on
//! `127.0.0.1:0`. It speaks the real API's wire format for the retrieve operations an
//! `enrich` route uses (<https://developers.openai.com/api/reference>):
//! `GET /v1/responses/{id}`, `/v1/batches/{id}` and `/v1/fine_tuning/jobs/{id}` answer
//! the stored object's JSON when `Authorization: Bearer <key>` carries its key, and the
//! API's error JSON otherwise (`401 invalid_api_key`, quoting part of the key as the real
//! one does; `404` for an id it does not hold), each with an `x-request-id`. A test can
//! script the next answers: 429 with `Retry-After`, 500, 401, 404, or no answer at all.
//! Every request is recorded.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::upstream::serve_http;

/// The key the stand-in accepts unless told otherwise.
pub const OPENAI_KEY: &str = "sk-proj-hookgateStandInKey0123456789abcdefXYZ";

/// A scripted answer, used for one request instead of the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAnswer {
    /// 429 `rate_limit_exceeded` with `Retry-After: <seconds>`.
    RateLimited { retry_after_secs: u64 },
    /// 500 `server_error`.
    ServerError,
    /// 401 `invalid_api_key`, whatever key was sent.
    KeyRefused,
    /// 404, whatever the id.
    NotFound,
    /// Headers never come: the request hangs until the client gives up.
    Hang,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: tokio::time::Instant,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("text"))
    }
}

struct State {
    key: String,
    /// By path under `/v1`: `/responses/resp_1`.
    objects: Mutex<HashMap<String, String>>,
    script: Mutex<VecDeque<ApiAnswer>>,
    received: Mutex<Vec<ApiRequest>>,
    next_request_id: AtomicU64,
}

/// The stand-in API; `api_base()` is what an `enrich` route points at.
pub struct OpenAiApi {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl OpenAiApi {
    /// Accepts `OPENAI_KEY`.
    pub async fn start() -> OpenAiApi {
        OpenAiApi::with_key(OPENAI_KEY).await
    }

    pub async fn with_key(key: &str) -> OpenAiApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API stand-in");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(State {
            key: key.to_owned(),
            objects: Mutex::new(HashMap::new()),
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            next_request_id: AtomicU64::new(1),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        OpenAiApi { addr, state, task }
    }

    /// `api_base` for the route: `http://127.0.0.1:<port>/v1`.
    pub fn api_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Serves `object` (its JSON) at `path` under `/v1`, for example `/responses/resp_1`.
    pub fn store(&self, path: &str, object: &str) {
        self.state
            .objects
            .lock()
            .expect("not poisoned")
            .insert(path.to_owned(), object.to_owned());
    }

    /// The next requests get these answers, in order; then stored objects again.
    pub fn then(&self, answers: impl IntoIterator<Item = ApiAnswer>) {
        self.state
            .script
            .lock()
            .expect("not poisoned")
            .extend(answers);
    }

    pub fn received(&self) -> Vec<ApiRequest> {
        self.state.received.lock().expect("not poisoned").clone()
    }
}

impl Drop for OpenAiApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    serve_http(listener, move |req| {
        let state = state.clone();
        async move { answer(req, &state).await }
    })
    .await
}

async fn answer(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    {
        let mut received = state.received.lock().expect("not poisoned");
        received.push(ApiRequest {
            method: parts.method.clone(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body,
            at: tokio::time::Instant::now(),
        });
    }
    let request_id = format!(
        "req_{:032x}",
        state.next_request_id.fetch_add(1, Ordering::Relaxed)
    );
    let scripted = state.script.lock().expect("not poisoned").pop_front();
    let presented = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let id = path.rsplit('/').next().unwrap_or("").to_owned();
    let stored = path
        .strip_prefix("/v1")
        .and_then(|p| state.objects.lock().expect("not poisoned").get(p).cloned());
    let (status, body) = match scripted {
        Some(ApiAnswer::Hang) => std::future::pending().await,
        Some(ApiAnswer::RateLimited { retry_after_secs }) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for gpt-5 in organization org-standin on requests per min (RPM): Limit 3, Used 3, Requested 1.",
                "requests",
                Some("rate_limit_exceeded"),
                &request_id,
            );
            response.headers_mut().insert(
                "retry-after",
                retry_after_secs.to_string().parse().expect("digits"),
            );
            response
                .headers_mut()
                .insert("x-ratelimit-limit-requests", "3".parse().expect("digits"));
            return response;
        }
        Some(ApiAnswer::ServerError) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                &request_id,
            );
        }
        Some(ApiAnswer::KeyRefused) => return key_refused(presented, &request_id),
        Some(ApiAnswer::NotFound) => return not_found(&path, &id, &request_id),
        None if presented != state.key => return key_refused(presented, &request_id),
        None if parts.method != Method::GET => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed.",
                "invalid_request_error",
                None,
                &request_id,
            );
        }
        None => match stored {
            Some(object) => (StatusCode::OK, object),
            None => return not_found(&path, &id, &request_id),
        },
    };
    json(status, body, &request_id)
}

fn json(status: StatusCode, body: String, request_id: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .header("openai-processing-ms", "12")
        .header("openai-version", "2020-10-01")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// The API's error shape: `{"error": {"message", "type", "param", "code"}}`.
fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    json(status, body.to_string(), request_id)
}

/// As the real API words it: the key's start and end, the rest starred.
fn key_refused(presented: &str, request_id: &str) -> Response<Full<Bytes>> {
    let shown = if presented.len() > 8 {
        format!(
            "{}{}{}",
            &presented[..3],
            "*".repeat(presented.len() - 7),
            &presented[presented.len() - 4..]
        )
    } else {
        presented.to_owned()
    };
    error(
        StatusCode::UNAUTHORIZED,
        &format!(
            "Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."
        ),
        "invalid_request_error",
        Some("invalid_api_key"),
        request_id,
    )
}

fn not_found(path: &str, id: &str, request_id: &str) -> Response<Full<Bytes>> {
    let what = match path.split('/').nth(2) {
        Some("responses") => "Response",
        Some("batches") => "Batch",
        Some("fine_tuning") => "Fine-tuning job",
        _ => "Object",
    };
    error(
        StatusCode::NOT_FOUND,
        &format!("{what} with id '{id}' not found."),
        "invalid_request_error",
        None,
        request_id,
    )
}

/// A background response as `GET /v1/responses/{id}` returns it.
pub fn response_object(id: &str) -> String {
    serde_json::json!({
        "id": id,
        "object": "response",
        "created_at": 1_741_476_542,
        "status": "completed",
        "background": true,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "model": "gpt-5-2025-08-07",
        "output": [{
            "type": "message",
            "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c7e7b0d2",
            "status": "completed",
            "role": "assistant",
            "content": [{
                "type": "output_text",
                "text": "In a peaceful grove beneath a silver moon, a unicorn named Lumina discovered a hidden pool.",
                "annotations": []
            }]
        }],
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "store": true,
        "temperature": 1.0,
        "text": { "format": { "type": "text" } },
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 36,
            "input_tokens_details": { "cached_tokens": 0 },
            "output_tokens": 87,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": 123
        },
        "user": null,
        "metadata": { "ticket": "T-1042" }
    })
    .to_string()
}

/// A batch as `GET /v1/batches/{id}` returns it.
pub fn batch_object(id: &str) -> String {
    serde_json::json!({
        "id": id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": null,
        "input_file_id": "file-abc123",
        "completion_window": "24h",
        "status": "completed",
        "output_file_id": "file-cvaTdG",
        "error_file_id": "file-HOWS94",
        "created_at": 1_711_471_533,
        "in_progress_at": 1_711_471_538,
        "expires_at": 1_711_557_933,
        "finalizing_at": 1_711_493_133,
        "completed_at": 1_711_493_163,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": { "total": 100, "completed": 95, "failed": 5 },
        "metadata": { "customer_id": "user_123456789" }
    })
    .to_string()
}

/// A fine-tuning job as `GET /v1/fine_tuning/jobs/{id}` returns it.
pub fn fine_tuning_job_object(id: &str) -> String {
    serde_json::json!({
        "object": "fine_tuning.job",
        "id": id,
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1_721_764_800,
        "finished_at": 1_721_765_700,
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:org-standin::9kZRy1Df",
        "organization_id": "org-standin",
        "result_files": ["file-QW3Xm5w6pFh2sPbmVfHYZ1yD"],
        "status": "succeeded",
        "validation_file": null,
        "training_file": "file-abc123",
        "hyperparameters": { "n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 1.8 },
        "trained_tokens": 5768,
        "integrations": [],
        "seed": 0,
        "estimated_finish": null,
        "method": { "type": "supervised" }
    })
    .to_string()
}
