//! RouteConfiguration (RDS or inline) as the router runs it: virtual hosts
//! indexed by domain the way Envoy picks them, routes with compiled matchers,
//! and route actions: forward (one cluster or weighted clusters, timeout),
//! redirect, or a direct response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use regex::Regex;

use super::cors::CorsConfig;
use super::fault::FaultConfig;
use super::header_ops::LevelHeaders;
use super::retry::RetryPolicy;
use super::{check_subset, duration, subset};
use crate::error::ConfigError;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as CorsProto;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault as FaultProto;

pub type XdsRouteConfiguration = xds_route::RouteConfiguration;

/// Envoy's default route timeout when `timeout` is unset.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// As configured; Envoy defaults it to true for inline route configs only.
    pub validate_clusters: Option<bool>,
    pub(crate) domains: DomainIndex,
}

/// Domains of all virtual hosts, in Envoy's lookup order.
#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    pub exact: HashMap<String, usize>,
    /// `*.suffix` / `*-suffix`: (suffix, vhost), longest suffix first.
    pub suffixes: Vec<(String, usize)>,
    /// `prefix*`: (prefix, vhost), longest prefix first.
    pub prefixes: Vec<(String, usize)>,
    pub any: Option<usize>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` upstream.
    pub attempt_count_upstream: bool,
    /// `include_attempt_count_in_response`: the same header downstream.
    pub attempt_count_downstream: bool,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    /// Route-level header mutations (applied after a weighted cluster's).
    pub headers: Option<Arc<LevelHeaders>>,
    /// `typed_per_filter_config` of fault filters, by filter name.
    pub faults: Vec<(String, Arc<FaultConfig>)>,
    /// `typed_per_filter_config` of CORS filters, by filter name.
    pub cors: Vec<(String, Arc<CorsConfig>)>,
    /// `typed_per_filter_config` of RBAC filters (RBACPerRoute), by name.
    pub rbac: Vec<(String, Arc<super::rbac::RbacPerRoute>)>,
}

impl Route {
    /// This route's config for the fault filter named `name`, if it has one.
    pub fn fault(&self, name: &str) -> Option<&Arc<FaultConfig>> {
        self.faults.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    /// This route's policy for the CORS filter named `name`, if it has one.
    pub fn cors(&self, name: &str) -> Option<&Arc<CorsConfig>> {
        self.cors.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// This route's RBACPerRoute for the RBAC filter named `name`.
    pub fn rbac(&self, name: &str) -> Option<&super::rbac::RbacPerRoute> {
        self.rbac.iter().find(|(n, _)| n == name).map(|(_, c)| &**c)
    }
}

/// What a matched route does.
#[derive(Debug)]
pub enum Action {
    /// Forward upstream (`route`).
    Forward(RouteAction),
    /// Answer with a redirect (`redirect`).
    Redirect(Redirect),
    /// Answer with a fixed status and body (`direct_response`).
    DirectResponse(DirectResponse),
}

impl Action {
    /// The clusters a forwarding route may pick (none for local answers).
    pub fn clusters(&self) -> Option<&WeightedClusters> {
        match self {
            Action::Forward(a) => Some(&a.clusters),
            _ => None,
        }
    }
}

/// `RedirectAction`: each set part replaces the request's in the Location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `scheme_redirect`, or `https` for `https_redirect`.
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRedirect>,
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// How a redirect rewrites the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRedirect {
    /// `path_redirect`: the whole path (a `?` in it brings its own query).
    Path(String),
    /// `prefix_rewrite`: replaces the route's matched prefix.
    Prefix(String),
}

/// `DirectResponseAction`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u16,
    pub body: bytes::Bytes,
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    /// Anchored at both ends: the whole path (without query) must match.
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderMatcher {
    /// Lower-case header name, or a pseudo-header (`:path`, `:method`, `:authority`).
    pub name: String,
    pub kind: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

#[derive(Debug)]
pub enum HeaderMatch {
    Present(bool),
    String(StringMatch),
}

#[derive(Debug)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// None = present_match.
    pub string_match: Option<StringMatch>,
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug)]
pub enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
}

#[derive(Debug)]
pub struct RouteAction {
    pub clusters: WeightedClusters,
    /// None = no timeout (`timeout: 0s`).
    pub timeout: Option<Duration>,
    /// Per weighted cluster (same order), when any has header mutations.
    pub cluster_headers: Vec<Option<Arc<LevelHeaders>>>,
    /// The route's retry policy, else its virtual host's.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Path and host rewrites before forwarding.
    pub rewrite: Option<Arc<Rewrite>>,
    /// `max_grpc_timeout` / `max_stream_duration.grpc_timeout_header_max`:
    /// a gRPC request's `grpc-timeout` replaces `timeout` (none: no
    /// timeout), capped at this (None: no cap).
    pub grpc_timeout: Option<Option<Duration>>,
    /// `request_mirror_policies`: shadow copies, fire and forget.
    pub mirrors: Vec<Mirror>,
    /// `hash_policy`, for RING_HASH and MAGLEV clusters (None: none).
    pub hash_policy: Option<Arc<[super::hash_policy::HashPolicy]>>,
}

/// One `request_mirror_policies` entry.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: String,
    /// `runtime_fraction.default_value` (default: every request).
    pub share: super::fault::Fraction,
}

/// `prefix_rewrite` / `regex_rewrite` and `host_rewrite_literal`.
#[derive(Debug)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    pub host: Option<http::HeaderValue>,
}

#[derive(Debug)]
pub enum PathRewrite {
    /// Replaces the matched prefix (the whole path for exact and regex
    /// matches).
    Prefix(String),
    /// Every match of the pattern in the path, replaced (RE2's `\1` groups
    /// become the regex crate's `${1}`).
    Regex(Regex, String),
}

impl PathRewrite {
    /// The new path-and-query for `path_and_query`, which `matched` routed.
    pub fn apply(&self, matched: &PathMatch, path_and_query: &str) -> String {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut out = match self {
            PathRewrite::Prefix(new) => {
                let cut = match matched {
                    PathMatch::Prefix(p) => p.len().min(path.len()),
                    PathMatch::Path(_) | PathMatch::Regex(_) => path.len(),
                };
                format!("{new}{}", &path[cut..])
            }
            PathRewrite::Regex(re, with) => re.replace_all(path, with.as_str()).into_owned(),
        };
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// RE2 substitution (`\1`, a literal `$`) in the regex crate's syntax.
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str(&format!("${{{d}}}"));
            }
            '\\' if chars.peek() == Some(&'\\') => {
                chars.next();
                out.push('\\');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// The timeout a `grpc-timeout` header asks for (`1S`, `250m`, ...).
pub fn grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl RouteAction {
    /// The cluster for a random value, with its header mutations.
    pub fn pick(&self, random: u64) -> (&str, Option<&Arc<LevelHeaders>>) {
        let i = self.clusters.pick_index(random);
        (
            &self.clusters.clusters[i].0,
            self.cluster_headers.get(i).and_then(Option::as_ref),
        )
    }
}

/// One cluster, or several picked per request by weight.
#[derive(Debug, Clone)]
pub struct WeightedClusters {
    /// (cluster, cumulative weight upper bound).
    pub clusters: Vec<(String, u32)>,
    pub total: u32,
}

impl WeightedClusters {
    pub fn single(name: &str) -> Self {
        WeightedClusters {
            clusters: vec![(name.to_string(), 1)],
            total: 1,
        }
    }

    pub fn new(list: Vec<(String, u32)>) -> Result<Self, ConfigError> {
        let mut total = 0u32;
        let mut clusters = Vec::with_capacity(list.len());
        for (i, (name, w)) in list.into_iter().enumerate() {
            if name.is_empty() {
                return Err(ConfigError::new(format!("clusters[{i}].name"), "required"));
            }
            total = total
                .checked_add(w)
                .ok_or_else(|| ConfigError::new("clusters", "weights overflow"))?;
            clusters.push((name, total));
        }
        if total == 0 {
            return Err(ConfigError::new(
                "clusters",
                "sum of weights must be positive",
            ));
        }
        Ok(WeightedClusters { clusters, total })
    }

    /// The cluster for a random value (any u64; reduced mod the total).
    pub fn pick(&self, random: u64) -> &str {
        &self.clusters[self.pick_index(random)].0
    }

    /// The index of [`WeightedClusters::pick`]'s cluster.
    pub fn pick_index(&self, random: u64) -> usize {
        if self.clusters.len() == 1 {
            return 0;
        }
        let r = (random % self.total as u64) as u32;
        let i = self.clusters.partition_point(|(_, upper)| *upper <= r);
        i.min(self.clusters.len() - 1)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(|(n, _)| n.as_str())
    }
}

impl TryFrom<&XdsRouteConfiguration> for RouteConfig {
    type Error = ConfigError;

    fn try_from(rc: &XdsRouteConfiguration) -> Result<Self, ConfigError> {
        check_subset(rc, &subset::ROUTE_CONFIGURATION)?;
        super::check_envoy_rules(envoy_rules::route_configuration(rc))?;
        let mut domains = DomainIndex::default();
        let mut seen = HashMap::new();
        let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
        for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
            let vpath = format!("virtual_hosts[{vi}]");
            for (di, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                if seen.insert(d.clone(), vi).is_some() {
                    return Err(ConfigError::new(
                        format!("{vpath}.domains[{di}]"),
                        format!("only unique values for domains are permitted: {d}"),
                    ));
                }
                if d == "*" {
                    domains.any = Some(vi);
                } else if let Some(s) = d.strip_prefix('*') {
                    domains.suffixes.push((s.to_string(), vi));
                } else if let Some(p) = d.strip_suffix('*') {
                    domains.prefixes.push((p.to_string(), vi));
                } else {
                    domains.exact.insert(d, vi);
                }
            }
            let mut routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(ri, r)| {
                    Route::try_from(r).map_err(|e| e.under(&format!("{vpath}.routes[{ri}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // A route without a retry policy of its own takes its host's.
            if let Some(p) = &vh.retry_policy {
                let policy = Arc::new(
                    RetryPolicy::try_from(p)
                        .map_err(|e| e.under(&format!("{vpath}.retry_policy")))?,
                );
                for r in &mut routes {
                    if let Action::Forward(a) = &mut r.action
                        && a.retry.is_none()
                    {
                        a.retry = Some(policy.clone());
                    }
                }
            }
            virtual_hosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
                attempt_count_upstream: vh.include_request_attempt_count,
                attempt_count_downstream: vh.include_attempt_count_in_response,
            });
        }
        domains
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        domains
            .prefixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(RouteConfig {
            name: rc.name.clone(),
            virtual_hosts,
            validate_clusters: rc.validate_clusters.as_ref().map(|b| b.value),
            domains,
        })
    }
}

impl RouteConfig {
    /// With cluster validation on (`inline` route configs default to it), the
    /// first route naming a cluster that `known` does not know.
    pub fn check_clusters(
        &self,
        inline: bool,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        if !self.validate_clusters.unwrap_or(inline) {
            return Ok(());
        }
        for (vi, vh) in self.virtual_hosts.iter().enumerate() {
            for (ri, r) in vh.routes.iter().enumerate() {
                let Some(clusters) = r.action.clusters() else {
                    continue;
                };
                if let Some(name) = clusters.names().find(|n| !known(n)) {
                    return Err(ConfigError::new(
                        format!("virtual_hosts[{vi}].routes[{ri}].route"),
                        format!("unknown cluster '{name}'"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TryFrom<&xds_route::Route> for Route {
    type Error = ConfigError;

    fn try_from(r: &xds_route::Route) -> Result<Self, ConfigError> {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ConfigError::new("match", "required"))?;
        let matcher = RouteMatch::try_from(m).map_err(|e| e.under("match"))?;
        let action = match &r.action {
            Some(xds_route::route::Action::Route(a)) => {
                Action::Forward(RouteAction::try_from(a).map_err(|e| e.under("route"))?)
            }
            Some(xds_route::route::Action::Redirect(rd)) => {
                Action::Redirect(redirect(rd).map_err(|e| e.under("redirect"))?)
            }
            Some(xds_route::route::Action::DirectResponse(d)) => {
                Action::DirectResponse(direct_response(d).map_err(|e| e.under("direct_response"))?)
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "action",
                    "only route, redirect and direct_response actions are supported",
                ));
            }
            None => return Err(ConfigError::new("route", "required")),
        };
        let headers = LevelHeaders::parse(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?;
        let mut faults = Vec::new();
        let mut cors = Vec::new();
        let mut rbac = Vec::new();
        let mut names: Vec<&String> = r.typed_per_filter_config.keys().collect();
        names.sort();
        for name in names {
            let at = format!("typed_per_filter_config[{name}]");
            let any = &r.typed_per_filter_config[name];
            if any.type_url.ends_with(super::cors::POLICY_TYPE) {
                let proto: CorsProto = super::decode_any(any, &at)?;
                let config = CorsConfig::try_from(&proto).map_err(|e| e.under(&at))?;
                cors.push((name.clone(), Arc::new(config)));
                continue;
            }
            if any.type_url.ends_with(super::rbac::PER_ROUTE_TYPE) {
                use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
                let proto: RbacPerRoute = super::decode_any(any, &at)?;
                let config =
                    super::rbac::RbacPerRoute::try_from(&proto).map_err(|e| e.under(&at))?;
                rbac.push((name.clone(), Arc::new(config)));
                continue;
            }
            let proto: FaultProto = super::decode_any(any, &at)?;
            let config = FaultConfig::try_from(&proto).map_err(|e| e.under(&at))?;
            faults.push((name.clone(), Arc::new(config)));
        }
        Ok(Route {
            name: r.name.clone(),
            matcher,
            action,
            headers,
            faults,
            cors,
            rbac,
        })
    }
}

impl TryFrom<&xds_route::RouteMatch> for RouteMatch {
    type Error = ConfigError;

    fn try_from(m: &xds_route::RouteMatch) -> Result<Self, ConfigError> {
        use xds_route::route_match::PathSpecifier;
        let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
        let lower = |s: &str| {
            if case_sensitive {
                s.to_string()
            } else {
                s.to_ascii_lowercase()
            }
        };
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(lower(p)),
            Some(PathSpecifier::Path(p)) => PathMatch::Path(lower(p)),
            Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(
                anchored(&r.regex, !case_sensitive).map_err(|e| e.under("safe_regex"))?,
            ),
            _ => {
                return Err(ConfigError::new(
                    "path_specifier",
                    "prefix, path or safe_regex required",
                ));
            }
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_matcher(h).map_err(|e| e.under(&format!("headers[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let query_parameters = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| query_matcher(q).map_err(|e| e.under(&format!("query_parameters[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteMatch {
            path,
            case_sensitive,
            headers,
            query_parameters,
        })
    }
}

fn anchored(re: &str, ignore_case: bool) -> Result<Regex, ConfigError> {
    let flags = if ignore_case { "(?i)" } else { "" };
    Regex::new(&format!("{flags}^(?:{re})$"))
        .map_err(|e| ConfigError::new("regex", format!("invalid regex: {e}")))
}

// The deprecated direct matchers (exact_match, ...) are still accepted by Envoy.
#[allow(deprecated)]
pub(crate) fn header_matcher(h: &xds_route::HeaderMatcher) -> Result<HeaderMatcher, ConfigError> {
    use xds_route::header_matcher::HeaderMatchSpecifier as S;
    let kind = match &h.header_match_specifier {
        None => HeaderMatch::Present(true),
        Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(S::ExactMatch(v)) => HeaderMatch::String(StringMatch::Exact(v.clone(), false)),
        Some(S::PrefixMatch(v)) => HeaderMatch::String(StringMatch::Prefix(v.clone(), false)),
        Some(S::SuffixMatch(v)) => HeaderMatch::String(StringMatch::Suffix(v.clone(), false)),
        Some(S::ContainsMatch(v)) => HeaderMatch::String(StringMatch::Contains(v.clone(), false)),
        Some(S::SafeRegexMatch(r)) => HeaderMatch::String(StringMatch::Regex(
            anchored(&r.regex, false).map_err(|e| e.under("safe_regex_match"))?,
        )),
        Some(S::StringMatch(s)) => {
            HeaderMatch::String(string_match(s).map_err(|e| e.under("string_match"))?)
        }
        Some(_) => return Err(ConfigError::new("header_match_specifier", "unsupported")),
    };
    if h.name.is_empty() {
        return Err(ConfigError::new("name", "required"));
    }
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn query_matcher(
    q: &xds_route::QueryParameterMatcher,
) -> Result<QueryParameterMatcher, ConfigError> {
    use xds_route::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let string_match = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(s)) => Some(string_match(s).map_err(|e| e.under("string_match"))?),
        Some(S::PresentMatch(true)) => None,
        _ => {
            return Err(ConfigError::new(
                "query_parameter_match_specifier",
                "string_match or present_match: true required",
            ));
        }
    };
    Ok(QueryParameterMatcher {
        name: q.name.clone(),
        string_match,
    })
}

pub(crate) fn string_match(s: &matcher::StringMatcher) -> Result<StringMatch, ConfigError> {
    use matcher::string_matcher::MatchPattern as P;
    let ic = s.ignore_case;
    let fold = |v: &String| {
        if ic {
            v.to_ascii_lowercase()
        } else {
            v.clone()
        }
    };
    Ok(match &s.match_pattern {
        Some(P::Exact(v)) => StringMatch::Exact(fold(v), ic),
        Some(P::Prefix(v)) => StringMatch::Prefix(fold(v), ic),
        Some(P::Suffix(v)) => StringMatch::Suffix(fold(v), ic),
        Some(P::Contains(v)) => StringMatch::Contains(fold(v), ic),
        Some(P::SafeRegex(r)) => {
            StringMatch::Regex(anchored(&r.regex, false).map_err(|e| e.under("safe_regex"))?)
        }
        _ => return Err(ConfigError::new("match_pattern", "unsupported")),
    })
}

impl TryFrom<&xds_route::RouteAction> for RouteAction {
    type Error = ConfigError;

    fn try_from(a: &xds_route::RouteAction) -> Result<Self, ConfigError> {
        use xds_route::route_action::ClusterSpecifier;
        let mut cluster_headers = Vec::new();
        let clusters = match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => WeightedClusters::single(c),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let list = w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                    .collect();
                let wc = WeightedClusters::new(list).map_err(|e| e.under("weighted_clusters"))?;
                for (i, c) in w.clusters.iter().enumerate() {
                    cluster_headers.push(
                        LevelHeaders::parse(
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                        )
                        .map_err(|e| e.under(&format!("weighted_clusters.clusters[{i}]")))?,
                    );
                }
                if cluster_headers.iter().all(Option::is_none) {
                    cluster_headers.clear();
                }
                #[allow(deprecated)]
                if let Some(total) = &w.total_weight
                    && total.value != wc.total
                {
                    return Err(ConfigError::new(
                        "weighted_clusters.total_weight",
                        format!("is {} but the weights sum to {}", total.value, wc.total),
                    ));
                }
                wc
            }
            _ => {
                return Err(ConfigError::new(
                    "cluster_specifier",
                    "cluster or weighted_clusters required",
                ));
            }
        };
        let timeout = match &a.timeout {
            None => Some(DEFAULT_ROUTE_TIMEOUT),
            Some(d) => Some(duration(d, "timeout")?).filter(|d| !d.is_zero()),
        };
        let retry = match &a.retry_policy {
            Some(p) => Some(Arc::new(
                RetryPolicy::try_from(p).map_err(|e| e.under("retry_policy"))?,
            )),
            None => None,
        };
        use xds_route::route_action::HostRewriteSpecifier;
        let path = match (&a.prefix_rewrite, &a.regex_rewrite) {
            (p, Some(_)) if !p.is_empty() => {
                return Err(ConfigError::new(
                    "regex_rewrite",
                    "only one of prefix_rewrite and regex_rewrite may be set",
                ));
            }
            (p, None) if !p.is_empty() => Some(PathRewrite::Prefix(p.clone())),
            (_, Some(r)) => {
                let pattern = r
                    .pattern
                    .as_ref()
                    .ok_or_else(|| ConfigError::new("regex_rewrite.pattern", "required"))?;
                let re = Regex::new(&pattern.regex).map_err(|e| {
                    ConfigError::new("regex_rewrite.pattern.regex", format!("invalid regex: {e}"))
                })?;
                Some(PathRewrite::Regex(re, re2_substitution(&r.substitution)))
            }
            _ => None,
        };
        let host = match &a.host_rewrite_specifier {
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(
                http::HeaderValue::from_str(h)
                    .map_err(|_| ConfigError::new("host_rewrite_literal", "not a valid host"))?,
            ),
            Some(_) => {
                return Err(ConfigError::new(
                    "host_rewrite_specifier",
                    "only host_rewrite_literal is supported",
                ));
            }
            None => None,
        };
        let rewrite = (path.is_some() || host.is_some()).then(|| Arc::new(Rewrite { path, host }));
        #[allow(deprecated)]
        let mut grpc_timeout = match &a.max_grpc_timeout {
            Some(d) => Some(Some(duration(d, "max_grpc_timeout")?).filter(|d| !d.is_zero())),
            None => None,
        };
        if let Some(m) = &a.max_stream_duration {
            if let Some(d) = &m.max_stream_duration
                && !duration(d, "max_stream_duration.max_stream_duration")?.is_zero()
            {
                return Err(ConfigError::new(
                    "max_stream_duration.max_stream_duration",
                    "only 0s (no limit) is supported",
                ));
            }
            if let Some(d) = &m.grpc_timeout_header_max {
                let d = duration(d, "max_stream_duration.grpc_timeout_header_max")?;
                grpc_timeout = Some(Some(d).filter(|d| !d.is_zero()));
            }
        }
        let mirrors = a
            .request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = format!("request_mirror_policies[{i}]");
                if m.cluster.is_empty() {
                    return Err(ConfigError::new(format!("{at}.cluster"), "required"));
                }
                let share = match &m.runtime_fraction {
                    Some(f) => super::fault::Fraction::parse(
                        f.default_value.as_ref(),
                        &format!("{at}.runtime_fraction.default_value"),
                    )?,
                    None => super::fault::Fraction {
                        numerator: 1,
                        denominator: 1,
                    },
                };
                Ok(Mirror {
                    cluster: m.cluster.clone(),
                    share,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteAction {
            clusters,
            timeout,
            cluster_headers,
            retry,
            rewrite,
            grpc_timeout,
            mirrors,
            hash_policy: super::hash_policy::parse(&a.hash_policy)?,
        })
    }
}

fn redirect(rd: &xds_route::RedirectAction) -> Result<Redirect, ConfigError> {
    use xds_route::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let status = match C::try_from(rd.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => return Err(ConfigError::new("response_code", "unknown code")),
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path = match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) if !p.is_empty() => Some(PathRedirect::Path(p.clone())),
        Some(P::PrefixRewrite(p)) => Some(PathRedirect::Prefix(p.clone())),
        Some(P::PathRedirect(_)) | None => None,
        Some(_) => return Err(ConfigError::new("path_rewrite_specifier", "unsupported")),
    };
    let port = match rd.port_redirect {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| ConfigError::new("port_redirect", "out of range"))?),
    };
    Ok(Redirect {
        scheme,
        host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
        port,
        path,
        strip_query: rd.strip_query,
        status,
    })
}

fn direct_response(d: &xds_route::DirectResponseAction) -> Result<DirectResponse, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| ConfigError::new("status", "value must be inside range [100, 600)"))?;
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => bytes::Bytes::new(),
        Some(Specifier::InlineString(s)) => bytes::Bytes::from(s.clone()),
        Some(Specifier::InlineBytes(b)) => bytes::Bytes::from(b.clone()),
        Some(_) => return Err(ConfigError::new("body", "only inline bodies are supported")),
    };
    Ok(DirectResponse { status, body })
}
