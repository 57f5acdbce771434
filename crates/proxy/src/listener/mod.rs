//! Listeners: bind every listener with `bind_to_port`, follow LDS (bind new
//! ones, close removed ones; open connections drain on their own), and run
//! each accepted connection through listener filters (original_dst hand-off,
//! http_inspector) and filter chain selection into its network filter.

pub mod filter_chain;
pub mod http_inspector;
pub mod original_dst;
pub mod peek;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::listener::NetworkFilter;
use crate::config::store::ConfigStore;
use crate::config::tls::TlsSocket;
use crate::config::transport::TransportSocket;
use crate::downstream::{Downstream, DownstreamStream};
use crate::error::StartError;
use crate::filters::network::tcp_proxy;
use crate::http::connection_manager;
use crate::stats::ListenerStats;
use crate::tls::inspector::ClientHello;
use crate::tls::{self, PeerCert, PeerTls, Secrets};
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
        tls: None,
        direction: Default::default(),
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
    downstream.direction = listener.direction;
    let stats = listener.stats(&store.stats).clone();
    let port = downstream.destination.port();
    let timeout = listener.listener_filters_timeout;
    let hello = match &listener.tls_inspector {
        Some(disabled) if !disabled.skips(port) => {
            match tls::inspector::inspect(&stream, timeout).await {
                Ok(h) => h,
                Err(_) if listener.continue_on_listener_filters_timeout => None,
                Err(_) => {
                    stats.downstream_pre_cx_timeout.inc();
                    return;
                }
            }
        }
        _ => None,
    };
    let app_protocol = match &listener.http_inspector {
        Some(disabled) if hello.is_none() && !disabled.skips(port) => {
            match http_inspector::inspect(&stream, timeout).await {
                Ok(p) => p,
                Err(_) if listener.continue_on_listener_filters_timeout => None,
                Err(_) => {
                    stats.downstream_pre_cx_timeout.inc();
                    return;
                }
            }
        }
        _ => None,
    };
    let offered: Vec<&str> = match &hello {
        Some(h) => h.alpn.iter().map(String::as_str).collect(),
        None => app_protocol.into_iter().collect(),
    };
    let info = ConnectionInfo {
        destination: downstream.destination,
        transport_protocol: if hello.is_some() { "tls" } else { "raw_buffer" },
        server_name: hello.as_ref().and_then(|h| h.sni.as_deref()),
        application_protocols: &offered,
    };
    let Some(chain) = filter_chain::select(&listener, &info) else {
        tracing::debug!(listener = %listener.name, dst = %downstream.destination, "no matching filter chain; closing");
        stats.no_filter_chain_match.inc();
        return;
    };
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let _active = ActiveGauge(&stats.downstream_cx_active);
    // The chain's transport socket: the bytes as they come, or TLS ended here.
    let stream = match &chain.transport {
        TransportSocket::RawBuffer => DownstreamStream::Tcp(stream),
        TransportSocket::Tls(socket) => {
            let hello = match hello {
                Some(h) => h,
                // No tls_inspector: read the ClientHello for its ALPN now.
                None => match tls::inspector::inspect(&stream, timeout).await {
                    Ok(Some(h)) => h,
                    _ => {
                        stats.ssl_connection_error.inc();
                        return;
                    }
                },
            };
            let handshake = accept_tls(stream, socket, hello, &store.secrets, &stats);
            let done = match chain.transport_connect_timeout {
                Some(t) => tokio::time::timeout(t, handshake)
                    .await
                    .unwrap_or_else(|_| {
                        stats.ssl_connection_error.inc();
                        None
                    }),
                None => handshake.await,
            };
            match done {
                Some((s, peer)) => {
                    downstream.tls = Some(peer);
                    DownstreamStream::Tls(s)
                }
                None => return,
            }
        }
    };
    let filter = chain.filter.clone();
    let drain = chain.drain.subscribe();
    let auth = chain.network_auth.clone();
    drop(snapshot);
    // Network RBAC and ext_authz filters before the terminal one: a denied
    // connection closes.
    if !auth.is_empty() && !crate::filters::network::rbac::admit(&auth, &downstream, &store).await {
        return;
    }
    match filter {
        NetworkFilter::HttpConnectionManager(hcm) => {
            connection_manager::serve(stream, downstream, hcm, store, drain).await
        }
        NetworkFilter::TcpProxy(tcp) => tcp_proxy::proxy(stream, downstream, tcp, store).await,
    }
}

/// Decrements a gauge when the connection ends, however it ends.
struct ActiveGauge<'a>(&'a crate::stats::Counter);

impl Drop for ActiveGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The server side of a filter chain's TLS: the handshake with the config
/// for what the client offered, and what it established.
async fn accept_tls(
    stream: TcpStream,
    socket: &TlsSocket,
    hello: ClientHello,
    secrets: &Secrets,
    stats: &ListenerStats,
) -> Option<(
    Box<tokio_rustls::server::TlsStream<TcpStream>>,
    Arc<PeerTls>,
)> {
    let side = match socket.server_config(secrets, &hello.alpn) {
        Ok(side) => side,
        Err(e) => {
            tracing::debug!(error = %e, "TLS not ready; closing");
            stats.ssl_connection_error.inc();
            return None;
        }
    };
    let tls = match tokio_rustls::TlsAcceptor::from(side.config)
        .accept(stream)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            stats.ssl_connection_error.inc();
            return None;
        }
    };
    stats.ssl_handshake.inc();
    let conn = tls.get_ref().1;
    if let Some(group) = conn.negotiated_key_exchange_group() {
        let name = match group.name() {
            rustls::NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
            rustls::NamedGroup::X25519 => "X25519",
            rustls::NamedGroup::secp256r1 => "P-256",
            rustls::NamedGroup::secp384r1 => "P-384",
            _ => "",
        };
        if let Some((_, c)) = stats.ssl_curves.iter().find(|(n, _)| *n == name) {
            c.inc();
        }
    }
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(PeerCert::from_der);
    if peer.is_none() {
        stats.ssl_no_certificate.inc();
    }
    let info = PeerTls {
        local_uri: side.local_uri,
        peer,
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        sni: hello.sni,
    };
    Some((Box::new(tls), Arc::new(info)))
}
