//! One upstream host (endpoint address) of a cluster: its per-host counters
//! (shown by `/clusters`) and its idle connection pools. A host outlives config
//! updates that keep its address, so pooled connections survive EDS pushes.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crate::config::transport::TransportSocket;
use crate::stats::Counter;
use crate::upstream::address::UpstreamAddr;
use crate::upstream::circuit::Permit;
use crate::upstream::outlier::HostOutlier;
use crate::upstream::pool::HostPool;

#[derive(Debug)]
pub struct Host {
    pub addr: UpstreamAddr,
    /// The socket its connections run on (chosen per endpoint by the
    /// cluster's transport_socket_matches); pools are per host, so per
    /// (address, transport).
    pub transport: TransportSocket,
    pub rq_total: Counter,
    pub rq_active: Counter,
    pub rq_error: Counter,
    pub cx_active: Counter,
    pub cx_total: Counter,
    pub cx_connect_fail: Counter,
    /// Outlier-detection counters and the ejected flag.
    pub outlier: HostOutlier,
    /// When it joined a running cluster (slow start); None for the
    /// cluster's first endpoints and hosts made outside a cluster update.
    pub added: Option<tokio::time::Instant>,
    /// Its priority level in the cluster's latest assignment (what
    /// `previous_priorities` retries exclude).
    pub priority: AtomicU32,
    pub(crate) pool: HostPool,
}

impl Host {
    pub fn new(addr: impl Into<UpstreamAddr>) -> Arc<Self> {
        Host::with_transport(addr, TransportSocket::RawBuffer)
    }

    pub fn with_transport(addr: impl Into<UpstreamAddr>, transport: TransportSocket) -> Arc<Self> {
        Arc::new(Host {
            addr: addr.into(),
            transport,
            rq_total: Counter::default(),
            rq_active: Counter::default(),
            rq_error: Counter::default(),
            cx_active: Counter::default(),
            cx_total: Counter::default(),
            cx_connect_fail: Counter::default(),
            outlier: HostOutlier::default(),
            added: None,
            priority: AtomicU32::new(0),
            pool: HostPool::default(),
        })
    }

    /// A host joining a running cluster now (slow start counts from here).
    pub fn added_now(addr: impl Into<UpstreamAddr>, transport: TransportSocket) -> Arc<Self> {
        let mut h = Arc::into_inner(Host::with_transport(addr, transport)).expect("fresh");
        h.added = Some(tokio::time::Instant::now());
        Arc::new(h)
    }
}

/// Counts a request as active on a host (and its cluster) until dropped:
/// LEAST_REQUEST reads these counts.
/// With circuit breakers, it also holds the request's `max_requests` slot.
#[derive(Debug)]
pub struct ActiveRequest {
    host: Arc<Host>,
    cluster_active: Counter,
    permit: Option<Permit>,
}

impl ActiveRequest {
    pub fn new(host: Arc<Host>, cluster_active: Counter) -> Self {
        host.rq_total.inc();
        host.rq_active.inc();
        cluster_active.inc();
        ActiveRequest {
            host,
            cluster_active,
            permit: None,
        }
    }

    /// Hold a circuit-breaker slot for as long as the request is active.
    pub fn with_permit(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.host.rq_active.dec();
        self.cluster_active.dec();
    }
}
