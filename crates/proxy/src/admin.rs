//! The admin interface (Envoy's, on `admin.address`): `/config_dump`,
//! `/clusters`, `/stats`, `/stats/prometheus`, `/ready`; and the
//! `/healthz/ready` probe port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::endpoint::Health;
use crate::config::store::ConfigStore;
use crate::descriptors::Descriptors;
use crate::upstream::Host;
use crate::upstream::circuit::Resource;

const ADMIN_TYPE: &str = "type.googleapis.com/envoy.admin.v3.";

/// Serve admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, store: Arc<ConfigStore>, bootstrap: Arc<Bootstrap>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = admin(&req, &store, &bootstrap);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serve `/healthz/ready` (Istio's 15021) until the task is dropped.
pub async fn serve_ready(listener: TcpListener, store: Arc<ConfigStore>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = match req.uri().path() {
                    "/healthz/ready" => ready(&store),
                    _ => text(StatusCode::NOT_FOUND, "not found\n"),
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(
    req: &Request<Incoming>,
    store: &ConfigStore,
    bootstrap: &Bootstrap,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => ready(store),
        "/stats" => text(StatusCode::OK, store.stats.render()),
        "/stats/prometheus" => {
            let mut resp = text(StatusCode::OK, store.stats.render_prometheus());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8"
                    .parse()
                    .expect("static"),
            );
            resp
        }
        "/clusters" => text(StatusCode::OK, clusters(store)),
        "/config_dump" => {
            let dump = if req.uri().query() == Some("resource=dynamic_active_secrets") {
                json!({"configs": active_secrets(store)})
            } else {
                config_dump(store, bootstrap)
            };
            let body = serde_json::to_string_pretty(&dump).unwrap_or_default();
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("static"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "unknown admin path\n"),
    }
}

fn ready(store: &ConfigStore) -> Response<Full<Bytes>> {
    if !store.is_ready() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n");
    }
    match store.secrets.unready() {
        Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        None => text(StatusCode::OK, "LIVE\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=UTF-8".parse().expect("static"),
    );
    resp
}

/// Envoy's `/clusters` text: `cluster::host::stat::value` lines.
pub fn clusters(store: &ConfigStore) -> String {
    let snapshot = store.load();
    let mut names: Vec<&String> = snapshot.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let c = &snapshot.clusters[name];
        // Envoy's per-cluster lines: the default-priority thresholds.
        let b = &c.breakers;
        for (field, r) in [
            ("max_connections", Resource::Connection),
            ("max_pending_requests", Resource::Pending),
            ("max_requests", Resource::Request),
            ("max_retries", Resource::Retry),
        ] {
            out.push_str(&format!(
                "{name}::default_priority::{field}::{}\n",
                b.max(r)
            ));
        }
        if c.outlier().is_some() {
            out.push_str(&format!("{name}::outlier::success_rate_average::-1\n"));
            out.push_str(&format!(
                "{name}::outlier::success_rate_ejection_threshold::-1\n"
            ));
        }
        for (host, weight, health, place) in c.hosts_for_admin() {
            let p = format!("{name}::{}", host.addr);
            out.push_str(&format!("{p}::cx_active::{}\n", host.cx_active.get()));
            out.push_str(&format!(
                "{p}::cx_connect_fail::{}\n",
                host.cx_connect_fail.get()
            ));
            out.push_str(&format!("{p}::cx_total::{}\n", host.cx_total.get()));
            out.push_str(&format!("{p}::rq_active::{}\n", host.rq_active.get()));
            out.push_str(&format!("{p}::rq_error::{}\n", host.rq_error.get()));
            out.push_str(&format!("{p}::rq_total::{}\n", host.rq_total.get()));
            out.push_str(&format!("{p}::weight::{weight}\n"));
            out.push_str(&format!(
                "{p}::health_flags::{}\n",
                health_flags(&host, health)
            ));
            // Where it sits, as Envoy prints it.
            let l = &place.locality;
            out.push_str(&format!("{p}::region::{}\n", l.region));
            out.push_str(&format!("{p}::zone::{}\n", l.zone));
            out.push_str(&format!("{p}::sub_zone::{}\n", l.sub_zone));
            out.push_str(&format!("{p}::canary::false\n"));
            out.push_str(&format!("{p}::priority::{}\n", place.priority));
        }
    }
    out
}

/// Envoy's `health_flags`: `healthy`, or the failed checks in Envoy's order
/// (outlier ejection before EDS health).
fn health_flags(host: &Host, health: Health) -> String {
    match (host.outlier.is_ejected(), health) {
        (false, h) => h.flags().to_string(),
        (true, Health::Healthy) => "/failed_outlier_check".to_string(),
        (true, h) => format!("/failed_outlier_check{}", h.flags()),
    }
}

fn with_type(mut v: Value, type_url: &str) -> Value {
    if let Value::Object(map) = &mut v {
        map.insert("@type".into(), Value::String(type_url.to_string()));
    }
    v
}

/// Envoy's `/config_dump` shape: Bootstrap, Clusters, Listeners, Routes and
/// Endpoints config dumps.
pub fn config_dump(store: &ConfigStore, bootstrap: &Bootstrap) -> Value {
    Descriptors::with(|d| render_config_dump(d, store, bootstrap))
}

fn render_config_dump(d: &Descriptors, store: &ConfigStore, bootstrap: &Bootstrap) -> Value {
    let state = store.lock();
    let version = |t: &str| state.versions.get(t).cloned().unwrap_or_default();
    let static_clusters: Vec<Value> = state
        .static_clusters
        .iter()
        .map(|(p, _)| json!({"cluster": with_type(d.to_json(p), xds::type_url::CLUSTER)}))
        .collect();
    let dynamic_clusters: Vec<Value> = state
        .clusters
        .values()
        .map(|v| json!({"version_info": v.version, "cluster": with_type(d.to_json(&v.proto), xds::type_url::CLUSTER)}))
        .collect();
    let static_listeners: Vec<Value> = state
        .static_listeners
        .iter()
        .map(|(p, _)| json!({"listener": with_type(d.to_json(p), xds::type_url::LISTENER)}))
        .collect();
    let dynamic_listeners: Vec<Value> = state
        .listeners
        .iter()
        .map(|(name, v)| {
            json!({"name": name, "active_state": {"version_info": v.version,
            "listener": with_type(d.to_json(&v.proto), xds::type_url::LISTENER)}})
        })
        .collect();
    let dynamic_routes: Vec<Value> = state
        .routes
        .values()
        .map(|v| json!({"version_info": v.version, "route_config": with_type(d.to_json(&v.proto), xds::type_url::ROUTE)}))
        .collect();
    let dynamic_endpoints: Vec<Value> = state
        .endpoints
        .values()
        .map(|v| json!({"version_info": v.version, "endpoint_config": with_type(d.to_json(&v.proto), xds::type_url::ENDPOINT)}))
        .collect();
    json!({"configs": [
        {"@type": format!("{ADMIN_TYPE}BootstrapConfigDump"), "bootstrap": d.to_json(bootstrap)},
        {"@type": format!("{ADMIN_TYPE}ClustersConfigDump"), "version_info": version(xds::type_url::CLUSTER),
         "static_clusters": static_clusters, "dynamic_active_clusters": dynamic_clusters},
        {"@type": format!("{ADMIN_TYPE}ListenersConfigDump"), "version_info": version(xds::type_url::LISTENER),
         "static_listeners": static_listeners, "dynamic_listeners": dynamic_listeners},
        {"@type": format!("{ADMIN_TYPE}RoutesConfigDump"), "dynamic_route_configs": dynamic_routes},
        {"@type": format!("{ADMIN_TYPE}EndpointsConfigDump"), "dynamic_endpoint_configs": dynamic_endpoints},
        {"@type": format!("{ADMIN_TYPE}SecretsConfigDump"), "dynamic_active_secrets": active_secrets(store)},
    ]})
}

/// The SDS secrets held, as Envoy dumps them (private keys redacted).
fn active_secrets(store: &ConfigStore) -> Vec<Value> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    store
        .secrets
        .all()
        .into_iter()
        .map(|(name, secret)| {
            let body = match &*secret {
                crate::tls::Secret::Certificate(c) => json!({"name": name, "tls_certificate": {
                    "certificate_chain": {"inline_bytes": b64(&c.chain)},
                    "private_key": {"inline_bytes": b64("[redacted]")}}}),
                crate::tls::Secret::Roots(r) => json!({"name": name, "validation_context": {
                    "trusted_ca": {"inline_bytes": b64(r)}}}),
            };
            json!({"@type": format!("{ADMIN_TYPE}SecretsConfigDump.DynamicSecret"),
                   "name": name, "secret": body})
        })
        .collect()
}

/// Bind an admin-style listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::listener::bind(addr)
}
