//! Istio's rules for the networking.istio.io kinds.

use std::collections::BTreeSet;

use super::Ctx;
use super::common::*;
use crate::networking::*;

/// Longest regex accepted (Envoy's RE2 program size is bounded as well).
const MAX_REGEX_LEN: usize = 1024;

const PROTOCOLS: [&str; 12] = [
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
    "HBONE",
];

fn check_protocol(cx: &mut Ctx, path: &str, protocol: Option<&str>, required: bool) {
    match protocol {
        None | Some("") if required => cx.err(path, "protocol is required"),
        None | Some("") => {}
        Some(p) => {
            if !PROTOCOLS.iter().any(|k| k.eq_ignore_ascii_case(p)) {
                cx.err(
                    path,
                    format!(
                        "unrecognized protocol `{p}` (expected one of {})",
                        PROTOCOLS.join(", ")
                    ),
                );
            }
        }
    }
}

// ---------------------------------------------------------------- VirtualService

pub(super) fn virtual_service(cx: &mut Ctx, vs: &VirtualService) {
    let delegate = vs.hosts.is_empty();
    if delegate && !vs.gateways.is_empty() {
        cx.err(
            "spec.gateways",
            "a VirtualService without hosts is a delegate and must not set gateways",
        );
    }
    let applies_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    let mut seen = BTreeSet::new();
    for (i, h) in vs.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        check_host(cx, &path, h.split_once('/').map_or(h, |(_, h)| h));
        if h == "*" && applies_to_mesh {
            cx.err(
                &path,
                "wildcard host `*` is not allowed for virtual services bound to the mesh gateway",
            );
        }
        if !seen.insert(h.as_str()) {
            cx.err(&path, format!("duplicate host `{h}`"));
        }
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        check_gateway_ref(cx, &format!("spec.gateways[{i}]"), g);
    }
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        cx.err(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    let mut names = BTreeSet::new();
    for (i, r) in vs.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        if let Some(n) = &r.name
            && !names.insert(n.as_str())
        {
            cx.warn(
                format!("{path}.name"),
                format!("route name `{n}` is not unique"),
            );
        }
        http_route(cx, &path, r, delegate);
    }
    for (i, r) in vs.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            cx.err(
                format!("{path}.match"),
                "TLS route must have at least one match condition",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{path}.match[{j}]");
            if m.sni_hosts.is_empty() {
                cx.err(
                    format!("{mp}.sniHosts"),
                    "TLS match must have at least one SNI host",
                );
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let sp = format!("{mp}.sniHosts[{k}]");
                check_host(cx, &sp, sni);
                if !vs.hosts.is_empty() && !vs.hosts.iter().any(|h| host_covers(h, sni)) {
                    cx.err(
                        &sp,
                        format!("the SNI host `{sni}` is not a subset of any of the virtual service hosts"),
                    );
                }
            }
            for (k, s) in m.destination_subnets.iter().enumerate() {
                check_ip_or_cidr(cx, &format!("{mp}.destinationSubnets[{k}]"), s);
            }
            if let Some(p) = m.port {
                check_port(cx, &format!("{mp}.port"), p);
            }
            check_labels(cx, &format!("{mp}.sourceLabels"), &m.source_labels);
        }
        route_destinations(cx, &path, &r.route);
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{path}.match[{j}]");
            for (k, s) in m.destination_subnets.iter().enumerate() {
                check_ip_or_cidr(cx, &format!("{mp}.destinationSubnets[{k}]"), s);
            }
            if let Some(s) = &m.source_subnet {
                check_ip_or_cidr(cx, &format!("{mp}.sourceSubnet"), s);
            }
            if let Some(p) = m.port {
                check_port(cx, &format!("{mp}.port"), p);
            }
            check_labels(cx, &format!("{mp}.sourceLabels"), &m.source_labels);
        }
        route_destinations(cx, &path, &r.route);
    }
    check_export_to(cx, &vs.export_to);
}

/// Whether VirtualService host `h` covers SNI `sni` (same, or a wildcard over it).
fn host_covers(h: &str, sni: &str) -> bool {
    if h == "*" || h == sni {
        return true;
    }
    match h.strip_prefix('*') {
        Some(suffix) => sni.ends_with(suffix) || sni.strip_prefix('*') == Some(suffix),
        None => false,
    }
}

fn http_route(cx: &mut Ctx, path: &str, r: &HttpRoute, delegate_vs: bool) {
    if r.websocket_upgrade.is_some() {
        cx.warn(
            format!("{path}.websocketUpgrade"),
            "websocketUpgrade is obsolete and ignored: WebSocket upgrades are always allowed",
        );
    }
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ];
    let n = actions.iter().filter(|a| **a).count();
    if n == 0 {
        cx.err(
            path,
            "HTTP route, redirect, directResponse or delegate is required",
        );
    }
    if !r.route.is_empty() && r.redirect.is_some() {
        cx.err(path, "HTTP route cannot contain both route and redirect");
    }
    if r.direct_response.is_some() && (!r.route.is_empty() || r.redirect.is_some()) {
        cx.err(
            path,
            "directResponse cannot be combined with route or redirect",
        );
    }
    if r.delegate.is_some() {
        if delegate_vs {
            cx.err(
                format!("{path}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if !r.route.is_empty() || r.redirect.is_some() {
            cx.err(
                path,
                "HTTP route cannot contain both delegate and route or redirect",
            );
        }
    }
    if r.redirect.is_some() && r.rewrite.is_some() {
        cx.err(
            path,
            "HTTP route rule cannot contain both rewrite and redirect",
        );
    }
    if r.redirect.is_some() && r.fault.is_some() {
        cx.err(path, "HTTP route cannot contain both fault and redirect");
    }
    for (i, m) in r.matches.iter().enumerate() {
        let mp = format!("{path}.match[{i}]");
        for (name, hm) in m.headers.iter().chain(&m.without_headers) {
            if !is_header_name(name) && !name.starts_with("@request.auth.claims.") {
                cx.err(
                    format!("{mp}.headers.{name}"),
                    format!("invalid header name `{name}`"),
                );
            }
            if let StringMatch::Regex(re) = hm
                && re.len() > MAX_REGEX_LEN
            {
                cx.err(
                    format!("{mp}.headers.{name}"),
                    format!("regex is longer than {MAX_REGEX_LEN} characters"),
                );
            }
        }
        if let Some(p) = m.port {
            check_port(cx, &format!("{mp}.port"), p);
        }
        check_labels(cx, &format!("{mp}.sourceLabels"), &m.source_labels);
        if matches!(&m.uri, Some(StringMatch::Present)) {
            cx.err(
                format!("{mp}.uri"),
                "`uri` match must set one of `exact`, `prefix` or `regex`",
            );
        }
        for (field, sm) in [
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if matches!(sm, Some(StringMatch::Present)) {
                cx.err(
                    format!("{mp}.{field}"),
                    format!("`{field}` match must set one of `exact`, `prefix` or `regex`"),
                );
            }
        }
    }
    http_route_destinations(cx, path, &r.route);
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            cx.err(
                format!("{path}.rewrite"),
                "rewrite may set only one of `uri` or `uriRegexRewrite`",
            );
        }
        if let Some(uri) = &rw.uri
            && uri.is_empty()
            && rw.authority.is_none()
        {
            cx.err(
                format!("{path}.rewrite"),
                "rewrite must specify uri, authority or uriRegexRewrite",
            );
        }
    }
    if let Some(rd) = &r.redirect {
        if rd.uri.is_none()
            && rd.authority.is_none()
            && rd.scheme.is_none()
            && rd.port.is_none()
            && rd.derive_port.is_none()
            && rd.prefix_rewrite.is_none()
        {
            cx.err(
                format!("{path}.redirect"),
                "redirect must specify URI, authority, scheme, port or derivePort",
            );
        }
        if let Some(code) = rd.redirect_code
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            cx.err(
                format!("{path}.redirect.redirectCode"),
                format!("redirect code {code} is not valid (use 301, 302, 303, 307 or 308)"),
            );
        }
        if let Some(p) = rd.port {
            check_port(cx, &format!("{path}.redirect.port"), p);
        }
    }
    if let Some(dr) = &r.direct_response
        && !(200..=599).contains(&dr.status)
    {
        cx.err(
            format!("{path}.directResponse.status"),
            format!(
                "directResponse status must be in range 200 - 599 (got {})",
                dr.status
            ),
        );
    }
    if let Some(t) = r.timeout {
        // Istio allows 0 (no timeout); anything else must be whole milliseconds or more.
        if !t.get().is_zero() {
            check_duration_min_1ms(cx, &format!("{path}.timeout"), Some(t));
        }
    }
    if let Some(rt) = &r.retries {
        let rp = format!("{path}.retries");
        if rt.attempts < 0 {
            cx.err(format!("{rp}.attempts"), "attempts cannot be negative");
        }
        check_duration_min_1ms(cx, &format!("{rp}.perTryTimeout"), rt.per_try_timeout);
        check_duration_min_1ms(cx, &format!("{rp}.backoff"), rt.backoff);
        // As Istio's validation: each comma-separated entry as written (no
        // trimming, so `5xx, reset` is refused) must be an Envoy retry
        // condition or an HTTP status code Go knows.
        if let Some(on) = rt.retry_on.as_deref().filter(|s| !s.is_empty()) {
            for policy in on.split(',') {
                if !is_retry_policy(policy) {
                    cx.err(
                        format!("{rp}.retryOn"),
                        format!("`{policy}` is not a valid retryOn policy"),
                    );
                }
            }
        }
    }
    if let Some(f) = &r.fault {
        let fp = format!("{path}.fault");
        if f.delay.is_none() && f.abort.is_none() {
            cx.err(&fp, "fault must have at least delay or abort");
        }
        if let Some(d) = &f.delay {
            if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                cx.err(format!("{fp}.delay"), "delay must set `fixedDelay`");
            }
            check_duration_min_1ms(cx, &format!("{fp}.delay.fixedDelay"), d.fixed_delay);
            check_duration_min_1ms(
                cx,
                &format!("{fp}.delay.exponentialDelay"),
                d.exponential_delay,
            );
            if let Some(p) = d.percentage {
                check_percent(cx, &format!("{fp}.delay.percentage.value"), p.value);
            }
            if let Some(p) = d.percent
                && !(0..=100).contains(&p)
            {
                cx.err(
                    format!("{fp}.delay.percent"),
                    format!("percentage must be in [0, 100] (got {p})"),
                );
            }
        }
        if let Some(a) = &f.abort {
            if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
                cx.err(
                    format!("{fp}.abort"),
                    "abort must set one of `httpStatus`, `grpcStatus` or `http2Error`",
                );
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                cx.err(
                    format!("{fp}.abort.httpStatus"),
                    format!("httpStatus must be in range 200 - 599 (got {s})"),
                );
            }
            if let Some(p) = a.percentage {
                check_percent(cx, &format!("{fp}.abort.percentage.value"), p.value);
            }
        }
    }
    if let Some(m) = &r.mirror {
        destination(cx, &format!("{path}.mirror"), m);
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        destination(
            cx,
            &format!("{path}.mirrors[{i}].destination"),
            &m.destination,
        );
        if let Some(p) = m.percentage {
            check_percent(
                cx,
                &format!("{path}.mirrors[{i}].percentage.value"),
                p.value,
            );
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        cx.err(path, "`mirror` and `mirrors` cannot both be set");
    }
    if let Some(p) = r.mirror_percentage {
        check_percent(cx, &format!("{path}.mirrorPercentage.value"), p.value);
    }
    if let Some(p) = r.mirror_percent
        && p > 100
    {
        cx.err(
            format!("{path}.mirrorPercent"),
            format!("percentage must be in [0, 100] (got {p})"),
        );
    }
    if let Some(c) = &r.cors_policy {
        for (i, m) in c.allow_methods.iter().enumerate() {
            const METHODS: [&str; 9] = [
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            ];
            if !METHODS.contains(&m.as_str()) && m != "*" {
                cx.err(
                    format!("{path}.corsPolicy.allowMethods[{i}]"),
                    format!("`{m}` is not a valid HTTP method"),
                );
            }
        }
        for (i, h) in c.allow_headers.iter().chain(&c.expose_headers).enumerate() {
            if !is_header_name(h) && h != "*" {
                cx.err(
                    format!("{path}.corsPolicy"),
                    format!("invalid header name `{h}` (entry {i})"),
                );
            }
        }
    }
    for (op, headers) in [
        (
            "request",
            r.headers.as_ref().and_then(|h| h.request.as_ref()),
        ),
        (
            "response",
            r.headers.as_ref().and_then(|h| h.response.as_ref()),
        ),
    ] {
        if let Some(h) = headers {
            header_operations(cx, &format!("{path}.headers.{op}"), h);
        }
    }
}

fn header_operations(cx: &mut Ctx, path: &str, h: &HeaderOperations) {
    for name in h.set.keys().chain(h.add.keys()).chain(&h.remove) {
        if !is_header_name(name) {
            cx.err(path, format!("invalid header name `{name}`"));
        }
        if name.eq_ignore_ascii_case("host") || name.starts_with(':') {
            cx.err(path, format!("header `{name}` cannot be modified"));
        }
    }
}

/// Istio's `supportedRetryOnPolicies` (Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` conditions), or an HTTP status code.
fn is_retry_policy(p: &str) -> bool {
    const POLICIES: [&str; 16] = [
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    ];
    POLICIES.contains(&p) || p.parse::<u32>().is_ok_and(is_http_status)
}

/// A status code Go's `http.StatusText` names: what Istio takes as a
/// status code in `retryOn` (anything else there is a retry condition).
pub fn is_http_status(code: u32) -> bool {
    matches!(code,
        100..=103
        | 200..=208
        | 226
        | 300..=305
        | 307
        | 308
        | 400..=418
        | 421..=426
        | 428
        | 429
        | 431
        | 451
        | 500..=508
        | 510
        | 511)
}

fn destination(cx: &mut Ctx, path: &str, d: &Destination) {
    if d.host.is_empty() {
        cx.err(format!("{path}.host"), "destination host is required");
    } else {
        check_host(cx, &format!("{path}.host"), &d.host);
        if d.host == "*" || d.host.starts_with('*') {
            cx.err(
                format!("{path}.host"),
                "destination host cannot be a wildcard",
            );
        }
    }
    if let Some(s) = &d.subset
        && !is_dns1123_label(s)
    {
        cx.err(
            format!("{path}.subset"),
            format!("subset name `{s}` is invalid: must be a DNS-1123 label"),
        );
    }
    if let Some(p) = d.port {
        check_port(cx, &format!("{path}.port.number"), p.number);
    }
}

fn weights(cx: &mut Ctx, path: &str, weights: &[i32]) {
    let mut total: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        if *w < 0 {
            cx.err(
                format!("{path}.route[{i}].weight"),
                format!("weight {w} < 0"),
            );
        }
        total += i64::from(*w);
    }
    if weights.len() > 1 {
        if total == 0 {
            cx.err(format!("{path}.route"), "total destination weight = 0");
        } else if total != 100 {
            cx.warn(
                format!("{path}.route"),
                format!("destination weights sum to {total}, not 100; they are used as relative proportions"),
            );
        }
    }
}

fn http_route_destinations(cx: &mut Ctx, path: &str, route: &[HttpRouteDestination]) {
    for (i, d) in route.iter().enumerate() {
        destination(
            cx,
            &format!("{path}.route[{i}].destination"),
            &d.destination,
        );
        if let Some(h) = &d.headers {
            if let Some(r) = &h.request {
                header_operations(cx, &format!("{path}.route[{i}].headers.request"), r);
            }
            if let Some(r) = &h.response {
                header_operations(cx, &format!("{path}.route[{i}].headers.response"), r);
            }
        }
    }
    weights(
        cx,
        path,
        &route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
}

fn route_destinations(cx: &mut Ctx, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        cx.err(format!("{path}.route"), "route is required");
    }
    for (i, d) in route.iter().enumerate() {
        destination(
            cx,
            &format!("{path}.route[{i}].destination"),
            &d.destination,
        );
    }
    weights(
        cx,
        path,
        &route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------- DestinationRule

pub(super) fn destination_rule(cx: &mut Ctx, dr: &DestinationRule) {
    if dr.host.is_empty() {
        cx.err("spec.host", "host is required");
    } else {
        check_host(cx, "spec.host", &dr.host);
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(cx, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            cx.err(format!("{path}.name"), "subset name is required");
        } else if !is_dns1123_label(&s.name) {
            cx.err(
                format!("{path}.name"),
                format!(
                    "subset name `{}` is invalid: must be a DNS-1123 label",
                    s.name
                ),
            );
        }
        if !names.insert(s.name.as_str()) {
            cx.err(
                format!("{path}.name"),
                format!("duplicate subset name `{}`", s.name),
            );
        }
        check_labels(cx, &format!("{path}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(cx, &format!("{path}.trafficPolicy"), tp);
        }
    }
    if let Some(sel) = &dr.workload_selector {
        check_labels(cx, "spec.workloadSelector.matchLabels", &sel.match_labels);
        if dr.export_to.iter().any(|e| e != ".") {
            cx.err(
                "spec.exportTo",
                "a DestinationRule with workloadSelector can only be exported to its own namespace (`.`)",
            );
        }
    }
    check_export_to(cx, &dr.export_to);
}

fn traffic_policy(cx: &mut Ctx, path: &str, tp: &TrafficPolicy) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        cx.err(path, "traffic policy must have at least one field");
    }
    policy_parts(
        cx,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        match p.port {
            None => cx.err(format!("{pp}.port"), "port traffic policy must have a port"),
            Some(port) => {
                check_port(cx, &format!("{pp}.port.number"), port.number);
                if !ports.insert(port.number) {
                    cx.err(
                        format!("{pp}.port"),
                        format!("duplicate port number {}", port.number),
                    );
                }
            }
        }
        if p.load_balancer.is_none()
            && p.connection_pool.is_none()
            && p.outlier_detection.is_none()
            && p.tls.is_none()
        {
            cx.err(&pp, "port traffic policy must have at least one field");
        }
        policy_parts(
            cx,
            &pp,
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
        );
    }
    if let Some(t) = &tp.tunnel {
        if let Some(proto) = &t.protocol
            && !matches!(proto.as_str(), "CONNECT" | "POST")
        {
            cx.err(
                format!("{path}.tunnel.protocol"),
                format!("tunnel protocol `{proto}` must be CONNECT or POST"),
            );
        }
        if t.target_host.is_empty() {
            cx.err(
                format!("{path}.tunnel.targetHost"),
                "targetHost is required",
            );
        }
        check_port(cx, &format!("{path}.tunnel.targetPort"), t.target_port);
    }
    if let Some(rb) = &tp.retry_budget
        && let Some(p) = rb.percent
    {
        check_percent(cx, &format!("{path}.retryBudget.percent"), p);
    }
}

fn policy_parts(
    cx: &mut Ctx,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let lp = format!("{path}.loadBalancer");
        if let Some(ch) = &lb.consistent_hash {
            if let Some(c) = &ch.http_cookie
                && c.name.is_empty()
            {
                cx.err(
                    format!("{lp}.consistentHash.httpCookie.name"),
                    "name required for HttpCookie",
                );
            }
            if ch.http_header_name.as_deref() == Some("") {
                cx.err(
                    format!("{lp}.consistentHash.httpHeaderName"),
                    "header name required for hashing",
                );
            }
            if let Some(m) = &ch.maglev
                && let Some(t) = m.table_size
                && (t > MAX_MAGLEV_TABLE || !is_prime(t))
            {
                cx.err(
                    format!("{lp}.consistentHash.maglev.tableSize"),
                    format!("table size {t} must be a prime number at most {MAX_MAGLEV_TABLE}"),
                );
            }
        }
        if let Some(w) = &lb.warmup {
            let wp = format!("{lp}.warmup");
            if w.duration.get().is_zero() {
                cx.err(
                    format!("{wp}.duration"),
                    "Required value: warmup duration must be set and at least 1ms",
                );
            }
            if let Some(p) = w.minimum_percent
                && !(0.0..=100.0).contains(&p)
            {
                cx.err(
                    format!("{wp}.minimumPercent"),
                    format!("Invalid value: {p}: must be in [0, 100]"),
                );
            }
            if let Some(a) = w.aggression
                && a < 1.0
            {
                cx.err(
                    format!("{wp}.aggression"),
                    format!("Invalid value: {a}: must be at least 1"),
                );
            }
        }
        check_duration_min_1ms(
            cx,
            &format!("{lp}.warmupDurationSecs"),
            lb.warmup_duration_secs,
        );
        if let Some(loc) = &lb.locality_lb_setting {
            locality_lb_setting(cx, &format!("{lp}.localityLbSetting"), loc, od);
        }
    }
    if let Some(pool) = pool {
        let pp = format!("{path}.connectionPool");
        if pool.tcp.is_none() && pool.http.is_none() {
            cx.err(&pp, "must set either http or tcp settings");
        }
        if let Some(t) = &pool.tcp {
            if t.max_connections.is_some_and(|v| v < 0) {
                cx.err(
                    format!("{pp}.tcp.maxConnections"),
                    "max connections must be non-negative",
                );
            }
            check_duration_min_1ms(cx, &format!("{pp}.tcp.connectTimeout"), t.connect_timeout);
            check_duration_min_1ms(
                cx,
                &format!("{pp}.tcp.maxConnectionDuration"),
                t.max_connection_duration,
            );
            if let Some(k) = &t.tcp_keepalive {
                check_duration_min_1ms(cx, &format!("{pp}.tcp.tcpKeepalive.time"), k.time);
                check_duration_min_1ms(cx, &format!("{pp}.tcp.tcpKeepalive.interval"), k.interval);
            }
        }
        if let Some(h) = &pool.http {
            for (name, v) in [
                ("http1MaxPendingRequests", h.http1_max_pending_requests),
                ("http2MaxRequests", h.http2_max_requests),
                ("maxRequestsPerConnection", h.max_requests_per_connection),
                ("maxRetries", h.max_retries),
                ("maxConcurrentStreams", h.max_concurrent_streams),
            ] {
                if v.is_some_and(|v| v < 0) {
                    cx.err(
                        format!("{pp}.http.{name}"),
                        format!("{name} must be non-negative"),
                    );
                }
            }
            check_duration_min_1ms(cx, &format!("{pp}.http.idleTimeout"), h.idle_timeout);
        }
    }
    if let Some(od) = od {
        let op = format!("{path}.outlierDetection");
        if od.consecutive_errors.is_some_and(|v| v < 0) {
            cx.err(
                format!("{op}.consecutiveErrors"),
                "consecutive errors must be non-negative",
            );
        }
        check_duration_min_1ms(cx, &format!("{op}.interval"), od.interval);
        check_duration_min_1ms(cx, &format!("{op}.baseEjectionTime"), od.base_ejection_time);
        for (name, v) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(v) = v
                && !(0..=100).contains(&v)
            {
                cx.err(
                    format!("{op}.{name}"),
                    format!("{name} must be in range [0, 100] (got {v})"),
                );
            }
        }
    }
    if let Some(tls) = tls {
        let tp = format!("{path}.tls");
        let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
        let has_cred = tls
            .credential_name
            .as_deref()
            .is_some_and(|c| !c.is_empty());
        if mode == ClientTlsMode::Mutual && !has_cred {
            if tls.client_certificate.as_deref().unwrap_or("").is_empty() {
                cx.err(
                    format!("{tp}.clientCertificate"),
                    "client certificate required for mutual tls",
                );
            }
            if tls.private_key.as_deref().unwrap_or("").is_empty() {
                cx.err(
                    format!("{tp}.privateKey"),
                    "private key required for mutual tls",
                );
            }
        }
        if mode == ClientTlsMode::IstioMutual
            && (tls.client_certificate.is_some()
                || tls.private_key.is_some()
                || tls.ca_certificates.is_some()
                || has_cred)
        {
            cx.err(&tp, "cannot specify client certificates or CA certificate or credentialName with ISTIO_MUTUAL");
        }
    }
}

/// Envoy's largest Maglev table (a prime).
const MAX_MAGLEV_TABLE: u64 = 5_000_011;

/// Trial division; callers bound `n` (at most [`MAX_MAGLEV_TABLE`]).
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i.saturating_mul(i) <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

// ---------------------------------------------------------------- Gateway

pub(super) fn gateway(cx: &mut Ctx, gw: &Gateway) {
    if gw.servers.is_empty() {
        cx.err("spec.servers", "gateway must have at least one server");
    }
    check_labels(cx, "spec.selector", &gw.selector);
    let mut port_names = BTreeSet::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        server(cx, &path, s);
        if let Some(name) = s.port.name.as_deref().filter(|n| !n.is_empty())
            && !port_names.insert(name)
        {
            cx.err(
                format!("{path}.port.name"),
                format!("port names in servers must be unique: duplicate name `{name}`"),
            );
        }
    }
}

fn server(cx: &mut Ctx, path: &str, s: &Server) {
    if s.hosts.is_empty() {
        cx.err(
            format!("{path}.hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, h) in s.hosts.iter().enumerate() {
        let hp = format!("{path}.hosts[{i}]");
        let (ns, host) = h.split_once('/').unwrap_or(("", h));
        if h.matches('/').count() > 1 {
            cx.err(
                &hp,
                format!("host `{h}` must be of the form `namespace/dnsName`"),
            );
            continue;
        }
        if !ns.is_empty() && ns != "." && ns != "*" && ns != "~" && !is_dns1123_label(ns) {
            cx.err(&hp, format!("invalid namespace `{ns}` in host `{h}`"));
        }
        check_host(cx, &hp, host);
    }
    let pp = format!("{path}.port");
    if s.port.number == 0 {
        cx.err(&pp, "port is required (number between 1-65535)");
    } else {
        check_port(cx, &format!("{pp}.number"), s.port.number);
    }
    check_protocol(
        cx,
        &format!("{pp}.protocol"),
        s.port.protocol.as_deref(),
        true,
    );
    if let Some(b) = &s.bind
        && !b.starts_with("unix://")
        && b.parse::<std::net::IpAddr>().is_err()
    {
        cx.err(
            format!("{path}.bind"),
            format!("`{b}` is not a valid IP address or unix:// path"),
        );
    }
    let proto = s
        .port
        .protocol
        .as_deref()
        .unwrap_or("")
        .to_ascii_uppercase();
    let tls_proto = proto == "HTTPS" || proto == "TLS";
    match &s.tls {
        None if tls_proto => cx.err(
            format!("{path}.tls"),
            format!("server must have TLS settings for HTTPS/TLS protocols ({proto})"),
        ),
        None => {}
        Some(tls) => server_tls(cx, &format!("{path}.tls"), tls, tls_proto),
    }
}

fn server_tls(cx: &mut Ctx, path: &str, tls: &ServerTlsSettings, tls_proto: bool) {
    if tls.https_redirect && tls.mode.is_none() {
        return; // Plain HTTP server redirecting to HTTPS.
    }
    if !tls_proto && tls.mode.is_some() && !tls.https_redirect {
        cx.warn(
            path,
            "TLS settings on a plaintext (non HTTPS/TLS) port are ignored",
        );
        return;
    }
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    let has_cred = tls
        .credential_name
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        || !tls.credential_names.is_empty()
        || !tls.tls_certificates.is_empty();
    if matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) && !has_cred
    {
        if tls.server_certificate.as_deref().unwrap_or("").is_empty() {
            cx.err(
                format!("{path}.serverCertificate"),
                format!("{mode:?} TLS requires a server certificate (or credentialName)"),
            );
        }
        if tls.private_key.as_deref().unwrap_or("").is_empty() {
            cx.err(
                format!("{path}.privateKey"),
                format!("{mode:?} TLS requires a private key (or credentialName)"),
            );
        }
        if matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
            && tls.ca_certificates.as_deref().unwrap_or("").is_empty()
        {
            cx.err(
                format!("{path}.caCertificates"),
                "MUTUAL TLS requires a client CA bundle (caCertificates or credentialName)",
            );
        }
    }
    if tls.credential_name.is_some() && !tls.credential_names.is_empty() {
        cx.err(
            path,
            "only one of credentialName or credentialNames can be set",
        );
    }
    if tls.credential_names.len() > 2 {
        cx.err(
            format!("{path}.credentialNames"),
            "at most 2 credential names (one RSA and one ECDSA)",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocolVersion::TlsAuto
        && max != TlsProtocolVersion::TlsAuto
        && (min as u8) > (max as u8)
    {
        cx.err(
            path,
            "minProtocolVersion must not be greater than maxProtocolVersion",
        );
    }
}

// ---------------------------------------------------------------- ServiceEntry

pub(super) fn service_entry(cx: &mut Ctx, se: &ServiceEntry) {
    if se.hosts.is_empty() {
        cx.err(
            "spec.hosts",
            "Required value: ServiceEntry must have at least one host",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, h) in se.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if h == "*" {
            cx.err(&path, "hostname cannot be wildcard `*`");
            continue;
        }
        check_host(cx, &path, h);
        if !seen.insert(h.as_str()) {
            cx.err(&path, format!("Duplicate value: host `{h}`"));
        }
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        cx.err(
            "spec",
            "only one of WorkloadSelector or Endpoints can be set",
        );
    }
    if let Some(sel) = &se.workload_selector {
        check_labels(cx, "spec.workloadSelector.labels", &sel.labels);
    }
    let resolution = se.resolution.unwrap_or(Resolution::None);
    let mut seen = BTreeSet::new();
    for (i, a) in se.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        check_ip_or_cidr(cx, &path, a);
        if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            cx.err(
                &path,
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
            );
        }
        if !seen.insert(a.as_str()) {
            cx.err(&path, format!("Duplicate value: address `{a}`"));
        }
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        check_port(cx, &format!("{path}.number"), p.number);
        if let Some(t) = p.target_port {
            check_port(cx, &format!("{path}.targetPort"), t);
        }
        if !numbers.insert(p.number) {
            cx.err(
                &path,
                format!("port number cannot be duplicated: {}", p.number),
            );
        }
        match p.name.as_deref() {
            None | Some("") => cx.err(format!("{path}.name"), "port name is required"),
            Some(n) => {
                if !names.insert(n) {
                    cx.err(
                        format!("{path}.name"),
                        format!("port name cannot be duplicated: `{n}`"),
                    );
                }
            }
        }
        check_protocol(
            cx,
            &format!("{path}.protocol"),
            p.protocol.as_deref(),
            false,
        );
    }
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                cx.err("spec.endpoints", "NONE mode cannot set endpoints");
            }
        }
        Resolution::Static => {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                cx.warn("spec.endpoints", "STATIC resolution without endpoints or workloadSelector: the service has no endpoints");
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                if let Some(a) = &e.address
                    && !a.starts_with("unix://")
                    && a.parse::<std::net::IpAddr>().is_err()
                {
                    cx.err(
                        format!("spec.endpoints[{i}].address"),
                        format!(
                            "STATIC endpoint address `{a}` must be an IP address or unix:// path"
                        ),
                    );
                }
            }
        }
        Resolution::Dns | Resolution::DynamicDns => {
            if se.endpoints.is_empty() {
                for (i, h) in se.hosts.iter().enumerate() {
                    if h.starts_with('*') && resolution == Resolution::Dns {
                        cx.err(format!("spec.hosts[{i}]"), "DNS resolution requires a non-wildcard host when there are no endpoints");
                    }
                }
            }
        }
        Resolution::DnsRoundRobin => {
            if se.endpoints.len() > 1 {
                cx.err(
                    "spec.endpoints",
                    "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
                );
            }
        }
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload_entry(cx, &path, e, false);
        for name in e.ports.keys() {
            if !se.ports.iter().any(|p| p.name.as_deref() == Some(name)) {
                cx.err(
                    format!("{path}.ports.{name}"),
                    format!("endpoint port `{name}` is not defined by the service entry"),
                );
            }
        }
    }
    if !se.subject_alt_names.is_empty() && se.subject_alt_names.iter().any(String::is_empty) {
        cx.err(
            "spec.subjectAltNames",
            "subject alt names must not be empty",
        );
    }
    check_export_to(cx, &se.export_to);
}

// ---------------------------------------------------------------- WorkloadEntry / WorkloadGroup

pub(super) fn workload_entry(cx: &mut Ctx, path: &str, we: &WorkloadEntry, standalone: bool) {
    let address = we.address.as_deref().unwrap_or("");
    if address.is_empty() {
        if standalone && we.network.as_deref().unwrap_or("").is_empty() {
            cx.err(format!("{path}.address"), "Address is required");
        }
    } else if let Some(uds) = address.strip_prefix("unix://") {
        if !(uds.starts_with('/') || uds.starts_with('@')) {
            cx.err(
                format!("{path}.address"),
                "UDS must be an absolute path or abstract socket",
            );
        } else if uds.ends_with('/') {
            cx.err(format!("{path}.address"), "UDS may not be a dir");
        }
        if !we.ports.is_empty() {
            cx.err(format!("{path}.ports"), "UDS may not include ports");
        }
    } else if address.len() > 256 {
        cx.err(
            format!("{path}.address"),
            "address must be at most 256 characters",
        );
    } else if address.parse::<std::net::IpAddr>().is_err() && !is_wildcard_domain(address) {
        cx.err(
            format!("{path}.address"),
            format!("invalid address `{address}`: must be an IP, a DNS name or unix:// path"),
        );
    }
    workload_ports_labels(cx, path, we);
}

fn workload_ports_labels(cx: &mut Ctx, path: &str, we: &WorkloadEntry) {
    for (name, port) in &we.ports {
        if name.len() >= 63 || !is_port_name(name) {
            cx.err(format!("{path}.ports"), format!("Invalid value: port name `{name}`: alphanumerics and `-` only, less than 63 characters"));
        }
        check_port(cx, &format!("{path}.ports.{name}"), *port);
    }
    check_labels(cx, &format!("{path}.labels"), &we.labels);
    if let Some(sa) = &we.service_account
        && (sa.len() > 253 || !sa.split('.').all(is_dns1123_label))
    {
        cx.err(
            format!("{path}.serviceAccount"),
            format!("invalid service account `{sa}`"),
        );
    }
}

fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn workload_group(cx: &mut Ctx, wg: &WorkloadGroup) {
    let t = &wg.template;
    if let Some(a) = t.address.as_deref().filter(|a| !a.is_empty()) {
        if let Some(uds) = a.strip_prefix("unix://") {
            if !(uds.starts_with('/') || uds.starts_with('@')) || uds.ends_with('/') {
                cx.err(
                    "spec.template.address",
                    "UDS must be an absolute path or abstract socket, not a dir",
                );
            }
        } else {
            cx.warn(
                "spec.template.address",
                "address is set per workload; the template's is ignored",
            );
        }
    }
    workload_ports_labels(cx, "spec.template", t);
    if let Some(m) = &wg.metadata {
        check_labels(cx, "spec.metadata.labels", &m.labels);
    }
    if let Some(p) = &wg.probe {
        let set = [
            p.http_get.is_some(),
            p.tcp_socket.is_some(),
            p.exec.is_some(),
            p.grpc.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            cx.err(
                "spec.probe",
                "set at most one of `httpGet`, `tcpSocket`, `exec` or `grpc`",
            );
        }
        for (name, v) in [
            ("initialDelaySeconds", p.initial_delay_seconds),
            ("timeoutSeconds", p.timeout_seconds),
            ("periodSeconds", p.period_seconds),
            ("successThreshold", p.success_threshold),
            ("failureThreshold", p.failure_threshold),
        ] {
            if v.is_some_and(|v| v < 0) {
                cx.err(
                    format!("spec.probe.{name}"),
                    format!("{name} must be non-negative"),
                );
            }
        }
        if let Some(h) = &p.http_get {
            check_port(cx, "spec.probe.httpGet.port", h.port);
            if let Some(s) = &h.scheme
                && !matches!(s.as_str(), "" | "HTTP" | "HTTPS")
            {
                cx.err(
                    "spec.probe.httpGet.scheme",
                    format!("scheme `{s}` must be HTTP or HTTPS"),
                );
            }
            for (i, hd) in h.http_headers.iter().enumerate() {
                if hd.name.is_empty()
                    || !hd
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    cx.err(
                        format!("spec.probe.httpGet.httpHeaders[{i}].name"),
                        format!("spec.probe.httpGet.httpHeaders[{i}].name in body should match '^[-_A-Za-z0-9]+$' (got `{}`)", hd.name),
                    );
                }
            }
        }
        if let Some(t) = &p.tcp_socket {
            check_port(cx, "spec.probe.tcpSocket.port", t.port);
        }
        if let Some(g) = &p.grpc {
            check_port(cx, "spec.probe.grpc.port", g.port);
        }
        if let Some(e) = &p.exec
            && e.command.is_empty()
        {
            cx.err("spec.probe.exec.command", "exec probe needs a command");
        }
    }
}

// ---------------------------------------------------------------- Sidecar

pub(super) fn sidecar(cx: &mut Ctx, sc: &Sidecar) {
    if let Some(sel) = &sc.workload_selector {
        if sel.labels.is_empty() {
            cx.err(
                "spec.workloadSelector.labels",
                "sidecar workloadSelector cannot have empty labels",
            );
        }
        check_labels(cx, "spec.workloadSelector.labels", &sel.labels);
    }
    let mut ports = BTreeSet::new();
    for (i, l) in sc.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        if l.port.number == 0 {
            cx.err(format!("{path}.port"), "sidecar: port is required");
        } else {
            check_port(cx, &format!("{path}.port.number"), l.port.number);
        }
        check_protocol(
            cx,
            &format!("{path}.port.protocol"),
            l.port.protocol.as_deref(),
            false,
        );
        if !ports.insert(l.port.number) {
            cx.err(
                format!("{path}.port"),
                format!(
                    "sidecar: ports on IP bound listeners must be unique ({})",
                    l.port.number
                ),
            );
        }
        if let Some(ep) = &l.default_endpoint
            && !ep.is_empty()
            && !ep.starts_with("unix://")
        {
            let ok = ep.rsplit_once(':').is_some_and(|(host, port)| {
                matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]" | "")
                    && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
            });
            if !ok {
                cx.err(format!("{path}.defaultEndpoint"), format!("invalid defaultEndpoint `{ep}`: expected 127.0.0.1:PORT, 0.0.0.0:PORT or unix:///path"));
            }
        }
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        cx.warn(
            "spec",
            "sidecar has no ingress, egress or outbound traffic policy: it changes nothing",
        );
    }
    let mut catch_all = 0;
    for (i, e) in sc.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        if e.hosts.is_empty() {
            cx.err(
                format!("{path}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
        }
        if e.port.is_none() {
            catch_all += 1;
        }
        if let Some(p) = &e.port {
            check_port(cx, &format!("{path}.port.number"), p.number);
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let hp = format!("{path}.hosts[{j}]");
            let Some((ns, host)) = h.split_once('/') else {
                cx.err(
                    &hp,
                    format!("sidecar: host `{h}` must be of form namespace/dnsName"),
                );
                continue;
            };
            if !(ns == "." || ns == "*" || ns == "~" || is_dns1123_label(ns)) {
                cx.err(
                    &hp,
                    format!("sidecar: invalid namespace `{ns}` in host `{h}`"),
                );
            }
            check_host(cx, &hp, host);
        }
    }
    if catch_all > 1 {
        cx.err(
            "spec.egress",
            "sidecar: only one egress listener can omit the port (catch-all)",
        );
    }
    if let Some(p) = &sc.outbound_traffic_policy
        && let Some(ep) = &p.egress_proxy
    {
        if p.mode != Some(OutboundTrafficMode::AllowAny) {
            cx.err(
                "spec.outboundTrafficPolicy.egressProxy",
                "egress proxy can only be set with mode ALLOW_ANY",
            );
        }
        destination(cx, "spec.outboundTrafficPolicy.egressProxy", ep);
    }
}

/// Istio's `ValidateLocalityLbSetting`: `distribute` and `failover` are
/// exclusive, as are `failover` and topology labels in `failoverPriority`;
/// each `to` weight is 1..=100 and they sum to 100; localities are
/// `region[/zone[/subzone]]` with at most one trailing `*` and do not
/// overlap; failover names two different plain regions; failover without
/// outlier detection is a warning (it never happens).
fn locality_lb_setting(
    cx: &mut Ctx,
    path: &str,
    loc: &crate::networking::LocalityLbSetting,
    od: Option<&OutlierDetection>,
) {
    const TOPOLOGY: [&str; 3] = [
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.istio.io/subzone",
    ];
    if !loc.distribute.is_empty() && !loc.failover.is_empty() {
        cx.err(
            path,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !loc.failover.is_empty()
        && let Some(l) = loc
            .failover_priority
            .iter()
            .find(|l| TOPOLOGY.contains(&l.as_str()))
    {
        cx.err(
            format!("{path}.failoverPriority"),
            format!(
                "can not simultaneously set 'failover' and topology label '{l}' in 'failover_priority'"
            ),
        );
        return;
    }
    for (i, d) in loc.distribute.iter().enumerate() {
        let dp = format!("{path}.distribute[{i}]");
        if let Some((to, _)) = d.to.iter().find(|(_, w)| **w == 0 || **w > 100) {
            cx.err(
                format!("{dp}.to[{to}]"),
                "locality weight must be in range [1, 100]",
            );
            return;
        }
        let total: u64 = d.to.values().map(|v| u64::from(*v)).sum();
        if total != 100 {
            cx.err(
                format!("{dp}.to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        if let Err(e) = localities(d.to.keys().map(String::as_str)) {
            cx.err(format!("{dp}.to"), e);
        }
    }
    if let Err(e) = localities(loc.distribute.iter().map(|d| d.from.as_str())) {
        cx.err(format!("{path}.distribute"), e);
    }
    if (!loc.failover.is_empty() || !loc.failover_priority.is_empty()) && od.is_none() {
        cx.warn(
            path,
            "outlier detection policy must be provided for failover",
        );
    }
    for (i, f) in loc.failover.iter().enumerate() {
        let fp = format!("{path}.failover[{i}]");
        if f.from == f.to {
            cx.err(
                &fp,
                "locality lb failover settings must specify different regions",
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            cx.err(&fp, "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            cx.err(
                &fp,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// Istio's `validateLocalities`: the first problem among `localities`.
fn localities<'a>(localities: impl Iterator<Item = &'a str>) -> Result<(), String> {
    // What earlier entries cover: (region, zone, subzone), "*" for all.
    let mut seen: Vec<[&str; 3]> = Vec::new();
    for l in localities {
        let stars = l.matches('*').count();
        if stars > 1 || (stars == 1 && !l.ends_with('*')) {
            return Err(format!(
                "locality {l} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let overlap = || format!("locality {l} overlap with previous specified ones");
        if seen.iter().any(|s| s[0] == "*") {
            return Err(overlap());
        }
        let items: Vec<&str> = l.splitn(3, '/').collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!(
                "locality {l} must not contain empty region/zone/subzone info"
            ));
        }
        let (region, zone, subzone) = (
            items[0],
            items.get(1).copied().unwrap_or("*"),
            items.get(2).copied().unwrap_or("*"),
        );
        let clash = seen.iter().any(|s| {
            s[0] == region
                && (items.len() == 1
                    || s[1] == "*"
                    || (s[1] == zone && (items.len() == 2 || s[2] == "*" || s[2] == subzone)))
        });
        if clash {
            return Err(overlap());
        }
        seen.push([region, zone, subzone]);
    }
    Ok(())
}
