//! `envoy.filters.http.router`: pick virtual host, route and cluster, then a
//! host; forward the request over a pooled upstream connection (HTTP/1.1 or
//! h2c per cluster), pass upgrades (WebSocket) through, and turn failures
//! into Envoy's local replies (NR 404, UH/UF 503, UT 504) in one place.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::ResponseBody;
use super::connection_manager::HttpContext;
use super::headers::{
    self, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::route_match::RequestView;
use crate::config::cluster::UpstreamProtocol;
use crate::config::listener::RouteSource;
use crate::error::RequestError;
use crate::upstream::host::ActiveRequest;
use crate::upstream::lb::random;
use crate::upstream::pool::{self, Protocol};

/// Handle one downstream request; never fails (errors become local replies).
pub async fn handle(req: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    let mut resp = match forward(req, ctx).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(flag = %e.flag(), error = %e, "local reply");
            match &e {
                RequestError::NoRoute => stats.no_route.inc(),
                RequestError::NoCluster(_) => stats.no_cluster.inc(),
                _ => {}
            }
            local_reply(&e)
        }
    };
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("envoy"));
    stats.record_status(resp.status().as_u16());
    resp
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
    resp
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &HttpContext,
) -> Result<Response<ResponseBody>, RequestError> {
    let downstream_h2 = req.version() == Version::HTTP_2;
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
        let name = route.action.clusters.pick(random());
        let cluster = snapshot
            .clusters
            .get(name)
            .cloned()
            .ok_or_else(|| RequestError::NoCluster(name.to_string()))?;
        (cluster, route.action.timeout)
    };
    cluster.stats.upstream_rq_total.inc();
    let Some(host) = cluster.pick(ctx.downstream.original_dst) else {
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
    prepare_request(&mut req, protocol, ctx, upgrade);

    let active = ActiveRequest::new(host, cluster.stats.upstream_rq_active.clone());
    let start = Instant::now();
    let send = pool::send(
        active,
        protocol,
        req,
        cluster.config.connect_timeout,
        &cluster.stats,
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
    Ok(resp.map(ResponseBody::Upstream))
}

/// Headers and URI for the upstream: hop-by-hop removed, x-request-id and
/// x-forwarded-proto set, authority carried as Host (HTTP/1.1) or
/// `:authority` (h2).
fn prepare_request(
    req: &mut Request<Incoming>,
    protocol: Protocol,
    ctx: &HttpContext,
    upgrade: bool,
) {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h, upgrade);
    if upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if !h.contains_key(&X_REQUEST_ID) {
        h.insert(&X_REQUEST_ID, headers::request_id());
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
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
            if !h.contains_key(header::HOST) {
                if let Some(a) = authority
                    .as_deref()
                    .and_then(|a| HeaderValue::from_str(a).ok())
                {
                    h.insert(header::HOST, a);
                }
            }
            if let Ok(uri) = Uri::builder().path_and_query(path).build() {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            h.remove(header::HOST);
            let uri = Uri::builder()
                .scheme("http")
                .authority(authority.as_deref().unwrap_or("localhost"))
                .path_and_query(path)
                .build();
            if let Ok(uri) = uri {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
}
