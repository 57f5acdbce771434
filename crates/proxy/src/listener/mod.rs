//! Listeners: bind every listener with `bind_to_port`, follow LDS (bind new
//! ones, close removed ones; open connections drain on their own), and run
//! each accepted connection through listener filters (original_dst hand-off,
//! http_inspector) and filter chain selection into its network filter.

pub mod filter_chain;
pub mod http_inspector;
pub mod original_dst;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::listener::NetworkFilter;
use crate::config::store::ConfigStore;
use crate::config::transport::TransportSocket;
use crate::downstream::Downstream;
use crate::error::StartError;
use crate::filters::network::tcp_proxy;
use crate::http::connection_manager;
use filter_chain::ConnectionInfo;

struct Bound {
    configured: SocketAddr,
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// The bound listeners of one proxy, kept in step with the config store.
pub struct Listeners {
    store: Arc<ConfigStore>,
    bound: Mutex<HashMap<String, Bound>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners").finish_non_exhaustive()
    }
}

impl Listeners {
    pub fn new(store: Arc<ConfigStore>) -> Arc<Self> {
        Arc::new(Listeners {
            store,
            bound: Mutex::new(HashMap::new()),
        })
    }

    /// The address a listener is bound to (its real port when configured with 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        let bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        bound.get(name).map(|b| b.local)
    }

    /// Bind what is configured and not bound, close what is no longer
    /// configured. Errors name the first listener that failed to bind; the
    /// others are still reconciled.
    pub fn reconcile(self: &Arc<Self>) -> Result<(), StartError> {
        let snapshot = self.store.load_full_snapshot();
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        bound.retain(|name, b| {
            let keep = snapshot
                .listeners
                .get(name)
                .is_some_and(|l| l.bind_to_port && l.address == b.configured);
            if !keep {
                tracing::info!(listener = %name, "closing listener");
                b.task.abort();
            }
            keep
        });
        let mut first_error = None;
        for (name, l) in &snapshot.listeners {
            if !l.bind_to_port || bound.contains_key(name) {
                continue;
            }
            let socket = match self.store.take_prebound(name, l.address) {
                Some(socket) => TcpListener::from_std(socket),
                None => bind(l.address),
            };
            match socket {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(l.address);
                    tracing::info!(listener = %name, %local, "listening");
                    let task =
                        tokio::spawn(accept_loop(listener, name.clone(), self.store.clone()));
                    bound.insert(
                        name.clone(),
                        Bound {
                            configured: l.address,
                            local,
                            task,
                        },
                    );
                }
                Err(source) => {
                    tracing::error!(listener = %name, error = %source, "cannot bind");
                    first_error.get_or_insert(StartError::Bind {
                        what: format!("listener {name}"),
                        addr: l.address,
                        source,
                    });
                }
            }
        }
        drop(bound);
        self.store.forget_prebound(|name, addr| {
            snapshot
                .listeners
                .get(name)
                .is_some_and(|l| l.bind_to_port && l.address == addr)
        });
        self.store.listeners_reconciled();
        first_error.map_or(Ok(()), Err)
    }

    /// Follow LDS updates until the task is dropped. Subscribes at once (not
    /// when the task first runs), so an update applied before the task is
    /// polled is not missed.
    pub fn follow(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let mut changed = self.store.listeners_changed();
        async move {
            while changed.changed().await.is_ok() {
                let _ = self.reconcile();
            }
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        let bound = self.bound.get_mut().unwrap_or_else(|e| e.into_inner());
        for b in bound.values() {
            b.task.abort();
        }
    }
}

/// A listening socket with SO_REUSEADDR.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(crate::downstream::bind_std(addr)?)
}

async fn accept_loop(listener: TcpListener, name: String, store: Arc<ConfigStore>) {
    let name: Arc<str> = name.into();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle_connection(stream, peer, name.clone(), store.clone()));
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Listener filters, hand-off, filter chain selection, then the network filter.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    store: Arc<ConfigStore>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let snapshot = store.load_full_snapshot();
    let Some(mut listener) = snapshot.listeners.get(&*name).cloned() else {
        return;
    };
    let mut downstream = Downstream {
        peer,
        destination: local,
        original_dst: None,
    };
    if listener.original_dst
        && let Some(dst) = original_dst::original_dst(&stream)
    {
        downstream.destination = dst;
        downstream.original_dst = Some(dst);
        if listener.use_original_dst
            && let Some(target) = snapshot.listener_for(dst)
        {
            listener = target.clone();
        }
    }
    let stats = listener.stats(&store.stats).clone();
    let app_protocol = if listener.http_inspector {
        match http_inspector::inspect(&stream, listener.listener_filters_timeout).await {
            Ok(p) => p,
            Err(_) if listener.continue_on_listener_filters_timeout => None,
            Err(_) => {
                stats.downstream_pre_cx_timeout.inc();
                return;
            }
        }
    } else {
        None
    };
    let info = ConnectionInfo {
        destination: downstream.destination,
        transport_protocol: "raw_buffer",
        application_protocol: app_protocol,
    };
    let Some(chain) = filter_chain::select(&listener, &info) else {
        tracing::debug!(listener = %listener.name, dst = %downstream.destination, "no matching filter chain; closing");
        stats.no_filter_chain_match.inc();
        return;
    };
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    // The chain's transport socket (raw_buffer: the bytes as they come).
    let stream = match chain.transport {
        TransportSocket::RawBuffer => stream,
    };
    let filter = chain.filter.clone();
    let drain = chain.drain.subscribe();
    drop(snapshot);
    match filter {
        NetworkFilter::HttpConnectionManager(hcm) => {
            connection_manager::serve(stream, downstream, hcm, store, drain).await
        }
        NetworkFilter::TcpProxy(tcp) => tcp_proxy::proxy(stream, downstream, tcp, store).await,
    }
    stats.downstream_cx_active.dec();
}
