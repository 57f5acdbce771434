//! PeerAuthentication: whether workloads accept plaintext, mutual TLS, or
//! both — for a namespace, the mesh (root namespace), or selected workloads,
//! with per-port overrides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::networking::LabelSelector;

/// `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PeerAuthentication {
    /// Absent: every workload of the namespace (or of the mesh, in the root namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Port number (as a string key, e.g. `"8080"`) to its mTLS setting.
    /// Needs a `selector`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// `mtls: {mode: STRICT}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MutualTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// `mtls.mode`; UNSET inherits from the parent scope (mesh default PERMISSIVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}
