//! VirtualService delegation, as Istio merges it (`mergeVirtualServicesIfNeeded`):
//! a root's `http[].delegate` entry is replaced by the delegate's http routes,
//! each merged with the root entry; a delegate route whose match conflicts
//! with the root's is dropped.

use std::collections::BTreeMap;

use api::networking::{Destination, HttpMatchRequest, HttpRoute, StringMatch, VirtualService};

use crate::export::ExportTo;
use crate::model::resolve_host;

/// A VirtualService without hosts, which roots may delegate to.
#[derive(Clone, Debug)]
pub struct DelegateVs<'a> {
    pub spec: &'a VirtualService,
    pub export_to: ExportTo,
}

/// Delegates by (namespace, name).
pub type Delegates<'a> = BTreeMap<(&'a str, &'a str), DelegateVs<'a>>;

/// The root with every `delegate` entry expanded. A missing delegate, or
/// one not exported to the root's namespace, contributes no routes (only
/// that entry is lost, as in Istio). The delegate's hosts resolve in its
/// own namespace.
pub fn expand(root_ns: &str, root: &VirtualService, delegates: &Delegates<'_>) -> VirtualService {
    let mut out = root.clone();
    out.http = Vec::new();
    for h in &root.http {
        let Some(d) = &h.delegate else {
            out.http.push(h.clone());
            continue;
        };
        let ns = d
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(root_ns);
        let Some(dvs) = delegates.get(&(ns, d.name.as_str())) else {
            continue;
        };
        if !dvs.export_to.visible_to(root_ns) {
            continue;
        }
        let mut parent = h.clone();
        parent.delegate = None;
        out.http.extend(
            dvs.spec
                .http
                .iter()
                // A delegate cannot delegate again (validation rejects it).
                .filter(|sub| sub.delegate.is_none())
                .filter_map(|sub| merge_route(&parent, resolved(sub.clone(), ns))),
        );
    }
    out
}

/// A delegate route with its destination hosts made FQDNs in its namespace.
fn resolved(mut r: HttpRoute, ns: &str) -> HttpRoute {
    let fix = |d: &mut Destination| d.host = resolve_host(&d.host, ns);
    r.route.iter_mut().for_each(|d| fix(&mut d.destination));
    r.mirror.iter_mut().for_each(fix);
    r.mirrors.iter_mut().for_each(|m| fix(&mut m.destination));
    r
}

/// Istio's `mergeHTTPRoute`: the delegate route keeps its own fields and
/// destinations; the root supplies the name prefix and each of rewrite,
/// directResponse, timeout, retries, fault, mirror(s), corsPolicy and
/// headers the delegate leaves unset. None when the matches conflict.
pub fn merge_route(root: &HttpRoute, mut delegate: HttpRoute) -> Option<HttpRoute> {
    delegate.matches = merge_matches(&root.matches, &delegate.matches)?;
    delegate.name = join_names(root.name.as_deref(), delegate.name.take());
    macro_rules! inherit {
        ($($field:ident),*) => {$(
            if delegate.$field.is_none() {
                delegate.$field = root.$field.clone();
            }
        )*};
    }
    inherit!(
        rewrite,
        direct_response,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if delegate.mirrors.is_empty() {
        delegate.mirrors = root.mirrors.clone();
    }
    Some(delegate)
}

/// `root-delegate`, or whichever is set.
fn join_names(root: Option<&str>, delegate: Option<String>) -> Option<String> {
    let root = root.filter(|n| !n.is_empty());
    match (root, delegate.filter(|n| !n.is_empty())) {
        (Some(r), Some(d)) => Some(format!("{r}-{d}")),
        (Some(r), None) => Some(r.to_string()),
        (None, d) => d,
    }
}

/// Istio's `mergeHTTPMatchRequests`: every delegate match is ANDed with
/// each root match it does not conflict with; a delegate match that fits
/// no root match makes the whole route conflict (None).
pub fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for sub in delegate {
        let before = out.len();
        out.extend(
            root.iter()
                .filter(|r| !has_conflict(r, sub))
                .map(|r| merge_match(r, sub)),
        );
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// Istio's `mergeHTTPMatchRequest`: the delegate's conditions, plus the
/// root's where the delegate sets none (maps merged, the delegate's keys win).
fn merge_match(root: &HttpMatchRequest, delegate: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = delegate.clone();
    out.name = join_names(root.name.as_deref(), out.name.take());
    macro_rules! inherit {
        ($($field:ident),*) => {$(
            if out.$field.is_none() {
                out.$field = root.$field.clone();
            }
        )*};
    }
    inherit!(
        uri,
        scheme,
        method,
        authority,
        port,
        source_namespace,
        stat_prefix
    );
    let merged = |r: &BTreeMap<String, StringMatch>, d: &BTreeMap<String, StringMatch>| {
        let mut m = r.clone();
        m.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = merged(&root.headers, &delegate.headers);
    out.without_headers = merged(&root.without_headers, &delegate.without_headers);
    out.query_params = merged(&root.query_params, &delegate.query_params);
    let mut labels = root.source_labels.clone();
    labels.extend(delegate.source_labels.clone());
    out.source_labels = labels;
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out
}

/// Istio's `hasConflict`: can the delegate match be narrowed by the root's?
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    if maps.iter().any(|(r, l)| {
        l.iter()
            .any(|(k, v)| string_match_conflict(r.get(k), Some(v)))
    }) {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port, leaf.port)
        && r != l
    {
        return true;
    }
    if let Some(ns) = root.source_namespace.as_deref().filter(|n| !n.is_empty())
        && leaf.source_namespace.as_deref() != Some(ns)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    // The root's gateways must be a superset of the delegate's.
    !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// Istio's `stringMatchConflict`: unset on either side never conflicts; a
/// regex conflicts with any other condition; an exact root needs the same
/// exact; a prefix root needs a prefix or exact under it.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let parts = |m: &StringMatch| -> (Option<String>, Option<String>, Option<String>) {
        let set = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
        match m {
            StringMatch::Exact(s) => (set(s), None, None),
            StringMatch::Prefix(s) => (None, set(s), None),
            StringMatch::Regex(s) => (None, None, set(s)),
            StringMatch::Present => (None, None, None),
        }
    };
    let (r_exact, r_prefix, r_regex) = parts(root);
    let (l_exact, l_prefix, l_regex) = parts(leaf);
    let any_set = |e: &Option<String>, p: &Option<String>, r: &Option<String>| {
        e.is_some() || p.is_some() || r.is_some()
    };
    if r_regex.is_some() && any_set(&l_exact, &l_prefix, &l_regex) {
        return true;
    }
    if l_regex.is_some() && any_set(&r_exact, &r_prefix, &r_regex) {
        return true;
    }
    if let Some(exact) = r_exact {
        return l_prefix.is_some() || l_exact.as_deref() != Some(exact.as_str());
    }
    if let Some(prefix) = r_prefix {
        if let Some(lp) = l_prefix {
            return !lp.starts_with(&prefix);
        }
        if let Some(le) = l_exact {
            return !le.starts_with(&prefix);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> HttpRoute {
        serde_yaml_ng::from_str(yaml).expect("http route")
    }

    fn uri(m: &HttpMatchRequest) -> Option<&StringMatch> {
        m.uri.as_ref()
    }

    #[test]
    fn prefix_root_narrows_to_delegate_prefix_and_exact() {
        let root = route(
            "match: [{uri: {prefix: /api}, headers: {x-a: {exact: '1'}}}]\nname: root\ndelegate: {name: d}",
        );
        let sub = route(
            "name: v1\nmatch: [{uri: {prefix: /api/v1}, headers: {x-b: {exact: '2'}}}, {uri: {exact: /api/x}}]\nroute: [{destination: {host: a}}]",
        );
        let merged = merge_route(&root, sub).expect("no conflict");
        assert_eq!(merged.name.as_deref(), Some("root-v1"));
        assert_eq!(merged.matches.len(), 2);
        assert_eq!(
            uri(&merged.matches[0]),
            Some(&StringMatch::Prefix("/api/v1".into()))
        );
        // Root and delegate headers are ANDed.
        assert_eq!(merged.matches[0].headers.len(), 2);
        assert!(merged.matches[1].headers.contains_key("x-a"));
    }

    #[test]
    fn conflicting_uri_drops_the_delegate_route() {
        let root = route("match: [{uri: {prefix: /api}}]\ndelegate: {name: d}");
        for sub in [
            "match: [{uri: {prefix: /other}}]\nroute: [{destination: {host: a}}]",
            "match: [{uri: {exact: /x}}]\nroute: [{destination: {host: a}}]",
            "match: [{uri: {regex: '/api.*'}}]\nroute: [{destination: {host: a}}]",
            // One fitting match is not enough: each must fit some root match.
            "match: [{uri: {prefix: /api/v1}}, {uri: {prefix: /b}}]\nroute: [{destination: {host: a}}]",
        ] {
            assert!(merge_route(&root, route(sub)).is_none(), "{sub}");
        }
        let exact = route("match: [{uri: {exact: /a}}]\ndelegate: {name: d}");
        assert!(
            merge_route(
                &exact,
                route("match: [{uri: {prefix: /a}}]\nroute: [{destination: {host: a}}]")
            )
            .is_none()
        );
        assert!(
            merge_route(
                &exact,
                route("match: [{uri: {exact: /a}}]\nroute: [{destination: {host: a}}]")
            )
            .is_some()
        );
        let port = route("match: [{port: 80}]\ndelegate: {name: d}");
        assert!(
            merge_route(
                &port,
                route("match: [{port: 81}]\nroute: [{destination: {host: a}}]")
            )
            .is_none()
        );
    }

    #[test]
    fn unset_matches_and_fields_come_from_the_root() {
        let root = route(
            "match: [{uri: {prefix: /r}}]\ntimeout: 3s\nretries: {attempts: 2}\nheaders: {request: {set: {x: y}}}\ndelegate: {name: d}",
        );
        let merged = merge_route(
            &root,
            route("timeout: 1s\nroute: [{destination: {host: a}}]"),
        )
        .expect("merged");
        assert_eq!(merged.matches, root.matches);
        assert_eq!(merged.timeout.map(|d| d.get().as_secs()), Some(1));
        assert_eq!(merged.retries.map(|r| r.attempts), Some(2));
        assert!(merged.headers.is_some());
        // An empty root match list keeps the delegate's matches.
        let bare = route("delegate: {name: d}");
        let sub = route("match: [{uri: {exact: /z}}]\nroute: [{destination: {host: a}}]");
        assert_eq!(
            merge_route(&bare, sub.clone()).map(|r| r.matches),
            Some(sub.matches)
        );
    }

    #[test]
    fn expand_follows_namespace_and_export_to() {
        let root: VirtualService = serde_yaml_ng::from_str(
            "hosts: [r]\nhttp:\n- {match: [{uri: {prefix: /a}}], delegate: {name: d, namespace: other}}\n- {route: [{destination: {host: fallback}}]}",
        )
        .expect("vs");
        let dspec: VirtualService =
            serde_yaml_ng::from_str("http:\n- {route: [{destination: {host: reviews}}]}")
                .expect("vs");
        let mut delegates = Delegates::new();
        delegates.insert(
            ("other", "d"),
            DelegateVs {
                spec: &dspec,
                export_to: ExportTo::default(),
            },
        );
        let out = expand("root", &root, &delegates);
        assert_eq!(out.http.len(), 2);
        assert_eq!(
            out.http[0].route[0].destination.host,
            "reviews.other.svc.cluster.local"
        );
        assert!(out.http[0].delegate.is_none());
        delegates.get_mut(&("other", "d")).expect("d").export_to =
            ExportTo::new(&[".".to_string()], "other");
        assert_eq!(expand("root", &root, &delegates).http.len(), 1);
    }
}
