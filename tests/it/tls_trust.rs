//! Whom TLS trusts: client certificates on the listener (`server.tls.client_ca`), and
//! https upstreams (`[upstream_tls]`: system roots, a CA file, or, for development only,
//! nothing).

use http::Version;

use crate::support::*;

async fn mtls_gateway(cert: &DevCert, ca: &TestCa, upstream: &Upstream) -> Gateway {
    Gateway::start(
        config()
            .tls(cert)
            .set(
                "server.tls",
                "client_ca",
                &format!("{:?}", ca.ca_file.display().to_string()),
            )
            .route("*", upstream),
    )
    .await
}

fn url(gw: &Gateway) -> String {
    format!("https://localhost:{}{PATH}", gw.addr().port())
}

#[tokio::test]
async fn mtls_accepts_a_client_certificate_issued_by_the_client_ca() {
    let (cert, ca, upstream) = (
        DevCert::generate(),
        TestCa::generate("senders"),
        Upstream::start().await,
    );
    let gw = mtls_gateway(&cert, &ca, &upstream).await;
    let client = mtls_client(&cert.pem, Some(ca.issue_client("sender.example")));

    let reply = exchange(
        &client,
        delivery_request(&url(&gw), &signed_event("response.completed")),
    )
    .await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let (cert, ca, upstream) = (
        DevCert::generate(),
        TestCa::generate("senders"),
        Upstream::start().await,
    );
    let gw = mtls_gateway(&cert, &ca, &upstream).await;
    let client = mtls_client(&cert.pem, None);

    let result = client
        .request(delivery_request(
            &url(&gw),
            &signed_event("response.completed"),
        ))
        .await;

    assert!(result.is_err(), "{result:?}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn mtls_refuses_a_client_certificate_from_another_ca() {
    let (cert, ca, upstream) = (
        DevCert::generate(),
        TestCa::generate("senders"),
        Upstream::start().await,
    );
    let stranger = TestCa::generate("somebody else");
    let gw = mtls_gateway(&cert, &ca, &upstream).await;
    let client = mtls_client(&cert.pem, Some(stranger.issue_client("sender.example")));

    let result = client
        .request(delivery_request(
            &url(&gw),
            &signed_event("response.completed"),
        ))
        .await;

    assert!(result.is_err(), "{result:?}");
    assert!(upstream.received().is_empty());
    eventually("the failed handshake is counted", || async {
        gw.metrics().await.value(
            r#"hookgate_connections_closed_total{listener="server",reason="tls_handshake_failed"}"#,
        ) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_tls_1_2_client_is_served() {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().tls(&cert).route("*", &upstream)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls::pki_types::pem::PemObject::pem_slice_iter(&cert.pem).map(Result::unwrap),
    );
    let mut tls = rustls::ClientConfig::builder_with_provider(hookgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_rustls::HttpsConnector::from((http, tls)));

    let reply = exchange(
        &client,
        delivery_request(&url(&gw), &signed_event("response.completed")),
    )
    .await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.version(), Version::HTTP_11);
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_the_configured_ca_file() {
    let upstream_cert = DevCert::generate();
    let upstream = TlsUpstream::start(&upstream_cert).await;
    let gw = Gateway::start(
        config()
            .set(
                "upstream_tls",
                "ca_file",
                &format!("{:?}", upstream_cert.cert.display().to_string()),
            )
            .route("*", upstream.url()),
    )
    .await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.received(), 1);
}

#[tokio::test]
async fn an_https_upstream_whose_certificate_no_trusted_root_issued_is_answered_502() {
    let upstream_cert = DevCert::generate();
    let upstream = TlsUpstream::start(&upstream_cert).await;
    let gw = Gateway::start(config().route("*", upstream.url())).await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 502, "{reply:?}");
    assert_eq!(reply.error(), "upstream_unreachable");
    assert_eq!(upstream.received(), 0);
}

#[tokio::test]
async fn insecure_skip_verify_forwards_to_an_upstream_with_any_certificate() {
    let upstream_cert = DevCert::generate();
    let upstream = TlsUpstream::start(&upstream_cert).await;
    let gw = Gateway::start(
        config()
            .set("upstream_tls", "insecure_skip_verify", "true")
            .route("*", upstream.url()),
    )
    .await;

    let reply = gw.post(PATH, &signed_event("response.completed")).await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(upstream.received(), 1);
}

/// A Redis served over TLS with a certificate of a private CA: `store.ca_file` trusts
/// it (the key was accepted with Redis and ignored, and every request then timed out
/// against a handshake that failed); without it, the bundled roots refuse the server.
#[tokio::test]
async fn a_redis_over_tls_is_verified_against_store_ca_file() {
    let ca = TestCa::generate("hookgate test Redis CA");
    let (cert, key) = ca.issue_server_files("localhost");
    let Some(redis) = RedisServer::start_tls_or_skip(cert, key).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let on_redis = |ca_file: Option<&std::path::Path>| {
        let config = config()
            .set("store", "redis_url", &format!("{:?}", redis.tls_url()))
            .set("store", "timeout", r#""500ms""#)
            .route("*", &upstream);
        match ca_file {
            Some(path) => config.set(
                "store",
                "ca_file",
                &format!("{:?}", path.display().to_string()),
            ),
            None => config,
        }
    };

    let trusted = Gateway::start(on_redis(Some(&ca.ca_file))).await;
    let reply = trusted
        .post(PATH, &signed_event("response.completed"))
        .await;
    assert!(reply.forwarded(), "{reply:?}");
    let untrusted = Gateway::start(on_redis(None)).await;
    let reply = untrusted
        .post(PATH, &signed_event("response.completed"))
        .await;
    assert_eq!(reply.status(), 503, "{reply:?}");
    assert_eq!(reply.error(), "store_unavailable");
    assert_eq!(upstream.received().len(), 1);
}

#[test]
fn store_ca_file_with_a_plain_redis_url_is_refused() {
    let text = config()
        .set("store", "redis_url", r#""redis://127.0.0.1:6390""#)
        .set("store", "ca_file", r#""/etc/hookgate/ca.pem""#)
        .route("*", NOWHERE)
        .to_string();
    let e = hookgate::config::parse(&text, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("store.ca_file") && e.contains("rediss://"),
        "{e}"
    );
}

/// A full chain as `store.ca_file` for Redis trusts its CAs only, as for upstreams and
/// PostgreSQL: the file went to redis-rs as written, and the leaf was an anchor too.
#[test]
fn a_full_chain_as_store_ca_file_trusts_only_its_ca_for_redis() {
    let ca = TestCa::generate("hookgate test Redis CA");
    let (leaf, _key) = ca.issue_server_files("localhost");
    let chain = leaf.with_file_name("chain.pem");
    let mut text_of_chain = std::fs::read(&leaf).unwrap();
    text_of_chain.extend(std::fs::read(&ca.ca_file).unwrap());
    std::fs::write(&chain, text_of_chain).unwrap();
    let text = config()
        .set("store", "redis_url", r#""rediss://localhost:6390""#)
        .set(
            "store",
            "ca_file",
            &format!("{:?}", chain.display().to_string()),
        )
        .route("*", NOWHERE)
        .to_string();

    let settings = hookgate::config::parse(&text, "t.toml").expect("a full chain");

    let hookgate::config::StoreBackend::Redis(redis) = &settings.store.backend else {
        panic!("a Redis store");
    };
    use rustls_pki_types::pem::PemObject as _;
    let trusted: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(redis.ca.as_deref().unwrap())
            .collect::<Result<_, _>>()
            .unwrap();
    let ca_only = hookgate::tls::load_ca_file(&ca.ca_file).unwrap();
    assert_eq!(trusted, ca_only);
}

/// A certificate the CA issued, given as `client_ca` by mistake for the CA itself: it
/// verifies no client, and was accepted, after which every handshake failed. Refused,
/// naming the CA to put there instead; a pinned self-signed certificate stays allowed.
#[test]
fn a_client_ca_holding_a_certificate_the_ca_issued_is_refused() {
    let (cert, ca) = (DevCert::generate(), TestCa::generate("senders"));
    let (leaf, _key) = ca.issue_server_files("leaf.example");
    let text = |client_ca: &std::path::Path| {
        config()
            .tls(&cert)
            .set(
                "server.tls",
                "client_ca",
                &format!("{:?}", client_ca.display().to_string()),
            )
            .route("*", NOWHERE)
            .to_string()
    };

    let refused = hookgate::config::parse(&text(&leaf), "test.toml").unwrap_err();
    let refused = refused.to_string();
    assert!(refused.contains("is not a CA"), "{refused}");
    assert!(refused.contains("CN=senders"), "{refused}");
    hookgate::config::parse(&text(&ca.ca_file), "test.toml").expect("the CA itself");
    // A full chain, the leaf then its CA, works: the CA verifies.
    let chain = leaf.with_file_name("chain.pem");
    let mut text_of_chain = std::fs::read(&leaf).unwrap();
    text_of_chain.extend(std::fs::read(&ca.ca_file).unwrap());
    std::fs::write(&chain, text_of_chain).unwrap();
    hookgate::config::parse(&text(&chain), "test.toml").expect("a full chain");
    // Of which only the CA is trusted: a leaf as an anchor would vouch for anything its
    // key signs.
    assert_eq!(hookgate::tls::load_ca_file(&chain).unwrap().len(), 1);
    hookgate::config::parse(&text(&cert.cert), "test.toml").expect("a self-signed pin");
}
