//! End-to-end tests of `halyard up` (root: network namespaces and iptables).
//! Bookinfo comes up from examples/, traffic goes through real capture rules
//! and sidecars, and every test tears its mesh down — checking that no
//! namespace is left behind, also when it fails.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::local_mesh::{LocalMesh, is_root};
use common::*;
use serde_json::Value;

/// One mesh at a time: each brings up a pilot and a dozen processes.
static SERIAL: Mutex<()> = Mutex::new(());

fn bookinfo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bookinfo");
    for f in std::fs::read_dir(src).expect("examples/bookinfo").flatten() {
        std::fs::copy(f.path(), dir.path().join(f.file_name())).expect("copy");
    }
    dir
}

fn set_reviews_route(dir: &Path, http: &str) {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  host: reviews\n  subsets:\n  - {{name: stable, labels: {{version: v1}}}}\n  - {{name: canary, labels: {{version: v3}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    );
    let tmp = dir.join(".routing.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(tmp, dir.join("routing.yaml")).expect("rename");
}

fn version(v: &Value) -> String {
    v["version"].as_str().unwrap_or("?").to_string()
}

#[test]
fn bookinfo_through_sidecars() {
    if !is_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = bookinfo_copy();
    let mut mesh = LocalMesh::up("bi", config.path());
    for pod in mesh.status["pods"].as_array().expect("pods") {
        assert_eq!(pod["phase"], "Running", "{pod}");
        assert_eq!(pod["sidecar_ready"], true, "{pod}");
    }

    // productpage -> details, reviews -> ratings, all through sidecars.
    let mut c = mesh.connect("productpage-v1-0", "productpage", 9080);
    let (status, page) = c
        .get("/productpage", &[("x-request-id", "e2e-1")])
        .expect("productpage");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["service"], "productpage");
    // The app sees its own sidecar as the peer: inbound capture happened.
    assert!(
        page["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{page}"
    );
    let calls = page["calls"].as_array().expect("calls");
    assert_eq!(calls[0]["body"]["service"], "details", "{page}");
    assert_eq!(calls[1]["body"]["service"], "reviews", "{page}");
    assert_eq!(calls[0]["body"]["headers"]["x-request-id"], "e2e-1");
    // Sidecar to sidecar is mutual TLS (auto-mTLS, Istio's default): the
    // server sidecar verified the caller and tells its app who it was.
    let xfcc = calls[0]["body"]["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details;Hash=")
            && xfcc.ends_with(";URI=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"),
        "{page}"
    );
    let reviews = &calls[1]["body"];
    if reviews["version"] != "v1" {
        assert_eq!(
            reviews["calls"][0]["body"]["service"], "ratings",
            "{reviews}"
        );
    }

    // The seed's canary routing: 90/10 over 2,000 requests, x-canary pinned.
    let mut c = mesh.connect("productpage-v1-0", "reviews", 9080);
    let mut v1 = 0;
    for _ in 0..2000 {
        let (s, body) = c.get("/", &[]).expect("reviews");
        assert_eq!(s, 200);
        match version(&body).as_str() {
            "v1" => v1 += 1,
            "v3" => {}
            other => panic!("unexpected version {other}"),
        }
    }
    let share = 100.0 * v1 as f64 / 2000.0;
    assert!((87.0..=93.0).contains(&share), "stable got {share:.1}%");
    for _ in 0..100 {
        let (_, body) = c.get("/", &[("x-canary", "true")]).expect("canary");
        assert_eq!(version(&body), "v3");
    }

    // Edit the VirtualService during traffic: all v2 within 2 s, no failures.
    set_reviews_route(
        config.path(),
        "  - route:\n    - destination: {host: reviews, subset: v2}\n",
    );
    let edited = Instant::now();
    let mut switched = None;
    while edited.elapsed() < Duration::from_secs(10) {
        let (s, body) = c.get("/", &[]).expect("request during edit");
        assert_eq!(s, 200, "failed request during config edit: {body}");
        if version(&body) == "v2" {
            switched.get_or_insert(edited.elapsed());
        } else if switched.is_some() {
            panic!("went back to {} after switching", version(&body));
        }
        if switched.is_some_and(|t| edited.elapsed() > t + Duration::from_millis(500)) {
            break;
        }
    }
    let took = switched.expect("route edit never took effect");
    assert!(took < Duration::from_secs(2), "edit took {took:?}");

    // Kill the pilot: traffic keeps flowing; the restarted pilot gets every
    // sidecar back.
    let pilot = mesh.status["pilot_pid"].as_u64().expect("pilot pid") as i32;
    // SAFETY: killing the pilot process the mesh started.
    unsafe {
        libc::kill(pilot, libc::SIGKILL);
    }
    for _ in 0..200 {
        let (s, body) = c.get("/", &[]).expect("request without pilot");
        assert_eq!((s, version(&body)), (200, "v2".to_string()));
    }
    let mesh_ns = format!("{}-mesh", mesh.name);
    let sidecars = mesh.status["pods"].as_array().expect("pods").len();
    wait_for(
        "every sidecar to reconnect to the restarted pilot",
        Duration::from_secs(30),
        || {
            let mut s = local::nsconnect::connect(
                &mesh_ns,
                "10.44.0.1:15014".parse().ok()?,
                Duration::from_secs(1),
            )
            .ok()?;
            s.write_all(b"GET /debug/syncz HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let json: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()?;
            let acked = json
                .as_array()?
                .iter()
                .filter(|p| p["types"]["LDS"]["acked_version"].is_string())
                .count();
            (acked == sidecars).then_some(())
        },
    );
    mesh.refresh();
    assert_ne!(
        mesh.status["pilot_pid"].as_u64(),
        Some(pilot as u64),
        "pilot was not restarted"
    );
}

const EXTRA: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: bookinfo}
spec:
  selector: {app: legacy}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata:
      labels: {app: legacy, version: v1}
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      containers: [{name: legacy, command: [halyard, echo, --port, "8080", --tcp-port, "9100"]}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: bookinfo}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp-echo, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc-echo, namespace: bookinfo}
spec:
  selector: {app: tcp-echo}
  ports: [{name: grpc, port: 7070}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tcp-echo, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  template:
    metadata: {labels: {app: tcp-echo, version: v1}}
    spec:
      containers: [{name: echo, command: [halyard, echo, --port, "7070", --port, "7071", --tcp-port, "9000", --tcp-port, "9001"]}]
---
apiVersion: v1
kind: Service
metadata: {name: sniffed, namespace: bookinfo}
spec:
  selector: {app: tcp-echo}
  ports: [{name: web, port: 7071}, {name: raw, port: 9001}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-pods, namespace: bookinfo}
spec:
  clusterIP: None
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-internal, namespace: bookinfo}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: DNS
  endpoints: [{address: tcp-echo.bookinfo.svc.cluster.local}]
"#;

/// Added once the mesh is up: `up --detach` waits for every pod to be ready,
/// and this one never is.
const CRASHER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: crasher, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: crasher}}
  template:
    metadata: {labels: {app: crasher}}
    spec:
      containers: [{name: crash, command: [sh, -c, "exit 3"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: unready, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: unready}}
  template:
    metadata: {labels: {app: unready}}
    spec:
      containers:
      - name: web
        command: [halyard, echo, --port, "7070"]
        readinessProbe: {httpGet: {path: /, port: 7999}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: unready, namespace: bookinfo}
spec:
  selector: {app: unready}
  ports: [{name: http, port: 7070}]
"#;

#[test]
fn tcp_grpc_and_uninjected_pods() {
    if !is_root() {
        return;
    }
    workloads("tg", &[]);
}

/// The same workloads with stock Envoy sidecars from the same bootstraps:
/// Envoy accepts everything the pilot sends and behaves the same.
#[test]
fn tcp_grpc_and_uninjected_pods_with_envoy_sidecars() {
    if !is_root() {
        return;
    }
    let Some(envoy) = envoy() else { return };
    let envoy = envoy.to_str().expect("utf8").to_string();
    workloads("te", &["--sidecar", "envoy", "--envoy", &envoy]);
}

fn workloads(name: &str, up_args: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = bookinfo_copy();
    std::fs::write(config.path().join("extra.yaml"), EXTRA).expect("extra");
    let mesh = LocalMesh::up_with(name, config.path(), up_args);
    assert_eq!(mesh.pod("legacy-0")["sidecar"], false);

    // A pod without a sidecar is reached directly (its peer is the caller's
    // sidecar, not its own) and still works.
    let mut c = mesh.connect("productpage-v1-0", "legacy", 8080);
    let (s, body) = c.get("/", &[]).expect("legacy");
    assert_eq!(s, 200);
    let productpage_ip = mesh.pod("productpage-v1-0")["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    assert!(
        body["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("{productpage_ip}:"))),
        "{body}"
    );
    // And the uninjected pod can call meshed services (VIP forwarding).
    let mut c = mesh.connect("legacy-0", "details", 9080);
    let (s, body) = c.get("/details/1", &[]).expect("details from legacy");
    assert_eq!((s, body["service"].as_str()), (200, Some("details")));

    // Plain TCP through both sidecars.
    let addr: SocketAddr = format!("{}:9000", mesh.vip("tcp-echo"))
        .parse()
        .expect("addr");
    let mut s = local::nsconnect::connect(
        &mesh.netns("productpage-v1-0"),
        addr,
        Duration::from_secs(2),
    )
    .expect("tcp");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"ping through the mesh\n").expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("ping through the mesh") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("hello from tcp-echo v1"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // gRPC (HTTP/2) through both sidecars.
    let addr: SocketAddr = format!("{}:7070", mesh.vip("grpc-echo"))
        .parse()
        .expect("addr");
    let stream = local::nsconnect::connect(
        &mesh.netns("productpage-v1-0"),
        addr,
        Duration::from_secs(2),
    )
    .expect("grpc");
    let reply = grpc_echo(stream, "grpc-echo:7070", "hello grpc");
    assert!(
        reply.contains("hello grpc") && reply.contains("tcp-echo"),
        "{reply}"
    );
    // Ports without a protocol in their name are sniffed: HTTP is routed
    // (the sidecar adds x-request-id), anything else is proxied as TCP.
    let mut c = mesh.connect("productpage-v1-0", "sniffed", 7071);
    let (s, body) = c.get("/", &[]).expect("sniffed http");
    assert_eq!(
        (s, body["service"].as_str()),
        (200, Some("tcp-echo")),
        "{body}"
    );
    assert!(body["headers"]["x-request-id"].is_string(), "{body}");
    let addr: SocketAddr = format!("{}:9001", mesh.vip("sniffed"))
        .parse()
        .expect("addr");
    let mut raw = local::nsconnect::connect(
        &mesh.netns("productpage-v1-0"),
        addr,
        Duration::from_secs(2),
    )
    .expect("raw");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    raw.write_all(b"\x00\x01 not http\n").expect("write");
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).expect("read raw");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("hello from tcp-echo"));

    // A destination the mesh does not know (the legacy pod's IP on a port no
    // Service names) passes through the sidecar as plain TCP.
    let legacy_ip = mesh.pod("legacy-0")["ip"].as_str().expect("ip").to_string();
    let addr: SocketAddr = format!("{legacy_ip}:9100").parse().expect("addr");
    let mut s = local::nsconnect::connect(
        &mesh.netns("productpage-v1-0"),
        addr,
        Duration::from_secs(2),
    )
    .expect("passthrough");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"x\n").expect("write");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("hello from legacy"));

    // Pods are Kubernetes-like: their own hostname, and a ClusterFirst
    // resolv.conf whose server answers from the registry at once.
    let exec = |pod: &str, argv: &[&str]| {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(argv);
        let out = mesh.halyard(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(
        exec("productpage-v1-0", &["hostname"]).1,
        "productpage-v1-0"
    );
    let (_, resolv) = exec("productpage-v1-0", &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search bookinfo.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    // A headless Service is in DNS only (not the hosts file): its short name,
    // through the search list, gives the pod's IP.
    let echo_ip = mesh.pod("tcp-echo-0")["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let (code, out) = exec("productpage-v1-0", &["getent", "ahostsv4", "echo-pods"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with(&echo_ip), "{out}");
    // An unknown name fails at once (NXDOMAIN), never after a resolver timeout
    // (glibc would wait 5 s per try): python's getfqdn() is the usual victim.
    let started = std::time::Instant::now();
    let (code, _) = exec("productpage-v1-0", &["getent", "hosts", "no-such-service"]);
    assert_eq!(code, Some(2), "getent: not found");
    let (code, fqdn) = exec(
        "productpage-v1-0",
        &["python3", "-c", "import socket; print(socket.getfqdn())"],
    );
    assert_eq!(code, Some(0));
    assert!(fqdn.starts_with("productpage-v1-0"), "{fqdn}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "lookups waited for a timeout: {took:?}"
    );
    // With our sidecar, those lookups were captured to its DNS proxy (the
    // REDIRECT to 15053 counted packets); the uninjected pod asks the
    // cluster resolver directly and gets the same answer.
    if up_args.is_empty() {
        let out = Command::new("ip")
            .args(["netns", "exec", &mesh.netns("productpage-v1-0")])
            .args([
                "iptables",
                "-w",
                "-t",
                "nat",
                "-L",
                "ISTIO_OUTPUT_DNS",
                "-n",
                "-v",
                "-x",
            ])
            .output()
            .expect("iptables");
        let text = String::from_utf8_lossy(&out.stdout);
        let captured: u64 = text
            .lines()
            .filter(|l| l.contains("redir ports 15053"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        assert!(captured > 0, "no DNS captured to the sidecar:\n{text}");
    }
    let (code, out) = exec("legacy-0", &["getent", "ahostsv4", "echo-pods"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with(&echo_ip), "{out}");

    // A ServiceEntry host without addresses gets an auto-allocated VIP in
    // 240.240.0.0/16: DNS answers it, and plain TCP to it reaches the entry's
    // endpoints through the sidecars.
    let (code, out) = exec("productpage-v1-0", &["getent", "ahostsv4", "echo.internal"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("240.240."), "{out}");
    let vip = out.split_whitespace().next().expect("vip").to_string();
    let addr: SocketAddr = format!("{vip}:9000").parse().expect("addr");
    let mut s = local::nsconnect::connect(
        &mesh.netns("productpage-v1-0"),
        addr,
        Duration::from_secs(2),
    )
    .expect("connect to the auto-allocated VIP");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"via the vip\n").expect("write");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("hello from tcp-echo"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // A crashing container is restarted with backoff and shows in status; a
    // pod whose readiness probe fails runs but gets no traffic.
    std::fs::write(config.path().join("crasher.yaml"), CRASHER).expect("crasher");
    let mut mesh = mesh;
    wait_for(
        "the crashing pod to be restarted",
        Duration::from_secs(20),
        || {
            mesh.refresh();
            let p = mesh.find_pod("crasher-0")?;
            (p["restarts"].as_u64() >= Some(2)).then_some(())
        },
    );
    wait_for("the unready pod to run", Duration::from_secs(20), || {
        mesh.refresh();
        let p = mesh.find_pod("unready-0")?;
        (p["phase"] == "Running" && (p["sidecar_ready"] == true || p["sidecar"] == false))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    mesh.refresh();
    assert_eq!(
        mesh.pod("unready-0")["ready"],
        false,
        "{}",
        mesh.pod("unready-0")
    );
    let mut c = mesh.connect("productpage-v1-0", "unready", 7070);
    let (status, body) = c.get("/", &[]).expect("unready service");
    assert_eq!(status, 503, "a not-ready pod got traffic: {body}");

    // Scaling a Deployment in the manifests adds a pod that serves traffic.
    let extra = EXTRA.replace(
        "metadata: {name: tcp-echo, namespace: bookinfo}\nspec:\n  selector",
        "metadata: {name: tcp-echo, namespace: bookinfo}\nspec:\n  replicas: 2\n  selector",
    );
    assert_ne!(extra, EXTRA);
    std::fs::write(config.path().join("extra.yaml"), extra).expect("scale");
    wait_for("the second tcp-echo pod", Duration::from_secs(30), || {
        mesh.refresh();
        let pods = mesh.status["pods"].as_array()?;
        pods.iter()
            .any(|p| {
                p["name"] == "tcp-echo-1" && p["phase"] == "Running" && p["sidecar_ready"] == true
            })
            .then_some(())
    });
    // DNS follows: the headless Service now answers with both pods (through
    // the sidecar's NDS table in meshed pods), soon after the pod is ready.
    let second = mesh.pod("tcp-echo-1")["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    wait_for("DNS to list the new pod", Duration::from_secs(10), || {
        let out = mesh.halyard(&[
            "exec",
            "productpage-v1-0",
            "--",
            "getent",
            "ahostsv4",
            "echo-pods",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.contains(&format!("{echo_ip} ")) && text.contains(&format!("{second} ")))
            .then_some(())
    });

    // The supervisor dies without cleaning up: `halyard down` (in Drop)
    // must still remove every namespace and process.
    let supervisor = mesh.status["supervisor_pid"].as_u64().expect("pid") as i32;
    // SAFETY: killing the supervisor process this test started.
    unsafe {
        libc::kill(supervisor, libc::SIGKILL);
    }
}

#[test]
fn bad_manifests_start_nothing() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("app.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  replicas: lots\n",
    )
    .expect("write");
    let state = tempfile::tempdir().expect("state");
    let name = format!("hytbad{}", std::process::id() % 10_000);
    let out = halyard()
        .args(["up", dir.path().to_str().expect("utf8"), "--name", &name])
        .env("HALYARD_STATE", state.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("app.yaml:") && err.contains("Deployment") && err.contains("replicas"),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&name));
}

/// One unary gRPC call to the echo's Echo method over a plain h2c connection.
fn grpc_echo(stream: TcpStream, authority: &str, message: &str) -> String {
    use prost::Message;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        stream.set_nonblocking(true).expect("nonblocking");
        let io = hyper_util::rt::TokioIo::new(
            tokio::net::TcpStream::from_std(stream).expect("tokio stream"),
        );
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let msg = echo::grpc::EchoRequest {
            message: message.into(),
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let req = hyper::Request::post(format!("http://{authority}{}", echo::grpc::ECHO_PATH))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
            .expect("request");
        let resp = send.send_request(req).await.expect("grpc call");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert!(body.len() > 5, "empty gRPC reply");
        let reply = echo::grpc::EchoResponse::decode(&body[5..]).expect("decode reply");
        format!("{} {}", reply.message, reply.service)
    })
}

#[test]
fn without_root_up_says_what_to_do() {
    if !is_root() {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_halyard"))
        .args(["up", "/tmp", "--name", "hytnoroot"])
        .env("HALYARD_STATE", "/tmp/hyt-noroot-state")
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Permission denied") && err.contains("halyard") {
        eprintln!("SKIP: the test binary is not executable by nobody here");
        return;
    }
    assert!(!out.status.success());
    assert!(
        err.contains("needs root") && err.contains("sudo halyard up"),
        "{err}"
    );
}

/// The seed's PeerAuthentications, verbatim, over a small production
/// namespace: STRICT for the namespace, PERMISSIVE for payments-legacy.
const SEED_MTLS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: production, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: orders-api, namespace: production}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: payments-api, namespace: production}
---
apiVersion: v1
kind: Service
metadata: {name: payments-api, namespace: production}
spec:
  selector: {app: payments-api}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: payments-legacy, namespace: production}
spec:
  selector: {app: payments-legacy}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: payments-api, namespace: production}
spec:
  selector: {matchLabels: {app: payments-api}}
  template:
    metadata: {labels: {app: payments-api}}
    spec:
      serviceAccountName: payments-api
      containers: [{name: app, command: [halyard, echo, --port, "8080"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: payments-legacy, namespace: production}
spec:
  selector: {matchLabels: {app: payments-legacy}}
  template:
    metadata: {labels: {app: payments-legacy}}
    spec:
      containers: [{name: app, command: [halyard, echo, --port, "8080"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders-api, namespace: production}
spec:
  selector: {matchLabels: {app: orders-api}}
  template:
    metadata: {labels: {app: orders-api}}
    spec:
      serviceAccountName: orders-api
      containers: [{name: app, command: [halyard, echo, --port, "8080"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outsider, namespace: production}
spec:
  selector: {matchLabels: {app: outsider}}
  template:
    metadata:
      labels: {app: outsider}
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      containers: [{name: app, command: [halyard, echo, --port, "8080"]}]
"#;

/// Packets of a capture to or from `ip` (tcpdump reads, filters, writes).
fn packets_with(pcap: &Path, ip: &str) -> Vec<u8> {
    let out = pcap.with_extension(format!("{ip}.pcap"));
    let status = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg("-w")
        .arg(&out)
        .args(["host", ip])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("tcpdump -r");
    assert!(
        status.success(),
        "tcpdump could not read {}",
        pcap.display()
    );
    std::fs::read(&out).expect("filtered capture")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn seed_peer_authentication_strict_namespace_permissive_legacy() {
    if !is_root() {
        return;
    }
    let tcpdump = std::env::var("NO_TCPDUMP").is_err()
        && Command::new("tcpdump").arg("--version").output().is_ok();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = tempfile::tempdir().expect("tmp");
    std::fs::write(config.path().join("platform.yaml"), SEED_MTLS).expect("write");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed-mtls.yaml");
    std::fs::copy(&seed, config.path().join("peer-authentication.yaml")).expect("seed policies");
    let mesh = LocalMesh::up("sm", config.path());
    let ip = |pod: &str| mesh.pod(pod)["ip"].as_str().expect("ip").to_string();
    let (api_ip, legacy_ip) = (ip("payments-api-0"), ip("payments-legacy-0"));

    // Everything between meshed pods on the bridge, captured while it flows.
    let pcap = config.path().join("bridge.pcap");
    let mut capture = tcpdump.then(|| {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-mesh", mesh.name)])
            // Every packet written as it comes (a stop must not lose the
            // kernel's unread buffer), into the test's private temp dir
            // (-Z root: Debian's tcpdump drops to its own user otherwise).
            .args([
                "tcpdump",
                "--immediate-mode",
                "-U",
                "-Z",
                "root",
                "-i",
                "any",
                "-nn",
                "-w",
            ])
            .arg(&pcap)
            .args(["tcp", "port", "8080"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump");
        // Listening once it has written the capture file's header.
        wait_for("tcpdump to listen", Duration::from_secs(10), || {
            std::fs::metadata(&pcap).ok().filter(|m| m.len() >= 24)
        });
        child
    });

    // A meshed caller reaches the STRICT service over mTLS, as itself.
    let mut c = mesh.connect("orders-api-0", "payments-api", 8080);
    for _ in 0..5 {
        let (s, body) = c
            .get("/api/v1/payments/1", &[])
            .expect("orders -> payments");
        assert_eq!(
            (s, body["service"].as_str()),
            (200, Some("payments-api")),
            "{body}"
        );
        let xfcc = body["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default();
        assert!(
            xfcc.ends_with(";URI=spiffe://cluster.local/ns/production/sa/orders-api"),
            "{body}"
        );
    }
    // A caller without a sidecar: plaintext is accepted by the legacy
    // workload only.
    let mut c = mesh.connect("outsider-0", "payments-legacy", 8080);
    let (s, body) = c.get("/", &[]).expect("plaintext to legacy");
    assert_eq!(
        (s, body["service"].as_str()),
        (200, Some("payments-legacy"))
    );
    drop(c);
    if let Some(mut child) = capture.take() {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling the tcpdump this test started.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = child.wait();
        let meshed = packets_with(&pcap, &api_ip);
        assert!(
            !contains(&meshed, b"GET /"),
            "an HTTP request line crossed the bridge to the STRICT workload"
        );
        // TLS 1.3 application data records.
        assert!(
            contains(&meshed, b"\x17\x03\x03"),
            "no TLS records to the STRICT workload {api_ip}: {}",
            String::from_utf8_lossy(
                &Command::new("tcpdump")
                    .args(["-nn", "-r"])
                    .arg(&pcap)
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
        );
        let plain = packets_with(&pcap, &legacy_ip);
        assert!(
            contains(&plain, b"GET / HTTP/1.1"),
            "the capture missed the plaintext request to the legacy workload"
        );
    } else {
        eprintln!("no tcpdump: the packet capture part is skipped");
    }

    let mut c = mesh.connect("outsider-0", "payments-api", 8080);
    let refused = c.get("/", &[]);
    assert!(
        refused.as_ref().map_or(true, |(s, _)| *s != 200),
        "plaintext reached the STRICT workload: {refused:?}"
    );
}

/// Envoy and Halyard sidecars in one mesh (the pod annotation
/// `sidecar.halyard.io/proxy`), configured by the same pilot: servers of
/// both kinds in a STRICT namespace and in a PERMISSIVE one (Istio's
/// default), clients of both kinds, and a client without a sidecar.
fn mixed_manifests() -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: strict, labels: {istio-injection: enabled}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: open, labels: {istio-injection: enabled}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: strict}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let deployment = |name: &str, ns: &str, annotations: &str, sa: &str, ports: &str| {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata:\n      labels: {{app: {name}, version: v1}}\n      annotations: {{{annotations}}}\n    spec:\n{sa}      containers: [{{name: app, command: [halyard, echo, {ports}]}}]\n"
        )
    };
    for kind in ["envoy", "halyard"] {
        let proxy = format!("sidecar.halyard.io/proxy: {kind}");
        for ns in ["strict", "open"] {
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: srv-{kind}, namespace: {ns}}}\nspec:\n  selector: {{app: srv-{kind}}}\n  ports: [{{name: http, port: 8080}}, {{name: grpc, port: 7070}}, {{name: tcp-echo, port: 9000}}]\n"
            ));
            out.push_str(&deployment(
                &format!("srv-{kind}"),
                ns,
                &proxy,
                "",
                "--port, \"8080\", --port, \"7070\", --tcp-port, \"9000\"",
            ));
        }
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: cli-{kind}, namespace: strict}}\n"
        ));
        out.push_str(&deployment(
            &format!("cli-{kind}"),
            "strict",
            &proxy,
            &format!("      serviceAccountName: cli-{kind}\n"),
            "--port, \"8080\"",
        ));
    }
    out.push_str(&deployment(
        "outsider",
        "strict",
        "sidecar.istio.io/inject: \"false\"",
        "",
        "--port, \"8080\"",
    ));
    out
}

#[test]
fn envoy_and_halyard_sidecars_speak_mtls_both_ways() {
    if !is_root() {
        return;
    }
    let Some(envoy) = envoy() else { return };
    let envoy = envoy.to_str().expect("utf8").to_string();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = tempfile::tempdir().expect("tmp");
    std::fs::write(config.path().join("mixed.yaml"), mixed_manifests()).expect("write");
    let mesh = LocalMesh::up_with("mx", config.path(), &["--envoy", &envoy]);
    for (pod, proxy) in [("srv-envoy-0", "envoy"), ("cli-halyard-0", "halyard")] {
        let p = mesh.status["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["name"] == pod))
            .cloned()
            .unwrap_or_default();
        assert_eq!(p["proxy"], proxy, "{p}");
    }
    for client in ["cli-envoy-0", "cli-halyard-0"] {
        let sa = client.trim_end_matches("-0");
        for ns in ["strict", "open"] {
            for server in ["srv-envoy", "srv-halyard"] {
                let svc = format!("{server}.{ns}");
                let case = format!("{client} -> {svc}");
                // HTTP/1.1: the server's app learns who called, verified.
                let mut c = mesh.connect(client, &svc, 8080);
                let (s, body) = c.get("/", &[]).unwrap_or_else(|e| panic!("{case}: {e}"));
                assert_eq!(
                    (s, body["service"].as_str()),
                    (200, Some(server)),
                    "{case}: {body}"
                );
                let xfcc = body["headers"]["x-forwarded-client-cert"]
                    .as_str()
                    .unwrap_or_default();
                assert!(
                    xfcc.ends_with(&format!(";URI=spiffe://cluster.local/ns/strict/sa/{sa}")),
                    "{case}: {body}"
                );
                // HTTP/2 (gRPC) and raw TCP cross the same mTLS hop.
                let addr: SocketAddr = format!("{}:7070", mesh.vip(&svc)).parse().expect("addr");
                let stream =
                    local::nsconnect::connect(&mesh.netns(client), addr, Duration::from_secs(2))
                        .unwrap_or_else(|e| panic!("{case}: grpc: {e}"));
                let reply = grpc_echo(stream, &format!("{svc}:7070"), "hello grpc");
                assert!(
                    reply.contains("hello grpc") && reply.contains(server),
                    "{case}: {reply}"
                );
                let addr: SocketAddr = format!("{}:9000", mesh.vip(&svc)).parse().expect("addr");
                let mut t =
                    local::nsconnect::connect(&mesh.netns(client), addr, Duration::from_secs(2))
                        .unwrap_or_else(|e| panic!("{case}: tcp: {e}"));
                t.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                t.write_all(b"ping over mtls\n").expect("write");
                let mut got = Vec::new();
                let mut buf = [0u8; 256];
                while !String::from_utf8_lossy(&got).contains("ping over mtls") {
                    let n = t
                        .read(&mut buf)
                        .unwrap_or_else(|e| panic!("{case}: tcp read: {e}"));
                    assert!(
                        n > 0,
                        "{case}: tcp closed: {}",
                        String::from_utf8_lossy(&got)
                    );
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    // Without a sidecar: STRICT servers refuse, PERMISSIVE ones answer.
    for server in ["srv-envoy", "srv-halyard"] {
        let mut c = mesh.connect("outsider-0", &format!("{server}.open"), 8080);
        let (s, _) = c.get("/", &[]).expect("plaintext to PERMISSIVE");
        assert_eq!(s, 200, "{server}.open");
        let mut c = mesh.connect("outsider-0", &format!("{server}.strict"), 8080);
        let r = c.get("/", &[]);
        assert!(
            r.as_ref().map_or(true, |(s, _)| *s != 200),
            "{server}.strict took plaintext: {r:?}"
        );
    }
    // `halyard status` says each workload's mode, as istioctl x describe does.
    let out = mesh.halyard(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |ns: &str, pod: &str| {
        text.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(ns) && w.next() == Some(pod)
            })
            .unwrap_or_default()
            .trim_end()
            .to_string()
    };
    for kind in ["envoy", "halyard"] {
        let strict = line("strict", &format!("srv-{kind}-0"));
        assert!(
            strict.contains(&format!("{kind} ready")) && strict.ends_with("STRICT"),
            "{text}"
        );
        let open = line("open", &format!("srv-{kind}-0"));
        assert!(open.ends_with("PERMISSIVE"), "{text}");
    }
    assert!(
        line("strict", "outsider-0").ends_with("plaintext"),
        "{text}"
    );
    // `halyard proxy-config secret POD`, as istioctl's, for either proxy.
    for pod in ["srv-envoy-0.strict", "cli-halyard-0.strict"] {
        let out = mesh.halyard(&["proxy-config", "secret", pod, "--output", "json"]);
        assert!(out.status.success(), "{pod}: {out:?}");
        let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
        let sa = if pod.starts_with("srv") {
            "default"
        } else {
            "cli-halyard"
        };
        assert!(
            rows.as_array()
                .is_some_and(|r| r.iter().any(|r| r["resource_name"] == "default"
                    && r["valid_cert"] == true
                    && r["identity"] == format!("spiffe://cluster.local/ns/strict/sa/{sa}"))),
            "{pod}: {rows}"
        );
    }
}
