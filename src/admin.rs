//! The admin listener: `/metrics`, `/healthz` and `/readyz`, apart from webhook traffic
//! so it can stay on loopback or a private network.
//!
//! `/healthz` says the process serves requests; `/readyz` says it can do its job, which
//! needs the store: a load balancer should stop sending webhooks to an instance that
//! would answer them all 503.
//!
//! With `admin.token` set, every path but `admin.public_paths` needs
//! `Authorization: Bearer <token>` (compared in constant time); config validation
//! requires a token whenever the listener is not on loopback.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::config::AdminAuth;
use crate::metrics::Metrics;
use crate::reject::json_response;
use crate::store::Store;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    auth: AdminAuth,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, store: Arc<dyn Store>, auth: AdminAuth) -> Self {
        Admin {
            metrics,
            store,
            auth,
        }
    }

    pub async fn serve<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if !self.auth.allows(req.uri().path(), authorization) {
            self.metrics.admin_unauthorized();
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                r#"{"error":"unauthorized"}"#.to_owned(),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method_not_allowed"}"#.to_owned(),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
            "/readyz" => self.readiness().await,
            _ => json_response(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.to_owned()),
        }
    }

    async fn readiness(&self) -> Response<Full<Bytes>> {
        let store = match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("store did not answer within 2s".to_owned()),
        };
        match store {
            Ok(()) => json_response(StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
            Err(detail) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not_ready", "store": detail}).to_string(),
            ),
        }
    }
}
