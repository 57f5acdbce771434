//! Consistent-hash load balancing (RING_HASH, MAGLEV) with the route's
//! hash_policy: header, cookie (generated with a Set-Cookie when missing),
//! source IP and query parameter. The same key always reaches the same one
//! of three backends, different keys spread; a stock Envoy on the same
//! bootstrap shows the same properties and the same Set-Cookie shape, and
//! (as we build the ring and the Maglev table as it does) the same hosts.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;

const KEYS: usize = 8;
const REQUESTS: usize = 20;

fn bootstrap(backends: &[SocketAddr]) -> String {
    let yaml = http_bootstrap(
        "hash",
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {prefix: /header}
    route: {cluster: ring, hash_policy: [{header: {header_name: x-user}}]}
  - match: {prefix: /cookie}
    route: {cluster: ring, hash_policy: [{cookie: {name: session, path: /, ttl: 3600s}}]}
  - match: {prefix: /ip}
    route: {cluster: maglev, hash_policy: [{connection_properties: {source_ip: true}}]}
  - match: {prefix: /query}
    route: {cluster: maglev, hash_policy: [{query_parameter: {name: user}}]}
  - match: {prefix: /both}
    route: {cluster: maglev, hash_policy: [{header: {header_name: x-user}, terminal: true}, {query_parameter: {name: user}}]}"#,
        &[],
    );
    let endpoints: String = backends
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}, ",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let cluster = |name: &str, policy: &str| {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    {policy}\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{endpoints}]}}]}}\n"
        )
    };
    yaml + &cluster(
        "ring",
        "lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 1024}",
    ) + &cluster(
        "maglev",
        "lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 65537}",
    )
}

async fn backends() -> Vec<Backend> {
    vec![backend("a").await, backend("b").await, backend("c").await]
}

/// One connection from a chosen local IP (127.0.0.x).
async fn connect_from(addr: SocketAddr, local: &str) -> H1 {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{local}:0").parse().unwrap()).unwrap();
    H1::over(s.connect(addr).await.unwrap()).await
}

/// The backends one key's requests reached, for each key.
type Spread = Vec<BTreeSet<String>>;

/// What a proxy did with each policy.
#[derive(Debug)]
struct Seen {
    header: Spread,
    cookie: Spread,
    ip: Spread,
    query: Spread,
    terminal: Spread,
    /// The Set-Cookie for a request without the cookie, with its value
    /// replaced by `V`; and whether requests with it carried none.
    set_cookie: String,
    set_cookie_again: bool,
    /// Whether the backend of the generated cookie's request is the one
    /// that cookie's later requests reach.
    generated_sticks: bool,
}

async fn run(addr: SocketAddr) -> Seen {
    let mut header = Vec::new();
    let mut query = Vec::new();
    let mut terminal = Vec::new();
    let mut cookie = Vec::new();
    let mut set_cookie_again = false;
    for k in 0..KEYS {
        let user = format!("user-{k}");
        let mut c = H1::connect(addr).await;
        let (mut h, mut q, mut t, mut ck) = Default::default();
        for i in 0..REQUESTS {
            let r = c.get("svc", "/header", &[("x-user", &user)]).await;
            insert(&mut h, &r);
            let r = c
                .get("svc", &format!("/query?i={i}&user={user}"), &[])
                .await;
            insert(&mut q, &r);
            // The header wins and is terminal: the query varies per request.
            let r = c
                .get("svc", &format!("/both?user={i}"), &[("x-user", &user)])
                .await;
            insert(&mut t, &r);
            let r = c
                .get(
                    "svc",
                    "/cookie",
                    &[("cookie", &format!("a=1; session=\"{user}\""))],
                )
                .await;
            set_cookie_again |= r.headers.contains_key("set-cookie");
            insert(&mut ck, &r);
        }
        header.push(h);
        query.push(q);
        terminal.push(t);
        cookie.push(ck);
    }
    let mut ip = Vec::new();
    for k in 0..KEYS {
        let local = format!("127.0.0.{}", k + 2);
        let mut seen = BTreeSet::new();
        // A few connections (other source ports) from the same IP.
        for _ in 0..4 {
            let mut c = connect_from(addr, &local).await;
            for _ in 0..REQUESTS / 4 {
                insert(&mut seen, &c.get("svc", "/ip", &[]).await);
            }
        }
        ip.push(seen);
    }
    // No cookie: one is generated and sent back; it keeps to that backend.
    let first = get(addr, "svc", "/cookie", &[]).await;
    let raw = first
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let value = raw
        .strip_prefix("session=\"")
        .and_then(|r| r.split_once('"'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_default();
    let set_cookie = raw.replace(&value, "V");
    let hex16 = value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit());
    let mut sticks = hex16;
    let mut c = H1::connect(addr).await;
    for _ in 0..REQUESTS {
        let r = c
            .get("svc", "/cookie", &[("cookie", &format!("session={value}"))])
            .await;
        sticks &= r.body == first.body;
    }
    Seen {
        header,
        cookie,
        ip,
        query,
        terminal,
        set_cookie,
        set_cookie_again,
        generated_sticks: sticks,
    }
}

fn insert(seen: &mut BTreeSet<String>, r: &Reply) {
    assert_eq!(r.status, 200, "{r:?}");
    seen.insert(r.body.clone());
}

fn check(who: &str, s: &Seen) {
    for (policy, spread) in [
        ("header", &s.header),
        ("cookie", &s.cookie),
        ("source ip", &s.ip),
        ("query parameter", &s.query),
        ("terminal header", &s.terminal),
    ] {
        assert!(
            spread.iter().all(|b| b.len() == 1),
            "{who}: {policy}: a key reached several backends: {spread:?}"
        );
        let all: BTreeSet<_> = spread.iter().flatten().collect();
        assert!(
            all.len() > 1,
            "{who}: {policy}: every key reached one backend: {spread:?}"
        );
    }
    assert_eq!(
        s.set_cookie, "session=\"V\"; Max-Age=3600; Path=/; HttpOnly",
        "{who}"
    );
    assert!(
        !s.set_cookie_again,
        "{who}: Set-Cookie although the request had the cookie"
    );
    assert!(
        s.generated_sticks,
        "{who}: the generated cookie did not stick: {s:?}"
    );
}

#[tokio::test]
async fn same_key_same_backend_like_envoy() {
    let b = backends().await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let proxy = start_static(&bootstrap(&addrs)).await;
    let ours = run(proxy.listener_addr("http").unwrap()).await;
    check("ours", &ours);

    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: skipping the Envoy half");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &bootstrap(&addrs), dir.path()).await;
    let theirs = run(e.listener(Some("http")).await).await;
    eprintln!("ours:  {ours:?}\nenvoy: {theirs:?}");
    check("envoy", &theirs);
    // Not required, but so it is: the same keys (host addresses, XX_HASH
    // with Envoy's ring and Maglev builds) pick the same backends.
    assert_eq!(
        (
            &ours.header,
            &ours.cookie,
            &ours.ip,
            &ours.query,
            &ours.terminal
        ),
        (
            &theirs.header,
            &theirs.cookie,
            &theirs.ip,
            &theirs.query,
            &theirs.terminal
        )
    );
}
