//! Checks shared by several kinds: DNS names and wildcards, ports, label
//! selectors, durations, percentages, IPs and CIDRs, gateway and namespace
//! references.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Ctx;
use crate::Duration;

/// A DNS-1123 label: 1–63 lower-case alphanumerics or `-`, alphanumeric at
/// both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS label as Istio checks hosts: letters (either case), digits, `-`.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A host name, optionally with a leading `*.` wildcard (or `*` alone):
/// at most 255 characters of DNS labels.
pub fn is_wildcard_domain(host: &str) -> bool {
    if host == "*" {
        return true;
    }
    let rest = host.strip_prefix("*.").or_else(|| host.strip_prefix('*'));
    let name = rest.unwrap_or(host);
    if name.is_empty() || host.len() > 255 {
        return false;
    }
    // Istio accepts a prefix wildcard such as `*bar.com` as well as `*.bar.com`.
    let name = name.strip_suffix('.').unwrap_or(name);
    name.split('.').all(is_dns_label)
}

/// A host as VirtualService/DestinationRule/ServiceEntry take it: a
/// (wildcard) domain name or an IP address.
pub fn is_valid_host(host: &str) -> bool {
    is_wildcard_domain(host) || host.parse::<IpAddr>().is_ok()
}

/// Why `host` is not a valid wildcard domain, or `None`.
pub(crate) fn host_error(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("host must not be empty".into());
    }
    if host.len() > 255 {
        return Some(format!("host `{host}` is longer than 255 characters"));
    }
    if host.contains("://") {
        return Some(format!(
            "host `{host}` must be a domain name, not a URL (drop the scheme)"
        ));
    }
    if host.contains(':') && host.parse::<IpAddr>().is_err() {
        return Some(format!(
            "host `{host}` must not contain a port (set it in the destination's `port`)"
        ));
    }
    if !is_valid_host(host) {
        return Some(format!(
            "invalid host `{host}`: must be a DNS name (labels of letters, digits and `-`, \
             at most 63 characters each), optionally prefixed by `*.`"
        ));
    }
    None
}

pub(crate) fn check_host(cx: &mut Ctx, path: &str, host: &str) {
    if let Some(msg) = host_error(host) {
        cx.err(path, msg);
    }
}

/// A port number, 1–65535.
pub(crate) fn check_port(cx: &mut Ctx, path: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        cx.err(path, format!("port must be between 1-65535 (got {port})"));
    }
}

/// Durations Istio requires to be at least 1ms.
pub(crate) fn check_duration_min_1ms(cx: &mut Ctx, path: &str, d: Option<Duration>) {
    if let Some(d) = d
        && d.get() < std::time::Duration::from_millis(1)
    {
        cx.err(
            path,
            format!("must be a valid duration greater than or equal to 1ms (got {d})"),
        );
    }
}

/// A percentage, 0–100.
pub(crate) fn check_percent(cx: &mut Ctx, path: &str, v: f64) {
    if !(0.0..=100.0).contains(&v) || v.is_nan() {
        cx.err(path, format!("percentage must be in [0, 100] (got {v})"));
    }
}

/// Label selector keys and values (Kubernetes rules; no wildcards).
pub(crate) fn check_labels(cx: &mut Ctx, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if k.is_empty() {
            cx.err(path, "label key must not be empty");
            continue;
        }
        if k.contains('*') || v.contains('*') {
            cx.err(
                format!("{path}.{k}"),
                "wildcard is not supported in selector",
            );
            continue;
        }
        if !is_label_key(k) {
            cx.err(format!("{path}.{k}"), format!("invalid label key `{k}`"));
        }
        if !is_label_value(v) {
            cx.err(
                format!("{path}.{k}"),
                format!("invalid label value `{v}`: at most 63 alphanumerics, `-`, `_` or `.`"),
            );
        }
    }
}

/// `[prefix/]name` with a DNS-1123 subdomain prefix.
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix
        .is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns1123_label));
    prefix_ok && !name.is_empty() && is_label_value(name)
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// An IP address or CIDR block.
pub(crate) fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32 && !len.starts_with('+'),
            (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128 && !len.starts_with('+'),
            _ => false,
        },
    }
}

pub(crate) fn check_ip_or_cidr(cx: &mut Ctx, path: &str, s: &str) {
    if !is_ip_or_cidr(s) {
        cx.err(
            path,
            format!("`{s}` is not a valid IP address or CIDR block"),
        );
    }
}

/// `exportTo` entries: `.`, `*`, `~` or a namespace name.
pub(crate) fn check_export_to(cx: &mut Ctx, export_to: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        if !(e == "." || e == "*" || e == "~" || is_dns1123_label(e)) {
            cx.err(
                &path,
                format!("invalid exportTo value `{e}`: must be `.`, `*`, `~` or a namespace name"),
            );
        }
        if !seen.insert(e.as_str()) {
            cx.err(&path, format!("duplicate exportTo entry `{e}`"));
        }
    }
    if export_to.len() > 1 && export_to.iter().any(|e| e == "*" || e == "~") {
        cx.err(
            "spec.exportTo",
            "`*` and `~` cannot be combined with other exportTo values",
        );
    }
}

/// A gateway reference: `mesh`, `name` or `namespace/name`.
pub(crate) fn check_gateway_ref(cx: &mut Ctx, path: &str, gw: &str) {
    if gw == "mesh" {
        return;
    }
    let (ns, name) = gw.split_once('/').unwrap_or(("", gw));
    let name_ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns1123_label);
    if (!ns.is_empty() && !is_dns1123_label(ns)) || !name_ok {
        cx.err(
            path,
            format!("invalid gateway name `{gw}`: must be `mesh`, `name` or `namespace/name`"),
        );
    }
}

/// Istio object names are DNS-1123 subdomains.
pub(crate) fn object_name(cx: &mut Ctx, name: &str) {
    if name.is_empty() {
        cx.err("metadata.name", "name must not be empty");
    } else if name.len() > 253 || !name.split('.').all(is_dns1123_label) {
        cx.err(
            "metadata.name",
            format!("invalid name `{name}`: lower-case letters, digits, `-` and `.` only"),
        );
    }
}

/// A header name (RFC 7230 token).
pub(crate) fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "reviews",
            "*.example.com",
            "*",
            "a-b.c",
            "*bar.com",
            "10.0.0.1",
            "Foo.com",
        ] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a_b.com",
            "foo.*.com",
            "http://x",
            "a:80",
            "*.",
            "**",
        ] {
            assert!(host_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert!(is_ip_or_cidr("10.0.0.0/8"));
        assert!(is_ip_or_cidr("::1"));
        assert!(is_ip_or_cidr("2001:db8::/32"));
        assert!(!is_ip_or_cidr("10.0.0.0/33"));
        assert!(!is_ip_or_cidr("foo"));
    }
}
