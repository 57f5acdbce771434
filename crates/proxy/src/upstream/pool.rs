//! Per-host upstream HTTP connection pools: idle HTTP/1.1 connections in a
//! lock-free queue (one request at a time each, returned when the response body
//! ends), and one shared multiplexed h2c connection. A request never opens a
//! connection when a usable one is pooled.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::request_body::RequestBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::error::RequestError;
use crate::stats::ClusterStats;
use crate::tls::Secrets;
use crate::upstream::connect::connect;
use crate::upstream::host::{ActiveRequest, Host};

/// Idle HTTP/1.1 connections kept per host.
const MAX_IDLE_HTTP1: usize = 256;

type Http1Sender = http1::SendRequest<RequestBody>;
type Http2Sender = http2::SendRequest<RequestBody>;

/// Lock-free, and allocation-free until a host first gets an idle
/// connection (a mesh has many hosts, most of them idle). Connections
/// opened with a per-request SNI (`auto_sni`) carry it, and are reused only
/// for requests with the same one.
#[derive(Default)]
pub struct HostPool {
    http1: SegQueue<(Option<Arc<str>>, Http1Sender)>,
    http2: ArcSwapOption<(Option<Arc<str>>, Http2Sender)>,
}

impl HostPool {
    fn release_http1(&self, sni: Option<Arc<str>>, sender: Http1Sender) {
        if self.http1.len() < MAX_IDLE_HTTP1 {
            self.http1.push((sni, sender));
        }
    }
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("idle_http1", &self.http1.len())
            .finish()
    }
}

/// Wire protocol to the upstream for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// How to open a connection for one request: the cluster's connect
/// timeout and stats, the secrets its TLS uses, and the SNI the request
/// asks for (`auto_sni`), checked against the server's DNS SANs when
/// `verify_sni` (`auto_san_validation`).
pub struct Dial<'a> {
    pub timeout: Duration,
    pub stats: &'a ClusterStats,
    pub secrets: &'a Secrets,
    pub sni: Option<&'a str>,
    pub verify_sni: bool,
}

/// A failed send, with the request back when it never left (so a retry can
/// send it, body and all, without having recorded it).
pub struct SendError {
    pub error: RequestError,
    pub unsent: Option<Request<RequestBody>>,
}

impl SendError {
    fn sent(error: RequestError) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// Send `req` to `active.host()`, reusing a pooled connection when one is
/// usable. An upgrade request gets a connection of its own that is not pooled.
pub async fn send(
    active: ActiveRequest,
    protocol: Protocol,
    req: Request<RequestBody>,
    dial: &Dial<'_>,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, SendError> {
    let unsent = |error, req| SendError {
        error,
        unsent: Some(req),
    };
    let host = active.host().clone();
    match protocol {
        Protocol::Http1 => {
            let mut req = req;
            if !upgrade {
                while let Some((sni, mut sender)) = host.pool.http1.pop() {
                    if sni.as_deref() != dial.sni
                        || sender.is_closed()
                        || sender.ready().await.is_err()
                    {
                        continue;
                    }
                    match sender.try_send_request(req).await {
                        Ok(resp) => {
                            return Ok(UpstreamBody::wrap(resp, active, Some((sni, sender))));
                        }
                        Err(mut e) => match e.take_message() {
                            // Not sent: the pooled connection had died; try another.
                            Some(r) => req = r,
                            None => {
                                return Err(SendError::sent(RequestError::UpstreamReset(
                                    e.into_error(),
                                )));
                            }
                        },
                    }
                }
            }
            let mut sender = match connect_http1(&host, dial).await {
                Ok(s) => s,
                Err(e) => return Err(unsent(e, req)),
            };
            let resp = match sender.try_send_request(req).await {
                Ok(r) => r,
                Err(mut e) => {
                    let unsent = e.take_message();
                    let error = RequestError::UpstreamReset(e.into_error());
                    return Err(SendError { error, unsent });
                }
            };
            let keep = (!upgrade).then(|| (dial.sni.map(Arc::from), sender));
            Ok(UpstreamBody::wrap(resp, active, keep))
        }
        Protocol::Http2 => {
            let current = host.pool.http2.load_full();
            let mut sender = match current {
                Some(s) if !s.1.is_closed() && s.0.as_deref() == dial.sni => {
                    Http2Sender::clone(&s.1)
                }
                _ => {
                    let s = match connect_http2(&host, dial).await {
                        Ok(s) => s,
                        Err(e) => return Err(unsent(e, req)),
                    };
                    host.pool
                        .http2
                        .store(Some(Arc::new((dial.sni.map(Arc::from), s.clone()))));
                    s
                }
            };
            if let Err(e) = sender.ready().await {
                return Err(unsent(RequestError::UpstreamReset(e), req));
            }
            let resp = match sender.try_send_request(req).await {
                Ok(r) => r,
                Err(mut e) => {
                    let unsent = e.take_message();
                    let error = RequestError::UpstreamReset(e.into_error());
                    return Err(SendError { error, unsent });
                }
            };
            Ok(UpstreamBody::wrap(resp, active, None))
        }
    }
}

async fn connect_http1(host: &Arc<Host>, dial: &Dial<'_>) -> Result<Http1Sender, RequestError> {
    let io = open(host, dial).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(RequestError::UpstreamReset)?;
    let guard = ConnectionGuard::new(host, dial.stats);
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        drop(guard);
    });
    Ok(sender)
}

async fn connect_http2(host: &Arc<Host>, dial: &Dial<'_>) -> Result<Http2Sender, RequestError> {
    let io = open(host, dial).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(RequestError::UpstreamReset)?;
    let guard = ConnectionGuard::new(host, dial.stats);
    tokio::spawn(async move {
        let _ = conn.await;
        drop(guard);
    });
    Ok(sender)
}

async fn open(
    host: &Arc<Host>,
    dial: &Dial<'_>,
) -> Result<crate::upstream::UpstreamStream, RequestError> {
    host.cx_total.inc();
    connect(host, dial).await.map_err(|e| {
        host.cx_connect_fail.inc();
        RequestError::ConnectFailure(e)
    })
}

/// Keeps `cx_active` of a host and its cluster while a connection lives.
pub(crate) struct ConnectionGuard {
    host: Arc<Host>,
    stats: ClusterStats,
}

impl ConnectionGuard {
    pub(crate) fn new(host: &Arc<Host>, stats: &ClusterStats) -> Self {
        host.cx_active.inc();
        stats.upstream_cx_active.inc();
        ConnectionGuard {
            host: host.clone(),
            stats: stats.clone(),
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.host.cx_active.dec();
        self.stats.upstream_cx_active.dec();
    }
}

/// An upstream response body. Ends the active request when done, and hands an
/// HTTP/1.1 connection back to the pool once the body has been read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    active: Option<ActiveRequest>,
    sender: Option<(Option<Arc<str>>, Http1Sender)>,
}

impl UpstreamBody {
    fn wrap(
        resp: Response<Incoming>,
        active: ActiveRequest,
        sender: Option<(Option<Arc<str>>, Http1Sender)>,
    ) -> Response<UpstreamBody> {
        let (parts, inner) = resp.into_parts();
        let done = inner.is_end_stream();
        let mut body = UpstreamBody {
            inner,
            active: Some(active),
            sender,
        };
        if done {
            body.finish();
        }
        Response::from_parts(parts, body)
    }

    fn finish(&mut self) {
        if let Some(active) = self.active.take()
            && let Some((sni, sender)) = self.sender.take()
        {
            active.host().pool.release_http1(sni, sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.sender = None;
                this.active = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
