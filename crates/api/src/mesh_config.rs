//! The MeshConfig subset Halyard reads: trust domain, root namespace, proxy
//! defaults, outbound traffic policy, access logging, tracing and extension
//! providers. Loaded from a mesh config file: a bare MeshConfig, a
//! `meshConfig:` key (Helm values, as in the seed guide), or an
//! `istio` ConfigMap whose `data.mesh` holds the MeshConfig as a string.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::networking::OutboundTrafficMode;
use crate::{ConfigError, Duration};

/// Istio's MeshConfig (the fields Halyard uses; others are rejected as
/// unknown unless the loader allows them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Default `cluster.local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// Default `istio-system`: config here applies mesh-wide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProxyConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<MeshOutboundTrafficPolicy>,
    /// e.g. `/dev/stdout`; empty disables access logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<AccessLogEncoding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_tracing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_auto_mtls: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<MeshExtensionProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<Duration>,
    /// How sidecars normalize request paths before routing and
    /// authorization (default `BASE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<ProxyPathNormalization>,
}

/// `pathNormalization`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyPathNormalization {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalization: Option<PathNormalization>,
}

/// `pathNormalization.normalization`: what the HTTP connection manager does
/// to `:path` (Istio's mapping: `NONE` leaves it alone; `BASE` removes dot
/// segments, decodes unreserved escapes and turns `\` into `/`;
/// `MERGE_SLASHES` also collapses `//`; `DECODE_AND_MERGE_SLASHES` also
/// decodes `%2F` and `%5C`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Same as `BASE`.
    Default,
    None,
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl MeshConfig {
    /// `pathNormalization.normalization`, default `BASE`.
    pub fn path_normalization(&self) -> PathNormalization {
        match self
            .path_normalization
            .as_ref()
            .and_then(|p| p.normalization)
        {
            None | Some(PathNormalization::Default) => PathNormalization::Base,
            Some(n) => n,
        }
    }

    /// `trustDomain`, default `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or("cluster.local")
    }

    /// `rootNamespace`, default `istio-system`.
    pub fn root_namespace(&self) -> &str {
        self.root_namespace.as_deref().unwrap_or("istio-system")
    }
}

/// `outboundTrafficPolicy: {mode: REGISTRY_ONLY}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MeshOutboundTrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,
}

/// `accessLogEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    Text,
    Json,
}

/// `defaultConfig`: the proxy defaults (the subset Halyard reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_drain_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_stats_matcher: Option<Value>,
    /// `image: {imageType: distroless}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Value>,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tracing {
    /// Percentage of requests traced, 0.0–100.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<TracingAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_path_tag_length: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, Value>,
}

/// `zipkin: {address: host:port}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TracingAddress {
    pub address: String,
}

/// An extension provider: a name and one provider-specific body
/// (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`, `zipkin`, `opentelemetry`,
/// `envoyFileAccessLog`, `prometheus`, ...), kept as YAML.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshExtensionProvider {
    pub name: String,
    /// The provider kind (the body's key), e.g. `envoyExtAuthzHttp`.
    pub kind: String,
    /// The body, e.g. `{service: ..., port: ...}`.
    pub config: Value,
}

/// The provider kinds Istio's MeshConfig defines.
pub const EXTENSION_PROVIDER_KINDS: [&str; 13] = [
    "envoyExtAuthzHttp",
    "envoyExtAuthzGrpc",
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
];

impl Serialize for MeshExtensionProvider {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry(&self.kind, &self.config)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for MeshExtensionProvider {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = BTreeMap::<String, Value>::deserialize(d)?;
        let mut name = None;
        let mut body = None;
        for (k, v) in map {
            if k == "name" {
                name = Some(
                    v.as_str()
                        .ok_or_else(|| D::Error::custom("`name` must be a string"))?
                        .to_string(),
                );
            } else if EXTENSION_PROVIDER_KINDS.contains(&k.as_str()) {
                if body.is_some() {
                    return Err(D::Error::custom(
                        "set exactly one provider kind per extension provider",
                    ));
                }
                body = Some((k, v));
            } else {
                let expected: Vec<String> = EXTENSION_PROVIDER_KINDS
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect();
                return Err(D::Error::custom(crate::error::with_suggestion(format!(
                    "unknown field `{k}`, expected `name` or one of {}",
                    expected.join(", ")
                ))));
            }
        }
        let name = name.ok_or_else(|| D::Error::missing_field("name"))?;
        let (kind, config) =
            body.ok_or_else(|| D::Error::custom("extension provider needs a provider kind"))?;
        Ok(MeshExtensionProvider { name, kind, config })
    }
}

impl MeshExtensionProvider {
    /// The `service` and `port` of providers that call a service (ext_authz,
    /// zipkin, opentelemetry, ...).
    pub fn service(&self) -> Option<(&str, Option<u32>)> {
        let svc = self.config.get("service")?.as_str()?;
        let port = self
            .config
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok());
        Some((svc, port))
    }
}

/// Loads a mesh config file (see the module docs for the accepted shapes).
/// An absent key means the defaults.
pub fn load_mesh_config(path: &Path) -> Result<MeshConfig, Box<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Box::new(ConfigError::new(path, 1, format!("cannot read file: {e}"))))?;
    parse_mesh_config(path, &text)
}

/// Parses mesh config text (see [`load_mesh_config`]).
pub fn parse_mesh_config(path: &Path, text: &str) -> Result<MeshConfig, Box<ConfigError>> {
    if text.len() > crate::load::MAX_FILE_BYTES {
        return Err(Box::new(ConfigError::new(path, 1, "file too large")));
    }
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| Box::new(yaml_error(path, &e, 0)))?;
    // ConfigMap `istio`: data.mesh is a YAML string.
    if value.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
        let mesh = value
            .get("data")
            .and_then(|d| d.get("mesh"))
            .and_then(Value::as_str)
            .unwrap_or("");
        return parse_body(path, mesh, 0);
    }
    if let Some(inner) = value.get("meshConfig") {
        let mut e = ConfigError::new(path, 1, "");
        return serde_path_to_error::deserialize(inner.clone()).map_err(|err| {
            e.field = Some(format!("meshConfig.{}", err.path()));
            e.message = crate::error::with_suggestion(err.into_inner().to_string());
            Box::new(e)
        });
    }
    parse_body(path, text, 0)
}

fn parse_body(path: &Path, text: &str, first_line: usize) -> Result<MeshConfig, Box<ConfigError>> {
    if text.trim().is_empty() {
        return Ok(MeshConfig::default());
    }
    serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|err| {
        let field = err.path().to_string();
        let mut e = yaml_error(path, err.inner(), first_line);
        e.field = Some(field).filter(|f| f != ".");
        Box::new(e)
    })
}

fn yaml_error(path: &Path, e: &serde_yaml_ng::Error, first_line: usize) -> ConfigError {
    let mut err = ConfigError::new(path, 1, crate::error::with_suggestion(e.to_string()));
    if let Some(loc) = e.location() {
        err.line = first_line + loc.line();
        err.column = loc.column();
    }
    err.kind = Some("MeshConfig".into());
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<MeshConfig, Box<ConfigError>> {
        parse_mesh_config(Path::new("mesh.yaml"), t)
    }

    #[test]
    fn shapes() {
        let m = parse("trustDomain: example.org\nenableTracing: true\n").unwrap();
        assert_eq!(m.trust_domain(), "example.org");
        assert_eq!(m.root_namespace(), "istio-system");
        let m = parse("meshConfig:\n  accessLogFile: /dev/stdout\npilot: {x: 1}\n").unwrap();
        assert_eq!(m.access_log_file.as_deref(), Some("/dev/stdout"));
        let m = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata:\n  mesh: |-\n    \
             outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n    extensionProviders:\n    \
             - name: authz\n      envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000}\n",
        )
        .unwrap();
        assert_eq!(
            m.outbound_traffic_policy.and_then(|p| p.mode),
            Some(OutboundTrafficMode::RegistryOnly)
        );
        assert_eq!(m.extension_providers[0].kind, "envoyExtAuthzHttp");
        assert_eq!(
            m.extension_providers[0].service(),
            Some(("authz.foo.svc.cluster.local", Some(8000)))
        );
    }

    #[test]
    fn path_normalization() {
        assert_eq!(
            parse("{}\n").unwrap().path_normalization(),
            PathNormalization::Base
        );
        for (text, want) in [
            ("DEFAULT", PathNormalization::Base),
            ("NONE", PathNormalization::None),
            ("MERGE_SLASHES", PathNormalization::MergeSlashes),
            (
                "DECODE_AND_MERGE_SLASHES",
                PathNormalization::DecodeAndMergeSlashes,
            ),
        ] {
            let m = parse(&format!("pathNormalization: {{normalization: {text}}}\n")).unwrap();
            assert_eq!(m.path_normalization(), want, "{text}");
        }
        let e = parse("pathNormalization: {normalization: MERGE}\n").unwrap_err();
        assert!(e.to_string().contains("normalization"), "{e}");
    }

    #[test]
    fn errors() {
        let e = parse("trustDomian: x\n").unwrap_err();
        assert!(e.message.contains("did you mean `trustDomain`"), "{e}");
        let e = parse("extensionProviders: [{name: a, zipkn: {}}]\n").unwrap_err();
        assert!(e.message.contains("did you mean `zipkin`"), "{e}");
        let e = parse("meshConfig: {accessLogEncoding: XML}\n").unwrap_err();
        assert!(e.to_string().contains("accessLogEncoding"), "{e}");
    }

    #[test]
    fn seed_mesh_config() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seed/mesh-config.yaml");
        if !p.exists() {
            println!("skipping: {} not found", p.display());
            return;
        }
        let m = load_mesh_config(&p).unwrap();
        assert_eq!(m.enable_tracing, Some(true));
        let t = m.default_config.and_then(|c| c.tracing).unwrap();
        assert_eq!(t.sampling, Some(1.0));
        assert_eq!(
            t.zipkin.unwrap().address,
            "jaeger-collector.monitoring:9411"
        );
    }
}
