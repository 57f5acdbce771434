//! Halyard's sidecar proxy: a runtime for the subset of Envoy's xDS API that
//! the pilot emits (docs/xds-subset.md). A stock Envoy fed the same config
//! behaves the same.
//!
//! Lifecycle of a connection:
//! ```text
//! accept (listener/) -> original_dst hand-off -> http_inspector peek
//!   -> filter chain selection -> tcp_proxy (filters/network/)
//!                             -> http_connection_manager (http/) -> router
//!                                  -> cluster + lb (upstream/) -> pooled connection
//! ```
//! Config: bootstrap static resources + xDS resources -> `config::store`
//! (last good per resource) -> immutable `Snapshot` in an `ArcSwap`.

pub mod admin;
pub mod app_health;
pub mod bootstrap;
pub mod config;
pub mod descriptors;
pub mod dns;
pub mod dns_proxy;
pub mod downstream;
pub mod error;
pub mod filters;
pub mod http;
mod io_enum;
pub mod istio_metrics;
pub mod listener;
pub mod request_body;
pub mod stats;
pub mod stream_info;
pub mod tls;
pub mod upstream;
pub mod xds_sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use tokio::task::JoinHandle;

pub use config::store::ConfigStore;
pub use error::{ConfigError, StartError};

use bootstrap::BootstrapConfig;
use listener::Listeners;

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub bootstrap: PathBuf,
    /// Port of `/healthz/ready` (Istio's 15021; 0 = ephemeral; None = off).
    pub ready_port: Option<u16>,
    /// Worker threads the caller should give the runtime (None = cores).
    pub concurrency: Option<usize>,
}

impl ProxyOptions {
    /// Worker threads for the runtime that runs the proxy: `concurrency`, else
    /// one per core. (`run` is async, so the caller builds the runtime.)
    pub fn worker_threads(&self) -> usize {
        self.concurrency
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            bootstrap: PathBuf::new(),
            ready_port: Some(15021),
            concurrency: None,
        }
    }
}

/// A running proxy. Dropping it stops listeners, admin and the xDS client
/// (connections already open finish on their own).
#[derive(Debug)]
pub struct Proxy {
    store: Arc<ConfigStore>,
    listeners: Arc<Listeners>,
    admin_addr: SocketAddr,
    ready_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Check the bootstrap, bind its listeners and admin, connect to the
    /// control plane if it names one, and return once listening.
    pub async fn start(bootstrap: Bootstrap, opts: &ProxyOptions) -> Result<Proxy, StartError> {
        let cfg = BootstrapConfig::try_from(&bootstrap)?;
        let stats = Arc::new(stats::Stats::default());
        let store = ConfigStore::new(cfg.listeners, cfg.clusters, cfg.ads.is_some(), stats);
        // Istio's standard metrics, for a node that says which workload it is.
        if let Some(local) = istio_metrics::Workload::from_node(&cfg.node) {
            let metrics = Arc::new(istio_metrics::IstioMetrics::new(local, store.stats.clone()));
            let _ = store.istio_metrics.set(metrics.clone());
            store.add_stream_observer(metrics);
        }
        let mut tasks = Vec::new();

        dns::resolve_once(&store).await;
        tasks.push(tokio::spawn(dns::refresh(store.clone())));

        let listeners = Listeners::new(store.clone());
        listeners.reconcile()?;
        store.bind_on_apply();
        tasks.push(tokio::spawn(listeners.clone().follow()));

        let admin_listener = admin::bind(cfg.admin)
            .await
            .map_err(|source| StartError::Bind {
                what: "admin".into(),
                addr: cfg.admin,
                source,
            })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin);
        tracing::info!(%admin_addr, "admin listening");
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            store.clone(),
            Arc::new(bootstrap),
        )));

        let ready_addr = match opts.ready_port {
            Some(port) => {
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                let l = admin::bind(addr).await.map_err(|source| StartError::Bind {
                    what: "readiness probe".into(),
                    addr,
                    source,
                })?;
                let local = l.local_addr().unwrap_or(addr);
                tasks.push(tokio::spawn(admin::serve_ready(l, store.clone())));
                Some(local)
            }
            None => None,
        };

        if let Some(health) = app_health::AppHealth::from_env().map_err(StartError::AppHealth)? {
            let addr = SocketAddr::from(([0, 0, 0, 0], probe::APP_HEALTH_PORT));
            let l = admin::bind(addr).await.map_err(|source| StartError::Bind {
                what: "app health".into(),
                addr,
                source,
            })?;
            tasks.push(tokio::spawn(app_health::serve(l, Arc::new(health))));
        }

        let dns_proxy = dns_proxy::enabled() && cfg.ads.is_some();
        if dns_proxy {
            let addr = dns_proxy::DNS_PROXY_ADDR;
            let server = dns_proxy::start(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "DNS proxy".into(),
                    addr,
                    source,
                })?;
            store.set_dns_proxy(server);
        }

        if let Some(ads) = &cfg.ads {
            tracing::info!(endpoint = %ads.endpoint, delta = ads.delta, "connecting to the control plane");
            tasks.push(xds_sink::connect(
                ads,
                cfg.node.clone(),
                store.clone(),
                dns_proxy,
            ));
            if let Some(timeout) = ads.initial_fetch_timeout {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    while !store.is_ready() {
                        tokio::time::sleep(timeout).await;
                        store.initial_fetch_timed_out();
                    }
                }));
            }
        }

        Ok(Proxy {
            store,
            listeners,
            admin_addr,
            ready_addr,
            tasks,
        })
    }

    /// Where a listener is bound (the real port when configured with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.local_addr(name)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn ready_addr(&self) -> Option<SocketAddr> {
        self.ready_addr
    }

    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Resolves once the first LDS/CDS (and the EDS/RDS they need) are applied.
    pub async fn wait_ready(&self) {
        let mut rx = self.store.ready();
        let _ = rx.wait_for(|r| *r).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Run the proxy from `opts.bootstrap` until ctrl-c or until the task is cancelled.
pub async fn run(opts: ProxyOptions) -> anyhow::Result<()> {
    let bootstrap = bootstrap::load(&opts.bootstrap)?;
    let proxy = Proxy::start(bootstrap, &opts).await?;
    tracing::info!(admin = %proxy.admin_addr(), "proxy started");
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    drop(proxy);
    Ok(())
}
