//! Istio's rules for the security.istio.io kinds.

use std::collections::BTreeMap;

use super::Ctx;
use super::common::*;
use crate::networking::LabelSelector;
use crate::security::*;

fn selector(cx: &mut Ctx, sel: Option<&LabelSelector>) {
    if let Some(s) = sel {
        check_labels(cx, "spec.selector.matchLabels", &s.match_labels);
    }
}

fn target_refs(
    cx: &mut Ctx,
    sel: Option<&LabelSelector>,
    one: Option<&PolicyTargetReference>,
    many: &[PolicyTargetReference],
) {
    let set =
        usize::from(sel.is_some()) + usize::from(one.is_some()) + usize::from(!many.is_empty());
    if set > 1 {
        cx.err(
            "spec",
            "only one of targetRefs or selector can be set (selector, targetRef, targetRefs)",
        );
    }
    if many.len() > 16 {
        cx.err("spec.targetRefs", "at most 16 targetRefs");
    }
    let refs = one
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(
            many.iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (path, r) in refs {
        if r.name.is_empty() {
            cx.err(
                format!("{path}.name"),
                format!("{path}.name: Required value"),
            );
        }
        if r.kind.is_empty() {
            cx.err(
                format!("{path}.kind"),
                format!("{path}.kind: Required value"),
            );
        } else if r.kind.len() > 63
            || !r.kind.bytes().all(|b| b.is_ascii_alphanumeric())
            || !r.kind.as_bytes()[0].is_ascii_uppercase()
        {
            cx.err(format!("{path}.kind"), format!("{path}.kind in body should match '^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$' (got `{}`)", r.kind));
        }
        if let Some(g) = &r.group
            && !g.is_empty()
            && (g.len() > 253 || !g.split('.').all(is_dns1123_label))
        {
            cx.err(
                format!("{path}.group"),
                format!("{path}.group in body should match a DNS subdomain (got `{g}`)"),
            );
        }
        if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            cx.err(
                format!("{path}.namespace"),
                "cross namespace referencing is not currently supported",
            );
        }
        let supported = matches!(
            (r.group.as_deref().unwrap_or(""), r.kind.as_str()),
            ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
                | ("" | "core", "Service")
                | ("networking.istio.io", "ServiceEntry")
        );
        if !supported && !r.kind.is_empty() && r.kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
            cx.err(&path, format!("targetRef must be a gateway.networking.k8s.io Gateway/GatewayClass, a core Service or a networking.istio.io ServiceEntry (got {}/{})", r.group.as_deref().unwrap_or(""), r.kind));
        }
    }
}

// ---------------------------------------------------------------- PeerAuthentication

pub(super) fn peer_authentication(cx: &mut Ctx, pa: &PeerAuthentication) {
    selector(cx, pa.selector.as_ref());
    let Some(ports) = &pa.port_level_mtls else {
        return;
    };
    if ports.is_empty() {
        cx.err(
            "spec.portLevelMtls",
            "spec.portLevelMtls in body should have at least 1 properties",
        );
    }
    if pa
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
    {
        cx.err("spec.portLevelMtls", "portLevelMtls requires selector (non-empty matchLabels): it cannot apply to a whole namespace or mesh");
    }
    for key in ports.keys() {
        let path = format!("spec.portLevelMtls.{key}");
        match key.parse::<i64>() {
            Err(_) => cx.err(
                &path,
                format!("port `{key}` is not a number (type conversion error from string)"),
            ),
            Ok(p) if !(1..=65535).contains(&p) => {
                cx.err(&path, format!("port must be between 1-65535 (got {p})"));
            }
            Ok(_) => {}
        }
    }
}

// ---------------------------------------------------------------- AuthorizationPolicy

/// Condition keys Istio's AuthorizationPolicy understands.
const CONDITION_KEYS: [&str; 13] = [
    "request.headers[",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "destination.ip",
    "destination.port",
];

fn condition_key_ok(key: &str) -> bool {
    if key == "connection.sni" || key.starts_with("experimental.envoy.filters.") {
        return true;
    }
    CONDITION_KEYS.iter().any(|k| {
        if let Some(prefix) = k.strip_suffix('[') {
            key.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('['))
                .is_some_and(|r| r.len() > 1 && r.ends_with(']'))
        } else {
            key == *k
        }
    })
}

/// `*` only at the start or the end (or alone).
fn check_wildcards(cx: &mut Ctx, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            cx.err(format!("{path}[{i}]"), "value must not be empty");
        }
        let inner = v.trim_start_matches('*').trim_end_matches('*');
        if v.len() > 1 && (inner.contains('*') || v.starts_with('*') && v.ends_with('*')) {
            cx.err(
                format!("{path}[{i}]"),
                format!("`{v}`: wildcard `*` is only supported as a prefix or suffix"),
            );
        }
    }
}

pub(super) fn authorization_policy(cx: &mut Ctx, ap: &AuthorizationPolicy) {
    selector(cx, ap.selector.as_ref());
    target_refs(
        cx,
        ap.selector.as_ref(),
        ap.target_ref.as_ref(),
        &ap.target_refs,
    );
    let action = ap.action.unwrap_or(AuthorizationAction::Allow);
    match (action, &ap.provider) {
        (AuthorizationAction::Custom, None) => {
            cx.err("spec.provider", "a CUSTOM policy must set provider")
        }
        (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
            cx.err("spec.provider.name", "provider name must not be empty")
        }
        (AuthorizationAction::Custom, Some(_)) => {}
        (_, Some(_)) => cx.err(
            "spec.provider",
            "provider can only be set with action CUSTOM",
        ),
        (_, None) => {}
    }
    if ap.rules.is_empty() && action == AuthorizationAction::Deny {
        cx.warn(
            "spec.rules",
            "a DENY policy without rules matches nothing and denies nothing",
        );
    }
    if ap.rules.is_empty() && action == AuthorizationAction::Custom {
        cx.warn(
            "spec.rules",
            "a CUSTOM policy without rules never calls the provider",
        );
    }
    if ap.rules.len() > 512 {
        cx.err("spec.rules", "at most 512 rules");
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let fp = format!("{rp}.from[{j}].source");
            let Some(s) = &from.source else {
                cx.err(&fp, "`from.source` must not be nil");
                continue;
            };
            source(cx, &fp, s);
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tp = format!("{rp}.to[{j}].operation");
            let Some(op) = &to.operation else {
                cx.err(&tp, "`to.operation` must not be nil");
                continue;
            };
            operation(cx, &tp, op);
        }
        for (j, c) in rule.when.iter().enumerate() {
            let cp = format!("{rp}.when[{j}]");
            if c.key.is_empty() {
                cx.err(format!("{cp}.key"), "`key` must not be empty");
            } else if !condition_key_ok(&c.key) {
                cx.err(format!("{cp}.key"), format!("unknown attribute `{}` (expected request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni)", c.key));
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                cx.err(&cp, "at least one of `values` or `notValues` must be set");
            }
            let all: Vec<String> = c.values.iter().chain(&c.not_values).cloned().collect();
            match c.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    for v in &all {
                        check_ip_or_cidr(cx, &cp, v);
                    }
                }
                "destination.port" => {
                    for v in &all {
                        if !v.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
                            cx.err(&cp, format!("`{v}` is not a valid port (1-65535)"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn source(cx: &mut Ctx, path: &str, s: &Source) {
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        cx.err(path, "`from.source` must not be empty");
    }
    if (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
        && (!s.principals.is_empty()
            || !s.not_principals.is_empty()
            || !s.namespaces.is_empty()
            || !s.not_namespaces.is_empty())
    {
        cx.err(
            path,
            "Cannot set serviceAccounts with namespaces or principals",
        );
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if list.len() > 16 {
            cx.err(format!("{path}.{name}"), "at most 16 service accounts");
        }
        for (i, sa) in list.iter().enumerate() {
            let (ns, account) = sa.split_once('/').unwrap_or(("", sa));
            let ok = (ns.is_empty() || is_dns1123_label(ns))
                && !account.is_empty()
                && account.split('.').all(is_dns1123_label);
            if !ok {
                cx.err(
                    format!("{path}.{name}[{i}]"),
                    format!("service account `{sa}` must be NAME or NAMESPACE/NAME"),
                );
            }
        }
    }
    for (name, list) in &lists[..6] {
        check_wildcards(cx, &format!("{path}.{name}"), list);
    }
    for (name, list) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        for (i, p) in list.iter().enumerate() {
            if p.starts_with("spiffe://") {
                cx.err(format!("{path}.{name}[{i}]"), format!("principal `{p}` must not include the `spiffe://` prefix (write TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT)"));
            }
        }
    }
    for (name, list) in &lists[8..12] {
        for (i, v) in list.iter().enumerate() {
            check_ip_or_cidr(cx, &format!("{path}.{name}[{i}]"), v);
        }
    }
}

fn operation(cx: &mut Ctx, path: &str, op: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        cx.err(path, "`to.operation` must not be empty");
    }
    for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (i, p) in list.iter().enumerate() {
            if !p.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
                cx.err(
                    format!("{path}.{name}[{i}]"),
                    format!("port `{p}` must be a number between 1-65535"),
                );
            }
        }
    }
    for (name, list) in [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
    ] {
        check_wildcards(cx, &format!("{path}.{name}"), list);
    }
    for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (i, p) in list.iter().enumerate() {
            let pp = format!("{path}.{name}[{i}]");
            if p.is_empty() {
                cx.err(&pp, "path must not be empty");
            } else if p.contains("{*}") || p.contains("{**}") {
                if !p.starts_with('/') {
                    cx.err(&pp, format!("path template `{p}` must start with `/`"));
                }
            } else {
                check_wildcards(cx, &format!("{path}.{name}"), std::slice::from_ref(p));
            }
        }
    }
}

// ---------------------------------------------------------------- RequestAuthentication

pub(super) fn request_authentication(cx: &mut Ctx, ra: &RequestAuthentication) {
    selector(cx, ra.selector.as_ref());
    target_refs(
        cx,
        ra.selector.as_ref(),
        ra.target_ref.as_ref(),
        &ra.target_refs,
    );
    let mut issuers: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in ra.jwt_rules.iter().enumerate() {
        let path = format!("spec.jwtRules[{i}]");
        if r.issuer.is_empty() {
            cx.err(format!("{path}.issuer"), "issuer must be set");
        } else if let Some(j) = issuers.insert(&r.issuer, i) {
            cx.warn(
                format!("{path}.issuer"),
                format!("issuer `{}` is also used by jwtRules[{j}]", r.issuer),
            );
        }
        for (j, a) in r.audiences.iter().enumerate() {
            if a.is_empty() {
                cx.err(
                    format!("{path}.audiences[{j}]"),
                    format!("audiences[{j}] in body should be at least 1 chars long"),
                );
            }
        }
        if let Some(uri) = &r.jwks_uri {
            let scheme = uri.split_once("://").map(|(s, _)| s);
            match scheme {
                Some("http" | "https") if uri.len() <= 2048 => {}
                Some("http" | "https") => cx.err(
                    format!("{path}.jwksUri"),
                    "jwksUri must be at most 2048 characters",
                ),
                _ => cx.err(
                    format!("{path}.jwksUri"),
                    format!("url must have scheme http:// or https:// (got `{uri}`)"),
                ),
            }
        }
        if let Some(jwks) = r.jwks.as_deref().filter(|j| !j.is_empty()) {
            match serde_json::from_str::<serde_json::Value>(jwks) {
                Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => {}
                Ok(_) => cx.err(
                    format!("{path}.jwks"),
                    "jwks must be a JSON Web Key Set (an object with a `keys` array)",
                ),
                Err(e) => cx.err(
                    format!("{path}.jwks"),
                    format!("jwks is not valid JSON: {e}"),
                ),
            }
        }
        if r.jwks.is_some() && r.jwks_uri.is_some() {
            cx.warn(
                format!("{path}.jwks"),
                "both jwks and jwksUri are set; jwks is used",
            );
        }
        for (j, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                cx.err(
                    format!("{path}.fromHeaders[{j}].name"),
                    format!("{path}.fromHeaders[{j}].name in body should be at least 1 chars long"),
                );
            } else if !is_header_name(&h.name) {
                cx.err(
                    format!("{path}.fromHeaders[{j}].name"),
                    format!("invalid header name `{}`", h.name),
                );
            }
        }
        for (field, list) in [
            ("fromParams", &r.from_params),
            ("fromCookies", &r.from_cookies),
            ("spaceDelimitedClaims", &r.space_delimited_claims),
        ] {
            for (j, v) in list.iter().enumerate() {
                if v.is_empty() {
                    cx.err(
                        format!("{path}.{field}[{j}]"),
                        format!("{field}[{j}] in body should be at least 1 chars long"),
                    );
                }
            }
        }
        if r.space_delimited_claims.len() > 64 {
            cx.err(format!("{path}.spaceDelimitedClaims"), "at most 64 claims");
        }
        for (j, c) in r.output_claim_to_headers.iter().enumerate() {
            let cp = format!("{path}.outputClaimToHeaders[{j}]");
            if c.claim.is_empty() {
                cx.err(
                    format!("{cp}.claim"),
                    format!("{cp}.claim in body should be at least 1 chars long"),
                );
            }
            if c.header.is_empty() {
                cx.err(
                    format!("{cp}.header"),
                    "header in body should be at least 1 chars long",
                );
            } else if !c
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                cx.err(
                    format!("{cp}.header"),
                    format!(
                        "header in body should match '^[-_A-Za-z0-9]+$' (got `{}`)",
                        c.header
                    ),
                );
            }
        }
        if let Some(h) = &r.output_payload_to_header
            && !h.is_empty()
            && !is_header_name(h)
        {
            cx.err(
                format!("{path}.outputPayloadToHeader"),
                format!("invalid header name `{h}`"),
            );
        }
        check_duration_min_1ms(cx, &format!("{path}.timeout"), r.timeout);
    }
    if ra.jwt_rules.len() > 4096 {
        cx.err("spec.jwtRules", "at most 4096 rules");
    }
}
