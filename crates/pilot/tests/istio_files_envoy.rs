//! The Istio-files conformance run against a stock Envoy (when
//! `$HALYARD_ENVOY` names one; skipped otherwise): one in-process pilot
//! (Discovery + ADS), one Envoy per proxy kind (sidecar in `default` over
//! delta, sidecar in `other` with a Sidecar resource over delta, a gateway
//! router over SotW), each walked through every accepted config in turn.
//! Every push must be ACKed — no NACK, zero `update_rejected` in Envoy's
//! stats. Then, with byon.yaml's CIDR ServiceEntry loaded, a route change
//! elsewhere must still reach Envoy promptly.

mod istio;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use pilot::discovery::Discovery;
use pilot::mesh::Mesh;
use tokio_stream::wrappers::TcpListenerStream;
use xds::status::{ProxyStatus, SyncStatus};

/// Below Envoy's default initial_fetch_timeout (15 s), so a push that leaves
/// Envoy waiting for a resource (say, a changed EDS cluster whose endpoints
/// were not re-sent) fails instead of settling late.
const DEADLINE: Duration = Duration::from_secs(10);

fn envoy() -> Option<PathBuf> {
    std::env::var_os("HALYARD_ENVOY")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

fn yaml_value(v: &envoy_types::pb::google::protobuf::Value) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => format!("{s:?}"),
        Some(Kind::StructValue(s)) => {
            let fields: Vec<String> = s
                .fields
                .iter()
                .map(|(k, v)| format!("{k:?}: {}", yaml_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        _ => "null".into(),
    }
}

fn bootstrap(node: &Node, xds_port: u16, delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    let meta = node.metadata.as_ref().map_or("{}".to_string(), |m| {
        yaml_value(&envoy_types::pb::google::protobuf::Value {
            kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(
                m.clone(),
            )),
        })
    });
    format!(
        r#"
node: {{id: "{id}", cluster: conformance, metadata: {meta}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
dynamic_resources:
  ads_config: {{api_type: {api}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}}}]}}]
"#,
        id = node.id
    )
}

/// `GET path` on Envoy's admin (HTTP/1.0, whole body).
fn admin_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A running Envoy that kills itself on drop.
struct Envoy {
    _child: tokio::process::Child,
    admin: String,
    log: PathBuf,
}

impl Envoy {
    async fn start(bin: &Path, dir: &Path, name: &str, config: &str) -> Envoy {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, config).expect("write bootstrap");
        let admin_path = dir.join(format!("{name}.admin"));
        let log = dir.join(format!("{name}.log"));
        let child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warning", "--base-id-path"])
            .arg(dir.join(format!("{name}.base-id")))
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn envoy");
        let start = Instant::now();
        let admin = loop {
            if let Ok(a) = std::fs::read_to_string(&admin_path)
                && !a.trim().is_empty()
            {
                break a.trim().to_string();
            }
            assert!(start.elapsed() < DEADLINE, "envoy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Envoy {
            _child: child,
            admin,
            log,
        }
    }

    fn rejected(&self) -> Vec<String> {
        admin_get(&self.admin, "/stats")
            .lines()
            .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
            .map(str::to_string)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Has the one stream ACKed (or NACKed, counted in `nacks`) every type of
/// the snapshot its node now has?
fn settled(
    discovery: &Discovery,
    node_id: &str,
    p: &[ProxyStatus],
    nacks_before: &BTreeMap<String, u64>,
) -> bool {
    let [p] = p else { return false };
    let Some(snap) = discovery.snapshot_for(node_id) else {
        return false;
    };
    snap.types.iter().all(|(url, t)| {
        let short = xds::type_url::short(url);
        let Some(s) = p.types.get(short) else {
            // Not (yet) subscribed: only EDS/RDS may legitimately stay out.
            return matches!(short, "EDS" | "RDS" | "NDS");
        };
        if s.subscribed.is_empty() && s.sent_version.is_none() {
            return true;
        }
        s.acked_version.as_deref() == Some(t.version.as_str())
            || (s.nack_count > nacks_before.get(short).copied().unwrap_or(0)
                && s.sent_version.as_deref() == Some(t.version.as_str()))
    })
}

fn nack_counts(sync: &SyncStatus) -> BTreeMap<String, u64> {
    sync.snapshot()
        .first()
        .map(|p| {
            p.types
                .iter()
                .map(|(k, t)| (k.clone(), t.nack_count))
                .collect()
        })
        .unwrap_or_default()
}

/// Push `mesh` and wait for Envoy to settle; Err describes a NACK or a hang.
async fn push(
    discovery: &Discovery,
    sync: &SyncStatus,
    node_id: &str,
    mesh: Mesh,
) -> Result<Duration, String> {
    let before = nack_counts(sync);
    let start = Instant::now();
    discovery.update(mesh);
    let ok = sync
        .wait_until(DEADLINE, |p| settled(discovery, node_id, p, &before))
        .await;
    let elapsed = start.elapsed();
    if !ok {
        return Err(format!("did not settle: {:#?}", sync.snapshot()));
    }
    let after = sync.snapshot();
    let nacks: Vec<String> = after[0]
        .types
        .iter()
        .filter(|(k, t)| t.nack_count > before.get(*k).copied().unwrap_or(0))
        .map(|(k, t)| format!("{k} NACK: {}", t.nack.clone().unwrap_or_default()))
        .collect();
    if nacks.is_empty() {
        Ok(elapsed)
    } else {
        Err(nacks.join("; "))
    }
}

async fn serve(discovery: Arc<Discovery>, sync: SyncStatus) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ads = xds::server::AdsServer::new(discovery, sync).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_envoy_accepts_every_valid_istio_config() {
    let Some(bin) = envoy() else {
        eprintln!("HALYARD_ENVOY not set; skipping the stock Envoy run");
        return;
    };
    let Some(configs) = istio::configs() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    let mut pushes = 0;
    for (i, (kind, node)) in istio::proxies().into_iter().enumerate() {
        let discovery = Arc::new(Discovery::new(configs[0].1.clone()));
        let sync = SyncStatus::default();
        let port = serve(discovery.clone(), sync.clone()).await;
        let delta = kind != "router";
        let envoy = Envoy::start(
            &bin,
            dir.path(),
            &format!("envoy{i}"),
            &bootstrap(&node, port, delta),
        )
        .await;
        let connected = sync.wait_until(DEADLINE, |p| p.len() == 1).await;
        assert!(connected, "{kind}: Envoy did not connect\n{}", envoy.log());
        for (name, mesh) in &configs {
            pushes += 1;
            if let Err(e) = push(&discovery, &sync, &node.id, mesh.clone()).await {
                failures.push(format!("{name} [{kind}]: {e}"));
            }
        }
        let rejected = envoy.rejected();
        if !rejected.is_empty() {
            failures.push(format!("{kind}: Envoy stats: {}", rejected.join(", ")));
        }
        let dropped: u64 = discovery.push_errors.counts().iter().map(|(_, n)| n).sum();
        if dropped > 0 {
            failures.push(format!(
                "{kind}: the pre-push check dropped {dropped} units"
            ));
        }
        if !failures.is_empty() {
            failures.push(
                envoy
                    .log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            break;
        }
    }
    println!(
        "stock Envoy: {} configs x 3 proxy kinds, {pushes} pushes, 0 rejected",
        configs.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// byon.yaml's CIDR ServiceEntry in a running mesh does not hold back a
/// route change elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_reaches_envoy_with_byon_loaded() {
    let Some(bin) = envoy() else {
        eprintln!("HALYARD_ENVOY not set; skipping");
        return;
    };
    let Some(root) = istio::testdata() else {
        return;
    };
    let load = |extra: &str| {
        let (mut all, errors) =
            api::load::load_path(&root.join("samples/bookinfo/platform/kube/bookinfo.yaml"));
        assert!(errors.is_empty());
        let (byon, errors) = api::load::load_path(&root.join("tests/testdata/config/byon.yaml"));
        assert!(errors.is_empty());
        all.extend(byon);
        let (more, errors) = api::load::load_str(Path::new("change.yaml"), extra);
        assert!(errors.is_empty(), "{errors:?}");
        all.extend(more);
        pilot::compile::build(&all)
    };
    let (_, node) = istio::proxies().remove(0);
    let discovery = Arc::new(Discovery::new(load("")));
    let sync = SyncStatus::default();
    let port = serve(discovery.clone(), sync.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let envoy = Envoy::start(&bin, dir.path(), "byon", &bootstrap(&node, port, true)).await;
    let settled_first = sync
        .wait_until(DEADLINE, |p| {
            settled(&discovery, &node.id, p, &BTreeMap::new())
        })
        .await;
    assert!(settled_first, "{:#?}\n{}", sync.snapshot(), envoy.log());
    let before_rds = sync.snapshot()[0].types["RDS"].acked_version.clone();
    let change = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, port: {number: 9080}}}]
    timeout: 3s
"#;
    let took = push(&discovery, &sync, &node.id, load(change))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    let after = sync.snapshot();
    assert_ne!(
        after[0].types["RDS"].acked_version, before_rds,
        "RDS changed"
    );
    assert!(envoy.rejected().is_empty(), "{:?}", envoy.rejected());
    println!("route change with byon.yaml loaded: ACKed by Envoy in {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
