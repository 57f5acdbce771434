//! Checks the types against Istio's own CRD schemas: for every field path of
//! every modelled networking and security kind, a document setting just that field (plus
//! required siblings) must load. Needs Istio's CRDs from /work/shared.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

const CRDS: &str =
    "../../../shared/istio-testdata/istio-api/kubernetes/customresourcedefinitions.gen.yaml";
const KINDS: [&str; 10] = [
    "WorkloadGroup",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "WorkloadEntry",
    "Sidecar",
    "Gateway",
];

fn ty(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

fn map_values(s: &Value) -> Option<&Value> {
    s.get("additionalProperties").filter(|v| v.is_mapping())
}

/// A valid value for schema `s`: enums take their first value, strings
/// `"1s"` (also a valid duration), numbers the minimum or 1.
fn sample(s: &Value) -> Value {
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_sequence)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    match ty(s) {
        "integer" => Value::from(s.get("minimum").and_then(Value::as_u64).unwrap_or(1).max(1)),
        "number" => Value::from(1.0),
        "boolean" => Value::from(true),
        "array" => Value::Sequence(vec![minimal(&s["items"])]),
        "object" => minimal(s),
        _ => Value::from("1s"),
    }
}

/// The smallest valid object for `s`: its required fields only.
fn minimal(s: &Value) -> Value {
    if ty(s) != "object" {
        return sample(s);
    }
    let mut out = Mapping::new();
    if s.get("properties").is_none() {
        if let Some(values) = map_values(s) {
            out.insert("k".into(), sample(values));
        }
        return Value::Mapping(out);
    }
    for r in s
        .get("required")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if let Some(name) = r.as_str() {
            out.insert(name.into(), sample(&s["properties"][name]));
        }
    }
    Value::Mapping(out)
}

/// Every field path under `s`: names, `[]` for list items, `{}` for map values.
fn paths(s: &Value, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let step = |seg: &str| {
        let mut p = prefix.to_vec();
        p.push(seg.to_string());
        p
    };
    match ty(s) {
        "object" => {
            if let Some(props) = s.get("properties").and_then(Value::as_mapping) {
                for (k, v) in props {
                    let p = step(k.as_str().unwrap_or_default());
                    out.push(p.clone());
                    paths(v, &p, out);
                }
            } else if let Some(values) = map_values(s) {
                paths(values, &step("{}"), out);
            }
        }
        "array" => paths(&s["items"], &step("[]"), out),
        _ => {}
    }
}

/// A minimal value for `s` with the field at `path` set.
fn build(s: &Value, path: &[String]) -> Value {
    let Some((head, rest)) = path.split_first() else {
        return sample(s);
    };
    match head.as_str() {
        "[]" => Value::Sequence(vec![build(&s["items"], rest)]),
        "{}" => {
            let mut m = Mapping::new();
            m.insert(
                "k".into(),
                build(map_values(s).unwrap_or(&Value::Null), rest),
            );
            Value::Mapping(m)
        }
        field => {
            let mut obj = minimal(s);
            if let Value::Mapping(m) = &mut obj {
                m.insert(field.into(), build(&s["properties"][field], rest));
            }
            obj
        }
    }
}

#[test]
fn every_crd_field_loads() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(CRDS);
    let Ok(text) = std::fs::read_to_string(&file) else {
        println!("skipping: {} not found", file.display());
        return;
    };
    let mut checked = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let Ok(crd) = <Value as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let group = crd["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !matches!(group.as_str(), "networking.istio.io" | "security.istio.io")
            || !KINDS.contains(&kind)
        {
            continue;
        }
        let versions = crd["spec"]["versions"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let Some(v1) = versions.iter().find(|v| v["name"].as_str() == Some("v1")) else {
            continue;
        };
        let spec = &v1["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut all = Vec::new();
        paths(spec, &[], &mut all);
        let mut yaml = String::new();
        for (i, path) in all.iter().enumerate() {
            let mut doc = Mapping::new();
            doc.insert("apiVersion".into(), format!("{group}/v1").into());
            doc.insert("kind".into(), kind.into());
            let mut meta = Mapping::new();
            meta.insert("name".into(), format!("f{i}").into());
            doc.insert("metadata".into(), Value::Mapping(meta));
            doc.insert("spec".into(), build(spec, path));
            let doc = serde_yaml_ng::to_string(&doc).unwrap_or_default();
            yaml.push_str(doc.trim_end());
            yaml.push_str("\n---\n");
        }
        let (res, errs) = crate::load::load_str(Path::new(kind), &yaml);
        let shown: Vec<String> = errs.iter().take(10).map(ToString::to_string).collect();
        assert!(
            errs.is_empty(),
            "{kind}: {} errors:\n{}",
            errs.len(),
            shown.join("\n")
        );
        assert_eq!(res.len(), all.len(), "{kind}");
        checked += all.len();
    }
    assert!(checked >= 600, "only {checked} field paths checked");
    println!("{checked} CRD field paths load");
}
