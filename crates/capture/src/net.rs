//! Bridge and veth plumbing for a pod network: a bridge in its own namespace (so bridged
//! frames never meet the host's iptables), and one veth per pod with `eth0` inside the pod.
//!
//! ```text
//! [pod_ns] eth0 10.44.0.5/16 ==veth== peer --+-- br 10.44.0.1/16  [bridge_ns]
//! ```

use std::process::Command;

use crate::{CaptureError, netns, run};

fn ip(ns: &str, args: &[&str]) -> Result<(), CaptureError> {
    run(Command::new("ip").arg("-n").arg(ns).args(args), None).map(drop)
}

fn check_ifname(name: &str) -> Result<(), CaptureError> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        return Err(CaptureError::Config {
            field: "interface name",
            reason: format!("{name:?} must be 1-15 characters, no '/' or spaces"),
        });
    }
    Ok(())
}

/// Creates the namespace `bridge_ns` (if absent) holding bridge `br` with `gateway_cidr`
/// (e.g. "10.44.0.1/16"), both it and loopback up.
pub fn create_bridge(bridge_ns: &str, br: &str, gateway_cidr: &str) -> Result<(), CaptureError> {
    check_ifname(br)?;
    if !netns::exists(bridge_ns) {
        netns::create(bridge_ns)?;
    }
    ip(bridge_ns, &["link", "set", "lo", "up"])?;
    ip(bridge_ns, &["link", "add", br, "type", "bridge"])?;
    ip(bridge_ns, &["addr", "add", gateway_cidr, "dev", br])?;
    ip(bridge_ns, &["link", "set", br, "up"])?;
    Ok(())
}

/// Creates a veth pair straight across the two namespaces (never in the host's): `eth0` in
/// `pod_ns` (created if absent) with `pod_cidr` (e.g. "10.44.0.5/16") and a default route
/// via `gateway`, and `peer` attached to `br` in `bridge_ns`. Loopback up in `pod_ns`.
pub fn attach_pod(
    bridge_ns: &str,
    br: &str,
    pod_ns: &str,
    peer: &str,
    pod_cidr: &str,
    gateway: &str,
) -> Result<(), CaptureError> {
    check_ifname(peer)?;
    if !netns::exists(pod_ns) {
        netns::create(pod_ns)?;
    }
    let link = ["link", "add", "eth0", "netns", pod_ns, "type", "veth"];
    let peer_args = ["peer", "name", peer, "netns", bridge_ns];
    run(Command::new("ip").args(link).args(peer_args), None)?;
    ip(bridge_ns, &["link", "set", peer, "master", br, "up"])?;
    ip(pod_ns, &["link", "set", "lo", "up"])?;
    ip(pod_ns, &["addr", "add", pod_cidr, "dev", "eth0"])?;
    ip(pod_ns, &["link", "set", "eth0", "up"])?;
    ip(pod_ns, &["route", "add", "default", "via", gateway])?;
    Ok(())
}
