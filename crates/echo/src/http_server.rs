//! The HTTP side of the echo: one accept loop per port, HTTP/1.1 and h2c
//! (prior knowledge) told apart per connection, and the request handler that
//! answers every request with an [`EchoReport`](crate::report::EchoReport) —
//! or fails it on purpose.
//!
//! ```text
//! request ─► gRPC? ──no──► /healthz ─► 200 "ok"     /hits ─► counters
//!   │                      (neither counted nor failed)
//!   ▼
//! parameters: query (gRPC: x-echo-* metadata) ──bad──► 400 (gRPC: INVALID_ARGUMENT)
//!   ▼
//! count (total, key, connection), decide: own plan, then --fail-*
//!   ▼
//! sleep(delay, else --delay)
//!   ├─ close / rst ─────────► drop the connection (FIN / RST), no answer
//!   ├─ refused-stream, ... ─► h2: RST_STREAM with that code; HTTP/1.1: RST
//!   ├─ grpc-N ──────────────► trailers-only answer with grpc-status N
//!   └─ status or no failure:
//!        gRPC ─► grpc::handle (a failure status: that status, empty body)
//!        else ─► drain body ─► /call? outbound calls ─► JSON report
//!                ─► pad/truncate to size ─► status + headers
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::call::{OutboundClient, call_all};
use crate::conn::{self, Conn, ConnIo};
use crate::faults::{FailWith, FaultPlan};
use crate::grpc;
use crate::hits::{Counted, Hits, Verdict};
use crate::identity::Workload;
use crate::report::{EchoReport, header_map};
use crate::shaping::{BodyKind, Shaping, fit_body};

/// Request bodies are read and discarded (so HTTP/1.1 connections stay
/// reusable) up to this many bytes; past it the connection is not reused.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

static X_ECHO_HITS: HeaderName = HeaderName::from_static("x-echo-hits");
static X_ECHO_KEY_HITS: HeaderName = HeaderName::from_static("x-echo-key-hits");
static X_ECHO_FAILED: HeaderName = HeaderName::from_static("x-echo-failed");
static X_ECHO_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-echo-attempt-count");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

/// Everything a request handler shares with the others.
pub struct EchoState {
    pub workload: Workload,
    pub client: OutboundClient,
    /// Called on every ordinary request (`--upstream`).
    pub upstreams: Vec<String>,
    /// The server-wide failure plan (`--fail`, `--fail-first`, ...).
    pub faults: FaultPlan,
    /// `--delay`.
    pub delay: Option<Duration>,
    /// `--refuse`: reset every connection as soon as it is accepted.
    pub refuse: bool,
    pub hits: Hits,
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
        state.hits.connection();
        if state.refuse {
            conn::refuse(stream);
            continue;
        }
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn::new(peer, local));
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(ConnIo::new(stream, conn.clone()));
            let for_requests = conn.clone();
            let service = service_fn(move |req| dispatch(state.clone(), for_requests.clone(), req));
            tokio::select! {
                served = builder.serve_connection(io, service) => {
                    if let Err(err) = served {
                        tracing::debug!(%peer, error = %err, "echo connection ended with an error");
                    }
                }
                () = conn.aborted() => {
                    tracing::debug!(%peer, "echo dropped a connection on purpose");
                }
            }
        });
    }
}

/// The body of any answer: the plain echo's or the gRPC service's.
type AnswerBody = Either<Full<Bytes>, tonic::body::Body>;

/// Answers one request, or fails it as its own plan or the server's says;
/// an `Err` resets the h2 stream with its reason.
async fn dispatch(
    state: Arc<EchoState>,
    conn: Arc<Conn>,
    request: Request<Incoming>,
) -> Result<Response<AnswerBody>, h2::Error> {
    let grpc = grpc::is_grpc(request.headers());
    if !grpc && let Some(answer) = special_path(&state, &request) {
        drain(request.into_body()).await;
        return Ok(answer.map(Either::Left));
    }
    let parsed = if grpc {
        Shaping::from_grpc_metadata(request.headers())
    } else {
        Shaping::from_query(request.uri().query())
    };
    let mut shaping = match parsed {
        Ok(shaping) => shaping,
        Err(err) => return Ok(bad_request(grpc, err.to_string())),
    };
    let verdict = state.hits.record(Counted {
        server: &state.faults,
        request: &shaping.fault,
        key: shaping.key.as_deref(),
        conn_n: conn.next_request(),
        grpc,
    });
    let verdict = match verdict {
        Ok(verdict) => verdict,
        Err(err) => return Ok(bad_request(grpc, err.to_string())),
    };
    if let Some(delay) = shaping.delay.or(state.delay).filter(|d| !d.is_zero()) {
        tokio::time::sleep(delay).await;
    }
    let marks = marks(&verdict, request.headers());
    let h2 = request.version() == Version::HTTP_2;
    match verdict.failure.map(|f| f.with) {
        Some(FailWith::Close) => abort(&conn, false).await,
        Some(FailWith::Rst) => abort(&conn, true).await,
        Some(FailWith::ResetStream(reason)) if h2 => Err(reason.into()),
        Some(FailWith::ResetStream(_)) => abort(&conn, true).await,
        Some(FailWith::Grpc(code)) => {
            drain(request.into_body()).await;
            let answer = grpc::failure(code, &state.workload, marks);
            Ok(answer.map(Either::Right))
        }
        Some(FailWith::Status(status)) if grpc => {
            drain(request.into_body()).await;
            let mut answer = Response::new(tonic::body::Body::empty());
            *answer.status_mut() = status;
            state.workload.insert_headers(answer.headers_mut());
            answer.headers_mut().extend(marks);
            Ok(answer.map(Either::Right))
        }
        Some(FailWith::Status(status)) => {
            shaping.status = Some(status);
            let answer = handle(&state, &conn, request, shaping, marks).await;
            Ok(answer.map(Either::Left))
        }
        None if grpc => {
            let answer = grpc::handle(state, conn.peer, conn.local, request, marks).await;
            Ok(answer.map(Either::Right))
        }
        None => {
            let answer = handle(&state, &conn, request, shaping, marks).await;
            Ok(answer.map(Either::Left))
        }
    }
}

/// `/healthz` and `/hits`: neither counted nor failed.
fn special_path(state: &EchoState, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    match request.uri().path() {
        "/healthz" => Some(text(StatusCode::OK, "ok")),
        "/hits" => {
            let (status, body) = crate::hits::answer(
                &state.hits,
                &state.workload,
                request.method(),
                request.uri().query(),
            );
            let mut answer = text(status, body);
            if status == StatusCode::OK {
                answer
                    .headers_mut()
                    .insert(CONTENT_TYPE, APPLICATION_JSON.clone());
            }
            Some(answer)
        }
        _ => None,
    }
}

/// Ends the request's connection unanswered; the connection's task drops
/// it, and this request with it.
async fn abort<T>(conn: &Conn, reset: bool) -> T {
    conn.abort(reset);
    std::future::pending().await
}

/// The headers every counted answer carries: `x-echo-hits`,
/// `x-echo-key-hits`, `x-echo-failed`, and the request's
/// `x-envoy-attempt-count` as `x-echo-attempt-count`.
fn marks(verdict: &Verdict, request: &HeaderMap) -> HeaderMap {
    let mut marks = HeaderMap::with_capacity(4);
    marks.insert(X_ECHO_HITS.clone(), HeaderValue::from(verdict.hit));
    if let Some(key_hit) = verdict.key_hit {
        marks.insert(X_ECHO_KEY_HITS.clone(), HeaderValue::from(key_hit));
    }
    if let Some(failure) = verdict.failure {
        marks.insert(X_ECHO_FAILED.clone(), HeaderValue::from_static(failure.why));
    }
    if let Some(attempt) = request.get(&X_ENVOY_ATTEMPT_COUNT) {
        marks.insert(X_ECHO_ATTEMPT_COUNT.clone(), attempt.clone());
    }
    marks
}

fn bad_request(grpc: bool, message: String) -> Response<AnswerBody> {
    if grpc {
        let status = tonic::Status::invalid_argument(message);
        status.into_http().map(Either::Right)
    } else {
        text(StatusCode::BAD_REQUEST, message).map(Either::Left)
    }
}

/// The echo's ordinary answer (with the status a failure gives it, if any).
async fn handle(
    state: &EchoState,
    conn: &Conn,
    request: Request<Incoming>,
    shaping: Shaping,
    marks: HeaderMap,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    drain(body).await;
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
        peer: conn.peer,
        local: conn.local,
        calls,
    };
    let json = match serde_json::to_vec(&report) {
        Ok(json) => json,
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
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
    workload.insert_headers(headers);
    headers.extend(marks);
    // The first `header=` for a name replaces ours; later ones add values.
    for (i, (name, value)) in shaping.headers.iter().enumerate() {
        if shaping.headers[..i].iter().any(|(seen, _)| seen == name) {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
    response
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
