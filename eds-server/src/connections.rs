//! The xDS port's connection lifecycle: accept (failures backed off), a cap
//! on open connections, TLS, HTTP/2 with its per-connection limits, and a
//! graceful close at a jittered maximum age.
//!
//! ```text
//!  listener -> Nagle off, accept errors backed off (coalesce), writes gathered (no TLS)
//!     -> over --max-connections? closed at once, counted
//!     -> TLS handshake (bounded)            when --tls-cert is set
//!     -> hyper HTTP/2: --max-streams-per-connection, PINGs, request size (grpc)
//!     -> tonic routes (the xDS services, CSDS)
//!     -> at --max-connection-age ± 10 %: GOAWAY; streams still open after
//!        --max-connection-age-grace are cut, and their clients reconnect
//! ```
//!
//! Why not tonic's own server: it closes connections at one fixed age, so
//! every connection opened in a rollout or a scale-up would reach its age
//! in the same second and reconnect together; the age needs jitter, which
//! tonic has no place for. A replica's connections are also capped here,
//! which tonic cannot do either. Everything else (routing, status codes)
//! is tonic's.
//!
//! Why an age at all: a client keeps its connection for as long as it
//! lives, so after a rollout or a scale-up the replicas started last serve
//! nobody. Closing each connection after about 30 minutes (istiod's
//! default) spreads clients over the replicas there are now.
//!
//! Not here: what a stream does (see [`crate::serve`]) or the gathering of
//! writes (see [`crate::coalesce`]).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eds_gather::Coalesced;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::service::Routes;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tower::ServiceExt;
use tracing::{debug, info};

use crate::metrics::Metrics;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How far each connection's age is moved from the configured one, at most
/// (a fraction of it, either way).
const AGE_JITTER: f64 = 0.1;

/// Limits and liveness for every connection of the xDS port.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Concurrent streams per connection (HTTP/2 SETTINGS; h2 refuses more
    /// with REFUSED_STREAM).
    pub max_streams: u32,
    /// HTTP/2 PING interval and how long an answer may take.
    pub keepalive: (Duration, Duration),
    /// GOAWAY after about this long (± 10 %); `None`: connections live on.
    pub max_age: Option<Duration>,
    /// After the GOAWAY, how long open streams may go on before the
    /// connection is closed under them.
    pub max_age_grace: Duration,
}

/// The TLS configuration of the xDS port, from PEM files: the server's
/// certificate chain and key, and optionally the CA that client
/// certificates must chain to (then every client must present one).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from --tls-cert {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert {} holds no PEM certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from --tls-key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).with_context(|| {
                format!("reading certificates from --tls-client-ca {}", ca.display())
            })? {
                let c = c.with_context(|| format!("--tls-client-ca {}", ca.display()))?;
                roots
                    .add(c)
                    .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "--tls-client-ca {} holds no PEM certificate",
                ca.display()
            );
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a usable identity")?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `routes` on `listener` until `shutdown` turns true; then stops
/// accepting, sends every connection a GOAWAY (its streams end on their
/// own: the stream tasks see the same flag) and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let routes = routes.prepare();
    let acceptor = tls.map(TlsAcceptor::from);
    // Gathered writes only without TLS: a handshake that flushes once and
    // then waits to read would never send through a deferred flush.
    let wrap = if acceptor.is_none() {
        Coalesced::new
    } else {
        Coalesced::passthrough
    };
    let mut incoming = Box::pin(crate::coalesce::backoff_accept_errors(Box::pin(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
    )));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let jitter = RandomState::new();
    let mut accepted: u64 = 0;
    loop {
        let tcp = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            next = incoming.next() => match next {
                Some(tcp) => tcp,
                // The listener itself is gone.
                None => break,
            },
        };
        accepted += 1;
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            // Closed at once: the client sees the connection end and tries
            // again later or elsewhere, instead of hanging in the backlog.
            metrics.connection_refused();
            debug!(
                limit = limits.max_connections,
                "refusing an xDS connection: --max-connections are open"
            );
            continue;
        };
        let connect_info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        };
        let io = wrap(tcp);
        let age = limits
            .max_age
            .map(|age| jittered(age, jitter.hash_one(accepted)));
        let (routes, acceptor, limits, shutdown) = (
            routes.clone(),
            acceptor.clone(),
            limits.clone(),
            shutdown.clone(),
        );
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connection_opened();
            let peer = connect_info.remote_addr;
            match acceptor {
                None => connection(io, routes, connect_info, &limits, age, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            connection(tls, routes, connect_info, &limits, age, shutdown).await;
                        }
                        Ok(Err(error)) => {
                            info!(?peer, %error, "xDS connection refused: TLS handshake failed");
                        }
                        Err(_) => {
                            info!(
                                ?peer,
                                "xDS connection closed: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                            );
                        }
                    }
                }
            }
            metrics.connection_closed();
        });
    }
    drop(incoming);
    info!("xDS server stopped accepting connections; waiting for them to close");
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
}

/// `age` moved by up to ± [`AGE_JITTER`] of itself, by `random`.
fn jittered(age: Duration, random: u64) -> Duration {
    // A uniform fraction in [-1, 1).
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    age.mul_f64(1.0 + AGE_JITTER * unit)
}

/// One connection, from the first HTTP/2 byte to its close.
async fn connection<IO>(
    io: IO,
    routes: Routes,
    connect_info: TcpConnectInfo,
    limits: &Limits,
    age: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = connect_info.remote_addr;
    // What tonic's own server does: the peer's address for `remote_addr()`.
    let service = routes.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(connect_info.clone());
        request
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(Some(limits.keepalive.0))
        .keep_alive_timeout(limits.keepalive.1);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let aged = async {
        match age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                debug!(?peer, %error, "xDS connection ended");
            }
            return;
        }
        () = aged => "its maximum age",
        _ = shutdown.wait_for(|s| *s) => "the server shutting down",
    };
    debug!(?peer, "closing an xDS connection for {why}: GOAWAY");
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(limits.max_age_grace, conn.as_mut())
        .await
        .is_err()
    {
        debug!(?peer, grace = ?limits.max_age_grace, "xDS connection still had streams after the grace; closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_spread_over_ten_percent_either_way() {
        let age = Duration::from_secs(1800);
        let state = RandomState::new();
        let ages: Vec<Duration> = (0..10_000u64)
            .map(|i| jittered(age, state.hash_one(i)))
            .collect();
        let (lo, hi) = (age.mul_f64(0.9), age.mul_f64(1.1));
        assert!(ages.iter().all(|a| *a >= lo && *a <= hi));
        // Spread, not clumped: every tenth of the range is used.
        let mut buckets = [0u32; 10];
        for a in &ages {
            let x = (a.as_secs_f64() - lo.as_secs_f64()) / (hi - lo).as_secs_f64();
            buckets[((x * 10.0) as usize).min(9)] += 1;
        }
        assert!(buckets.iter().all(|b| *b > 700), "{buckets:?}");
        assert_eq!(jittered(age, 0), age.mul_f64(0.9));
    }
}
