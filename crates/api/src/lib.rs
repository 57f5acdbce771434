//! Istio config types (networking.istio.io, security.istio.io), the mesh
//! config subset, and the Kubernetes subset Halyard
//! reads, plus the YAML/JSON loader that turns files into [`Resource`]s and
//! [`ConfigError`]s with `file:line:col` positions. Pure: no network, no async.
//!
//! Conventions of the types:
//! - YAML names are Istio's camelCase; Rust names are the snake_case of
//!   them, except `match`, which is `matches`.
//! - Absent optional scalars and messages are `None`; absent lists and maps
//!   are empty; absent `bool`s are `false`. Fields Istio requires but its own
//!   analyzers feed absent (a route's `destination`, a server's `port`) load
//!   as defaults (empty host, port 0) for validation to report.
//! - Durations are [`Duration`] (Go syntax: `"5s"`, `"1.5m"`, `"100ms"`).
//! - String matches are [`networking::StringMatch`]: `Exact`, `Prefix`,
//!   `Regex`, or `Present` for `{}` (header present with any value).
//! - Percentages are [`networking::Percent`] `{value: f64}`, 0–100.
//! - Enums reject unknown values, listing the accepted ones; every Istio
//!   struct rejects unknown fields (with a did-you-mean); Istio's
//!   "at most one of" field groups are enforced. Kubernetes kinds ignore
//!   fields Halyard does not read.
//!
//! ```no_run
//! let (resources, errors) = api::load::load_path(std::path::Path::new("config/"));
//! for e in &errors {
//!     eprintln!("{e}"); // file:line:col: Kind ns/name: field.path: message
//! }
//! for r in &resources {
//!     if let api::Spec::VirtualService(vs) = &r.spec {
//!         println!("{} routes {:?}", r.key(), vs.hosts);
//!     }
//! }
//! ```

use std::fmt;
use std::path::PathBuf;

pub mod analysis;
pub mod duration;
mod error;
pub mod kube;
pub mod load;
pub mod mesh_config;
pub mod meta;
pub mod networking;
pub mod security;
pub mod validation;

pub use duration::Duration;
pub use error::ConfigError;

/// One parsed document (or one item of a `kind: List`).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub meta: meta::ObjectMeta,
    pub api_version: String,
    pub source: Source,
    pub spec: Spec,
}

impl Resource {
    /// `metadata.namespace`, or `"default"` when absent (also for
    /// cluster-scoped kinds such as Namespace).
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }

    /// `"Kind/namespace/name"`, unique per object.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace(), self.meta.name)
    }
}

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based line where the document starts: its first line that is not
    /// blank or a comment. For a `List` item, the line of its `-` (or of the
    /// List, when the items are written in flow style `[...]`).
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The kinds Halyard knows. The loader produces resources only for the
/// modelled ones ([`Kind::is_modelled`]); the others are recognised and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    Gateway,
    Namespace,
    Service,
    ServiceAccount,
    Deployment,
    Pod,
    Secret,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    WorkloadGroup,
    // Istio kinds not modelled yet (skipped by the loader).
    EnvoyFilter,
    Telemetry,
    ProxyConfig,
    WasmPlugin,
}

impl Kind {
    /// Every kind, modelled first.
    pub const ALL: [Kind; 20] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::Gateway,
        Kind::Namespace,
        Kind::Service,
        Kind::ServiceAccount,
        Kind::Deployment,
        Kind::Pod,
        Kind::Secret,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::WorkloadGroup,
        Kind::EnvoyFilter,
        Kind::Telemetry,
        Kind::ProxyConfig,
        Kind::WasmPlugin,
    ];

    /// The `kind:` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::Gateway => "Gateway",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Deployment => "Deployment",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::Telemetry => "Telemetry",
            Kind::ProxyConfig => "ProxyConfig",
            Kind::WasmPlugin => "WasmPlugin",
        }
    }

    /// The API group (`""` for the Kubernetes core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::WorkloadGroup
            | Kind::Sidecar
            | Kind::Gateway
            | Kind::EnvoyFilter
            | Kind::ProxyConfig => "networking.istio.io",
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::Telemetry => "telemetry.istio.io",
            Kind::WasmPlugin => "extensions.istio.io",
            Kind::Namespace | Kind::Service | Kind::ServiceAccount | Kind::Pod | Kind::Secret => "",
            Kind::Deployment => "apps",
        }
    }

    /// Whether the loader parses this kind into a [`Spec`].
    pub fn is_modelled(self) -> bool {
        !matches!(
            self,
            Kind::EnvoyFilter | Kind::Telemetry | Kind::ProxyConfig | Kind::WasmPlugin
        )
    }

    /// The kind named `kind` in API group `group`, if Halyard knows it.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.group() == group)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed body of a resource: Istio kinds carry their `spec`; Kubernetes
/// kinds carry the part of `spec` Halyard reads (Namespace and ServiceAccount
/// only have metadata, found in [`Resource::meta`]).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // Plain values keep matching simple; resources are few.
pub enum Spec {
    VirtualService(networking::VirtualService),
    DestinationRule(networking::DestinationRule),
    ServiceEntry(networking::ServiceEntry),
    WorkloadEntry(networking::WorkloadEntry),
    Sidecar(networking::Sidecar),
    Gateway(networking::Gateway),
    WorkloadGroup(networking::WorkloadGroup),
    PeerAuthentication(security::PeerAuthentication),
    AuthorizationPolicy(security::AuthorizationPolicy),
    RequestAuthentication(security::RequestAuthentication),
    Namespace,
    Service(kube::ServiceSpec),
    ServiceAccount,
    Deployment(kube::DeploymentSpec),
    Pod(kube::PodSpec),
    Secret(kube::Secret),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_roundtrip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_group_kind(k.group(), k.as_str()), Some(k));
        }
        assert_eq!(Kind::from_group_kind("", "ConfigMap"), None);
        assert_eq!(Kind::from_group_kind("apps", "Service"), None);
    }

    #[test]
    fn key_and_namespace() {
        let r = Resource {
            kind: Kind::Namespace,
            meta: meta::ObjectMeta {
                name: "prod".into(),
                ..Default::default()
            },
            api_version: "v1".into(),
            source: Source {
                file: "a.yaml".into(),
                line: 1,
            },
            spec: Spec::Namespace,
        };
        assert_eq!(r.namespace(), "default");
        assert_eq!(r.key(), "Namespace/default/prod");
        assert_eq!(r.source.to_string(), "a.yaml:1");
    }
}
