//! A socket wrapper that gathers an HTTP/2 connection's many small writes
//! into few large ones. eds-server's xDS sockets and lb-client's backend
//! connections both use it.
//!
//! Why: h2 writes every frame with its own system call and flushes after
//! it, and each call runs the TCP send path (on loopback, the receive path
//! too) for one small segment.
//! - Server pushes: stock xDS clients cap frames at 16 KiB
//!   (SETTINGS_MAX_FRAME_SIZE), so one push of a 150 KB ClusterLoadAssignment
//!   to 10,000 subscribers is about 94,000 calls. Profiles of the fan-out
//!   benchmark put more than half of eds-server's CPU there.
//! - Client requests: a client spreading requests over ten connections
//!   sends a handful per connection per wake-up, each its own call and
//!   segment, and the backend pays one read per segment. Gathered, the
//!   `overhead` benchmark's client and backends spend about a sixth less CPU
//!   per request over ten backends.
//!
//! Gathered into up to 256 KiB, the same bytes cost far fewer calls and
//! segments; the extra copy into a buffer that stays in cache is cheaper
//! than the calls it saves.
//!
//! The catch is flushing. h2 flushes after every frame it writes, so a
//! wrapper that wrote on every flush would gather nothing, and one that
//! never flushed a part-full buffer would strand a push's last bytes. The
//! rule here: a flush right after new writes is deferred (the data is kept
//! and the task is woken, so it is polled again as soon as the tasks
//! already waiting have run); a flush with no write since the previous
//! flush, or with a full buffer, writes everything out. h2's connection task
//! flushes at the end of every poll, so the deferred bytes leave on its next
//! poll, with whatever other streams queued meanwhile. An idle runtime runs
//! that poll at once. Shutdown writes everything out first.
//!
//! A busy runtime does not run it at once: the deferred bytes wait for the
//! tasks queued before them. That pays when more writes are coming and
//! costs latency when none are, so an owner that knows can gate the
//! deferral ([`Coalesced::defer_only_while`]): lb-client defers only while
//! more than one request is in flight on the connection.
//!
//! What it is not: a general buffered writer. `poll_flush` may return before
//! the bytes reach the socket, which is only right for a caller that, like
//! h2, keeps polling the connection while it has work.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many bytes are gathered before they are written: the size of a
/// loopback TCP segment's worth of frames several times over, and small
/// enough to stay in a core's cache.
pub const CAPACITY: usize = 256 * 1024;

/// Buffers kept for the next burst on any connection. Without a pool every
/// burst would allocate its buffer afresh, and the allocator hands large
/// blocks back to the kernel on free: at 100 connections a push cost
/// ~100,000 page faults more.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// At most this many buffers wait in the pool (16 MiB at [`CAPACITY`]).
const POOLED: usize = 64;

/// A buffer for a burst: a pooled one if `capacity` is the pooled size.
fn take_buffer(capacity: usize) -> Vec<u8> {
    let pooled = (capacity == CAPACITY)
        .then(|| POOL.lock().ok().and_then(|mut pool| pool.pop()))
        .flatten();
    pooled.unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Returns a burst's buffer to the pool, or frees it.
fn give_back(mut buf: Vec<u8>, capacity: usize) {
    if capacity != CAPACITY || buf.capacity() < CAPACITY {
        return;
    }
    buf.clear();
    if let Ok(mut pool) = POOL.lock()
        && pool.len() < POOLED
    {
        pool.push(buf);
    }
}

/// An IO object whose writes are gathered (see the module doc).
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// Gathered bytes; `buf[start..]` is not written yet.
    buf: Vec<u8>,
    start: usize,
    capacity: usize,
    /// Whether anything was gathered since the last flush.
    wrote_since_flush: bool,
    /// `false`: every call goes straight to `inner` ([`Coalesced::passthrough`]).
    gathering: bool,
    /// Flushes are deferred only while this count is above the bound
    /// ([`Coalesced::defer_only_while`]); always when `None`.
    gate: Option<(Arc<AtomicU32>, u32)>,
}

impl<T> Coalesced<T> {
    /// Wraps `inner`, gathering up to [`CAPACITY`] bytes.
    pub fn new(inner: T) -> Self {
        Self::with_capacity(inner, CAPACITY)
    }

    /// Wraps `inner`, gathering up to `capacity` bytes (at least one).
    pub fn with_capacity(inner: T, capacity: usize) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            start: 0,
            capacity: capacity.max(1),
            wrote_since_flush: false,
            gathering: true,
            gate: None,
        }
    }

    /// Defers a flush only while `load` (a count the owner keeps, such as
    /// requests in flight on the connection) is above `above`; otherwise
    /// every flush writes at once.
    ///
    /// Why: a deferred flush waits one round of the runtime's queue, so a
    /// write that has nothing to share its system call with only gets later
    /// for it. A client sending one request at a time on a connection paid
    /// ~40-80 us of median latency for nothing at moderate load; with
    /// several in flight, the next requests are usually already on their way
    /// and gathering pays.
    #[must_use]
    pub fn defer_only_while(mut self, load: Arc<AtomicU32>, above: u32) -> Self {
        self.gate = Some((load, above));
        self
    }

    /// Whether a flush right after new writes should wait for more.
    fn worth_deferring(&self) -> bool {
        self.gate
            .as_ref()
            .is_none_or(|(load, above)| load.load(Ordering::Relaxed) > *above)
    }

    /// Wraps `inner` without gathering: every call goes straight through.
    /// For a socket under TLS, whose handshake writes, flushes once and then
    /// waits to read: a deferred flush would strand the handshake and hang
    /// the connection. (Gathering belongs above TLS, as lb-client puts it.)
    pub fn passthrough(inner: T) -> Self {
        Coalesced {
            gathering: false,
            ..Self::new(inner)
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn room(&self) -> usize {
        self.capacity.saturating_sub(self.pending())
    }

    /// Copies as much of `data` as fits; returns how much did.
    fn gather(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        if n > 0 {
            if self.buf.capacity() == 0 {
                self.buf = take_buffer(self.capacity);
            }
            if self.buf.len() + n > self.capacity {
                // Written bytes sit at the front; reuse their space.
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.extend_from_slice(&data[..n]);
            self.wrote_since_flush = true;
        }
        n
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes gathered bytes until none are left or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.buf.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.start..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        self.buf.clear();
        self.start = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for at least one byte; `Pending` only when the socket is
    /// full and so is the buffer.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.room() == 0 {
            match self.poll_drain(cx) {
                Poll::Ready(result) => result?,
                // A partial drain may have made room.
                Poll::Pending if self.room() == 0 => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.gathering {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(self.poll_room(cx))?;
        Poll::Ready(Ok(self.gather(data)))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.gathering {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, slices);
        }
        if slices.iter().all(|s| s.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(self.poll_room(cx))?;
        let mut total = 0;
        for slice in slices {
            let n = self.gather(slice);
            total += n;
            if n < slice.len() {
                break;
            }
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        // Gathering a frame's header and payload in one call saves a poll.
        self.gathering || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.gathering {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if self.pending() > 0 && self.wrote_since_flush && self.room() > 0 && self.worth_deferring()
        {
            // More frames are likely on their way in this same poll; keep
            // these, and be polled again so they go out if none come.
            self.wrote_since_flush = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        self.wrote_since_flush = false;
        std::task::ready!(self.poll_drain(cx))?;
        // The burst is over. A server has one of these per client
        // connection, so the buffer goes back to the pool rather than stay
        // (10,000 idle clients would otherwise hold 2.5 GiB).
        give_back(std::mem::take(&mut self.buf), self.capacity);
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// A socket that accepts at most `accept[i]` bytes on its i-th write
    /// attempt (0 means "full": `Pending`), then everything.
    #[derive(Default)]
    struct Socket {
        received: Vec<u8>,
        writes: usize,
        accept: Vec<usize>,
        attempts: usize,
        flushes: usize,
        shut: bool,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let limit = self.accept.get(self.attempts).copied();
            self.attempts += 1;
            let n = match limit {
                Some(0) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(limit) => data.len().min(limit),
                None => data.len(),
            };
            self.received.extend_from_slice(&data[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn context() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        (Arc::clone(&counter), Waker::from(counter))
    }

    fn write(io: &mut Coalesced<Socket>, cx: &mut Context<'_>, data: &[u8]) -> Poll<usize> {
        Pin::new(io).poll_write(cx, data).map(|r| r.unwrap())
    }

    fn flush(io: &mut Coalesced<Socket>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(io).poll_flush(cx).map(|r| r.unwrap())
    }

    #[test]
    fn frames_flushed_one_by_one_leave_in_one_write_on_the_idle_flush() {
        let (woken, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::with_capacity(Socket::default(), 1024);
        for frame in [&b"head"[..], b"data-1", b"data-2"] {
            assert_eq!(write(&mut io, &mut cx, frame), Poll::Ready(frame.len()));
            // h2 flushes after each frame: deferred, and the task is woken so
            // an idle flush follows.
            assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        }
        assert_eq!(io.inner.writes, 0, "nothing written while frames arrive");
        assert_eq!(woken.0.load(Ordering::SeqCst), 3);
        // The re-poll's flush, with no write since the previous one.
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.received, b"headdata-1data-2");
        assert_eq!(io.inner.writes, 1);
        assert_eq!(io.inner.flushes, 1);
        // Nothing left: a flush goes straight through and wakes nobody.
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.flushes, 2);
        assert_eq!(woken.0.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_gate_defers_only_while_the_load_is_above_its_bound() {
        let (woken, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let in_flight = Arc::new(AtomicU32::new(1));
        let mut io = Coalesced::with_capacity(Socket::default(), 1024)
            .defer_only_while(in_flight.clone(), 1);
        // One request in flight: nothing to share a write with, out at once.
        assert_eq!(write(&mut io, &mut cx, b"req-1"), Poll::Ready(5));
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.received, b"req-1");
        assert_eq!(woken.0.load(Ordering::SeqCst), 0, "no deferred re-poll");
        // Three in flight: deferred and gathered as without a gate.
        in_flight.store(3, Ordering::Relaxed);
        for request in [&b"req-2"[..], b"req-3"] {
            assert_eq!(write(&mut io, &mut cx, request), Poll::Ready(5));
            assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        }
        assert_eq!(io.inner.writes, 1, "held while busy");
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        // The load drops before the re-poll: the held bytes go out on the
        // next flush, and a new lone write does not wait either.
        in_flight.store(1, Ordering::Relaxed);
        assert_eq!(write(&mut io, &mut cx, b"req-4"), Poll::Ready(5));
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.received, b"req-1req-2req-3req-4");
        assert_eq!(io.inner.writes, 2);
    }

    #[test]
    fn a_passthrough_writes_and_flushes_at_once_as_a_handshake_needs() {
        let (woken, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::passthrough(Socket::default());
        assert_eq!(write(&mut io, &mut cx, b"server-hello"), Poll::Ready(12));
        assert_eq!(io.inner.received, b"server-hello", "written at once");
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.flushes, 1, "the first flush reaches the socket");
        assert_eq!(woken.0.load(Ordering::SeqCst), 0, "no deferred re-poll");
        assert_eq!(io.buf.capacity(), 0, "no buffer");
    }

    #[test]
    fn the_buffer_is_held_for_a_burst_and_given_back_after_it() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::new(Socket::default());
        let burst = vec![2; CAPACITY + 100];
        let mut at = 0;
        while at < burst.len() {
            if let Poll::Ready(n) = write(&mut io, &mut cx, &burst[at..]) {
                at += n;
            }
            assert_eq!(io.buf.capacity(), CAPACITY, "one buffer, sized once");
        }
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.buf.capacity(), CAPACITY, "kept while the burst lasts");
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.buf.capacity(), 0, "given back after it");
        assert_eq!(io.inner.received, burst);
    }

    #[test]
    fn a_full_buffer_is_written_before_more_is_taken() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::with_capacity(Socket::default(), 8);
        assert_eq!(write(&mut io, &mut cx, b"0123456789"), Poll::Ready(8));
        assert_eq!(io.inner.writes, 0);
        // Full: the flush writes out even though data just arrived.
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.received, b"01234567");
        assert_eq!(write(&mut io, &mut cx, b"89"), Poll::Ready(2));
        assert_eq!(write(&mut io, &mut cx, b"abcdefgh"), Poll::Ready(6));
        // Full again: the next write drains first.
        assert_eq!(write(&mut io, &mut cx, b"gh"), Poll::Ready(2));
        assert_eq!(io.inner.received, b"0123456789abcdef");
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(io.inner.received, b"0123456789abcdefgh");
    }

    #[test]
    fn a_full_socket_and_a_full_buffer_is_pending_and_loses_nothing() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let socket = Socket {
            accept: vec![0, 3, 0],
            ..Socket::default()
        };
        let mut io = Coalesced::with_capacity(socket, 4);
        assert_eq!(write(&mut io, &mut cx, b"abcd"), Poll::Ready(4));
        assert_eq!(write(&mut io, &mut cx, b"ef"), Poll::Pending);
        // The socket takes 3 bytes, then is full again: room for 3 more.
        assert_eq!(write(&mut io, &mut cx, b"efgh"), Poll::Ready(3));
        assert_eq!(
            Pin::new(&mut io).poll_shutdown(&mut cx).map(|r| r.unwrap()),
            Poll::Ready(())
        );
        assert_eq!(io.inner.received, b"abcdefg");
        assert!(io.inner.shut);
    }

    #[test]
    fn vectored_writes_gather_whole_slices_while_they_fit() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::with_capacity(Socket::default(), 6);
        let slices = [
            IoSlice::new(b"abc"),
            IoSlice::new(b"defg"),
            IoSlice::new(b"h"),
        ];
        let n = Pin::new(&mut io)
            .poll_write_vectored(&mut cx, &slices)
            .map(|r| r.unwrap());
        assert_eq!(n, Poll::Ready(6));
        assert_eq!(io.buf, b"abcdef");
    }

    proptest! {
        /// Whatever the write sizes, flush pattern and socket behaviour,
        /// the socket receives exactly the bytes written, in order, once a
        /// flush follows a flush.
        #[test]
        fn bytes_arrive_in_order_and_complete(
            writes in proptest::collection::vec((1usize..300, any::<bool>()), 0..60),
            accept in proptest::collection::vec(0usize..200, 0..40),
            capacity in 1usize..512,
        ) {
            let (_, waker) = context();
            let mut cx = Context::from_waker(&waker);
            let mut io = Coalesced::with_capacity(Socket { accept, ..Socket::default() }, capacity);
            let mut sent = Vec::new();
            let mut next = 0u8;
            for (len, flush_after) in writes {
                let data: Vec<u8> = (0..len).map(|_| { next = next.wrapping_add(1); next }).collect();
                let mut at = 0;
                while at < data.len() {
                    if let Poll::Ready(n) = write(&mut io, &mut cx, &data[at..]) {
                        prop_assert!(n > 0);
                        at += n;
                    }
                }
                sent.extend_from_slice(&data);
                if flush_after {
                    let _ = flush(&mut io, &mut cx);
                }
            }
            // At most: a deferral, then pendings from the socket's script.
            for _ in 0..100 {
                if flush(&mut io, &mut cx).is_ready() && io.pending() == 0 {
                    break;
                }
            }
            prop_assert_eq!(io.pending(), 0);
            prop_assert_eq!(&io.inner.received, &sent);
        }
    }
}
