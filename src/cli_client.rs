//! The command line's HTTP client (`sign --send`, `deliveries`): whom it trusts
//! (`--cacert`, `--insecure`), and what it tells the user when a request fails for one of
//! the reasons a newcomer meets first: a certificate the client does not trust, plain
//! HTTP sent to a TLS port, or TLS sent to a plain HTTP port.
//!
//! The gateway's own upstream client is configured in `forward` and `tls`; nothing here
//! is on the request path.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::ClientConfig;

use crate::forward::{HttpClient, http_client};
use crate::tls;

/// How long a command waits for a whole answer (`sign --send`, `deliveries`): a listener
/// that accepts and never answers must not hold a script for good.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Whom a command-line client trusts.
pub enum Trust {
    /// The Mozilla roots (the default).
    PublicRoots,
    /// Exactly the certificates in this PEM file (for example `certs/dev-cert.pem`).
    CaFile(PathBuf),
    /// Any certificate (`--insecure`, dev only).
    Anything,
}

impl Trust {
    /// From the `--cacert` and `--insecure` flags (clap makes them exclusive).
    pub fn from_flags(cacert: Option<&Path>, insecure: bool) -> Trust {
        match (cacert, insecure) {
            (Some(path), _) => Trust::CaFile(path.to_owned()),
            (None, true) => Trust::Anything,
            (None, false) => Trust::PublicRoots,
        }
    }

    pub fn client_config(&self) -> Result<ClientConfig, String> {
        match self {
            Trust::PublicRoots => Ok(tls::upstream_client_config()),
            Trust::CaFile(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
                tls::client_config_trusting(&pem)
                    .map_err(|e| format!("--cacert {}: {e}", path.display()))
            }
            Trust::Anything => Ok(tls::insecure_client_config()),
        }
    }

    pub fn client(&self, timeout: Duration) -> Result<HttpClient, String> {
        Ok(http_client(self.client_config()?, timeout))
    }
}

/// A failed request's error chain on one line, then, when the cause is a common one, a
/// second line starting `hint: ` that says what to do.
pub fn explain(error: &(dyn Error + 'static), url: &str, trust: &Trust) -> String {
    let mut text = crate::error_chain::one_line(error);
    if let Some(hint) = hint(error, url, trust) {
        text.push_str("\nhint: ");
        text.push_str(hint);
    }
    text
}

/// What to do about a failed request, when its cause is one this knows.
pub fn hint(error: &(dyn Error + 'static), url: &str, trust: &Trust) -> Option<&'static str> {
    let https = url.starts_with("https://");
    if let Some(tls) = rustls_error(error) {
        use rustls::CertificateError as Cert;
        return match tls {
            rustls::Error::InvalidCertificate(
                Cert::NotValidForName | Cert::NotValidForNameContext { .. },
            ) => Some(
                "the server's certificate does not name the host in the URL: use a name it \
                 lists (a `hookgate dev-cert` certificate names localhost, 127.0.0.1 and ::1)",
            ),
            rustls::Error::InvalidCertificate(
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. },
            ) => Some(
                "the server's certificate has expired or is not valid yet: renew it (or check \
                 this machine's clock)",
            ),
            rustls::Error::InvalidCertificate(_) => Some(match trust {
                Trust::CaFile(_) => {
                    "the server's certificate is not the one in --cacert (nor issued by it). \
                     A gateway with `self_signed = true` makes a new certificate at every \
                     start: point its [server.tls] cert and key at the files `hookgate \
                     dev-cert` wrote and pass that certificate to --cacert, or use --insecure"
                }
                _ => {
                    "the server's certificate is not issued by a CA this machine trusts. For \
                     a development gateway pass --cacert with the certificate it serves (such \
                     as certs/dev-cert.pem from `hookgate dev-cert`), or --insecure to accept \
                     any certificate"
                }
            }),
            rustls::Error::InvalidMessage(_) if https => Some(
                "the server did not answer in TLS: if it serves plain HTTP (no [server.tls]), \
                 use http:// in the URL",
            ),
            _ => None,
        };
    }
    let parse_error = causes(error)
        .filter_map(|e| e.downcast_ref::<hyper::Error>())
        .any(hyper::Error::is_parse);
    if parse_error && !https {
        return Some(
            "the server did not answer in HTTP: if this port speaks TLS (the gateway's \
             listener with [server.tls]), use https:// in the URL",
        );
    }
    None
}

/// `error` and the errors beneath it, looking inside `io::Error`s too: their `source()`
/// skips the error they wrap, which is where rustls' error sits.
fn causes<'e>(error: &'e (dyn Error + 'static)) -> impl Iterator<Item = &'e (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e: &&'e (dyn Error + 'static)| {
        match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => e.source(),
        }
    })
}

fn rustls_error<'e>(error: &'e (dyn Error + 'static)) -> Option<&'e rustls::Error> {
    causes(error).find_map(|e| e.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapper(#[source] std::io::Error);

    fn wrapped(tls: rustls::Error) -> Wrapper {
        Wrapper(std::io::Error::other(tls))
    }

    #[test]
    fn an_untrusted_certificate_suggests_cacert_or_insecure() {
        let error = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let text = explain(&error, "https://localhost:8443/x", &Trust::PublicRoots);
        assert!(text.starts_with("client error (Connect): "), "{text}");
        assert!(text.contains("\nhint: "), "{text}");
        assert!(
            text.contains("--cacert") && text.contains("--insecure"),
            "{text}"
        );
    }

    #[test]
    fn a_certificate_that_does_not_match_cacert_says_so() {
        let error = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature,
        ));
        let trust = Trust::CaFile("certs/cert.pem".into());
        let hint = hint(&error, "https://localhost:8443/x", &trust).unwrap();
        assert!(hint.contains("not the one in --cacert"), "{hint}");
        assert!(hint.contains("self_signed = true"), "{hint}");
    }

    /// Every certificate error was said to be a certificate not in --cacert, a wrong
    /// host name and an expired certificate included.
    #[test]
    fn a_wrong_host_name_and_an_expired_certificate_each_say_so() {
        let trust = Trust::CaFile("certs/cert.pem".into());
        let name = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ));
        let hint_for_name = hint(&name, "https://other:8443/x", &trust).unwrap();
        assert!(
            hint_for_name.contains("does not name the host"),
            "{hint_for_name}"
        );
        let expired = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
        let hint_for_expired = hint(&expired, "https://localhost:8443/x", &trust).unwrap();
        assert!(hint_for_expired.contains("expired"), "{hint_for_expired}");
    }

    #[test]
    fn tls_to_a_plain_http_port_suggests_http() {
        let error = wrapped(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        let hint = hint(&error, "https://127.0.0.1:8080/x", &Trust::PublicRoots).unwrap();
        assert!(hint.contains("use http://"), "{hint}");
    }

    #[test]
    fn other_errors_get_no_hint() {
        let error = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(hint(&error, "https://x/", &Trust::PublicRoots), None);
        assert_eq!(
            explain(&error, "https://x/", &Trust::PublicRoots),
            format!(
                "client error (Connect): {}",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
            )
        );
    }
}
