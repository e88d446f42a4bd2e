//! Queue mode from the outside: `Deliveries`, the `/deliveries` API of a gateway's admin
//! listener (in-process or a child process), and `enqueue`, a post that must be queued.

use std::net::SocketAddr;

use bytes::Bytes;
use hookgate::sign::SignedRequest;
use http::{Method, Request};
use http_body_util::Full;

use super::{Gateway, PATH, Reply, TestClient, eventually, signed_event};

/// The `/deliveries` API of a gateway's admin listener (in-process or a child).
#[derive(Clone)]
pub struct Deliveries {
    client: TestClient,
    token: Option<String>,
}

impl Deliveries {
    pub fn of(gw: &Gateway) -> Deliveries {
        Deliveries::at(gw.admin_addr())
    }

    pub fn at(admin: SocketAddr) -> Deliveries {
        Deliveries {
            client: TestClient::new(format!("http://{admin}")),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Deliveries {
        self.token = Some(token.to_owned());
        self
    }

    pub fn base(&self) -> &str {
        self.client.base()
    }

    pub async fn request(&self, method: Method, path: &str) -> Reply {
        let mut builder = Request::builder().method(method).uri(self.client.url(path));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        self.client
            .send(
                builder
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request"),
            )
            .await
    }

    /// One record (`GET /deliveries/<id>`); panics unless it exists.
    pub async fn record(&self, id: &str) -> serde_json::Value {
        let reply = self
            .request(Method::GET, &format!("/deliveries/{id}"))
            .await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        reply.json()
    }

    /// Records matching a query such as `status=failed_final`.
    pub async fn list(&self, query: &str) -> Vec<serde_json::Value> {
        let reply = self
            .request(Method::GET, &format!("/deliveries?limit=1000&{query}"))
            .await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        reply.json()["deliveries"]
            .as_array()
            .expect("a list of deliveries")
            .clone()
    }

    /// Waits until the record of `id` is in `state`, and returns it.
    pub async fn wait_for_state(&self, id: &str, state: &str) -> serde_json::Value {
        eventually(format!("delivery {id} reaching {state}"), async || {
            let record = self.record(id).await;
            if record["state"] == state {
                Ok(record)
            } else {
                Err(format!("{record:#}"))
            }
        })
        .await
    }

    /// Waits until `n` records are in `state`.
    pub async fn wait_for_count(&self, state: &str, n: usize) {
        let query = format!("status={state}");
        eventually(format!("{n} deliveries reaching {state}"), async || {
            let found = self.list(&query).await.len();
            if found >= n {
                Ok(())
            } else {
                Err(format!("only {found} of them"))
            }
        })
        .await
    }
}

/// Posts a delivery and returns its `delivery_id`; panics unless it was queued (202).
pub async fn enqueue(client: &TestClient, delivery: &SignedRequest) -> String {
    let reply = client.post(PATH, delivery).await;
    assert_eq!(reply.status(), 202, "{reply:?}");
    assert_eq!(reply.json()["queued"], true, "{reply:?}");
    reply.json()["delivery_id"]
        .as_str()
        .expect("a delivery id")
        .to_owned()
}

/// Queues `n` fresh `response.completed` events from 16 senders at once, the senders
/// taking the two gateways in turn.
pub async fn enqueue_through_both(a: &Gateway, b: &Gateway, n: usize) {
    const SENDERS: usize = 16;
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let client = if sender % 2 == 0 {
                a.client()
            } else {
                b.client()
            };
            tokio::spawn(async move {
                for _ in 0..n / SENDERS + usize::from(sender < n % SENDERS) {
                    enqueue(&client, &signed_event("response.completed")).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
}
