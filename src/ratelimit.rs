//! Per-client rate limiting: GCRA with `requests_per_second` and `burst`, keyed by client
//! IP (IPv6 by its /64). The bucket state lives in the store; this module keys the
//! client, maps the decision to a `Reject`, and applies `store.on_error`.

use std::net::IpAddr;
use std::sync::Arc;

use crate::client_ip::rate_key;
use crate::config::OnError;
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::store::{RateDecision, Store};

pub struct RateLimit {
    store: Arc<dyn Store>,
    on_error: OnError,
    metrics: Arc<Metrics>,
}

impl RateLimit {
    pub fn new(store: Arc<dyn Store>, on_error: OnError, metrics: Arc<Metrics>) -> Self {
        RateLimit {
            store,
            on_error,
            metrics,
        }
    }

    pub async fn check(&self, client: IpAddr) -> Result<(), Reject> {
        match self.store.rate_check(rate_key(client)).await {
            Ok(RateDecision::Allow) => Ok(()),
            Ok(RateDecision::Deny { retry_after }) => Err(Reject::RateLimited { retry_after }),
            Err(_) if self.on_error == OnError::Allow => {
                self.metrics.store_fail_open("rate_check");
                Ok(())
            }
            Err(e) => Err(Reject::Store(e)),
        }
    }
}
