//! The HTTP side of the echo: one accept loop per port, HTTP/1.1 and h2c
//! (prior knowledge) told apart per connection, and the request handler that
//! answers every request with an [`EchoReport`](crate::report::EchoReport).
//!
//! ```text
//! request ─► content-type application/grpc? ──yes──► grpc::handle
//!              │no
//!              ▼
//!            /healthz? ──yes──► 200 "ok"
//!              │no
//!              ▼
//!        parse query (status, delay, size, header, url) ──bad──► 400 text
//!              ▼
//!        drain body ─► sleep(delay) ─► /call? make outbound calls
//!              ▼
//!        JSON report ─► pad/truncate to size ─► status + headers
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::call::{OutboundClient, call_all};
use crate::grpc;
use crate::identity::Workload;
use crate::report::{EchoReport, header_map};
use crate::shaping::{BodyKind, Shaping, fit_body};

/// Request bodies are read and discarded (so HTTP/1.1 connections stay
/// reusable) up to this many bytes; past it the connection is not reused.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

static X_ECHO_SERVICE: HeaderName = HeaderName::from_static("x-echo-service");
static X_ECHO_VERSION: HeaderName = HeaderName::from_static("x-echo-version");
static X_ECHO_POD: HeaderName = HeaderName::from_static("x-echo-pod");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

/// Everything a request handler shares with the others.
pub struct EchoState {
    pub workload: Workload,
    pub client: OutboundClient,
    /// Called on every ordinary request (`--upstream`).
    pub upstreams: Vec<String>,
}

/// The two ends of the TCP connection a request came on.
#[derive(Debug, Clone, Copy)]
struct ConnAddrs {
    peer: SocketAddr,
    local: SocketAddr,
}

/// Accepts connections on `listener` forever, each served on its own task.
pub async fn accept_loop(listener: TcpListener, state: Arc<EchoState>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let listen = listener.local_addr().ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Typically EMFILE: back off a little instead of spinning.
                tracing::warn!(?listen, error = %err, "echo accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let addrs = ConnAddrs { peer, local };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| dispatch(state.clone(), addrs, req));
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "echo connection ended with an error");
            }
        });
    }
}

/// The body of any answer: the plain echo's or the gRPC service's.
type AnswerBody = Either<Full<Bytes>, tonic::body::Body>;

async fn dispatch(
    state: Arc<EchoState>,
    addrs: ConnAddrs,
    request: Request<Incoming>,
) -> Result<Response<AnswerBody>, Infallible> {
    if grpc::is_grpc(request.headers()) {
        let response = grpc::handle(state, addrs.peer, addrs.local, request).await;
        Ok(response.map(Either::Right))
    } else {
        let response = handle(state, addrs, request).await?;
        Ok(response.map(Either::Left))
    }
}

async fn handle(
    state: Arc<EchoState>,
    addrs: ConnAddrs,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    drain(body).await;
    if parts.uri.path() == "/healthz" {
        return Ok(text(StatusCode::OK, "ok"));
    }
    let shaping = match Shaping::from_query(parts.uri.query()) {
        Ok(shaping) => shaping,
        Err(err) => return Ok(text(StatusCode::BAD_REQUEST, err.to_string())),
    };
    if let Some(delay) = shaping.delay.filter(|d| !d.is_zero()) {
        tokio::time::sleep(delay).await;
    }
    let calls = if parts.uri.path() == "/call" {
        call_all(&state.client, &shaping.urls, &parts.headers).await
    } else if !state.upstreams.is_empty() {
        call_all(&state.client, &state.upstreams, &parts.headers).await
    } else {
        Vec::new()
    };

    let workload = &state.workload;
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let report = EchoReport {
        service: &workload.service,
        version: &workload.version,
        pod: &workload.pod,
        namespace: &workload.namespace,
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        host,
        proto: proto(parts.version),
        headers: header_map(&parts.headers),
        peer: addrs.peer,
        local: addrs.local,
        calls,
    };
    let json = match serde_json::to_vec(&report) {
        Ok(json) => json,
        Err(err) => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    };
    let (body, kind) = fit_body(json, shaping.size);

    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = shaping.status.unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    let content_type = match kind {
        BodyKind::Json => &APPLICATION_JSON,
        BodyKind::Filler => &TEXT_PLAIN,
    };
    headers.insert(CONTENT_TYPE, content_type.clone());
    headers.insert(X_ECHO_SERVICE.clone(), workload.service_header.clone());
    headers.insert(X_ECHO_VERSION.clone(), workload.version_header.clone());
    headers.insert(X_ECHO_POD.clone(), workload.pod_header.clone());
    // The first `header=` for a name replaces ours; later ones add values.
    for (i, (name, value)) in shaping.headers.iter().enumerate() {
        if shaping.headers[..i].iter().any(|(seen, _)| seen == name) {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// Reads and drops the request body, up to [`MAX_DRAIN`] bytes.
async fn drain(mut body: Incoming) {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > MAX_DRAIN {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, TEXT_PLAIN.clone());
    response
}
