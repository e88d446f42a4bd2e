//! Per-client rate limiting: GCRA with `requests_per_second` and `burst`, keyed by client
//! IP (IPv6 by its /64). The bucket state lives in the store; this module keys and maps.

use std::net::IpAddr;
use std::sync::Arc;

use crate::client_ip::rate_key;
use crate::reject::Reject;
use crate::store::{RateDecision, Store};

pub struct RateLimit {
    store: Arc<dyn Store>,
}

impl RateLimit {
    pub fn new(store: Arc<dyn Store>) -> Self {
        RateLimit { store }
    }

    pub async fn check(&self, client: IpAddr) -> Result<(), Reject> {
        match self.store.rate_check(rate_key(client)).await? {
            RateDecision::Allow => Ok(()),
            RateDecision::Deny { retry_after } => Err(Reject::RateLimited { retry_after }),
        }
    }
}
