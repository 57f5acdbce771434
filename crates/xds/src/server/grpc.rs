//! The ADS gRPC endpoint, framed by hand on the response side so that a
//! resource body is encoded once and sent by reference to every stream that
//! receives it: a response is a gRPC frame header, a few freshly encoded
//! fields (version, nonce, type URL) and the shared bytes of each resource,
//! handed to HTTP/2 as a list of chunks. (tonic's generated server would
//! copy every body into a per-stream buffer that then stays as large as the
//! stream's largest message.) Requests are decoded here too, with a buffer
//! that does not keep the largest request's size.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body::{Body, Frame, SizeHint};
use prost::encoding::{WireType, encode_key, encode_varint};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::server::NamedService;

use super::{MAX_MESSAGE_SIZE, Resource, STREAM_BUFFER, Shared, StreamContext};
use crate::status::SyncStatus;

/// One response, ready for the wire: its chunks in order (the gRPC frame
/// header first).
pub(crate) struct Encoded {
    chunks: Vec<Bytes>,
}

impl Encoded {
    #[cfg(test)]
    pub fn concat(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// Resources at least this large are sent by reference, not copied.
const SPLICE_AT_LEAST: usize = 4 << 10;

/// About one HTTP/2 frame (16 KiB by default).
const CHUNK: usize = 16 << 10;

/// Builds one protobuf message as chunks: small fields into a scratch
/// buffer, shared bytes spliced in without a copy.
struct MessageWriter {
    chunks: Vec<Bytes>,
    scratch: BytesMut,
    len: usize,
}

impl MessageWriter {
    fn new() -> Self {
        MessageWriter {
            chunks: vec![Bytes::new()],
            scratch: BytesMut::new(),
            len: 0,
        }
    }

    fn flush(&mut self) {
        if !self.scratch.is_empty() {
            self.len += self.scratch.len();
            self.chunks.push(self.scratch.split().freeze());
        }
    }

    fn string(&mut self, tag: u32, value: &str) {
        if !value.is_empty() {
            prost::encoding::string::encode(tag, &value.to_string(), &mut self.scratch);
        }
    }

    /// A length-delimited field with these bytes: small ones are copied
    /// into chunks of about an HTTP/2 frame (one queued frame per chunk, so
    /// thousands of small resources must not become thousands of frames);
    /// large ones are spliced in by reference.
    fn shared(&mut self, tag: u32, bytes: &Bytes) {
        encode_key(tag, WireType::LengthDelimited, &mut self.scratch);
        encode_varint(bytes.len() as u64, &mut self.scratch);
        if bytes.len() < SPLICE_AT_LEAST {
            self.scratch.extend_from_slice(bytes);
            if self.scratch.len() >= CHUNK {
                self.flush();
            }
            return;
        }
        self.flush();
        self.len += bytes.len();
        self.chunks.push(bytes.clone());
    }

    /// The message as a gRPC frame: uncompressed flag, length, body.
    fn finish(mut self) -> Encoded {
        self.flush();
        let mut head = BytesMut::with_capacity(5);
        head.put_u8(0);
        head.put_u32(self.len as u32);
        self.chunks[0] = head.freeze();
        Encoded {
            chunks: self.chunks,
        }
    }
}

/// `envoy.service.discovery.v3.Resource` for this resource: the `Any` first
/// (field 2), then version (1) and name (3), so the `Any` alone is a slice
/// of the same bytes (what state-of-the-world responses carry).
pub(crate) fn resource_wire(r: &Resource) -> (Bytes, Bytes) {
    use prost::Message as _;
    let any_len = r.body.encoded_len();
    let mut buf = BytesMut::with_capacity(any_len + r.name.len() + r.version.len() + 16);
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(any_len as u64, &mut buf);
    let any_start = buf.len();
    let _ = r.body.encode(&mut buf);
    let any_end = buf.len();
    prost::encoding::string::encode(1, &r.version.to_string(), &mut buf);
    prost::encoding::string::encode(3, &r.name.to_string(), &mut buf);
    let all = buf.freeze();
    let any = all.slice(any_start..any_end);
    debug_assert_eq!(any.len(), any_len);
    (all, any)
}

/// A `DeltaDiscoveryResponse`.
pub(crate) fn delta_response(
    system_version_info: &str,
    resources: &[Arc<Resource>],
    type_url: &str,
    removed: &[Arc<str>],
    nonce: &str,
) -> Encoded {
    let mut w = MessageWriter::new();
    w.string(1, system_version_info);
    for r in resources {
        w.shared(2, &r.wire().0);
    }
    w.string(4, type_url);
    w.string(5, nonce);
    for name in removed {
        prost::encoding::string::encode(6, &name.to_string(), &mut w.scratch);
    }
    w.finish()
}

/// A state-of-the-world `DiscoveryResponse`.
pub(crate) fn sotw_response<'a>(
    version_info: &str,
    resources: impl Iterator<Item = &'a Arc<Resource>>,
    type_url: &str,
    nonce: &str,
) -> Encoded {
    let mut w = MessageWriter::new();
    w.string(1, version_info);
    for r in resources {
        w.shared(2, &r.wire().1);
    }
    w.string(4, type_url);
    w.string(5, nonce);
    w.finish()
}

pub(crate) type Tx = mpsc::Sender<Result<Encoded, Status>>;

/// A stream's requests, decoded from the request body's gRPC frames. The
/// read buffer is given back once it has been drained, so a large request
/// (an EDS subscription naming a thousand clusters) does not keep its size
/// for the life of the stream.
pub(crate) struct Requests<T> {
    body: tonic::body::Body,
    buf: BytesMut,
    done: bool,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> Requests<T> {
    fn new(body: tonic::body::Body) -> Self {
        Requests {
            body,
            buf: BytesMut::new(),
            done: false,
            _type: std::marker::PhantomData,
        }
    }
}

impl<T: prost::Message + Default> Requests<T> {
    /// One whole message from the buffer, if it holds one.
    fn take(&mut self) -> Option<Result<T, Status>> {
        if self.buf.len() < 5 {
            return None;
        }
        if self.buf[0] != 0 {
            return Some(Err(Status::unimplemented(
                "compressed requests are not supported",
            )));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE_SIZE {
            return Some(Err(Status::out_of_range(format!(
                "request of {len} bytes is over the {MAX_MESSAGE_SIZE} allowed"
            ))));
        }
        if self.buf.len() < 5 + len {
            return None;
        }
        let _ = self.buf.split_to(5);
        let message = self.buf.split_to(len);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Some(T::decode(message).map_err(|e| Status::invalid_argument(format!("bad request: {e}"))))
    }
}

impl<T: prost::Message + Default> tokio_stream::Stream for Requests<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.take() {
                if item.is_err() {
                    self.done = true;
                }
                return Poll::Ready(Some(item));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Err(Status::invalid_argument(
                            "request stream ended inside a message",
                        ))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// The ADS service as tonic's router serves it.
#[derive(Clone)]
pub struct AdsService {
    pub(super) source: Arc<dyn super::SnapshotSource>,
    pub(super) status: SyncStatus,
    pub(super) shared: Arc<Shared>,
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// SDS on its own stream (how Envoy reaches pilot-agent's `sds-grpc`): the
/// same protocol, served from the same snapshots.
const SDS_SOTW_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const SDS_DELTA_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";

/// The secret discovery service (`envoy.service.secret.v3`), for tonic's
/// router: the ADS machinery under SDS's gRPC names.
#[derive(Clone)]
pub struct SdsService(pub(super) AdsService);

impl NamedService for SdsService {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for SdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(req)
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let ctx = StreamContext {
            source: self.source.clone(),
            status: self.status.clone(),
            shared: self.shared.clone(),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        match req.uri().path() {
            DELTA_PATH | SDS_DELTA_PATH => {
                let requests: Requests<DeltaDiscoveryRequest> = Requests::new(req.into_body());
                tokio::spawn(super::delta::run(ctx, requests, tx));
            }
            SOTW_PATH | SDS_SOTW_PATH => {
                let requests: Requests<DiscoveryRequest> = Requests::new(req.into_body());
                tokio::spawn(super::sotw::run(ctx, requests, tx));
            }
            _ => return std::future::ready(Ok(Status::unimplemented("").into_http())),
        }
        let body = ResponseBody {
            rx,
            pending: VecDeque::new(),
            done: false,
        };
        let resp = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(tonic::body::Body::new(body))
            .unwrap_or_else(|_| Status::internal("response").into_http());
        std::future::ready(Ok(resp))
    }
}

/// A stream's responses as HTTP/2 data, then the gRPC status as trailers.
struct ResponseBody {
    rx: mpsc::Receiver<Result<Encoded, Status>>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                if chunk.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(encoded))) => self.pending.extend(encoded.chunks),
                Poll::Ready(Some(Err(status))) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    let _ = status.add_header(&mut h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse, Resource as XdsResource,
    };
    use prost::Message;

    fn res(name: &str, value: &[u8]) -> Arc<Resource> {
        Arc::new(Resource::new(
            name,
            prost_types::Any {
                type_url: "type.googleapis.com/x.Y".into(),
                value: value.to_vec(),
            },
        ))
    }

    fn body(e: &Encoded) -> Vec<u8> {
        let all = e.concat();
        assert_eq!(all[0], 0);
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(len, all.len() - 5, "frame length");
        all[5..].to_vec()
    }

    #[test]
    fn delta_responses_decode_as_envoy_reads_them() {
        let rs = [res("a", b"one"), res("b", &[7u8; 300])];
        let removed: Vec<Arc<str>> = vec!["gone".into(), "old".into()];
        let e = delta_response("v9", &rs, "type.googleapis.com/x.Y", &removed, "17");
        let got = DeltaDiscoveryResponse::decode(&body(&e)[..]).expect("decodes");
        let want = DeltaDiscoveryResponse {
            system_version_info: "v9".into(),
            resources: rs
                .iter()
                .map(|r| XdsResource {
                    name: r.name.to_string(),
                    version: r.version.to_string(),
                    resource: Some(super::super::to_wire(&r.body)),
                    ..Default::default()
                })
                .collect(),
            type_url: "type.googleapis.com/x.Y".into(),
            removed_resources: vec!["gone".into(), "old".into()],
            nonce: "17".into(),
            ..Default::default()
        };
        assert_eq!(got, want);
        // Small bodies are copied into frame-sized chunks.
        assert_eq!(e.chunks.len(), 2, "header and one chunk");
        // Large ones are the shared bytes, not copies.
        let big = res("big", &[1u8; 100 << 10]);
        let e = delta_response("v", std::slice::from_ref(&big), "t", &[], "1");
        let shared = big.wire().0.as_ptr();
        assert!(e.chunks.iter().any(|c| c.as_ptr() == shared));
        let got = DeltaDiscoveryResponse::decode(&body(&e)[..]).expect("decodes");
        assert_eq!(
            got.resources[0].resource.as_ref().map(|a| a.value.len()),
            Some(100 << 10)
        );
    }

    /// A request body of these chunks.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn requests_decode_across_and_within_frames() {
        use tokio_stream::StreamExt;
        let frame = |m: &DeltaDiscoveryRequest| {
            let body = m.encode_to_vec();
            let mut f = vec![0u8];
            f.extend_from_slice(&(body.len() as u32).to_be_bytes());
            f.extend_from_slice(&body);
            f
        };
        let a = DeltaDiscoveryRequest {
            type_url: "a".into(),
            resource_names_subscribe: (0..2000).map(|i| format!("cluster-{i}")).collect(),
            ..Default::default()
        };
        let b = DeltaDiscoveryRequest {
            type_url: "b".into(),
            ..Default::default()
        };
        let mut bytes = frame(&a);
        bytes.extend(frame(&b));
        bytes.extend(frame(&b));
        // Split anywhere: inside a header, inside a body, across messages.
        let cuts = [3, 700, bytes.len() - 4];
        let mut chunks = VecDeque::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            chunks.push_back(Bytes::copy_from_slice(&bytes[from..cut]));
            from = cut;
        }
        let mut requests: Requests<DeltaDiscoveryRequest> =
            Requests::new(tonic::body::Body::new(Chunks(chunks)));
        assert_eq!(requests.next().await.expect("a").expect("ok"), a);
        assert!(requests.buf.capacity() < 1024, "buffer given back");
        assert_eq!(requests.next().await.expect("b").expect("ok"), b);
        assert_eq!(requests.next().await.expect("b").expect("ok"), b);
        assert!(requests.next().await.is_none());
        // A stream cut inside a message is an error, not a hang.
        let cut = Chunks(VecDeque::from([Bytes::copy_from_slice(&frame(&a)[..50])]));
        let mut requests: Requests<DeltaDiscoveryRequest> =
            Requests::new(tonic::body::Body::new(cut));
        assert!(requests.next().await.expect("item").is_err());
    }

    #[test]
    fn sotw_responses_decode_as_envoy_reads_them() {
        let rs = [res("a", b"one"), res("b", b"")];
        let e = sotw_response("v1", rs.iter(), "type.googleapis.com/x.Y", "3");
        let got = DiscoveryResponse::decode(&body(&e)[..]).expect("decodes");
        assert_eq!(got.version_info, "v1");
        assert_eq!(got.nonce, "3");
        assert_eq!(got.type_url, "type.googleapis.com/x.Y");
        let bodies: Vec<_> = got
            .resources
            .into_iter()
            .map(super::super::from_wire)
            .collect();
        assert_eq!(bodies, vec![rs[0].body.clone(), rs[1].body.clone()]);
        let empty = delta_response("", &[], "t", &[], "1");
        assert_eq!(
            DeltaDiscoveryResponse::decode(&body(&empty)[..]).expect("decodes"),
            DeltaDiscoveryResponse {
                type_url: "t".into(),
                nonce: "1".into(),
                ..Default::default()
            }
        );
    }
}
