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
/// connection (a mesh has many hosts, most of them idle).
#[derive(Default)]
pub struct HostPool {
    http1: SegQueue<Http1Sender>,
    http2: ArcSwapOption<Http2Sender>,
}

impl HostPool {
    fn release_http1(&self, sender: Http1Sender) {
        if self.http1.len() < MAX_IDLE_HTTP1 {
            self.http1.push(sender);
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

/// Send `req` to `active.host()`, reusing a pooled connection when one is
/// usable. An upgrade request gets a connection of its own that is not pooled.
pub async fn send(
    active: ActiveRequest,
    protocol: Protocol,
    req: Request<RequestBody>,
    connect_timeout: Duration,
    stats: &ClusterStats,
    secrets: &Secrets,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, RequestError> {
    let host = active.host().clone();
    match protocol {
        Protocol::Http1 => {
            let mut req = req;
            if !upgrade {
                while let Some(mut sender) = host.pool.http1.pop() {
                    if sender.is_closed() || sender.ready().await.is_err() {
                        continue;
                    }
                    match sender.try_send_request(req).await {
                        Ok(resp) => return Ok(UpstreamBody::wrap(resp, active, Some(sender))),
                        Err(mut e) => match e.take_message() {
                            // Not sent: the pooled connection had died; try another.
                            Some(r) => req = r,
                            None => return Err(RequestError::UpstreamReset(e.into_error())),
                        },
                    }
                }
            }
            let mut sender = connect_http1(&host, connect_timeout, stats, secrets).await?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(RequestError::UpstreamReset)?;
            let keep = (!upgrade).then_some(sender);
            Ok(UpstreamBody::wrap(resp, active, keep))
        }
        Protocol::Http2 => {
            let current = host.pool.http2.load_full();
            let mut sender = match current {
                Some(s) if !s.is_closed() => Http2Sender::clone(&s),
                _ => {
                    let s = connect_http2(&host, connect_timeout, stats, secrets).await?;
                    host.pool.http2.store(Some(Arc::new(s.clone())));
                    s
                }
            };
            sender.ready().await.map_err(RequestError::UpstreamReset)?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(RequestError::UpstreamReset)?;
            Ok(UpstreamBody::wrap(resp, active, None))
        }
    }
}

async fn connect_http1(
    host: &Arc<Host>,
    timeout: Duration,
    stats: &ClusterStats,
    secrets: &Secrets,
) -> Result<Http1Sender, RequestError> {
    let io = open(host, timeout, stats, secrets).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(RequestError::UpstreamReset)?;
    let guard = ConnectionGuard::new(host, stats);
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        drop(guard);
    });
    Ok(sender)
}

async fn connect_http2(
    host: &Arc<Host>,
    timeout: Duration,
    stats: &ClusterStats,
    secrets: &Secrets,
) -> Result<Http2Sender, RequestError> {
    let io = open(host, timeout, stats, secrets).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(RequestError::UpstreamReset)?;
    let guard = ConnectionGuard::new(host, stats);
    tokio::spawn(async move {
        let _ = conn.await;
        drop(guard);
    });
    Ok(sender)
}

async fn open(
    host: &Arc<Host>,
    timeout: Duration,
    stats: &ClusterStats,
    secrets: &Secrets,
) -> Result<crate::upstream::UpstreamStream, RequestError> {
    host.cx_total.inc();
    connect(host, timeout, stats, secrets).await.map_err(|e| {
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
    sender: Option<Http1Sender>,
}

impl UpstreamBody {
    fn wrap(
        resp: Response<Incoming>,
        active: ActiveRequest,
        sender: Option<Http1Sender>,
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
            && let Some(sender) = self.sender.take()
        {
            active.host().pool.release_http1(sender);
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
