//! What the hardening tests need beyond `support`: raw connections from a chosen
//! loopback address, a test certificate authority with client certificates (mTLS), and
//! an https upstream. (The gateway as a separate process is `support::GatewayProcess`.)

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::support::*;

// ---------------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------------

/// A TCP connection to `to` from `from` (any 127.x.y.z address works on Linux loopback),
/// so one test can play several client IPs.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: IpAddr = from.parse().expect("a loopback address");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

/// Reads until the peer closes the connection (end of file or reset) and returns what
/// was read and when it ended; panics after `PATIENCE`.
pub async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Instant::now()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the gateway kept the connection open for {PATIENCE:?}"),
        }
    }
}

/// Writes a request head, and nothing after it.
pub async fn send_head(stream: &mut TcpStream, head: &str) {
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the head");
}

/// A delivery's request head (its body is not sent), with `Content-Length` as declared.
pub fn delivery_head(delivery: &hookgate::sign::SignedRequest) -> String {
    let mut head = format!("POST {PATH} HTTP/1.1\r\nhost: gateway\r\n");
    for (name, value) in &delivery.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", delivery.body.len()));
    head
}

/// POSTs `delivery` over a fresh HTTP/1.1 connection from the loopback address `from`.
pub async fn post_from(
    from: &str,
    gateway: SocketAddr,
    delivery: &hookgate::sign::SignedRequest,
) -> (http::StatusCode, String) {
    let stream = connect_from(from, gateway).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = delivery_request(PATH, delivery);
    let (parts, body) = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers")
        .into_parts();
    let body = body.collect().await.expect("read the body").to_bytes();
    (parts.status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------

/// A certificate authority generated for one test, which issues client certificates;
/// its certificate is written to `ca_file` for `server.tls.client_ca`.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A client certificate and its key, as rustls wants them.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn generate(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a CA certificate");
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca_file = dir.path().join("client-ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write the CA");
        TestCa {
            _dir: dir,
            ca_file,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate for `name`, issued by this CA.
    pub fn issue_client(&self, name: &str) -> ClientIdentity {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("a client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a client certificate");
        ClientIdentity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .expect("the key as PEM"),
        }
    }
}

/// An HTTP/1.1 https client trusting `server_pem`, presenting `identity` when given.
pub fn mtls_client(server_pem: &[u8], identity: Option<ClientIdentity>) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(hookgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .expect("a usable client certificate"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    LegacyClient::builder(TokioExecutor::new())
        .build(hyper_rustls::HttpsConnector::from((http, tls)))
}

// ---------------------------------------------------------------------------------
// An https upstream
// ---------------------------------------------------------------------------------

/// An upstream behind TLS with `cert`, answering `200 {"ok":true}` and counting.
pub struct TlsUpstream {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    pub async fn start(cert: &DevCert) -> TlsUpstream {
        let chain = vec![CertificateDer::from_pem_slice(&cert.pem).expect("the cert")];
        let key = PrivateKeyDer::from_pem_file(&cert.key).expect("the key");
        let config = hookgate::tls::server_config(chain, key, None).expect("a server config");
        let acceptor = TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |_req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async {
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(br#"{"ok":true}"#)));
                            response.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            received,
            task,
        }
    }

    /// The upstream URL by name, as the certificate names it.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/hooks", self.addr.port())
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits out nothing: a named pause between the bytes of a slow client, which is the
/// attack under test rather than a guess at timing.
pub async fn trickle_pause() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}
