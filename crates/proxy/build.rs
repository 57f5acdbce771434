//! Cuts Envoy's descriptor set down to what the proxy reads as JSON/YAML: the
//! bootstrap and the typed configs of the supported filters, with everything
//! they import. Decoding the whole set costs ~45 MB of heap at start; this
//! subset is a fraction of it.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Messages parsed from JSON/YAML or rendered for `/config_dump`.
const ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.Secret",
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
    "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
];

fn collect(prefix: &str, msgs: &[DescriptorProto], file: &str, out: &mut HashMap<String, String>) {
    for m in msgs {
        let name = format!("{prefix}.{}", m.name());
        collect(&name, &m.nested_type, file, out);
        out.insert(name, file.to_string());
    }
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let src = format!("{manifest}/../xds/descriptors/envoy-types.bin");
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");
    let bytes = std::fs::read(&src).expect("envoy descriptor set");
    let set = FileDescriptorSet::decode(bytes.as_slice()).expect("descriptor set decodes");

    let mut message_file = HashMap::new();
    for f in &set.file {
        collect(f.package(), &f.message_type, f.name(), &mut message_file);
    }
    let by_name: HashMap<&str, _> = set.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = ROOTS
        .iter()
        .map(|m| {
            message_file
                .get(*m)
                .unwrap_or_else(|| panic!("no message {m}"))
                .clone()
        })
        .collect();
    while let Some(file) = todo.pop() {
        if !keep.insert(file.clone()) {
            continue;
        }
        let f = by_name
            .get(file.as_str())
            .unwrap_or_else(|| panic!("no file {file}"));
        todo.extend(f.dependency.iter().cloned());
    }
    // Keep the original order: dependencies come before their users.
    let subset = FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| keep.contains(f.name()))
            .cloned()
            .collect(),
    };
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(
        format!("{out}/proxy-descriptors.bin"),
        subset.encode_to_vec(),
    )
    .expect("write subset");
}
