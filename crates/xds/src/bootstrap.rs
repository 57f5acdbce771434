//! The Envoy bootstrap for a sidecar or gateway: node identity with Istio's
//! node metadata, admin address, and ADS to the pilot. One file starts both a
//! stock Envoy and `halyard proxy`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::{Value, json};

/// What a bootstrap needs to know.
#[derive(Clone, Debug)]
pub struct BootstrapSpec {
    /// `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`.
    pub node_id: String,
    /// The pilot's xDS address, `HOST:PORT`.
    pub xds: String,
    pub labels: BTreeMap<String, String>,
    /// Admin listener, `HOST:PORT`.
    pub admin: String,
    /// `REDIRECT`, `TPROXY` or `NONE`.
    pub interception_mode: String,
    pub service_account: String,
    /// State-of-the-world ADS instead of delta.
    pub sotw: bool,
    /// Where `halyard agent` serves SDS (Istio's
    /// `./var/run/secrets/workload-spiffe-uds/socket`): adds Istio's static
    /// `sds-grpc` cluster for a stock Envoy's certificates.
    pub sds_socket: Option<String>,
}

/// A bootstrap that cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BootstrapError(String);

fn split_host_port(addr: &str, what: &str) -> Result<(String, u16), BootstrapError> {
    let bad = || BootstrapError(format!("{what} {addr:?} is not HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// The bootstrap as Envoy JSON (checked against Envoy's schema).
pub fn generate(args: &BootstrapSpec) -> Result<Value, BootstrapError> {
    let parts: Vec<&str> = args.node_id.split('~').collect();
    let bad = |why: &str| BootstrapError(format!("node id {:?}: {why}", args.node_id));
    let [kind, ip, pod_ns, _domain] = parts.as_slice() else {
        return Err(bad(
            "expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local",
        ));
    };
    if *kind != "sidecar" && *kind != "router" {
        return Err(bad("type must be sidecar or router"));
    }
    let (pod, namespace) = pod_ns
        .split_once('.')
        .ok_or_else(|| bad("third part must be POD.NAMESPACE"))?;
    if !matches!(
        args.interception_mode.as_str(),
        "REDIRECT" | "NONE" | "TPROXY"
    ) {
        return Err(BootstrapError(
            "interception mode must be REDIRECT, TPROXY or NONE".into(),
        ));
    }
    let labels = &args.labels;
    let app = labels.get("app").map(String::as_str).unwrap_or(pod);
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
    let mut bootstrap = bootstrap;
    if let Some(path) = &args.sds_socket
        && let Some(clusters) = bootstrap["static_resources"]["clusters"].as_array_mut()
    {
        clusters.push(json!({
            "name": "sds-grpc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "sds-grpc",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}]
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            }
        }));
    }
    // Prove it is a valid Envoy bootstrap before anyone starts from it.
    let parsed: Bootstrap = crate::json::from_json(&bootstrap)
        .map_err(|e| BootstrapError(format!("generated bootstrap: {e}")))?;
    Ok(crate::json::to_json(&parsed))
}
