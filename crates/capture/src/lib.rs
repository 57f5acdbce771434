//! Traffic capture for sidecars, with Istio's istio-iptables semantics: the rules
//! (`CaptureConfig` -> iptables-restore text), applying and removing them inside a
//! network namespace, and the netns/bridge/veth plumbing the local runtime builds pods from.
//!
//! A pod, as the local runtime builds it (root; names are examples):
//! ```no_run
//! use capture::{CaptureConfig, net, netns};
//! # fn main() -> Result<(), capture::CaptureError> {
//! # let annotations = std::collections::BTreeMap::new();
//! net::create_bridge("hy-br", "hybr0", "10.44.0.1/16")?;          // once per mesh
//! net::attach_pod("hy-br", "hybr0", "hy-pod-a", "veth-a", "10.44.0.5/16", "10.44.0.1")?;
//! let cfg = CaptureConfig::from_annotations(&annotations)?;      // istio-init's defaults
//! capture::apply(Some("hy-pod-a"), &cfg)?;                       // only if injected
//! let proxy = netns::command("hy-pod-a", "halyard");             // + setpriv to uid 1337
//! // teardown: netns::delete("hy-pod-a") drops its veth, rules and routes with it
//! # Ok(()) }
//! ```
//!
//! Which iptables: `iptables-restore`/`iptables-save` from PATH (Debian's alternatives pick
//! iptables-nft). Set `HALYARD_IPTABLES=legacy` or `=nft` to force a backend; use one
//! backend per namespace.
//!
//! Rootless (`unshare -r -n` as a normal user): `ip netns` is unavailable, so call
//! `apply(None, ..)` from inside the namespace. Only uid 0 is mapped there, and iptables
//! rejects `--uid-owner 1337` (EINVAL), so set `match_owner: false` and
//! `proxy_mark: Some(M)` and have the proxy SO_MARK its upstream sockets. iptables-legacy
//! there also needs `XTABLES_LOCKFILE` set to a writable path; iptables-nft does not.
//!
//! `apply(None, ..)`/`remove(None)` act on the *current* namespace: pass `Some(name)`
//! unless the caller already is inside the pod's namespace.

mod apply;
mod config;
pub mod net;
pub mod netns;
mod rules;

pub use apply::{apply, remove};
pub use config::{CaptureConfig, Cidr, ISTIO_EXCLUDED_INBOUND_PORTS, InboundMode, InboundPorts};
pub use rules::{DNS_CAPTURE_PORT, Family};

use std::process::{Command, Stdio};

/// What went wrong while building or applying capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A pod annotation has a value Istio would reject.
    #[error("annotation {annotation}={value:?}: {reason}")]
    Annotation {
        annotation: String,
        value: String,
        reason: String,
    },
    /// A `CaptureConfig` built in code has a bad field.
    #[error("capture config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started (not installed, not permitted).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// `netns::create` of a namespace that is already there.
    #[error("network namespace {0:?} already exists")]
    NetnsExists(String),
    /// Entering a namespace with setns(2) failed.
    #[error("entering network namespace {name:?}: {source}")]
    Setns {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl CaptureConfig {
    /// The IPv4 rules, in iptables-restore format (tables mangle, nat, raw as needed), with
    /// Istio's chain names.
    pub fn iptables_restore(&self) -> String {
        rules::restore_text(self, Family::V4)
    }

    /// The IPv6 rules for ip6tables-restore. Like istio-iptables, `apply` installs them only
    /// when `enable_ipv6` is set (Istio: the pod has an IPv6 address); v4 CIDRs are skipped.
    pub fn ip6tables_restore(&self) -> String {
        rules::restore_text(self, Family::V6)
    }

    /// Checks what the rule generator would otherwise skip silently (bad CIDRs, DNS servers).
    pub fn validate(&self) -> Result<(), CaptureError> {
        let cidrs = [
            ("include_outbound_cidrs", &self.include_outbound_cidrs, true),
            (
                "exclude_outbound_cidrs",
                &self.exclude_outbound_cidrs,
                false,
            ),
        ];
        for (field, list, wildcard_ok) in cidrs {
            for c in list {
                let c = c.trim();
                if c == "*" && wildcard_ok {
                    continue;
                }
                Cidr::parse(c).map_err(|reason| CaptureError::Config { field, reason })?;
            }
        }
        Cidr::parse(&self.host_ipv4_loopback_cidr).map_err(|reason| CaptureError::Config {
            field: "host_ipv4_loopback_cidr",
            reason,
        })?;
        let dns = [
            ("dns_servers_v4", &self.dns_servers_v4, true),
            ("dns_servers_v6", &self.dns_servers_v6, false),
        ];
        for (field, list, v4) in dns {
            for s in list {
                match s.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == v4 => {}
                    _ => {
                        return Err(CaptureError::Config {
                            field,
                            reason: format!(
                                "{s:?} is not an IPv{} address",
                                if v4 { 4 } else { 6 }
                            ),
                        });
                    }
                }
            }
        }
        let rootless_reason = if self.match_owner {
            None
        } else if self.proxy_mark.is_none() {
            Some("without owner matching, set proxy_mark or the proxy captures itself")
        } else if self.inbound_mode == InboundMode::Tproxy {
            Some("TPROXY needs owner matching")
        } else if self.redirect_dns {
            Some("DNS capture needs owner matching")
        } else {
            None
        };
        if let Some(reason) = rootless_reason {
            return Err(CaptureError::Config {
                field: "match_owner",
                reason: reason.into(),
            });
        }
        if self.outbound_port == 0 || self.inbound_port == 0 {
            return Err(CaptureError::Config {
                field: "outbound_port/inbound_port",
                reason: "port 0".into(),
            });
        }
        Ok(())
    }
}

/// Runs `cmd` (feeding `stdin` if given) and returns its stdout, or an error naming the
/// command and carrying its stderr.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, CaptureError> {
    use std::io::Write;
    let command = describe(cmd);
    let spawn_err = |source| CaptureError::Spawn {
        command: command.clone(),
        source,
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CaptureError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
