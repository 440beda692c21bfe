//! A minimal gRPC bidirectional-stream client over hyper's HTTP/2 client,
//! for load generators that receive far more bytes than they read.
//!
//! The fan-out load generator takes 10,000 copies of a 150 KB response and
//! needs three short strings from each. Through tonic, every received byte
//! is copied from HTTP/2's frames into the stream's decode buffer before
//! prost skips it, which made the load generator, not the server under
//! test, the slower side of the measurement. Here a message stays in the
//! frames it arrived in (`Bytes` handed up by h2 without a copy) and prost
//! decodes straight from them, skipping the fields it does not declare.
//!
//! What it is not: a general gRPC client. No compression, no deadlines, no
//! retries, no TLS; one request stream and one response stream per call.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type RequestBody = StreamBody<
    futures::stream::Map<ReceiverStream<Bytes>, fn(Bytes) -> Result<Frame<Bytes>, Infallible>>,
>;

/// One HTTP/2 connection that carries many streams.
#[derive(Debug, Clone)]
pub struct Connection {
    authority: String,
    sender: http2::SendRequest<RequestBody>,
}

/// Flow-control windows of a connection, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// The connection's receive window.
    pub connection: u32,
    /// Each stream's receive window.
    pub stream: u32,
}

impl Connection {
    /// Connects to `addr` (plain HTTP/2, Nagle off) with the given windows.
    pub async fn connect(addr: SocketAddr, windows: Windows) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_connection_window_size(windows.connection)
            .initial_stream_window_size(windows.stream)
            .handshake(TokioIo::new(tcp))
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the peer goes away; the
            // streams report the error themselves.
            let _ = connection.await;
        });
        Ok(Connection {
            authority: addr.to_string(),
            sender,
        })
    }

    /// Opens a bidirectional streaming call to `path`, sending `first` as
    /// its first message.
    pub async fn open(&self, path: &str, first: &impl prost::Message) -> anyhow::Result<Stream> {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        tx.send(frame(first))
            .await
            .map_err(|_| anyhow::anyhow!("request stream closed"))?;
        let to_frame: fn(Bytes) -> Result<Frame<Bytes>, Infallible> = |b| Ok(Frame::data(b));
        let body = StreamBody::new(ReceiverStream::new(rx).map(to_frame));
        let request = http::Request::post(format!("http://{}{path}", self.authority))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(body)?;
        let mut sender = self.sender.clone();
        sender.ready().await.context("connection not ready")?;
        let response = sender
            .send_request(request)
            .await
            .context("sending the call")?;
        if response.status() != http::StatusCode::OK {
            bail!("HTTP status {}", response.status());
        }
        if let Some(status) = response.headers().get("grpc-status") {
            // A trailers-only response: the call failed before any message.
            bail!(
                "grpc-status {status:?}: {:?}",
                response.headers().get("grpc-message")
            );
        }
        Ok(Stream {
            tx,
            body: response.into_body(),
            frames: Frames::default(),
        })
    }
}

/// `message` as one gRPC length-prefixed message.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    buf.freeze()
}

/// One call: send messages, receive messages.
#[derive(Debug)]
pub struct Stream {
    tx: mpsc::Sender<Bytes>,
    body: Incoming,
    frames: Frames,
}

impl Stream {
    /// Sends one message.
    pub async fn send(&self, message: &impl prost::Message) -> anyhow::Result<()> {
        self.tx
            .send(frame(message))
            .await
            .map_err(|_| anyhow::anyhow!("the request stream is closed"))
    }

    /// The next message, decoded from the frames it arrived in; `None` when
    /// the server ended the call with status OK.
    pub async fn message<M: prost::Message + Default>(&mut self) -> anyhow::Result<Option<M>> {
        loop {
            if let Some(len) = self.frames.message_len()? {
                self.frames.advance(5);
                let mut message = (&mut self.frames).take(len);
                let decoded = M::decode(&mut message).context("decoding a response")?;
                // prost consumes exactly the message; anything left is a bug.
                let rest = message.remaining();
                message.advance(rest);
                return Ok(Some(decoded));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.frames.push(data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return match trailers.get("grpc-status").map(|s| s.as_bytes()) {
                            Some(b"0") => Ok(None),
                            status => bail!(
                                "the call ended with grpc-status {status:?}: {:?}",
                                trailers.get("grpc-message")
                            ),
                        };
                    }
                },
                Some(Err(e)) => return Err(e).context("receiving"),
                None => bail!("the response ended without a status"),
            }
        }
    }
}

/// Received bytes as the frames they came in, read as one buffer.
#[derive(Debug, Default)]
struct Frames {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Frames {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.queue.push_back(data);
        }
    }

    /// The length of the first message if all of it has arrived.
    fn message_len(&self) -> anyhow::Result<Option<usize>> {
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

impl Buf for Frames {
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
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Small {
        #[prost(string, tag = "1")]
        a: String,
        #[prost(string, tag = "5")]
        b: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Big {
        #[prost(string, tag = "1")]
        a: String,
        #[prost(bytes = "vec", tag = "2")]
        body: Vec<u8>,
        #[prost(string, tag = "5")]
        b: String,
    }

    #[test]
    fn messages_split_anywhere_decode_and_skip_unknown_fields() {
        let big = Big {
            a: "v1".into(),
            body: vec![7; 100_000],
            b: "nonce".into(),
        };
        let mut wire = frame(&big).to_vec();
        wire.extend_from_slice(&frame(&Small {
            a: "x".into(),
            b: "y".into(),
        }));
        for split in [1, 3, 5, 6, 4096, 16_384, 99_999] {
            let mut frames = Frames::default();
            for chunk in wire.chunks(split) {
                frames.push(Bytes::copy_from_slice(chunk));
            }
            let mut got = Vec::new();
            while let Some(len) = frames.message_len().unwrap() {
                frames.advance(5);
                let mut m = (&mut frames).take(len);
                got.push(Small::decode(&mut m).unwrap());
            }
            assert_eq!(frames.remaining(), 0, "split {split}");
            assert_eq!(
                got,
                [
                    Small {
                        a: "v1".into(),
                        b: "nonce".into()
                    },
                    Small {
                        a: "x".into(),
                        b: "y".into()
                    }
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn an_incomplete_message_waits_for_more() {
        let wire = frame(&Small {
            a: "abc".into(),
            b: String::new(),
        });
        let mut frames = Frames::default();
        frames.push(wire.slice(..wire.len() - 1));
        assert_eq!(frames.message_len().unwrap(), None);
        frames.push(wire.slice(wire.len() - 1..));
        assert_eq!(frames.message_len().unwrap(), Some(wire.len() - 5));
    }
}
