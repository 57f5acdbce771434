//! Cross-resource analysis, like `istioctl analyze`: each analyzer looks at
//! the whole set of resources and reports Istio's message codes (IST0101
//! ReferencedResourceNotFound, IST0109 ConflictingMeshGatewayVirtualServiceHosts,
//! ...) at Istio's levels. Pure: resources in, messages out, so the pilot can
//! run the same analysis on its config store.

mod index;
mod kube;
mod networking;
mod security;

use std::fmt;

use crate::mesh_config::MeshConfig;
use crate::{Kind, Resource, Source};

pub use index::Index;

/// How serious a message is (istioctl's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Level::Info),
            "warning" | "warn" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            _ => Err(format!(
                "unknown level `{s}` (expected Error, Warning or Info)"
            )),
        }
    }
}

/// One of Istio's message types: code, name and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
}

macro_rules! codes {
    ($($id:ident = $code:literal, $name:literal, $level:ident;)*) => {
        /// The message types Halyard's analyzers report.
        pub mod codes {
            use super::{Code, Level};
            $(pub const $id: Code = Code { code: $code, name: $name, level: Level::$level };)*
            /// Every code, in code order.
            pub const ALL: &[Code] = &[$($id),*];
        }
    };
}

codes! {
    DEPRECATED = "IST0002", "Deprecated", Warning;
    REFERENCED_RESOURCE_NOT_FOUND = "IST0101", "ReferencedResourceNotFound", Error;
    NAMESPACE_NOT_INJECTED = "IST0102", "NamespaceNotInjected", Info;
    POD_MISSING_PROXY = "IST0103", "PodMissingProxy", Warning;
    SCHEMA_VALIDATION_ERROR = "IST0106", "SchemaValidationError", Error;
    CONFLICTING_MESH_GATEWAY_VS_HOSTS = "IST0109", "ConflictingMeshGatewayVirtualServiceHosts", Error;
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS = "IST0110", "ConflictingSidecarWorkloadSelectors", Error;
    MULTIPLE_SIDECARS_WITHOUT_SELECTORS = "IST0111", "MultipleSidecarsWithoutWorkloadSelectors", Error;
    VS_DESTINATION_PORT_SELECTOR_REQUIRED = "IST0112", "VirtualServiceDestinationPortSelectorRequired", Error;
    MTLS_POLICY_CONFLICT = "IST0113", "MTLSPolicyConflict", Error;
    DEPLOYMENT_MULTIPLE_SERVICES = "IST0116", "DeploymentAssociatedToMultipleServices", Warning;
    PORT_NAME_NOT_UNDER_CONVENTION = "IST0118", "PortNameIsNotUnderNamingConvention", Info;
    NAMESPACE_MULTIPLE_INJECTION_LABELS = "IST0123", "NamespaceMultipleInjectionLabels", Warning;
    NO_MATCHING_WORKLOADS = "IST0127", "NoMatchingWorkloadsFound", Warning;
    NO_SERVER_CERT_VERIFICATION_DR = "IST0128", "NoServerCertificateVerificationDestinationLevel", Warning;
    NO_SERVER_CERT_VERIFICATION_PORT = "IST0129", "NoServerCertificateVerificationPortLevel", Warning;
    VS_UNREACHABLE_RULE = "IST0130", "VirtualServiceUnreachableRule", Warning;
    VS_INEFFECTIVE_MATCH = "IST0131", "VirtualServiceIneffectiveMatch", Info;
    VS_HOST_NOT_FOUND_IN_GATEWAY = "IST0132", "VirtualServiceHostNotFoundInGateway", Warning;
    SCHEMA_WARNING = "IST0133", "SchemaWarning", Warning;
    SERVICE_ENTRY_ADDRESSES_REQUIRED = "IST0134", "ServiceEntryAddressesRequired", Warning;
    DEPLOYMENT_CONFLICTING_PORTS = "IST0137", "DeploymentConflictingPorts", Warning;
    GATEWAY_DUPLICATE_CERTIFICATE = "IST0138", "GatewayDuplicateCertificate", Warning;
    INGRESS_ROUTE_RULES_NOT_AFFECTED = "IST0140", "IngressRouteRulesNotAffected", Warning;
    INVALID_APPLICATION_UID = "IST0144", "InvalidApplicationUID", Warning;
    CONFLICTING_GATEWAYS = "IST0145", "ConflictingGateways", Error;
    IMAGE_AUTO_WITHOUT_INJECTION_WARNING = "IST0146", "ImageAutoWithoutInjectionWarning", Warning;
    IMAGE_AUTO_WITHOUT_INJECTION_ERROR = "IST0147", "ImageAutoWithoutInjectionError", Error;
    JWT_CLAIM_ROUTING_WITHOUT_REQUEST_AUTHN = "IST0149", "JwtClaimBasedRoutingWithoutRequestAuthN", Error;
    EXTERNAL_NAME_INVALID_PORT_NAME = "IST0150", "ExternalNameServiceTypeInvalidPortName", Warning;
    INVALID_GATEWAY_CREDENTIAL = "IST0161", "InvalidGatewayCredential", Error;
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE = "IST0162", "GatewayPortNotDefinedOnService", Warning;
    REFERENCED_INTERNAL_GATEWAY = "IST0165", "ReferencedInternalGateway", Warning;
    INEFFECTIVE_POLICY = "IST0167", "IneffectivePolicy", Warning;
    DR_SUBSET_NOT_SELECT_PODS = "IST0173", "DestinationRuleSubsetNotSelectPods", Error;
    UNKNOWN_DR_HOST = "IST0174", "UnknownDestinationRuleHost", Warning;
    JWKS_URI_FETCH_UNRESTRICTED = "IST0175", "JwksUriFetchUnrestricted", Warning;
    CONFLICTING_SERVICE_ENTRY_PROTOCOL = "IST0177", "ConflictingServiceEntryProtocol", Warning;
}

/// One finding about one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub code: Code,
    pub kind: Kind,
    /// `metadata.namespace` as written (None when absent).
    pub namespace: Option<String>,
    pub name: String,
    pub source: Option<Source>,
    pub text: String,
}

impl Message {
    pub(crate) fn new(code: Code, r: &Resource, text: impl Into<String>) -> Message {
        Message {
            code,
            kind: r.kind,
            namespace: r.meta.namespace.clone(),
            name: r.meta.name.clone(),
            source: Some(r.source.clone()),
            text: text.into(),
        }
    }

    /// `Kind ns/name` (or `Kind name` without a namespace), as istioctl
    /// names the resource.
    pub fn origin(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

impl fmt::Display for Message {
    /// `Error [IST0101] (VirtualService ns/name file:line) Referenced host not found: "x"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] ({}",
            self.code.level,
            self.code.code,
            self.origin()
        )?;
        if let Some(s) = &self.source {
            write!(f, " {s}")?;
        }
        write!(f, ") {}", self.text)
    }
}

/// Settings of an analysis run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The mesh config in effect (defaults when absent).
    pub mesh_config: Option<MeshConfig>,
    /// Only run analyzers whose name is listed (Istio's names, e.g.
    /// `virtualservice.DestinationHostAnalyzer`); all when empty.
    pub only: Vec<String>,
    /// Add Istio's default ingress gateway (Service and Pod
    /// `istio-ingressgateway` in `istio-system`) when absent, as
    /// `istioctl analyze` does for files analysed offline.
    pub default_resources: bool,
}

/// The resources `istioctl analyze` assumes offline: the default ingress
/// gateway's Service and Pod.
const DEFAULTS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system, labels: {app: istio-ingressgateway, istio: ingressgateway}}\nspec:\n  selector: {app: istio-ingressgateway, istio: ingressgateway}\n  ports:\n  - {name: status-port, port: 15021, targetPort: 15021}\n  - {name: http2, port: 80, targetPort: 8080}\n  - {name: https, port: 443, targetPort: 8443}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: istio-ingressgateway, namespace: istio-system, labels: {app: istio-ingressgateway, istio: ingressgateway}}\nspec:\n  containers: [{name: istio-proxy, image: docker.io/istio/proxyv2}]\n";

/// `resources` plus Istio's offline defaults that are not already there.
pub fn with_default_resources(resources: &[Resource]) -> Vec<Resource> {
    let (defaults, _) = crate::load::load_str(std::path::Path::new("<istio defaults>"), DEFAULTS);
    let mut all = resources.to_vec();
    for d in defaults {
        if !resources.iter().any(|r| r.key() == d.key()) {
            all.push(d);
        }
    }
    all
}

/// An analyzer: Istio's name for it and the function that runs it.
pub struct Analyzer {
    pub name: &'static str,
    pub run: fn(&Index<'_>, &mut Vec<Message>),
}

/// Every analyzer Halyard implements, by Istio's name.
pub const ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "virtualservice.DestinationHostAnalyzer",
        run: networking::vs_destination_hosts,
    },
    Analyzer {
        name: "virtualservice.DestinationRuleAnalyzer",
        run: networking::vs_destination_rules,
    },
    Analyzer {
        name: "virtualservice.GatewayAnalyzer",
        run: networking::vs_gateways,
    },
    Analyzer {
        name: "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        run: networking::vs_conflicting_mesh_hosts,
    },
    Analyzer {
        name: "virtualservice.JWTClaimRouteAnalyzer",
        run: security::jwt_claim_route,
    },
    Analyzer {
        name: "schemaValidation.CollectionValidationAnalyzer",
        run: networking::vs_match_overlap,
    },
    Analyzer {
        name: "destinationrule.CaCertificateAnalyzer",
        run: networking::dr_ca_certificates,
    },
    Analyzer {
        name: "destinationrule.PodNotSelectedAnalyzer",
        run: networking::dr_subsets_select_pods,
    },
    Analyzer {
        name: "gateway.IngressGatewayPortAnalyzer",
        run: networking::gateway_ports,
    },
    Analyzer {
        name: "gateway.ConflictingGatewayAnalyzer",
        run: networking::conflicting_gateways,
    },
    Analyzer {
        name: "gateway.SecretAnalyzer",
        run: networking::gateway_secrets,
    },
    Analyzer {
        name: "gateway.CertificateAnalyzer",
        run: networking::gateway_duplicate_certificates,
    },
    Analyzer {
        name: "serviceentry.ProtocolAddressesAnalyzer",
        run: networking::se_addresses,
    },
    Analyzer {
        name: "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
        run: networking::se_conflicting_protocols,
    },
    Analyzer {
        name: "sidecar.SelectorAnalyzer",
        run: networking::sidecar_selectors,
    },
    Analyzer {
        name: "service.PortNameAnalyzer",
        run: kube::port_names,
    },
    Analyzer {
        name: "deployment.ServiceAssociationAnalyzer",
        run: kube::service_association,
    },
    Analyzer {
        name: "deployment.ApplicationUIDAnalyzer",
        run: kube::application_uid,
    },
    Analyzer {
        name: "injection.Analyzer",
        run: kube::injection,
    },
    Analyzer {
        name: "injection.ImageAutoAnalyzer",
        run: kube::image_auto,
    },
    Analyzer {
        name: "authz.AuthorizationPoliciesAnalyzer",
        run: security::authorization_policies,
    },
    Analyzer {
        name: "authn.BlockedCIDRsAnalyzer",
        run: security::blocked_cidrs,
    },
    Analyzer {
        name: "authn.MTLSAnalyzer",
        run: security::mtls_conflicts,
    },
    Analyzer {
        name: "deprecation.FieldAnalyzer",
        run: networking::deprecated_fields,
    },
];

/// Runs the analyzers over `resources` and returns their messages, sorted
/// by file position then code.
pub fn analyze(resources: &[Resource], options: &Options) -> Vec<Message> {
    let default_mesh = MeshConfig::default();
    let owned;
    let resources = if options.default_resources {
        owned = with_default_resources(resources);
        &owned[..]
    } else {
        resources
    };
    let index = Index::new(
        resources,
        options.mesh_config.as_ref().unwrap_or(&default_mesh),
    );
    let mut out = Vec::new();
    for a in ANALYZERS {
        if options.only.is_empty() || options.only.iter().any(|n| n == a.name) {
            (a.run)(&index, &mut out);
        }
    }
    out.sort_by(|a, b| (&a.source, a.code.code, &a.text).cmp(&(&b.source, b.code.code, &b.text)));
    out.dedup();
    out
}

/// Schema problems (load and validation errors) as IST0106 messages.
pub fn schema_messages(errors: &[crate::ConfigError]) -> Vec<Message> {
    errors
        .iter()
        .map(|e| Message {
            code: codes::SCHEMA_VALIDATION_ERROR,
            kind: e
                .kind
                .as_deref()
                .and_then(|k| Kind::ALL.into_iter().find(|x| x.as_str() == k))
                .unwrap_or(Kind::Namespace),
            namespace: e.namespace.clone(),
            name: e.name.clone().unwrap_or_default(),
            source: Some(Source {
                file: e.file.clone(),
                line: e.line,
            }),
            text: format!(
                "Schema validation error: {}{}",
                e.field
                    .as_deref()
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default(),
                e.message
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests;
