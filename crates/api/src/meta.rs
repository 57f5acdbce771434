//! Kubernetes object metadata (`metadata:`), the part of every document that
//! names it. Tolerates the extra fields the API server adds (uid,
//! resourceVersion, creationTimestamp, generation, managedFields, ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of a Kubernetes object. Only `name` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `metadata` of a pod template: labels and annotations, no name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_server_fields() {
        let m: ObjectMeta = serde_yaml_ng::from_str(
            "name: a\nnamespace: b\nuid: 1234\nresourceVersion: '5'\ngeneration: 2\n\
             creationTimestamp: 2024-01-01T00:00:00Z\nlabels: {app: x}\n",
        )
        .unwrap();
        assert_eq!(m.name, "a");
        assert_eq!(m.namespace.as_deref(), Some("b"));
        assert_eq!(m.labels["app"], "x");
    }

    #[test]
    fn name_is_required() {
        let e = serde_yaml_ng::from_str::<ObjectMeta>("namespace: b\n").unwrap_err();
        assert!(e.to_string().contains("missing field `name`"), "{e}");
    }
}
