//! TLS for the tests: a dev certificate per test (`DevCert`), https clients that trust it
//! and offer one protocol, a certificate authority issuing client certificates (mTLS),
//! and an https upstream. Keys and certificates are generated into temp dirs, never
//! committed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A certificate for localhost and 127.0.0.1 generated into a temp dir for this test.
pub struct DevCert {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: Vec<u8>,
}

impl DevCert {
    pub fn generate() -> DevCert {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (cert, key) = hookgate::tls::write_dev_cert(dir.path()).expect("write a dev cert");
        let pem = std::fs::read(&cert).expect("read the cert back");
        DevCert {
            _dir: dir,
            cert,
            key,
            pem,
        }
    }
}

pub type HttpsClient = LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An https client that trusts exactly `pem` and offers exactly one protocol by
/// ALPN: `Version::HTTP_11` or `Version::HTTP_2`.
pub fn https_client(pem: &[u8], version: Version) -> HttpsClient {
    let mut tls = hookgate::tls::client_config_trusting(pem).expect("a valid PEM");
    if version == Version::HTTP_2 {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .build();
        LegacyClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector)
    } else {
        // hyper-rustls' builder leaves ALPN empty for HTTP/1.1 only; offer it explicitly
        // so the server really negotiates it.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnector::from((http, tls));
        LegacyClient::builder(TokioExecutor::new()).build(connector)
    }
}

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

    /// A certificate for `names`, its common name `name`, for `usage`, and its key.
    fn issue(
        &self,
        name: &str,
        names: Vec<String>,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        (cert, key)
    }

    /// A server certificate for `name` (and 127.0.0.1), issued by this CA, written as
    /// PEM files beside the CA's: returns the certificate's path and the key's.
    pub fn issue_server_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let names = vec![name.to_owned(), "127.0.0.1".to_owned()];
        let (cert, key) = self.issue(name, names, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let dir = self.ca_file.parent().expect("the CA's directory");
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        (cert_file, key_file)
    }

    /// A client certificate for `name`, issued by this CA.
    pub fn issue_client(&self, name: &str) -> ClientIdentity {
        let names = vec![name.to_owned()];
        let (cert, key) = self.issue(name, names, rcgen::ExtendedKeyUsagePurpose::ClientAuth);
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
