//! `envoy.filters.http.rbac` as Envoy runs it: the shadow rules decide and
//! count (and say so in dynamic metadata) without acting, then the enforced
//! rules allow the request on or answer `403 RBAC: access denied` (flag
//! `RBAC`). A route's RBACPerRoute replaces both rule sets; one without
//! `rbac` turns the filter off there.

use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::ResponseBody;
use super::connection_manager::HttpContext;
use super::headers::X_FORWARDED_FOR;
use super::route_match::RequestView;
use super::router::Mutations;
use crate::config::listener::HttpFilter;
use crate::config::rbac::{HttpRbac, Input, RbacPerRoute};
use crate::config::route::Route;
use crate::downstream::Downstream;
use crate::error::ResponseFlag;
use crate::stats::{Counter, Stats};
use crate::stream_info::DynamicMetadata;

/// The dynamic metadata namespace the filter writes.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.rbac";
const DENIED_BODY: &str = "RBAC: access denied";

/// The filter as configured in one HCM, with its counters.
#[derive(Debug)]
pub struct RbacFilter {
    pub config: HttpRbac,
    stats: OnceLock<RbacStats>,
}

/// `http.<stat_prefix>.rbac.<rules_stat_prefix>{allowed,denied}` and
/// `http.<stat_prefix>.rbac.<shadow_rules_stat_prefix>shadow_{allowed,denied}`.
#[derive(Debug, Clone)]
pub struct RbacStats {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_allowed: Counter,
    pub shadow_denied: Counter,
}

impl RbacStats {
    /// `prefix` is the full one up to `rbac.` (e.g. `http.inbound_8080.`).
    pub fn new(stats: &Stats, prefix: &str, rules: &str, shadow: &str) -> RbacStats {
        // Envoy joins each prefix with a dot unless it ends with one.
        let base = join(prefix, "rbac.");
        let at = |p: &str, n: &str| stats.counter(join(&join(&base, p), n));
        RbacStats {
            allowed: at(rules, "allowed"),
            denied: at(rules, "denied"),
            shadow_allowed: at(shadow, "shadow_allowed"),
            shadow_denied: at(shadow, "shadow_denied"),
        }
    }
}

/// Envoy's statPrefixJoin.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}.{name}")
    }
}

impl RbacFilter {
    pub fn new(config: HttpRbac) -> RbacFilter {
        RbacFilter {
            config,
            stats: OnceLock::new(),
        }
    }

    /// Registered on first use (under the owning HCM's prefix).
    pub fn stats(&self, registry: &Stats, hcm_prefix: &str) -> &RbacStats {
        self.stats.get_or_init(|| {
            RbacStats::new(
                registry,
                &format!("http.{hcm_prefix}"),
                &self.config.rules_stat_prefix,
                &self.config.shadow_rules_stat_prefix,
            )
        })
    }
}

/// What decides: the request and its connection.
pub(super) struct Decide<'a> {
    pub view: &'a RequestView<'a>,
    pub downstream: &'a Downstream,
    pub use_remote_address: bool,
}

/// Run the filter. Some(reply) denies the request (the caller sets the flag).
pub(super) fn decode(
    filter: &RbacFilter,
    per_route: Option<&RbacPerRoute>,
    req: &Decide<'_>,
    stats: &RbacStats,
    metadata: &mut DynamicMetadata,
) -> Option<Response<ResponseBody>> {
    let config = match per_route {
        Some(RbacPerRoute(None)) => return None,
        Some(RbacPerRoute(Some(c))) => c,
        None => &filter.config,
    };
    let remote_ip = remote_ip(req.view.headers, req.downstream, req.use_remote_address);
    if let Some(shadow) = &config.shadow_rules {
        let input = Input {
            downstream: req.downstream,
            remote_ip,
            request: Some(req.view),
            metadata,
        };
        let (allowed, policy) = shadow.evaluate(&input);
        let policy = policy.map(str::to_string);
        let result = if allowed {
            stats.shadow_allowed.inc();
            "allowed"
        } else {
            stats.shadow_denied.inc();
            "denied"
        };
        let prefix = &filter.config.shadow_rules_stat_prefix;
        if let Some(id) = policy {
            metadata.set(
                METADATA_NAMESPACE,
                format!("{prefix}shadow_effective_policy_id"),
                id.into(),
            );
        }
        metadata.set(
            METADATA_NAMESPACE,
            format!("{prefix}shadow_engine_result"),
            result.into(),
        );
    }
    let rules = config.rules.as_ref()?;
    let input = Input {
        downstream: req.downstream,
        remote_ip,
        request: Some(req.view),
        metadata,
    };
    let (allowed, policy) = rules.evaluate(&input);
    if allowed {
        stats.allowed.inc();
        return None;
    }
    stats.denied.inc();
    tracing::debug!(
        details = %format!("rbac_access_denied_matched_policy[{}]", policy.unwrap_or("none")),
        "rbac: access denied"
    );
    Some(denied())
}

/// Envoy's local reply for a denied request.
pub fn denied() -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(DENIED_BODY.to_string()));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(DENIED_BODY.len()));
    resp
}

/// The downstream remote address as the HCM computes it: the peer with
/// `use_remote_address`, else the last `x-forwarded-for` entry when it is an
/// IP (no trusted hops), else the peer.
pub fn remote_ip(headers: &HeaderMap, downstream: &Downstream, use_remote_address: bool) -> IpAddr {
    let peer = downstream.peer.ip();
    if use_remote_address {
        return peer;
    }
    headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// Run one filter of the chain if it is an authentication or authorization
/// one (jwt_authn, rbac; the router calls this in chain order). Some(reply)
/// ends the request here.
pub(super) fn one(
    filter: &HttpFilter,
    ctx: &HttpContext,
    route: Option<&Route>,
    view: &RequestView<'_>,
    m: &mut Mutations,
) -> Option<Response<ResponseBody>> {
    let reply = match filter {
        HttpFilter::Rbac { name, filter } => {
            let stats = filter.stats(&ctx.store.stats, &ctx.hcm.stat_prefix);
            let decide = Decide {
                view,
                downstream: &ctx.downstream,
                use_remote_address: ctx.hcm.use_remote_address,
            };
            let reply = decode(
                filter,
                route.and_then(|r| r.rbac(name)),
                &decide,
                stats,
                &mut m.metadata,
            )?;
            if let Some(info) = &mut m.info {
                info.flags.set(ResponseFlag::RbacAccessDenied);
            }
            reply
        }
        HttpFilter::JwtAuthn { filter, .. } => {
            let stats = filter.stats(&ctx.store.stats, &ctx.hcm.stat_prefix);
            super::jwt_authn::decode(filter, view, stats, &mut m.metadata, &mut m.jwt_edits)?
        }
        _ => return None,
    };
    // Envoy applies the matched route's response headers to this local
    // reply too (the route is resolved before the filters run).
    Some(reply)
}

/// Every authorization filter of the chain, on their own configs (no route
/// matched).
pub(super) fn run(
    ctx: &HttpContext,
    route: Option<&Route>,
    view: &RequestView<'_>,
    m: &mut Mutations,
) -> Option<Response<ResponseBody>> {
    ctx.hcm
        .http_filters
        .iter()
        .find_map(|f| one(f, ctx, route, view, m))
}

/// An ext_authz filter met in the chain: called later if its metadata gate
/// (Istio's CUSTOM shadow policy) is open now.
pub(super) fn gate_ext_authz(
    filter: &std::sync::Arc<super::ext_authz::ExtAuthzFilter>,
    ctx: &HttpContext,
    m: &mut Mutations,
) {
    if filter.enabled(&m.metadata) {
        m.ext_authz.push(filter.clone());
    } else {
        ext_authz_stats(filter, ctx).disabled.inc();
    }
}

fn ext_authz_stats<'f>(
    filter: &'f super::ext_authz::ExtAuthzFilter,
    ctx: &HttpContext,
) -> &'f super::ext_authz::ExtAuthzStats {
    let extra = &filter.config.stat_prefix;
    let prefix = if extra.is_empty() {
        format!("http.{}.ext_authz.", ctx.hcm.stat_prefix)
    } else {
        format!("http.{}.ext_authz.{extra}.", ctx.hcm.stat_prefix)
    };
    filter.stats(&ctx.store.stats, &prefix)
}

/// Call the gated ext_authz filters in order. Some(reply) ends the request.
pub(super) async fn ext_authz(
    ctx: &HttpContext,
    req: &mut http::Request<hyper::body::Incoming>,
    m: &mut Mutations,
) -> Option<Response<ResponseBody>> {
    use super::ext_authz::{Verdict, denied_reply, error_reply, http_check, ok_edits};
    for filter in std::mem::take(&mut m.ext_authz) {
        let stats = ext_authz_stats(&filter, ctx);
        let authority = super::headers::authority(req).to_string();
        let check = {
            let view = RequestView {
                method: req.method(),
                path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                authority: &authority,
                headers: req.headers(),
            };
            http_check(
                &view,
                &ctx.downstream,
                filter.config.include_peer_certificate,
                req.version() == http::Version::HTTP_2,
            )
        };
        match filter.check(&ctx.store, check).await {
            Verdict::Ok(resp) => {
                stats.ok.inc();
                for (name, value, append) in ok_edits(&resp) {
                    match value {
                        Some(v) if append => {
                            req.headers_mut().append(name, v);
                        }
                        Some(v) => {
                            req.headers_mut().insert(name, v);
                        }
                        None => {
                            req.headers_mut().remove(name);
                        }
                    }
                }
            }
            Verdict::Denied(resp) => {
                stats.denied.inc();
                flag(m);
                return Some(denied_reply(&resp));
            }
            Verdict::Error => {
                stats.error.inc();
                if filter.config.failure_mode_allow {
                    stats.failure_mode_allowed.inc();
                    continue;
                }
                flag(m);
                return Some(error_reply(filter.config.status_on_error));
            }
        }
    }
    None
}

fn flag(m: &mut Mutations) {
    if let Some(info) = &mut m.info {
        info.flags.set(ResponseFlag::UnauthorizedExternalService);
    }
}
