//! Envoy's RBAC engine (`envoy.config.rbac.v3.RBAC`) compiled for the data
//! path, shared by `envoy.filters.http.rbac` and `envoy.filters.network.rbac`:
//! a policy matches when one of its permissions and one of its principals
//! match; ALLOW allows when a policy matches, DENY denies when one does, LOG
//! never denies. Policies are tried in name order (Envoy keeps them in an
//! ordered map), so the effective policy id is the first matching name.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::rbac::v3 as xds_rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;

use super::listener::Cidr;
use super::matcher::{MetadataMatcher, PathMatcher, UriTemplate};
use super::route::{HeaderMatch, HeaderMatcher, StringMatch, header_matcher, string_match};
use crate::downstream::Downstream;
use crate::error::ConfigError;
use crate::http::route_match::RequestView;
use crate::stream_info::DynamicMetadata;

pub const HTTP_FILTER_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub const NETWORK_FILTER_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const URI_TEMPLATE_TYPE: &str =
    "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// One `RBAC` rule set (the enforced or the shadow one).
#[derive(Debug)]
pub struct Rules {
    pub action: Action,
    /// By name, sorted.
    pub policies: Vec<(String, Policy)>,
}

#[derive(Debug)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

#[derive(Debug)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    UrlPath(PathMatcher),
    DestinationIp(Cidr),
    DestinationPort(u32),
    /// [start, end).
    DestinationPortRange(i32, i32),
    Metadata(MetadataMatcher),
    RequestedServerName(StringMatch),
    UriTemplate(UriTemplate),
}

#[derive(Debug)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// The TLS peer; None = any authenticated peer.
    Authenticated(Option<StringMatch>),
    /// `source_ip` (the connection's remote address).
    SourceIp(Cidr),
    DirectRemoteIp(Cidr),
    /// The downstream address after `x-forwarded-for` processing.
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(PathMatcher),
    Metadata(MetadataMatcher),
}

/// What a decision looks at. `request` is None for the network filter
/// (header and path matchers then see no headers).
pub struct Input<'a> {
    pub downstream: &'a Downstream,
    /// `remote_ip`: the peer, or the address `x-forwarded-for` names.
    pub remote_ip: IpAddr,
    pub request: Option<&'a RequestView<'a>>,
    pub metadata: &'a DynamicMetadata,
}

impl Rules {
    /// (allowed, effective policy id).
    pub fn evaluate<'r>(&'r self, input: &Input<'_>) -> (bool, Option<&'r str>) {
        let matched = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(input))
            .map(|(n, _)| n.as_str());
        match self.action {
            Action::Allow => (matched.is_some(), matched),
            Action::Deny => (matched.is_none(), matched),
            Action::Log => (true, matched),
        }
    }
}

impl Policy {
    fn matches(&self, input: &Input<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(input))
            && self.principals.iter().any(|p| p.matches(input))
    }
}

fn header_matches(h: &HeaderMatcher, input: &Input<'_>) -> bool {
    match input.request {
        Some(req) => h.matches(req),
        // No headers (network filter): the matcher's missing-header rule.
        None if h.treat_missing_as_empty => {
            let m = match &h.kind {
                HeaderMatch::Present(p) => *p,
                HeaderMatch::String(s) => s.matches(""),
            };
            m != h.invert
        }
        None => match h.kind {
            HeaderMatch::Present(p) => p == h.invert,
            HeaderMatch::String(_) => false,
        },
    }
}

fn path_of<'a>(input: &'a Input<'_>) -> Option<&'a str> {
    input.request.map(|r| r.path)
}

impl Permission {
    pub fn matches(&self, input: &Input<'_>) -> bool {
        let d = input.downstream;
        match self {
            Permission::Any => true,
            Permission::And(v) => v.iter().all(|p| p.matches(input)),
            Permission::Or(v) => v.iter().any(|p| p.matches(input)),
            Permission::Not(p) => !p.matches(input),
            Permission::Header(h) => header_matches(h, input),
            Permission::UrlPath(m) => path_of(input).is_some_and(|p| m.matches(p)),
            Permission::DestinationIp(c) => c.contains(d.destination.ip()),
            Permission::DestinationPort(p) => u32::from(d.destination.port()) == *p,
            Permission::DestinationPortRange(s, e) => {
                (*s..*e).contains(&i32::from(d.destination.port()))
            }
            Permission::Metadata(m) => m.matches(input.metadata),
            Permission::RequestedServerName(s) => {
                s.matches(d.tls.as_ref().and_then(|t| t.sni.as_deref()).unwrap_or(""))
            }
            Permission::UriTemplate(t) => path_of(input).is_some_and(|p| t.matches(p)),
        }
    }
}

impl Principal {
    pub fn matches(&self, input: &Input<'_>) -> bool {
        let d = input.downstream;
        match self {
            Principal::Any => true,
            Principal::And(v) => v.iter().all(|p| p.matches(input)),
            Principal::Or(v) => v.iter().any(|p| p.matches(input)),
            Principal::Not(p) => !p.matches(input),
            Principal::Authenticated(name) => {
                let Some(tls) = &d.tls else {
                    return false;
                };
                let Some(name) = name else {
                    return true;
                };
                // URI SANs, then DNS SANs, then the subject (as Envoy).
                match &tls.peer {
                    Some(cert) => {
                        cert.names.uris.iter().any(|u| name.matches(u))
                            || cert.names.dns.iter().any(|u| name.matches(u))
                            || name.matches(&cert.names.subject)
                    }
                    None => name.matches(""),
                }
            }
            Principal::SourceIp(c) | Principal::DirectRemoteIp(c) => c.contains(d.peer.ip()),
            Principal::RemoteIp(c) => c.contains(input.remote_ip),
            Principal::Header(h) => header_matches(h, input),
            Principal::UrlPath(m) => path_of(input).is_some_and(|p| m.matches(p)),
            Principal::Metadata(m) => m.matches(input.metadata),
        }
    }
}

/// A `CidrRange` as Envoy reads it: the prefix length defaults to 0 and the
/// address is masked to it.
fn cidr(c: &core::CidrRange) -> Result<Cidr, ConfigError> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        ConfigError::new(
            "address_prefix",
            format!("malformed IP address: {}", c.address_prefix),
        )
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value).min(max);
    Ok(Cidr {
        addr,
        len: len as u8,
    })
}

fn list<T, P>(
    items: &[P],
    field: &str,
    f: impl Fn(&P) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, p)| f(p).map_err(|e| e.under(&format!("{field}[{i}]"))))
        .collect()
}

fn uri_template(ext: &core::TypedExtensionConfig) -> Result<UriTemplate, ConfigError> {
    let Some(any) = &ext.typed_config else {
        return Err(ConfigError::new("typed_config", "required"));
    };
    if !any.type_url.ends_with(URI_TEMPLATE_TYPE) {
        let got = any.type_url.rsplit('/').next().unwrap_or_default();
        return Err(ConfigError::new(
            "typed_config",
            format!("unsupported type {got}"),
        ));
    }
    let t: UriTemplateMatchConfig = super::decode_any(any, "typed_config")?;
    UriTemplate::new(&t.path_template).map_err(|e| e.under("typed_config"))
}

impl TryFrom<&xds_rbac::Permission> for Permission {
    type Error = ConfigError;

    #[allow(deprecated)]
    fn try_from(p: &xds_rbac::Permission) -> Result<Self, ConfigError> {
        use xds_rbac::permission::Rule as R;
        let set = |s: &xds_rbac::permission::Set, at: &str| {
            list(&s.rules, "rules", |r| Permission::try_from(r)).map_err(|e| e.under(at))
        };
        Ok(match &p.rule {
            None => return Err(ConfigError::new("rule", "required")),
            Some(R::Any(true)) => Permission::Any,
            Some(R::Any(false)) => return Err(ConfigError::new("any", "must be true")),
            Some(R::AndRules(s)) => Permission::And(set(s, "and_rules")?),
            Some(R::OrRules(s)) => Permission::Or(set(s, "or_rules")?),
            Some(R::NotRule(n)) => Permission::Not(Box::new(
                Permission::try_from(n.as_ref()).map_err(|e| e.under("not_rule"))?,
            )),
            Some(R::Header(h)) => {
                Permission::Header(header_matcher(h).map_err(|e| e.under("header"))?)
            }
            Some(R::UrlPath(m)) => {
                Permission::UrlPath(PathMatcher::try_from(m).map_err(|e| e.under("url_path"))?)
            }
            Some(R::DestinationIp(c)) => {
                Permission::DestinationIp(cidr(c).map_err(|e| e.under("destination_ip"))?)
            }
            Some(R::DestinationPort(p)) => {
                if *p > 65535 {
                    return Err(ConfigError::new("destination_port", "must be <= 65535"));
                }
                Permission::DestinationPort(*p)
            }
            Some(R::DestinationPortRange(r)) => {
                if r.start < 0 || r.end > 65536 || r.start > r.end {
                    return Err(ConfigError::new(
                        "destination_port_range",
                        "start and end must be within [0, 65536] with start <= end",
                    ));
                }
                Permission::DestinationPortRange(r.start, r.end)
            }
            Some(R::Metadata(m)) => {
                Permission::Metadata(MetadataMatcher::try_from(m).map_err(|e| e.under("metadata"))?)
            }
            Some(R::RequestedServerName(s)) => Permission::RequestedServerName(
                string_match(s).map_err(|e| e.under("requested_server_name"))?,
            ),
            Some(R::UriTemplate(t)) => {
                Permission::UriTemplate(uri_template(t).map_err(|e| e.under("uri_template"))?)
            }
            Some(R::Matcher(_)) => return Err(ConfigError::new("matcher", "not supported")),
            Some(R::SourcedMetadata(_)) => {
                return Err(ConfigError::new("sourced_metadata", "not supported"));
            }
        })
    }
}

impl TryFrom<&xds_rbac::Principal> for Principal {
    type Error = ConfigError;

    #[allow(deprecated)]
    fn try_from(p: &xds_rbac::Principal) -> Result<Self, ConfigError> {
        use xds_rbac::principal::Identifier as I;
        let set = |s: &xds_rbac::principal::Set, at: &str| {
            list(&s.ids, "ids", |r| Principal::try_from(r)).map_err(|e| e.under(at))
        };
        Ok(match &p.identifier {
            None => return Err(ConfigError::new("identifier", "required")),
            Some(I::Any(true)) => Principal::Any,
            Some(I::Any(false)) => return Err(ConfigError::new("any", "must be true")),
            Some(I::AndIds(s)) => Principal::And(set(s, "and_ids")?),
            Some(I::OrIds(s)) => Principal::Or(set(s, "or_ids")?),
            Some(I::NotId(n)) => Principal::Not(Box::new(
                Principal::try_from(n.as_ref()).map_err(|e| e.under("not_id"))?,
            )),
            Some(I::Authenticated(a)) => Principal::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(string_match)
                    .transpose()
                    .map_err(|e| e.under("authenticated.principal_name"))?,
            ),
            Some(I::SourceIp(c)) => Principal::SourceIp(cidr(c).map_err(|e| e.under("source_ip"))?),
            Some(I::DirectRemoteIp(c)) => {
                Principal::DirectRemoteIp(cidr(c).map_err(|e| e.under("direct_remote_ip"))?)
            }
            Some(I::RemoteIp(c)) => Principal::RemoteIp(cidr(c).map_err(|e| e.under("remote_ip"))?),
            Some(I::Header(h)) => {
                Principal::Header(header_matcher(h).map_err(|e| e.under("header"))?)
            }
            Some(I::UrlPath(m)) => {
                Principal::UrlPath(PathMatcher::try_from(m).map_err(|e| e.under("url_path"))?)
            }
            Some(I::Metadata(m)) => {
                Principal::Metadata(MetadataMatcher::try_from(m).map_err(|e| e.under("metadata"))?)
            }
            Some(I::FilterState(_)) => {
                return Err(ConfigError::new("filter_state", "not supported"));
            }
            Some(I::SourcedMetadata(_)) => {
                return Err(ConfigError::new("sourced_metadata", "not supported"));
            }
            Some(I::Custom(_)) => return Err(ConfigError::new("custom", "not supported")),
        })
    }
}

impl TryFrom<&xds_rbac::Rbac> for Rules {
    type Error = ConfigError;

    fn try_from(r: &xds_rbac::Rbac) -> Result<Self, ConfigError> {
        let action = match xds_rbac::rbac::Action::try_from(r.action) {
            Ok(xds_rbac::rbac::Action::Allow) => Action::Allow,
            Ok(xds_rbac::rbac::Action::Deny) => Action::Deny,
            Ok(xds_rbac::rbac::Action::Log) => Action::Log,
            Err(_) => {
                return Err(ConfigError::new(
                    "action",
                    format!("unknown action {}", r.action),
                ));
            }
        };
        if r.audit_logging_options.is_some() {
            return Err(ConfigError::new("audit_logging_options", "not supported"));
        }
        let mut names: Vec<&String> = r.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let p = &r.policies[name];
            let at = format!("policies[{name}]");
            if p.condition.is_some() || p.checked_condition.is_some() {
                return Err(ConfigError::new(
                    format!("{at}.condition"),
                    "CEL conditions are not supported",
                ));
            }
            let permissions = list(&p.permissions, "permissions", |x| Permission::try_from(x))
                .map_err(|e| e.under(&at))?;
            let principals = list(&p.principals, "principals", |x| Principal::try_from(x))
                .map_err(|e| e.under(&at))?;
            if permissions.is_empty() || principals.is_empty() {
                return Err(ConfigError::new(
                    at,
                    "permissions and principals must each have at least one item",
                ));
            }
            policies.push((
                name.clone(),
                Policy {
                    permissions,
                    principals,
                },
            ));
        }
        Ok(Rules { action, policies })
    }
}

/// `envoy.filters.http.rbac` (and the `rbac` of an RBACPerRoute).
#[derive(Debug)]
pub struct HttpRbac {
    pub rules: Option<Rules>,
    pub rules_stat_prefix: String,
    pub shadow_rules: Option<Rules>,
    pub shadow_rules_stat_prefix: String,
}

impl TryFrom<&http_rbac::Rbac> for HttpRbac {
    type Error = ConfigError;

    fn try_from(r: &http_rbac::Rbac) -> Result<Self, ConfigError> {
        if r.matcher.is_some() || r.shadow_matcher.is_some() {
            return Err(ConfigError::new("matcher", "not supported (use rules)"));
        }
        if r.track_per_rule_stats {
            return Err(ConfigError::new("track_per_rule_stats", "not supported"));
        }
        Ok(HttpRbac {
            rules: r
                .rules
                .as_ref()
                .map(Rules::try_from)
                .transpose()
                .map_err(|e| e.under("rules"))?,
            rules_stat_prefix: r.rules_stat_prefix.clone(),
            shadow_rules: r
                .shadow_rules
                .as_ref()
                .map(Rules::try_from)
                .transpose()
                .map_err(|e| e.under("shadow_rules"))?,
            shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
        })
    }
}

/// `RBACPerRoute`: None = the filter is off on this route.
#[derive(Debug)]
pub struct RbacPerRoute(pub Option<HttpRbac>);

impl TryFrom<&http_rbac::RbacPerRoute> for RbacPerRoute {
    type Error = ConfigError;

    fn try_from(r: &http_rbac::RbacPerRoute) -> Result<Self, ConfigError> {
        Ok(RbacPerRoute(
            r.rbac
                .as_ref()
                .map(HttpRbac::try_from)
                .transpose()
                .map_err(|e| e.under("rbac"))?,
        ))
    }
}

/// `envoy.filters.network.rbac`.
#[derive(Debug)]
pub struct NetworkRbac {
    pub stat_prefix: String,
    pub rules: Option<Rules>,
    pub shadow_rules: Option<Rules>,
    pub shadow_rules_stat_prefix: String,
}

impl TryFrom<&net_rbac::Rbac> for NetworkRbac {
    type Error = ConfigError;

    fn try_from(r: &net_rbac::Rbac) -> Result<Self, ConfigError> {
        if r.matcher.is_some() || r.shadow_matcher.is_some() {
            return Err(ConfigError::new("matcher", "not supported (use rules)"));
        }
        if r.delay_deny.is_some() {
            return Err(ConfigError::new("delay_deny", "not supported"));
        }
        if r.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "must not be empty"));
        }
        // CONTINUOUS re-decides (and counts) on every read; Istio never
        // sets it, and the decision could not change here (connection-level
        // inputs only), so only the one-time mode is run.
        match net_rbac::rbac::EnforcementType::try_from(r.enforcement_type) {
            Ok(net_rbac::rbac::EnforcementType::OneTimeOnFirstByte) => {}
            _ => {
                return Err(ConfigError::new(
                    "enforcement_type",
                    "only ONE_TIME_ON_FIRST_BYTE is supported",
                ));
            }
        }
        Ok(NetworkRbac {
            stat_prefix: r.stat_prefix.clone(),
            rules: r
                .rules
                .as_ref()
                .map(Rules::try_from)
                .transpose()
                .map_err(|e| e.under("rules"))?,
            shadow_rules: r
                .shadow_rules
                .as_ref()
                .map(Rules::try_from)
                .transpose()
                .map_err(|e| e.under("shadow_rules"))?,
            shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::listener::{ListenerConfig, XdsListener};

    fn listener(http_filter: &str, network_filter: &str) -> Result<ListenerConfig, String> {
        let yaml = format!(
            r#"
name: l
address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
filter_chains:
- filters:
  {network_filter}
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: h
      rds: {{config_source: {{ads: {{}}}}, route_config_name: r}}
      http_filters:
      {http_filter}
      - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
"#
        );
        let l: XdsListener = xds::json::from_yaml(&yaml).expect("parses");
        ListenerConfig::try_from(&l).map_err(|e| e.to_string())
    }

    const HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    const NET: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

    #[test]
    fn bad_rbac_configs_are_refused_naming_the_field() {
        let ok = format!(
            r#"- {{name: envoy.filters.http.rbac, typed_config: {{"@type": {HTTP}, rules: {{policies: {{p: {{permissions: [{{header: {{name: x, string_match: {{safe_regex: {{regex: "a+"}}}}}}}}], principals: [{{any: true}}]}}}}}}}}}}"#
        );
        assert!(listener(&ok, "").is_ok());
        let err = listener(&ok.replace("a+", "a("), "").unwrap_err();
        assert!(
            err.starts_with("filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules.policies[p].permissions[0].header.string_match.safe_regex"),
            "{err}"
        );
        let empty = ok.replace("principals: [{any: true}]", "principals: []");
        assert!(listener(&empty, "").unwrap_err().contains("policies[p]"));
        let net = format!(
            r#"- {{name: envoy.filters.network.rbac, typed_config: {{"@type": {NET}, stat_prefix: t., enforcement_type: CONTINUOUS, rules: {{}}}}}}"#
        );
        let err = listener("", &net).unwrap_err();
        assert!(
            err.contains("filters[0].typed_config.enforcement_type"),
            "{err}"
        );
        let ok_net = net.replace("enforcement_type: CONTINUOUS, ", "");
        let l = listener("", &ok_net).unwrap();
        assert_eq!(l.filter_chains[0].network_auth.len(), 1);
        let before_tcp = listener(
            "",
            "- {name: envoy.filters.network.tcp_proxy, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}",
        )
        .unwrap_err();
        assert!(
            before_tcp.contains("filters[0].typed_config"),
            "{before_tcp}"
        );
    }
}
