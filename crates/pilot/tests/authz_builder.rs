//! Istio's own authorization builder goldens (builder_test.go, transcribed in
//! `shared/istio-testdata/_derived/authz_builder_cases.yaml`): each case's
//! AuthorizationPolicies, built for a proxy in namespace `foo` with labels
//! `{app: httpbin, version: v1}`, must give exactly the expected filters,
//! compared as protobuf messages (both sides parsed into the Envoy type and
//! printed canonically), not as text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::Spec;
use api::mesh_config::MeshConfig;
use pilot::translate::authz::{self, AuthzPolicy, Context};
use serde_json::Value;

/// The number of cases that pass today: the test fails if fewer do.
const PASSING: usize = 29;

fn testdata() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/istio-testdata");
    let root = if root.exists() {
        root
    } else {
        PathBuf::from("/work/shared/istio-testdata")
    };
    root.exists().then_some(root)
}

fn policies(path: &Path) -> Vec<AuthzPolicy> {
    let (resources, errors) = api::load::load_path(path);
    assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::AuthorizationPolicy(ap) => Some(AuthzPolicy {
                namespace: r.namespace().to_string(),
                name: r.meta.name.clone(),
                dry_run: authz::dry_run(&r.meta.annotations),
                spec: ap.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// An Envoy message as canonical JSON (proto field names, defaults left
/// out, `Any` expanded), from `{"@type": ..., ...}` in camelCase or snake_case.
fn canonical(config: &Value) -> Result<Value, String> {
    let any = authz::json_any(config)?;
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    xds::json::bytes_to_json(name, &any.value).map_err(|e| e.to_string())
}

/// The first place two JSON values differ, as a path and both sides.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(&p, u, v) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: expected {u:?}, got {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(&format!("{path}[{i}]"), u, v) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| {
                format!(
                    "{path}: expected {} items, got {}: {}",
                    x.len(),
                    y.len(),
                    serde_json::to_string(b).unwrap_or_default()
                )
            })
        }
        _ => (a != b).then(|| format!("{path}: expected {a}, got {b}")),
    }
}

fn run_case(
    root: &Path,
    case: &serde_yaml_ng::Value,
    meshes: &BTreeMap<String, MeshConfig>,
) -> Result<(), String> {
    let dir = root.join("pilot/pkg/security/authz/builder/testdata");
    let s = |k: &str| case.get(k).and_then(serde_yaml_ng::Value::as_str);
    let input = dir.join(s("input").ok_or("no input")?);
    let all = policies(&input);
    let labels: BTreeMap<String, String> = [("app", "httpbin"), ("version", "v1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let applicable = authz::applicable(&all, "istio-system", "foo", &labels);
    let mesh = match s("meshConfig") {
        Some(m) => meshes
            .get(m)
            .cloned()
            .ok_or(format!("no mesh config {m}"))?,
        None => MeshConfig::default(),
    };
    let trust_domains: Vec<String> = match case.get("trustDomainBundle") {
        Some(b) => {
            let mut tds = vec![
                b.get("trustDomain")
                    .and_then(serde_yaml_ng::Value::as_str)
                    .unwrap_or("cluster.local")
                    .to_string(),
            ];
            if let Some(a) = b.get("aliases").and_then(serde_yaml_ng::Value::as_sequence) {
                tds.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
            tds
        }
        None => vec!["cluster.local".to_string()],
    };
    // The registry holds one service.
    let resolve = |ns: Option<&str>, host: &str| -> Option<String> {
        (host == "my-custom-ext-authz.foo.svc.cluster.local" && ns.is_none_or(|n| n == "foo"))
            .then(|| host.to_string())
    };
    let cx = Context {
        trust_domains,
        providers: &mesh.extension_providers,
        resolve_service: &resolve,
    };
    let built = match s("kind") {
        Some("tcp") => authz::tcp_filters_json(&applicable, &cx),
        _ => authz::http_filters_json(&applicable, &cx),
    };
    let expected: Vec<&str> = case
        .get("expected")
        .and_then(serde_yaml_ng::Value::as_sequence)
        .map(|l| l.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if built.len() != expected.len() {
        return Err(format!(
            "expected {} filters, built {}: {:?}",
            expected.len(),
            built.len(),
            built.iter().map(|(n, _)| n).collect::<Vec<_>>()
        ));
    }
    for (i, ((name, config), file)) in built.iter().zip(&expected).enumerate() {
        let text = std::fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
        let want: Value = serde_yaml_ng::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        let want_name = want.get("name").and_then(Value::as_str).unwrap_or_default();
        if want_name != name {
            return Err(format!("filter {i}: expected {want_name}, built {name}"));
        }
        let want = canonical(&want["typedConfig"]).map_err(|e| format!("{file}: {e}"))?;
        let got = canonical(config).map_err(|e| format!("built filter {i}: {e}"))?;
        if let Some(d) = first_difference("", &want, &got) {
            return Err(format!("filter {i} ({file}): {d}"));
        }
    }
    Ok(())
}

#[test]
fn istio_authz_builder_goldens() {
    let Some(root) = testdata() else {
        panic!("shared/istio-testdata is missing");
    };
    let text = std::fs::read_to_string(root.join("_derived/authz_builder_cases.yaml"))
        .expect("authz_builder_cases.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("cases yaml");
    let meshes: BTreeMap<String, MeshConfig> = doc
        .get("mesh_configs")
        .and_then(serde_yaml_ng::Value::as_mapping)
        .expect("mesh_configs")
        .iter()
        .map(|(k, v)| {
            let name = k.as_str().expect("mesh config name").to_string();
            let mc: MeshConfig = serde_yaml_ng::from_value(v.clone()).expect("mesh config");
            (name, mc)
        })
        .collect();
    let cases = doc
        .get("cases")
        .and_then(serde_yaml_ng::Value::as_sequence)
        .expect("cases");
    let mut passed = 0;
    for case in cases {
        let name = format!(
            "{}/{}",
            case.get("kind")
                .and_then(serde_yaml_ng::Value::as_str)
                .unwrap_or("?"),
            case.get("name")
                .and_then(serde_yaml_ng::Value::as_str)
                .unwrap_or("?")
        );
        match run_case(&root, case, &meshes) {
            Ok(()) => passed += 1,
            Err(e) => println!("FAIL {name}: {e}"),
        }
    }
    println!("authz builder goldens: {passed} of {} pass", cases.len());
    assert!(
        passed >= PASSING,
        "{passed} of {} Istio authz builder goldens pass, fewer than {PASSING}",
        cases.len()
    );
}
