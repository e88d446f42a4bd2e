//! hookgate's integration tests: one binary, the real server on loopback sockets.

mod redis_support;
mod support;

mod config_cli;
mod dedupe;
mod examples;
mod forwarding;
mod metrics;
mod queue;
mod ratelimit;
mod redis_cluster;
mod redis_store;
mod rejects;
mod shutdown;
mod tls;
mod upstream;
mod verification;
