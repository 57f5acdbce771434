//! Endpoint priorities and locality-weighted balancing, ours against stock
//! Envoy on one static bootstrap: with every host healthy all traffic stays
//! on priority 0; with half of priority 0 unhealthy it keeps 1.4 × 50 = 70 %
//! and spills 30 % to priority 1; a dead priority 0 sends everything to
//! priority 1; `locality_weighted_lb_config` splits 80/20 by locality weight,
//! and a locality with half its hosts down keeps weight × min(1, 1.4 × ½).
//! Unhealthy hosts are real backends (named `x`), so a pick of one shows.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;

const REQUESTS: usize = 400;

struct Backends {
    a: SocketAddr,
    b: SocketAddr,
    c: SocketAddr,
    x: SocketAddr,
}

fn ep(addr: SocketAddr, health: &str) -> String {
    format!(
        "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}, health_status: {health}}}",
        addr.ip(),
        addr.port()
    )
}

fn bootstrap(b: &Backends) -> String {
    let yaml = http_bootstrap(
        "locality",
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {prefix: /healthy}
    route: {cluster: healthy}
  - match: {prefix: /spill}
    route: {cluster: spill}
  - match: {prefix: /dead}
    route: {cluster: dead}
  - match: {prefix: /weighted}
    route: {cluster: weighted}
  - match: {prefix: /degraded-zone}
    route: {cluster: degraded_zone}"#,
        &[],
    );
    let cluster = |name: &str, weighted: bool, groups: &[String]| {
        let common = if weighted {
            "\n    common_lb_config: {locality_weighted_lb_config: {}}"
        } else {
            ""
        };
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN{common}\n    load_assignment: {{cluster_name: {name}, endpoints: [{}]}}\n",
            groups.join(", ")
        )
    };
    let group = |priority: u32, zone: &str, weight: Option<u32>, eps: &[String]| {
        let w = weight.map_or(String::new(), |w| format!(", load_balancing_weight: {w}"));
        format!(
            "{{priority: {priority}, locality: {{region: r, zone: {zone}}}{w}, lb_endpoints: [{}]}}",
            eps.join(", ")
        )
    };
    let (h, u) = ("HEALTHY", "UNHEALTHY");
    yaml + &cluster(
        "healthy",
        false,
        &[
            group(0, "z0", None, &[ep(b.a, h), ep(b.b, h)]),
            group(1, "z1", None, &[ep(b.c, h)]),
        ],
    ) + &cluster(
        "spill",
        false,
        &[
            group(0, "z0", None, &[ep(b.a, h), ep(b.x, u)]),
            group(1, "z1", None, &[ep(b.c, h)]),
        ],
    ) + &cluster(
        "dead",
        false,
        &[
            group(0, "z0", None, &[ep(b.x, u)]),
            group(1, "z1", None, &[ep(b.c, h)]),
        ],
    ) + &cluster(
        "weighted",
        true,
        &[
            group(0, "za", Some(80), &[ep(b.a, h)]),
            group(0, "zb", Some(20), &[ep(b.b, h)]),
        ],
    ) + &cluster(
        "degraded_zone",
        true,
        &[
            group(0, "za", Some(50), &[ep(b.a, h), ep(b.x, u)]),
            group(0, "zb", Some(50), &[ep(b.b, h)]),
        ],
    )
}

/// Which backend answered, counted, for each path.
async fn run(addr: SocketAddr) -> BTreeMap<&'static str, BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for path in ["/healthy", "/spill", "/dead", "/weighted", "/degraded-zone"] {
        let mut seen = BTreeMap::new();
        let mut c = H1::connect(addr).await;
        for _ in 0..REQUESTS {
            let r = c.get("svc", path, &[]).await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            *seen.entry(r.body.clone()).or_insert(0) += 1;
        }
        out.insert(path, seen);
    }
    out
}

fn share(seen: &BTreeMap<String, usize>, name: &str) -> f64 {
    *seen.get(name).unwrap_or(&0) as f64 / REQUESTS as f64
}

fn check(who: &str, s: &BTreeMap<&'static str, BTreeMap<String, usize>>) {
    let near = |path: &str, name: &str, want: f64, tol: f64| {
        let got = share(&s[path], name);
        assert!(
            (got - want).abs() <= tol,
            "{who}: {path}: {name} got {got:.3}, want {want} ± {tol}: {:?}",
            s[path]
        );
    };
    // Deterministic: all on priority 0, split evenly by round robin.
    assert_eq!(
        share(&s["/healthy"], "c"),
        0.0,
        "{who}: {:?}",
        s["/healthy"]
    );
    near("/healthy", "a", 0.5, 0.01);
    // Never an unhealthy host; 70 / 30 by the priority load (random).
    for path in ["/spill", "/dead", "/degraded-zone"] {
        assert_eq!(share(&s[path], "x"), 0.0, "{who}: {path}: {:?}", s[path]);
    }
    near("/spill", "a", 0.7, 0.08);
    near("/spill", "c", 0.3, 0.08);
    assert_eq!(share(&s["/dead"], "c"), 1.0, "{who}: {:?}", s["/dead"]);
    // Locality weights 80 / 20 (a schedule, not random).
    near("/weighted", "a", 0.8, 0.03);
    // za: 50 × min(1, 1.4 × ½) = 35 against zb's 50.
    near("/degraded-zone", "a", 35.0 / 85.0, 0.03);
}

#[tokio::test]
async fn priorities_and_locality_weights_like_envoy() {
    let (a, b, c, x) = (
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("x").await,
    );
    let backends = Backends {
        a: a.addr,
        b: b.addr,
        c: c.addr,
        x: x.addr,
    };
    let yaml = bootstrap(&backends);
    let proxy = start_static(&yaml).await;
    let ours = run(proxy.listener_addr("http").unwrap()).await;
    eprintln!("ours:  {ours:?}");
    check("ours", &ours);

    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: skipping the Envoy half");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let theirs = run(e.listener(Some("http")).await).await;
    eprintln!("envoy: {theirs:?}");
    check("envoy", &theirs);
}
