//! What every integration test stands on, one file per helper:
//!
//! | file | what it holds |
//! | --- | --- |
//! | `upstream.rs` | `Upstream`: a real HTTP server that records what it receives and answers by script |
//! | `config.rs` | `config()`: config text built from a few calls; `source_block` (the minimal `[[sources]]` fixture); `ConfigFile` |
//! | `gateway.rs` | `Gateway`: hookgate started in this process on `127.0.0.1:0`, with `TestClient` and `Reply` |
//! | `process.rs` | `GatewayProcess`: `hookgate serve` as a child process; `hookgate_cli` for one-shot commands |
//! | `deliveries.rs` | `Deliveries`: the admin API of queue mode; `enqueue` |
//! | `copies.rs` | `post_at_once`, `assert_forwarded_exactly_once`: many requests in the same instant |
//! | `signing.rs` | signed deliveries (`signed_event`, `signed_raw`) and `Edit` to break them |
//! | `tls.rs` | dev certificates, https and mTLS clients, a test CA, an https upstream |
//! | `postgres_server.rs` | `PostgresServer`: a real PostgreSQL (`initdb` + `pg_ctl`) the tests start |
//! | `redis_server.rs` | `RedisServer` and `RedisCluster`: real `redis-server`s the test starts |
//! | `store.rs` | `TestStore` and `on_each_store!`: one test body on the in-memory store and on Redis |
//! | `metrics.rs` | `Scrape`: one read of `/metrics` |
//! | `collector.rs` | `Collector`: a real OTLP/HTTP receiver decoding the spans hookgate exports |
//! | `openai_api.rs` | `OpenAiApi`: a stand-in of the OpenAI API (its wire format), for `enrich` routes |
//! | `raw.rs` | raw connections from chosen loopback addresses, for the hardening tests |
//! | `eventually.rs` | `eventually`: the one way a test waits for a condition |
//! | `browser.rs` | `Browser`: Debian's Chromium through `chromedriver`, for the console's pages |
//! | `skips.rs` | tests that cannot run here say so (or fail, under `HOOKGATE_REQUIRE_*`) |
//!
//! Everything talks over real loopback sockets; nothing is mocked but the OpenAI API,
//! which cannot be reached from here (its stand-in speaks its wire format). Waiting is done on
//! conditions (a watch channel, `eventually`), never on a guessed sleep.

mod browser;
mod collector;
mod config;
mod copies;
mod delaying_proxy;
mod deliveries;
mod eventually;
mod gateway;
mod metrics;
mod openai_api;
mod postgres_server;
mod process;
mod raw;
mod redis_server;
mod signing;
pub mod skips;
mod store;
mod tls;
mod upstream;

use std::time::Duration;

pub use browser::*;
pub use collector::*;
pub use config::*;
pub use copies::*;
pub use delaying_proxy::*;
pub use deliveries::*;
pub use eventually::*;
pub use gateway::*;
pub use metrics::*;
pub use openai_api::*;
pub use postgres_server::*;
pub use process::*;
pub use raw::*;
pub use redis_server::*;
pub use signing::*;
pub(crate) use store::on_each_store;
pub use store::*;
pub use tls::*;
pub use upstream::*;

/// How long any single wait in a test may take before it fails. Generous on purpose:
/// a loaded CI machine must never turn a correct gateway into a red test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The signing secret of the default source (base64 of 32 bytes).
pub const SECRET: &str = "whsec_aG9va2dhdGUtaW50ZWdyYXRpb24tdGVzdC1zZWNyZXQh";
/// A second, unrelated secret: for rotation and wrong-secret cases.
pub const OTHER_SECRET: &str = "whsec_c29tZWJvZHktZWxzZXMtc2VjcmV0LWZvci10ZXN0cyE=";

/// The default source's name and path.
pub const SOURCE: &str = "openai";
pub const PATH: &str = "/webhooks/openai";
