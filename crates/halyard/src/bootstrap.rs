//! `halyard bootstrap`: the Envoy bootstrap both proxies start from — node
//! identity and Istio's node metadata, admin, and ADS to the pilot.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::{Value, json};

/// Inputs of a bootstrap, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// Istio node id: `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`.
    #[arg(long)]
    pub node_id: String,
    /// The pilot's xDS address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds: String,
    /// Workload label (repeatable), KEY=VALUE.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Admin listener address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: String,
    /// `REDIRECT` (iptables capture, 15001/15006) or `NONE` (explicit listeners only).
    #[arg(long, default_value = "REDIRECT")]
    pub interception_mode: String,
    /// The workload's service account.
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// State-of-the-world ADS instead of delta.
    #[arg(long)]
    pub sotw: bool,
    /// Output format.
    #[arg(long, default_value = "json", value_parser = ["json", "yaml"])]
    pub output: String,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))
}

fn split_host_port(addr: &str, what: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{what} {addr:?} is not HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("{what} {addr:?}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// The bootstrap as Envoy JSON (checked against Envoy's schema).
pub fn generate(args: &BootstrapArgs) -> anyhow::Result<Value> {
    let parts: Vec<&str> = args.node_id.split('~').collect();
    let [kind, ip, pod_ns, _domain] = parts.as_slice() else {
        bail!(
            "--node-id {:?}: expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local",
            args.node_id
        );
    };
    if *kind != "sidecar" && *kind != "router" {
        bail!(
            "--node-id {:?}: type must be sidecar or router",
            args.node_id
        );
    }
    let (pod, namespace) = pod_ns.split_once('.').with_context(|| {
        format!(
            "--node-id {:?}: third part must be POD.NAMESPACE",
            args.node_id
        )
    })?;
    if !matches!(
        args.interception_mode.as_str(),
        "REDIRECT" | "NONE" | "TPROXY"
    ) {
        bail!("--interception-mode must be REDIRECT, TPROXY or NONE");
    }
    let labels: BTreeMap<&str, &str> = args
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = labels.get("app").copied().unwrap_or(pod);
    let (xds_host, xds_port) = split_host_port(&args.xds, "--xds")?;
    let (admin_host, admin_port) = split_host_port(&args.admin, "--admin")?;
    let api_type = if args.sotw { "GRPC" } else { "DELTA_GRPC" };
    let bootstrap = json!({
        "node": {
            "id": args.node_id,
            "cluster": format!("{app}.{namespace}"),
            "metadata": {
                "NAMESPACE": namespace,
                "NAME": pod,
                "LABELS": labels,
                "INSTANCE_IPS": ip,
                "SERVICE_ACCOUNT": args.service_account,
                "INTERCEPTION_MODE": args.interception_mode,
                "WORKLOAD_NAME": app,
                "CLUSTER_ID": "Kubernetes",
            }
        },
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": xds_host, "port_value": xds_port}
                    }}}]}]
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                }
            }]
        }
    });
    // Prove it is a valid Envoy bootstrap before anyone starts from it.
    let parsed: Bootstrap = xds::json::from_json(&bootstrap).context("generated bootstrap")?;
    Ok(xds::json::to_json(&parsed))
}

/// Print in the requested format.
pub fn render(args: &BootstrapArgs) -> anyhow::Result<String> {
    let value = generate(args)?;
    Ok(match args.output.as_str() {
        "yaml" => serde_yaml_ng::to_string(&value)?,
        _ => serde_json::to_string_pretty(&value)? + "\n",
    })
}
