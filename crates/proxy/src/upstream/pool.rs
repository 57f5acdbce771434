//! Per-host upstream HTTP connection pools: idle HTTP/1.1 connections in a
//! lock-free queue (one request at a time each, returned when the response body
//! ends), and shared multiplexed h2c connections (up to max_concurrent_streams
//! each). A request never opens a connection when a usable one is pooled. The
//! cluster's max_connections and max_pending_requests breakers apply here;
//! each connection's task closes it past idle_timeout, max_connection_duration
//! or max_requests_per_connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::request_body::RequestBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::circuit_breakers::ConnectionPoolConfig;
use crate::error::RequestError;
use crate::stats::ClusterStats;
use crate::tls::Secrets;
use crate::upstream::circuit::{CircuitBreakers, Permit, Resource};
use crate::upstream::connect::connect;
use crate::upstream::host::{ActiveRequest, Host};

/// Idle HTTP/1.1 connections kept per host.
const MAX_IDLE_HTTP1: usize = 256;

type Http1Sender = http1::SendRequest<RequestBody>;
type Http2Sender = http2::SendRequest<RequestBody>;

/// One pooled connection's use, shared by its pool entry, the requests on it
/// and the task driving it (which closes it when idle too long or too old).
#[derive(Debug)]
pub(crate) struct CxState {
    born: Instant,
    /// Requests started on it (max_requests_per_connection).
    requests: AtomicU32,
    /// Requests in flight on it (one at most for HTTP/1.1).
    streams: AtomicU32,
    /// When it last became idle, in ms since `born`.
    idle_since_ms: AtomicU64,
    /// Takes no new requests (too many served, or too old).
    retired: AtomicBool,
    /// Its driver re-reads the state (it became idle or was retired).
    wake: Notify,
}

impl CxState {
    fn new() -> Arc<Self> {
        Arc::new(CxState {
            born: Instant::now(),
            requests: AtomicU32::new(0),
            streams: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Take a stream if fewer than `max` run; counts the request and
    /// retires the connection at max_requests_per_connection.
    fn begin(&self, max_streams: u32, pool: &ConnectionPoolConfig, stats: &ClusterStats) -> bool {
        if self.retired()
            || self
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max_streams).then_some(n + 1)
                })
                .is_err()
        {
            return false;
        }
        let served = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        if pool
            .max_requests_per_connection
            .is_some_and(|max| served >= max)
        {
            self.retired.store(true, Ordering::Release);
            stats.upstream_cx_max_requests.inc();
        }
        true
    }

    fn end(&self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.born.elapsed().as_millis() as u64;
            self.idle_since_ms.store(ms, Ordering::Release);
            self.wake.notify_one();
        }
    }
}

/// An HTTP/1.1 connection waiting in the pool.
struct Idle1 {
    sni: Option<Arc<str>>,
    sender: Http1Sender,
    state: Arc<CxState>,
}

/// A shared h2 connection of a host.
struct Shared2 {
    sni: Option<Arc<str>>,
    sender: Http2Sender,
    state: Arc<CxState>,
}

/// Lock-free, and allocation-free until a host first gets an idle
/// connection (a mesh has many hosts, most of them idle). Connections
/// opened with a per-request SNI (`auto_sni`) carry it, and are reused only
/// for requests with the same one. h2 connections are shared up to
/// max_concurrent_streams each; more are opened past that.
#[derive(Default)]
pub struct HostPool {
    http1: SegQueue<Idle1>,
    http2: ArcSwap<Vec<Arc<Shared2>>>,
    /// A connection or stream of this host came free.
    released: Notify,
}

impl HostPool {
    fn release_http1(&self, idle: Idle1, pool: &ConnectionPoolConfig) {
        let reusable = !idle.state.retired()
            && !idle.sender.is_closed()
            && pool
                .max_requests_per_connection
                .is_none_or(|max| idle.state.requests.load(Ordering::Acquire) < max);
        if reusable && self.http1.len() < MAX_IDLE_HTTP1 {
            self.http1.push(idle);
        }
        // Dropped otherwise: hyper closes the connection.
        self.released.notify_one();
    }

    fn forget_http2(&self, state: &Arc<CxState>) {
        self.http2.rcu(|list| {
            list.iter()
                .filter(|c| !Arc::ptr_eq(&c.state, state))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("idle_http1", &self.http1.len())
            .field("http2", &self.http2.load().len())
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
/// `verify_sni` (`auto_san_validation`); the cluster's circuit breakers
/// (max_connections, max_pending_requests) and connection-pool options.
pub struct Dial<'a> {
    pub timeout: Duration,
    pub stats: &'a ClusterStats,
    pub secrets: &'a Secrets,
    pub sni: Option<&'a str>,
    pub verify_sni: bool,
    pub breakers: &'a Arc<CircuitBreakers>,
    pub pool: &'a ConnectionPoolConfig,
}

impl Dial<'_> {
    /// A max_connections slot for a new connection to `host`. Over the
    /// limit (`upstream_cx_overflow`), a host with no connection still gets
    /// one, as in Envoy, so requests queued for it can run.
    fn connection_permit(&self, host: &Host) -> Option<Permit> {
        if let Some(p) = self.breakers.try_acquire(Resource::Connection) {
            return Some(p);
        }
        self.stats.upstream_cx_overflow.inc();
        (host.cx_active.get() == 0).then(|| self.breakers.force_acquire(Resource::Connection))
    }

    /// Become a pending request (max_pending_requests), once per request.
    fn pend(&self, pending: &mut Option<Permit>) -> Result<(), RequestError> {
        if pending.is_none() {
            match self.breakers.try_acquire(Resource::Pending) {
                Some(p) => *pending = Some(p),
                None => {
                    self.stats.upstream_rq_pending_overflow.inc();
                    return Err(RequestError::Overflow);
                }
            }
        }
        Ok(())
    }

    /// Wait until a connection of `host` or of the cluster comes free.
    async fn wait_for_connection(&self, host: &Host) {
        tokio::select! {
            _ = host.pool.released.notified() => {}
            _ = self.breakers.connection_closed.notified() => {}
        }
    }
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
/// usable. An upgrade request gets a connection of its own that is not
/// pooled. At max_connections the request waits (as a pending request) for
/// a pooled connection to come free; over max_pending_requests it fails
/// with [`RequestError::Overflow`].
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
    let mut pending: Option<Permit> = None;
    let pool = dial.pool;
    match protocol {
        Protocol::Http1 => {
            let mut req = req;
            loop {
                while !upgrade && let Some(idle) = host.pool.http1.pop() {
                    let Idle1 {
                        sni,
                        mut sender,
                        state,
                    } = idle;
                    if sni.as_deref() != dial.sni
                        || sender.is_closed()
                        || !state.begin(1, pool, dial.stats)
                    {
                        continue;
                    }
                    if sender.ready().await.is_err() {
                        state.end();
                        continue;
                    }
                    match sender.try_send_request(req).await {
                        Ok(resp) => {
                            let idle = Idle1 { sni, sender, state };
                            return Ok(UpstreamBody::wrap(resp, active, Kept::Http1(idle), pool));
                        }
                        Err(mut e) => {
                            state.end();
                            match e.take_message() {
                                // Not sent: the pooled connection had died; try another.
                                Some(r) => req = r,
                                None => {
                                    return Err(SendError::sent(RequestError::UpstreamReset(
                                        e.into_error(),
                                    )));
                                }
                            }
                        }
                    }
                }
                let Some(permit) = dial.connection_permit(&host) else {
                    if let Err(e) = dial.pend(&mut pending) {
                        return Err(unsent(e, req));
                    }
                    dial.wait_for_connection(&host).await;
                    continue;
                };
                drop(pending.take());
                let (mut sender, state) = match connect_http1(&host, dial, permit, upgrade).await {
                    Ok(c) => c,
                    Err(e) => return Err(unsent(e, req)),
                };
                state.begin(1, pool, dial.stats);
                let resp = match sender.try_send_request(req).await {
                    Ok(r) => r,
                    Err(mut e) => {
                        state.end();
                        let unsent = e.take_message();
                        let error = RequestError::UpstreamReset(e.into_error());
                        return Err(SendError { error, unsent });
                    }
                };
                let kept = if upgrade {
                    Kept::Unpooled(state)
                } else {
                    Kept::Http1(Idle1 {
                        sni: dial.sni.map(Arc::from),
                        sender,
                        state,
                    })
                };
                return Ok(UpstreamBody::wrap(resp, active, kept, pool));
            }
        }
        Protocol::Http2 => loop {
            let max = pool.max_concurrent_streams;
            let shared = host.pool.http2.load().iter().find_map(|c| {
                (c.sni.as_deref() == dial.sni
                    && !c.sender.is_closed()
                    && c.state.begin(max, pool, dial.stats))
                .then(|| c.clone())
            });
            let shared = match shared {
                Some(c) => c,
                None => {
                    let Some(permit) = dial.connection_permit(&host) else {
                        if let Err(e) = dial.pend(&mut pending) {
                            return Err(unsent(e, req));
                        }
                        dial.wait_for_connection(&host).await;
                        continue;
                    };
                    drop(pending.take());
                    let (sender, state) = match connect_http2(&host, dial, permit).await {
                        Ok(c) => c,
                        Err(e) => return Err(unsent(e, req)),
                    };
                    state.begin(max, pool, dial.stats);
                    let c = Arc::new(Shared2 {
                        sni: dial.sni.map(Arc::from),
                        sender,
                        state,
                    });
                    host.pool.http2.rcu(|list| {
                        let mut list = Vec::clone(list);
                        list.retain(|c| !c.sender.is_closed() && !c.state.retired());
                        list.push(c.clone());
                        list
                    });
                    c
                }
            };
            if shared.state.retired() {
                host.pool.forget_http2(&shared.state);
            }
            let state = shared.state.clone();
            let mut sender = Http2Sender::clone(&shared.sender);
            drop(shared);
            if let Err(e) = sender.ready().await {
                state.end();
                return Err(unsent(RequestError::UpstreamReset(e), req));
            }
            let resp = match sender.try_send_request(req).await {
                Ok(r) => r,
                Err(mut e) => {
                    state.end();
                    let unsent = e.take_message();
                    let error = RequestError::UpstreamReset(e.into_error());
                    return Err(SendError { error, unsent });
                }
            };
            return Ok(UpstreamBody::wrap(
                resp,
                active,
                Kept::Unpooled(state),
                pool,
            ));
        },
    }
}

async fn connect_http1(
    host: &Arc<Host>,
    dial: &Dial<'_>,
    permit: Permit,
    upgrade: bool,
) -> Result<(Http1Sender, Arc<CxState>), RequestError> {
    let io = open(host, dial).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(RequestError::UpstreamReset)?;
    let guard = ConnectionGuard::new(host, dial.stats, Some(permit));
    let state = CxState::new();
    // An upgraded connection belongs to its tunnel, not to the pool's limits.
    let limits = (!upgrade).then(|| dial.pool.clone());
    tokio::spawn(drive(
        conn.with_upgrades(),
        state.clone(),
        limits,
        guard,
        None,
    ));
    Ok((sender, state))
}

async fn connect_http2(
    host: &Arc<Host>,
    dial: &Dial<'_>,
    permit: Permit,
) -> Result<(Http2Sender, Arc<CxState>), RequestError> {
    let io = open(host, dial).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(RequestError::UpstreamReset)?;
    let guard = ConnectionGuard::new(host, dial.stats, Some(permit));
    let state = CxState::new();
    tokio::spawn(drive(
        conn,
        state.clone(),
        Some(dial.pool.clone()),
        guard,
        Some(host.clone()),
    ));
    Ok((sender, state))
}

/// Run a connection until it ends, or until the pool's limits close it:
/// idle past idle_timeout, or past max_connection_duration (at once when
/// idle, else retired and closed when its last request ends). `h2_host`:
/// the host whose shared h2 list to leave when retired.
async fn drive<F: std::future::Future>(
    conn: F,
    state: Arc<CxState>,
    limits: Option<ConnectionPoolConfig>,
    guard: ConnectionGuard,
    h2_host: Option<Arc<Host>>,
) {
    let mut conn = Box::pin(conn);
    let Some(limits) = limits else {
        let _ = conn.await;
        drop(guard);
        return;
    };
    let stats = guard.stats.clone();
    loop {
        let idle = state.streams.load(Ordering::Acquire) == 0;
        let since = state.born + Duration::from_millis(state.idle_since_ms.load(Ordering::Acquire));
        let idle_deadline = limits.idle_timeout.filter(|_| idle).map(|t| since + t);
        let age_deadline = limits
            .max_connection_duration
            .filter(|_| !state.retired())
            .map(|d| state.born + d);
        let deadline = match (idle_deadline, age_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = &mut conn => break,
            _ = state.wake.notified() => {}
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let now = Instant::now();
                if age_deadline.is_some_and(|d| now >= d) {
                    state.retired.store(true, Ordering::Release);
                    stats.upstream_cx_max_duration_reached.inc();
                    if let Some(h) = &h2_host {
                        h.pool.forget_http2(&state);
                    }
                }
                if idle_deadline.is_some_and(|d| now >= d) {
                    stats.upstream_cx_idle_timeout.inc();
                    break;
                }
            }
        }
        if state.retired() && state.streams.load(Ordering::Acquire) == 0 {
            break;
        }
    }
    if let Some(h) = &h2_host {
        h.pool.forget_http2(&state);
    }
    // Dropping the connection closes it.
    drop(conn);
    drop(guard);
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

/// Keeps `cx_active` of a host and its cluster while a connection lives,
/// and its max_connections slot.
pub(crate) struct ConnectionGuard {
    host: Arc<Host>,
    stats: ClusterStats,
    _permit: Option<Permit>,
}

impl ConnectionGuard {
    pub(crate) fn new(host: &Arc<Host>, stats: &ClusterStats, permit: Option<Permit>) -> Self {
        host.cx_active.inc();
        stats.upstream_cx_active.inc();
        ConnectionGuard {
            host: host.clone(),
            stats: stats.clone(),
            _permit: permit,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.host.cx_active.dec();
        self.stats.upstream_cx_active.dec();
        self.host.pool.released.notify_one();
    }
}

/// What a response holds of its connection until its body ends.
enum Kept {
    /// An HTTP/1.1 connection to hand back to the pool.
    Http1(Idle1),
    /// A stream of a shared h2 connection, or an upgraded connection.
    Unpooled(Arc<CxState>),
}

/// An upstream response body. Ends the active request when done, and hands an
/// HTTP/1.1 connection back to the pool once the body has been read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    active: Option<ActiveRequest>,
    kept: Option<Kept>,
    pool: ConnectionPoolConfig,
}

impl UpstreamBody {
    fn wrap(
        resp: Response<Incoming>,
        active: ActiveRequest,
        kept: Kept,
        pool: &ConnectionPoolConfig,
    ) -> Response<UpstreamBody> {
        let (parts, inner) = resp.into_parts();
        let done = inner.is_end_stream();
        let mut body = UpstreamBody {
            inner,
            active: Some(active),
            kept: Some(kept),
            pool: pool.clone(),
        };
        if done {
            body.finish();
        }
        Response::from_parts(parts, body)
    }

    fn finish(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        match self.kept.take() {
            Some(Kept::Http1(idle)) => {
                idle.state.end();
                active.host().pool.release_http1(idle, &self.pool);
            }
            Some(Kept::Unpooled(state)) => {
                state.end();
                active.host().pool.released.notify_one();
            }
            None => {}
        }
    }

    /// The body failed or was dropped early: the connection is not reused.
    fn abandon(&mut self) {
        match self.kept.take() {
            Some(Kept::Http1(idle)) => {
                idle.state.retired.store(true, Ordering::Release);
                idle.state.end();
            }
            Some(Kept::Unpooled(state)) => state.end(),
            None => {}
        }
        self.active = None;
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.abandon();
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
            Poll::Ready(Some(Err(_))) => this.abandon(),
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
