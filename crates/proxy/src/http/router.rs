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
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{EndTimer, ResponseBody};
use super::connection_manager::HttpContext;
use super::fault::{self, FaultConfig};
use super::headers::{
    self, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_FOR,
    X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::path_normalization;
use super::route_match::RequestView;
use crate::config::cluster::UpstreamProtocol;
use crate::config::header_ops::LevelHeaders;
use crate::config::listener::HttpFilter;
use crate::config::listener::RouteSource;
use crate::config::route::{Action, DirectResponse, PathMatch, PathRedirect, Redirect};
use crate::error::{RequestError, ResponseFlag};
use crate::request_body::RequestBody;
use crate::stream_info::StreamInfo;
use crate::upstream::lb::random;
use crate::upstream::pool::{self, Protocol};

/// Handle one downstream request; never fails (errors become local replies).
pub async fn handle(req: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let stats = &ctx.stats;
    let started = Instant::now();
    stats.downstream_rq_total.inc();
    let observers = ctx.store.stream_observers();
    let mut mutations = Mutations {
        info: observers
            .as_ref()
            .map(|_| StreamInfo::new(ctx.downstream.clone())),
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
struct Mutations {
    cluster: Option<Arc<LevelHeaders>>,
    route: Option<Arc<LevelHeaders>>,
    info: Option<StreamInfo>,
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
    normalize_uri(&mut req, ctx);
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");

    // Route, cluster and host, from one consistent snapshot.
    let mut fault: Option<Arc<FaultConfig>> = None;
    let (cluster, timeout) = {
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
        let route = routes
            .virtual_host(authority)
            .and_then(|vh| vh.route(&view))
            .ok_or(RequestError::NoRoute)?;
        mutations.route = route.headers.clone();
        if let Some(info) = &mut mutations.info {
            info.route_name = Some(route.name.as_str().into());
        }
        // The fault filters of the chain, with the route's config for each.
        for filter in &ctx.hcm.http_filters {
            let HttpFilter::Fault { name, config } = filter;
            let config = route.fault(name).unwrap_or(config);
            if !config.is_empty() {
                fault = Some(config.clone());
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
        (cluster, action.timeout)
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
    cluster.stats.upstream_rq_total.inc();
    let Some(host) = cluster.pick(ctx.downstream.original_dst) else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return Err(RequestError::NoHealthyUpstream);
    };
    if let Some(info) = &mut mutations.info {
        info.upstream_host = Some(host.addr.to_string().into());
    }

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
    prepare_request(&mut req, protocol, ctx, upgrade, timeout);
    mutations.request(req.headers_mut());

    let active = cluster.start_request(host.clone())?;
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
    let send = pool::send(
        active,
        protocol,
        req.map(RequestBody::Streaming),
        &dial,
        upgrade,
    );
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => {
                cluster.stats.upstream_rq_timeout.inc();
                Err(RequestError::Timeout)
            }
        },
        None => send.await,
    };
    cluster.report_result(&host, &result);
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            cluster.stats.record_status(e.status().as_u16());
            return Err(e);
        }
    };
    cluster.stats.record_status(resp.status().as_u16());

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
    h.insert(&X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(elapsed));
    *resp.version_mut() = Version::default();
    let timer = EndTimer {
        start,
        histogram: cluster.stats.upstream_rq_time.clone(),
        completed: None,
    };
    Ok(resp.map(|body| ResponseBody::upstream(body, timer)))
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

/// Apply the HCM's normalize_path / merge_slashes to the request URI.
fn normalize_uri(req: &mut Request<Incoming>, ctx: &HttpContext) {
    if !(ctx.hcm.normalize_path || ctx.hcm.merge_slashes) {
        return;
    }
    let Some(pq) = req.uri().path_and_query() else {
        return;
    };
    let Some(normal) =
        path_normalization::normalize(pq.as_str(), ctx.hcm.normalize_path, ctx.hcm.merge_slashes)
    else {
        return;
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Ok(pq) = PathAndQuery::try_from(normal) {
        parts.path_and_query = Some(pq);
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
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
