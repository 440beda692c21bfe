//! The xDS listener's sockets: Nagle off and writes gathered
//! ([`eds_gather::Coalesced`], whose doc says why a push needs it).
//!
//! Not the gathering itself, which lb-client shares; only how eds-server's
//! listener applies it.

use std::io;

use eds_gather::Coalesced;
use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// The xDS listener's connections: Nagle off (a small push held behind a
/// delayed ACK would wait tens of milliseconds; tonic applies `tcp_nodelay`
/// only to listeners it binds itself) and writes gathered.
pub fn xds_incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<Coalesced<TcpStream>>> + Send + 'static {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(Coalesced::new))
}
