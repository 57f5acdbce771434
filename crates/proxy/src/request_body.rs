//! The request body sent upstream. Normally the client's body streamed
//! straight through (no copy, nothing kept). When a request may have to be
//! sent again (retries, mirroring), its frames are also kept, up to a buffer
//! limit (Envoy's `per_request_buffer_limit_bytes`), so the body can be
//! replayed; past the limit it still streams, but can no longer be replayed
//! (as in Envoy, where such a request is simply not retried).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body for the upstream request.
pub enum RequestBody {
    /// The client's body, streamed through.
    Streaming(Incoming),
    /// The client's body, streamed through and kept for a replay.
    Recording(Box<Recording<Incoming>>),
    /// A replay of a recorded body.
    Replay(Replay),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Streaming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Recording(r) => Pin::new(r.as_mut()).poll_frame(cx),
            RequestBody::Replay(r) => Pin::new(r).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Recording(r) => r.is_end_stream(),
            RequestBody::Replay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Recording(r) => r.size_hint(),
            RequestBody::Replay(r) => r.size_hint(),
        }
    }
}

/// What a recording kept so far.
#[derive(Debug, Default)]
struct Kept {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    over_limit: bool,
    complete: bool,
}

/// A body that passes its frames on and keeps them (up to `limit` bytes).
pub struct Recording<B> {
    inner: B,
    limit: usize,
    kept: Arc<Mutex<Kept>>,
}

/// Where to get a replay of a recording from, once it has been sent.
#[derive(Clone, Debug)]
pub struct ReplayHandle(Arc<Mutex<Kept>>);

impl<B> Recording<B> {
    pub fn new(inner: B, limit: usize) -> (Recording<B>, ReplayHandle)
    where
        B: Body,
    {
        let kept = Arc::new(Mutex::new(Kept {
            complete: inner.is_end_stream(),
            ..Kept::default()
        }));
        (
            Recording {
                inner,
                limit,
                kept: kept.clone(),
            },
            ReplayHandle(kept),
        )
    }
}

impl ReplayHandle {
    /// The whole body again, if it was read to its end within the limit.
    pub fn replay(&self) -> Option<Replay> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (kept.complete && !kept.over_limit).then(|| Replay {
            data: kept.data.iter().rev().cloned().collect(),
            trailers: kept.trailers.clone(),
            len: kept.bytes as u64,
        })
    }

    /// Whether the body outgrew the limit (a replay is then impossible).
    pub fn over_limit(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).over_limit
    }
}

impl<B> Body for Recording<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let mut kept = this.kept.lock().unwrap_or_else(|e| e.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    kept.bytes += d.len();
                    if kept.bytes > this.limit {
                        kept.over_limit = true;
                        kept.data.clear();
                    } else if !kept.over_limit {
                        kept.data.push(d.clone());
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    kept.trailers = Some(t.clone());
                }
                if this.inner.is_end_stream() {
                    kept.complete = true;
                }
            }
            Poll::Ready(None) => kept.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        drop(kept);
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A recorded body, sent again.
#[derive(Debug)]
pub struct Replay {
    /// Remaining data frames, last first (popped from the end).
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: u64,
}

impl Replay {
    /// An empty body, as often as needed (a request without one).
    pub fn empty() -> Replay {
        Replay {
            data: Vec::new(),
            trailers: None,
            len: 0,
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.pop() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(chunks: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn collect(b: impl Body<Data = Bytes, Error = BoxError>) -> Vec<u8> {
        b.collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_body_within_the_limit_replays_whole() {
        let (rec, handle) = Recording::new(body(&["hello ", "mesh"]), 64);
        assert!(
            handle.replay().is_none(),
            "nothing to replay before it is sent"
        );
        assert_eq!(collect(rec).await, b"hello mesh");
        let replay = handle.replay().expect("replayable");
        assert_eq!(replay.size_hint().exact(), Some(10));
        assert_eq!(collect(replay).await, b"hello mesh");
        // As often as needed (one per retry).
        assert_eq!(
            collect(handle.replay().expect("again")).await,
            b"hello mesh"
        );
    }

    #[tokio::test]
    async fn past_the_limit_it_still_streams_but_cannot_replay() {
        let (rec, handle) = Recording::new(body(&["0123456789", "0123456789"]), 15);
        assert_eq!(
            collect(rec).await.len(),
            20,
            "the first attempt gets it all"
        );
        assert!(handle.over_limit());
        assert!(handle.replay().is_none());
    }

    #[tokio::test]
    async fn a_body_not_read_to_its_end_cannot_replay() {
        let (mut rec, handle) = Recording::new(body(&["part", "rest"]), 64);
        let first = rec.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "part");
        assert!(handle.replay().is_none());
    }
}
