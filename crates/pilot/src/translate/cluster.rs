//! CDS: one cluster per service port (`outbound|PORT||HOST`) and per
//! DestinationRule subset (`outbound|PORT|SUBSET|HOST`), plus Istio's
//! `PassthroughCluster` and `BlackHoleCluster`.

use api::networking::{ClientTlsMode, ClientTlsSettings};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::{Metadata, UpstreamHttpProtocolOptions};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use super::common::{ads, millis};
use super::endpoint;
use super::locality::ProxyLocality;
use super::tls;
use super::traffic_policy;
use crate::mesh::MeshTls;
use crate::model::{Resolution, Service, ServicePort};
use crate::peer_authn::Mode;
use crate::policy::{DestinationPolicy, Effective, LbAlgorithm, Subset, TrafficPolicy};

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
/// Istio's default connect timeout.
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Istio's cluster name.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Istio's inbound cluster name.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Mesh TLS for a service's clusters (absent without a CA).
#[derive(Clone, Copy, Debug)]
pub struct MeshUpstream<'a> {
    pub mesh: &'a MeshTls,
    /// The destination's mode as a client infers it (None: mesh-external).
    pub service_mode: Option<Mode>,
}

/// The clusters for one service port: the default one and one per subset.
pub fn for_service_port(
    svc: &Service,
    port: &ServicePort,
    rule: Option<&DestinationPolicy>,
    mtls: Option<MeshUpstream<'_>>,
    proxy: ProxyLocality<'_>,
) -> Vec<Cluster> {
    let base = rule.map(|r| r.policy.clone()).unwrap_or_default();
    let selector = rule.is_some_and(|r| r.workload_selector);
    let build = |subset: Option<&Subset>| {
        let policy = TrafficPolicy::effective(&base, subset.map(|s| &s.policy), port.number);
        let tls = mtls.map(|m| (m, policy.parts.tls.clone(), selector));
        cluster(svc, port, subset, &policy, tls, proxy)
    };
    let mut out = vec![build(None)];
    for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
        out.push(build(Some(subset)));
    }
    out
}

/// The SPIFFE ids a service port's servers may present: its endpoints'
/// service accounts in every trust domain, plus a ServiceEntry's
/// `subjectAltNames` (Istio's `ServiceAccounts` for the port), sorted.
pub fn service_sans(mesh: &MeshTls, svc: &Service, port: u32) -> Vec<String> {
    let mut out: Vec<String> = svc
        .service_accounts(port)
        .iter()
        .flat_map(|sa| mesh.spiffe_ids(&svc.namespace, sa))
        .chain(svc.subject_alt_names.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The cluster's transport socket(s) by Istio's rules for sidecars: the
/// DestinationRule's `tls` if any (DISABLE: plaintext; ISTIO_MUTUAL; SIMPLE
/// and MUTUAL, whose `credentialName` a sidecar gets only from a rule with
/// a workload selector, else the rule's TLS is ignored); without one,
/// auto-mTLS (enabled, a mesh-internal destination whose namespace is not
/// DISABLE, not ORIGINAL_DST) picks ISTIO_MUTUAL per endpoint by its
/// `tlsMode` metadata.
fn apply_tls(
    c: &mut Cluster,
    svc: &Service,
    port: &ServicePort,
    subset: &str,
    (up, settings, selector): (MeshUpstream<'_>, Option<ClientTlsSettings>, bool),
) {
    let sni = tls::istio_sni(port.number, subset, &svc.hostname);
    let sans = || service_sans(up.mesh, svc, port.number);
    let Some(settings) = settings else {
        let original_dst = c.cluster_discovery_type
            == Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
        let auto = up.mesh.auto_mtls
            && !original_dst
            && matches!(up.service_mode, Some(Mode::Strict | Mode::Permissive));
        if auto {
            let ctx = tls::istio_mutual(&sans(), &sni, port.protocol);
            c.transport_socket_matches = tls::auto_mtls_matches(&ctx);
        }
        return;
    };
    match settings.mode {
        Some(ClientTlsMode::IstioMutual) => {
            let sans = if settings.subject_alt_names.is_empty() {
                sans()
            } else {
                settings.subject_alt_names.clone()
            };
            let sni = settings
                .sni
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or(sni);
            c.transport_socket = Some(tls::socket(&tls::istio_mutual(&sans, &sni, port.protocol)));
        }
        Some(ClientTlsMode::Simple | ClientTlsMode::Mutual) => {
            let has_credential = settings
                .credential_name
                .as_deref()
                .is_some_and(|c| !c.is_empty());
            if has_credential && !selector {
                return;
            }
            let sans = if settings.subject_alt_names.is_empty()
                && svc.origin.starts_with("ServiceEntry")
            {
                sans()
            } else {
                settings.subject_alt_names.clone()
            };
            // Validation refuses a MUTUAL rule without its files, so this
            // only drops what never passed it.
            let Ok(ctx) = tls::user(&settings, &sans, port.protocol.is_http2()) else {
                return;
            };
            if ctx.sni.is_empty() {
                let auto_san = settings.subject_alt_names.is_empty()
                    && settings.insecure_skip_verify != Some(true);
                auto_sni(c, auto_san);
            }
            c.transport_socket = Some(tls::socket(&ctx));
        }
        Some(ClientTlsMode::Disable) | None => {}
    }
}

/// `upstream_http_protocol_options: {auto_sni, auto_san_validation}`, as
/// Istio sets for SIMPLE/MUTUAL without an `sni`.
fn auto_sni(c: &mut Cluster, auto_san_validation: bool) {
    let mut opts = traffic_policy::http_options(c);
    opts.upstream_http_protocol_options = Some(UpstreamHttpProtocolOptions {
        auto_sni: true,
        auto_san_validation,
        ..Default::default()
    });
    traffic_policy::set_http_options(c, &opts);
}

fn cluster(
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    policy: &Effective,
    tls: Option<(MeshUpstream<'_>, Option<ClientTlsSettings>, bool)>,
    proxy: ProxyLocality<'_>,
) -> Cluster {
    let subset_name = subset.map(|s| s.name.as_str()).unwrap_or_default();
    let name = outbound_name(port.number, subset_name, &svc.hostname);
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(millis(CONNECT_TIMEOUT_MS)),
        metadata: Some(istio_metadata(svc, subset_name)),
        ..Default::default()
    };
    let passthrough = policy.parts.lb() == Some(LbAlgorithm::Passthrough);
    match svc.resolution {
        Resolution::Static if !passthrough => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name.clone(),
            });
        }
        Resolution::Dns if !passthrough => {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: endpoint::locality_endpoints(svc, port, subset, policy, proxy),
                ..Default::default()
            });
        }
        _ => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    if port.protocol.is_http2() {
        traffic_policy::set_http_options(
            &mut c,
            &HttpProtocolOptions {
                upstream_protocol_options: Some(traffic_policy::explicit_h2()),
                ..Default::default()
            },
        );
    }
    traffic_policy::apply_outbound(&mut c, policy);
    if let Some(tls) = tls {
        apply_tls(&mut c, svc, port, subset_name, tls);
    }
    c
}

/// `filter_metadata.istio`: which service and subset the cluster is for.
fn istio_metadata(svc: &Service, subset: &str) -> Metadata {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut service = Struct::default();
    service.fields.insert("host".into(), s(&svc.hostname));
    service.fields.insert("namespace".into(), s(&svc.namespace));
    let name = svc.hostname.split('.').next().unwrap_or_default();
    service.fields.insert("name".into(), s(name));
    let mut istio = Struct::default();
    istio.fields.insert(
        "services".into(),
        Value {
            kind: Some(Kind::ListValue(
                envoy_types::pb::google::protobuf::ListValue {
                    values: vec![Value {
                        kind: Some(Kind::StructValue(service)),
                    }],
                },
            )),
        },
    );
    if !subset.is_empty() {
        istio.fields.insert("subset".into(), s(subset));
    }
    let mut m = Metadata::default();
    m.filter_metadata.insert("istio".into(), istio);
    m
}

/// `PassthroughCluster`: connect to wherever the client was going.
pub fn passthrough(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(millis(CONNECT_TIMEOUT_MS)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(traffic_policy::default_circuit_breakers()),
        ..Default::default()
    }
}

/// `BlackHoleCluster`: no endpoints, every request fails.
pub fn blackhole() -> Cluster {
    Cluster {
        name: BLACKHOLE.to_string(),
        connect_timeout: Some(millis(CONNECT_TIMEOUT_MS)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    }
}

/// `inbound|PORT||`: the local application behind this sidecar.
pub fn inbound(port: u32, target_port: u32) -> Cluster {
    let name = inbound_name(port);
    Cluster {
        name: name.clone(),
        connect_timeout: Some(millis(CONNECT_TIMEOUT_MS)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(endpoint::static_assignment(&name, "127.0.0.1", target_port)),
        circuit_breakers: Some(traffic_policy::default_circuit_breakers()),
        ..Default::default()
    }
}
