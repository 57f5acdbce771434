//! `halyard x authz check [POD | --admin ADDR | --file DUMP]`: the
//! authorization policies a proxy enforces, in istioctl's shape (ACTION,
//! AuthorizationPolicy `NAME.NAMESPACE`, RULES), read from the RBAC filters
//! of its `/config_dump` (Envoy's or ours): every `envoy.filters.http.rbac`
//! and `envoy.filters.network.rbac` policy named `ns[NS]-policy[NAME]-rule[I]`.
//! Dry-run (shadow) rules show as `ACTION (dry-run)`, CUSTOM ones (named
//! `istio-ext-authz-PROVIDER-...`) as `CUSTOM`; `--rules` prints each rule's
//! compiled permissions and principals as JSON.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum XCommand {
    /// Authorization (istioctl x authz): `check`.
    #[command(subcommand)]
    Authz(AuthzCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum AuthzCommand {
    /// Which AuthorizationPolicies apply to a workload's proxy, and their rules.
    Check {
        /// A pod of the running mesh (`POD` or `POD.NAMESPACE`); else the
        /// proxy at --admin, or the config dump in --file.
        pod: Option<String>,
        /// The proxy's admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
        /// Read a saved `/config_dump` (JSON) instead of asking a proxy.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Also print each rule's compiled RBAC policy (JSON).
        #[arg(long)]
        rules: bool,
        #[command(flatten)]
        mesh: crate::mesh_cmd::MeshArgs,
    },
}

/// One AuthorizationPolicy as the proxy has it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub action: String,
    pub policy: String,
    /// Rule index -> the compiled policy.
    pub rules: BTreeMap<usize, Value>,
}

/// `[istio-ext-authz-PROVIDER-]ns[NS]-policy[NAME]-rule[I]` as
/// (custom, `NAME.NAMESPACE`, I).
fn parse_name(key: &str) -> Option<(bool, String, usize)> {
    let custom = key.starts_with("istio-ext-authz-");
    let at = key.find("ns[")?;
    let rest = &key[at + 3..];
    let (ns, rest) = rest.split_once("]-policy[")?;
    let (name, rest) = rest.rsplit_once("]-rule[")?;
    let idx = rest.split(']').next()?.parse().ok()?;
    Some((custom, format!("{name}.{ns}"), idx))
}

fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if m.get("@type").and_then(Value::as_str).is_some_and(|t| {
                t.ends_with("envoy.extensions.filters.http.rbac.v3.RBAC")
                    || t.ends_with("envoy.extensions.filters.network.rbac.v3.RBAC")
            }) {
                out.push(v);
            }
            m.values().for_each(|x| walk(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

/// The policies in a config dump, sorted by action then policy.
pub fn rows(dump: &Value) -> Vec<Row> {
    let mut filters = Vec::new();
    walk(dump, &mut filters);
    let mut by: BTreeMap<(String, String), Row> = BTreeMap::new();
    for f in filters {
        for (field, shadow) in [
            ("rules", false),
            ("shadow_rules", true),
            ("shadowRules", true),
        ] {
            let Some(set) = f.get(field) else { continue };
            let action = set.get("action").and_then(Value::as_str).unwrap_or("ALLOW");
            let Some(policies) = set.get("policies").and_then(Value::as_object) else {
                continue;
            };
            for (key, policy) in policies {
                let Some((custom, name, idx)) = parse_name(key) else {
                    continue;
                };
                let action = match (custom, key.ends_with("-deny-due-to-bad-CUSTOM-action")) {
                    (true, true) => "DENY (bad CUSTOM provider)".to_string(),
                    (true, false) => "CUSTOM".to_string(),
                    (false, _) if action == "LOG" => "AUDIT".to_string(),
                    (false, _) => action.to_string(),
                };
                // A CUSTOM policy's enforced rules sit in the shadow rules
                // (the ext_authz filter enforces them); its dry-run ones in rules.
                let dry_run = if custom { !shadow } else { shadow };
                let action = if dry_run && !action.starts_with("DENY (") {
                    format!("{action} (dry-run)")
                } else {
                    action
                };
                by.entry((action.clone(), name.clone()))
                    .or_insert_with(|| Row {
                        action,
                        policy: name,
                        rules: BTreeMap::new(),
                    })
                    .rules
                    .insert(idx, policy.clone());
            }
        }
    }
    by.into_values().collect()
}

pub fn run(cmd: &XCommand) -> anyhow::Result<()> {
    let XCommand::Authz(AuthzCommand::Check {
        pod,
        admin,
        file,
        rules: show_rules,
        mesh,
    }) = cmd;
    let path = "/config_dump";
    let body = match (file, pod) {
        (Some(f), _) => {
            std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?
        }
        (None, Some(pod)) => {
            crate::proxy_config::http_get_on(crate::mesh_cmd::pod_admin(mesh, pod)?, pod, path)?
        }
        (None, None) => crate::proxy_config::http_get(admin, path)?,
    };
    let dump: Value = serde_json::from_str(&body).context("the proxy's config dump")?;
    let rows = rows(&dump);
    if rows.is_empty() {
        println!("no authorization policies apply (every request is allowed)");
        return Ok(());
    }
    println!("{:<28} {:<40} RULES", "ACTION", "AuthorizationPolicy");
    for r in &rows {
        println!("{:<28} {:<40} {}", r.action, r.policy, r.rules.len());
    }
    if *show_rules {
        for r in &rows {
            for (i, p) in &r.rules {
                println!(
                    "\n{} {} rule[{i}]:\n{}",
                    r.action,
                    r.policy,
                    serde_json::to_string_pretty(p)?
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_group_rules_by_policy_and_action() {
        let dump = json!({"configs": [{"dynamic_listeners": [{"active_state": {"listener": {
        "filter_chains": [{"filters": [{"typed_config": {"http_filters": [
            {"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "shadow_rules": {"action": "DENY", "policies": {
                    "istio-ext-authz-ext-ns[pay]-policy[admin]-rule[0]": {}}}}},
            {"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"policies": {
                    "ns[pay]-policy[api]-rule[0]": {"permissions": []},
                    "ns[pay]-policy[api]-rule[1]": {},
                    "ns[pay]-policy[deny-all]-rule[0]": {}}},
                "shadow_rules": {"action": "DENY", "policies": {
                    "ns[pay]-policy[dry]-rule[0]": {}}}}},
            {"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "LOG", "policies": {
                    "ns[istio-system]-policy[audit]-rule[0]": {}}}}}
        ]}}]}]}}}]}]});
        let rows = rows(&dump);
        let got: Vec<(&str, &str, usize)> = rows
            .iter()
            .map(|r| (r.action.as_str(), r.policy.as_str(), r.rules.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ALLOW", "api.pay", 2),
                ("ALLOW", "deny-all.pay", 1),
                ("AUDIT", "audit.istio-system", 1),
                ("CUSTOM", "admin.pay", 1),
                ("DENY (dry-run)", "dry.pay", 1),
            ]
        );
    }

    #[test]
    fn names_parse_with_brackets_in_policy_names() {
        assert_eq!(
            parse_name("ns[a]-policy[b-rule[x]]-rule[3]"),
            Some((false, "b-rule[x].a".into(), 3))
        );
        assert_eq!(parse_name("other"), None);
    }
}
