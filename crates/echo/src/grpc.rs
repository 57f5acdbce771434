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

/// Answers one gRPC request; unknown methods get `UNIMPLEMENTED`.
pub async fn handle(
    state: Arc<EchoState>,
    peer: SocketAddr,
    local: SocketAddr,
    request: Request<Incoming>,
) -> Response<tonic::body::Body> {
    if request.uri().path() != ECHO_PATH {
        let method = request.uri().path().to_owned();
        return tonic::Status::unimplemented(format!("unknown method {method}")).into_http();
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
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert("x-echo-service", workload.service_header.clone());
        headers.insert("x-echo-version", workload.version_header.clone());
        headers.insert("x-echo-pod", workload.pod_header.clone());
        ready(Ok(tonic::Response::from_parts(
            MetadataMap::from_headers(headers),
            response,
            Default::default(),
        )))
    }
}
