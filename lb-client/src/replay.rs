//! A request body read ahead before the first attempt, so a stream the
//! backend refused without processing it can be sent again elsewhere.
//!
//! ```text
//!  Prefetched::read(body): poll frames that are ready now (never wait), up to 64 KiB
//!     body ended      --> whole: every attempt gets a copy (a `Bytes` clone)
//!     pending / large --> prefix + the rest: the first attempt only
//! ```
//!
//! tonic encodes a unary request in one poll, so a unary body is always
//! whole; a client stream is sent as what was ready, then the rest, and is
//! never retried after it left. Reading ahead never waits on the
//! application: a frame that is not ready stays in the body.
//!
//! Not a buffer for whole streams: that would hold an unbounded stream
//! back from the backend.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

/// Bodies up to this size are kept for a resend. gRPC requests are mostly
/// far smaller; a larger one is streamed through as before.
pub(crate) const MAX_READ_AHEAD: usize = 64 * 1024;

/// A request body as read ahead of the first attempt.
#[derive(Debug)]
pub(crate) struct Prefetched {
    data: Bytes,
    trailers: Option<http::HeaderMap>,
    /// What was not read: the rest of the body, or the error it ended
    /// with. `None`: the body was read whole and can be sent any number of
    /// times.
    rest: Option<Rest>,
    /// Read to its end: every attempt can send it.
    whole: bool,
    /// The one attempt a partly read body allows was handed out.
    spent: bool,
}

#[derive(Debug)]
enum Rest {
    Body(Body),
    Error(tonic::Status),
}

impl Prefetched {
    /// Reads the frames `body` has ready now, without waiting for more.
    pub(crate) fn read(mut body: Body) -> Self {
        let mut cx = Context::from_waker(Waker::noop());
        let mut data = Bytes::new();
        // Only a body of several frames is copied, into one buffer.
        let mut joined: Option<BytesMut> = None;
        let mut trailers = None;
        let rest = loop {
            let len = joined.as_ref().map_or(data.len(), BytesMut::len);
            if body.is_end_stream() {
                break None;
            }
            if len >= MAX_READ_AHEAD {
                break Some(Rest::Body(body));
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Pending => break Some(Rest::Body(body)),
                Poll::Ready(None) => break None,
                Poll::Ready(Some(Err(status))) => break Some(Rest::Error(status)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) if data.is_empty() && joined.is_none() => data = chunk,
                    Ok(chunk) => joined
                        .get_or_insert_with(|| BytesMut::from(&data[..]))
                        .extend_from_slice(&chunk),
                    // Trailers end a body.
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        break None;
                    }
                },
            }
        };
        if let Some(joined) = joined {
            data = joined.freeze();
        }
        Self {
            data,
            trailers,
            whole: rest.is_none(),
            rest,
            spent: false,
        }
    }

    /// Whether every attempt can send the body (it was read whole).
    pub(crate) fn replayable(&self) -> bool {
        self.whole
    }

    /// The body for the next attempt: a copy of a whole body, or the one
    /// send of a partly read one (`None` after it).
    pub(crate) fn attempt(&mut self) -> Option<Body> {
        if self.whole {
            return Some(Body::new(Replay {
                data: self.data.clone(),
                trailers: self.trailers.clone(),
                rest: None,
            }));
        }
        if self.spent {
            return None;
        }
        self.spent = true;
        Some(Body::new(Replay {
            data: std::mem::take(&mut self.data),
            trailers: None,
            rest: self.rest.take(),
        }))
    }
}

/// The body one attempt sends: the bytes read ahead, then the trailers or
/// the rest of the original body.
#[derive(Debug)]
struct Replay {
    data: Bytes,
    trailers: Option<http::HeaderMap>,
    rest: Option<Rest>,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if !this.data.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut this.data)))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match &mut this.rest {
            None => Poll::Ready(None),
            Some(Rest::Body(body)) => Pin::new(body).poll_frame(cx),
            Some(Rest::Error(_)) => match this.rest.take() {
                Some(Rest::Error(status)) => Poll::Ready(Some(Err(status))),
                _ => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
            && self.trailers.is_none()
            && match &self.rest {
                None => true,
                Some(Rest::Body(body)) => body.is_end_stream(),
                Some(Rest::Error(_)) => false,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let read = self.data.len() as u64;
        match &self.rest {
            None => SizeHint::with_exact(read),
            Some(Rest::Body(body)) => {
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
            Some(Rest::Error(_)) => {
                let mut hint = SizeHint::new();
                hint.set_lower(read);
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> (Vec<u8>, Option<http::HeaderMap>, Option<tonic::Status>) {
        use http_body_util::BodyExt;
        let mut body = body;
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Err(status) => return (data, trailers, Some(status)),
            }
        }
        (data, trailers, None)
    }

    #[tokio::test]
    async fn a_body_ready_at_once_is_replayed_whole_every_time() {
        let mut p = Prefetched::read(Body::new(http_body_util::Full::new(Bytes::from_static(
            b"\0\0\0\0\x03abc",
        ))));
        assert!(p.replayable());
        for _ in 0..3 {
            let body = p.attempt().unwrap();
            assert_eq!(body.size_hint().exact(), Some(8));
            assert_eq!(collect(body).await.0, b"\0\0\0\0\x03abc");
        }

        // Several frames and trailers, as a client stream that is complete.
        let frames = futures::stream::iter(vec![
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::trailers(http::HeaderMap::from_iter([(
                http::header::HeaderName::from_static("x-t"),
                http::HeaderValue::from_static("1"),
            )]))),
        ]);
        let mut p = Prefetched::read(Body::new(http_body_util::StreamBody::new(frames)));
        assert!(p.replayable());
        for _ in 0..2 {
            let (data, trailers, error) = collect(p.attempt().unwrap()).await;
            assert_eq!(data, b"abcd");
            assert_eq!(trailers.unwrap()["x-t"], "1");
            assert!(error.is_none());
        }

        let mut empty = Prefetched::read(Body::empty());
        assert!(empty.replayable());
        assert!(empty.attempt().unwrap().is_end_stream());
    }

    #[tokio::test]
    async fn a_body_still_streaming_is_sent_once_prefix_first() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, tonic::Status>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut p = Prefetched::read(Body::new(http_body_util::StreamBody::new(stream)));
        assert!(!p.replayable(), "the rest is not here yet");
        let body = p.attempt().unwrap();
        assert!(p.attempt().is_none(), "only one send");
        assert!(!p.replayable(), "not even after the one send");
        tx.send(Ok(Frame::data(Bytes::from_static(b"-second"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(body).await.0, b"first-second");
    }

    #[tokio::test]
    async fn a_large_body_is_read_only_up_to_the_cap_and_an_error_is_kept() {
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        let frames = futures::stream::iter(
            (0..8).map(move |_| Ok::<_, tonic::Status>(Frame::data(chunk.clone()))),
        );
        let mut p = Prefetched::read(Body::new(http_body_util::StreamBody::new(frames)));
        assert!(!p.replayable());
        assert_eq!(p.data.len(), MAX_READ_AHEAD);
        assert_eq!(collect(p.attempt().unwrap()).await.0.len(), 8 * 16 * 1024);

        let frames = futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(tonic::Status::internal("encoding failed")),
        ]);
        let mut p = Prefetched::read(Body::new(http_body_util::StreamBody::new(frames)));
        assert!(!p.replayable(), "an error is not resent");
        let (data, _, error) = collect(p.attempt().unwrap()).await;
        assert_eq!(data, b"ab");
        assert_eq!(error.unwrap().message(), "encoding failed");
    }
}
