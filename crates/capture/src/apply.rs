//! Installing and removing the capture rules in a network namespace with
//! iptables-restore, plus TPROXY's policy routing (`ip rule fwmark` + local route table).

use std::process::Command;

use crate::{CaptureConfig, CaptureError, Family, InboundMode, netns, run};

/// The iptables tool for a family (restores wait up to 5 s for the legacy xtables lock):
/// `iptables-restore`, `ip6tables-save`, or with
/// `HALYARD_IPTABLES=nft|legacy` the backend-specific binary (`iptables-nft-restore`, ...).
fn tool(family: Family, what: &str) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    match std::env::var("HALYARD_IPTABLES").as_deref() {
        Ok("nft") => format!("{base}-nft-{what}"),
        Ok("legacy") => format!("{base}-legacy-{what}"),
        _ => format!("{base}-{what}"),
    }
}

/// `program` in the namespace (`ip netns exec NAME program`) or in the current one.
fn in_ns(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(name) => netns::command(name, program),
        None => Command::new(program),
    }
}

/// `ip [-n NAME] ARGS...`
fn ip(ns: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    if let Some(name) = ns {
        c.args(["-n", name]);
    }
    c.args(args);
    c
}

/// Apply the rules inside a named network namespace (`ip netns exec NAME iptables-restore`),
/// or in the current one if `netns` is None. Rules from an earlier `apply` are removed first,
/// other rules are kept (`--noflush`). With TPROXY, also adds `ip rule fwmark MARK lookup
/// TABLE` and `local default dev lo` in that table.
pub fn apply(netns: Option<&str>, cfg: &CaptureConfig) -> Result<(), CaptureError> {
    cfg.validate()?;
    remove(netns)?;
    let mut families = vec![(Family::V4, cfg.iptables_restore())];
    if cfg.enable_ipv6 {
        families.push((Family::V6, cfg.ip6tables_restore()));
    }
    for (family, text) in &families {
        run(
            in_ns(netns, &tool(*family, "restore")).args(["-w", "5", "--noflush"]),
            Some(text),
        )?;
    }
    if cfg.inbound_mode == InboundMode::Tproxy {
        let mark = cfg.tproxy_mark.to_string();
        let table = cfg.tproxy_route_table.to_string();
        for (family, _) in &families {
            let f = if *family == Family::V4 {
                "inet"
            } else {
                "inet6"
            };
            // Replace rather than duplicate: drop an identical rule first, ignore its absence.
            let _ = run(
                &mut ip(
                    netns,
                    &["-f", f, "rule", "del", "fwmark", &mark, "lookup", &table],
                ),
                None,
            );
            run(
                &mut ip(
                    netns,
                    &["-f", f, "rule", "add", "fwmark", &mark, "lookup", &table],
                ),
                None,
            )?;
            let route = [
                "-f", f, "route", "replace", "local", "default", "dev", "lo", "table", &table,
            ];
            run(&mut ip(netns, &route), None)?;
        }
    }
    Ok(())
}

/// Remove what `apply` added: Istio's chains, the jumps to them, and the rules it puts in
/// built-in chains (interface short-circuits, TPROXY marks), for IPv4 and IPv6; and the
/// default TPROXY ip rule (mark 1337, table 133). Other rules are left alone.
pub fn remove(netns: Option<&str>) -> Result<(), CaptureError> {
    for family in [Family::V4, Family::V6] {
        for table in ["nat", "mangle", "raw"] {
            let saved = match run(
                in_ns(netns, &tool(family, "save")).args(["-t", table]),
                None,
            ) {
                Ok(s) => s,
                // No ip6tables (or no such table) means nothing of ours is there.
                Err(_) if family == Family::V6 => continue,
                Err(e) => return Err(e),
            };
            let kept = strip_istio(&saved, table);
            if kept != saved {
                run(
                    in_ns(netns, &tool(family, "restore")).args(["-w", "5"]),
                    Some(&kept),
                )?;
            }
        }
    }
    for f in ["inet", "inet6"] {
        while run(
            &mut ip(
                netns,
                &["-f", f, "rule", "del", "fwmark", "1337", "lookup", "133"],
            ),
            None,
        )
        .is_ok()
        {}
        let _ = run(
            &mut ip(netns, &["-f", f, "route", "flush", "table", "133"]),
            None,
        );
    }
    Ok(())
}

/// An iptables-save dump of one table without Istio's chains and rules. Restoring it
/// (without `--noflush`) replaces just that table.
pub(crate) fn strip_istio(saved: &str, table: &str) -> String {
    let mut out = String::new();
    for line in saved.lines() {
        if !is_istio_line(line, table) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn is_istio_line(line: &str, table: &str) -> bool {
    if line.starts_with(":ISTIO_") || (line.contains("ISTIO_") && line.starts_with("-A ")) {
        return true;
    }
    let Some(rule) = line.strip_prefix("-A ") else {
        return false;
    };
    let words: Vec<&str> = rule.split_whitespace().collect();
    // Interface short-circuits: `-A PREROUTING -i NIC -j RETURN`, `-A OUTPUT -o NIC -j RETURN`.
    let short_circuit = matches!(
        words.as_slice(),
        ["PREROUTING", "-i", _, "-j", "RETURN"] | ["OUTPUT", "-o", _, "-j", "RETURN"]
    );
    let tproxy_mark = table == "mangle"
        && matches!(words.first(), Some(&"PREROUTING") | Some(&"OUTPUT"))
        && (rule.contains("CONNMARK")
            || rule.contains("-j MARK --set-")
            || (rule.contains("-m mark --mark") && rule.ends_with("-j RETURN")));
    ((table == "nat" || table == "mangle") && short_circuit) || tproxy_mark
}

#[cfg(test)]
mod tests {
    use super::strip_istio;

    #[test]
    fn strip_keeps_foreign_rules() {
        let saved = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :ISTIO_OUTPUT - [0:0]\n-A PREROUTING -i eth9 -j RETURN\n-A PREROUTING -p udp -j ACCEPT\n\
            -A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT\n";
        let kept = strip_istio(saved, "nat");
        assert_eq!(
            kept,
            "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A PREROUTING -p udp -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn strip_mangle_tproxy_marks() {
        let saved = "*mangle\n:OUTPUT ACCEPT [0:0]\n\
            -A OUTPUT -o lo -p tcp -m mark --mark 0x539 -j RETURN\n\
            -A OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n\
            -A OUTPUT -p tcp -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            strip_istio(saved, "mangle"),
            "*mangle\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j ACCEPT\nCOMMIT\n"
        );
    }
}
