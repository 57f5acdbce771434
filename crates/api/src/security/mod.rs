//! `security.istio.io` spec types (v1 and v1beta1 share one schema):
//! PeerAuthentication, AuthorizationPolicy, RequestAuthentication.
//!
//! Same conventions as [`crate::networking`]: camelCase in YAML, unknown
//! fields rejected, absent lists and maps empty, optional scalars `Option`.

mod authorization_policy;
mod peer_authentication;
mod request_authentication;

pub use authorization_policy::*;
pub use peer_authentication::*;
pub use request_authentication::*;

use serde::{Deserialize, Serialize};

/// A reference to the object a policy attaches to (`targetRef`/`targetRefs`),
/// e.g. a Kubernetes Gateway or Service. `namespace` must be empty
/// (cross-namespace references are not supported).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyTargetReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
