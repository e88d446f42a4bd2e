//! hookgate's integration tests: one binary, the real server on loopback sockets.

mod support;

mod abuse;
mod admin;
mod bounds;
mod breaker;
mod config_cli;
mod connections;
mod console;
mod contract;
mod dedupe;
mod delivery_rate;
mod enrich;
mod examples;
mod fanout;
mod forwarding;
mod guidance;
mod integrity;
mod matching;
mod metrics;
mod packaging;
mod partitions;
mod postgres;
mod queue;
mod ratelimit;
mod redis_cluster;
mod redis_store;
mod rejects;
mod reload;
mod schemes;
mod shutdown;
mod telemetry;
mod tls;
mod tls_trust;
mod upstream;
mod verification;
