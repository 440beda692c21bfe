//! The xDS gRPC services as tower services over HTTP/2, with request
//! decoding by tonic and responses written from shared buffers.
//!
//! tonic's generated servers encode every response through prost into a
//! per-stream buffer. For xDS that is the wrong shape: the same large
//! ClusterLoadAssignment goes to thousands of streams, and copying it per
//! stream (twice: once into a `DiscoveryResponse`, once into tonic's buffer)
//! was most of the server's CPU when fanning out (see [`crate::xds::wire`]).
//! Here each service is a tower `Service` that tonic's router mounts like
//! a generated one ([`NamedService`]): requests are decoded by tonic's own
//! [`Streaming`] decoder, and the response body ([`WireBody`]) hands
//! hyper each message as chunks that reference the shared encodings, so
//! the kernel's copy into the socket is the only per-stream copy.
//!
//! What the generated servers did and this keeps: routing by method name,
//! gRPC status for unknown methods and unsupported compression (trailers-only
//! responses), the end-of-stream status in trailers, the peer address and
//! TLS information in the request extensions. What this is not: the stream
//! logic, which is [`crate::serve`]'s, and the encoding, which is
//! [`crate::xds::wire`]'s.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use proto::xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic_prost::ProstCodec;

use crate::outbox;
use crate::serve::XdsServices;
use crate::xds::{ResourceType, StreamKind, WireMessage};

/// One xDS gRPC service: its name and methods, and the stream kind it serves.
pub trait XdsApi: Send + Sync + 'static {
    /// Fully qualified service name, as in the request path.
    const NAME: &'static str;
    /// The state-of-the-world streaming method.
    const SOTW: &'static str;
    /// The delta streaming method.
    const DELTA: &'static str;
    /// The unary REST-style method, which eds-server does not serve.
    const FETCH: Option<&'static str>;
    /// ADS, or the one type of a per-type service.
    const KIND: StreamKind;
}

macro_rules! xds_api {
    ($(#[$doc:meta])* $api:ident, $name:literal, $sotw:literal, $delta:literal, $fetch:expr, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub enum $api {}

        impl XdsApi for $api {
            const NAME: &'static str = $name;
            const SOTW: &'static str = $sotw;
            const DELTA: &'static str = $delta;
            const FETCH: Option<&'static str> = $fetch;
            const KIND: StreamKind = $kind;
        }
    };
}

xds_api!(
    /// The aggregated discovery service (ADS).
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    "StreamAggregatedResources",
    "DeltaAggregatedResources",
    None,
    StreamKind::Aggregated
);
xds_api!(
    /// EDS.
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    "StreamEndpoints",
    "DeltaEndpoints",
    Some("FetchEndpoints"),
    StreamKind::Single(ResourceType::ClusterLoadAssignment)
);
xds_api!(
    /// CDS.
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    "StreamClusters",
    "DeltaClusters",
    Some("FetchClusters"),
    StreamKind::Single(ResourceType::Cluster)
);
xds_api!(
    /// LDS.
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    "StreamListeners",
    "DeltaListeners",
    Some("FetchListeners"),
    StreamKind::Single(ResourceType::Listener)
);
xds_api!(
    /// RDS.
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    "StreamRoutes",
    "DeltaRoutes",
    Some("FetchRoutes"),
    StreamKind::Single(ResourceType::RouteConfiguration)
);

/// The tower service for the xDS API `A`, mounted with
/// `Server::add_service`.
#[derive(Debug)]
pub struct XdsGrpc<A> {
    services: XdsServices,
    api: PhantomData<fn() -> A>,
}

impl<A> XdsGrpc<A> {
    /// The service `A` backed by `services`.
    pub fn new(services: XdsServices) -> Self {
        XdsGrpc {
            services,
            api: PhantomData,
        }
    }
}

impl<A> Clone for XdsGrpc<A> {
    fn clone(&self) -> Self {
        XdsGrpc::new(self.services.clone())
    }
}

impl<A: XdsApi> NamedService for XdsGrpc<A> {
    const NAME: &'static str = A::NAME;
}

impl<A: XdsApi> Service<http::Request<Body>> for XdsGrpc<A> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        ready(Ok(self.route(req).unwrap_or_else(Status::into_http)))
    }
}

impl<A: XdsApi> XdsGrpc<A> {
    fn route(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        if method == A::SOTW {
            let limit = self.services.0.max_request_bytes;
            let (peer, requests) = decode::<DiscoveryRequest>(req, limit)?;
            Ok(respond(self.services.sotw(A::KIND, peer, requests)))
        } else if method == A::DELTA {
            let limit = self.services.0.max_request_bytes;
            let (peer, requests) = decode::<DeltaDiscoveryRequest>(req, limit)?;
            Ok(respond(self.services.delta(A::KIND, peer, requests)))
        } else if Some(method) == A::FETCH {
            Err(Status::unimplemented(
                "eds-server serves xDS over streams only (REST-style Fetch is not supported)",
            ))
        } else {
            Err(Status::unimplemented(format!(
                "{} has no method {method:?}",
                A::NAME
            )))
        }
    }
}

/// The peer and the decoded request stream of a streaming call, whose
/// messages may be at most `limit` bytes.
fn decode<M>(
    req: http::Request<Body>,
    limit: usize,
) -> Result<(tonic::Request<()>, Streaming<M>), Status>
where
    M: prost::Message + Default + Send + 'static,
{
    // eds-server enables no request compression, so anything but identity
    // is refused the way tonic refuses it.
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "request compression {encoding:?} is not supported; send uncompressed messages"
        )));
    }
    let (parts, body) = req.into_parts();
    // Keeps the extensions (peer address, TLS certificates) and metadata.
    let head = tonic::Request::from_http(http::Request::from_parts(parts, ()));
    let decoder = ProstCodec::<(), M>::default().decoder();
    Ok((
        head,
        Streaming::new_request(decoder, body, None, Some(limit)),
    ))
}

/// The status a stream ends with when reading the client's next request
/// failed with `error`; `None` when nobody is left to tell.
///
/// tonic's decoder reports a transport failure (the client reset the stream,
/// the connection broke) as a status carrying its cause, and a bad message
/// as a bare status: INTERNAL for bytes that are not the message type (or
/// not gRPC framing), OUT_OF_RANGE for a length over the limit. Both are the
/// client's fault, so they come back as INVALID_ARGUMENT and
/// RESOURCE_EXHAUSTED, naming the problem; ending such a stream with OK, as
/// a clean close would, tells a client (or its operator) nothing.
pub(crate) fn request_error(error: &Status, limit: usize) -> Option<Status> {
    if std::error::Error::source(error).is_some() {
        return None;
    }
    Some(match error.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Status::resource_exhausted(format!(
                "request message too large: eds-server accepts at most {limit} bytes (--max-request-bytes): {}",
                error.message()
            ))
        }
        _ => Status::invalid_argument(format!(
            "the request could not be decoded as an xDS discovery request: {}",
            error.message()
        )),
    })
}

/// A streaming response: headers now, messages as the stream task sends
/// them, the final status in trailers.
fn respond<T: WireMessage + Send + 'static>(outbox: outbox::Receiver<T>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(WireBody::new(outbox)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The HTTP/2 body of one xDS stream: every message of the outbox as its
/// wire chunks, then the stream's status as trailers.
#[derive(Debug)]
pub struct WireBody<T> {
    outbox: outbox::Receiver<T>,
    /// Chunks of the message being written.
    pending: VecDeque<Bytes>,
    scratch: Vec<Bytes>,
    done: bool,
}

impl<T> WireBody<T> {
    fn new(outbox: outbox::Receiver<T>) -> Self {
        WireBody {
            outbox,
            pending: VecDeque::new(),
            scratch: Vec::new(),
            done: false,
        }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here.
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    map
}

impl<T: WireMessage> http_body::Body for WireBody<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(this.outbox.poll_recv(cx)) {
            Some(Ok(message)) => {
                message.encode_frames(&mut this.scratch);
                this.pending.extend(this.scratch.drain(..));
                return match this.pending.pop_front() {
                    Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                    None => {
                        // Every message has at least its 5-byte prefix.
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                };
            }
            Some(Err(status)) => status,
            // The stream task ended without an error: the client left or the
            // outbox closed; a clean end.
            None => Status::ok(""),
        };
        this.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use crate::xds::SotwResponse;

    fn response(nonce: &str) -> SotwResponse {
        SotwResponse {
            version_info: "v".into(),
            resources: vec![],
            type_url: "t".into(),
            nonce: nonce.into(),
        }
    }

    #[tokio::test]
    async fn body_writes_messages_then_the_status_in_trailers() {
        let (tx, rx) = outbox::outbox(4);
        tx.send(response("1")).await.unwrap();
        tx.finish(Status::unavailable("shutting down"));
        let collected = WireBody::new(rx).collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        // Percent-encoded, as the gRPC HTTP/2 protocol specifies.
        assert_eq!(trailers["grpc-message"], "shutting%20down");
        let mut expected = Vec::new();
        response("1").encode_frames(&mut expected);
        let expected: Vec<u8> = expected.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(collected.to_bytes().to_vec(), expected);
    }

    #[test]
    fn unreadable_requests_end_with_a_status_that_names_the_problem() {
        let garbage = request_error(&Status::internal("failed to decode Protobuf message"), 1024)
            .expect("a bad message is answered");
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        assert!(
            garbage.message().contains("failed to decode"),
            "{garbage:?}"
        );
        let large = request_error(
            &Status::out_of_range("decoded message length too large: found 5000 bytes"),
            1024,
        )
        .expect("an oversized message is answered");
        assert_eq!(large.code(), tonic::Code::ResourceExhausted);
        assert!(
            large.message().contains("1024 bytes") && large.message().contains("5000"),
            "{large:?}"
        );
        // A transport failure carries its cause: the client is gone.
        let reset = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert!(request_error(&reset, 1024).is_none());
    }

    #[tokio::test]
    async fn a_closed_outbox_ends_with_ok() {
        let (tx, rx) = outbox::outbox::<SotwResponse>(1);
        drop(tx);
        let collected = WireBody::new(rx).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }
}
