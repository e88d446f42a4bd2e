//! TLS end to end with a certificate generated for this test: the client trusts exactly
//! that certificate, and both HTTP versions are negotiated by ALPN.

use http::Version;

use crate::support::*;

async fn post_over(version: Version) {
    let cert = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().tls(&cert).route("*", &upstream)).await;
    let client = https_client(&cert.pem, version);
    let url = format!("https://127.0.0.1:{}{PATH}", gw.addr().port());

    let reply = exchange(
        &client,
        delivery_request(&url, &signed_event("response.completed")),
    )
    .await;

    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.version(), version);
    assert_eq!(upstream.only().header("x-forwarded-proto"), "https");
}

#[tokio::test]
async fn a_delivery_over_tls_with_http_1_1_is_forwarded() {
    post_over(Version::HTTP_11).await;
}

#[tokio::test]
async fn a_delivery_over_tls_with_http_2_is_forwarded() {
    post_over(Version::HTTP_2).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused_the_handshake() {
    let cert = DevCert::generate();
    let stranger = DevCert::generate();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(config().tls(&cert).route("*", &upstream)).await;
    let client = https_client(&stranger.pem, Version::HTTP_11);
    let url = format!("https://127.0.0.1:{}{PATH}", gw.addr().port());

    let result = client
        .request(delivery_request(&url, &signed_event("response.completed")))
        .await;

    assert!(result.is_err(), "{result:?}");
    assert!(upstream.received().is_empty());
}
