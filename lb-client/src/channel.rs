//! The tower `Service` a tonic client sends through: one pick per request.
//!
//! ```text
//!  call(request) -> wait for a first endpoint (bounded)
//!               -> pick (lb-core) -> connection -> send
//!                    ^                    |
//!                    +-- never sent, ----+   (retry budget permitting)
//!                        try another
//!  response body -> TrackedBody: in flight until the body or stream ends;
//!                   grpc-status from trailers (or headers) -> outcome
//! ```
//!
//! A request is retried only when it provably never left the client (the
//! connect failed, or hyper handed the request back unsent): anything else
//! may have reached application code, and retrying it is the caller's call.
//!
//! Not a connection: `conn` owns those. Not a policy: `lb-core` picks.

use std::future::Future;
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
        Box::pin(async move {
            send(pool, settings, request)
                .await
                // tonic turns a `Status` error from the transport into the call's status.
                .map_err(|e| Box::new(e.to_status()) as BoxError)
        })
    }
}

async fn wait_for_endpoints(
    pool: &ServicePool,
    settings: &CallSettings,
) -> Result<(), RequestError> {
    if pool.has_endpoints() {
        return Ok(());
    }
    let mut generation = pool.generation();
    let started = Instant::now();
    let waited = tokio::time::timeout(settings.wait_for_endpoints, async {
        while !pool.has_endpoints() {
            if generation.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    if waited.is_ok() && pool.has_endpoints() {
        Ok(())
    } else {
        Err(RequestError::NoEndpoints {
            service: pool.name.clone(),
            waited: started.elapsed(),
            control_plane: settings.control_plane_state(),
        })
    }
}

async fn send(
    pool: Arc<ServicePool>,
    settings: Arc<CallSettings>,
    mut request: http::Request<Body>,
) -> Result<http::Response<Body>, RequestError> {
    wait_for_endpoints(&pool, &settings).await?;
    let hash = pool.hash_key(&request);
    settings.budget.deposit();
    let mut attempt = 1;
    loop {
        let (claim, _pick) = pool.pick(hash).map_err(|_| RequestError::NoEndpoints {
            service: pool.name.clone(),
            waited: Duration::ZERO,
            control_plane: settings.control_plane_state(),
        })?;
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
                handle.set_uri(&mut request);
                let started = Instant::now();
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(track(response, claim, started)),
                    Err(mut e) => {
                        let Some(unsent) = e.take_message() else {
                            pool.record(&handle, Outcome::Failure);
                            return Err(RequestError::Transport {
                                service: pool.name.clone(),
                                address: handle.address(),
                                source: e.into_error(),
                            });
                        };
                        // Handed back unsent: the connection closed under us.
                        request = unsent;
                        pool.connect_failed(&handle);
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
        tracing::debug!(service = %pool.name, attempt, error = %error, "request never sent; retrying on another endpoint");
        pool.metrics().retry(&pool.name);
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
