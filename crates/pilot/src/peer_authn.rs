//! PeerAuthentication as Istio resolves it for one workload: the mTLS mode
//! of each of its ports, from the workload-level policy (a `selector` that
//! matches, in the workload's namespace), then the namespace-level policy
//! (no selector), then the mesh-level one (no selector, in the root
//! namespace), then PERMISSIVE. `UNSET` (or no `mtls`) inherits from the
//! next scope out; `portLevelMtls` counts only on a workload-level policy,
//! and an `UNSET` port inherits the policy's own (resolved) mode. Where two
//! policies claim the same scope, Istio takes the oldest; config files carry
//! no creation time, so the first by name wins (Istio's tie-break).

use std::collections::BTreeMap;

use api::security::{MtlsMode, PeerAuthentication};

/// The resolved mode of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// TLS required, plaintext refused.
    Strict,
    /// TLS or plaintext, told apart per connection.
    Permissive,
    /// Plaintext only.
    Disable,
}

/// A PeerAuthentication as the resolver sees it.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a PeerAuthentication,
}

/// A workload's mTLS modes: `default` for every port not in `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub default: Mode,
    pub ports: BTreeMap<u32, Mode>,
}

impl Effective {
    pub fn port(&self, port: u32) -> Mode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

fn mode_of(m: Option<&api::security::MutualTls>) -> Option<Mode> {
    match m.and_then(|m| m.mode) {
        Some(MtlsMode::Strict) => Some(Mode::Strict),
        Some(MtlsMode::Permissive) => Some(Mode::Permissive),
        Some(MtlsMode::Disable) => Some(Mode::Disable),
        Some(MtlsMode::Unset) | None => None,
    }
}

/// Whether a policy is workload-level (a selector with labels).
fn selector(p: &PeerAuthentication) -> Option<&BTreeMap<String, String>> {
    p.selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|l| !l.is_empty())
}

/// The first (by name) policy of a scope.
fn first<'a>(mut of: Vec<Policy<'a>>) -> Option<Policy<'a>> {
    of.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
    of.into_iter().next()
}

/// Resolve the modes of a workload in `namespace` with `labels`.
pub fn resolve(
    policies: &[Policy<'_>],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Effective {
    let scope = |ns: &str| {
        first(
            policies
                .iter()
                .filter(|p| p.namespace == ns && selector(p.spec).is_none())
                .copied()
                .collect(),
        )
    };
    let mesh = scope(root_namespace);
    let ns = if namespace == root_namespace {
        None
    } else {
        scope(namespace)
    };
    let workload = first(
        policies
            .iter()
            .filter(|p| p.namespace == namespace)
            .filter(|p| {
                selector(p.spec)
                    .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .copied()
            .collect(),
    );
    let inherited = ns
        .and_then(|p| mode_of(p.spec.mtls.as_ref()))
        .or_else(|| mesh.and_then(|p| mode_of(p.spec.mtls.as_ref())))
        .unwrap_or(Mode::Permissive);
    let default = workload
        .and_then(|p| mode_of(p.spec.mtls.as_ref()))
        .unwrap_or(inherited);
    let ports = workload
        .and_then(|p| p.spec.port_level_mtls.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|(port, m)| {
                    let port: u32 = port.parse().ok()?;
                    Some((port, mode_of(Some(m)).unwrap_or(default)))
                })
                .collect()
        })
        .unwrap_or_default();
    Effective { default, ports }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (namespace, name, YAML spec) → a policy.
    fn spec(yaml: &str) -> PeerAuthentication {
        serde_yaml_ng::from_str(yaml).expect("spec parses")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ROOT: &str = "istio-system";

    struct Case {
        what: &'static str,
        policies: &'static [(&'static str, &'static str, &'static str)],
        namespace: &'static str,
        labels: &'static [(&'static str, &'static str)],
        /// (port, mode); port 0 = the default.
        want: &'static [(u32, Mode)],
    }

    const STRICT: &str = "{mtls: {mode: STRICT}}";
    const PERMISSIVE: &str = "{mtls: {mode: PERMISSIVE}}";
    const DISABLE: &str = "{mtls: {mode: DISABLE}}";
    const UNSET: &str = "{mtls: {mode: UNSET}}";

    const CASES: &[Case] = &[
        Case {
            what: "no policy: PERMISSIVE",
            policies: &[],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Permissive)],
        },
        Case {
            what: "mesh STRICT applies everywhere",
            policies: &[(ROOT, "default", STRICT)],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Strict)],
        },
        Case {
            what: "namespace overrides mesh",
            policies: &[(ROOT, "default", STRICT), ("default", "ns", PERMISSIVE)],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Permissive)],
        },
        Case {
            what: "namespace UNSET inherits mesh",
            policies: &[(ROOT, "default", STRICT), ("default", "ns", UNSET)],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Strict)],
        },
        Case {
            what: "no mtls at all inherits too",
            policies: &[(ROOT, "default", DISABLE), ("default", "ns", "{}")],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Disable)],
        },
        Case {
            what: "the seed: namespace STRICT, the legacy workload PERMISSIVE",
            policies: &[
                ("payments", "default", STRICT),
                (
                    "payments",
                    "legacy",
                    "{selector: {matchLabels: {app: payments-legacy}}, mtls: {mode: PERMISSIVE}}",
                ),
            ],
            namespace: "payments",
            labels: &[("app", "payments-legacy")],
            want: &[(0, Mode::Permissive)],
        },
        Case {
            what: "the seed: other workloads of the namespace stay STRICT",
            policies: &[
                ("payments", "default", STRICT),
                (
                    "payments",
                    "legacy",
                    "{selector: {matchLabels: {app: payments-legacy}}, mtls: {mode: PERMISSIVE}}",
                ),
            ],
            namespace: "payments",
            labels: &[("app", "payments-api")],
            want: &[(0, Mode::Strict)],
        },
        Case {
            what: "port-level on a workload policy, the rest inherited",
            policies: &[
                ("default", "ns", STRICT),
                (
                    "default",
                    "w",
                    "{selector: {matchLabels: {app: a}}, mtls: {mode: UNSET}, portLevelMtls: {'8080': {mode: DISABLE}, '9090': {mode: UNSET}}}",
                ),
            ],
            namespace: "default",
            labels: &[("app", "a"), ("version", "v1")],
            want: &[
                (0, Mode::Strict),
                (8080, Mode::Disable),
                (9090, Mode::Strict),
                (7000, Mode::Strict),
            ],
        },
        Case {
            what: "port-level on a namespace policy is ignored",
            policies: &[(
                "default",
                "ns",
                "{mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}",
            )],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Strict), (8080, Mode::Strict)],
        },
        Case {
            what: "an empty selector is namespace-wide",
            policies: &[("default", "ns", "{selector: {}, mtls: {mode: DISABLE}}")],
            namespace: "default",
            labels: &[("app", "a")],
            want: &[(0, Mode::Disable)],
        },
        Case {
            what: "two namespace policies: the first by name wins",
            policies: &[("default", "b", DISABLE), ("default", "a", STRICT)],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Strict)],
        },
        Case {
            what: "a selector in the root namespace does not reach other namespaces",
            policies: &[(
                ROOT,
                "w",
                "{selector: {matchLabels: {app: a}}, mtls: {mode: DISABLE}}",
            )],
            namespace: "default",
            labels: &[("app", "a")],
            want: &[(0, Mode::Permissive)],
        },
        Case {
            what: "another namespace's policy does not apply",
            policies: &[("other", "ns", STRICT)],
            namespace: "default",
            labels: &[],
            want: &[(0, Mode::Permissive)],
        },
        Case {
            what: "a selector must match every label",
            policies: &[
                (
                    "default",
                    "w",
                    "{selector: {matchLabels: {app: a, version: v2}}, mtls: {mode: DISABLE}}",
                ),
                ("default", "ns", STRICT),
            ],
            namespace: "default",
            labels: &[("app", "a"), ("version", "v1")],
            want: &[(0, Mode::Strict)],
        },
        Case {
            what: "workloads in the root namespace: its namespace-wide policy is the mesh's",
            policies: &[(ROOT, "default", STRICT)],
            namespace: ROOT,
            labels: &[],
            want: &[(0, Mode::Strict)],
        },
    ];

    #[test]
    fn istio_precedence() {
        for case in CASES {
            let specs: Vec<PeerAuthentication> =
                case.policies.iter().map(|(_, _, y)| spec(y)).collect();
            let policies: Vec<Policy<'_>> = case
                .policies
                .iter()
                .zip(&specs)
                .map(|((ns, name, _), spec)| Policy {
                    namespace: ns,
                    name,
                    spec,
                })
                .collect();
            let got = resolve(&policies, ROOT, case.namespace, &labels(case.labels));
            for (port, want) in case.want {
                let mode = if *port == 0 {
                    got.default
                } else {
                    got.port(*port)
                };
                assert_eq!(mode, *want, "{}: port {port}", case.what);
            }
        }
    }
}
