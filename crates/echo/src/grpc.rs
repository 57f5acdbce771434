//! gRPC on the HTTP ports: `halyard.echo.v1.EchoService/Echo`, one unary
//! method answering with the request's message and who answered (see
//! `proto/echo.proto`, which these hand-written prost types mirror, so no
//! `protoc` is needed to build). Requests are routed here by their
//! `content-type: application/grpc`.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, UnaryService};
use tonic_prost::ProstCodec;

use crate::http_server::EchoState;
use crate::identity::Workload;
use crate::report::header_map;

/// The full path of the one method.
pub const ECHO_PATH: &str = "/halyard.echo.v1.EchoService/Echo";

/// `halyard.echo.v1.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `halyard.echo.v1.EchoResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    /// The request's message, unchanged.
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(string, tag = "4")]
    pub pod: String,
    #[prost(string, tag = "5")]
    pub namespace: String,
    /// Request metadata: lower-case names, repeated values joined by `,`.
    #[prost(btree_map = "string, string", tag = "6")]
    pub metadata: BTreeMap<String, String>,
    /// The `:authority` of the call.
    #[prost(string, tag = "7")]
    pub host: String,
    /// The TCP peer.
    #[prost(string, tag = "8")]
    pub peer: String,
    #[prost(string, tag = "9")]
    pub local: String,
}

/// Whether a request is gRPC (and so for [`handle`]).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Answers one gRPC request; unknown methods get `UNIMPLEMENTED`. `marks`
/// (hit counts and the like) go into the initial metadata.
pub async fn handle(
    state: Arc<EchoState>,
    peer: SocketAddr,
    local: SocketAddr,
    request: Request<Incoming>,
    marks: HeaderMap,
) -> Response<tonic::body::Body> {
    if request.uri().path() != ECHO_PATH {
        let method = request.uri().path().to_owned();
        let mut answer =
            tonic::Status::unimplemented(format!("unknown method {method}")).into_http();
        answer.headers_mut().extend(marks);
        return answer;
    }
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let echo = EchoMethod {
        state,
        host,
        peer,
        local,
        marks,
    };
    Grpc::new(ProstCodec::<EchoResponse, EchoRequest>::default())
        .unary(echo, request)
        .await
}

/// One call of `Echo`, with what the connection knows about it.
struct EchoMethod {
    state: Arc<EchoState>,
    host: String,
    peer: SocketAddr,
    local: SocketAddr,
    marks: HeaderMap,
}

/// A failure on purpose: a trailers-only answer (HTTP 200, no message) with
/// `grpc-status` `code`, the echo's identity headers and `marks`.
pub fn failure(
    code: tonic::Code,
    workload: &Workload,
    marks: HeaderMap,
) -> Response<tonic::body::Body> {
    let status = tonic::Status::new(code, "halyard echo: failing on purpose");
    let mut answer = status.into_http();
    workload.insert_headers(answer.headers_mut());
    answer.headers_mut().extend(marks);
    answer
}

impl UnaryService<EchoRequest> for EchoMethod {
    type Response = EchoResponse;
    type Future = Ready<Result<tonic::Response<EchoResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let (metadata, _, request) = request.into_parts();
        let metadata = header_map(metadata.as_ref())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let workload = &self.state.workload;
        let response = EchoResponse {
            message: request.message,
            service: workload.service.clone(),
            version: workload.version.clone(),
            pod: workload.pod.clone(),
            namespace: workload.namespace.clone(),
            metadata,
            host: std::mem::take(&mut self.host),
            peer: self.peer.to_string(),
            local: self.local.to_string(),
        };
        let mut headers = std::mem::take(&mut self.marks);
        workload.insert_headers(&mut headers);
        ready(Ok(tonic::Response::from_parts(
            MetadataMap::from_headers(headers),
            response,
            Default::default(),
        )))
    }
}
