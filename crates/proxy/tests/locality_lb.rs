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
    route: {cluster: degraded_zone}
  - match: {prefix: /dns-spill}
    route: {cluster: dns_spill}"#,
        &[],
    );
    let typed = |kind: &'static str| {
        move |name: &str, weighted: bool, groups: &[String]| {
            let common = if weighted {
                "\n    common_lb_config: {locality_weighted_lb_config: {}}"
            } else {
                ""
            };
            format!(
                "  - name: {name}\n    type: {kind}\n    dns_lookup_family: V4_ONLY\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN{common}\n    load_assignment: {{cluster_name: {name}, endpoints: [{}]}}\n",
                groups.join(", ")
            )
        }
    };
    let cluster = typed("STATIC");
    let dns_cluster = typed("STRICT_DNS");
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
    ) + &dns_cluster(
        "dns_spill",
        false,
        &[
            group(0, "z0", None, &[ep(b.a, h), ep(b.x, u)]),
            group(1, "z1", None, &[ep(b.c, h)]),
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
    for path in [
        "/healthy",
        "/spill",
        "/dead",
        "/weighted",
        "/degraded-zone",
        "/dns-spill",
    ] {
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
    for path in ["/spill", "/dead", "/degraded-zone", "/dns-spill"] {
        assert_eq!(share(&s[path], "x"), 0.0, "{who}: {path}: {:?}", s[path]);
    }
    near("/spill", "a", 0.7, 0.08);
    near("/spill", "c", 0.3, 0.08);
    // The same from STRICT_DNS hosts (resolved into their priorities).
    near("/dns-spill", "a", 0.7, 0.08);
    near("/dns-spill", "c", 0.3, 0.08);
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
    let ours_admin = where_hosts_sit(proxy.admin_addr(), &backends).await;

    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: skipping the Envoy half");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let theirs = run(e.listener(Some("http")).await).await;
    eprintln!("envoy: {theirs:?}");
    check("envoy", &theirs);
    assert_eq!(ours_admin, where_hosts_sit(e.admin, &backends).await);
}

/// `/clusters` lines of the `spill` cluster's hosts: region, zone,
/// sub_zone, canary and priority, as Envoy prints them.
async fn where_hosts_sit(admin: SocketAddr, b: &Backends) -> Vec<String> {
    let (_, text) = admin_get(admin, "/clusters").await;
    let wanted = ["region", "zone", "sub_zone", "canary", "priority"];
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            [b.a, b.c]
                .iter()
                .any(|a| l.starts_with(&format!("spill::{a}::")))
                && wanted.iter().any(|w| l.contains(&format!("::{w}::")))
        })
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 10, "{text}");
    assert!(
        lines.contains(&format!("spill::{}::priority::1", b.c)),
        "{lines:?}"
    );
    lines
}

/// A port with nothing listening (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Retries and ejections across priorities: priority 0 is one host that
/// refuses connections (healthy as far as EDS knows), priority 1 is `c`.
/// Without `previous_priorities` every retry stays on priority 0 and the
/// request fails; with `update_frequency: 1` the first retry leaves it;
/// with 2, the second. Then outlier detection ejects the dead host of a
/// two-host priority 0, which keeps 70 % and spills 30 %.
fn retry_bootstrap(dead: SocketAddr, a: SocketAddr, c: SocketAddr) -> String {
    let route = |prefix: &str, retries: u32, frequency: Option<u32>| {
        let priority = frequency.map_or(String::new(), |f| {
            format!(
                ", retry_priority: {{name: envoy.retry_priorities.previous_priorities, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig, update_frequency: {f}}}}}"
            )
        });
        format!(
            "  - match: {{prefix: {prefix}}}\n    route: {{cluster: failover, retry_policy: {{retry_on: connect-failure, num_retries: {retries}{priority}}}}}\n"
        )
    };
    let routes = format!(
        "- name: all\n  domains: [\"*\"]\n  routes:\n{}{}{}{}  - match: {{prefix: /eject}}\n    route: {{cluster: ejecting}}",
        route("/stay", 2, None),
        route("/leave-1", 1, Some(1)),
        route("/leave-2-early", 1, Some(2)),
        route("/leave-2", 2, Some(2)),
    );
    let yaml = http_bootstrap("retry_priority", &routes, &[]);
    let h = "HEALTHY";
    yaml + &format!(
        "  - name: failover\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: failover, endpoints: [{{priority: 0, lb_endpoints: [{}]}}, {{priority: 1, lb_endpoints: [{}]}}]}}\n",
        ep(dead, h),
        ep(c, h)
    ) + &format!(
        "  - name: ejecting\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN\n    outlier_detection: {{consecutive_5xx: 1, max_ejection_percent: 100, base_ejection_time: 300s, interval: 300s}}\n    load_assignment: {{cluster_name: ejecting, endpoints: [{{priority: 0, lb_endpoints: [{}, {}]}}, {{priority: 1, lb_endpoints: [{}]}}]}}\n",
        ep(a, h),
        ep(dead, h),
        ep(c, h)
    )
}

#[derive(Debug, PartialEq)]
struct RetrySeen {
    /// Status per retry route.
    statuses: BTreeMap<&'static str, u16>,
    /// Requests before the dead host's first failure, and the answers after.
    before_ejection: usize,
    after: BTreeMap<String, usize>,
}

async fn run_retries(addr: SocketAddr) -> RetrySeen {
    let mut statuses = BTreeMap::new();
    for path in ["/stay", "/leave-1", "/leave-2-early", "/leave-2"] {
        let r = get(addr, "svc", path, &[]).await;
        statuses.insert(path, r.status);
    }
    let mut c = H1::connect(addr).await;
    let mut before_ejection = 0;
    for _ in 0..10 {
        before_ejection += 1;
        if c.get("svc", "/eject", &[]).await.status == 503 {
            break;
        }
    }
    let mut after = BTreeMap::new();
    for _ in 0..REQUESTS {
        let r = c.get("svc", "/eject", &[]).await;
        let key = if r.status == 200 {
            r.body.clone()
        } else {
            r.status.to_string()
        };
        *after.entry(key).or_insert(0) += 1;
    }
    RetrySeen {
        statuses,
        before_ejection,
        after,
    }
}

fn check_retries(who: &str, s: &RetrySeen) {
    let want: BTreeMap<&str, u16> = [
        ("/stay", 503),
        ("/leave-1", 200),
        ("/leave-2-early", 503),
        ("/leave-2", 200),
    ]
    .into_iter()
    .collect();
    assert_eq!(s.statuses, want, "{who}");
    assert!(s.before_ejection <= 2, "{who}: {s:?}");
    let a = *s.after.get("a").unwrap_or(&0) as f64 / REQUESTS as f64;
    let c = *s.after.get("c").unwrap_or(&0) as f64 / REQUESTS as f64;
    assert!(
        (a - 0.7).abs() <= 0.08 && (c - 0.3).abs() <= 0.08,
        "{who}: {s:?}"
    );
    assert_eq!(
        s.after.get("503"),
        None,
        "{who}: the ejected host was picked: {s:?}"
    );
}

#[tokio::test]
async fn retries_leave_tried_priorities_and_ejections_spill_like_envoy() {
    let (a, c) = (backend("a").await, backend("c").await);
    let dead = closed_port().await;
    let yaml = retry_bootstrap(dead, a.addr, c.addr);
    let proxy = start_static(&yaml).await;
    let ours = run_retries(proxy.listener_addr("http").unwrap()).await;
    eprintln!("ours:  {ours:?}");
    check_retries("ours", &ours);

    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: skipping the Envoy half");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let theirs = run_retries(e.listener(Some("http")).await).await;
    eprintln!("envoy: {theirs:?}");
    check_retries("envoy", &theirs);
    assert_eq!(ours.statuses, theirs.statuses);
}
