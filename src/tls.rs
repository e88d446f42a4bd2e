//! TLS configuration: the listener's certificate, client certificates (mTLS), upstream
//! trust, and dev certificates.
//!
//! Every config is built with the ring provider explicitly: if two providers were ever
//! compiled in, rustls could not pick a process default and would panic at run time.
//! Protocol versions are rustls' safe defaults, TLS 1.3 and 1.2: nothing older exists in
//! rustls. Private keys are only ever read from files or generated in memory, never logged.
//! Plain HTTP sent to a TLS listener is answered with a readable 400 (`answer_plain_http`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::log_gate::LogGate;
use crate::metrics::Closed;

/// How https upstreams are verified.
#[derive(Debug, Clone)]
pub enum UpstreamTrust {
    /// The operating system's root certificates (the bundled Mozilla roots when the
    /// system has none).
    System,
    /// Exactly the certificates in this PEM file.
    CaFile {
        path: PathBuf,
        certs: Vec<CertificateDer<'static>>,
    },
    /// Development only: any certificate is accepted.
    InsecureSkipVerify,
}

impl std::fmt::Display for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamTrust::System => f.write_str("system roots"),
            UpstreamTrust::CaFile { path, certs } => {
                write!(
                    f,
                    "CA file {} ({} certificates)",
                    path.display(),
                    certs.len()
                )
            }
            UpstreamTrust::InsecureSkipVerify => f.write_str(
                "NOT VERIFIED (upstream_tls.insecure_skip_verify = true, development only)",
            ),
        }
    }
}

/// The names a development certificate is valid for.
pub const DEV_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for a certificate chain and key, offering h2 and http/1.1 by ALPN.
/// With `client_ca`, a client must present a certificate issued by one of those CAs or
/// the handshake fails.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    // http/1.0 too: a client offering only that (curl --http1.0) was refused the
    // handshake, though hyper serves HTTP/1.0.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(config))
}

/// What is wrong with a PEM file, in words (the library's errors read "no items
/// found", or list a marker's bytes as numbers), without quoting what it holds.
fn pem_error(e: rustls::pki_types::pem::Error, wanted: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => format!("no {wanted} in it (PEM, `-----BEGIN ...-----`)"),
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block is not closed: no `-----END {}-----` line (a truncated file?)",
            String::from_utf8_lossy(&end_marker)
        ),
        Error::IllegalSectionStart { .. } => "a PEM block's BEGIN line is malformed".to_owned(),
        Error::Base64Decode(_) => "a PEM block is not valid base64".to_owned(),
        other => other.to_string(),
    }
}

/// `certs` as PEM, for redis-rs, which takes its roots as PEM text.
pub fn pem_of(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    use base64::Engine as _;
    let mut pem = String::new();
    for cert in certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

/// Reads PEM CA certificates (one or more); errors start with the quoted path.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{shown:?}: {}", pem_error(e, "certificate")))?;
    if certs.is_empty() {
        return Err(format!("{shown:?}: no PEM certificate in the file"));
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{shown:?}: not a usable CA certificate: {e}"))?;
    }
    // From a full chain (a leaf, then its CAs) only the CAs are trusted: a leaf trusted
    // as an anchor would vouch for anything signed with its key. A file of leaves alone
    // verifies nothing.
    let issuers: Vec<_> = certs
        .iter()
        .filter(|cert| can_issue(cert).is_ok())
        .cloned()
        .collect();
    if issuers.is_empty() {
        let why = can_issue(&certs[0]).err().unwrap_or_default();
        return Err(format!("{shown:?}: {why}"));
    }
    Ok(issuers)
}

/// Whether a certificate can stand at the top of a chain: a CA, or one it issued itself
/// (a pinned self-signed certificate). A leaf a CA issued verifies nothing: given by
/// mistake for its CA, it was accepted and every handshake then failed.
fn can_issue(cert: &CertificateDer<'_>) -> Result<(), String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::BasicConstraints;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = &parsed.tbs_certificate;
    if tbs.subject == tbs.issuer {
        return Ok(());
    }
    let is_ca = tbs
        .extensions
        .iter()
        .flatten()
        .filter(|ext| ext.extn_id == <BasicConstraints as x509_cert::der::oid::AssociatedOid>::OID)
        .filter_map(|ext| BasicConstraints::from_der(ext.extn_value.as_bytes()).ok())
        .any(|constraints| constraints.ca);
    if is_ca {
        Ok(())
    } else {
        Err(format!(
            "certificate {} is not a CA (it was issued by {}): put the certificate of the CA \
             that issued it here",
            tbs.subject, tbs.issuer
        ))
    }
}

/// When a certificate (DER) is valid: from, until.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let valid = &parsed.tbs_certificate.validity;
    Ok((
        valid.not_before.to_system_time(),
        valid.not_after.to_system_time(),
    ))
}

/// A server config from PEM files and when its certificate expires; errors name the
/// config key and the path. A certificate outside its validity is refused: served, it
/// fails every sender's handshake, and a reload would have swapped it in for the last
/// good one.
pub fn config_from_files(
    cert: &Path,
    key: &Path,
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<(Arc<ServerConfig>, SystemTime), String> {
    let shown = cert.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server.tls.cert {shown:?}: {}", pem_error(e, "certificate")))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "server.tls.cert {shown:?}: no PEM certificate in the file"
        ));
    };
    let (from, until) = validity(leaf).map_err(|e| format!("server.tls.cert {shown:?}: {e}"))?;
    let now = SystemTime::now();
    if now >= until {
        return Err(format!(
            "server.tls.cert {shown:?}: the certificate expired at {}",
            humantime::format_rfc3339_seconds(until)
        ));
    }
    if now < from {
        return Err(format!(
            "server.tls.cert {shown:?}: the certificate is not valid before {}",
            humantime::format_rfc3339_seconds(from)
        ));
    }
    let key_shown = key.display().to_string();
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let encrypted = std::fs::read(key)
            .is_ok_and(|text| text.windows(25).any(|w| w == b"BEGIN ENCRYPTED PRIVATE K"));
        if encrypted {
            format!(
                "server.tls.key {key_shown:?}: the key is encrypted (a passphrase), which \
                 hookgate cannot use: write it unencrypted, readable by hookgate's user \
                 only (openssl pkey -in KEY -out PLAIN)"
            )
        } else {
            format!(
                "server.tls.key {key_shown:?}: {}",
                pem_error(e, "private key")
            )
        }
    })?;
    let several = chain.len() > 1;
    let config = server_config(chain, private, client_ca).map_err(|e| {
        let order = match e {
            rustls::Error::InconsistentKeys(_) if several => {
                " (the file must start with the server's own certificate, then the CAs \
                 that issued it)"
            }
            _ => "",
        };
        format!(
            "server.tls: certificate {shown:?} and key {key_shown:?} do not form a usable \
             pair: {e}{order}"
        )
    })?;
    Ok((config, until))
}

/// Whether a connection to a TLS listener opened with plain HTTP: a TLS client's first
/// byte is a handshake record (22), an HTTP/1 request's or the HTTP/2 preface's an
/// upper-case method letter. Waits for that byte (the caller bounds the wait).
pub async fn sent_plain_http(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// The body of the answer to plain HTTP on a TLS listener.
pub const PLAIN_HTTP_ANSWER: &str =
    r#"{"error":"tls_required","detail":"this port speaks HTTPS only: use https:// in the URL"}"#;

/// Answers plain HTTP on a TLS listener with a readable 400 instead of a TLS alert that
/// HTTP clients report as garbage ("invalid HTTP version", "HTTP/0.9"), then closes.
/// What the client sent is read first and drained after, so that closing does not reset
/// the connection before the client has read the answer.
pub async fn answer_plain_http(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sink = [0u8; 8 * 1024];
    let _ = stream.read(&mut sink).await;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_ANSWER}",
        PLAIN_HTTP_ANSWER.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// A certificate and key for `DEV_NAMES`, as PEM text.
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn generate_dev_cert() -> Result<DevCert, rcgen::Error> {
    let names: Vec<String> = DEV_NAMES.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)?;
    Ok(DevCert {
        cert_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
    })
}

/// `self_signed = true`: a fresh certificate for localhost, in memory, every start.
pub fn self_signed_config(
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<(Arc<ServerConfig>, SystemTime), String> {
    let dev = generate_dev_cert().map_err(|e| e.to_string())?;
    let leaf =
        CertificateDer::from_pem_slice(dev.cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let (_, until) = validity(&leaf)?;
    let key = PrivateKeyDer::from_pem_slice(dev.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let config = server_config(vec![leaf], key, client_ca).map_err(|e| e.to_string())?;
    Ok((config, until))
}

/// Writes `dev-cert.pem` and `dev-key.pem` (mode 0600) into `dir`.
pub fn write_dev_cert(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    write_dev_cert_files(&dir.join("dev-cert.pem"), &dir.join("dev-key.pem"))
}

/// Writes a dev certificate to `cert` and its key (mode 0600) to `key`, creating their
/// directories.
/// Refuses, before writing either file, two names of one file (`x.pem` and `./x.pem`, or
/// a symlink to the other: the key overwrote the certificate) and a directory (the certificate was written, then the
/// key failed, leaving the old key beside a new certificate).
pub fn write_dev_cert_files(cert: &Path, key: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let dev = generate_dev_cert().map_err(std::io::Error::other)?;
    let mut resolved = Vec::new();
    for file in [cert, key] {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)?;
        }
        if file.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is a directory",
                file.display()
            )));
        }
        // An existing file as itself, and a symlink as what it points at, even when that
        // is missing (writing through it would create the other file).
        let dir = std::fs::canonicalize(dir.unwrap_or(Path::new(".")))?;
        let target = match std::fs::read_link(file) {
            Ok(link) => dir.join(link),
            Err(_) => dir.join(file.file_name().unwrap_or_default()),
        };
        let target = match (std::fs::canonicalize(&target), target.parent()) {
            (Ok(resolved), _) => resolved,
            (Err(_), Some(parent)) => std::fs::canonicalize(parent)
                .unwrap_or_else(|_| parent.to_owned())
                .join(target.file_name().unwrap_or_default()),
            (Err(_), None) => target,
        };
        resolved.push(target);
    }
    if resolved[0] == resolved[1] {
        return Err(std::io::Error::other(
            "--cert and --key name the same file: the key would overwrite the certificate",
        ));
    }
    std::fs::write(cert, dev.cert_pem)?;
    write_private(key, dev.key_pem.as_bytes())?;
    Ok((cert.to_owned(), key.to_owned()))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a file it creates: an existing key file keeps its mode
    // unless it is set, and the new key must not be left readable by others.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The CLI's trust (`sign --send`, `deliveries`, `bench`) without `--cacert`: the
/// system's roots, as the gateway's upstreams. The bundled Mozilla roots alone refused a
/// server a CA this machine trusts had issued, with a hint saying the machine did not.
pub fn upstream_client_config() -> ClientConfig {
    upstream_client_config_for(&UpstreamTrust::System)
}

/// The Mozilla roots bundled in webpki-roots.
fn mozilla_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The upstream client's TLS as `[upstream_tls]` says: the system's roots, a CA file,
/// or (development only) anything.
pub fn upstream_client_config_for(trust: &UpstreamTrust) -> ClientConfig {
    match trust {
        UpstreamTrust::System => client_config(system_roots().clone()),
        UpstreamTrust::CaFile { certs, .. } => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            client_config(roots)
        }
        UpstreamTrust::InsecureSkipVerify => insecure_client_config(),
    }
}

/// The operating system's trusted roots, read once per process. A system without any
/// (a minimal container image) gets the bundled Mozilla roots, with a warning.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                errors = found.errors.len(),
                "no system root certificates found; https upstreams are verified against \
                 the bundled Mozilla roots (install ca-certificates, or set upstream_tls.ca_file)"
            );
            return mozilla_roots();
        }
        roots
    })
}

/// A client that trusts exactly the given PEM certificates (a private CA, a dev cert).
pub fn client_config_trusting(pem: &[u8]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    // Trusting nothing, every server was then refused as "not the one in --cacert".
    if roots.is_empty() {
        return Err(
            "no certificate in it (a PEM `BEGIN CERTIFICATE` block; is it the key?)".to_owned(),
        );
    }
    Ok(client_config(roots))
}

fn client_config(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// `--insecure`: accepts any certificate. For trying a dev listener only.
pub fn insecure_client_config() -> ClientConfig {
    let provider = provider();
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A listener's TLS: the server config and how long a handshake may take. A reload
/// swaps in a new one; each connection uses the one current when it was accepted.
pub struct Handshake {
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: std::time::Duration,
}

/// A client can fail handshakes at will: they are all counted, but logged at most once
/// a second (with how many were left out).
static HANDSHAKE_FAILURES: LogGate = LogGate::new(std::time::Duration::from_secs(1));

impl Handshake {
    pub fn new(config: Arc<ServerConfig>, timeout: std::time::Duration) -> Self {
        Handshake {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            timeout,
        }
    }

    /// Completes the handshake within the timeout, or says why the connection ends
    /// (plain HTTP is answered 400 first).
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
    ) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Closed> {
        let accept = async {
            if sent_plain_http(&stream).await {
                answer_plain_http(stream).await;
                return Err(
                    "plain HTTP sent to the TLS listener (answered 400 tls_required)".into(),
                );
            }
            self.acceptor
                .accept(stream)
                .await
                .map_err(|e| e.to_string())
        };
        let (closed, reason) = match tokio::time::timeout(self.timeout, accept).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(reason)) => (Closed::TlsHandshakeFailed, reason),
            Err(_) => (
                Closed::TlsHandshakeTimeout,
                "no complete handshake within server.tls.handshake_timeout".to_owned(),
            ),
        };
        if let Some(left_out) = HANDSHAKE_FAILURES.admit(std::time::Instant::now()) {
            // The listeners' target, where the README tells operators to look.
            tracing::debug!(target: "hookgate::server", %peer, reason, left_out, "TLS handshake failed");
        }
        Err(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_certificate_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_dev_cert(dir.path()).unwrap();
        let (config, expires_at) = config_from_files(&cert, &key, None).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()]
        );
        assert!(expires_at > SystemTime::now());
        assert!(client_config_trusting(&std::fs::read(&cert).unwrap()).is_ok());
        // One file under two names, or a directory: refused, nothing written.
        let same = dir.path().join("x.pem");
        let also = dir.path().join(".").join("x.pem");
        assert!(write_dev_cert_files(&same, &also).is_err());
        assert!(!same.exists());
        assert!(write_dev_cert_files(&dir.path().join("y.pem"), dir.path()).is_err());
        assert!(!dir.path().join("y.pem").exists());
        // A symlink to the other file, even one not written yet.
        std::os::unix::fs::symlink("b.pem", dir.path().join("a.pem")).unwrap();
        assert!(
            write_dev_cert_files(&dir.path().join("a.pem"), &dir.path().join("b.pem")).is_err()
        );
        assert!(!dir.path().join("b.pem").exists());
        // The key given for the certificate trusts nothing: refused, saying so.
        let refused = client_config_trusting(&std::fs::read(&key).unwrap()).unwrap_err();
        assert!(refused.contains("no certificate in it"), "{refused}");
        assert!(client_config_trusting(b"").is_err());
    }

    /// The usual mistakes with key and certificate files say what they are: an
    /// encrypted key, a file with no key, a truncated PEM block, and a chain whose
    /// server certificate is not first (the errors read "no items found", a marker's
    /// bytes as numbers, or "KeyMismatch").
    #[test]
    fn key_and_certificate_file_mistakes_say_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_dev_cert(dir.path()).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let encrypted = write(
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = config_from_files(&cert, &encrypted, None).unwrap_err();
        assert!(e.contains("the key is encrypted"), "{e}");
        let e = config_from_files(&cert, &write("empty.pem", ""), None).unwrap_err();
        assert!(e.contains("no private key in it"), "{e}");
        let key_text = std::fs::read_to_string(&key).unwrap();
        let cut = &key_text[..key_text.find("-----END").unwrap()];
        let e = config_from_files(&cert, &write("cut.pem", cut), None).unwrap_err();
        assert!(
            e.contains("is not closed: no `-----END PRIVATE KEY-----`"),
            "{e}"
        );

        let ca = TestPair::new();
        let cert_text = std::fs::read_to_string(&cert).unwrap();
        let reversed = write("reversed.pem", &format!("{}{cert_text}", ca.cert_pem));
        let e = config_from_files(&reversed, &key, None).unwrap_err();
        assert!(
            e.contains("must start with the server's own certificate"),
            "{e}"
        );
    }

    struct TestPair {
        cert_pem: String,
    }

    impl TestPair {
        fn new() -> TestPair {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec!["ca.example".to_owned()]).unwrap();
            TestPair {
                cert_pem: params.self_signed(&key).unwrap().pem(),
            }
        }
    }

    /// A certificate outside its validity is refused, naming the file and the date: a
    /// reload swapped an expired one in for the last good one, and every handshake
    /// failed.
    #[test]
    fn a_certificate_outside_its_validity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (from, until, says) in [
            (
                (2019, 1, 1),
                (2020, 2, 1),
                "expired at 2020-02-01T00:00:00Z",
            ),
            (
                (3000, 1, 1),
                (3001, 1, 1),
                "not valid before 3000-01-01T00:00:00Z",
            ),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
            std::fs::write(&cert_file, cert.pem()).unwrap();
            std::fs::write(&key_file, key.serialize_pem()).unwrap();

            let e = config_from_files(&cert_file, &key_file, None).unwrap_err();

            assert!(e.starts_with("server.tls.cert ") && e.contains(says), "{e}");
        }
    }

    /// The key is written 0600 also over an existing file (a world-readable one kept
    /// its mode, and the new private key with it).
    #[cfg(unix)]
    #[test]
    fn the_dev_key_is_private_also_when_it_replaces_a_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("dev-key.pem");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_dev_cert(dir.path()).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn a_key_that_is_not_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_dev_cert(dir.path()).unwrap();
        let e = config_from_files(&cert, &cert, None).unwrap_err();
        assert!(e.starts_with("server.tls.key"), "{e}");
    }
}
