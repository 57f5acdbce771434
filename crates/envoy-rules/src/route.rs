//! RouteConfiguration (RDS, or inline in an HCM) rules: virtual hosts and
//! their domains (unique across the table, wildcards only at an end), routes
//! with a match and exactly one action, and each action's own rules
//! (clusters, weights, redirect codes, direct-response status).

use std::collections::HashSet;

use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, redirect_action::RedirectResponseCode,
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
};

use crate::{Path, Report, Violation, collect, non_negative};

/// Every rule a route table breaks.
pub fn route_configuration(rc: &RouteConfiguration) -> Vec<Violation> {
    collect(|r| check(rc, &Path::ROOT, r))
}

pub(crate) fn check(rc: &RouteConfiguration, at: &Path<'_>, r: &mut Report<'_>) {
    let vhs = at.f("virtual_hosts");
    let mut domains: HashSet<String> = HashSet::new();
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let vat = vhs.i(vi);
        r.min_len(&vat.f("name"), &vh.name);
        let dat = vat.f("domains");
        if vh.domains.is_empty() {
            r.bad(&dat, "value must contain at least 1 item(s)");
        }
        for (di, d) in vh.domains.iter().enumerate() {
            let at = dat.i(di);
            if d.is_empty() {
                r.min_len(&at, d);
                continue;
            }
            if !header_value(d) {
                r.bad(
                    &at,
                    "value does not match regex pattern for HTTP header values",
                );
            }
            let inner = d.strip_prefix('*').unwrap_or(d);
            let inner = inner.strip_suffix('*').unwrap_or(inner);
            if d.len() > 1 && inner.contains('*') {
                r.bad(
                    &at,
                    format!("invalid domain {d}: a wildcard may only start or end it"),
                );
            }
            if !domains.insert(d.to_ascii_lowercase()) {
                r.bad(
                    &at,
                    format!(
                        "only unique values for domains are permitted. Duplicate entry of domain {} in route {}",
                        d.to_ascii_lowercase(),
                        rc.name
                    ),
                );
            }
        }
        let rs = vat.f("routes");
        for (ri, route) in vh.routes.iter().enumerate() {
            check_route(route, &rs.i(ri), r);
        }
    }
}

fn check_route(route: &Route, at: &Path<'_>, r: &mut Report<'_>) {
    match &route.r#match {
        None => r.required(&at.f("match")),
        Some(m) => check_match(m, &at.f("match"), r),
    }
    match &route.action {
        None => r.bad(
            &at.f("action"),
            "exactly one of route, redirect, direct_response is required",
        ),
        Some(Action::Route(a)) => check_action(a, &at.f("route"), r),
        Some(Action::Redirect(rd)) => {
            let at = at.f("redirect");
            if RedirectResponseCode::try_from(rd.response_code).is_err() {
                r.bad(
                    &at.f("response_code"),
                    "value must be one of the defined enum values",
                );
            }
            if !rd.host_redirect.is_empty() && !header_value(&rd.host_redirect) {
                r.bad(
                    &at.f("host_redirect"),
                    "value does not match regex pattern for HTTP header values",
                );
            }
            if rd.port_redirect > 65535 {
                r.bad(
                    &at.f("port_redirect"),
                    "value must be less than or equal to 65535",
                );
            }
            use envoy_types::pb::envoy::config::route::v3::redirect_action::PathRewriteSpecifier as P;
            match &rd.path_rewrite_specifier {
                Some(P::PathRedirect(p)) if !header_value(p) => r.bad(
                    &at.f("path_redirect"),
                    "value does not match regex pattern for HTTP header values",
                ),
                Some(P::PrefixRewrite(p)) if !header_value(p) => r.bad(
                    &at.f("prefix_rewrite"),
                    "value does not match regex pattern for HTTP header values",
                ),
                _ => {}
            }
        }
        Some(Action::DirectResponse(d)) => {
            if !(100..600).contains(&d.status) {
                r.bad(
                    &at.f("direct_response").f("status"),
                    "value must be inside range [100, 600)",
                );
            }
        }
        Some(_) => {}
    }
}

fn check_match(m: &RouteMatch, at: &Path<'_>, r: &mut Report<'_>) {
    match &m.path_specifier {
        None => r.required(&at.f("path_specifier")),
        Some(PathSpecifier::SafeRegex(re)) => regex(&re.regex, &at.f("safe_regex").f("regex"), r),
        Some(_) => {}
    }
    let hs = at.f("headers");
    for (i, h) in m.headers.iter().enumerate() {
        let at = hs.i(i);
        r.min_len(&at.f("name"), &h.name);
        if !h.name.is_empty() && !header_value(&h.name) {
            r.bad(
                &at.f("name"),
                "value does not match regex pattern for HTTP header names",
            );
        }
        use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as S;
        if let Some(S::StringMatch(sm)) = &h.header_match_specifier {
            string_matcher(sm, &at.f("string_match"), r);
        }
    }
    let qs = at.f("query_parameters");
    for (i, q) in m.query_parameters.iter().enumerate() {
        let at = qs.i(i);
        r.min_len(&at.f("name"), &q.name);
        if q.name.len() > 1024 {
            r.bad(&at.f("name"), "value length must be at most 1024 bytes");
        }
        use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        if let Some(S::StringMatch(sm)) = &q.query_parameter_match_specifier {
            string_matcher(sm, &at.f("string_match"), r);
        }
    }
}

fn string_matcher(
    sm: &envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher,
    at: &Path<'_>,
    r: &mut Report<'_>,
) {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
    match &sm.match_pattern {
        None => r.required(&at.f("match_pattern")),
        Some(P::Prefix(s)) => r.min_len(&at.f("prefix"), s),
        Some(P::Suffix(s)) => r.min_len(&at.f("suffix"), s),
        Some(P::Contains(s)) => r.min_len(&at.f("contains"), s),
        Some(P::SafeRegex(re)) => regex(&re.regex, &at.f("safe_regex").f("regex"), r),
        Some(_) => {}
    }
}

fn regex(re: &str, at: &Path<'_>, r: &mut Report<'_>) {
    if re.is_empty() {
        r.min_len(at, re);
    } else if let Err(e) = regex::Regex::new(re) {
        r.bad(at, format!("invalid regex: {e}"));
    }
}

fn check_action(a: &RouteAction, at: &Path<'_>, r: &mut Report<'_>) {
    match &a.cluster_specifier {
        None => r.required(&at.f("cluster_specifier")),
        Some(ClusterSpecifier::Cluster(c)) => r.min_len(&at.f("cluster"), c),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let wat = at.f("weighted_clusters");
            let cs = wat.f("clusters");
            if w.clusters.is_empty() {
                r.bad(&cs, "value must contain at least 1 item(s)");
            }
            let mut sum: u64 = 0;
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() && c.cluster_header.is_empty() {
                    r.bad(
                        &cs.i(i).f("name"),
                        "either name or cluster_header must be set",
                    );
                }
                sum += u64::from(c.weight.as_ref().map_or(0, |w| w.value));
            }
            if !w.clusters.is_empty() && sum == 0 {
                r.bad(
                    &cs,
                    "sum of weights in the weighted_cluster must be greater than 0",
                );
            }
            if sum > u64::from(u32::MAX) {
                r.bad(&cs, "sum of weights overflows uint32");
            }
            #[allow(deprecated)]
            if let Some(total) = &w.total_weight
                && u64::from(total.value) != sum
            {
                r.bad(
                    &wat.f("total_weight"),
                    format!(
                        "sum of weights in the weighted_cluster should add up to {}",
                        total.value
                    ),
                );
            }
        }
        Some(_) => {}
    }
    non_negative(a.timeout.as_ref(), &at.f("timeout"), r);
}

/// PGV's `well_known_regex: HTTP_HEADER_VALUE, strict: false`: no NUL, CR or LF.
fn header_value(s: &str) -> bool {
    !s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n')
}
