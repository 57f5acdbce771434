//! The rule generator: a `CaptureConfig` in, Istio's istio-iptables rules out, in
//! iptables-restore format, one rule list per IP family. Pure; golden-tested against Istio.
//!
//! Chains and their roles (nat unless said otherwise):
//! ```text
//! PREROUTING -p tcp -> ISTIO_INBOUND   excluded ports RETURN, the rest -> ISTIO_IN_REDIRECT (:15006)
//! OUTPUT            -> ISTIO_OUTPUT    127.0.0.6 / proxy uid+gid / loopback RETURN, the rest -> ISTIO_REDIRECT (:15001)
//! mangle (TPROXY):  ISTIO_INBOUND -> ISTIO_DIVERT (mark, established) | ISTIO_TPROXY (TPROXY :15006)
//! raw (DNS):        ISTIO_OUTPUT_DNS / ISTIO_INBOUND conntrack zones for DNS to the agent (:15053)
//! ```

mod generate;
#[cfg(test)]
mod tests;

use crate::config::{CaptureConfig, Cidr};

/// The agent's DNS port (istio-agent's DNS proxy).
pub const DNS_CAPTURE_PORT: u16 = 15053;

/// IPv4 (iptables) or IPv6 (ip6tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Mangle,
    Nat,
    Raw,
}

impl Table {
    const ALL: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];
    fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }
}

struct Rule {
    table: Table,
    chain: &'static str,
    insert_at: Option<u32>,
    spec: String,
}

/// Rules in the order istio-iptables adds them.
#[derive(Default)]
struct Rules(Vec<Rule>);

impl Rules {
    fn append(&mut self, table: Table, chain: &'static str, spec: impl Into<String>) {
        let spec = spec.into();
        self.0.push(Rule {
            table,
            chain,
            insert_at: None,
            spec,
        });
    }

    fn insert(&mut self, table: Table, chain: &'static str, pos: u32, spec: impl Into<String>) {
        let spec = spec.into();
        self.0.push(Rule {
            table,
            chain,
            insert_at: Some(pos),
            spec,
        });
    }

    /// iptables-restore input: per table, `-N` for Istio's chains (first use first),
    /// then the rules, then `COMMIT`.
    fn render(&self) -> String {
        let mut out = String::new();
        for table in Table::ALL {
            let rules: Vec<&Rule> = self.0.iter().filter(|r| r.table == table).collect();
            if rules.is_empty() {
                continue;
            }
            out.push_str(&format!("* {}\n", table.name()));
            let mut chains: Vec<&str> = Vec::new();
            for r in &rules {
                if r.chain.starts_with("ISTIO_") && !chains.contains(&r.chain) {
                    chains.push(r.chain);
                }
            }
            for c in chains {
                out.push_str(&format!("-N {c}\n"));
            }
            for r in rules {
                match r.insert_at {
                    Some(pos) => out.push_str(&format!("-I {} {pos} {}\n", r.chain, r.spec)),
                    None => out.push_str(&format!("-A {} {}\n", r.chain, r.spec)),
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// `--dport P` or `-m multiport --dports A,B,..` (at most 15 per rule, iptables' limit).
fn dports(ports: &[u16]) -> Vec<String> {
    ports
        .chunks(15)
        .map(|c| match c {
            [p] => format!("--dport {p}"),
            _ => {
                let list: Vec<String> = c.iter().map(u16::to_string).collect();
                format!("-m multiport --dports {}", list.join(","))
            }
        })
        .collect()
}

/// An include/exclude address list split for one family.
struct Ranges {
    wildcard: bool,
    cidrs: Vec<String>,
    has_loopback: bool,
}

fn ranges(list: &[String], family: Family) -> Ranges {
    let mut r = Ranges {
        wildcard: false,
        cidrs: Vec::new(),
        has_loopback: false,
    };
    for item in list.iter().map(|s| s.trim()) {
        if item == "*" {
            r.wildcard = true;
            continue;
        }
        let Ok(cidr) = Cidr::parse(item) else {
            continue;
        };
        if cidr.addr.is_ipv4() == (family == Family::V4) {
            r.has_loopback |= cidr.is_loopback();
            r.cidrs.push(cidr.to_string());
        }
    }
    r
}

fn host_prefix(addr: &str, family: Family) -> Option<String> {
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    match (ip.is_ipv4(), family) {
        (true, Family::V4) => Some(format!("{}/32", addr.trim())),
        (false, Family::V6) => Some(format!("{}/128", addr.trim())),
        _ => None,
    }
}

/// The iptables-restore text for one family.
pub fn restore_text(cfg: &CaptureConfig, family: Family) -> String {
    generate::build(cfg, family).render()
}
