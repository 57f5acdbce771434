//! Halyard's control plane: Istio config in, Envoy xDS out.
//!
//! config dir → [`config`] (load, watch, last good) → [`compile`] →
//! [`mesh::Mesh`] (immutable snapshot) → [`translate`] (pure, per proxy) →
//! [`discovery`] (per-proxy snapshots) → ADS (`xds::server`).

pub mod auto_vip;
pub mod ca_service;
pub mod check;
pub mod cluster_ip;
pub mod compile;
pub mod config;
pub mod debug;
pub mod delegate;
pub mod discovery;
pub mod export;
pub mod incremental;
pub mod jwks;
pub mod mesh;
pub mod model;
pub mod names;
pub mod node;
pub mod peer_authn;
pub mod policy;
pub mod routing;
mod secure;
pub mod translate;
pub mod version;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ConfigStore;
use crate::debug::{ConfigReport, DebugState};
use crate::discovery::Discovery;

/// Istio's PILOT_PUSH_THROTTLE default: proxies with a push in flight at once.
pub const DEFAULT_PUSH_THROTTLE: usize = xds::server::DEFAULT_PUSH_CONCURRENCY;

/// Istio's PILOT_XDS_SEND_TIMEOUT as we default it: a proxy that has not read
/// a response for this long is dropped.
pub const DEFAULT_SEND_TIMEOUT: Duration = xds::server::DEFAULT_SEND_TIMEOUT;

/// How to run the pilot.
#[derive(Clone, Debug)]
pub struct PilotOptions {
    pub config_dir: PathBuf,
    /// Generated registry (the local runtime's WorkloadEntries for its pods).
    pub registry_dir: Option<PathBuf>,
    /// Plaintext ADS (Istio's 15010).
    pub xds_addr: SocketAddr,
    /// Debug/metrics (Istio's 15014).
    pub debug_addr: SocketAddr,
    /// Quiet time after an edit before reloading (Istio's PILOT_DEBOUNCE_AFTER).
    pub debounce: Duration,
    /// Serve the mesh's DNS (UDP and TCP) here: Services, headless Services
    /// and ServiceEntry hosts, from the same registry as xDS.
    pub dns_addr: Option<SocketAddr>,
    /// Istio's address auto-allocation for ServiceEntries without addresses.
    pub auto_allocate: bool,
    /// Proxies with a push in flight at once (Istio's PILOT_PUSH_THROTTLE).
    pub push_throttle: usize,
    /// Drop a stream whose proxy has not read a response for this long
    /// (Istio's PILOT_XDS_SEND_TIMEOUT; None: never).
    pub send_timeout: Option<Duration>,
    /// The mesh CA and the TLS port (Istio's 15012), when enabled.
    pub ca: Option<CaOptions>,
    /// meshConfig `extensionProviders` (CUSTOM AuthorizationPolicy providers).
    pub extension_providers: Vec<api::mesh_config::MeshExtensionProvider>,
    /// meshConfig `accessLogFile`/`accessLogEncoding`/`accessLogFormat`
    /// (None: access logs off).
    pub access_log: Option<translate::access_log::AccessLogConfig>,
    /// meshConfig `pathNormalization`.
    pub path_normalization: api::mesh_config::PathNormalization,
}

/// The CA and xDS over TLS.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Istio's plug-in CA files (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`), or where a self-signed root is created on first start.
    /// Reloaded when the files change (a root rotation: docs/identity.md).
    pub dir: PathBuf,
    /// Public key (PEM) that verifies workloads' service-account tokens.
    pub token_key: PathBuf,
    /// xDS and the certificate service over TLS (Istio's 15012).
    pub secure_addr: SocketAddr,
    /// meshConfig `trustDomain`.
    pub trust_domain: String,
    /// meshConfig `trustDomainAliases`.
    pub trust_domain_aliases: Vec<String>,
    /// meshConfig `enableAutoMtls` (Istio's default: true).
    pub auto_mtls: bool,
    /// Istio's `DEFAULT_WORKLOAD_CERT_TTL` (24 h).
    pub workload_ttl: Duration,
}

/// The names the pilot's own serving certificate carries (istiod's).
pub const PILOT_DNS_NAMES: [&str; 3] = ["istiod.istio-system.svc", "istiod", "localhost"];

/// Why the pilot could not start.
#[derive(Debug, thiserror::Error)]
pub enum PilotError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("xDS server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("debug server: {0}")]
    Debug(std::io::Error),
    #[error("CA: {0}")]
    Ca(String),
}

/// A started pilot: where it listens.
pub struct Pilot {
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    /// Where DNS is answered, when asked for.
    pub dns_addr: Option<SocketAddr>,
    /// xDS and the CA over TLS, when the CA is on.
    pub secure_addr: Option<SocketAddr>,
    pub discovery: Arc<Discovery>,
    pub sync: xds::status::SyncStatus,
}

/// Bind, load config, and serve until the task is dropped. `ready` receives the
/// bound addresses once both ports listen.
pub async fn run(
    opts: PilotOptions,
    ready: Option<tokio::sync::oneshot::Sender<Pilot>>,
) -> Result<(), PilotError> {
    let xds_listener =
        TcpListener::bind(opts.xds_addr)
            .await
            .map_err(|source| PilotError::Bind {
                addr: opts.xds_addr,
                source,
            })?;
    let debug_listener =
        TcpListener::bind(opts.debug_addr)
            .await
            .map_err(|source| PilotError::Bind {
                addr: opts.debug_addr,
                source,
            })?;
    let xds_addr = xds_listener.local_addr().map_err(PilotError::Debug)?;
    let debug_addr = debug_listener.local_addr().map_err(PilotError::Debug)?;

    let paths: Vec<PathBuf> = std::iter::once(opts.config_dir.clone())
        .chain(opts.registry_dir.clone())
        .collect();
    let mut store = ConfigStore::new(paths.clone());
    // Watch before the first look, so no edit falls between the two.
    let mut watcher = config::Watcher::new(&paths);
    let mut fingerprint = config::fingerprint_all(&paths);
    let loaded = store.load();
    let report = Arc::new(Mutex::new(report_of(&loaded, 1)));
    let build = compile::BuildOptions {
        auto_allocate: opts.auto_allocate,
    };
    // Mesh TLS only with a CA: without one there are no identities.
    let mesh_tls = opts.ca.as_ref().map(|ca| mesh::MeshTls {
        trust_domain: ca.trust_domain.clone(),
        trust_domain_aliases: ca.trust_domain_aliases.clone(),
        auto_mtls: ca.auto_mtls,
    });
    let mut mesh = compile::build_with(&loaded.resources, &build);
    mesh.tls = mesh_tls.clone();
    mesh.extension_providers = opts.extension_providers.clone();
    mesh.access_log = opts.access_log.clone();
    mesh.path_normalization = opts.path_normalization;
    // RequestAuthentication `jwksUri` documents, fetched and inlined.
    let jwks_cache = Arc::new(jwks::JwksCache::default());
    jwks::fill(&jwks_cache, &mut mesh).await;
    if mesh_tls.is_none() && strict_anywhere(&mesh) {
        tracing::warn!(
            "a PeerAuthentication asks for STRICT mTLS but the pilot has no CA \
             (--ca-dir, --token-key): every hop stays plaintext"
        );
    }
    let dns = match opts.dns_addr {
        Some(addr) => Some(
            dns::serve(addr, names::table(&mesh))
                .await
                .map_err(|source| PilotError::Bind { addr, source })?,
        ),
        None => None,
    };
    let discovery = Arc::new(Discovery::new(mesh));
    let sync = xds::status::SyncStatus::default();
    tracing::info!(
        resources = loaded.resources.len(),
        errors = loaded.errors.len(),
        dir = %opts.config_dir.display(),
        "config loaded"
    );

    let ads = xds::server::AdsServer::with_push_concurrency(
        discovery.clone(),
        sync.clone(),
        opts.push_throttle,
    )
    .with_send_timeout(opts.send_timeout)
    .into_service();
    let secure = match &opts.ca {
        Some(ca) => Some(secure::serve(ca, ads.clone()).await?),
        None => None,
    };
    let secure_addr = secure.as_ref().map(|(addr, _)| *addr);
    let secure_task = async {
        match secure {
            Some((_, task)) => task.await,
            None => std::future::pending().await,
        }
    };
    let xds_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads)
            .serve_with_incoming(TcpListenerStream::new(xds_listener)),
    );
    let debug_state = DebugState {
        discovery: discovery.clone(),
        sync: sync.clone(),
        config: report.clone(),
    };
    let debug_task =
        tokio::spawn(async move { axum::serve(debug_listener, debug::router(debug_state)).await });
    tracing::info!(%xds_addr, %debug_addr, "pilot serving");
    if let Some(ready) = ready {
        let _ = ready.send(Pilot {
            xds_addr,
            debug_addr,
            dns_addr: dns.as_ref().map(dns::DnsServer::local_addr),
            secure_addr,
            discovery: discovery.clone(),
            sync: sync.clone(),
        });
    }

    // Mesh rebuilds (config reloads, JWKS refreshes) one at a time, so a
    // refresh never pushes a mesh older than the last reload.
    let rebuild = Arc::new(tokio::sync::Mutex::new(()));
    let jwks_task = {
        let (discovery, cache, rebuild) = (discovery.clone(), jwks_cache.clone(), rebuild.clone());
        async move {
            loop {
                tokio::time::sleep(jwks::REFRESH_INTERVAL).await;
                let _guard = rebuild.lock().await;
                let mut mesh = (*discovery.mesh()).clone();
                let old = mesh.jwks.clone();
                jwks::fill(&cache, &mut mesh).await;
                if old != mesh.jwks {
                    tracing::info!(changed = ?jwks::changed(&old, &mesh.jwks), "jwksUri documents changed");
                    discovery.update(mesh);
                }
            }
        }
    };
    let watch = async {
        let mut loads = 1;
        loop {
            config::changed(&paths, &mut fingerprint, opts.debounce, &mut watcher).await;
            let started = std::time::Instant::now();
            let loaded = store.load();
            let load_ms = started.elapsed().as_millis();
            loads += 1;
            // Push first, then publish the report: once /debug/configz shows a
            // resource, every proxy's snapshot already includes it.
            let _guard = rebuild.lock().await;
            let mut mesh = compile::build_with(&loaded.resources, &build);
            mesh.tls = mesh_tls.clone();
            mesh.extension_providers = opts.extension_providers.clone();
            mesh.access_log = opts.access_log.clone();
            mesh.path_normalization = opts.path_normalization;
            jwks::fill(&jwks_cache, &mut mesh).await;
            let compile_ms = started.elapsed().as_millis() - load_ms;
            if let Some(dns) = &dns {
                dns.set(names::table(&mesh));
            }
            let pushed = discovery.update(mesh);
            *report.lock().unwrap_or_else(|e| e.into_inner()) = report_of(&loaded, loads);
            tracing::info!(
                resources = loaded.resources.len(),
                errors = loaded.errors.len(),
                kept = loaded.kept.len(),
                load_ms,
                compile_ms,
                total_ms = started.elapsed().as_millis(),
                configs = pushed.configs,
                incremental = pushed.incremental,
                proxies = pushed.proxies,
                "config reloaded and pushed"
            );
        }
    };
    tokio::select! {
        r = xds_task => r.map_err(|e| PilotError::Debug(std::io::Error::other(e)))??,
        r = secure_task => r.map_err(|e| PilotError::Debug(std::io::Error::other(e)))??,
        r = debug_task => r.map_err(|e| PilotError::Debug(std::io::Error::other(e)))?.map_err(PilotError::Debug)?,
        () = watch => {}
        () = jwks_task => {}
    }
    Ok(())
}

/// Does any PeerAuthentication (or one of its ports) say STRICT?
fn strict_anywhere(mesh: &mesh::Mesh) -> bool {
    use api::security::MtlsMode;
    mesh.peer_authentications.iter().any(|p| {
        p.spec.mtls.as_ref().and_then(|m| m.mode) == Some(MtlsMode::Strict)
            || p.spec
                .port_level_mtls
                .iter()
                .flat_map(|ports| ports.values())
                .any(|m| m.mode == Some(MtlsMode::Strict))
    })
}

fn report_of(loaded: &config::Loaded, loads: u64) -> ConfigReport {
    ConfigReport {
        resources: loaded.resources.iter().map(|r| r.key()).collect(),
        errors: loaded.errors.iter().map(|e| e.to_string()).collect(),
        kept_last_good: loaded.kept.clone(),
        loads,
        analysis: api::analysis::analyze(&loaded.resources, &api::analysis::Options::default())
            .iter()
            .map(|m| m.to_string())
            .collect(),
    }
}
