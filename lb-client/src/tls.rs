//! TLS towards the backends: which CAs the client trusts, the identity it
//! shows for mTLS, and the name each backend's certificate must carry.
//!
//! ```text
//!  LbConfig.backend_tls (BackendTls) --+
//!  ServiceOptions.tls_server_name -----+--> Dialer per service --> conn: TCP --TLS (ALPN h2)--> HTTP/2
//!  (default: <svc>.<ns>.svc.<domain>) -+
//! ```
//!
//! Backends of one Service share one certificate name however many pods
//! serve it, so the name checked is the Service's, not the pod's: by default
//! its cluster DNS name, the name a certificate for a Service carries in
//! practice (and the one the DNS fallback dials). A per-service
//! `tls_server_name` overrides it.
//!
//! Not a certificate loader for files or a rotation watcher: the application
//! reads its PEM files (or builds its own rustls configuration) and hands
//! the bytes over; a new client picks up new certificates.

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The protocol every backend connection negotiates: gRPC needs HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Why a backend TLS setting is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input holds nothing usable of the kind asked for.
    #[error("{what}: {problem}")]
    Pem {
        /// Which input: `CA certificates`, `client certificate` or `client key`.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the
    /// certificate).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name to check certificates against is not a DNS name or IP.
    #[error("TLS server name {name:?} for {service}: {problem}")]
    ServerName {
        /// The service key.
        service: String,
        /// The name as configured or derived.
        name: String,
        /// Why rustls refuses it.
        problem: String,
    },
}

/// TLS towards the backends, for [`crate::LbConfig::backend_tls`].
///
/// ```no_run
/// # fn demo(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<(), lb_client::TlsError> {
/// let tls = lb_client::BackendTls::new(ca)?.with_identity(cert, key)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BackendTls {
    /// The trusted CAs, when this crate built the configuration; `None` for
    /// one the application built (its verifier is opaque here).
    roots: Option<Arc<rustls::RootCertStore>>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs; the trust anchors' count says enough.
        f.debug_struct("BackendTls")
            .field("trusted_roots", &self.roots.as_ref().map(|r| r.len()))
            .field(
                "client_auth",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl BackendTls {
    /// Trusts the CA certificates in `ca_pem` (one or more PEM blocks) and
    /// shows no client certificate.
    pub fn new(ca_pem: &[u8]) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = pem_certs("CA certificates", ca_pem)?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::Pem {
                what: "CA certificates",
                problem: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let config = builder()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Ok(Self::finish(Some(roots), config))
    }

    /// The same trust, showing the certificate chain in `cert_pem` with the
    /// private key in `key_pem` (mTLS).
    /// Refused for a [`BackendTls::from_rustls`] configuration, whose
    /// verifier this crate cannot copy: set the identity in it instead.
    pub fn with_identity(self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let Some(roots) = self.roots else {
            return Err(TlsError::Pem {
                what: "client certificate",
                problem: "this TLS setting came from a rustls configuration; set the client identity in that configuration".into(),
            });
        };
        let chain = pem_certs("client certificate", cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "client key",
            problem: e.to_string(),
        })?;
        let config = builder()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)?;
        Ok(Self::finish(Some(roots), config))
    }

    /// A rustls configuration the application built itself (its own
    /// verifier, resumption or key log). lb-client sets ALPN to `h2`.
    pub fn from_rustls(config: rustls::ClientConfig) -> Self {
        Self::finish(None, config)
    }

    fn finish(roots: Option<Arc<rustls::RootCertStore>>, mut config: rustls::ClientConfig) -> Self {
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Self {
            roots,
            config: Arc::new(config),
        }
    }

    /// How a service's connections dial with this TLS, checking `name`.
    pub(crate) fn dialer(
        &self,
        service: &str,
        name: &str,
        connect_timeout: Duration,
    ) -> Result<Dialer, TlsError> {
        let server_name =
            ServerName::try_from(name.to_owned()).map_err(|e| TlsError::ServerName {
                service: service.to_owned(),
                name: name.to_owned(),
                problem: e.to_string(),
            })?;
        Ok(Dialer {
            connect_timeout,
            tls: Some(TlsTarget {
                connector: TlsConnector::from(self.config.clone()),
                server_name,
            }),
        })
    }
}

fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TlsError>
{
    // ring, the provider tonic and kube use here, so one crypto library is linked.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?)
}

fn pem_certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            problem: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// How one service's endpoints are dialled: plaintext or TLS with the
/// service's name, within the connect timeout.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: Option<TlsTarget>,
}

impl Dialer {
    pub(crate) fn plaintext(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            tls: None,
        }
    }

    /// The URI scheme requests on these connections carry.
    pub(crate) fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }
}

/// The TLS half of a [`Dialer`].
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    #[test]
    fn pem_inputs_are_checked_with_the_input_named() {
        let err = BackendTls::new(b"not a certificate").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CA certificates: no PEM certificate"),
            "{err}"
        );
        let (issuer, ca_pem) = ca();
        let tls = BackendTls::new(ca_pem.as_bytes()).unwrap();
        assert!(format!("{tls:?}").contains("trusted_roots: Some(1)"));

        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let err = tls
            .clone()
            .with_identity(leaf.pem().as_bytes(), b"garbage")
            .unwrap_err();
        assert!(err.to_string().starts_with("client key:"), "{err}");
        // A key that is not the certificate's is refused by rustls.
        let other = rcgen::KeyPair::generate().unwrap();
        assert!(
            tls.clone()
                .with_identity(leaf.pem().as_bytes(), other.serialize_pem().as_bytes())
                .is_err()
        );
        let mtls = tls
            .with_identity(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes())
            .unwrap();
        assert!(format!("{mtls:?}").contains("client_auth: true"));
        assert_eq!(mtls.config.alpn_protocols, vec![b"h2".to_vec()]);

        // The application's own configuration gets ALPN h2 too, and no
        // identity grafted onto a verifier this crate cannot see.
        let own = BackendTls::from_rustls(mtls.config.as_ref().clone());
        assert_eq!(own.config.alpn_protocols, vec![b"h2".to_vec()]);
        let err = own
            .with_identity(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("rustls configuration"), "{err}");
    }

    #[test]
    fn the_server_name_must_be_a_name() {
        let (_, ca_pem) = ca();
        let tls = BackendTls::new(ca_pem.as_bytes()).unwrap();
        let d = tls
            .dialer(
                "echo.demo:8080",
                "echo.demo.svc.cluster.local",
                Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(d.scheme(), http::uri::Scheme::HTTPS);
        let err = tls
            .dialer("echo.demo:8080", "not a name!", Duration::from_secs(1))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"not a name!\" for echo.demo:8080"),
            "{err}"
        );
        assert_eq!(
            Dialer::plaintext(Duration::from_secs(1)).scheme(),
            http::uri::Scheme::HTTP
        );
    }
}
