//! Turning one YAML document (or one `List` item) into a [`Resource`]: read
//! the header (apiVersion, kind, metadata), decide whether Halyard models the
//! kind, then deserialise the typed spec, mapping any serde error to a
//! [`ConfigError`] with the file's line, the field path and a did-you-mean.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_yaml_ng::Value;

use super::split::{self, DocText};
use crate::error::with_suggestion;
use crate::meta::ObjectMeta;
use crate::{ConfigError, Kind, Resource, Source, Spec, kube, networking, security};

/// apiVersions accepted for networking.istio.io (one schema).
pub const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// apiVersions accepted for security.istio.io (one schema).
pub const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// An Istio object: unknown top-level fields are errors; `status` is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IstioObject<S: Default> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

/// A Secret: `type` and the keys of `data`/`stringData`, at the top level.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretObject {
    metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
    #[serde(default)]
    data: Option<std::collections::BTreeMap<String, Value>>,
    #[serde(default)]
    string_data: Option<std::collections::BTreeMap<String, Value>>,
}

/// A Kubernetes object: unknown fields are ignored, `spec` may be absent.
#[derive(Deserialize)]
struct KubeObject<S: Default> {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
}

/// Where the typed pass reads from: the document text (errors have
/// positions) or an already parsed `List` item (errors point at the List).
enum Input<'a> {
    Text(&'a str),
    Item(&'a Value),
}

/// A typed-pass failure: the field path and serde_yaml's error.
struct Failure {
    path: String,
    /// The path as map keys (`Some`) and list indexes (`None` key, `Some` index).
    segments: Vec<PathStep>,
    error: serde_yaml_ng::Error,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// Kinds whose CRD schema requires `spec`.
const SPEC_REQUIRED: [Kind; 3] = [Kind::ServiceEntry, Kind::WorkloadEntry, Kind::WorkloadGroup];

/// How many unknown fields one document may drop under `allow_unknown`.
const MAX_UNKNOWN_FIELDS: usize = 64;

fn is_unknown_field(e: &serde_yaml_ng::Error) -> bool {
    e.to_string().contains("unknown field `")
}

/// The name in serde's "unknown field `x`, expected ...".
fn unknown_field_name(e: &serde_yaml_ng::Error) -> Option<String> {
    let text = e.to_string();
    let (_, rest) = text.split_once("unknown field `")?;
    let (name, _) = rest.split_once('`')?;
    Some(name.to_string())
}

/// Removes `field` from the mapping at `path` (or at the path's parent,
/// when the path already ends with the field). Returns whether it did.
fn remove_field(value: &mut Value, path: &[PathStep], field: &str) -> bool {
    let path = match path.last() {
        Some(PathStep::Key(k)) if k == field => &path[..path.len() - 1],
        _ => path,
    };
    let mut cur = value;
    for step in path {
        let next = match step {
            PathStep::Key(k) => cur.get_mut(k.as_str()),
            PathStep::Index(i) => cur.get_mut(*i),
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match cur.as_mapping_mut() {
        Some(m) => m.remove(field).is_some(),
        None => false,
    }
}

impl Input<'_> {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        let result = match self {
            Input::Text(text) => {
                serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
            }
            Input::Item(value) => serde_path_to_error::deserialize((*value).clone()),
        };
        result.map_err(|e| {
            let segments = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(PathStep::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(PathStep::Index(*index)),
                    _ => None,
                })
                .collect();
            Failure {
                path: e.path().to_string(),
                segments,
                error: e.into_inner(),
            }
        })
    }
}

/// Who a document is, as far as its header says (for error messages).
#[derive(Default)]
struct Header<'a> {
    api_version: Option<&'a str>,
    kind: Option<&'a str>,
    name: Option<&'a str>,
    namespace: Option<&'a str>,
}

impl<'a> Header<'a> {
    fn of(value: &'a Value) -> Header<'a> {
        let meta = value.get("metadata");
        let field =
            |v: Option<&'a Value>, k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_str);
        Header {
            api_version: field(Some(value), "apiVersion"),
            kind: field(Some(value), "kind"),
            name: field(meta, "name"),
            namespace: field(meta, "namespace"),
        }
    }
}

/// The header of a document that is not valid as a whole.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LooseHeader {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<LooseMeta>,
}

#[derive(Default, Deserialize)]
struct LooseMeta {
    name: Option<String>,
    namespace: Option<String>,
}

/// Where a document is: the file line of its text's first line (for
/// mapping parser positions) and of its first non-comment line (reported).
#[derive(Clone, Copy)]
struct Lines {
    text: usize,
    head: usize,
}

/// Loads the documents of one file, collecting resources and errors.
pub(crate) struct Loader<'a> {
    pub file: &'a Path,
    pub options: super::Options,
    pub resources: Vec<Resource>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl Loader<'_> {
    /// Loads one document of the file.
    pub(crate) fn document(&mut self, doc: DocText<'_>) {
        let at = Lines {
            text: doc.start_line,
            head: doc.start_line + split::leading_blank_lines(doc.text),
        };
        let value: Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                // Name the document if its header still parses (e.g. a
                // duplicate key further down).
                let loose: LooseHeader = serde_yaml_ng::from_str(doc.text).unwrap_or_default();
                let meta = loose.metadata.unwrap_or_default();
                let header = Header {
                    api_version: loose.api_version.as_deref(),
                    kind: loose.kind.as_deref(),
                    name: meta.name.as_deref(),
                    namespace: meta.namespace.as_deref(),
                };
                let error = self.error(at, &header, None, &e);
                self.errors.push(error);
                return;
            }
        };
        if !value.is_mapping() {
            return; // Not a Kubernetes object (a values file, a bare list): not ours.
        }
        let header = Header::of(&value);
        let is_list =
            header.kind.is_some_and(|k| k.ends_with("List")) && value.get("items").is_some();
        if is_list {
            let Some(items) = value.get("items").and_then(Value::as_sequence) else {
                let msg = "`items` must be a list";
                self.errors.push(self.message(at, &header, "items", msg));
                return;
            };
            // Parse each item from its own lines when they can be cut out
            // exactly, so errors inside items keep their positions.
            let texts = split::list_item_texts(doc.text)
                .filter(|t| t.len() == items.len())
                .unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                if !item.is_mapping() {
                    continue;
                }
                let exact = texts.get(i).filter(|(_, text)| {
                    serde_yaml_ng::from_str::<Value>(text).is_ok_and(|v| &v == item)
                });
                match exact {
                    Some((offset, text)) => {
                        let line = doc.start_line + offset;
                        let item_at = Lines {
                            text: line,
                            head: line,
                        };
                        self.object(item_at, Header::of(item), Input::Text(text))
                    }
                    None => self.object(at, Header::of(item), Input::Item(item)),
                }
            }
        } else {
            self.object(at, header, Input::Text(doc.text));
        }
    }

    /// Loads one object (a document or a List item) whose header is known.
    fn object(&mut self, at: Lines, header: Header<'_>, input: Input<'_>) {
        let (api_version, kind_str) = match (header.api_version, header.kind) {
            (None, None) => return, // Not a Kubernetes object.
            (Some(a), Some(k)) => (a, k),
            (None, Some(_)) => {
                let msg = "missing or non-string `apiVersion`";
                self.errors.push(self.message(at, &header, "", msg));
                return;
            }
            (Some(_), None) => {
                let msg = "missing or non-string `kind`";
                self.errors.push(self.message(at, &header, "", msg));
                return;
            }
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let Some(kind) = Kind::from_group_kind(group, kind_str) else {
            return; // ConfigMap, Gateway API, CRDs, ...: not ours.
        };
        let accepted: &[&str] = match group {
            "networking.istio.io" => &NETWORKING_VERSIONS,
            "security.istio.io" => &SECURITY_VERSIONS,
            g if g.ends_with(".istio.io") => &[version],
            _ => &["v1"],
        };
        if !accepted.contains(&version) {
            if group.ends_with(".istio.io") {
                let msg = format!(
                    "unsupported apiVersion `{api_version}` (accepted: {})",
                    accepted
                        .iter()
                        .map(|v| format!("{group}/{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.errors
                    .push(self.message(at, &header, "apiVersion", &msg));
            }
            return; // e.g. extensions/v1beta1 Deployment: not a version we read.
        }
        if !kind.is_modelled() {
            return; // Recognised Istio kind Halyard does not implement yet.
        }
        if SPEC_REQUIRED.contains(&kind) {
            let has_spec = match &input {
                Input::Text(text) => serde_yaml_ng::from_str::<Value>(text)
                    .map(|v| v.get("spec").is_some_and(|s| !s.is_null()))
                    .unwrap_or(true),
                Input::Item(v) => v.get("spec").is_some_and(|s| !s.is_null()),
            };
            if !has_spec {
                let msg = "Required value: this kind needs a `spec`";
                self.errors.push(self.message(at, &header, "spec", msg));
                return;
            }
        }
        let mut owned: Option<Value> = None;
        let mut result = parse_typed(kind, &input);
        // With `allow_unknown`, drop each unknown field (warning about it)
        // and parse again, a bounded number of times.
        for _ in 0..MAX_UNKNOWN_FIELDS {
            let Err(f) = &result else { break };
            if !self.options.allow_unknown || !is_unknown_field(&f.error) {
                break;
            }
            let value = match owned.take() {
                Some(v) => v,
                None => match &input {
                    Input::Text(text) => match serde_yaml_ng::from_str::<Value>(text) {
                        Ok(v) => v,
                        Err(_) => break,
                    },
                    Input::Item(v) => (*v).clone(),
                },
            };
            let mut value = value;
            let Some(field) = unknown_field_name(&f.error) else {
                break;
            };
            if !remove_field(&mut value, &f.segments, &field) {
                break;
            }
            let mut warning = self.error(at, &header, Some(&f.path), &f.error);
            warning.message = format!("{} (ignored: --allow-unknown)", warning.message);
            self.warnings.push(warning);
            result = parse_typed(kind, &Input::Item(&value));
            owned = Some(value);
        }
        match result {
            Ok((meta, spec)) => self.resources.push(Resource {
                kind,
                meta,
                api_version: api_version.to_string(),
                source: Source {
                    file: self.file.to_path_buf(),
                    line: at.head,
                },
                spec,
            }),
            Err(f) => {
                let mut error = self.error(at, &header, Some(&f.path), &f.error);
                if let Some(rest) = error.message.strip_prefix("missing field `")
                    && let Some((name, _)) = rest.split_once('`')
                {
                    let field = match error.field.take() {
                        Some(p) => format!("{p}.{name}"),
                        None => name.to_string(),
                    };
                    error.message = format!("Required value: missing field `{name}`");
                    error.field = Some(field);
                }
                self.errors.push(error);
            }
        }
    }

    /// A serde_yaml error, moved to file coordinates.
    fn error(
        &self,
        at: Lines,
        header: &Header<'_>,
        path: Option<&str>,
        e: &serde_yaml_ng::Error,
    ) -> ConfigError {
        let (line, column) = match e.location() {
            Some(loc) => (at.text + loc.line().saturating_sub(1), loc.column().max(1)),
            None => (at.head, 1),
        };
        let message = clean_message(&e.to_string(), at.text);
        let mut error = self.message(at, header, path.unwrap_or(""), &message);
        error.line = line;
        error.column = column;
        error
    }

    /// An error about a document at its first line.
    fn message(&self, at: Lines, header: &Header<'_>, field: &str, msg: &str) -> ConfigError {
        let mut e = ConfigError::new(self.file, at.head, with_suggestion(msg.to_string()));
        e.kind = header.kind.map(str::to_string);
        e.namespace = header.namespace.map(str::to_string);
        e.name = header.name.map(str::to_string);
        e.field = Some(field.to_string()).filter(|f| !f.is_empty() && f != ".");
        e
    }
}

/// Deserialises the object as `kind`.
fn parse_typed(kind: Kind, input: &Input<'_>) -> Result<(ObjectMeta, Spec), Failure> {
    fn istio<S: DeserializeOwned + Default>(
        input: &Input<'_>,
        wrap: fn(S) -> Spec,
    ) -> Result<(ObjectMeta, Spec), Failure> {
        let o: IstioObject<S> = input.parse()?;
        Ok((o.metadata, wrap(o.spec)))
    }
    fn kube<S: DeserializeOwned + Default>(
        input: &Input<'_>,
        wrap: fn(S) -> Spec,
    ) -> Result<(ObjectMeta, Spec), Failure> {
        let o: KubeObject<S> = input.parse()?;
        Ok((o.metadata, wrap(o.spec)))
    }
    match kind {
        Kind::VirtualService => istio::<networking::VirtualService>(input, Spec::VirtualService),
        Kind::DestinationRule => istio::<networking::DestinationRule>(input, Spec::DestinationRule),
        Kind::ServiceEntry => istio::<networking::ServiceEntry>(input, Spec::ServiceEntry),
        Kind::WorkloadEntry => istio::<networking::WorkloadEntry>(input, Spec::WorkloadEntry),
        Kind::Sidecar => istio::<networking::Sidecar>(input, Spec::Sidecar),
        Kind::Gateway => istio::<networking::Gateway>(input, Spec::Gateway),
        Kind::Namespace => kube::<Option<IgnoredAny>>(input, |_| Spec::Namespace),
        Kind::ServiceAccount => kube::<Option<IgnoredAny>>(input, |_| Spec::ServiceAccount),
        Kind::Service => kube::<kube::ServiceSpec>(input, Spec::Service),
        Kind::Deployment => kube::<kube::DeploymentSpec>(input, Spec::Deployment),
        Kind::Pod => kube::<kube::PodSpec>(input, Spec::Pod),
        Kind::Secret => {
            let o: SecretObject = input.parse()?;
            let mut keys = Vec::new();
            let mut pem_keys = Vec::new();
            let mut cert_not_after = None;
            let decoded = o.data.unwrap_or_default().into_iter().map(|(k, v)| {
                let bytes = kube::decode_base64(v.as_str().unwrap_or_default());
                (k, bytes)
            });
            let plain = o
                .string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, Some(v.as_str().unwrap_or_default().as_bytes().to_vec())));
            for (k, bytes) in decoded.chain(plain) {
                if let Some(b) = bytes.filter(|b| kube::looks_like_pem(b)) {
                    if k == "tls.crt" || k == "cert" {
                        cert_not_after = cert_not_after.or(kube::pem_cert_not_after(&b));
                    }
                    pem_keys.push(k.clone());
                }
                keys.push(k);
            }
            keys.sort();
            keys.dedup();
            pem_keys.sort();
            pem_keys.dedup();
            let secret = kube::Secret {
                secret_type: o.secret_type,
                keys,
                pem_keys,
                cert_not_after,
            };
            Ok((o.metadata, Spec::Secret(secret)))
        }
        Kind::WorkloadGroup => istio::<networking::WorkloadGroup>(input, Spec::WorkloadGroup),
        Kind::PeerAuthentication => {
            istio::<security::PeerAuthentication>(input, Spec::PeerAuthentication)
        }
        Kind::AuthorizationPolicy => {
            istio::<security::AuthorizationPolicy>(input, Spec::AuthorizationPolicy)
        }
        Kind::RequestAuthentication => {
            istio::<security::RequestAuthentication>(input, Spec::RequestAuthentication)
        }
        _ => Err(Failure {
            path: String::new(),
            segments: Vec::new(),
            error: serde::de::Error::custom(format!("{kind} is not modelled yet")),
        }),
    }
}

static AT_LINE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"line (\d+) column (\d+)").ok());
static RUST_TYPES: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"expected (struct \w+|u8|u16|u32|u64|i32|i64|f64|a sequence|a map)$").ok()
});
static OWN_POSITION: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r" at line \d+ column \d+").ok());

/// serde_yaml's message without its own path prefix and position suffix
/// (the error carries both), other positions moved to file lines.
fn clean_message(raw: &str, start_line: usize) -> String {
    let mut msg = raw.to_string();
    // First " at line L column C": the error's own position.
    if let Some(m) = OWN_POSITION
        .as_ref()
        .and_then(|re| re.find(&msg).map(|m| m.range()))
    {
        msg.replace_range(m, "");
    }
    // A leading path (no spaces) such as `spec.http[0]: `.
    if let Some((prefix, rest)) = msg.split_once(": ")
        && !prefix.is_empty()
        && !prefix.contains(char::is_whitespace)
        && !rest.is_empty()
    {
        msg = rest.to_string();
    }
    // serde names Rust types; say what to write in YAML instead.
    if let Some(m) = RUST_TYPES.as_ref().and_then(|re| re.captures(&msg)) {
        let ty = &m[1];
        let plain = match ty {
            "u8" | "u16" | "u32" | "u64" => "a non-negative integer",
            "i32" | "i64" => "an integer",
            "f64" => "a number",
            "a sequence" => "a list",
            _ => "a mapping",
        };
        let start = m.get(0).map_or(0, |m| m.start());
        msg = format!("{}expected {plain}", &msg[..start]);
    }
    match AT_LINE.as_ref() {
        Some(re) => re
            .replace_all(&msg, |c: &regex::Captures<'_>| {
                let line: usize = c[1].parse().unwrap_or(1);
                format!(
                    "line {} column {}",
                    start_line + line.saturating_sub(1),
                    &c[2]
                )
            })
            .into_owned(),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_messages() {
        assert_eq!(
            clean_message("spec.http[0]: unknown field `rout` at line 3 column 5", 10),
            "unknown field `rout`"
        );
        assert_eq!(
            clean_message(
                "did not find expected key at line 3 column 5, while parsing a block mapping at line 1 column 1",
                10
            ),
            "did not find expected key, while parsing a block mapping at line 10 column 1"
        );
        assert_eq!(
            clean_message("invalid type: integer `5`", 1),
            "invalid type: integer `5`"
        );
    }
}
