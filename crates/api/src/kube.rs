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
    /// The keys whose value is PEM (`-----BEGIN ...`), after base64 for `data`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pem_keys: Vec<String>,
    /// `notAfter` (Unix seconds) of the certificate in `tls.crt` or `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<i64>,
}

/// The `notAfter` time (Unix seconds) of the first certificate of a PEM
/// bundle; `None` when it cannot be read.
pub fn pem_cert_not_after(pem: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(pem).ok()?;
    let (_, rest) = text.split_once("-----BEGIN CERTIFICATE-----")?;
    let (body, _) = rest.split_once("-----END CERTIFICATE-----")?;
    let der = decode_base64(body)?;
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?,
    // serial, signature, issuer, validity SEQUENCE { notBefore, notAfter } ...
    let (_, cert, _) = der_next(&der)?;
    let (_, mut tbs, _) = der_next(cert)?;
    let (tag, _, rest) = der_next(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit version
    }
    for _ in 0..3 {
        let (_, _, rest) = der_next(tbs)?; // serial, signature, issuer
        tbs = rest;
    }
    let (_, validity, _) = der_next(tbs)?;
    let (_, _, rest) = der_next(validity)?; // notBefore
    let (tag, time, _) = der_next(rest)?;
    let time = std::str::from_utf8(time).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = time.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, time.get(2..)?)
        }
        0x18 => (time.get(0..4)?.parse().ok()?, time.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
    let (month, day, hour, min, sec) =
        (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// One DER element: (tag, contents, rest).
fn der_next(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *d.first()?;
    let first = *d.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in d.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, d.get(header..end)?, d.get(end..)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whether `text` (a PEM block) starts like one.
pub fn looks_like_pem(text: &[u8]) -> bool {
    let t = text.trim_ascii_start();
    t.starts_with(b"-----BEGIN ")
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None`
/// when malformed.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

/// A container probe: one action and the kubelet's timing fields (absent
/// fields take Kubernetes' defaults, see the `*_or_default` methods).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

impl Probe {
    /// Kubernetes' defaults: 0 s delay, every 10 s, 1 s timeout, 1 success, 3 failures.
    pub fn initial_delay_or_default(&self) -> u32 {
        self.initial_delay_seconds.unwrap_or(0)
    }
    pub fn period_or_default(&self) -> u32 {
        self.period_seconds.unwrap_or(10).max(1)
    }
    pub fn timeout_or_default(&self) -> u32 {
        self.timeout_seconds.unwrap_or(1).max(1)
    }
    pub fn success_threshold_or_default(&self) -> u32 {
        self.success_threshold.unwrap_or(1).max(1)
    }
    pub fn failure_threshold_or_default(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1)
    }
}

/// `httpGet`: a GET whose status 200-399 is success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpGetAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: Option<IntOrString>,
    /// Defaults to the pod IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` (default) or `HTTPS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// `tcpSocket`: success when a connection opens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSocketAction {
    pub port: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `exec`: success when the command exits 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecAction {
    pub command: Vec<String>,
}

/// `grpc`: grpc.health.v1.Health/Check answers SERVING.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcAction {
    pub port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
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
    fn base64_and_dates() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVs\nbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("a$"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(pem_cert_not_after(b"junk"), None);
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

    #[test]
    fn probes_with_kubernetes_defaults() {
        let c: Container = serde_yaml_ng::from_str(
            "name: c
readinessProbe:
  httpGet: {path: /ready, port: http, httpHeaders: [{name: X-A, value: b}]}
  \
             periodSeconds: 2
livenessProbe: {tcpSocket: {port: 8080}}
\
             startupProbe: {exec: {command: [cat, /tmp/ok]}, failureThreshold: 30}
",
        )
        .unwrap();
        let r = c.readiness_probe.as_ref().unwrap();
        let get = r.http_get.as_ref().unwrap();
        assert_eq!(get.port, Some(IntOrString::String("http".into())));
        assert_eq!(get.http_headers[0].name, "X-A");
        assert_eq!((r.period_or_default(), r.timeout_or_default()), (2, 1));
        let l = c.liveness_probe.as_ref().unwrap();
        assert_eq!(
            l.tcp_socket.as_ref().unwrap().port,
            Some(IntOrString::Int(8080))
        );
        assert_eq!(
            (l.period_or_default(), l.failure_threshold_or_default()),
            (10, 3)
        );
        let s = c.startup_probe.as_ref().unwrap();
        assert_eq!(s.exec.as_ref().unwrap().command, ["cat", "/tmp/ok"]);
        assert_eq!(s.failure_threshold_or_default(), 30);
    }
}
