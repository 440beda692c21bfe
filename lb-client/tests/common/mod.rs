//! What lb-client's in-process tests share: serving a tonic service (a
//! scripted ADS server, an echo backend) on a loopback port. Not a mock of
//! anything: the services are real tonic servers; each test scripts its own.

use std::net::SocketAddr;

use tokio_stream::wrappers::TcpListenerStream;

/// Serves `service` on `127.0.0.1` at a free port, for the rest of the test.
pub(crate) async fn serve<S>(service: S) -> anyhow::Result<SocketAddr>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(addr)
}
