//! `envoy.filters.http.router`: pick virtual host, route and cluster, then a
//! host; forward the request over a pooled upstream connection (HTTP/1.1 or
//! h2c per cluster), pass upgrades (WebSocket) through, and turn failures
//! into Envoy's local replies (NR 404, UH/UF 503, UT 504) in one place.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;

use super::body::{EndTimer, ResponseBody};
use super::connection_manager::HttpContext;
use super::cors;
use super::fault::{self, FaultConfig};
use super::hash_policy;
use super::headers::{
    self, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_ORIGINAL_PATH,
    X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS, X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::path_normalization;
use super::rbac as auth;
use super::route_match::RequestView;
use crate::config::cluster::UpstreamProtocol;
use crate::config::cors::CorsConfig;
use crate::config::header_ops::LevelHeaders;
use crate::config::listener::HttpFilter;
use crate::config::listener::RouteSource;
use crate::config::retry::RetryPolicy;
use crate::config::route::{Action, DirectResponse, PathMatch, PathRedirect, Redirect};
use crate::error::{RequestError, ResponseFlag};
use crate::request_body::{Recording, Replay, ReplayHandle, RequestBody};
use crate::stream_info::StreamInfo;
use crate::upstream::cluster::UpstreamCluster;
use crate::upstream::host::Host;
use crate::upstream::lb::random;
use crate::upstream::pool::{self, Protocol};

/// Handle one downstream request; never fails (errors become local replies).
pub async fn handle(req: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let stats = &ctx.stats;
    let started = Instant::now();
    stats.downstream_rq_total.inc();
    let observers = ctx.store.stream_observers();
    let mut mutations = Mutations {
        info: observers.as_ref().map(|_| {
            let mut info = StreamInfo::new(ctx.downstream.clone());
            info.bytes_received = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            info
        }),
        ..Mutations::default()
    };
    let mut resp = match forward(req, ctx, &mut mutations).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(info) = &mut mutations.info {
                info.flags.set(e.flag());
            }
            tracing::debug!(flag = %e.flag(), error = %e, "local reply");
            match &e {
                RequestError::NoRoute => stats.no_route.inc(),
                RequestError::NoCluster(_) => stats.no_cluster.inc(),
                _ => {}
            }
            local_reply(&e)
        }
    };
    // The route's response mutations apply to what it answered, upstream or
    // local (as Envoy's finalizeResponseHeaders), before the server header.
    mutations.response(resp.headers_mut());
    if let Some((origin, policy)) = &mutations.cors {
        cors::encode(policy, origin, resp.headers_mut());
    }
    if let Some(n) = mutations.attempts {
        resp.headers_mut()
            .insert(&X_ENVOY_ATTEMPT_COUNT, headers::count_value(n.into()));
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("envoy"));
    stats.record_status(resp.status().as_u16());
    let resp = resp.map(|body| {
        body.timed(EndTimer {
            start: started,
            histogram: stats.downstream_rq_time.clone(),
            completed: Some(stats.downstream_rq_completed.clone()),
        })
    });
    match (mutations.info, observers) {
        (Some(mut info), Some(observers)) => {
            info.response_code = resp.status().as_u16();
            info.response_start = Some(Instant::now());
            resp.map(|body| body.tracked(info, observers))
        }
        _ => resp,
    }
}

/// The local reply for a failure, as Envoy sends it.
pub fn local_reply(err: &RequestError) -> Response<ResponseBody> {
    let body = err.body();
    let mut resp = Response::new(ResponseBody::local(body.clone()));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    if !body.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let RequestError::Overflow = err {
        // Envoy marks requests dropped by a circuit breaker.
        h.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    resp
}

/// The header mutations of the chosen route and weighted cluster: the
/// cluster's first, then the route's (most specific first, as Envoy does).
/// What the request picked up on its way: the header mutations of the chosen
/// route and weighted cluster, and its record when streams are observed.
#[derive(Default)]
pub(super) struct Mutations {
    pub(super) cluster: Option<Arc<LevelHeaders>>,
    pub(super) route: Option<Arc<LevelHeaders>>,
    pub(super) info: Option<StreamInfo>,
    /// Upstream attempts made, when the virtual host reports them
    /// (`include_attempt_count_in_response`), on answers and local replies.
    attempts: Option<u32>,
    /// An allowed CORS request's origin and policy, for the response.
    pub(super) cors: Option<(HeaderValue, Arc<CorsConfig>)>,
    /// Dynamic metadata the filters wrote (jwt_authn payloads, rbac's
    /// shadow result), which later filters' matchers read.
    pub(super) metadata: crate::stream_info::DynamicMetadata,
    /// Request header edits of verified JWTs (applied before forwarding).
    pub(super) jwt_edits: Vec<super::jwt_authn::HeaderEdit>,
    /// ext_authz filters whose gate opened, to call once the chain's
    /// other filters have run.
    pub(super) ext_authz: Vec<Arc<super::ext_authz::ExtAuthzFilter>>,
}

impl Mutations {
    fn request(&self, headers: &mut http::HeaderMap) {
        for level in [&self.cluster, &self.route].into_iter().flatten() {
            level.request.apply(headers);
        }
    }

    fn response(&self, headers: &mut http::HeaderMap) {
        for level in [&self.cluster, &self.route].into_iter().flatten() {
            level.response.apply(headers);
        }
    }
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &HttpContext,
    mutations: &mut Mutations,
) -> Result<Response<ResponseBody>, RequestError> {
    let downstream_h2 = req.version() == Version::HTTP_2;
    if req.version() == Version::HTTP_10 {
        return Err(RequestError::Http10);
    }
    if let Some(reply) = normalize_uri(&mut req, ctx) {
        return Ok(reply);
    }
    // Envoy's internal-request rule: a client outside may not steer
    // retries and timeouts with x-envoy-* headers.
    let internal = headers::is_internal(req.headers(), &ctx.hcm, ctx.downstream.peer.ip());
    let steered = headers::internal_headers(
        req.headers_mut(),
        internal,
        ctx.hcm.use_remote_address && !internal,
    );
    let authority = headers::authority(&req);

    // Route, cluster and host, from one consistent snapshot.
    let mut fault: Option<Arc<FaultConfig>> = None;
    let mut rewritten = None;
    let hash_policies;
    let (cluster, timeout, route) = {
        let snapshot = ctx.store.load();
        let rds;
        let routes = match &ctx.hcm.routes {
            RouteSource::Inline(rc) => rc,
            RouteSource::Rds(name) => {
                rds = snapshot.routes.get(name).ok_or(RequestError::NoRoute)?;
                rds
            }
        };
        let view = RequestView {
            method: req.method(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            authority,
            headers: req.headers(),
        };
        let matched = routes
            .virtual_host(authority)
            .and_then(|vh| vh.route(&view).map(|r| (vh, r)));
        let Some((vh, route)) = matched else {
            // Without a route the filters still run (on their own config)
            // before the router's 404.
            if let Some(reply) = auth::run(ctx, None, &view, mutations) {
                return Ok(reply);
            }
            return Err(RequestError::NoRoute);
        };
        mutations.route = route.headers.clone();
        if let Some(info) = &mut mutations.info {
            info.route_name = Some(route.name.as_str().into());
        }
        // The fault filters of the chain, with the route's config for each.
        for filter in &ctx.hcm.http_filters {
            match filter {
                HttpFilter::Fault { name, config } => {
                    let config = route.fault(name).unwrap_or(config);
                    if !config.is_empty() {
                        fault = Some(config.clone());
                    }
                }
                HttpFilter::ExtAuthz { filter, .. } => auth::gate_ext_authz(filter, ctx, mutations),
                HttpFilter::Rbac { .. } | HttpFilter::JwtAuthn { .. } => {
                    if let Some(reply) = auth::one(filter, ctx, Some(route), &view, mutations) {
                        return Ok(reply);
                    }
                }
                HttpFilter::Cors { name } => {
                    if let Some(policy) = route.cors(name)
                        && let Some(reply) = cors::decode(policy, &req, mutations, &ctx.stats)
                    {
                        // A filter's own reply: the router's response
                        // mutations do not apply.
                        mutations.route = None;
                        return Ok(reply);
                    }
                }
            }
        }
        let action = match &route.action {
            Action::Forward(a) => a,
            Action::Redirect(r) => {
                let scheme = req
                    .headers()
                    .get(&X_FORWARDED_PROTO)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("http");
                return Ok(redirect(
                    r,
                    &route.matcher.path,
                    scheme,
                    authority,
                    view.path,
                ));
            }
            Action::DirectResponse(d) => return Ok(direct_response(d)),
        };
        hash_policies = action.hash_policy.clone();
        let (name, cluster_headers) = action.pick(random());
        mutations.cluster = cluster_headers.cloned();
        if let Some(info) = &mut mutations.info {
            info.cluster = Some(name.into());
        }
        let cluster = snapshot
            .clusters
            .get(name)
            .cloned()
            .ok_or_else(|| RequestError::NoCluster(name.to_string()));
        // The mirrors this request goes to (their share rolled now).
        let mirrors: Vec<Arc<UpstreamCluster>> = action
            .mirrors
            .iter()
            .filter(|m| m.share.hit(random()))
            .filter_map(|m| snapshot.clusters.get(&m.cluster).cloned())
            .collect();
        let retry = RetrySetup {
            mirrors,
            retry: action.retry.clone(),
            attempt_count_upstream: vh.attempt_count_upstream,
            attempt_count_downstream: vh.attempt_count_downstream,
        };
        let timeout = match action.grpc_timeout {
            Some(cap) if headers::is_grpc(req.headers()) => {
                let asked = req
                    .headers()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::config::route::grpc_timeout);
                match (asked, cap) {
                    (Some(a), Some(c)) => Some(a.min(c)),
                    (a, c) => a.or(c),
                }
            }
            _ => action.timeout,
        };
        if let Some(rw) = &action.rewrite {
            rewritten = Some((
                rw.path
                    .as_ref()
                    .map(|p| p.apply(&route.matcher.path, view.path)),
                rw.host.clone(),
            ));
        }
        (cluster, timeout, retry)
    };
    super::jwt_authn::apply_edits(std::mem::take(&mut mutations.jwt_edits), &mut req);
    if let Some(reply) = auth::ext_authz(ctx, &mut req, mutations).await {
        return Ok(reply);
    }
    if let Some((path, host)) = rewritten {
        rewrite(&mut req, path, host);
    }
    // An internal request's own timeouts (consumed; 0 turns one off).
    let (mut timeout, mut header_per_try) = (timeout, None);
    if steered {
        if let Some(t) = headers::take_millis(req.headers_mut(), &X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
            timeout = Some(t).filter(|t| !t.is_zero());
        }
        header_per_try =
            headers::take_millis(req.headers_mut(), &X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS);
    }
    let route = RetrySetup {
        retry: RetryPolicy::with_request_headers(route.retry.as_ref(), req.headers_mut(), steered),
        ..route
    };
    // The fault filter runs before the router: a delay, then maybe an abort.
    if let Some(fault) = fault
        && let Some(reply) = inject_fault(&fault, &req, ctx, &mut mutations.info).await
    {
        // A filter's local reply never reaches the router, which is what
        // applies the route's response mutations in Envoy.
        mutations.cluster = None;
        mutations.route = None;
        return Ok(reply);
    }
    let cluster = cluster?;
    let od = ctx.downstream.original_dst;
    let hashed = hash_policy::RequestHash::compute(
        hash_policies.as_deref(),
        cluster.config.lb_policy,
        &hash_policy::HashInput {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            downstream: &ctx.downstream,
        },
    );
    let Some(mut host) = cluster.pick_hashed(od, hashed.hash) else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return Err(RequestError::NoHealthyUpstream);
    };

    let upgrade = !downstream_h2 && headers::wants_upgrade(req.headers());
    if upgrade && !(ctx.hcm.websocket && headers::is_upgrade(req.headers(), "websocket")) {
        return Err(RequestError::UpgradeRefused);
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let protocol = match cluster.config.protocol {
        _ if upgrade => Protocol::Http1,
        UpstreamProtocol::Http1 => Protocol::Http1,
        UpstreamProtocol::Http2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream if downstream_h2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream => Protocol::Http1,
    };
    // An upgraded stream cannot be sent twice.
    let retry = route.retry.filter(|_| !upgrade);
    let per_try = match header_per_try {
        Some(t) => Some(t).filter(|t| !t.is_zero()),
        None => retry.as_ref().and_then(|p| p.per_try_timeout),
    };
    let expected = match (timeout, per_try) {
        (Some(t), Some(p)) => Some(t.min(p)),
        (t, p) => t.or(p),
    };
    prepare_request(&mut req, protocol, ctx, upgrade, expected);
    mutations.request(req.headers_mut());

    let start = Instant::now();
    // auto_sni: the TLS SNI is the request's host (without a port).
    let sni = cluster.config.auto_sni.then(|| {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|h| h.parse::<Authority>().ok())
                    .map(|a| a.host().to_string())
            });
        authority.unwrap_or_default()
    });
    let dial = pool::Dial {
        timeout: cluster.config.connect_timeout,
        stats: &cluster.stats,
        secrets: &ctx.store.secrets,
        sni: sni.as_deref().filter(|s| !s.is_empty()),
        verify_sni: cluster.config.auto_san_validation,
        breakers: &cluster.breakers,
        pool: &cluster.config.pool,
    };
    let deadline = timeout.map(|t| start + t);
    let mut mirrors = route.mirrors;
    let mut attempts = Attempts::new(req, retry.is_some() || !mirrors.is_empty());
    let mut attempt: u32 = 1;
    let mut tried: Vec<Arc<Host>> = Vec::new();
    // Held while a retry is in flight.
    let mut retry_permit = None;
    let mut resp = loop {
        if let Some(info) = &mut mutations.info {
            info.upstream_host = Some(host.addr.to_string().into());
        }
        let last = retry.as_ref().is_none_or(|p| attempt > p.num_retries) && mirrors.is_empty();
        if route.attempt_count_downstream {
            mutations.attempts = Some(attempt);
        }
        let count = route
            .attempt_count_upstream
            .then(|| headers::count_value(attempt.into()));
        let request = attempts.next(last, count);
        let active = cluster.start_request(host.clone())?;
        cluster.stats.upstream_rq_total.inc();
        let send = pool::send(active, protocol, request, &dial, upgrade);
        // This attempt's time: the per-try timeout within what is left of
        // the route's.
        let now = Instant::now();
        let (limit, per_try_bound) = match (deadline, per_try) {
            (Some(d), Some(p)) if now + p < d => (Some(p), true),
            (Some(d), _) => (Some(d.saturating_duration_since(now)), false),
            (None, Some(p)) => (Some(p), true),
            (None, None) => (None, false),
        };
        let result = match limit {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) if per_try_bound => {
                    cluster.stats.upstream_rq_per_try_timeout.inc();
                    Err(pool::SendError {
                        error: RequestError::Timeout,
                        unsent: None,
                    })
                }
                Err(_) => {
                    cluster.stats.upstream_rq_timeout.inc();
                    cluster.stats.record_status(504);
                    cluster.report_result::<()>(&host, Err(&RequestError::Timeout));
                    return Err(RequestError::Timeout);
                }
            },
            None => send.await,
        };
        cluster.report_result(&host, result.as_ref().map_err(|e| &e.error));
        // Shadows go out once the request has been sent (its body recorded).
        for m in std::mem::take(&mut mirrors) {
            match attempts.copy() {
                Some(copy) => shadow(m, copy, ctx, downstream_h2, timeout),
                None => tracing::debug!("mirror skipped: the body could not be kept"),
            }
        }
        let retriable = match (&result, &retry) {
            (_, None) => false,
            (Ok(r), Some(p)) => p.retries_response(r.status().as_u16(), r.headers()),
            (Err(e), Some(p)) => e
                .error
                .failure()
                .is_some_and(|f| p.retries_failure(f, e.unsent.is_none())),
        };
        let status = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.error.status().as_u16(),
        };
        cluster.stats.record_status(status);
        // The host's rq_error in /clusters: 5xx answers and failures.
        if status >= 500 {
            host.rq_error.inc();
        }
        let policy = match (retriable, &retry) {
            (true, Some(p)) => p,
            _ => {
                if attempt > 1 && result.is_ok() {
                    cluster.stats.upstream_rq_retry_success.inc();
                }
                break result.map_err(|e| e.error)?;
            }
        };
        if attempt > policy.num_retries {
            cluster.stats.upstream_rq_retry_limit_exceeded.inc();
            if let Some(info) = &mut mutations.info {
                info.flags.set(ResponseFlag::UpstreamRetryLimitExceeded);
            }
            break result.map_err(|e| e.error)?;
        }
        // A retry needs the request again: back from a send that never
        // left, or replayed from what was recorded. A body too big to
        // record is not retried (nor is it in Envoy).
        let unsent = matches!(&result, Err(e) if e.unsent.is_some());
        if !unsent && !attempts.replayable() {
            break result.map_err(|e| e.error)?;
        }
        // max_retries (or the retry budget) bounds retries in flight.
        let Some(permit) = cluster.try_retry() else {
            break result.map_err(|e| e.error)?;
        };
        retry_permit = Some(permit);
        attempts.rewind(result.err().and_then(|e| e.unsent));
        cluster.stats.upstream_rq_retry.inc();
        cluster.stats.upstream_rq_retry_backoff_exponential.inc();
        let wait = policy.back_off(attempt, random());
        match deadline {
            Some(d) if Instant::now() + wait >= d => {
                tokio::time::sleep_until(d).await;
                cluster.stats.upstream_rq_timeout.inc();
                cluster.stats.record_status(504);
                return Err(RequestError::Timeout);
            }
            _ => tokio::time::sleep(wait).await,
        }
        attempt += 1;
        tried.push(host);
        host = match pick_untried(&cluster, od, hashed.hash, &tried, policy) {
            Some(h) => h,
            None => {
                cluster.stats.upstream_cx_none_healthy.inc();
                return Err(RequestError::NoHealthyUpstream);
            }
        };
    };
    drop(retry_permit);
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = (down.await, up.await) else {
                return;
            };
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
    let h = resp.headers_mut();
    headers::strip_hop_by_hop(h, switching && upgrade);
    if switching && upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let elapsed = start.elapsed().as_millis() as u64;
    h.insert(
        &X_ENVOY_UPSTREAM_SERVICE_TIME,
        headers::count_value(elapsed),
    );
    if let Some(cookie) = hashed.set_cookie {
        h.append(header::SET_COOKIE, cookie);
    }
    *resp.version_mut() = Version::default();
    let timer = EndTimer {
        start,
        histogram: cluster.stats.upstream_rq_time.clone(),
        completed: None,
    };
    let body = |body| {
        let body = ResponseBody::upstream(body, timer);
        match deadline {
            Some(at) if !upgrade => {
                body.with_deadline(at, cluster.stats.upstream_rq_timeout.clone())
            }
            _ => body,
        }
    };
    Ok(resp.map(body))
}

/// What the router needs from the route and virtual host to retry.
struct RetrySetup {
    /// Shadow clusters still to be sent a copy.
    mirrors: Vec<Arc<UpstreamCluster>>,
    retry: Option<Arc<RetryPolicy>>,
    attempt_count_upstream: bool,
    attempt_count_downstream: bool,
}

/// Envoy's buffer limit for a request that may be sent again
/// (`per_connection_buffer_limit_bytes`' default).
const RETRY_BUFFER_LIMIT: usize = 1024 * 1024;

/// The request for each attempt: the head kept to be copied while another
/// attempt may follow, the body streamed the first time (and recorded when
/// a retry may need it) and replayed after.
struct Attempts {
    head: Option<http::request::Parts>,
    body: AttemptBody,
    /// A request handed back by a send that never left.
    unsent: Option<Request<RequestBody>>,
}

enum AttemptBody {
    /// Not sent yet.
    Fresh(Incoming),
    /// No body: every attempt sends none.
    Empty,
    /// Sent once while recording; replays from here.
    Recorded(ReplayHandle),
    Gone,
}

impl Attempts {
    fn new(req: Request<Incoming>, may_retry: bool) -> Attempts {
        let (head, body) = req.into_parts();
        let body = if may_retry && body.is_end_stream() {
            AttemptBody::Empty
        } else {
            AttemptBody::Fresh(body)
        };
        Attempts {
            head: Some(head),
            body,
            unsent: None,
        }
    }

    /// The next attempt's request with its `x-envoy-attempt-count`; `last`
    /// when no retry can follow it (the head is then moved rather than
    /// copied). The count goes into the kept head before it is copied, so
    /// the copy never grows.
    fn next(&mut self, last: bool, count: Option<HeaderValue>) -> Request<RequestBody> {
        if let Some(mut r) = self.unsent.take() {
            if let Some(v) = count {
                r.headers_mut().insert(&X_ENVOY_ATTEMPT_COUNT, v);
            }
            return r;
        }
        if let (Some(h), Some(v)) = (&mut self.head, count) {
            h.headers.insert(&X_ENVOY_ATTEMPT_COUNT, v);
        }
        let head = match (last, &self.head) {
            (false, Some(h)) => copy_head(h),
            _ => self
                .head
                .take()
                .unwrap_or_else(|| copy_head(&Request::new(()).into_parts().0)),
        };
        let body = match std::mem::replace(&mut self.body, AttemptBody::Gone) {
            AttemptBody::Fresh(b) if last => RequestBody::Streaming(b),
            AttemptBody::Fresh(b) => {
                let (rec, handle) = Recording::new(b, RETRY_BUFFER_LIMIT);
                self.body = AttemptBody::Recorded(handle);
                RequestBody::Recording(Box::new(rec))
            }
            AttemptBody::Empty => {
                self.body = AttemptBody::Empty;
                RequestBody::Replay(Replay::empty())
            }
            AttemptBody::Recorded(h) => {
                let replay = h.replay().unwrap_or_else(Replay::empty);
                self.body = AttemptBody::Recorded(h);
                RequestBody::Replay(replay)
            }
            AttemptBody::Gone => RequestBody::Replay(Replay::empty()),
        };
        Request::from_parts(head, body)
    }

    /// A copy of the request for a shadow (None: its body was not kept).
    fn copy(&self) -> Option<Request<RequestBody>> {
        let mut head = copy_head(self.head.as_ref()?);
        head.headers.remove(&X_ENVOY_ATTEMPT_COUNT);
        let body = match &self.body {
            AttemptBody::Empty => Replay::empty(),
            AttemptBody::Recorded(h) => h.replay()?,
            AttemptBody::Fresh(_) | AttemptBody::Gone => return None,
        };
        Some(Request::from_parts(head, RequestBody::Replay(body)))
    }

    /// Whether the body can be sent again.
    fn replayable(&self) -> bool {
        match &self.body {
            AttemptBody::Empty => true,
            AttemptBody::Recorded(h) => h.replay().is_some(),
            AttemptBody::Fresh(_) | AttemptBody::Gone => false,
        }
    }

    /// Take back a request that never left, for the next attempt.
    fn rewind(&mut self, unsent: Option<Request<RequestBody>>) {
        self.unsent = unsent;
    }
}

/// A copy of a request head (method, URI, version, headers): refcounted
/// bytes, two allocations for the header map.
fn copy_head(h: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = h.method.clone();
    *r.uri_mut() = h.uri.clone();
    *r.version_mut() = h.version;
    *r.headers_mut() = h.headers.clone();
    r.into_parts().0
}

/// Send a shadow copy to a mirror cluster, fire and forget: its host gets
/// Envoy's `-shadow` suffix, its answer is read and dropped, and it counts
/// in the mirror cluster's stats (and outlier detection) like any request.
fn shadow(
    cluster: Arc<UpstreamCluster>,
    mut req: Request<RequestBody>,
    ctx: &HttpContext,
    downstream_h2: bool,
    timeout: Option<Duration>,
) {
    let protocol = match cluster.config.protocol {
        UpstreamProtocol::Http1 => Protocol::Http1,
        UpstreamProtocol::Http2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream if downstream_h2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream => Protocol::Http1,
    };
    shadow_authority(&mut req, protocol);
    let secrets = ctx.store.secrets.clone();
    let od = ctx.downstream.original_dst;
    tokio::spawn(async move {
        let Some(host) = cluster.pick(od) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return;
        };
        let Ok(active) = cluster.start_request(host.clone()) else {
            return;
        };
        cluster.stats.upstream_rq_total.inc();
        let dial = pool::Dial {
            timeout: cluster.config.connect_timeout,
            stats: &cluster.stats,
            secrets: &secrets,
            sni: None,
            verify_sni: false,
            breakers: &cluster.breakers,
            pool: &cluster.config.pool,
        };
        let send = pool::send(active, protocol, req, &dial, false);
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r.map_err(|e| e.error),
                Err(_) => {
                    cluster.stats.upstream_rq_timeout.inc();
                    Err(RequestError::Timeout)
                }
            },
            None => send.await.map_err(|e| e.error),
        };
        cluster.report_result(&host, result.as_ref());
        match result {
            Ok(resp) => {
                cluster.stats.record_status(resp.status().as_u16());
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
            Err(e) => cluster.stats.record_status(e.status().as_u16()),
        }
    });
}

/// The shadow's authority: `host-shadow[:port]`, carried as the protocol
/// wants it (Host and origin-form for HTTP/1.1, `:authority` for h2).
fn shadow_authority(req: &mut Request<RequestBody>, protocol: Protocol) {
    let authority = headers::authority(req).to_string();
    let shadowed = match split_port(&authority) {
        (h, Some(p)) => format!("{h}-shadow:{p}"),
        (h, None) => format!("{h}-shadow"),
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    match protocol {
        Protocol::Http1 => {
            parts.scheme = None;
            parts.authority = None;
            if let Ok(v) = HeaderValue::from_str(&shadowed) {
                req.headers_mut().insert(header::HOST, v);
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            req.headers_mut().remove(header::HOST);
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Authority::try_from(shadowed.as_str()).ok();
            *req.version_mut() = Version::HTTP_2;
        }
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A host for a retry (with `previous_priorities`, from the priorities not
/// tried yet): with `previous_hosts`, one not tried yet if the
/// load balancer offers one within the re-pick budget (a re-pick of a
/// hashed request uses another hash).
fn pick_untried(
    cluster: &UpstreamCluster,
    od: Option<std::net::SocketAddr>,
    hash: Option<u64>,
    tried: &[Arc<Host>],
    policy: &RetryPolicy,
) -> Option<Arc<Host>> {
    let pick = |hash: Option<u64>| match policy.previous_priorities {
        Some(f) => cluster.pick_retry(od, hash, tried, f),
        None => cluster.pick_hashed(od, hash),
    };
    let mut host = pick(hash)?;
    if !policy.avoid_previous_hosts {
        return Some(host);
    }
    for n in 0..policy.host_selection_max_attempts {
        if !tried.iter().any(|t| Arc::ptr_eq(t, &host)) {
            break;
        }
        host = pick(hash.map(|h| hash_policy::rehash(h, n.into())))?;
    }
    Some(host)
}

/// Run a fault config on a request: the delay (DI) on tokio's clock, then
/// the abort (FI) as a local reply. None = carry on to the router.
async fn inject_fault(
    fault: &FaultConfig,
    req: &Request<Incoming>,
    ctx: &HttpContext,
    info: &mut Option<StreamInfo>,
) -> Option<Response<ResponseBody>> {
    let stats = &ctx.stats;
    let delay = fault.delay_for(random());
    let abort_roll = random();
    let aborting = fault.abort_for(abort_roll).is_some();
    if delay.is_some() || aborting {
        stats.fault_active_faults.inc();
    }
    if let Some(d) = delay {
        stats.fault_delays_injected.inc();
        if let Some(info) = info.as_mut() {
            info.flags.set(ResponseFlag::DelayInjected);
        }
        tracing::debug!(flag = "DI", delay = ?d, "fault: delaying request");
        tokio::time::sleep(d).await;
    }
    let reply = fault.abort_for(abort_roll).map(|status| {
        stats.fault_aborts_injected.inc();
        if let Some(info) = info.as_mut() {
            info.flags.set(ResponseFlag::FaultInjected);
        }
        tracing::debug!(flag = "FI", ?status, "fault: aborting request");
        fault::abort_response(status, req.headers())
    });
    if delay.is_some() || aborting {
        stats.fault_active_faults.dec();
    }
    reply
}

/// A redirect's response: the Location built from the request's scheme,
/// authority and path with the configured parts replaced (Envoy drops the
/// port when it is the new scheme's default), and an empty body.
fn redirect(
    r: &Redirect,
    matched: &PathMatch,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
) -> Response<ResponseBody> {
    let original_scheme = scheme;
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let (req_host, req_port) = split_port(authority);
    let (host, mut port) = match r.host.as_deref().map(split_port) {
        Some((h, Some(p))) => (h, Some(p)),
        Some((h, None)) => (h, req_port),
        None => (req_host, req_port),
    };
    if let Some(p) = r.port {
        port = Some(p);
    }
    if port == Some(default_port(scheme))
        || (r.port.is_none() && port == Some(default_port(original_scheme)))
    {
        port = None;
    }
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let mut target = match &r.path {
        Some(PathRedirect::Path(p)) => p.clone(),
        Some(PathRedirect::Prefix(new)) => match matched {
            PathMatch::Prefix(old) if path.len() >= old.len() => {
                format!("{new}{}", &path[old.len()..])
            }
            _ => path.to_string(),
        },
        None => path.to_string(),
    };
    if !r.strip_query
        && !target.contains('?')
        && let Some(q) = query
    {
        target.push('?');
        target.push_str(q);
    }
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{target}"),
        None => format!("{scheme}://{host}{target}"),
    };
    let mut resp = Response::new(ResponseBody::local(String::new()));
    *resp.status_mut() =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// `host[:port]` (an IPv6 literal in brackets keeps its colons).
fn split_port(authority: &str) -> (&str, Option<u16>) {
    let split = if authority.starts_with('[') {
        authority
            .rfind("]:")
            .map(|i| (&authority[..=i], &authority[i + 2..]))
    } else if authority.matches(':').count() == 1 {
        authority.split_once(':')
    } else {
        None
    };
    match split.map(|(h, p)| (h, p.parse::<u16>())) {
        Some((h, Ok(p))) => (h, Some(p)),
        _ => (authority, None),
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

/// A direct response: the status and body as configured.
fn direct_response(d: &DirectResponse) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(d.body.clone()));
    *resp.status_mut() = http::StatusCode::from_u16(d.status).unwrap_or(http::StatusCode::OK);
    let h = resp.headers_mut();
    if !d.body.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.body.len()));
    resp
}

/// Headers and URI for the upstream: hop-by-hop removed, x-request-id,
/// x-forwarded-proto and the expected timeout set, authority carried as Host
/// (HTTP/1.1) or `:authority` (h2). Copies only refcounted bytes.
fn prepare_request(
    req: &mut Request<Incoming>,
    protocol: Protocol,
    ctx: &HttpContext,
    upgrade: bool,
    timeout: Option<Duration>,
) {
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h, upgrade);
    if upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if !h.contains_key(&X_REQUEST_ID) {
        h.insert(&X_REQUEST_ID, headers::request_id());
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        let scheme = if ctx.downstream.tls.is_some() {
            "https"
        } else {
            "http"
        };
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    headers::forward_client_cert(h, &ctx.hcm, ctx.downstream.tls.as_deref());
    if let Some(t) = timeout {
        h.insert(
            &X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
            HeaderValue::from(t.as_millis() as u64),
        );
    }
    if ctx.hcm.use_remote_address {
        let peer = ctx.downstream.peer.ip().to_string();
        let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev},{peer}"),
            None => peer,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(&X_FORWARDED_FOR, v);
        }
    }
    match protocol {
        Protocol::Http1 => {
            if req.uri().authority().is_some() || req.uri().scheme().is_some() {
                // h2 downstream (or absolute-form): origin-form plus Host.
                if let Some(a) = req.uri().authority().cloned()
                    && !req.headers().contains_key(header::HOST)
                    && let Ok(v) = HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(header::HOST, v);
                }
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            let authority = match req.uri().authority() {
                Some(a) => Some(a.clone()),
                None => req
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| Authority::try_from(v.as_bytes()).ok()),
            };
            req.headers_mut().remove(header::HOST);
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority =
                Some(authority.unwrap_or_else(|| Authority::from_static("localhost")));
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
}

/// A route's rewrites: the new path (the original kept in
/// `x-envoy-original-path`, as Envoy does) and host.
fn rewrite(req: &mut Request<Incoming>, path: Option<String>, host: Option<HeaderValue>) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(p) = path
        && let Ok(pq) = PathAndQuery::try_from(p)
    {
        if let Some(old) = parts.path_and_query.as_ref()
            && let Ok(v) = HeaderValue::from_str(old.as_str())
        {
            req.headers_mut().insert(&X_ENVOY_ORIGINAL_PATH, v);
        }
        parts.path_and_query = Some(pq);
    }
    if let Some(h) = host {
        if parts.authority.is_some()
            && let Ok(a) = Authority::try_from(h.as_bytes())
        {
            parts.authority = Some(a);
        }
        if req.headers().contains_key(header::HOST) || parts.authority.is_none() {
            req.headers_mut().insert(header::HOST, h);
        }
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Apply the HCM's path_with_escaped_slashes_action, normalize_path and
/// merge_slashes to the request URI; Some: the connection manager's own
/// answer (Envoy's 400 for a rejected path, 307 for a redirect to the
/// unescaped one).
fn normalize_uri(req: &mut Request<Incoming>, ctx: &HttpContext) -> Option<Response<ResponseBody>> {
    use path_normalization::{EscapedSlashes, Outcome};
    let escaped = ctx.hcm.escaped_slashes;
    if !(ctx.hcm.normalize_path
        || ctx.hcm.merge_slashes
        || escaped != EscapedSlashes::KeepUnchanged)
    {
        return None;
    }
    let pq = req.uri().path_and_query()?;
    let normal = match path_normalization::apply(
        pq.as_str(),
        ctx.hcm.normalize_path,
        ctx.hcm.merge_slashes,
        escaped,
    ) {
        Outcome::Unchanged => return None,
        Outcome::Forward(p) => p,
        Outcome::Reject => {
            let mut resp = Response::new(ResponseBody::local(""));
            *resp.status_mut() = http::StatusCode::BAD_REQUEST;
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Some(resp);
        }
        Outcome::Redirect(location) => {
            let mut resp = Response::new(ResponseBody::local(""));
            *resp.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::try_from(location) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Some(resp);
        }
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Ok(pq) = PathAndQuery::try_from(normal) {
        parts.path_and_query = Some(pq);
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    None
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    fn location(r: &Redirect, matched: &PathMatch, authority: &str, path: &str) -> String {
        let resp = redirect(r, matched, "http", authority, path);
        resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn istio_redirect_rule_builds_the_location() {
        // rule-redirect-injection.yaml: uri /new/path, authority redirect2.test.istio.io.
        let r = Redirect {
            scheme: None,
            host: Some("redirect2.test.istio.io".into()),
            port: None,
            path: Some(PathRedirect::Path("/new/path".into())),
            strip_query: false,
            status: 301,
        };
        let any = PathMatch::Prefix("/".into());
        assert_eq!(
            location(&r, &any, "redirect.test.istio.io:8080", "/old?x=1"),
            "http://redirect2.test.istio.io:8080/new/path?x=1"
        );
        assert_eq!(
            location(&r, &any, "redirect.test.istio.io", "/"),
            "http://redirect2.test.istio.io/new/path"
        );
        let https = Redirect {
            scheme: Some("https".into()),
            host: None,
            path: Some(PathRedirect::Prefix("/v2/".into())),
            ..r.clone()
        };
        assert_eq!(
            location(
                &https,
                &PathMatch::Prefix("/v1/".into()),
                "a.example:80",
                "/v1/x"
            ),
            "https://a.example/v2/x"
        );
        assert_eq!(redirect(&r, &any, "http", "h", "/").status(), 301);
    }

    #[test]
    fn direct_response_sets_status_and_body() {
        let d = DirectResponse {
            status: 503,
            body: bytes::Bytes::from_static(b"unavailable"),
        };
        let resp = direct_response(&d);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "11");
        assert_eq!(split_port("[::1]:8080"), ("[::1]", Some(8080)));
        assert_eq!(split_port("::1"), ("::1", None));
    }
}
