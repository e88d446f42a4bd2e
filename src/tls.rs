//! TLS configuration: the listener's certificate, upstream trust, and dev certificates.
//!
//! Every config is built with the ring provider explicitly: if two providers were ever
//! compiled in, rustls could not pick a process default and would panic at run time.
//! Private keys are only ever read from files or generated in memory, never logged.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The names a development certificate is valid for.
pub const DEV_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for a certificate chain and key, offering h2 and http/1.1 by ALPN.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads PEM files; errors name the config key and the path.
pub fn config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server.tls.cert {:?}: {e}", cert.display().to_string()))?;
    if chain.is_empty() {
        return Err(format!(
            "server.tls.cert {:?}: no PEM certificate in the file",
            cert.display().to_string()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("server.tls.key {:?}: {e}", key.display().to_string()))?;
    server_config(chain, private).map_err(|e| {
        format!(
            "server.tls: certificate {:?} and key {:?} do not form a usable pair: {e}",
            cert.display().to_string(),
            key.display().to_string()
        )
    })
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
pub fn self_signed_config() -> Result<Arc<ServerConfig>, String> {
    let dev = generate_dev_cert().map_err(|e| e.to_string())?;
    let chain =
        vec![CertificateDer::from_pem_slice(dev.cert_pem.as_bytes()).map_err(|e| e.to_string())?];
    let key = PrivateKeyDer::from_pem_slice(dev.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    server_config(chain, key).map_err(|e| e.to_string())
}

/// Writes `dev-cert.pem` and `dev-key.pem` (mode 0600) into `dir`.
pub fn write_dev_cert(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dev = generate_dev_cert().map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    std::fs::write(&cert, dev.cert_pem)?;
    write_private(&key, dev.key_pem.as_bytes())?;
    Ok((cert, key))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Upstream and `hookgate sign --send` trust: the Mozilla roots shipped in webpki-roots.
pub fn upstream_client_config() -> ClientConfig {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    client_config(roots)
}

/// A client that trusts exactly the given PEM certificates (a private CA, a dev cert).
pub fn client_config_trusting(pem: &[u8]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_certificate_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_dev_cert(dir.path()).unwrap();
        let config = config_from_files(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(client_config_trusting(&std::fs::read(&cert).unwrap()).is_ok());
    }

    #[test]
    fn a_key_that_is_not_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_dev_cert(dir.path()).unwrap();
        let e = config_from_files(&cert, &cert).unwrap_err();
        assert!(e.starts_with("server.tls.key"), "{e}");
    }
}
