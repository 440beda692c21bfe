//! The admin HTTP client: one HTTP/1.1 connection to eds-server's admin
//! port, kept alive across requests (so `watch` polls over one TCP stream or
//! one port-forward), reopened when it closes.
//!
//! ```text
//!  Transport::Tcp { addr, tls }   ─┐
//!  Transport::PortForward { pod } ─┴─> any AsyncRead + AsyncWrite ─> hyper http1::handshake ─> GET
//! ```
//!
//! The HTTP code does not know which transport it runs over: TCP, TLS over
//! TCP, and a Kubernetes port-forward stream all end up as the same byte
//! stream. Not here: finding the pod to forward to (see
//! [`crate::discovery`]), or what the JSON means (see [`crate::model`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

use crate::error::Error;

/// The largest admin answer edsctl reads; a snapshot of many thousands of
/// endpoints is a few MiB.
const MAX_BODY: usize = 64 << 20;

/// TLS settings for `--server https://...`.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM CA bundle to verify the server with; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mTLS).
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against, instead of the host.
    pub server_name: Option<String>,
}

/// How to reach the admin port.
// One value per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    /// A TCP address, optionally with TLS.
    Tcp {
        /// `host:port`.
        host: String,
        /// Port.
        port: u16,
        /// TLS, for `https://` addresses or `--tls`.
        tls: Option<Arc<rustls::ClientConfig>>,
        /// Name the certificate is checked against.
        server_name: String,
    },
    /// A port-forward to a pod through the Kubernetes API.
    PortForward {
        /// Pods API in the pod's namespace.
        api: kube::Api<Pod>,
        /// Namespace (for messages).
        namespace: String,
        /// Pod name.
        pod: String,
        /// Container port.
        port: u16,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Transport {
    /// What this transport connects to, for messages.
    pub fn describe(&self) -> String {
        match self {
            Transport::Tcp {
                host, port, tls, ..
            } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{host}:{port}")
            }
            Transport::PortForward {
                namespace,
                pod,
                port,
                ..
            } => format!("pod {namespace}/{pod} port {port} (port-forward)"),
        }
    }

    /// A transport for `--server`: `host:port`, `http://host:port` or
    /// `https://host:port`; `tls_flag` forces TLS for the bare form.
    pub fn from_server_flag(
        server: &str,
        tls_flag: bool,
        settings: &TlsSettings,
    ) -> Result<Self, Error> {
        let bad = |why: &str| Error::Usage {
            message: format!("--server {server:?} is not usable: {why}"),
            hint: Some(
                "give the admin address as host:port, http://host:port or https://host:port, \
                 e.g. --server 127.0.0.1:18001"
                    .into(),
            ),
        };
        let (https, rest) = if let Some(r) = server.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = server.strip_prefix("http://") {
            (false, r)
        } else if server.contains("://") {
            return Err(bad("only http:// and https:// are supported"));
        } else {
            (false, server)
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("give only the address, without a path"));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("no port (the admin port is 18001 by default)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let tls = if https || tls_flag {
            Some(client_config(settings)?)
        } else {
            None
        };
        Ok(Transport::Tcp {
            host: host.to_owned(),
            port,
            tls,
            server_name: settings
                .server_name
                .clone()
                .unwrap_or_else(|| host.to_owned()),
        })
    }
}

/// The TLS client configuration for `settings` (ring, as kube and tonic use).
pub fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let file_err = |what: &'static str, path: &Path, problem: String| Error::File {
        what,
        path: path.to_owned(),
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|e| file_err("--ca-file", path, e.to_string()))?;
            if certs.is_empty() {
                return Err(file_err(
                    "--ca-file",
                    path,
                    "no PEM certificate in it".into(),
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| file_err("--ca-file", path, e.to_string()))?;
            }
        }
        None => {
            // Unusable system certificates are skipped, as browsers do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage {
            message: format!("TLS setup: {e}"),
            hint: None,
        })?
        .with_root_certificates(roots);
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect)
                .map_err(|e| file_err("--cert-file", cert, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_err("--key-file", key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| file_err("--cert-file", cert, e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Usage {
                message: "--cert-file and --key-file go together".into(),
                hint: Some("give both for mTLS, or neither".into()),
            });
        }
    };
    Ok(Arc::new(config))
}

/// An answer from the admin server.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text, trimmed, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// A client of one eds-server admin port.
pub struct AdminClient {
    transport: Transport,
    timeout: Duration,
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// The port-forward's error channel, when there is one: its message
    /// explains a stream that closed.
    forward_error: Arc<Mutex<Option<String>>>,
    forwarder: Option<kube::api::Portforwarder>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Drop for AdminClient {
    fn drop(&mut self) {
        if let Some(f) = &self.forwarder {
            f.abort();
        }
    }
}

impl AdminClient {
    /// A client over `transport`; each request (connection included) gives
    /// up after `timeout`. Connects lazily.
    pub fn new(transport: Transport, timeout: Duration) -> Self {
        Self {
            transport,
            timeout,
            sender: None,
            forward_error: Arc::new(Mutex::new(None)),
            forwarder: None,
        }
    }

    /// What the client talks to.
    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// Opens the connection now (rather than on the first request), so
    /// unreachability is reported before anything else happens.
    pub async fn connect(&mut self) -> Result<(), Error> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        self.sender = None;
        let sender = tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| self.unreachable(format!("no connection within {:?}", self.timeout)))??;
        self.sender = Some(sender);
        Ok(())
    }

    async fn open(&mut self) -> Result<SendRequest<Empty<Bytes>>, Error> {
        match &self.transport {
            Transport::Tcp {
                host,
                port,
                tls,
                server_name,
            } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| self.unreachable(e))?;
                match tls {
                    None => self.handshake(tcp).await,
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from(server_name.clone())
                            .map_err(|e| Error::Usage {
                                message: format!("{server_name:?} is not a TLS server name: {e}"),
                                hint: Some("set --tls-server-name".into()),
                            })?;
                        let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                            .connect(name, tcp)
                            .await
                            .map_err(|e| self.unreachable(e))?;
                        self.handshake(stream).await
                    }
                }
            }
            Transport::PortForward {
                api,
                namespace,
                pod,
                port,
            } => {
                let pf_err =
                    |source: Box<dyn std::error::Error + Send + Sync>| Error::PortForward {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        port: *port,
                        source,
                    };
                let mut forwarder = api
                    .portforward(pod, &[*port])
                    .await
                    .map_err(|e| pf_err(Box::new(crate::error::KubeCause(e))))?;
                let stream = forwarder
                    .take_stream(*port)
                    .ok_or_else(|| pf_err("the port-forward offered no stream".into()))?;
                if let Some(errors) = forwarder.take_error(*port) {
                    let slot = Arc::clone(&self.forward_error);
                    tokio::spawn(async move {
                        if let Some(msg) = errors.await
                            && let Ok(mut slot) = slot.lock()
                        {
                            *slot = Some(msg);
                        }
                    });
                }
                if let Some(old) = self.forwarder.replace(forwarder) {
                    old.abort();
                }
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<S>(&self, io: S) -> Result<SendRequest<Empty<Bytes>>, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e))?;
        // The connection future drives the socket; it ends when the
        // sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn unreachable(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        let mut source: Box<dyn std::error::Error + Send + Sync> = source.into();
        if let Ok(slot) = self.forward_error.lock()
            && let Some(msg) = slot.as_ref()
        {
            source = format!("{source} (the port-forward reported: {msg})").into();
        }
        match &self.transport {
            Transport::PortForward {
                namespace,
                pod,
                port,
                ..
            } => Error::PortForward {
                namespace: namespace.clone(),
                pod: pod.clone(),
                port: *port,
                source,
            },
            Transport::Tcp { .. } => Error::Unreachable {
                target: self.describe(),
                source,
            },
        }
    }

    /// GET `path`: status and body. Retries once on a fresh connection when
    /// a kept-alive one turns out closed.
    pub async fn get(&mut self, path: &str) -> Result<Answer, Error> {
        let reused = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        match self.try_get(path).await {
            Err(Error::Unreachable { .. } | Error::PortForward { .. }) if reused => {
                self.try_get(path).await
            }
            other => other,
        }
    }

    async fn try_get(&mut self, path: &str) -> Result<Answer, Error> {
        self.connect().await?;
        let Some(sender) = self.sender.as_mut() else {
            return Err(self.unreachable("no connection"));
        };
        let request = http::Request::get(path)
            .header(http::header::HOST, "eds-server")
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Usage {
                message: format!("cannot build a request for {path:?}: {e}"),
                hint: None,
            })?;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Answer { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(self.unreachable(e))
            }
            Err(_) => {
                self.sender = None;
                Err(self.unreachable(format!("no answer to GET {path} within {:?}", self.timeout)))
            }
        }
    }

    /// GET `path` and decode JSON from a 200 (a view of another admin API
    /// version is refused before its shape is read); 503 is "not ready", 404
    /// is returned as `Ok(None)` for the caller to explain.
    pub async fn get_json<T: DeserializeOwned>(&mut self, path: &str) -> Result<Option<T>, Error> {
        #[derive(serde::Deserialize)]
        struct Versioned {
            #[serde(default)]
            api_version: String,
        }
        let answer = self.get(path).await?;
        let decode_error = |source| Error::Decode {
            path: path.to_owned(),
            source,
        };
        match answer.status {
            200 => {
                let Versioned { api_version } =
                    serde_json::from_slice(&answer.body).map_err(decode_error)?;
                crate::model::check_api_version(&api_version).map_err(Error::ApiVersion)?;
                serde_json::from_slice(&answer.body)
                    .map(Some)
                    .map_err(decode_error)
            }
            404 => Ok(None),
            503 => Err(Error::NotReady {
                path: path.to_owned(),
            }),
            status => Err(Error::Server {
                path: path.to_owned(),
                status,
                body: answer.text(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn server_flag_forms() {
        let t = TlsSettings::default();
        for (flag, want) in [
            ("127.0.0.1:18001", "http://127.0.0.1:18001"),
            ("http://localhost:9/", "http://localhost:9"),
            ("[::1]:18001", "http://::1:18001"),
        ] {
            let got = Transport::from_server_flag(flag, false, &t).unwrap();
            assert_eq!(got.describe(), want, "{flag}");
        }
        for bad in [
            "127.0.0.1",
            "ftp://x:1",
            "x:0",
            "x:99999",
            ":80",
            "http://x:1/debug",
        ] {
            let err = Transport::from_server_flag(bad, false, &t).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{bad}");
        }
    }

    #[test]
    fn cert_without_key_is_refused() {
        let t = TlsSettings {
            cert_file: Some("/nonexistent/cert.pem".into()),
            ..TlsSettings::default()
        };
        assert!(client_config(&t).is_err());
        let t = TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        let err = client_config(&t).unwrap_err();
        assert!(err.to_string().contains("--ca-file"), "{err}");
    }

    /// Serves `responses` in order on one kept-alive connection over an
    /// in-memory duplex stream, the way a port-forward stream behaves.
    #[tokio::test]
    async fn one_connection_serves_several_requests_over_any_stream() {
        let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 4096];
            for body in ["{\"n\":1}", "{\"n\":2}"] {
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = server_io.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed early");
                    req.extend_from_slice(&buf[..n]);
                }
                seen.push(
                    String::from_utf8_lossy(&req)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
                    body.len()
                );
                server_io.write_all(resp.as_bytes()).await.unwrap();
            }
            seen
        });
        let mut client = AdminClient::new(
            Transport::Tcp {
                host: "unused".into(),
                port: 1,
                tls: None,
                server_name: "unused".into(),
            },
            Duration::from_secs(10),
        );
        client.sender = Some(client.handshake(client_io).await.unwrap());
        #[derive(serde::Deserialize)]
        struct N {
            n: u32,
        }
        let a: N = client.get_json("/debug/a").await.unwrap().unwrap();
        let b: N = client.get_json("/debug/b").await.unwrap().unwrap();
        assert_eq!((a.n, b.n), (1, 2));
        let seen = server.await.unwrap();
        assert_eq!(seen, ["GET /debug/a HTTP/1.1", "GET /debug/b HTTP/1.1"]);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let t =
            Transport::from_server_flag(&addr.to_string(), false, &TlsSettings::default()).unwrap();
        let mut client = AdminClient::new(t, Duration::from_secs(5));
        let err = client.get("/debug/snapshot").await.unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_UNREACHABLE);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
