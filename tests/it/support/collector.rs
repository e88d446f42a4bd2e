//! `Collector`: a real OTLP/HTTP receiver on `127.0.0.1:0`. It takes what hookgate POSTs
//! to `/v1/traces`, decodes each `ExportTraceServiceRequest` with the OpenTelemetry
//! protocol crate (prost), and keeps the spans, flattened, with the headers each export
//! came with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{eventually, upstream::serve_http};

/// One received span, its ids in lower-case hex as W3C `traceparent` writes them.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `opentelemetry_proto`'s `SpanKind`: 1 internal, 2 server, 3 client, 5 consumer.
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
    /// The `trace_state` of each link.
    pub link_states: Vec<String>,
    /// 2 = error.
    pub status_code: i32,
    pub status_message: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// `service.name` of the resource it came with.
    pub service: String,
}

impl CollectedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// What the upstream's `traceparent` is when this span made the request.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<CollectedSpan>,
    export_headers: Vec<HeaderMap>,
}

pub struct Collector {
    url: String,
    received: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let received = Arc::new(Mutex::new(Received::default()));
        let task = tokio::spawn(serve_http(listener, {
            let received = received.clone();
            move |req| {
                let received = received.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let status = match (parts.uri.path(), decode(&body)) {
                        ("/v1/traces", Some(spans)) => {
                            let mut r = received.lock().expect("not poisoned");
                            r.spans.extend(spans);
                            r.export_headers.push(parts.headers);
                            StatusCode::OK
                        }
                        _ => StatusCode::BAD_REQUEST,
                    };
                    let mut response = Response::new(Full::new(Bytes::from(
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )));
                    *response.status_mut() = status;
                    response
                }
            }
        }));
        Collector {
            url,
            received,
            task,
        }
    }

    /// `otlp_endpoint` for the config.
    pub fn endpoint(&self) -> &str {
        &self.url
    }

    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.received.lock().expect("not poisoned").spans.clone()
    }

    /// The headers of every export request so far.
    pub fn export_headers(&self) -> Vec<HeaderMap> {
        self.received
            .lock()
            .expect("not poisoned")
            .export_headers
            .clone()
    }

    /// Waits until `count` spans named `name` have arrived; returns every span so far.
    pub async fn wait_for(&self, name: &str, count: usize) -> Vec<CollectedSpan> {
        eventually(
            format!("{count} {name} spans at the collector"),
            async || {
                let spans = self.spans();
                let seen = spans.iter().filter(|s| s.name == name).count();
                if seen >= count {
                    Ok(spans)
                } else {
                    Err(format!("{seen} so far"))
                }
            },
        )
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `[telemetry]` lines for `config().set(...)`: export to `endpoint` every 20 ms.
pub fn telemetry(config: super::Config, endpoint: &str) -> super::Config {
    config
        .set("telemetry", "otlp_endpoint", &format!("{endpoint:?}"))
        .set("telemetry", "export_interval", "\"20ms\"")
}

fn decode(body: &[u8]) -> Option<Vec<CollectedSpan>> {
    let request = ExportTraceServiceRequest::decode(body).ok()?;
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .map(text)
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(CollectedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    link_states: span.links.iter().map(|l| l.trace_state.clone()).collect(),
                    status_code: span.status.as_ref().map(|s| s.code).unwrap_or_default(),
                    status_message: span.status.map(|s| s.message).unwrap_or_default(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    service: service.clone(),
                });
            }
        }
    }
    Some(out)
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
