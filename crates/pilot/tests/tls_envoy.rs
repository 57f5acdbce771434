//! Every golden case (`golden/*/`: the mesh-TLS ones with `mesh.yaml` and
//! the plaintext ones) against a stock Envoy (when `$HALYARD_ENVOY` names
//! one; skipped otherwise): each case's
//! translation is served over ADS to an Envoy with the case's node, whose
//! `sds-grpc` cluster reaches an in-process SDS server with `default` and
//! `ROOTCA` (from a real CA) and the DestinationRule file secrets. Every
//! push must be ACKed with zero `update_rejected`, and every listener and
//! cluster must leave warming (its secrets arrived and were usable).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use pilot::discovery::Discovery;
use tokio_stream::wrappers::TcpListenerStream;
use xds::server::{Resource, Snapshot, SnapshotSource, TypeSnapshot};
use xds::status::SyncStatus;

const DEADLINE: Duration = Duration::from_secs(25);

fn envoy() -> Option<PathBuf> {
    std::env::var_os("HALYARD_ENVOY")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(text.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn any<M: prost::Message + prost::Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// `default` (a workload certificate) and every root-like secret the
/// cases name, all from one CA.
fn secrets(dir: &Path) -> Snapshot {
    let ca = identity::Ca::from_dir(dir, "cluster.local").expect("CA");
    let key = identity::WorkloadKey::generate().expect("key");
    let id = identity::SpiffeId::new("cluster.local", "shop", "sleep");
    let issued = ca
        .issue_serving(
            &key,
            &id,
            &[],
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .expect("certificate");
    let cert = |name: &str| {
        let s = Secret {
            name: name.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&issued.chain.concat()),
                private_key: inline(&key.private_key_pem()),
                ..Default::default()
            })),
        };
        Resource::new(name, any(&s))
    };
    let root = |name: &str| {
        let s = Secret {
            name: name.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(&issued.roots.concat()),
                    ..Default::default()
                },
            )),
        };
        Resource::new(name, any(&s))
    };
    let mut snap = Snapshot::default();
    snap.types.insert(
        xds::type_url::SECRET.to_string(),
        TypeSnapshot::from_resources([
            cert("default"),
            cert("file-cert:/etc/certs/client.pem~/etc/certs/client-key.pem"),
            root("ROOTCA"),
            root("file-root:/etc/certs/payments-ca.pem"),
            root("file-root:/etc/certs/bank-ca.pem"),
            root("file-root:system"),
        ]),
    );
    snap
}

struct Secrets(tokio::sync::watch::Receiver<Arc<Snapshot>>);

impl SnapshotSource for Secrets {
    fn subscribe(
        &self,
        _: &Node,
    ) -> Result<tokio::sync::watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        Ok(self.0.clone())
    }
}

fn admin_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
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

fn stat(stats: &str, name: &str) -> Option<u64> {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Every golden case, with its mesh (TLS on when it has `mesh.yaml`) and node.
fn cases() -> Vec<(String, pilot::mesh::Mesh, Node)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("golden dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.yaml").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let (mesh, node) = common::golden_case(&dir);
            let name = dir.file_name().expect("name").to_string_lossy().to_string();
            (name, mesh, node)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_envoy_accepts_every_golden() {
    let Some(bin) = envoy() else {
        eprintln!("HALYARD_ENVOY not set; skipping the stock Envoy run");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(secrets(&dir.path().join("ca"))));
    let socket = dir.path().join("sds.sock");
    let uds = tokio::net::UnixListener::bind(&socket).expect("bind sds");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                xds::server::AdsServer::new(Arc::new(Secrets(rx)), SyncStatus::default())
                    .into_sds_service(),
            )
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(uds)),
    );
    let only = std::env::var("TLS_ENVOY_CASE").ok();
    let cases: Vec<_> = cases()
        .into_iter()
        .filter(|(n, _, _)| only.as_deref().is_none_or(|o| o == n))
        .collect();
    assert!(
        only.is_some() || cases.len() >= 11,
        "{} golden cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for (i, (name, mesh, node)) in cases.into_iter().enumerate() {
        let discovery = Arc::new(Discovery::new(mesh));
        let sync = SyncStatus::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let xds_port = listener.local_addr().expect("addr").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    xds::server::AdsServer::new(discovery.clone(), sync.clone()).into_service(),
                )
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let labels = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => Some(s),
                _ => None,
            })
            .map(|s| {
                s.fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v)) => {
                            Some((k.clone(), v.clone()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let admin_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let spec = xds::bootstrap::BootstrapSpec {
            node_id: node.id.clone(),
            xds: format!("127.0.0.1:{xds_port}"),
            labels,
            admin: format!("127.0.0.1:{admin_port}"),
            interception_mode: "REDIRECT".into(),
            service_account: "sleep".into(),
            sotw: false,
            sds_socket: Some(socket.to_string_lossy().to_string()),
        };
        let cfg = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &cfg,
            xds::bootstrap::generate(&spec)
                .expect("bootstrap")
                .to_string(),
        )
        .expect("write");
        let log = dir.path().join(format!("{name}.log"));
        let mut envoy = tokio::process::Command::new(&bin)
            .arg("-c")
            .arg(&cfg)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .args(["--base-id", &(40_000 + i).to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn envoy");
        let admin = format!("127.0.0.1:{admin_port}");
        let start = Instant::now();
        // ACKed every type, nothing warming, nothing rejected.
        let verdict = loop {
            let stats = admin_get(&admin, "/stats");
            let acked = sync.snapshot().first().is_some_and(|p| {
                discovery.snapshot_for(&node.id).is_some_and(|snap| {
                    snap.types.iter().all(|(url, t)| {
                        let short = xds::type_url::short(url);
                        matches!(short, "NDS" | "RDS")
                            || p.types.get(short).is_some_and(|s| {
                                s.acked_version.as_deref() == Some(t.version.as_str())
                            })
                    })
                })
            });
            let nacked = sync
                .snapshot()
                .first()
                .is_some_and(|p| p.types.values().any(|t| t.nack_count > 0));
            let warming = (
                stat(&stats, "listener_manager.total_listeners_warming"),
                stat(&stats, "cluster_manager.warming_clusters"),
            );
            let rejected: Vec<&str> = stats
                .lines()
                .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
                .collect();
            if nacked || !rejected.is_empty() {
                break Err(format!(
                    "NACK {:#?} / rejected {rejected:?}",
                    sync.snapshot()
                ));
            }
            if acked && warming == (Some(0), Some(0)) {
                let active = stat(&stats, "listener_manager.total_listeners_active");
                break Ok(active);
            }
            if start.elapsed() > DEADLINE {
                break Err(format!(
                    "not settled: acked {acked}, warming (listeners, clusters) {warming:?}, \
                     admin {admin}: {:?}",
                    stats.chars().take(200).collect::<String>()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Gone before the next one binds 15001/15006.
        let _ = envoy.kill().await;
        match verdict {
            Ok(active) => println!("{name}: ACKed, {active:?} listeners active, none warming"),
            Err(e) => {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                failures.push(format!("{name}: {e}\n{}", tail.join("\n")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
