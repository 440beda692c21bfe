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
/// only to listeners it binds itself) and, with `gather`, writes gathered.
///
/// `gather` must be off when tonic terminates TLS on these sockets: its TLS
/// layer sits above them, and a handshake that flushes once and then waits
/// to read would never send its bytes through a deferred flush.
pub fn xds_incoming(
    listener: TcpListener,
    gather: bool,
) -> impl Stream<Item = io::Result<Coalesced<TcpStream>>> + Send + 'static {
    let wrap = if gather {
        Coalesced::new
    } else {
        Coalesced::passthrough
    };
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(wrap))
}
