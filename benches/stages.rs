//! Micro-benchmarks of the request path's stages, each on plain values: the source's
//! header checks, signature verification, event-type extraction, route matching (and a
//! route's conditions), a claim key bound to the body, a dedupe claim and the
//! upstream's headers. Run with `cargo bench --bench stages`; the load-level figures
//! come from `bench/run.sh`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use hookgate::config::{RateLimitSettings, Settings};
use hookgate::event::{JsonPointer, KeyBinding, type_at};
use hookgate::forward::{ForwardContext, upstream_headers};
use hookgate::sign::{SignInput, build};
use hookgate::store::Store;
use hookgate::store::memory::MemoryStore;
use http::{HeaderMap, HeaderValue};

fn main() {
    divan::main();
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings() -> Settings {
    with_routes(
        r#"
[[sources.routes]]
events = ["response.completed", "response.failed", "response.incomplete", "response.cancelled"]
upstream = "http://127.0.0.1:9001/responses"
[[sources.routes]]
events = ["batch.*"]
upstream = "http://127.0.0.1:9002/batch"
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:9003/other"
"#,
    )
}

/// One Standard Webhooks source with these `[[sources.routes]]`.
fn with_routes(routes: &str) -> Settings {
    hookgate::config::parse(
        &format!(
            r#"
[[sources]]
name = "openai"
path = "/webhooks/openai"
scheme = "standard-webhooks"
secrets = ["{SECRET}"]
{routes}"#
        ),
        "bench",
    )
    .expect("a valid config")
}

/// A signed OpenAI-shaped delivery whose body is about `size` bytes.
fn delivery(size: usize) -> (HeaderMap, Vec<u8>) {
    let pad = "x".repeat(size.saturating_sub(150));
    let data = format!(r#"{{"id":"resp_1","pad":"{pad}"}}"#);
    let signed = build(
        &SignInput {
            secret: SECRET,
            event_type: "response.completed",
            data: Some(&data),
            id: Some("msg_2Vq8x7bN3kLmP9rT4wYz"),
            timestamp: None,
        },
        SystemTime::now(),
    )
    .expect("signable");
    let mut headers = HeaderMap::new();
    // What a sender's HTTP client adds to the scheme's own headers.
    for (name, value) in [
        ("host", "hooks.example.com"),
        (
            "user-agent",
            "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)",
        ),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("content-length", "1024"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    for (name, value) in &signed.headers {
        headers.insert(name.clone(), HeaderValue::from_str(value).expect("ascii"));
    }
    (headers, signed.body.into_bytes())
}

#[divan::bench]
fn source_headers(bencher: divan::Bencher) {
    let source = settings().sources.remove(0);
    let (headers, _) = delivery(1024);
    bencher.bench(|| {
        hookgate::pipeline::check_read_headers(black_box(&headers), &source.reads).is_ok()
    });
}

#[divan::bench]
fn forwarded_headers(bencher: divan::Bencher) {
    let source = settings().sources.remove(0);
    let (headers, _) = delivery(1024);
    let name = HeaderValue::from_static("openai");
    bencher
        .with_inputs(|| headers.clone())
        .bench_values(|headers| {
            upstream_headers(
                headers,
                &ForwardContext {
                    forwarded_for: HeaderValue::from_static("203.0.113.7"),
                    tls: true,
                    proxied: false,
                    authority: None,
                    reads: &source.reads,
                    source: &name,
                    event_type: "response.completed",
                },
            )
        });
}

/// The claim key of a source whose delivery id is unsigned (GitHub): a SHA-256 of the body.
#[divan::bench(args = [1024, 65536])]
fn claim_key_bound_to_the_body(bencher: divan::Bencher, size: usize) {
    let (_, body) = delivery(size);
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| {
            KeyBinding::IdAndBody
                .claim_key(
                    "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                    "push",
                    black_box(&body),
                )
                .len()
        });
}

#[divan::bench(args = [1024, 65536])]
fn verify(bencher: divan::Bencher, size: usize) {
    let source = settings().sources.remove(0);
    let (headers, body) = delivery(size);
    let now = SystemTime::now();
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| {
            source
                .verifier
                .verify(black_box(&headers), black_box(&body), now)
        });
}

#[divan::bench(args = [1024, 65536])]
fn event_type(bencher: divan::Bencher, size: usize) {
    let pointer = JsonPointer::parse("/type").expect("valid");
    let (_, body) = delivery(size);
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| type_at(black_box(&body), &pointer).map(|t| t.len()));
}

#[divan::bench(args = ["response.failed", "batch.completed", "eval.run.succeeded"])]
fn route_match(bencher: divan::Bencher, event_type: &str) {
    let source = settings().sources.remove(0);
    bencher.bench(|| {
        source
            .routes
            .first_match(black_box(event_type), black_box(b"{}"))
            .map(|(i, _)| i)
    });
}

/// Routes with conditions, reached by the event type: the body is checked to be JSON
/// once and each pointer walked to its value once. `tenants` routes with one condition on
/// the same pointer, none matching (the last route takes the event), then one with two.
#[divan::bench(args = [(1, 1024), (1, 1048576), (20, 1024), (20, 1048576)])]
fn route_conditions(bencher: divan::Bencher, (tenants, size): (usize, usize)) {
    let mut routes = String::new();
    for t in 0..tenants {
        routes.push_str(&format!(
            "[[sources.routes]]\nevents = [\"response.completed\"]\n\
             match = [{{ pointer = \"/data/id\", equals = \"tenant_{t}\" }}]\n\
             upstream = \"http://127.0.0.1:9001/t{t}\"\n"
        ));
    }
    routes.push_str(
        r#"[[sources.routes]]
events = ["response.completed"]
match = [{ pointer = "/data/id", equals = "resp_1" }, { pointer = "/data/pad", prefix = "x" }]
upstream = "http://127.0.0.1:9001/acme"
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:9003/other"
"#,
    );
    let source = with_routes(&routes).sources.remove(0);
    let (_, body) = delivery(size);
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| {
            source
                .routes
                .first_match(black_box("response.completed"), black_box(&body))
                .map(|(i, _)| i)
        });
}

#[divan::bench]
fn dedupe_claim_and_commit(bencher: divan::Bencher) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let store = runtime.block_on(async {
        MemoryStore::new(RateLimitSettings {
            requests_per_second: 1e6,
            burst: 1_000_000,
        })
    });
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        let key = format!("openai:msg_bench_{n}");
        runtime.block_on(async {
            store
                .claim(&key, "token", Duration::from_secs(15))
                .await
                .ok();
            store
                .commit(&key, "token", Duration::from_secs(3600))
                .await
                .ok()
        })
    });
}
