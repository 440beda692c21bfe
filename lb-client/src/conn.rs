//! One HTTP/2 connection per endpoint, opened on demand and shared by every
//! request to that endpoint.
//!
//! ```text
//!  Idle --sender()--> Connecting --ok--> Ready(SendRequest) --closed--> Idle
//!                          |
//!                          +--error--> Down { until }  (picks avoid it; the
//!                                       next sender() after `until` retries)
//! ```
//!
//! We own the connection instead of going through tonic's `Channel` because
//! the balancer must know two things tonic hides: whether an endpoint's
//! connection is up (so a broken one is not picked), and whether a failed
//! request was ever sent (so it can be retried elsewhere safely). The
//! connection closes when the last handle to it is dropped: the pool drops
//! its handle when the endpoint leaves, in-flight responses hold theirs
//! until their bodies end.
//!
//! Writes are gathered ([`eds_gather::Coalesced`]) while more than one
//! request is in flight on the connection: a request's frames wait until the
//! runtime has run the tasks already queued, so requests other callers send
//! meanwhile share its system call and TCP segment. Over ten backends at
//! saturation that cut the client's CPU per request by about a sixth in the
//! `overhead` benchmark. A lone request is written at once: waiting a round
//! of the queue with nothing to share the write with cost ~40-80 us of
//! median latency at moderate load.
//!
//! With backend TLS configured, the TCP connection is wrapped in TLS
//! (ALPN `h2`) before the HTTP/2 handshake, checking the service's name
//! (see `tls.rs`); both happen within the connect timeout.
//!
//! Not a pool of connections per endpoint: one HTTP/2 connection multiplexes
//! every stream, which is what gRPC expects.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use eds_gather::Coalesced;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;

use crate::tls::Dialer;

/// Connection state of one endpoint.
#[derive(Debug)]
pub(crate) struct Connection {
    address: SocketAddr,
    dialer: Arc<Dialer>,
    /// The open connection's handle: read (and cloned) by every request.
    ready: RwLock<Option<SendRequest<Body>>>,
    /// Held while connecting, so concurrent requests wait for one connect
    /// rather than opening several connections.
    connecting: tokio::sync::Mutex<()>,
    down_until: Mutex<Option<Instant>>,
    /// Requests in flight to this endpoint (the pool counts them): gates
    /// write gathering.
    in_flight: Arc<AtomicU32>,
}

/// How long a failed endpoint is avoided before the next connect attempt.
const DOWN_FOR: Duration = Duration::from_secs(1);

impl Connection {
    pub(crate) fn new(address: SocketAddr, dialer: Arc<Dialer>, in_flight: Arc<AtomicU32>) -> Self {
        Self {
            address,
            dialer,
            ready: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            down_until: Mutex::new(None),
            in_flight,
        }
    }

    /// Whether the last connect failed less than a second ago.
    pub(crate) fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t > now)
    }

    /// Whether a connection is open now (for debug views).
    pub(crate) fn is_open(&self) -> bool {
        self.open().is_some()
    }

    fn open(&self) -> Option<SendRequest<Body>> {
        self.ready
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// A handle to send on, connecting first if needed. The common case (a
    /// connection is open) is a read lock and a clone.
    pub(crate) async fn sender(&self) -> std::io::Result<SendRequest<Body>> {
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let _connecting = self.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let timeout = self.dialer.connect_timeout;
        let result = tokio::time::timeout(
            timeout,
            connect(self.address, &self.dialer, &self.in_flight),
        )
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no HTTP/2 connection within {timeout:?}"),
            ))
        });
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(s) => {
                *down = None;
                *self.ready.write().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                *down = Some(Instant::now() + DOWN_FOR);
                Err(e)
            }
        }
    }

    /// Lets the connection go: new requests would open another, and the
    /// open one closes once the requests still on it have ended (each holds
    /// its own handle to it).
    pub(crate) fn close(&self) {
        self.ready.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The URI scheme of requests on this connection.
    pub(crate) fn scheme(&self) -> http::uri::Scheme {
        self.dialer.scheme()
    }

    /// Marks the endpoint down after a request found the connection broken.
    pub(crate) fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
    }
}

async fn connect(
    address: SocketAddr,
    dialer: &Dialer,
    in_flight: &Arc<AtomicU32>,
) -> std::io::Result<SendRequest<Body>> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    // gRPC messages are small and latency-bound; Nagle only adds delay.
    tcp.set_nodelay(true)?;
    let Some(tls) = &dialer.tls else {
        return handshake(address, gathered(tcp, in_flight)).await;
    };
    let stream = tls.connector.connect(tls.server_name.clone(), tcp).await?;
    // No ALPN at all may still be HTTP/2 by prior knowledge; another
    // protocol (http/1.1) never is, and the preface would fail obscurely.
    if let Some(other) = stream.get_ref().1.alpn_protocol().filter(|p| *p != b"h2") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the backend chose ALPN protocol {:?}, not h2 (gRPC needs HTTP/2)",
                String::from_utf8_lossy(other)
            ),
        ));
    }
    // Gathered above TLS, so a gathered write is also one record, not many.
    handshake(address, gathered(stream, in_flight)).await
}

/// `io` with its writes gathered while another request is in flight: the
/// request being written counts itself, so a count of 1 is a lone request.
fn gathered<T>(io: T, in_flight: &Arc<AtomicU32>) -> Coalesced<T> {
    Coalesced::new(io).defer_only_while(Arc::clone(in_flight), 1)
}

async fn handshake<T>(address: SocketAddr, io: T) -> std::io::Result<SendRequest<Body>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Pings find a dead peer (a node gone without a FIN) in ~30 s
        // instead of the kernel's hours.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%address, error = %e, "connection to endpoint ended");
        }
    });
    Ok(sender)
}
