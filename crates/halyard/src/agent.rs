//! `halyard agent`: pilot-agent's SDS role for a stock Envoy. It keeps the
//! workload's certificate (key made in memory, CSR to the mesh CA over TLS
//! with the workload's service-account token, renewed at half-life) and
//! serves it to Envoy over SDS on Istio's UDS path as the secrets `default`
//! (certificate and key) and `ROOTCA` (every root the mesh trusts). Our own
//! proxy needs no agent.
//!
//! The channel to the CA verifies the pilot against the roots of the
//! `--ca-root` file, re-read before every request, together with the roots
//! of the last `ROOTCA` the CA gave; when that set changes (a root
//! rotation) the channel is rebuilt, so the pilot's certificate from a new
//! root is trusted as soon as the mesh trusts that root.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use prost::{Message, Name};
use tokio::sync::watch;
use xds::server::{Resource, Snapshot, SnapshotSource, TypeSnapshot};

/// Istio's SDS socket, relative to the workload's working directory.
pub const DEFAULT_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";

/// How a workload proves and gets its identity (the agent's, and our
/// proxy's when it keeps its own certificate).
#[derive(clap::Args, Debug, Clone)]
pub struct IdentityArgs {
    /// The mesh CA (the pilot's TLS port, Istio's 15012).
    #[arg(long, default_value = "127.0.0.1:15012")]
    ca_address: SocketAddr,
    /// The mesh root(s) that the CA's certificate chains to (Istio mounts
    /// `./var/run/secrets/istio/root-cert.pem`); re-read before each request.
    #[arg(long)]
    ca_root: Option<PathBuf>,
    /// The name the CA's certificate is checked for.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    ca_name: String,
    /// The service-account token file (re-read on every request).
    #[arg(long)]
    token: Option<PathBuf>,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// Where Envoy reaches SDS.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// A workload's certificates as they are issued and renewed.
pub type Bundles = watch::Receiver<Option<Arc<identity::keeper::Bundle>>>;

/// Whether that certificate is valid (pending, valid, expired), for readiness.
pub type CertStatus = watch::Receiver<identity::keeper::Status>;

impl IdentityArgs {
    /// Whether a token was given (a proxy without one keeps no certificate).
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// The certificate keeper (run it), the bundles it publishes and their
    /// status.
    pub fn keeper(
        &self,
    ) -> anyhow::Result<(impl Future<Output = ()> + use<>, Bundles, CertStatus)> {
        let (Some(token), Some(ca_root)) = (&self.token, &self.ca_root) else {
            anyhow::bail!("--token and --ca-root are required to get a workload certificate");
        };
        let root = std::fs::read_to_string(ca_root)
            .with_context(|| format!("read {}", ca_root.display()))?;
        let client = CaClient {
            address: self.ca_address,
            name: self.ca_name.clone(),
            root_file: ca_root.clone(),
            token: token.clone(),
            bundles: None,
            channel: std::sync::Mutex::new(None),
        };
        let mut roots = pems(&root);
        roots.sort();
        client.channel_for(&roots)?;
        let id =
            identity::SpiffeId::new(&self.trust_domain, &self.namespace, &self.service_account);
        let (tx, rx) = watch::channel(None);
        let (status_tx, status) = watch::channel(identity::keeper::Status::Pending);
        let client = CaClient {
            bundles: Some(rx.clone()),
            ..client
        };
        let keeper = identity::keeper::keep_reporting(id, client, tx, status_tx);
        Ok((keeper, rx, status))
    }
}

/// Our proxy's readiness follows its certificate: not ready until the
/// first one arrives, nor while an expired one awaits renewal.
pub async fn report(mut status: CertStatus, secrets: Arc<proxy::tls::Secrets>) {
    use identity::keeper::Status;
    loop {
        let why = match &*status.borrow_and_update() {
            Status::Pending => Some("workload certificate pending".to_string()),
            Status::Valid { .. } => None,
            Status::Expired { serial, not_after } => Some(format!(
                "workload certificate {serial} expired at {}",
                humantime_utc(*not_after)
            )),
        };
        secrets.set_unready(why);
        if status.changed().await.is_err() {
            return;
        }
    }
}

fn humantime_utc(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// Our proxy's SDS secrets `default` and `ROOTCA`, from each bundle as it
/// comes (both swapped at once, so no handshake sees a mismatched pair).
pub async fn feed(mut bundles: Bundles, secrets: Arc<proxy::tls::Secrets>) {
    while bundles.changed().await.is_ok() {
        let Some(b) = bundles.borrow_and_update().clone() else {
            continue;
        };
        secrets.set_all([
            (
                "default".to_string(),
                proxy::tls::Secret::Certificate(proxy::config::tls::CertPem {
                    chain: b.chain.concat(),
                    key: b.key_pem.clone(),
                }),
            ),
            (
                "ROOTCA".to_string(),
                proxy::tls::Secret::Roots(b.roots.concat()),
            ),
        ]);
    }
}

/// Every certificate in a PEM text, one PEM each.
fn pems(text: &str) -> Vec<String> {
    pem::parse_many(text)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| {
            pem::encode_config(
                p,
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect()
}

/// Asks the CA over TLS with the token in the file, trusting the roots of
/// the root file and of the last ROOTCA received.
struct CaClient {
    address: SocketAddr,
    name: String,
    root_file: PathBuf,
    token: PathBuf,
    /// What the keeper published last (its ROOTCA).
    bundles: Option<Bundles>,
    /// The roots the channel trusts, and the channel.
    channel: std::sync::Mutex<Option<(Vec<String>, tonic::transport::Channel)>>,
}

impl CaClient {
    /// The channel trusting exactly `roots` (the current one if it does).
    fn channel_for(&self, roots: &[String]) -> anyhow::Result<tonic::transport::Channel> {
        let mut current = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((trusted, channel)) = current.as_ref()
            && trusted == roots
        {
            return Ok(channel.clone());
        }
        if roots.is_empty() {
            anyhow::bail!("{}: no root certificate", self.root_file.display());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.address))?
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificates(roots.iter().map(tonic::transport::Certificate::from_pem))
                    .domain_name(self.name.clone()),
            )
            .context("CA TLS settings")?
            .connect_lazy();
        if current.is_some() {
            tracing::info!(
                roots = roots.len(),
                "the mesh roots changed: the channel to the CA trusts them now"
            );
        }
        *current = Some((roots.to_vec(), channel.clone()));
        Ok(channel)
    }

    /// The roots to trust now: the root file's (the last good read if it
    /// cannot be read) and the last ROOTCA's, without repeats.
    fn roots(&self) -> Vec<String> {
        let mut roots = match std::fs::read_to_string(&self.root_file) {
            Ok(text) => pems(&text),
            Err(e) => {
                tracing::warn!(file = %self.root_file.display(), error = %e, "cannot re-read the CA root");
                Vec::new()
            }
        };
        if roots.is_empty()
            && let Some((trusted, _)) = &*self.channel.lock().unwrap_or_else(|e| e.into_inner())
        {
            roots = trusted.clone();
        }
        if let Some(b) = self.bundles.as_ref().and_then(|b| b.borrow().clone()) {
            roots.extend(b.roots.iter().cloned());
        }
        roots.sort();
        roots.dedup();
        roots
    }
}

impl identity::keeper::Fetch for CaClient {
    async fn fetch(&self, csr: String) -> Result<Vec<String>, String> {
        let token = std::fs::read_to_string(&self.token)
            .map_err(|e| format!("{}: {e}", self.token.display()))?;
        let channel = self.channel_for(&self.roots()).map_err(|e| e.to_string())?;
        identity::client::create_certificate(channel, &csr, token.trim(), std::time::Duration::ZERO)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(text.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn any_of<M: Message + Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// pilot-agent's file-backed SDS names (`file-cert:CERT~KEY`,
/// `file-root:CA`, `file-root:system`), read as our proxy reads them, as
/// Envoy secrets. None for other names; Err names the file.
fn file_secret(name: &str) -> Option<Result<Secret, String>> {
    let r#type = proxy::tls::file_secret(name)?.map(|s| match s {
        proxy::tls::Secret::Certificate(c) => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&c.chain),
            private_key: inline(&c.key),
            ..Default::default()
        }),
        proxy::tls::Secret::Roots(pem) => {
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(&pem),
                ..Default::default()
            })
        }
    });
    Some(r#type.map(|t| Secret {
        name: name.to_string(),
        r#type: Some(t),
    }))
}

/// What the agent serves: the workload's two secrets, and the file-backed
/// ones some proxy asked for.
#[derive(Default)]
struct Served {
    bundle: Option<Arc<identity::keeper::Bundle>>,
    files: BTreeMap<String, Resource>,
}

impl Served {
    fn snapshot(&self) -> Snapshot {
        let mut all: Vec<Resource> = self
            .bundle
            .as_deref()
            .map(bundle_resources)
            .unwrap_or_default();
        all.extend(self.files.values().cloned());
        let mut snap = Snapshot::default();
        snap.types.insert(
            xds::type_url::SECRET.to_string(),
            TypeSnapshot::from_resources(all),
        );
        snap
    }
}

/// `default` (chain and key) and `ROOTCA` (the trust bundle).
fn bundle_resources(bundle: &identity::keeper::Bundle) -> Vec<Resource> {
    let default = Secret {
        name: "default".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&bundle.chain.concat()),
            private_key: inline(&bundle.key_pem),
            ..Default::default()
        })),
    };
    let root = Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(&bundle.roots.concat()),
                ..Default::default()
            },
        )),
    };
    vec![
        Resource::new("default", any_of(&default)),
        Resource::new("ROOTCA", any_of(&root)),
    ]
}

/// Every proxy on the socket gets the same secrets.
struct Secrets(watch::Receiver<Arc<Snapshot>>);

impl SnapshotSource for Secrets {
    fn subscribe(
        &self,
        _node: &envoy_types::pb::envoy::config::core::v3::Node,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        Ok(self.0.clone())
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let (keeper, mut bundles, _status) = args.identity.keeper()?;
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let served = Arc::new(std::sync::Mutex::new(Served::default()));
    let sync = xds::status::SyncStatus::default();
    let publish = {
        let (served, snap_tx) = (served.clone(), snap_tx.clone());
        async move {
            while bundles.changed().await.is_ok() {
                let current = bundles.borrow_and_update().clone();
                if current.is_some() {
                    let mut s = served.lock().unwrap_or_else(|e| e.into_inner());
                    s.bundle = current;
                    snap_tx.send_replace(Arc::new(s.snapshot()));
                }
            }
        }
    };
    // A proxy asking for a file-backed name (DestinationRule SIMPLE/MUTUAL
    // roots and certificates, as Istio's pilot emits them) gets it read.
    let files = {
        let sync = sync.clone();
        async move {
            let mut changes = sync.changes();
            while changes.changed().await.is_ok() {
                let wanted = sync.subscribed_names(xds::type_url::SECRET);
                let mut s = served.lock().unwrap_or_else(|e| e.into_inner());
                let mut added = false;
                let new: Vec<String> = wanted
                    .into_iter()
                    .filter(|n| !s.files.contains_key(n))
                    .collect();
                for name in &new {
                    match file_secret(name) {
                        Some(Ok(secret)) => {
                            tracing::info!(%name, "serving file-backed secret");
                            s.files.insert(
                                name.clone(),
                                Resource::new(name.as_str(), any_of(&secret)),
                            );
                            added = true;
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "cannot serve secret"),
                        None => {}
                    }
                }
                if added {
                    snap_tx.send_replace(Arc::new(s.snapshot()));
                }
            }
        }
    };
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("listen on {}", args.socket.display()))?;
    let sds = xds::server::AdsServer::new(Arc::new(Secrets(snap_rx)), sync).into_sds_service();
    tracing::info!(socket = %args.socket.display(), ca = %args.identity.ca_address, "SDS agent serving");
    let serve = tonic::transport::Server::builder()
        .add_service(sds)
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
    tokio::select! {
        r = serve => r.context("SDS server")?,
        () = keeper => {}
        () = publish => {}
        () = files => {}
    }
    Ok(())
}
