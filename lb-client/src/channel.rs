//! The tower `Service` a tonic client sends through: one pick per request.
//!
//! ```text
//!  call(request) -> deadline from grpc-timeout (if any) bounds all below
//!               -> wait for a first endpoint (bounded)
//!               -> read the body ahead (replay) -> pick (lb-core; skip a
//!                  full endpoint or one already tried) -> connection -> send
//!                    ^                                                  |
//!                    +-- never sent, or refused unprocessed, -----------+
//!                        try another (retry budget permitting)
//!  response body -> TrackedBody: in flight until the body or stream ends;
//!                   grpc-status from trailers (or headers) -> outcome
//! ```
//!
//! A request is retried only when it provably never reached application
//! code: the connect failed, hyper handed the request back unsent, or the
//! backend refused the stream unprocessed (RST_STREAM with REFUSED_STREAM,
//! or a GOAWAY whose last stream id is below it; HTTP/2 promises neither
//! was processed). A refused request is sent again only when its body was
//! read whole before the first attempt (`replay`: unary requests are).
//! Anything else may have reached application code, and retrying it is the
//! caller's call. A refusal counts against the endpoint like a failure: an
//! endpoint refusing everything looks idle to least-request picks and would
//! draw traffic until ejected.
//!
//! A request's `grpc-timeout` (tonic's `Request::set_timeout`) is enforced
//! here, as tonic's own `Channel` does: from the call until response
//! headers (waiting for endpoints, connecting, retries), not over a
//! streaming response body. It ends with DEADLINE_EXCEEDED; when it ran out
//! after the request was sent, the endpoint is charged a failure (a hanging
//! backend feeds outlier detection), and the stream is reset (hyper resets
//! a stream whose response future is dropped).
//!
//! With `ServiceOptions::max_in_flight_per_endpoint`, a pick landing on a
//! full endpoint is released and picked again a few times; then the request
//! fails with RESOURCE_EXHAUSTED rather than queue.
//!
//! Not a connection: `conn` owns those. Not a policy: `lb-core` picks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use lb_core::outlier::Outcome;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};

use crate::control::ControlPlaneStatus;
use crate::error::RequestError;
use crate::pool::{InFlight, ServicePool};
use crate::replay::Prefetched;

/// Settings a channel needs at call time.
#[derive(Debug)]
pub(crate) struct CallSettings {
    pub(crate) wait_for_endpoints: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) budget: TpsBudget,
    pub(crate) status: Arc<std::sync::Mutex<ControlPlaneStatus>>,
}

impl CallSettings {
    fn control_plane_state(&self) -> &'static str {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).state
    }
}

/// A cloneable tower `Service` balancing every request over one service's
/// endpoints. Any tonic-generated client accepts it:
/// `EchoClient::new(client.channel("echo.demo:8080")?)`.
#[derive(Debug, Clone)]
pub struct LbChannel {
    pool: Arc<ServicePool>,
    settings: Arc<CallSettings>,
}

impl LbChannel {
    pub(crate) fn new(pool: Arc<ServicePool>, settings: Arc<CallSettings>) -> Self {
        Self { pool, settings }
    }

    pub(crate) fn pool(&self) -> &Arc<ServicePool> {
        &self.pool
    }

    /// The service key this channel balances over.
    pub fn service(&self) -> &str {
        &self.pool.name
    }
}

/// The boxed error tonic accepts from a transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for LbChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per endpoint and decided at pick time; a channel with
        // no endpoints yet still accepts requests, which wait (bounded).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let pool = self.pool.clone();
        let settings = self.settings.clone();
        // The clock starts when the application hands the request over.
        let deadline = grpc_timeout(request.headers()).and_then(|timeout| {
            Some(Deadline {
                at: tokio::time::Instant::now().checked_add(timeout)?,
                timeout,
            })
        });
        Box::pin(async move {
            let sent = match deadline {
                None => send(&pool, &settings, request, None).await,
                // Dropping `send` releases its claim on an endpoint and
                // resets a stream already open.
                Some(d) => tokio::time::timeout_at(d.at, send(&pool, &settings, request, Some(d)))
                    .await
                    .unwrap_or_else(|_| Err(d.exceeded(&pool))),
            };
            // tonic turns a `Status` error from the transport into the call's status.
            sent.map_err(|e| Box::new(e.to_status()) as BoxError)
        })
    }
}

/// When a request must have its response headers.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
}

impl Deadline {
    fn exceeded(&self, pool: &ServicePool) -> RequestError {
        RequestError::DeadlineExceeded {
            service: pool.name.clone(),
            timeout: self.timeout,
        }
    }
}

/// The `grpc-timeout` header as a duration: 1 to 8 ASCII digits and a unit
/// (`H`ours, `M`inutes, `S`econds, `m`illis, `u` micros, `n`anos), per
/// gRPC over HTTP/2. Anything else is no timeout, as if the header were
/// absent (tonic's server does the same).
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99,999,999: no overflow, even in hours as seconds.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a failed request provably never reached the backend's
/// application code: the backend refused its stream (RST_STREAM with
/// REFUSED_STREAM), or it was above the last stream id of a GOAWAY the
/// backend sent. h2 gives a remote GOAWAY error only to those streams
/// (and to streams opened after it); streams the GOAWAY let finish but the
/// connection then cut get an I/O error, which does not qualify.
pub(crate) fn never_processed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        cause = e.source();
    }
    false
}

/// The first attempt's pick. While the service has no endpoint this
/// request may use (none at all, or only draining ones inside their drain
/// margin, or only not-ready ones), the request waits for the next update
/// within `wait_for_endpoints` instead of failing at once: at start-up the
/// first endpoints, and in a rollout the replacement pods, are usually an
/// update away.
async fn first_pick(
    pool: &Arc<ServicePool>,
    settings: &CallSettings,
    hash: Option<u64>,
) -> Result<InFlight, RequestError> {
    // Subscribed before the first try, so an update in between is seen.
    let mut generation = pool.generation();
    match pick(pool, settings, hash, &[]) {
        Err(RequestError::NoEndpoints { .. }) => {}
        other => return other,
    }
    let started = Instant::now();
    let waited = tokio::time::timeout(settings.wait_for_endpoints, async {
        loop {
            if generation.changed().await.is_err() {
                return None;
            }
            match pick(pool, settings, hash, &[]) {
                Err(RequestError::NoEndpoints { .. }) => continue,
                other => return Some(other),
            }
        }
    })
    .await;
    match waited {
        Ok(Some(result)) => result,
        _ => Err(RequestError::NoEndpoints {
            service: pool.name.clone(),
            waited: started.elapsed(),
            control_plane: settings.control_plane_state(),
        }),
    }
}

/// Picks per attempt before giving up on finding an endpoint under the cap
/// (or one not tried yet): P2C and the weighted pickers rarely pick a full
/// endpoint twice running when another has room.
const PICKS_PER_ATTEMPT: usize = 4;

/// A pick for one attempt: an endpoint under the in-flight cap, and one
/// not `tried` by an earlier attempt of this request when the policy
/// offers another (a hashing policy picks the same one each time, which is
/// then used again).
fn pick(
    pool: &Arc<ServicePool>,
    settings: &CallSettings,
    hash: Option<u64>,
    tried: &[SocketAddr],
) -> Result<InFlight, RequestError> {
    let cap = pool.max_in_flight();
    let mut tried_before = None;
    for _ in 0..PICKS_PER_ATTEMPT {
        let (claim, _pick, before) =
            pool.pick(hash, tried)
                .map_err(|_| RequestError::NoEndpoints {
                    service: pool.name.clone(),
                    waited: Duration::ZERO,
                    control_plane: settings.control_plane_state(),
                })?;
        if cap.is_some_and(|cap| before >= cap) {
            // Full: dropping the claim releases it.
            continue;
        }
        if tried.contains(&claim.handle().address()) {
            // Held while picking again, so load-aware pickers see it busy.
            tried_before.get_or_insert(claim);
            continue;
        }
        return Ok(claim);
    }
    match (tried_before, cap) {
        (Some(claim), _) => Ok(claim),
        (None, Some(cap)) => Err(RequestError::Overloaded {
            service: pool.name.clone(),
            cap,
        }),
        // Without a cap every pick returned or was kept.
        (None, None) => Err(RequestError::NoEndpoints {
            service: pool.name.clone(),
            waited: Duration::ZERO,
            control_plane: settings.control_plane_state(),
        }),
    }
}

async fn send(
    pool: &Arc<ServicePool>,
    settings: &CallSettings,
    request: http::Request<Body>,
    deadline: Option<Deadline>,
) -> Result<http::Response<Body>, RequestError> {
    let hash = pool.hash_key(&request);
    let mut first = Some(first_pick(pool, settings, hash).await?);
    settings.budget.deposit();
    let (parts, body) = request.into_parts();
    let mut body = Prefetched::read(body);
    // Kept for a resend only when there can be one.
    let mut parts = Some(parts);
    let mut next: Option<http::Request<Body>> = None;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 1;
    loop {
        let claim = match first.take() {
            Some(claim) => claim,
            None => pick(pool, settings, hash, &tried)?,
        };
        let handle = claim.handle().clone();
        let error = match handle.conn.sender().await {
            Err(source) => {
                pool.connect_failed(&handle);
                RequestError::Connect {
                    service: pool.name.clone(),
                    address: handle.address(),
                    source,
                }
            }
            Ok(mut sender) => {
                let mut request = match next.take() {
                    Some(unsent) => unsent,
                    None => {
                        let resend = body.replayable() && attempt < settings.max_attempts;
                        let head = if resend { parts.clone() } else { parts.take() };
                        let (Some(head), Some(this_body)) = (head, body.attempt()) else {
                            // Unreachable: a request is built again only
                            // when its body is whole (a partly read one
                            // that was refused returned below). Said as
                            // an error rather than a panic on a request path.
                            return Err(RequestError::NoEndpoints {
                                service: pool.name.clone(),
                                waited: Duration::ZERO,
                                control_plane: "request body already sent",
                            });
                        };
                        http::Request::from_parts(head, this_body)
                    }
                };
                handle.set_uri(&mut request);
                let started = Instant::now();
                let sent = match deadline {
                    None => sender.try_send_request(request).await,
                    Some(d) => {
                        match tokio::time::timeout_at(d.at, sender.try_send_request(request)).await
                        {
                            Ok(sent) => sent,
                            Err(_) => {
                                // Sent and unanswered in time: the endpoint's
                                // fault as far as anyone can tell.
                                pool.record(&handle, Outcome::Failure);
                                return Err(d.exceeded(pool));
                            }
                        }
                    }
                };
                match sent {
                    Ok(response) => return Ok(track(response, claim, started)),
                    Err(mut e) => {
                        if let Some(unsent) = e.take_message() {
                            // Handed back unsent: the connection closed under us.
                            next = Some(unsent);
                            pool.connect_failed(&handle);
                        } else if never_processed(e.error()) && body.replayable() {
                            // Refused: the connection is fine (or going
                            // away on its own); only the endpoint is charged.
                            pool.record(&handle, Outcome::Failure);
                        } else {
                            pool.record(&handle, Outcome::Failure);
                            return Err(RequestError::Transport {
                                service: pool.name.clone(),
                                address: handle.address(),
                                source: e.into_error(),
                            });
                        }
                        RequestError::Transport {
                            service: pool.name.clone(),
                            address: handle.address(),
                            source: e.into_error(),
                        }
                    }
                }
            }
        };
        drop(claim);
        if attempt >= settings.max_attempts || !settings.budget.withdraw() {
            return Err(error);
        }
        tracing::debug!(service = %pool.name, attempt, error = %error, "request never processed; retrying on another endpoint");
        pool.metrics().retry(&pool.name);
        tried.push(handle.address());
        attempt += 1;
    }
}

fn track(
    response: http::Response<Incoming>,
    claim: InFlight,
    started: Instant,
) -> http::Response<Body> {
    let pool = claim.pool().clone();
    claim
        .handle()
        .observe_latency(started.elapsed(), pool.now().as_secs_f64());
    // A trailers-only response (how servers answer most errors) carries
    // grpc-status in the headers, and tonic drops its body unread: judge it now.
    if let Some(outcome) = grpc_outcome(response.headers()) {
        pool.record(claim.handle(), outcome);
        return response.map(|inner| {
            Body::new(TrackedBody {
                inner,
                claim: Some(claim),
                judged: true,
            })
        });
    }
    response.map(|inner| {
        Body::new(TrackedBody {
            inner,
            claim: Some(claim),
            judged: false,
        })
    })
}

/// The outcome a `grpc-status` blames on the server, if present.
fn grpc_outcome(headers: &http::HeaderMap) -> Option<Outcome> {
    let status = headers.get("grpc-status")?;
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    Some(if blames_server(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    })
}

/// Statuses that say the endpoint, not the request, is at fault.
fn blames_server(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::DataLoss
            | tonic::Code::DeadlineExceeded
    )
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until the
    /// body ends, and reports the outcome from the gRPC trailers.
    struct TrackedBody {
        #[pin]
        inner: Incoming,
        claim: Option<InFlight>,
        // The outcome was recorded from the headers already.
        judged: bool,
    }

    impl PinnedDrop for TrackedBody {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the end (the caller cancelled or stopped
            // reading): the request leaves the in-flight count, but says
            // nothing about the endpoint's health.
            let _ = this.project().claim.take();
        }
    }
}

impl TrackedBody {
    fn finish(claim: &mut Option<InFlight>, judged: bool, outcome: Outcome) {
        if let Some(claim) = claim.take()
            && !judged
        {
            claim.pool().clone().record(claim.handle(), outcome);
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // Missing grpc-status in trailers is a protocol error: the server's fault.
                    let outcome = grpc_outcome(trailers).unwrap_or(Outcome::Failure);
                    Self::finish(this.claim, *this.judged, outcome);
                }
            }
            Poll::Ready(Some(Err(_))) => Self::finish(this.claim, *this.judged, Outcome::Failure),
            // Ended without trailers: a gRPC protocol violation, the server's fault.
            Poll::Ready(None) => Self::finish(this.claim, *this.judged, Outcome::Failure),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &[u8]) -> Option<Duration> {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", http::HeaderValue::from_bytes(value).ok()?);
        grpc_timeout(&h)
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_malformed() {
        assert_eq!(timeout_of(b"200000u"), Some(Duration::from_millis(200)));
        assert_eq!(timeout_of(b"200m"), Some(Duration::from_millis(200)));
        assert_eq!(timeout_of(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout_of(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout_of(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout_of(b"5n"), Some(Duration::from_nanos(5)));
        assert_eq!(timeout_of(b"0m"), Some(Duration::ZERO));
        assert_eq!(
            timeout_of(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600)),
            "the largest value does not overflow"
        );
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"100x",
            b"100 m",
            b" 100m",
            b"-1m",
            b"+1m",
            b"1.5S",
            b"123456789m",
            b"10mm",
            b"\xff1m",
        ] {
            assert_eq!(timeout_of(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Never a panic: every string of up to three bytes from a mixed alphabet.
        let alphabet = b"09HMSmunx \xff";
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let _ = timeout_of(&[*a]);
                    let _ = timeout_of(&[*a, *b]);
                    let _ = timeout_of(&[*a, *b, *c]);
                }
            }
        }
        // tonic's own encoding of set_timeout reads back (to the microsecond it keeps).
        for ms in [1u64, 200, 1_500, 30_000, 3_600_000] {
            let mut request = tonic::Request::new(());
            request.set_timeout(Duration::from_millis(ms));
            let headers = request.into_parts().0.into_headers();
            assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(ms)));
        }
    }

    type ServerConn = h2::server::Connection<tokio::net::TcpStream, Bytes>;
    type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// One request through hyper's HTTP/2 client to a bare h2 server that
    /// does `serve` with the connection; the error hyper reports.
    async fn error_from(
        serve: impl FnOnce(ServerConn) -> Serving + Send + 'static,
    ) -> hyper::Error {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let conn = h2::server::handshake(tcp).await.unwrap();
            serve(conn).await;
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{address}/eds.echo.v1.Echo/Echo"))
            .body(Body::empty())
            .unwrap();
        let error = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("hyper answered")
            .expect_err("the server answered nothing");
        server.abort();
        error
    }

    #[tokio::test]
    async fn a_refused_stream_was_never_processed_a_cut_one_may_have_been() {
        let refused = error_from(|mut conn| {
            Box::pin(async move {
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            })
        })
        .await;
        assert!(never_processed(&refused), "{refused:?}");

        // GOAWAY is not staged here: a server that sends it and closes
        // races the client's read of it against the close (the e2e drill,
        // whose backend drains the socket first, covers it).

        // Accepted (processing began), then the connection is cut: the
        // server may have acted on it, so it is not a refusal.
        let cut = error_from(|mut conn| {
            Box::pin(async move {
                let stream = conn.accept().await;
                drop(stream);
                drop(conn);
            })
        })
        .await;
        assert!(!never_processed(&cut), "{cut:?}");

        // Any other reset, also from the peer, may follow processing.
        let cancelled = error_from(|mut conn| {
            Box::pin(async move {
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            })
        })
        .await;
        assert!(!never_processed(&cancelled), "{cancelled:?}");
        // A local h2 error with the same reason is not the peer's word.
        assert!(!never_processed(&h2::Error::from(
            h2::Reason::REFUSED_STREAM
        )));
    }

    fn pool_with(cap: Option<u32>, endpoints: usize) -> (Arc<ServicePool>, CallSettings) {
        let options = crate::config::ServiceOptions {
            max_in_flight_per_endpoint: cap,
            slow_start: None,
            ..crate::config::ServiceOptions::default()
        };
        let context = crate::pool::PoolContext {
            zone: None,
            outlier: lb_core::outlier::OutlierConfig::default(),
            dialer: Arc::new(crate::tls::Dialer::plaintext(Duration::from_secs(1))),
            epoch: Instant::now(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
        let pool = Arc::new(
            ServicePool::new(
                "echo.demo:8080".parse().unwrap(),
                "echo.demo:8080".into(),
                &options,
                context,
            )
            .unwrap(),
        );
        let set = lb_core::EndpointSet::merge(
            (0..endpoints)
                .map(|i| lb_core::Endpoint::new(SocketAddr::from(([10, 0, 0, i as u8 + 1], 9090))))
                .collect(),
        );
        pool.update(set, crate::pool::Source::Static, String::new(), false);
        let settings = CallSettings {
            wait_for_endpoints: Duration::from_secs(1),
            max_attempts: 3,
            budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
            status: Arc::default(),
        };
        (pool, settings)
    }

    #[test]
    fn a_full_endpoint_is_never_picked_past_its_cap() {
        let (pool, settings) = pool_with(Some(2), 1);
        let a = pick(&pool, &settings, None, &[]).unwrap();
        let b = pick(&pool, &settings, None, &[]).unwrap();
        assert_eq!(a.handle().in_flight(), 2);
        let full = pick(&pool, &settings, None, &[]).unwrap_err();
        assert!(
            matches!(full, RequestError::Overloaded { cap: 2, .. }),
            "{full}"
        );
        assert_eq!(
            a.handle().in_flight(),
            2,
            "the refused picks released their claims"
        );
        drop(b);
        let c = pick(&pool, &settings, None, &[]).unwrap();
        assert_eq!(c.handle().in_flight(), 2);
        drop((a, c));

        // Over three endpoints with a cap of 2: six requests fit, the
        // seventh finds every endpoint full (or, by chance, keeps picking
        // full ones), and no endpoint ever holds three.
        let (pool, settings) = pool_with(Some(2), 3);
        let mut held = Vec::new();
        for _ in 0..40 {
            if let Ok(claim) = pick(&pool, &settings, None, &[]) {
                held.push(claim);
            }
            assert!(
                pool.debug().endpoints.iter().all(|e| e.in_flight <= 2),
                "{:?}",
                pool.debug().endpoints
            );
        }
        assert!(held.len() >= 4 && held.len() <= 6, "{}", held.len());

        // No cap: no limit.
        let (pool, settings) = pool_with(None, 1);
        let claims: Vec<_> = (0..50)
            .map(|_| pick(&pool, &settings, None, &[]).unwrap())
            .collect();
        assert_eq!(claims[0].handle().in_flight(), 50);
    }

    /// Hardening drill (issue 24, item 4): the only endpoint left is
    /// draining and inside its drain margin, its replacement one update
    /// away. Before, the request failed at once with "no endpoints"; now it
    /// waits for the update (within `wait_for_endpoints`) and goes to the
    /// replacement.
    #[tokio::test]
    async fn a_request_finding_only_a_draining_pod_past_its_margin_waits_for_the_update() {
        let (pool, settings) = pool_with(None, 0);
        let now = std::time::SystemTime::now();
        let leaving = SocketAddr::from(([10, 0, 0, 1], 9090));
        let draining = lb_core::Endpoint::new(leaving)
            .with_health(lb_core::Health::Draining)
            .with_drain_deadline(now + Duration::from_secs(1));
        pool.update(
            lb_core::EndpointSet::merge(vec![draining.clone()]),
            crate::pool::Source::Static,
            "1".into(),
            false,
        );
        assert!(
            matches!(
                pick(&pool, &settings, None, &[]),
                Err(RequestError::NoEndpoints { .. })
            ),
            "a pod 1 s from its deadline (margin 2 s) takes no new request"
        );
        let replacement = SocketAddr::from(([10, 0, 0, 2], 9090));
        let updater = Arc::clone(&pool);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let set =
                lb_core::EndpointSet::merge(vec![draining, lb_core::Endpoint::new(replacement)]);
            updater.update(set, crate::pool::Source::Static, "2".into(), false);
        });
        let started = Instant::now();
        let claim = first_pick(&pool, &settings, None).await.unwrap();
        assert_eq!(claim.handle().address(), replacement);
        assert!(
            started.elapsed() >= Duration::from_millis(90),
            "{:?}",
            started.elapsed()
        );

        // With no update coming, the wait ends with the usual error.
        let (pool, settings) = pool_with(None, 0);
        let err = first_pick(&pool, &settings, None).await.err().unwrap();
        assert!(
            matches!(err, RequestError::NoEndpoints { waited, .. } if waited >= Duration::from_secs(1)),
            "{err}"
        );
    }

    #[test]
    fn a_retry_prefers_an_endpoint_not_tried_yet() {
        let (pool, settings) = pool_with(None, 2);
        for _ in 0..50 {
            let first = pick(&pool, &settings, None, &[]).unwrap();
            let tried = [first.handle().address()];
            drop(first);
            let second = pick(&pool, &settings, None, &tried).unwrap();
            assert_ne!(second.handle().address(), tried[0]);
            assert_eq!(
                pool.debug()
                    .endpoints
                    .iter()
                    .map(|e| e.in_flight)
                    .sum::<u32>(),
                1,
                "the other pick's claim was released"
            );
        }
        // With one endpoint, the tried one is used again rather than fail.
        let (pool, settings) = pool_with(None, 1);
        let only = pool.debug().endpoints[0].address;
        assert!(pick(&pool, &settings, None, &[only]).is_ok());
    }

    #[test]
    fn only_server_side_statuses_count_against_an_endpoint() {
        let outcome = |code: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", code.parse().unwrap());
            grpc_outcome(&h)
        };
        assert_eq!(outcome("0"), Some(Outcome::Success));
        assert_eq!(
            outcome("5"),
            Some(Outcome::Success),
            "NOT_FOUND is the caller's problem"
        );
        assert_eq!(outcome("3"), Some(Outcome::Success), "INVALID_ARGUMENT too");
        assert_eq!(outcome("14"), Some(Outcome::Failure), "UNAVAILABLE");
        assert_eq!(outcome("13"), Some(Outcome::Failure), "INTERNAL");
        assert_eq!(outcome("4"), Some(Outcome::Failure), "DEADLINE_EXCEEDED");
        assert_eq!(
            outcome("garbage"),
            Some(Outcome::Failure),
            "unparseable is UNKNOWN"
        );
        assert_eq!(grpc_outcome(&http::HeaderMap::new()), None);
    }
}
