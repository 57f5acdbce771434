//! Unit tests of the validation rules on small documents.

use std::path::Path;

use super::*;

fn problems(yaml: &str) -> (Vec<String>, Vec<String>) {
    let (res, errs) = crate::load::load_str(Path::new("t.yaml"), yaml);
    assert!(errs.is_empty(), "{errs:?}");
    let v = validate_all(&res);
    (
        v.errors.iter().map(ToString::to_string).collect(),
        v.warnings.iter().map(ToString::to_string).collect(),
    )
}

fn vs(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: ns}}\nspec:\n{spec}"
    )
}

#[test]
fn valid_virtual_service() {
    let (e, w) = problems(&vs(
        "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 75\n    - destination: {host: reviews, subset: v2}\n      weight: 25\n",
    ));
    assert!(e.is_empty() && w.is_empty(), "{e:?} {w:?}");
}

#[test]
fn weights_and_hosts() {
    let (e, w) = problems(&vs(
        "  hosts: ['bad_host', '*']\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 0\n    - destination: {host: b}\n",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("spec.hosts[0]: invalid host `bad_host`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("wildcard host `*` is not allowed")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("spec.http[0].route: total destination weight = 0")),
        "{e:?}"
    );
    assert!(w.is_empty());
    let (_, w) = problems(&vs(
        "  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 30\n    - destination: {host: b}\n      weight: 30\n",
    ));
    assert!(w[0].contains("sum to 60"), "{w:?}");
}

#[test]
fn fault_and_durations() {
    let (e, _) = problems(&vs(
        "  hosts: [a]\n  http:\n  - fault:\n      abort: {httpStatus: 700, percentage: {value: 101}}\n    route:\n    - destination: {host: a, port: {number: 70000}}\n    retries: {attempts: 3, perTryTimeout: 1us}\n",
    ));
    let all = e.join("\n");
    assert!(
        all.contains("spec.http[0].fault.abort.httpStatus: httpStatus must be in range 200 - 599"),
        "{all}"
    );
    assert!(
        all.contains("spec.http[0].fault.abort.percentage.value: percentage must be in [0, 100]"),
        "{all}"
    );
    assert!(
        all.contains("spec.http[0].route[0].destination.port.number: port must be between 1-65535"),
        "{all}"
    );
    assert!(
        all.contains("spec.http[0].retries.perTryTimeout: must be a valid duration greater than or equal to 1ms"),
        "{all}"
    );
}

#[test]
fn retry_on_policies_as_istio_checks_them() {
    let (e, _) = problems(&vs(
        "  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    retries: {attempts: 3, retryOn: '5xx,gateway-error,503,retriable-status-codes,reset-before-request'}\n",
    ));
    assert!(e.is_empty(), "{e:?}");
    let (e, _) = problems(&vs(
        "  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    retries: {attempts: 3, retryOn: '5xx, gateway-error,previous-hosts,599,bogus'}\n",
    ));
    let all = e.join("\n");
    for bad in ["` gateway-error`", "`previous-hosts`", "`599`", "`bogus`"] {
        assert!(
            e.iter().any(|m| m.starts_with("t.yaml:")
                && m.ends_with(&format!(
                    "VirtualService ns/r: spec.http[0].retries.retryOn: {bad} is not a valid retryOn policy"
                ))),
            "{bad}: {all}"
        );
    }
    assert_eq!(e.len(), 4, "{all}");
}

#[test]
fn authorization_policy_rules() {
    let (e, w) = problems(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {serviceAccounts: [ns/sa], principals: [x]}\n    to:\n    - operation: {ports: ['http']}\n    when:\n    - key: request.foo\n",
    );
    let all = e.join("\n");
    assert!(
        all.contains("Cannot set serviceAccounts with namespaces or principals"),
        "{all}"
    );
    assert!(
        all.contains("spec.rules[0].to[0].operation.ports[0]: port `http`"),
        "{all}"
    );
    assert!(
        all.contains("spec.rules[0].when[0].key: unknown attribute `request.foo`"),
        "{all}"
    );
    assert!(
        all.contains("at least one of `values` or `notValues`"),
        "{all}"
    );
    assert!(w.is_empty(), "{w:?}");
    let (_, w) = problems(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: DENY}\n",
    );
    assert!(w[0].contains("DENY policy without rules"), "{w:?}");
}

#[test]
fn peer_authentication_port_level_needs_selector() {
    let (e, _) = problems(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  portLevelMtls:\n    '80': {mode: STRICT}\n    '0': {mode: STRICT}\n",
    );
    let all = e.join("\n");
    assert!(all.contains("portLevelMtls requires selector"), "{all}");
    assert!(
        all.contains("spec.portLevelMtls.0: port must be between 1-65535"),
        "{all}"
    );
}

#[test]
fn gateway_tls_and_hosts() {
    let (e, _) = problems(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['a/b/c']\n  - port: {number: 80, name: https, protocol: HTTP}\n    hosts: ['*']\n",
    );
    let all = e.join("\n");
    assert!(
        all.contains("spec.servers[0].tls: server must have TLS settings"),
        "{all}"
    );
    assert!(all.contains("namespace/dnsName"), "{all}");
    assert!(
        all.contains("port names in servers must be unique"),
        "{all}"
    );
}

#[test]
fn authorization_policy_and_request_authentication_rules() {
    let ap = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
        )
    };
    let (e, _) = problems(&ap("  action: CUSTOM\n  rules: [{}]\n"));
    assert!(e.iter().any(|m| m.contains("spec.provider")), "{e:?}");
    let (e, _) = problems(&ap("  provider: {name: x}\n"));
    assert!(
        e.iter()
            .any(|m| m.contains("provider can only be set with action CUSTOM")),
        "{e:?}"
    );
    let (e, _) = problems(&ap(
        "  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n    when: [{key: request.bogus, values: [a]}]\n",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("spec.rules[0].from[0].source.ipBlocks[0]")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("spec.rules[0].when[0].key") && m.contains("request.bogus")),
        "{e:?}"
    );
    // Every error names the file and the resource.
    assert!(
        e.iter().all(|m| m.contains("t.yaml") && m.contains("p")),
        "{e:?}"
    );
    let (e, _) = problems(&ap("  rules: [{}]\n"));
    assert!(e.is_empty(), "{e:?}");
    let ra = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: ns}\nspec:\n  jwtRules:\n  - issuer: ''\n    jwks: 'not json'\n  - issuer: i\n    jwks: '{\"keys\":[]}'\n    jwksUri: ftp://x\n";
    let (e, w) = problems(ra);
    assert!(
        e.iter().any(|m| m.contains("spec.jwtRules[0].issuer")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("spec.jwtRules[0].jwks") && m.contains("not valid JSON")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.contains("spec.jwtRules[1].jwksUri")),
        "{e:?}"
    );
    assert!(w.iter().any(|m| m.contains("jwks is used")), "{w:?}");
}

fn dr_locality(setting: &str, outlier: bool) -> (Vec<String>, Vec<String>) {
    let od = if outlier {
        "    outlierDetection: {consecutive5xxErrors: 5}\n"
    } else {
        ""
    };
    problems(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: ns}}\nspec:\n  host: reviews\n  trafficPolicy:\n{od}    loadBalancer:\n      localityLbSetting:\n{setting}"
    ))
}

#[test]
fn locality_lb_setting_as_istio() {
    let at = "spec.trafficPolicy.loadBalancer.localityLbSetting";
    let (e, w) = dr_locality(
        "        distribute:\n        - from: us-east/zone1/*\n          to: {\"us-east/zone1/*\": 80, \"us-east/zone2/*\": 20}\n",
        false,
    );
    assert!(e.is_empty() && w.is_empty(), "{e:?} {w:?}");
    let (e, w) = dr_locality(
        "        failover: [{from: us-east, to: eu-west}]\n        failoverPriority: [version]\n",
        true,
    );
    assert!(e.is_empty() && w.is_empty(), "{e:?} {w:?}");
    for (setting, outlier, want) in [
        (
            "        distribute: [{from: a/*, to: {a/*: 100}}]\n        failover: [{from: a, to: b}]\n",
            true,
            format!("{at}: can not simultaneously specify 'distribute' and 'failover'"),
        ),
        (
            "        failover: [{from: a, to: b}]\n        failoverPriority: [topology.kubernetes.io/zone]\n",
            true,
            format!(
                "{at}.failoverPriority: can not simultaneously set 'failover' and topology label 'topology.kubernetes.io/zone' in 'failover_priority'"
            ),
        ),
        (
            "        distribute: [{from: a/*, to: {a/*: 0, b/*: 100}}]\n",
            false,
            format!("{at}.distribute[0].to[a/*]: locality weight must be in range [1, 100]"),
        ),
        (
            "        distribute: [{from: a/*, to: {a/*: 30, b/*: 30}}]\n",
            false,
            format!("{at}.distribute[0].to: total locality weight 60 != 100"),
        ),
        (
            "        distribute: [{from: a/*, to: {a/*/x: 50, b: 50}}]\n",
            false,
            format!(
                "{at}.distribute[0].to: locality a/*/x wildcard '*' number can not exceed 1 and must be in the end"
            ),
        ),
        (
            "        distribute: [{from: a/*, to: {a: 50, a/z1: 50}}]\n",
            false,
            format!("{at}.distribute[0].to: locality a/z1 overlap with previous specified ones"),
        ),
        (
            "        distribute: [{from: a//x, to: {a: 100}}]\n",
            false,
            format!(
                "{at}.distribute: locality a//x must not contain empty region/zone/subzone info"
            ),
        ),
        (
            "        failover: [{from: a, to: a}]\n",
            true,
            format!(
                "{at}.failover[0]: locality lb failover settings must specify different regions"
            ),
        ),
        (
            "        failover: [{from: a/z, to: b}]\n",
            true,
            format!("{at}.failover[0]: locality lb failover only specify region"),
        ),
        (
            "        failover: [{from: a, to: '*'}]\n",
            true,
            format!(
                "{at}.failover[0]: locality lb failover region should not contain '*' wildcard"
            ),
        ),
    ] {
        let (e, _) = dr_locality(setting, outlier);
        assert!(
            e.iter().any(|m| m.ends_with(&want)),
            "want {want}\n got {e:?}"
        );
    }
    let (e, w) = dr_locality("        failover: [{from: a, to: b}]\n", false);
    assert!(e.is_empty(), "{e:?}");
    assert!(
        w.iter()
            .any(|m| m.ends_with("outlier detection policy must be provided for failover")),
        "{w:?}"
    );
}
