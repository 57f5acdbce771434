//! The proxy as the pilot sees it: identity, namespace, labels and capture mode,
//! read from the Envoy node (id `sidecar~IP~POD.NS~NS.svc.cluster.local` and
//! Istio's node metadata keys), and its locality (the node's, else its
//! topology labels).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// How traffic reaches the proxy (Istio's `INTERCEPTION_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterceptionMode {
    /// iptables REDIRECT to 15001/15006 (the default).
    Redirect,
    /// No capture: only explicit listeners (Sidecar egress with a bind address).
    None,
}

/// What kind of proxy connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyType {
    Sidecar,
    Router,
}

/// A connected proxy, parsed once per stream.
#[derive(Clone, Debug)]
pub struct ProxyNode {
    pub id: String,
    pub proxy_type: ProxyType,
    pub ips: Vec<String>,
    pub pod: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub interception: InterceptionMode,
    /// The node's `locality`, else its topology labels.
    pub locality: crate::model::Locality,
}

/// Why a node was refused.
#[derive(Debug, thiserror::Error)]
#[error("node id {id:?}: {reason}")]
pub struct NodeError {
    pub id: String,
    pub reason: &'static str,
}

impl ProxyNode {
    /// Parse Istio's node id and metadata.
    pub fn from_node(node: &Node) -> Result<Self, NodeError> {
        let err = |reason| NodeError {
            id: node.id.clone(),
            reason,
        };
        let mut parts = node.id.split('~');
        let proxy_type = match parts.next() {
            Some("sidecar") => ProxyType::Sidecar,
            Some("router") => ProxyType::Router,
            _ => return Err(err("must start with sidecar~ or router~")),
        };
        let ip = parts.next().ok_or_else(|| err("missing IP"))?;
        let pod_ns = parts.next().ok_or_else(|| err("missing POD.NAMESPACE"))?;
        let (pod, id_ns) = pod_ns.split_once('.').unwrap_or((pod_ns, ""));
        let meta = node.metadata.as_ref();
        let namespace = meta_str(meta, "NAMESPACE")
            .filter(|s| !s.is_empty())
            .unwrap_or(id_ns)
            .to_string();
        if namespace.is_empty() {
            return Err(err("no namespace in id or NAMESPACE metadata"));
        }
        let mut ips: Vec<String> = meta_str(meta, "INSTANCE_IPS")
            .map(|s| {
                s.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if ips.is_empty() {
            ips.push(ip.to_string());
        }
        let labels = meta
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(s),
                _ => None,
            })
            .map(|s| {
                s.fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let interception = match meta_str(meta, "INTERCEPTION_MODE") {
            Some("NONE") => InterceptionMode::None,
            _ => InterceptionMode::Redirect,
        };
        let locality = match &node.locality {
            Some(l) if !(l.region.is_empty() && l.zone.is_empty() && l.sub_zone.is_empty()) => {
                crate::model::Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    subzone: l.sub_zone.clone(),
                }
            }
            _ => crate::model::Locality::from_labels(&labels),
        };
        Ok(ProxyNode {
            id: node.id.clone(),
            proxy_type,
            ips,
            pod: pod.to_string(),
            namespace,
            labels,
            service_account: meta_str(meta, "SERVICE_ACCOUNT")
                .unwrap_or("default")
                .to_string(),
            interception,
            locality,
        })
    }
}

fn meta_str<'a>(meta: Option<&'a Struct>, key: &str) -> Option<&'a str> {
    match meta?.fields.get(key) {
        Some(Value {
            kind: Some(Kind::StringValue(s)),
        }) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    #[test]
    fn parses_istio_node() {
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), string("reviews"));
        let mut meta = Struct::default();
        meta.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        meta.fields
            .insert("INTERCEPTION_MODE".into(), string("NONE"));
        let node = Node {
            id: "sidecar~10.0.0.1~reviews-v1-0.bookinfo~bookinfo.svc.cluster.local".into(),
            metadata: Some(meta),
            ..Default::default()
        };
        let p = ProxyNode::from_node(&node).expect("valid");
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.pod, "reviews-v1-0");
        assert_eq!(p.ips, vec!["10.0.0.1"]);
        assert_eq!(p.labels["app"], "reviews");
        assert_eq!(p.interception, InterceptionMode::None);
        assert!(p.locality.is_empty());
    }

    #[test]
    fn locality_from_the_node_else_its_labels() {
        let mut labels = Struct::default();
        labels
            .fields
            .insert("topology.kubernetes.io/region".into(), string("us-east"));
        labels
            .fields
            .insert("topology.kubernetes.io/zone".into(), string("a"));
        let mut meta = Struct::default();
        meta.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        let mut node = Node {
            id: "sidecar~10.0.0.1~a-0.ns~ns.svc.cluster.local".into(),
            metadata: Some(meta),
            ..Default::default()
        };
        let p = ProxyNode::from_node(&node).expect("valid");
        assert_eq!(p.locality.key(), "us-east/a/");
        node.locality = Some(envoy_types::pb::envoy::config::core::v3::Locality {
            region: "eu".into(),
            zone: "b".into(),
            sub_zone: "s".into(),
        });
        let p = ProxyNode::from_node(&node).expect("valid");
        assert_eq!(p.locality.key(), "eu/b/s");
    }

    #[test]
    fn rejects_bad_id() {
        let node = Node {
            id: "gateway".into(),
            ..Default::default()
        };
        assert!(ProxyNode::from_node(&node).is_err());
    }
}
