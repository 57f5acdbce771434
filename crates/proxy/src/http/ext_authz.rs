//! `envoy.filters.http.ext_authz` (and the check client the network filter
//! shares), gRPC service mode: the request's attributes go to the
//! authorizer (`envoy.service.auth.v3.Authorization/Check`) over the
//! configured cluster; OK lets it on with the authorizer's header changes, a
//! denial is answered with the authorizer's status (403 by default), body
//! and headers (flag `UAEX`), a failed check with `status_on_error` unless
//! `failure_mode_allow`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context, authorization_client,
    check_response,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::body::ResponseBody;
use super::route_match::RequestView;
use crate::config::ext_authz::ExtAuthz;
use crate::config::store::ConfigStore;
use crate::downstream::Downstream;
use crate::stats::{Counter, Stats};
use crate::upstream::UpstreamStream;
use crate::upstream::connect::connect;

/// One ext_authz filter, with its lazily made channel and counters.
#[derive(Debug)]
pub struct ExtAuthzFilter {
    pub config: ExtAuthz,
    channel: OnceLock<tonic::transport::Channel>,
    stats: OnceLock<ExtAuthzStats>,
}

/// `<prefix>ext_authz.*` (HTTP: `http.<stat_prefix>.ext_authz.`).
#[derive(Debug, Clone)]
pub struct ExtAuthzStats {
    pub ok: Counter,
    pub denied: Counter,
    pub error: Counter,
    pub disabled: Counter,
    pub failure_mode_allowed: Counter,
    /// Network only.
    pub total: Counter,
    pub cx_closed: Counter,
}

impl ExtAuthzStats {
    pub fn new(stats: &Stats, prefix: &str) -> ExtAuthzStats {
        let at = |n: &str| stats.counter(format!("{prefix}{n}"));
        ExtAuthzStats {
            ok: at("ok"),
            denied: at("denied"),
            error: at("error"),
            disabled: at("disabled"),
            failure_mode_allowed: at("failure_mode_allowed"),
            total: at("total"),
            cx_closed: at("cx_closed"),
        }
    }
}

/// What the authorizer said.
pub enum Verdict {
    Ok(CheckResponse),
    Denied(CheckResponse),
    /// The call failed (connect, timeout, gRPC error).
    Error,
}

impl ExtAuthzFilter {
    pub fn new(config: ExtAuthz) -> ExtAuthzFilter {
        ExtAuthzFilter {
            config,
            channel: OnceLock::new(),
            stats: OnceLock::new(),
        }
    }

    /// Registered on first use under `prefix` (up to `ext_authz.`).
    pub fn stats(&self, registry: &Stats, prefix: &str) -> &ExtAuthzStats {
        self.stats
            .get_or_init(|| ExtAuthzStats::new(registry, prefix))
    }

    /// Whether the filter's metadata gate lets it run.
    pub fn enabled(&self, metadata: &crate::stream_info::DynamicMetadata) -> bool {
        self.config
            .enabled_metadata
            .as_ref()
            .is_none_or(|m| m.matches(metadata))
    }

    fn channel(&self, store: &Arc<ConfigStore>) -> Option<tonic::transport::Channel> {
        if let Some(c) = self.channel.get() {
            return Some(c.clone());
        }
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.config.authority))
                .ok()?;
        let channel = endpoint.connect_with_connector_lazy(ClusterConnector {
            store: store.clone(),
            cluster: self.config.cluster.clone(),
        });
        Some(self.channel.get_or_init(|| channel).clone())
    }

    /// Call the authorizer within the timeout.
    pub async fn check(&self, store: &Arc<ConfigStore>, req: CheckRequest) -> Verdict {
        let Some(channel) = self.channel(store) else {
            return Verdict::Error;
        };
        let mut client = authorization_client::AuthorizationClient::new(channel);
        match tokio::time::timeout(self.config.timeout, client.check(req)).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                if resp.status.as_ref().is_none_or(|s| s.code == 0) {
                    Verdict::Ok(resp)
                } else {
                    Verdict::Denied(resp)
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "ext_authz: check failed");
                Verdict::Error
            }
            Err(_) => {
                tracing::debug!("ext_authz: check timed out");
                Verdict::Error
            }
        }
    }
}

/// Connects the check channel to a host of the authorizer's cluster (with
/// the cluster's transport socket).
#[derive(Clone)]
struct ClusterConnector {
    store: Arc<ConfigStore>,
    cluster: String,
}

type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UpstreamStream>>> + Send>>;

impl tonic::codegen::Service<http::Uri> for ClusterConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (store, name) = (self.store.clone(), self.cluster.clone());
        Box::pin(async move {
            let cluster = store
                .load()
                .clusters
                .get(&name)
                .cloned()
                .ok_or_else(|| std::io::Error::other(format!("no cluster {name}")))?;
            let host = cluster
                .pick(None)
                .ok_or_else(|| std::io::Error::other(format!("no healthy host in {name}")))?;
            let dial = crate::upstream::pool::Dial {
                timeout: cluster.config.connect_timeout,
                stats: &cluster.stats,
                secrets: &store.secrets,
                sni: None,
                verify_sni: false,
                breakers: &cluster.breakers,
                pool: &cluster.config.pool,
            };
            connect(&host, &dial).await.map(TokioIo::new)
        })
    }
}

fn address(a: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// The source and destination peers of a connection, as Envoy fills them.
pub fn peers(
    d: &Downstream,
    include_cert: bool,
) -> (attribute_context::Peer, attribute_context::Peer) {
    let tls = d.tls.as_deref();
    let cert = tls.and_then(|t| t.peer.as_ref());
    let principal = cert
        .map(|c| {
            c.names
                .uris
                .first()
                .or(c.names.dns.first())
                .cloned()
                .unwrap_or_else(|| c.names.subject.clone())
        })
        .unwrap_or_default();
    let source = attribute_context::Peer {
        address: Some(address(d.peer)),
        principal,
        certificate: if include_cert {
            cert.map(|c| c.sha256.clone()).unwrap_or_default()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let destination = attribute_context::Peer {
        address: Some(address(d.destination)),
        principal: tls
            .and_then(|t| t.local_uri.as_deref())
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    (source, destination)
}

/// The check request for an HTTP request.
pub(super) fn http_check(
    view: &RequestView<'_>,
    d: &Downstream,
    include_cert: bool,
    h2: bool,
) -> CheckRequest {
    let (source, destination) = peers(d, include_cert);
    let mut headers = std::collections::HashMap::new();
    headers.insert(":authority".to_string(), view.authority.to_string());
    headers.insert(":method".to_string(), view.method.to_string());
    headers.insert(":path".to_string(), view.path.to_string());
    for (k, v) in view.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e: &mut String| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let (path, query) = view.path.split_once('?').unwrap_or((view.path, ""));
    let _ = path;
    let http = attribute_context::HttpRequest {
        id: view
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        method: view.method.to_string(),
        headers,
        path: view.path.to_string(),
        host: view.authority.to_string(),
        scheme: "http".to_string(),
        query: query.to_string(),
        size: -1,
        protocol: if h2 { "HTTP/2" } else { "HTTP/1.1" }.to_string(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

/// Header edits an OK answer asks for on the upstream request:
/// (name, value, append); None value = remove.
pub type Edit = (HeaderName, Option<HeaderValue>, bool);

/// The edits of an OK answer (`append` true appends, else replaces).
#[allow(deprecated)]
pub(super) fn ok_edits(resp: &CheckResponse) -> Vec<Edit> {
    let mut out = Vec::new();
    if let Some(check_response::HttpResponse::OkResponse(ok)) = &resp.http_response {
        for h in &ok.headers {
            let Some(hv) = &h.header else { continue };
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(hv.key.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(&hv.value),
            ) {
                out.push((n, Some(v), h.append.as_ref().is_some_and(|a| a.value)));
            }
        }
        for name in &ok.headers_to_remove {
            if let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                out.push((n, None, false));
            }
        }
    }
    out
}

/// The local reply for a denial.
pub(super) fn denied_reply(resp: &CheckResponse) -> Response<ResponseBody> {
    let (status, body, headers) = match &resp.http_response {
        Some(check_response::HttpResponse::DeniedResponse(d)) => (
            d.status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .unwrap_or(StatusCode::FORBIDDEN),
            d.body.clone(),
            d.headers.clone(),
        ),
        _ => (StatusCode::FORBIDDEN, String::new(), Vec::new()),
    };
    let len = body.len();
    let mut r = Response::new(ResponseBody::local(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    for o in headers {
        let Some(hv) = o.header else { continue };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(hv.key.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(&hv.value),
        ) {
            h.append(n, v);
        }
    }
    if len > 0 && !h.contains_key(header::CONTENT_TYPE) {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// The local reply for a failed check (`status_on_error`).
pub(super) fn error_reply(status: u16) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::local(String::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}
