//! The xDS listener's sockets: Nagle off, writes gathered
//! ([`eds_gather::Coalesced`], whose doc says why a push needs it), and
//! accept failures backed off.
//!
//! Not the gathering itself, which lb-client shares; only how eds-server's
//! listener applies it.

use std::io;
use std::time::Duration;

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
    backoff_accept_errors(Box::pin(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
    ))
    .map(move |accepted| Ok::<_, io::Error>(wrap(accepted)))
}

/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// The connections of `incoming`, with accept errors logged and waited out
/// rather than passed on.
///
/// An accept that fails for want of file descriptors (EMFILE, ENFILE) or
/// memory fails again at once until something is freed; tonic skips an
/// error and accepts again immediately, so a full descriptor table would
/// spin a core and flood the log while the existing streams need both. Here
/// each consecutive failure doubles a pause from 5 ms up to 1 s, and the
/// first success resets it.
pub fn backoff_accept_errors<T, S>(incoming: S) -> impl Stream<Item = T> + Send + 'static
where
    S: Stream<Item = io::Result<T>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    backoff_between(incoming, ACCEPT_BACKOFF)
}

fn backoff_between<T, S>(
    incoming: S,
    (first, longest): (Duration, Duration),
) -> impl Stream<Item = T> + Send + 'static
where
    S: Stream<Item = io::Result<T>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    futures::stream::unfold(
        (incoming, Duration::ZERO),
        move |(mut incoming, mut pause)| async move {
            loop {
                match incoming.next().await? {
                    Ok(accepted) => return Some((accepted, (incoming, Duration::ZERO))),
                    Err(error) => {
                        pause = (pause * 2).clamp(first, longest);
                        tracing::warn!(%error, pause = ?pause, "accepting an xDS connection failed; pausing before the next accept");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drill at unit level: a listener out of file descriptors fails
    /// every accept at once. Twenty such failures must be waited out with
    /// pauses that double up to the cap (not retried at once), and the
    /// connection after them must still come through. Scaled down to
    /// 1..8 ms pauses: 1 + 2 + 4 + 17 x 8 = 143 ms at least.
    #[tokio::test]
    async fn failed_accepts_are_backed_off_and_serving_resumes() {
        let emfile = 24; // EMFILE on Linux
        let mut script: Vec<io::Result<u32>> = (0..20)
            .map(|_| Err(io::Error::from_raw_os_error(emfile)))
            .collect();
        script.push(Ok(7));
        script.push(Err(io::Error::other("once more")));
        script.push(Ok(8));
        let pauses = (Duration::from_millis(1), Duration::from_millis(8));
        let started = std::time::Instant::now();
        let mut accepted = Box::pin(backoff_between(futures::stream::iter(script), pauses));
        assert_eq!(accepted.next().await, Some(7));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(143), "{waited:?}");
        assert_eq!(accepted.next().await, Some(8));
        assert_eq!(accepted.next().await, None);
    }
}
