//! Envoy TLS contexts in the shape istiod emits them for sidecars: the
//! inbound DownstreamTlsContext of PeerAuthentication STRICT/PERMISSIVE, the
//! UpstreamTlsContext of DestinationRule `tls` (ISTIO_MUTUAL, SIMPLE,
//! MUTUAL) and of auto-mTLS. Workload certificates come over SDS from the
//! `sds-grpc` cluster (pilot-agent, `halyard agent`) as `default` and
//! `ROOTCA`; DestinationRule files as `file-cert:CERT~KEY` / `file-root:CA`.

use api::networking::{ClientTlsMode, ClientTlsSettings};
use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService,
    TransportSocket, api_config_source::ApiType, config_source::ConfigSourceSpecifier,
    data_source::Specifier, grpc_service::EnvoyGrpc, grpc_service::TargetSpecifier,
    transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    TlsParameters, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};

use super::common::{any, millis};
use crate::mesh::MeshTls;
use crate::model::Protocol;

/// Istio's SDS cluster (pilot-agent's socket) and secret names.
pub const SDS_CLUSTER: &str = "sds-grpc";
pub const SDS_DEFAULT: &str = "default";
pub const SDS_ROOT: &str = "ROOTCA";
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// The endpoint label Istio's injector sets on pods with a sidecar.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Endpoint metadata key the transport socket matches look at.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// What a client sidecar's outbound listener sniffed as HTTP sends over
/// mTLS (Istio's `mtlsHTTPALPNs`).
pub const MTLS_HTTP_ALPNS: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// TCP over mTLS from a sidecar (`mtlsTCPWithMxcALPNs`, `ALPNInMeshWithMxc`).
pub const MTLS_TCP_ALPNS: [&str; 2] = ["istio-peer-exchange", "istio"];
/// Every ALPN a sidecar offers over mTLS (`allIstioMtlsALPNs`).
pub const ALL_MTLS_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// Server-side ALPN of an inbound HTTP chain (`ALPNHttp`) and a TCP one
/// (`ALPNDownstreamWithMxc`).
const INBOUND_HTTP_ALPNS: [&str; 2] = ["h2", "http/1.1"];
const INBOUND_TCP_ALPNS: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// Istio's server cipher suites for sidecars (`SupportedCiphers`).
const INBOUND_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// `{api_config_source: {GRPC to sds-grpc}, resource_api_version: V3}`,
/// with `initial_fetch_timeout: 0s` for the workload's own secrets (wait for
/// them, as Istio does).
fn sds_grpc(wait: bool) -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        initial_fetch_timeout: wait.then(|| millis(0)),
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            set_node_on_first_message_only: true,
            grpc_services: vec![GrpcService {
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: SDS_CLUSTER.into(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An SDS secret from the agent (`default`, `ROOTCA`, `file-root:...`).
pub fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(sds_grpc(name == SDS_DEFAULT || name == SDS_ROOT)),
    }
}

/// A `credentialName` secret, fetched over ADS as Istio names it.
fn credential_secret(name: &str) -> SdsSecretConfig {
    let name = if name.contains("://") {
        name.to_string()
    } else {
        format!("kubernetes://{name}")
    };
    SdsSecretConfig {
        name,
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
    }
}

fn exact(names: &[String]) -> Vec<StringMatcher> {
    names
        .iter()
        .map(|n| StringMatcher {
            match_pattern: Some(MatchPattern::Exact(n.clone())),
            ..Default::default()
        })
        .collect()
}

fn tls_params(min: TlsProtocol, ciphers: &[&str]) -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: min as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        cipher_suites: strings(ciphers),
        ..Default::default()
    }
}

/// `{default_validation_context: {match_subject_alt_names}, validation_context_sds_secret_config}`.
/// Istio still emits the (deprecated, still accepted) untyped
/// `match_subject_alt_names` for sidecars; so do we.
#[allow(deprecated)]
fn combined(sans: Vec<StringMatcher>, root: SdsSecretConfig) -> ValidationContextType {
    ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_subject_alt_names: sans,
            ..Default::default()
        }),
        validation_context_sds_secret_config: Some(root),
        ..Default::default()
    })
}

/// The inbound context of a STRICT/PERMISSIVE port: the workload's
/// certificate, a client certificate required and checked against the mesh
/// roots and the trust domain (and its aliases).
pub fn downstream(mesh: &MeshTls, http: bool) -> DownstreamTlsContext {
    let prefixes: Vec<StringMatcher> = mesh
        .trust_domains()
        .map(|td| StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{td}/"))),
            ..Default::default()
        })
        .collect();
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params(TlsProtocol::TlSv12, &INBOUND_CIPHERS)),
            tls_certificate_sds_secret_configs: vec![sds_secret(SDS_DEFAULT)],
            alpn_protocols: strings(if http {
                &INBOUND_HTTP_ALPNS
            } else {
                &INBOUND_TCP_ALPNS
            }),
            validation_context_type: Some(combined(prefixes, sds_secret(SDS_ROOT))),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// What a client sidecar offers over ISTIO_MUTUAL. Istio's static list is
/// `istio-peer-exchange, istio` (`+ h2` for HTTP/2) and its `istio.alpn`
/// filter rewrites it per request to `istio-http/1.1` / `istio-h2`; stock
/// Envoy has no such filter, so HTTP clusters offer those values statically
/// (what an Istio client puts on the wire), and the rest Istio's TCP list.
pub fn istio_mutual_alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Http => &["istio-http/1.1"],
        Protocol::Http2 | Protocol::Grpc => &["istio-h2"],
        _ => &MTLS_TCP_ALPNS,
    }
}

/// ISTIO_MUTUAL to a mesh destination: `default` + `ROOTCA`, the server
/// checked against `sans` (the destination's SPIFFE ids).
pub fn istio_mutual(sans: &[String], sni: &str, protocol: Protocol) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params(TlsProtocol::TlSv12, &[])),
            tls_certificate_sds_secret_configs: vec![sds_secret(SDS_DEFAULT)],
            alpn_protocols: strings(istio_mutual_alpn(protocol)),
            validation_context_type: Some(combined(exact(sans), sds_secret(SDS_ROOT))),
            ..Default::default()
        }),
        sni: sni.to_string(),
        ..Default::default()
    }
}

/// SIMPLE or MUTUAL origination with the DestinationRule's files (served by
/// the agent as `file-cert:CERT~KEY` and `file-root:CA`; the CA defaults to
/// the system roots, `file-root:system`, as in Istio) or, when the rule has
/// a workload selector, its `credentialName` secret over ADS. `sans` are the
/// rule's `subjectAltNames` (or the ServiceEntry's when it names none).
pub fn user(
    settings: &ClientTlsSettings,
    sans: &[String],
    http2: bool,
) -> Result<UpstreamTlsContext, String> {
    let mutual = settings.mode == Some(ClientTlsMode::Mutual);
    let insecure = settings.insecure_skip_verify == Some(true);
    let mut common = CommonTlsContext {
        tls_params: Some(tls_params(TlsProtocol::TlSv12, &[])),
        ..Default::default()
    };
    if let Some(cred) = settings
        .credential_name
        .as_deref()
        .filter(|c| !c.is_empty())
    {
        if mutual {
            common.tls_certificate_sds_secret_configs = vec![credential_secret(cred)];
        }
        if !insecure {
            common.validation_context_type = Some(combined(
                exact(sans),
                credential_secret(&format!("{cred}-cacert")),
            ));
        }
    } else {
        if mutual {
            let (Some(cert), Some(key)) = (
                settings
                    .client_certificate
                    .as_deref()
                    .filter(|s| !s.is_empty()),
                settings.private_key.as_deref().filter(|s| !s.is_empty()),
            ) else {
                return Err("tls.mode MUTUAL needs clientCertificate and privateKey".into());
            };
            common.tls_certificate_sds_secret_configs =
                vec![sds_secret(&format!("file-cert:{cert}~{key}"))];
        }
        common.validation_context_type = Some(if insecure {
            ValidationContextType::ValidationContext(CertificateValidationContext::default())
        } else {
            let ca = settings
                .ca_certificates
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("system");
            let root = sds_secret(&format!("file-root:{ca}"));
            let ValidationContextType::CombinedValidationContext(mut c) =
                combined(exact(sans), root)
            else {
                unreachable!("combined() builds a combined context")
            };
            if let (Some(crl), Some(v)) = (
                settings.ca_crl.as_deref().filter(|s| !s.is_empty()),
                c.default_validation_context.as_mut(),
            ) {
                v.crl = Some(DataSource {
                    specifier: Some(Specifier::Filename(crl.to_string())),
                    ..Default::default()
                });
            }
            ValidationContextType::CombinedValidationContext(c)
        });
    }
    if http2 {
        common.alpn_protocols = strings(&["h2"]);
    }
    Ok(UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: settings.sni.clone().unwrap_or_default(),
        ..Default::default()
    })
}

/// `envoy.transport_sockets.tls` around a context.
pub fn socket<M: prost::Message + prost::Name>(ctx: &M) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

/// `envoy.transport_sockets.raw_buffer`.
pub fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &RawBuffer::default(),
        ))),
    }
}

/// Auto-mTLS: ISTIO_MUTUAL to endpoints labelled `tlsMode: istio`,
/// plaintext to the rest (Istio's `tlsMode-istio` / `tlsMode-disabled`).
pub fn auto_mtls_matches(ctx: &UpstreamTlsContext) -> Vec<TransportSocketMatch> {
    let mut istio = Struct::default();
    istio.fields.insert(
        "tlsMode".into(),
        Value {
            kind: Some(Kind::StringValue("istio".into())),
        },
    );
    vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(istio),
            transport_socket: Some(socket(ctx)),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer()),
        },
    ]
}

/// Istio's ISTIO_MUTUAL SNI: `outbound_.PORT_.SUBSET_.HOST`.
pub fn istio_sni(port: u32, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}
