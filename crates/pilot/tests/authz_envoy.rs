//! Stock Envoy (`$HALYARD_ENVOY`; skipped without it) enforcing the
//! jwt_authn and RBAC filters the pilot builds: a listener whose connection
//! manager runs exactly [`pilot::translate::authz`] and
//! [`pilot::translate::jwt`]'s output before a direct-response route, asked
//! with raw HTTP/1.1 requests. Proves the filters mean what Istio means:
//! `requestPrincipals` read the JWT payload the jwt_authn filter stores,
//! a missing token passes authentication but not an ALLOW that names a
//! principal, an invalid token is 401, DENY beats ALLOW, `{*}` templates
//! match one segment, dry-run rules are counted and not enforced.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use pilot::translate::authz::{self, AuthzPolicy, Context};
use pilot::translate::jwt::{self, JwtPolicy};
use serde_json::json;

const ISSUER: &str = "https://issuer.example";

fn envoy() -> Option<PathBuf> {
    std::env::var_os("HALYARD_ENVOY")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Signer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

fn signer() -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = pair.public_key_raw(); // 0x04 || x || y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]})
    .to_string();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem");
    Signer { key, jwks }
}

impl Signer {
    fn token(&self, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &json!({"iss": ISSUER, "sub": sub, "aud": "payments", "groups": ["admins"],
                "iat": now, "exp": now + 600}),
            &self.key,
        )
        .expect("sign")
    }
}

fn spec<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml_ng::from_str(yaml).expect("spec")
}

fn policy(name: &str, dry_run: bool, yaml: &str) -> AuthzPolicy {
    AuthzPolicy {
        namespace: "pay".into(),
        name: name.into(),
        dry_run,
        spec: spec(yaml),
    }
}

/// `(status, body)` of one raw HTTP/1.1 request.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: payments.pay.svc.cluster.local\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn admin_get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Method, path, headers, expected status.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16);

#[test]
fn stock_envoy_enforces_the_built_filters() {
    let Some(bin) = envoy() else {
        eprintln!("HALYARD_ENVOY not set; skipping");
        return;
    };
    let keys = signer();
    let policies = [
        policy(
            "api",
            false,
            &format!(
                "rules:\n- from: [{{source: {{requestPrincipals: ['{ISSUER}/alice']}}}}]\n  to: [{{operation: {{methods: [GET], paths: ['/api/*']}}}}]\n- to: [{{operation: {{paths: ['/public/{{*}}/info']}}}}]\n- from: [{{source: {{requestPrincipals: ['*']}}}}]\n  to: [{{operation: {{paths: ['/admin']}}}}]\n  when: [{{key: 'request.auth.claims[groups]', values: [admins]}}]\n"
            ),
        ),
        policy(
            "block",
            false,
            "action: DENY\nrules:\n- when: [{key: 'request.headers[x-block]', values: ['yes']}]\n",
        ),
        policy(
            "dry",
            true,
            "action: DENY\nrules:\n- to: [{operation: {paths: ['/api/secret']}}]\n",
        ),
    ];
    let ra = JwtPolicy {
        namespace: "pay".into(),
        name: "jwt".into(),
        spec: spec(&format!(
            "jwtRules:\n- issuer: {ISSUER}\n  jwks: '{}'\n",
            keys.jwks
        )),
    };
    let labels = BTreeMap::new();
    let applicable = authz::applicable(&policies, "istio-system", "pay", &labels);
    let resolve = |_: Option<&str>, _: &str| None;
    let cx = Context {
        trust_domains: vec!["cluster.local".into()],
        providers: &[],
        resolve_service: &resolve,
    };
    let mut http_filters = vec![json!({"name": jwt::JWT_FILTER,
        "typed_config": jwt::filter_json(&[&ra], &|_| None).expect("jwt filter")})];
    for (name, config) in authz::http_filters_json(&applicable, &cx) {
        http_filters.push(json!({"name": name, "typed_config": config}));
    }
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let (port, admin) = (free_port(), free_port());
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "inbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                    "http_filters": http_filters,
                }}]}],
        }]},
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("envoy.json");
    std::fs::write(&cfg, bootstrap.to_string()).expect("write");
    let log = dir.path().join("envoy.log");
    let mut child = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&cfg)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .args(["--base-id", "41900"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn envoy");
    let start = Instant::now();
    while !admin_get(admin, "/ready").contains("LIVE") {
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "envoy did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let alice = format!("Bearer {}", keys.token("alice"));
    let bob = format!("Bearer {}", keys.token("bob"));
    // Alice's header and payload with the signature of Bob's token.
    let (a, b) = (keys.token("alice"), keys.token("bob"));
    let forged = format!(
        "{}.{}",
        a.rsplit_once('.').expect("jwt").0,
        b.rsplit_once('.').expect("jwt").1
    );
    let forged = format!("Bearer {forged}");
    let auth = |v: &str| vec![("authorization", v.to_string())];
    let cases: Vec<Case> = vec![
        ("GET", "/api/pay", vec![], 403),
        ("GET", "/api/pay", auth(&alice), 200),
        ("GET", "/api/pay", auth(&bob), 403),
        ("POST", "/api/pay", auth(&alice), 403),
        ("GET", "/api/pay", auth(&forged), 401),
        ("GET", "/public/a/info", vec![], 200),
        ("GET", "/public/a/b/info", vec![], 403),
        (
            "GET",
            "/api/pay",
            vec![("authorization", alice.clone()), ("x-block", "yes".into())],
            403,
        ),
        ("GET", "/admin", auth(&bob), 200),
        ("GET", "/admin", vec![], 403),
        ("GET", "/api/secret", auth(&alice), 200),
    ];
    let mut failures = Vec::new();
    for (method, path, headers, want) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, body) = request(port, method, path, &h);
        if got != *want {
            failures.push(format!(
                "{method} {path} {:?}: want {want}, got {got} {body:?}",
                h.iter().map(|(k, _)| *k).collect::<Vec<_>>()
            ));
        }
        if got == 403 && body != "RBAC: access denied" {
            failures.push(format!("{method} {path}: 403 body {body:?}"));
        }
    }
    let stats = admin_get(admin, "/stats");
    let _ = child.kill();
    let _ = child.wait();
    assert!(failures.is_empty(), "{failures:#?}");
    // The dry-run DENY saw /api/secret (counted as a shadow denial) and let it through.
    let shadow_denied = stats
        .lines()
        .find(|l| l.contains("istio_dry_run_deny_") && l.contains("shadow_denied"))
        .and_then(|l| l.rsplit(": ").next())
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(
        shadow_denied.is_some_and(|n| n >= 1),
        "dry-run stats: {:?}",
        stats
            .lines()
            .filter(|l| l.contains("rbac"))
            .collect::<Vec<_>>()
    );
}

/// A TCP echo server on loopback (one thread per connection, bounded by the test).
fn echo_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// What comes back for `ping` on a TCP connection (empty: closed).
fn tcp_echo(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(b"ping");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Err(_) => String::new(),
    }
}

#[test]
fn stock_envoy_enforces_tcp_semantics() {
    let Some(bin) = envoy() else {
        eprintln!("HALYARD_ENVOY not set; skipping");
        return;
    };
    let echo = echo_server();
    let (deny_port, allow_port, http_only_port, admin) =
        (free_port(), free_port(), free_port(), free_port());
    let resolve = |_: Option<&str>, _: &str| None;
    let cx = Context {
        trust_domains: vec!["cluster.local".into()],
        providers: &[],
        resolve_service: &resolve,
    };
    let listener = |port: u16, policy: &AuthzPolicy| {
        let mut filters: Vec<serde_json::Value> = authz::tcp_filters_json(&[policy], &cx)
            .into_iter()
            .map(|(name, config)| json!({"name": name, "typed_config": config}))
            .collect();
        filters.push(
            json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": format!("tcp_{port}"), "cluster": "echo"}}),
        );
        json!({"name": format!("l{port}"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": filters}]})
    };
    // DENY from loopback with an HTTP-only field: on TCP the method is left
    // out, so the rule denies every loopback connection.
    let deny = policy(
        "deny-get",
        false,
        "action: DENY\nrules:\n- from: [{source: {ipBlocks: [127.0.0.1/32]}}]\n  to: [{operation: {methods: [GET]}}]\n",
    );
    // ALLOW on the listener's port: allowed.
    let allow = policy(
        "allow-port",
        false,
        &format!("rules:\n- to: [{{operation: {{ports: ['{allow_port}']}}}}]\n"),
    );
    // ALLOW with only an HTTP field: the rule is dropped, nothing is allowed.
    let http_only = policy(
        "allow-get",
        false,
        "rules:\n- to: [{operation: {methods: [GET]}}]\n",
    );
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [listener(deny_port, &deny), listener(allow_port, &allow),
                listener(http_only_port, &http_only)],
            "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address":
                        {"address": "127.0.0.1", "port_value": echo}}}}]}]}}],
        },
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("envoy.json");
    std::fs::write(&cfg, bootstrap.to_string()).expect("write");
    let log = dir.path().join("envoy.log");
    let mut child = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&cfg)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .args(["--base-id", "41901"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn envoy");
    let start = Instant::now();
    while !admin_get(admin, "/ready").contains("LIVE") {
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "envoy did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = (
        tcp_echo(deny_port),
        tcp_echo(allow_port),
        tcp_echo(http_only_port),
    );
    let stats = admin_get(admin, "/stats");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        got,
        (String::new(), "ping".to_string(), String::new()),
        "(DENY with an HTTP-only field, ALLOW on the port, ALLOW with only an HTTP field)"
    );
    let denied: u64 = stats
        .lines()
        .filter(|l| l.contains("rbac.denied") && l.starts_with("tcp."))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(
        denied,
        2,
        "{:?}",
        stats
            .lines()
            .filter(|l| l.contains("rbac"))
            .collect::<Vec<_>>()
    );
}

/// An HTTP ext_authz server on loopback: 200 when the check carries
/// `x-allow: yes`, else 403; counts the checks.
fn authz_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let status = if text.contains("\r\nx-allow: yes\r\n") {
                    "200 OK"
                } else {
                    "403 Forbidden"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    (port, calls)
}

#[test]
fn stock_envoy_calls_the_custom_provider_only_for_selected_requests() {
    use std::sync::atomic::Ordering;
    let Some(bin) = envoy() else {
        eprintln!("HALYARD_ENVOY not set; skipping");
        return;
    };
    let (authz_port, calls) = authz_server();
    let providers: Vec<api::mesh_config::MeshExtensionProvider> = spec(&format!(
        "- name: ext\n  envoyExtAuthzHttp:\n    service: pay/ext-authz.pay.svc.cluster.local\n    port: {authz_port}\n    timeout: 2s\n    includeRequestHeadersInCheck: [x-allow]\n"
    ));
    let resolve = |_: Option<&str>, host: &str| {
        (host == "ext-authz.pay.svc.cluster.local").then(|| host.to_string())
    };
    let cx = Context {
        trust_domains: vec!["cluster.local".into()],
        providers: &providers,
        resolve_service: &resolve,
    };
    let custom = policy(
        "admin",
        false,
        "action: CUSTOM\nprovider: {name: ext}\nrules:\n- to: [{operation: {paths: ['/admin/*']}}]\n",
    );
    let mut http_filters: Vec<serde_json::Value> = authz::http_filters_json(&[&custom], &cx)
        .into_iter()
        .map(|(name, config)| json!({"name": name, "typed_config": config}))
        .collect();
    assert_eq!(http_filters.len(), 2, "{http_filters:#?}");
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let (port, admin) = (free_port(), free_port());
    let cluster = format!("outbound|{authz_port}||ext-authz.pay.svc.cluster.local");
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                        "http_filters": http_filters,
                    }}]}],
            }],
            "clusters": [{"name": cluster, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address":
                        {"address": "127.0.0.1", "port_value": authz_port}}}}]}]}}],
        },
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("envoy.json");
    std::fs::write(&cfg, bootstrap.to_string()).expect("write");
    let log = dir.path().join("envoy.log");
    let mut child = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&cfg)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .args(["--base-id", "41902"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn envoy");
    let start = Instant::now();
    while !admin_get(admin, "/ready").contains("LIVE") {
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "envoy did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = [
        request(port, "GET", "/public", &[]).0,
        request(port, "GET", "/admin/users", &[]).0,
        request(port, "GET", "/admin/users", &[("x-allow", "yes")]).0,
    ];
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, [200, 403, 200], "(not selected, denied, allowed)");
    // Only the two /admin requests reached the authorizer.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
