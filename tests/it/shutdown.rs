//! Graceful shutdown: stop accepting at once, let the requests already inside finish.

use std::io::ErrorKind;

use tokio::net::TcpStream;

use crate::support::*;

async fn refuses_connections(gw: &Gateway) -> bool {
    matches!(
        TcpStream::connect(gw.addr()).await,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

#[tokio::test]
async fn a_delivery_in_flight_at_shutdown_completes_and_new_connections_are_refused() {
    let upstream = Upstream::with(Answer::held()).await;
    let mut gw = Gateway::start(config().route("*", &upstream)).await;
    let in_flight = tokio::spawn({
        let client = gw.client();
        async move { client.post(PATH, &signed_event("response.completed")).await }
    });
    upstream.wait_for(1).await;

    let stopping = gw.begin_shutdown();
    eventually("the listener closes", || refuses_connections(&gw)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the open request"
    );
    upstream.release();

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status(), 200, "{reply:?}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("shutdown finishes once the request is answered")
        .unwrap();
    assert!(refuses_connections(&gw).await);
    assert_eq!(upstream.received().len(), 1);
}
