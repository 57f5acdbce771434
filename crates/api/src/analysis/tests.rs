//! Conformance against Istio's analyzer test grid (shared/istio-testdata,
//! `_derived/analyzer_cases.json`): per analyzer, how many cases produce
//! exactly Istio's set of (code, resource) messages. The counts may not drop
//! below the floors recorded here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

fn shared() -> Option<PathBuf> {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/istio-testdata"
    ));
    if p.join("_derived/analyzer_cases.json").exists() {
        Some(p.to_path_buf())
    } else {
        println!(
            "skipping: {} not found (Istio test data is not checked out)",
            p.display()
        );
        None
    }
}

/// Cases passed per analyzer at the time of writing; the test fails below these.
const FLOORS: &[(&str, usize)] = &[
    ("authn.BlockedCIDRsAnalyzer", 3),
    ("authz.AuthorizationPoliciesAnalyzer", 1),
    ("deployment.ApplicationUIDAnalyzer", 4),
    ("deployment.ServiceAssociationAnalyzer", 3),
    ("deprecation.FieldAnalyzer", 1),
    ("destinationrule.CaCertificateAnalyzer", 11),
    ("destinationrule.PodNotSelectedAnalyzer", 4),
    ("gateway.CertificateAnalyzer", 1),
    ("gateway.ConflictingGatewayAnalyzer", 6),
    ("gateway.IngressGatewayPortAnalyzer", 8),
    ("gateway.SecretAnalyzer", 2),
    ("injection.Analyzer", 1),
    ("injection.ImageAutoAnalyzer", 1),
    ("schemaValidation.CollectionValidationAnalyzer", 1),
    ("service.PortNameAnalyzer", 5),
    ("serviceentry.ConflictingServiceEntryProtocolAnalyzer", 3),
    ("serviceentry.ProtocolAddressesAnalyzer", 4),
    ("sidecar.SelectorAnalyzer", 2),
    ("virtualservice.ConflictingMeshGatewayHostsAnalyzer", 2),
    ("virtualservice.DestinationHostAnalyzer", 2),
    ("virtualservice.DestinationRuleAnalyzer", 1),
    ("virtualservice.GatewayAnalyzer", 6),
    ("virtualservice.JWTClaimRouteAnalyzer", 1),
];

/// All analyzer cases passed at the time of writing.
const TOTAL_FLOOR: usize = 73;

#[test]
fn istio_analyzer_cases() {
    let Some(root) = shared() else { return };
    let data =
        std::fs::read_to_string(root.join("_derived/analyzer_cases.json")).unwrap_or_default();
    let json: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
    let base = root.join("pkg/config/analysis/analyzers");
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut passed, mut total) = (0, 0);
    for case in json["cases"].as_array().into_iter().flatten() {
        let analyzer = case["analyzer"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('&')
            .trim_end_matches("{}")
            .to_string();
        if !ANALYZERS.iter().any(|a| a.name == analyzer) {
            continue;
        }
        let mut resources = Vec::new();
        for f in case["inputFiles"].as_array().into_iter().flatten() {
            let (r, _) = crate::load::load_path(&base.join(f.as_str().unwrap_or("")));
            resources.extend(r);
        }
        let mesh_config = case["meshConfigFile"]
            .as_str()
            .and_then(|f| crate::mesh_config::load_mesh_config(&base.join(f)).ok());
        let opts = Options {
            mesh_config,
            only: vec![analyzer.clone()],
            default_resources: true,
        };
        let got: BTreeSet<(String, String)> = analyze(&resources, &opts)
            .iter()
            .map(|m| (m.code.code.to_string(), m.origin()))
            .collect();
        let want: BTreeSet<(String, String)> = case["expected"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["code"].as_str().unwrap_or("").to_string(),
                    e["origin"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let e = per.entry(analyzer.clone()).or_default();
        e.1 += 1;
        total += 1;
        if got == want {
            e.0 += 1;
            passed += 1;
        } else {
            println!(
                "MISMATCH {} ({analyzer}):\n  missing {:?}\n  extra   {:?}",
                case["name"],
                want.difference(&got).collect::<Vec<_>>(),
                got.difference(&want).collect::<Vec<_>>()
            );
        }
    }
    for (a, (p, t)) in &per {
        println!("{a}: {p}/{t}");
    }
    println!(
        "analyzer cases: {passed}/{total} (of {} in the grid)",
        json["cases"].as_array().map_or(0, Vec::len)
    );
    assert!(
        passed >= TOTAL_FLOOR,
        "{passed} analyzer cases pass, floor is {TOTAL_FLOOR}"
    );
    for (name, floor) in FLOORS {
        let got = per.get(*name).map_or(0, |c| c.0);
        assert!(got >= *floor, "{name}: {got} cases pass, floor is {floor}");
    }
}

#[test]
fn strict_peer_authentication_vs_disabled_tls() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: prod}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-1, namespace: prod, labels: {app: reviews}}\nspec: {containers: [{name: app}]}\n---\n\
                apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n\
                apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: prod}\nspec:\n  host: reviews\n  trafficPolicy: {tls: {mode: DISABLE}}\n";
    let (res, errs) = crate::load::load_str(Path::new("t.yaml"), yaml);
    assert!(errs.is_empty(), "{errs:?}");
    let opts = Options {
        only: vec!["authn.MTLSAnalyzer".into()],
        ..Options::default()
    };
    let msgs: Vec<String> = analyze(&res, &opts)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].starts_with("Error [IST0113] (DestinationRule prod/reviews t.yaml:18) A DestinationRule and PeerAuthentication are in conflict"), "{msgs:?}");
    // Without STRICT, no conflict.
    let relaxed = yaml.replace("STRICT", "PERMISSIVE");
    let (res, _) = crate::load::load_str(Path::new("t.yaml"), &relaxed);
    assert!(analyze(&res, &opts).is_empty());
}
