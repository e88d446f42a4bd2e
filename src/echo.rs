//! `hookgate echo`: a tiny upstream for trying hookgate out. One line per request on
//! stdout (path, event type, webhook-id, body size) and a fixed status.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::event::{JsonPointer, type_at};
use crate::forward::X_HOOKGATE_EVENT_TYPE;
use crate::reject::json_response;
use crate::server::{accept_loop, http_builder};

/// Serves until `stop` turns true.
pub async fn run(
    listen: SocketAddr,
    status: StatusCode,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!(
        "echo: listening on http://{}, answering {status}",
        listener.local_addr()?
    );
    let builder = http_builder(Duration::from_secs(30));
    accept_loop(
        listener,
        builder,
        stop,
        Duration::from_secs(5),
        move |req, _peer| answer(req, status),
    )
    .await;
    Ok(())
}

async fn answer(req: Request<Incoming>, status: StatusCode) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let event_type = header(X_HOOKGATE_EVENT_TYPE.as_str())
        .or_else(|| {
            let pointer = JsonPointer::parse("/type").expect("valid pointer");
            type_at(&body, &pointer).ok().map(|t| t.into_owned())
        })
        .unwrap_or_else(|| "-".to_owned());
    println!(
        "{} {} type={event_type} webhook-id={} bytes={}",
        parts.method,
        parts.uri.path(),
        header("webhook-id").as_deref().unwrap_or("-"),
        body.len()
    );
    json_response(status, r#"{"received":true}"#.to_owned())
}
