//! A lean HTTP/2 gRPC client for load generators: one task per connection
//! drives all of its streams and hands every received message to a
//! callback, which may answer with a message on the same stream.
//!
//! Why not hyper or tonic: the fan-out load generator receives 10,000
//! copies of a 150 KB response per change and needs three short strings
//! from each. Through hyper's client, every 16 KiB DATA frame wakes and
//! polls its stream's task, and the load generator's core spent more time
//! on that than the server spent sending, so the benchmark measured the
//! load generator. Here a connection's frames are parsed in place from one
//! read buffer, DATA payloads stay in it (`Bytes`, no copy), and prost
//! decodes each message from those pieces, skipping the fields the caller
//! does not declare.
//!
//! What it implements of RFC 9113: the connection preface and SETTINGS
//! (with ACKs), flow control both ways (WINDOW_UPDATE when half a window is
//! used; sends wait for the peer's windows), PING answers, padding, header
//! blocks with CONTINUATION. It sends requests with literal HPACK fields
//! and never reads the response headers: any stream the server ends
//! (trailers, RST_STREAM) or a GOAWAY fails the connection, which is what a
//! load generator whose streams never end wants. Not a general client: no
//! TLS, no compression, no server push, frames of at most 16 KiB.

use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{Context, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Flow-control windows this client grants the server, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// The connection's receive window.
    pub connection: u32,
    /// Each stream's receive window.
    pub stream: u32,
}

impl Windows {
    /// The fan-out load generator's windows, large as Envoy configures them:
    /// the protocol's default 64 KiB connection window would throttle 100
    /// streams of ~150 KB responses on any server.
    pub const FANOUT: Windows = Windows {
        connection: 16 << 20,
        stream: 1 << 20,
    };
}

/// The largest frame either side may send: the protocol's default, which
/// stock gRPC clients keep.
const MAX_FRAME: usize = 16_384;
/// The protocol's initial window before SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 256 * 1024;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

mod kind {
    pub(super) const DATA: u8 = 0x0;
    pub(super) const HEADERS: u8 = 0x1;
    pub(super) const RST_STREAM: u8 = 0x3;
    pub(super) const SETTINGS: u8 = 0x4;
    pub(super) const PUSH_PROMISE: u8 = 0x5;
    pub(super) const PING: u8 = 0x6;
    pub(super) const GOAWAY: u8 = 0x7;
    pub(super) const WINDOW_UPDATE: u8 = 0x8;
    pub(super) const CONTINUATION: u8 = 0x9;
}

mod flag {
    pub(super) const END_STREAM: u8 = 0x1;
    pub(super) const ACK: u8 = 0x1;
    pub(super) const END_HEADERS: u8 = 0x4;
    pub(super) const PADDED: u8 = 0x8;
}

mod setting {
    pub(super) const ENABLE_PUSH: u16 = 0x2;
    pub(super) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(super) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(super) const MAX_FRAME_SIZE: u16 = 0x5;
}

/// `message` as one gRPC length-prefixed message (uncompressed).
pub fn grpc_message(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    buf.freeze()
}

/// Opens `firsts.len()` bidirectional calls to `path` on one connection to
/// `addr`, sends each its first message (from [`grpc_message`]), and then
/// hands every received message to `on_message(call index, message)`; what
/// it returns, if anything, is sent on that call. Runs until the connection
/// fails or the server closes it (`Ok`).
pub async fn run<F>(
    addr: SocketAddr,
    windows: Windows,
    path: &str,
    firsts: Vec<Bytes>,
    on_message: F,
) -> anyhow::Result<()>
where
    F: FnMut(usize, &mut dyn Buf) -> anyhow::Result<Option<Bytes>>,
{
    let mut socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    socket.set_nodelay(true)?;
    let mut conn = Conn::new(windows, firsts, on_message);
    conn.start(&addr.to_string(), path);
    let mut read = BytesMut::with_capacity(READ_SIZE);
    loop {
        if !conn.out.is_empty() {
            socket.write_all(&conn.out).await.context("sending")?;
            conn.out.clear();
        }
        if read.capacity() - read.len() < MAX_FRAME {
            read.reserve(READ_SIZE);
        }
        if socket.read_buf(&mut read).await.context("receiving")? == 0 {
            return Ok(());
        }
        while let Some(frame) = next_frame(&mut read)? {
            conn.handle(frame)?;
        }
        conn.open_streams()?;
    }
}

/// A received frame: its header fields and its payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Bytes,
}

/// Splits the first whole frame off `buf`, if all of it has arrived.
fn next_frame(buf: &mut BytesMut) -> anyhow::Result<Option<Frame>> {
    if buf.len() < 9 {
        return Ok(None);
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    ensure!(
        len <= MAX_FRAME,
        "a {len}-byte frame: larger than this client allows"
    );
    if buf.len() < 9 + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(9 + len).freeze();
    let (kind, flags) = (frame[3], frame[4]);
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
    frame.advance(9);
    Ok(Some(Frame {
        kind,
        flags,
        stream,
        payload: frame,
    }))
}

/// One connection's state; no IO (frames in, bytes to write out).
struct Conn<F> {
    windows: Windows,
    on_message: F,
    /// First messages, taken when the streams open.
    firsts: Vec<Bytes>,
    /// The request headers, the same for every call.
    headers: Bytes,
    opened: bool,
    peer_settings_seen: bool,
    peer_max_streams: Option<u32>,
    peer_initial_window: i64,
    /// Bytes to write.
    out: BytesMut,
    /// Messages waiting for send window: (stream index, bytes).
    queued: VecDeque<(usize, Bytes)>,
    conn_send: i64,
    streams: Vec<StreamState>,
    /// Received DATA bytes not yet returned to the server's window.
    conn_unreturned: u32,
    /// A header block continues in CONTINUATION frames on this stream.
    continuing: Option<u32>,
}

#[derive(Debug, Default)]
struct StreamState {
    send: i64,
    unreturned: u32,
    received: Pieces,
}

fn stream_id(index: usize) -> u32 {
    u32::try_from(2 * index + 1).expect("fewer than 2^30 streams")
}

impl<F> Conn<F>
where
    F: FnMut(usize, &mut dyn Buf) -> anyhow::Result<Option<Bytes>>,
{
    fn new(windows: Windows, firsts: Vec<Bytes>, on_message: F) -> Self {
        Conn {
            windows,
            on_message,
            streams: firsts.iter().map(|_| StreamState::default()).collect(),
            firsts,
            headers: Bytes::new(),
            opened: false,
            peer_settings_seen: false,
            peer_max_streams: None,
            peer_initial_window: DEFAULT_WINDOW,
            out: BytesMut::new(),
            queued: VecDeque::new(),
            conn_send: DEFAULT_WINDOW,
            conn_unreturned: 0,
            continuing: None,
        }
    }

    /// The preface, this client's SETTINGS and connection window.
    fn start(&mut self, authority: &str, path: &str) {
        self.out.put_slice(PREFACE);
        let mut settings = BytesMut::new();
        for (id, value) in [
            (setting::ENABLE_PUSH, 0),
            (setting::INITIAL_WINDOW_SIZE, self.windows.stream),
        ] {
            settings.put_u16(id);
            settings.put_u32(value);
        }
        self.frame(kind::SETTINGS, 0, 0, &settings);
        let extra = i64::from(self.windows.connection) - DEFAULT_WINDOW;
        if extra > 0 {
            self.window_update(0, u32::try_from(extra).unwrap_or(u32::MAX));
        }
        self.headers = request_headers(authority, path);
    }

    /// Opens every stream once the server's SETTINGS have arrived (its
    /// stream limit and initial window are known then).
    fn open_streams(&mut self) -> anyhow::Result<()> {
        if self.opened || !self.peer_settings_seen {
            return Ok(());
        }
        if let Some(max) = self.peer_max_streams {
            ensure!(
                self.streams.len() <= max as usize,
                "the server allows {max} concurrent streams per connection; {} were asked for",
                self.streams.len()
            );
        }
        self.opened = true;
        let headers = self.headers.clone();
        for (i, first) in std::mem::take(&mut self.firsts).into_iter().enumerate() {
            self.streams[i].send += self.peer_initial_window;
            self.frame(kind::HEADERS, flag::END_HEADERS, stream_id(i), &headers);
            self.queued.push_back((i, first));
        }
        self.send_queued();
        Ok(())
    }

    fn handle(&mut self, frame: Frame) -> anyhow::Result<()> {
        if let Some(id) = self.continuing {
            ensure!(
                frame.kind == kind::CONTINUATION && frame.stream == id,
                "a header block on stream {id} was interrupted by another frame"
            );
        }
        match frame.kind {
            kind::DATA => self.data(frame)?,
            kind::HEADERS => {
                let i = self.index(frame.stream)?;
                ensure!(
                    frame.flags & flag::END_STREAM == 0,
                    "the server ended call {i} (trailers; its status is in the server's log)"
                );
                if frame.flags & flag::END_HEADERS == 0 {
                    self.continuing = Some(frame.stream);
                }
            }
            kind::CONTINUATION => {
                ensure!(
                    self.continuing == Some(frame.stream),
                    "CONTINUATION without a header block on stream {}",
                    frame.stream
                );
                if frame.flags & flag::END_HEADERS != 0 {
                    self.continuing = None;
                }
            }
            kind::RST_STREAM => {
                let code = frame
                    .payload
                    .get(..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                bail!(
                    "the server reset stream {} (error code {code:?})",
                    frame.stream
                );
            }
            kind::SETTINGS => self.settings(&frame)?,
            kind::PUSH_PROMISE => bail!("a PUSH_PROMISE although push is disabled"),
            kind::PING if frame.flags & flag::ACK == 0 => {
                self.frame(kind::PING, flag::ACK, 0, &frame.payload);
            }
            kind::GOAWAY => {
                let p = &frame.payload;
                ensure!(p.len() >= 8, "a short GOAWAY");
                bail!(
                    "the server sent GOAWAY (error code {}, last stream {}): {}",
                    u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                    u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
                    String::from_utf8_lossy(&p[8..])
                );
            }
            kind::WINDOW_UPDATE => {
                let p = &frame.payload;
                ensure!(p.len() == 4, "a WINDOW_UPDATE of {} bytes", p.len());
                let increment =
                    i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
                if frame.stream == 0 {
                    self.conn_send += increment;
                } else {
                    let i = self.index(frame.stream)?;
                    self.streams[i].send += increment;
                }
                self.send_queued();
            }
            // PRIORITY and unknown frame types carry nothing this client needs.
            _ => {}
        }
        Ok(())
    }

    fn index(&self, stream: u32) -> anyhow::Result<usize> {
        let i = (stream as usize).wrapping_sub(1) / 2;
        ensure!(
            stream % 2 == 1 && i < self.streams.len(),
            "a frame on stream {stream}, which this client never opened"
        );
        Ok(i)
    }

    fn data(&mut self, frame: Frame) -> anyhow::Result<()> {
        let i = self.index(frame.stream)?;
        let len = u32::try_from(frame.payload.len()).expect("frames are at most 16 KiB");
        let mut data = frame.payload;
        if frame.flags & flag::PADDED != 0 {
            ensure!(
                !data.is_empty(),
                "a padded DATA frame without its pad length"
            );
            let pad = usize::from(data[0]);
            ensure!(
                pad < data.len(),
                "a DATA frame with more padding than payload"
            );
            data = data.slice(1..data.len() - pad);
        }
        self.streams[i].received.push(data);
        while let Some(len) = self.streams[i].received.message_len()? {
            let received = &mut self.streams[i].received;
            received.advance(5);
            let mut message = received.take(len);
            let reply = (self.on_message)(i, &mut message)?;
            let rest = message.remaining();
            message.advance(rest);
            if let Some(reply) = reply {
                self.queued.push_back((i, reply));
            }
        }
        ensure!(
            frame.flags & flag::END_STREAM == 0,
            "the server ended call {i} without a status"
        );
        // Return the window once half of it is used, as stock clients do.
        self.conn_unreturned += len;
        if self.conn_unreturned >= self.windows.connection / 2 {
            self.window_update(0, self.conn_unreturned);
            self.conn_unreturned = 0;
        }
        let stream = &mut self.streams[i];
        stream.unreturned += len;
        if stream.unreturned >= self.windows.stream / 2 {
            let n = stream.unreturned;
            stream.unreturned = 0;
            self.window_update(frame.stream, n);
        }
        self.send_queued();
        Ok(())
    }

    fn settings(&mut self, frame: &Frame) -> anyhow::Result<()> {
        if frame.flags & flag::ACK != 0 {
            return Ok(());
        }
        ensure!(
            frame.payload.len().is_multiple_of(6),
            "a SETTINGS frame of {} bytes",
            frame.payload.len()
        );
        for entry in frame.payload.chunks(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::MAX_CONCURRENT_STREAMS => self.peer_max_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE => {
                    // The change applies to every open stream's window.
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    if self.opened {
                        for stream in &mut self.streams {
                            stream.send += delta;
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => ensure!(
                    value as usize >= MAX_FRAME,
                    "the server's frame limit {value} is below the protocol's minimum"
                ),
                _ => {}
            }
        }
        self.peer_settings_seen = true;
        self.frame(kind::SETTINGS, flag::ACK, 0, &[]);
        self.send_queued();
        Ok(())
    }

    /// Sends queued messages, in order, while the windows allow.
    fn send_queued(&mut self) {
        while let Some((i, message)) = self.queued.front() {
            let (i, len) = (*i, message.len() as i64);
            if len > self.conn_send.min(self.streams[i].send) {
                return;
            }
            let (_, message) = self.queued.pop_front().expect("front exists");
            self.conn_send -= len;
            self.streams[i].send -= len;
            for chunk in message.chunks(MAX_FRAME) {
                self.frame(kind::DATA, 0, stream_id(i), chunk);
            }
        }
    }

    fn window_update(&mut self, stream: u32, increment: u32) {
        self.frame(kind::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("frames are small");
        self.out.put_slice(&len.to_be_bytes()[1..]);
        self.out.put_u8(kind);
        self.out.put_u8(flags);
        self.out.put_u32(stream);
        self.out.put_slice(payload);
    }
}

/// The request header block: literal HPACK fields, never indexed, so the
/// server's decoder state stays trivial.
fn request_headers(authority: &str, path: &str) -> Bytes {
    let mut block = BytesMut::new();
    // Static table: 3 is `:method: POST`, 6 is `:scheme: http`.
    block.put_u8(0x80 | 3);
    block.put_u8(0x80 | 6);
    // Literal values for static names 4 (`:path`), 1 (`:authority`) and 31
    // (`content-type`), then a literal name and value for `te`.
    for (index, value) in [(4, path), (1, authority), (31, "application/grpc")] {
        hpack_int(&mut block, 0x00, 4, index);
        hpack_string(&mut block, value);
    }
    block.put_u8(0x00);
    hpack_string(&mut block, "te");
    hpack_string(&mut block, "trailers");
    block.freeze()
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1).
fn hpack_int(out: &mut BytesMut, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

/// An HPACK string literal without Huffman coding.
fn hpack_string(out: &mut BytesMut, value: &str) {
    hpack_int(out, 0x00, 7, value.len());
    out.put_slice(value.as_bytes());
}

/// Received bytes as the pieces they came in, read as one buffer.
#[derive(Debug, Default)]
pub struct Pieces {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    /// Appends received bytes.
    pub fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.queue.push_back(data);
        }
    }

    /// The length of the first gRPC message if all of it has arrived.
    pub fn message_len(&self) -> anyhow::Result<Option<usize>> {
        if self.len < 5 {
            return Ok(None);
        }
        let mut prefix = [0u8; 5];
        let mut at = 0;
        for chunk in &self.queue {
            let n = (5 - at).min(chunk.len());
            prefix[at..at + n].copy_from_slice(&chunk[..n]);
            at += n;
            if at == 5 {
                break;
            }
        }
        if prefix[0] != 0 {
            bail!("a compressed message; this client asked for none");
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        Ok((self.len >= 5 + len).then_some(len))
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.queue.front().map(|b| b.as_ref()).unwrap_or_default()
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end");
        self.len -= cnt;
        while cnt > 0 {
            let front = self.queue.front_mut().expect("len counts queued bytes");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http_body::Frame as BodyFrame;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use prost::Message;

    /// What the test server and client exchange: a round number and a body.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Msg {
        #[prost(uint32, tag = "1")]
        round: u32,
        #[prost(bytes = "vec", tag = "2")]
        body: Vec<u8>,
        #[prost(string, tag = "3")]
        tail: String,
    }

    /// `Msg` without its body, as a load generator reads it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Lite {
        #[prost(uint32, tag = "1")]
        round: u32,
        #[prost(string, tag = "3")]
        tail: String,
    }

    /// hyper's HTTP/2 server answering every message a call sends with a
    /// `size`-byte message of the same round; records each call's path and
    /// content type.
    async fn echo_server(size: usize, seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(format!(
                            "{} {:?}",
                            request.uri().path(),
                            request.headers().get("content-type")
                        ));
                        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
                        let mut incoming = request.into_body();
                        tokio::spawn(async move {
                            let mut pieces = Pieces::default();
                            while let Some(Ok(frame)) = incoming.frame().await {
                                let Ok(data) = frame.into_data() else { break };
                                pieces.push(data);
                                while let Some(len) = pieces.message_len().unwrap() {
                                    pieces.advance(5);
                                    let got = Lite::decode((&mut pieces).take(len)).unwrap();
                                    let answer = Msg {
                                        round: got.round,
                                        body: vec![got.round as u8; size],
                                        tail: format!("after {size}"),
                                    };
                                    if tx.send(grpc_message(&answer)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        });
                        let body = futures::stream::unfold(rx, |mut rx| async move {
                            let message = rx.recv().await?;
                            Some((Ok::<_, Infallible>(BodyFrame::data(message)), rx))
                        });
                        async move {
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(StreamBody::new(body))
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn calls_exchange_messages_larger_than_every_window_with_a_real_server() {
        const CALLS: usize = 5;
        const ROUNDS: u32 = 6;
        // 200 KB messages through 64 KiB stream and 128 KiB connection
        // windows: nothing arrives unless WINDOW_UPDATEs are right.
        const SIZE: usize = 200_000;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = echo_server(SIZE, Arc::clone(&seen)).await;
        let rounds = Arc::new(Mutex::new(vec![0u32; CALLS]));
        let firsts = (0..CALLS)
            .map(|_| {
                grpc_message(&Lite {
                    round: 1,
                    tail: String::new(),
                })
            })
            .collect();
        let counted = Arc::clone(&rounds);
        let client = tokio::spawn(run(
            addr,
            Windows {
                connection: 131_072,
                stream: 65_535,
            },
            "/test.Echo/Chat",
            firsts,
            move |call, message: &mut dyn Buf| {
                assert_eq!(
                    message.remaining(),
                    Msg {
                        round: 1,
                        body: vec![0; SIZE],
                        tail: format!("after {SIZE}")
                    }
                    .encoded_len()
                );
                let got = Lite::decode(message)?;
                assert_eq!(
                    got.tail,
                    format!("after {SIZE}"),
                    "the field after the body"
                );
                let mut rounds = counted.lock().unwrap();
                assert_eq!(got.round, rounds[call] + 1, "call {call}: rounds in order");
                rounds[call] = got.round;
                Ok((got.round < ROUNDS).then(|| {
                    grpc_message(&Lite {
                        round: got.round + 1,
                        tail: String::new(),
                    })
                }))
            },
        ));
        let done = async {
            while rounds.lock().unwrap().iter().any(|&r| r < ROUNDS) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .unwrap_or_else(|_| panic!("rounds reached: {:?}", rounds.lock().unwrap()));
        assert!(
            !client.is_finished(),
            "the connection is still up: {:?}",
            client.is_finished()
        );
        client.abort();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), CALLS);
        assert!(
            seen.iter()
                .all(|s| s == "/test.Echo/Chat Some(\"application/grpc\")"),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_call_the_server_ends_fails_the_connection_with_a_reason() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service =
                hyper::service::service_fn(|_: http::Request<hyper::body::Incoming>| async {
                    // A trailers-only answer, as a gRPC server rejects a call.
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "7")
                        .body(http_body_util::Empty::<Bytes>::new())
                });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            run(
                addr,
                Windows {
                    connection: 1 << 20,
                    stream: 1 << 20,
                },
                "/x/Y",
                vec![grpc_message(&Lite::default())],
                |_, _: &mut dyn Buf| Ok(None),
            ),
        )
        .await
        .expect("fails promptly");
        let error = format!("{:#}", result.expect_err("the call was ended"));
        assert!(error.contains("ended call 0"), "{error}");
    }

    #[test]
    fn hpack_integers_use_the_prefix_then_continuation_bytes() {
        // RFC 7541, C.1.1 and C.1.2.
        let mut out = BytesMut::new();
        hpack_int(&mut out, 0, 5, 10);
        assert_eq!(&out[..], [10]);
        out.clear();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(&out[..], [31, 154, 10]);
    }

    #[test]
    fn messages_split_anywhere_decode_and_skip_unknown_fields() {
        let big = Msg {
            round: 3,
            body: vec![7; 100_000],
            tail: "t".into(),
        };
        let mut wire = grpc_message(&big).to_vec();
        wire.extend_from_slice(&grpc_message(&Lite {
            round: 4,
            tail: "u".into(),
        }));
        for split in [1, 3, 5, 6, 4096, 16_384, 99_999] {
            let mut pieces = Pieces::default();
            for chunk in wire.chunks(split) {
                pieces.push(Bytes::copy_from_slice(chunk));
            }
            let mut got = Vec::new();
            while let Some(len) = pieces.message_len().unwrap() {
                pieces.advance(5);
                got.push(Lite::decode((&mut pieces).take(len)).unwrap());
            }
            assert_eq!(pieces.remaining(), 0, "split {split}");
            assert_eq!(
                got,
                [
                    Lite {
                        round: 3,
                        tail: "t".into()
                    },
                    Lite {
                        round: 4,
                        tail: "u".into()
                    }
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn an_incomplete_message_waits_for_more() {
        let wire = grpc_message(&Lite {
            round: 1,
            tail: "abc".into(),
        });
        let mut pieces = Pieces::default();
        pieces.push(wire.slice(..wire.len() - 1));
        assert_eq!(pieces.message_len().unwrap(), None);
        pieces.push(wire.slice(wire.len() - 1..));
        assert_eq!(pieces.message_len().unwrap(), Some(wire.len() - 5));
    }
}
