//! `envoy.filters.http.fault` on the request path: the delay on tokio's
//! clock (tested with time paused), then the abort answered as Envoy does
//! (plain for HTTP clients, trailers-only for gRPC clients). Its config is
//! `crate::config::fault`.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::ResponseBody;
pub use crate::config::fault::{AbortStatus, FaultConfig, NAME};

/// The body of every abort, as Envoy sends it.
pub const ABORT_BODY: &str = "fault filter abort";

/// Envoy's local reply for an abort: plain for HTTP clients; for gRPC
/// clients a trailers-only response (HTTP 200, `grpc-status`), the status
/// mapped from the HTTP code when the abort gave one.
pub fn abort_response(status: AbortStatus, request: &HeaderMap) -> Response<ResponseBody> {
    if super::headers::is_grpc(request) {
        let code = match status {
            AbortStatus::Grpc(c) => c,
            AbortStatus::Http(s) => http_to_grpc(s),
        };
        let mut resp = Response::new(ResponseBody::local(bytes::Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("fault%20filter%20abort"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return resp;
    }
    let code = match status {
        AbortStatus::Http(s) => s,
        AbortStatus::Grpc(_) => StatusCode::OK,
    };
    let mut resp = Response::new(ResponseBody::local(bytes::Bytes::from_static(
        ABORT_BODY.as_bytes(),
    )));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(ABORT_BODY.len()));
    resp
}

/// Envoy's HTTP-to-gRPC status mapping (`Grpc::Utility::httpToGrpcStatus`).
fn http_to_grpc(s: StatusCode) -> u32 {
    match s.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborts_answer_http_and_grpc_clients_as_envoy_does() {
        let plain = HeaderMap::new();
        let r = abort_response(AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE), &plain);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "18");
        let r = abort_response(AbortStatus::Grpc(14), &plain);
        assert_eq!(
            r.status(),
            200,
            "a gRPC abort of a non-gRPC request is a 200"
        );
        let mut grpc = HeaderMap::new();
        grpc.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let r = abort_response(AbortStatus::Grpc(14), &grpc);
        assert_eq!(
            (r.status().as_u16(), &r.headers()["grpc-status"]),
            (200, &HeaderValue::from(14))
        );
        let r = abort_response(AbortStatus::Http(StatusCode::NOT_FOUND), &grpc);
        assert_eq!(r.headers()["grpc-status"], "12");
    }
}
