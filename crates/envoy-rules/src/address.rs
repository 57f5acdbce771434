//! `core.v3.Address`, `SocketAddress`, `Pipe` and `CidrRange`: what Envoy
//! accepts where. Listeners and EDS/STATIC endpoints need IP literals (Envoy
//! parses them, it does not resolve); STRICT_DNS endpoints may be hostnames;
//! a pipe (Unix domain socket) is an address of its own, never a host string.

use envoy_types::pb::envoy::config::core::v3::{
    Address, CidrRange, address, socket_address::PortSpecifier,
};

use crate::{Path, Report};

/// Where an address is used, which decides what it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressUse {
    /// A listener's address: an IP literal (or a pipe).
    Listener,
    /// An endpoint Envoy connects to as given (EDS, STATIC): IP or pipe.
    Endpoint,
    /// A STRICT_DNS/LOGICAL_DNS endpoint: a hostname or IP, never a pipe.
    DnsEndpoint,
}

/// An IPv4 or IPv6 literal, as Envoy's `parseInternetAddressNoThrow` takes it.
pub fn is_ip_literal(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

pub(crate) fn check(a: Option<&Address>, usage: AddressUse, at: &Path<'_>, r: &mut Report<'_>) {
    let Some(kind) = a.and_then(|a| a.address.as_ref()) else {
        r.required(at);
        return;
    };
    match kind {
        address::Address::SocketAddress(sa) => {
            let at = at.f("socket_address");
            r.min_len(&at.f("address"), &sa.address);
            match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) if p > 65535 => r.bad(
                    &at.f("port_value"),
                    "value must be less than or equal to 65535",
                ),
                Some(_) => {}
                None => r.required(&at.f("port_specifier")),
            }
            let host = sa.address.as_str();
            if !host.is_empty() && usage != AddressUse::DnsEndpoint && !is_ip_literal(host) {
                r.bad(&at.f("address"), format!("malformed IP address: {host}"));
            }
        }
        address::Address::Pipe(p) => {
            let at = at.f("pipe");
            r.min_len(&at.f("path"), &p.path);
            if p.mode > 0o777 {
                r.bad(&at.f("mode"), "value must be less than or equal to 511");
            }
            if usage == AddressUse::DnsEndpoint {
                r.bad(
                    &at,
                    "a DNS cluster resolves socket addresses; pipes are not supported",
                );
            }
        }
        address::Address::EnvoyInternalAddress(_) => {
            r.bad(at, "envoy_internal_address is not supported here");
        }
    }
}

pub(crate) fn check_cidr(c: &CidrRange, at: &Path<'_>, r: &mut Report<'_>) {
    r.min_len(&at.f("address_prefix"), &c.address_prefix);
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    if len > 128 {
        r.bad(
            &at.f("prefix_len"),
            "value must be less than or equal to 128",
        );
    }
    match c.address_prefix.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) if len > 32 => r.bad(
            &at.f("prefix_len"),
            format!("prefix length {len} is too long for IPv4"),
        ),
        Ok(_) => {}
        Err(_) if c.address_prefix.is_empty() => {}
        Err(_) => r.bad(
            &at.f("address_prefix"),
            format!("malformed IP address: {}", c.address_prefix),
        ),
    }
}
