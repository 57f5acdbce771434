//! The Kubernetes objects Halyard reads: Namespace and ServiceAccount
//! (metadata only), Service, Deployment, Pod and Secret (TLS credentials) — just the fields the mesh
//! and the local runtime use. Unknown Kubernetes fields are ignored, not errors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::TemplateMeta;

/// `spec` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpec {
    /// Pods with these labels are the endpoints. `None`: no selector (endpoints
    /// are managed elsewhere); `Some({})` selects nothing in Kubernetes either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// `None` or `"None"` (headless) or an IP.
    #[serde(rename = "clusterIP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    /// ClusterIP (default), NodePort, LoadBalancer, ExternalName.
    #[serde(rename = "type")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
}

/// A port of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u32,
    /// Defaults to `port` when absent.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// TCP (default), UDP, SCTP.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Istio reads the protocol from here (`http`, `grpc`, `tcp`, ...) before the port name.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// A port given as a number or as a container port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntOrString {
    Int(u32),
    String(String),
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_u32(*i),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrString, E> {
                u32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("port {v} out of range")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrString, E> {
                u32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("port {v} out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `spec` of a Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentSpec {
    /// Defaults to 1 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
}

/// `selector: {matchLabels: {...}}` (`matchExpressions` are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A Deployment's pod template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodTemplateSpec {
    pub metadata: TemplateMeta,
    pub spec: PodSpec,
}

/// `spec` of a Pod (and of a pod template).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    /// `default` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Pods on the host network get no sidecar.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

/// The part of a pod or container `securityContext` the mesh cares about
/// (uid 1337 is reserved for the sidecar).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecurityContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
}

/// A Secret: its `type` and the names of its `data`/`stringData` keys
/// (values are not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Secret {
    /// e.g. `kubernetes.io/tls`, `Opaque`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    /// Keys of `data` and `stringData` (`tls.crt`, `tls.key`, `ca.crt`, `cert`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// A container; the local runtime runs `command` + `args` with `env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// `env: [{name, value}]` (`valueFrom` is ignored: `value` is then `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A port a container listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub container_port: u32,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_tolerates_unknown_fields_and_int_or_string() {
        let s: ServiceSpec = serde_yaml_ng::from_str(
            "selector: {app: reviews}\nsessionAffinity: None\ntype: ClusterIP\nclusterIP: 10.0.0.1\n\
             ports:\n- {name: http, port: 9080, targetPort: 9080, appProtocol: http}\n\
             - {name: grpc, port: 80, targetPort: grpc-port, nodePort: 30000}\n",
        )
        .unwrap();
        assert_eq!(s.ports[0].target_port, Some(IntOrString::Int(9080)));
        assert_eq!(
            s.ports[1].target_port,
            Some(IntOrString::String("grpc-port".into()))
        );
        assert_eq!(s.cluster_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(s.service_type.as_deref(), Some("ClusterIP"));
        let e = serde_yaml_ng::from_str::<ServiceSpec>("ports: [{port: 1, targetPort: -1}]");
        assert!(e.unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn deployment_template() {
        let d: DeploymentSpec = serde_yaml_ng::from_str(
            "replicas: 2\nselector: {matchLabels: {app: a}}\nstrategy: {}\ntemplate:\n  \
             metadata: {labels: {app: a}, annotations: {sidecar.istio.io/inject: 'true'}}\n  \
             spec:\n    serviceAccountName: sa\n    containers:\n    - name: c\n      \
             image: x\n      command: [echo]\n      args: [hi]\n      \
             env: [{name: A, value: '1'}, {name: B, valueFrom: {fieldRef: {fieldPath: x}}}]\n      \
             ports: [{containerPort: 8080}]\n      resources: {}\n",
        )
        .unwrap();
        assert_eq!(d.replicas, Some(2));
        let c = &d.template.spec.containers[0];
        assert_eq!(c.command, ["echo"]);
        assert_eq!(c.env[1].value, None);
        assert_eq!(c.ports[0].container_port, 8080);
        assert_eq!(
            d.template.metadata.annotations["sidecar.istio.io/inject"],
            "true"
        );
    }
}
