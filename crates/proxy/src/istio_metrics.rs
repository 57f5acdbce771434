//! Istio's standard HTTP metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`) derived natively, without Istio's Envoy
//! extensions, from standard data: the bootstrap node metadata (this
//! workload), the listener's `traffic_direction` (INBOUND reports as
//! `destination`, OUTBOUND as `source`), the cluster name
//! (`outbound|PORT|SUBSET|FQDN`) and the verified peer SPIFFE id.
//!
//! Hot path: a stream's record is reduced to a small `Copy` key (direction,
//! code, flags, security, hashes of the cluster name and peer principal);
//! its series is found with one lock-free read of a swapped map. Labels are
//! formatted only when a new label set is seen (bounded by
//! [`MAX_SERIES`]; beyond it the request is counted in
//! `istio_metrics_dropped_series_total`).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3 as core;

use crate::downstream::{Downstream, TrafficDirection};
use crate::stats::{Counter, Histogram, Labels, Stats};
use crate::stream_info::{StreamInfo, StreamObserver};

/// Distinct label sets kept per proxy; more are dropped and counted.
pub const MAX_SERIES: usize = 4096;

const UNKNOWN: &str = "unknown";

/// This workload, as Istio's metrics name it, from the node metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Workload {
    /// From Istio's node metadata keys (`WORKLOAD_NAME`, `NAMESPACE`,
    /// `LABELS`, `CLUSTER_ID`, `NAME`), with Istio's fallbacks: `unknown`,
    /// and canonical service/revision from `service.istio.io/canonical-*`,
    /// then `app.kubernetes.io/name|version`, then `app`/`version`, then the
    /// workload name / `latest`.
    pub fn from_node(node: &core::Node) -> Option<Workload> {
        let meta = node.metadata.as_ref()?;
        let text = |k: &str| match meta.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s))
                if !s.is_empty() =>
            {
                Some(s.clone())
            }
            _ => None,
        };
        let namespace = text("NAMESPACE")?;
        let labels: HashMap<String, String> =
            match meta.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
                Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => s
                    .fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                            Some((k.clone(), s.clone()))
                        }
                        _ => None,
                    })
                    .collect(),
                _ => HashMap::new(),
            };
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let workload = text("WORKLOAD_NAME")
            .or_else(|| text("NAME"))
            .unwrap_or_else(|| UNKNOWN.into());
        let canonical_service = label("service.istio.io/canonical-name")
            .or_else(|| label("app.kubernetes.io/name"))
            .or_else(|| label("app"))
            .unwrap_or_else(|| workload.clone());
        let canonical_revision = label("service.istio.io/canonical-revision")
            .or_else(|| label("app.kubernetes.io/version"))
            .or_else(|| label("version"))
            .unwrap_or_else(|| "latest".into());
        Some(Workload {
            app: label("app").unwrap_or_else(|| UNKNOWN.into()),
            version: label("version").unwrap_or_else(|| UNKNOWN.into()),
            canonical_service,
            canonical_revision,
            cluster: text("CLUSTER_ID").unwrap_or_else(|| UNKNOWN.into()),
            workload,
            namespace,
        })
    }

    /// The peer nobody told us about: only what its identity says.
    fn unknown(namespace: Option<&str>) -> Workload {
        Workload {
            workload: UNKNOWN.into(),
            namespace: namespace.unwrap_or(UNKNOWN).into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
        }
    }
}

/// The compact per-request key of a label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// A TCP connection's series (no response code, `request_protocol` tcp).
    tcp: bool,
    outbound: bool,
    code: u16,
    flags: u32,
    /// 0 none, 1 mutual_tls.
    mtls: bool,
    cluster: u64,
    peer: u64,
}

/// One label set's series.
#[derive(Debug)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// One TCP label set's series (`istio_tcp_*`).
#[derive(Debug)]
pub struct TcpSeries {
    pub opened: Counter,
    pub closed: Counter,
    /// To the downstream peer.
    pub sent: Counter,
    /// From the downstream peer.
    pub received: Counter,
}

/// The observer that keeps Istio's HTTP metrics of one proxy, and the
/// `istio_tcp_*` series tcp_proxy asks for per connection.
pub struct IstioMetrics {
    local: Workload,
    stats: Arc<Stats>,
    series: ArcSwap<HashMap<Key, Arc<Series>>>,
    tcp: ArcSwap<HashMap<Key, Arc<TcpSeries>>>,
    dropped: Counter,
}

impl std::fmt::Debug for IstioMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioMetrics")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

fn hash(s: Option<&str>) -> u64 {
    s.map_or(0, |s| xxhash_rust::xxh64::xxh64(s.as_bytes(), 0x15710))
}

/// (flat name, Prometheus name, labels) of one metric of a label set.
fn stat_names(labels: &Labels) -> impl Fn(&str) -> (String, String, Labels) + '_ {
    let mut flat = String::new();
    for (k, v) in labels {
        flat.push('.');
        flat.push_str(k);
        flat.push('.');
        flat.push_str(v);
    }
    move |name: &str| (format!("{name}{flat}"), name.to_string(), labels.clone())
}

/// The verified peer's SPIFFE id, when the connection was mTLS.
fn peer_principal(conn: &Downstream) -> Option<&str> {
    let tls = conn.tls.as_ref()?;
    let cert = tls.peer.as_ref()?;
    cert.names
        .uris
        .iter()
        .find(|u| u.starts_with("spiffe://"))
        .map(String::as_str)
}

/// `spiffe://TD/ns/NS/sa/SA` → NS.
fn spiffe_namespace(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// Istio's outbound cluster name `outbound|PORT|SUBSET|FQDN` → FQDN.
fn cluster_service(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound" | "inbound"), Some(_), Some(_), Some(fqdn)) if !fqdn.is_empty() => {
            Some(fqdn)
        }
        _ => None,
    }
}

impl IstioMetrics {
    pub fn new(local: Workload, stats: Arc<Stats>) -> IstioMetrics {
        let dropped = stats.tagged_counter(
            "istio_metrics_dropped_series_total".into(),
            "istio_metrics_dropped_series_total".into(),
            Vec::new(),
        );
        IstioMetrics {
            local,
            stats,
            series: ArcSwap::default(),
            tcp: ArcSwap::default(),
            dropped,
        }
    }

    fn key(info: &StreamInfo) -> Option<Key> {
        let mut key = Self::conn_key(&info.downstream, info.cluster.as_deref())?;
        key.code = info.response_code;
        key.flags = info.flags.bits();
        Some(key)
    }

    fn conn_key(conn: &Downstream, cluster: Option<&str>) -> Option<Key> {
        let outbound = match conn.direction {
            TrafficDirection::Inbound => false,
            TrafficDirection::Outbound => true,
            TrafficDirection::Unspecified => return None,
        };
        let peer = peer_principal(conn);
        Some(Key {
            tcp: false,
            outbound,
            code: 0,
            flags: 0,
            mtls: !outbound && peer.is_some(),
            cluster: hash(cluster),
            peer: hash(peer),
        })
    }

    /// Istio's labels in the order Istio emits them: 25 for HTTP, 23 for
    /// TCP (no `response_code`, `grpc_response_status`).
    fn labels(&self, key: &Key, conn: &Downstream, cluster: Option<&str>, flags: String) -> Labels {
        let peer = peer_principal(conn);
        let service = cluster.and_then(cluster_service);
        let local = &self.local;
        let (reporter, src, dst, src_principal, dst_principal, security);
        let remote;
        if key.outbound {
            remote = Workload::unknown(None);
            (reporter, src, dst) = ("source", local, &remote);
            (src_principal, dst_principal) = (UNKNOWN.to_string(), UNKNOWN.to_string());
            security = UNKNOWN;
        } else {
            remote = Workload::unknown(peer.and_then(spiffe_namespace));
            (reporter, src, dst) = ("destination", &remote, local);
            src_principal = peer.unwrap_or(UNKNOWN).to_string();
            dst_principal = conn
                .tls
                .as_ref()
                .and_then(|t| t.local_uri.as_deref())
                .filter(|_| peer.is_some())
                .unwrap_or(UNKNOWN)
                .to_string();
            security = if key.mtls { "mutual_tls" } else { "none" };
        }
        let (svc, svc_name, svc_ns) = match service {
            Some(fqdn) => {
                let mut parts = fqdn.split('.');
                let name = parts.next().unwrap_or(UNKNOWN);
                let ns = parts.next().unwrap_or(UNKNOWN);
                (fqdn.to_string(), name.to_string(), ns.to_string())
            }
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        };
        let mut labels = vec![
            ("reporter", reporter.into()),
            ("source_workload", src.workload.clone()),
            ("source_canonical_service", src.canonical_service.clone()),
            ("source_canonical_revision", src.canonical_revision.clone()),
            ("source_workload_namespace", src.namespace.clone()),
            ("source_principal", src_principal),
            ("source_app", src.app.clone()),
            ("source_version", src.version.clone()),
            ("source_cluster", src.cluster.clone()),
            ("destination_workload", dst.workload.clone()),
            ("destination_workload_namespace", dst.namespace.clone()),
            ("destination_principal", dst_principal),
            ("destination_app", dst.app.clone()),
            ("destination_version", dst.version.clone()),
            ("destination_service", svc),
            (
                "destination_canonical_service",
                dst.canonical_service.clone(),
            ),
            (
                "destination_canonical_revision",
                dst.canonical_revision.clone(),
            ),
            ("destination_service_name", svc_name),
            ("destination_service_namespace", svc_ns),
            ("destination_cluster", dst.cluster.clone()),
        ];
        if key.tcp {
            labels.push(("request_protocol", "tcp".into()));
        } else {
            labels.push(("request_protocol", "http".into()));
            labels.push(("response_code", key.code.to_string()));
            labels.push(("grpc_response_status", String::new()));
        }
        labels.push(("response_flags", flags));
        labels.push(("connection_security_policy", security.into()));
        labels
    }

    fn make(&self, key: &Key, info: &StreamInfo) -> Arc<Series> {
        let labels = self.labels(
            key,
            &info.downstream,
            info.cluster.as_deref(),
            info.flags.to_string(),
        );
        let stat = stat_names(&labels);
        let (f, p, l) = stat("istio_requests_total");
        let requests = self.stats.tagged_counter(f, p, l);
        let (f, p, l) = stat("istio_request_duration_milliseconds");
        let duration = self.stats.histogram(f, p, l);
        let (f, p, l) = stat("istio_request_bytes");
        let request_bytes = self.stats.histogram(f, p, l);
        let (f, p, l) = stat("istio_response_bytes");
        let response_bytes = self.stats.histogram(f, p, l);
        Arc::new(Series {
            requests,
            duration,
            request_bytes,
            response_bytes,
        })
    }

    /// The `istio_tcp_*` series of one tcp_proxy connection to `cluster`
    /// (None: the listener has no direction, or the series cap is reached).
    pub fn tcp(&self, conn: &Downstream, cluster: &str) -> Option<Arc<TcpSeries>> {
        let mut key = Self::conn_key(conn, Some(cluster))?;
        key.tcp = true;
        if let Some(s) = self.tcp.load().get(&key) {
            return Some(s.clone());
        }
        if self.tcp.load().len() >= MAX_SERIES {
            self.dropped.inc();
            return None;
        }
        let labels = self.labels(&key, conn, Some(cluster), "-".into());
        let stat = stat_names(&labels);
        let counter = |name: &str| {
            let (f, p, l) = stat(name);
            self.stats.tagged_counter(f, p, l)
        };
        let made = Arc::new(TcpSeries {
            opened: counter("istio_tcp_connections_opened_total"),
            closed: counter("istio_tcp_connections_closed_total"),
            sent: counter("istio_tcp_sent_bytes_total"),
            received: counter("istio_tcp_received_bytes_total"),
        });
        self.tcp.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(key).or_insert_with(|| made.clone());
            map
        });
        Some(made)
    }

    fn series(&self, key: Key, info: &StreamInfo) -> Option<Arc<Series>> {
        if let Some(s) = self.series.load().get(&key) {
            return Some(s.clone());
        }
        if self.series.load().len() >= MAX_SERIES {
            return None;
        }
        let made = self.make(&key, info);
        self.series.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(key).or_insert_with(|| made.clone());
            map
        });
        Some(made)
    }
}

impl StreamObserver for IstioMetrics {
    fn on_stream_end(&self, info: &StreamInfo) {
        let Some(key) = Self::key(info) else {
            return;
        };
        let Some(series) = self.series(key, info) else {
            self.dropped.inc();
            return;
        };
        series.requests.inc();
        series.duration.record(info.duration());
        series.request_bytes.record_value(info.bytes_received);
        series.response_bytes.record_value(info.bytes_sent);
    }
}

#[cfg(test)]
mod tests;
