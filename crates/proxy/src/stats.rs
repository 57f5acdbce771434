//! Envoy-named counters and gauges (`cluster.X.upstream_rq_total`, ...): atomics
//! handed out once by name, incremented lock-free on the data path, rendered by
//! the admin `/stats` page in Envoy's `name: value` text format.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// One counter or gauge. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicI64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The registry of every stat of one proxy, by Envoy name. The lock is taken
/// only when a stat is first created (config time) and when `/stats` renders.
#[derive(Debug, Default)]
pub struct Stats {
    by_name: Mutex<BTreeMap<String, Counter>>,
}

impl Stats {
    /// The stat called `name`, created at zero if new.
    pub fn counter(&self, name: impl Into<String>) -> Counter {
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.into()).or_default().clone()
    }

    /// Current value of a stat, if it exists.
    pub fn value(&self, name: &str) -> Option<i64> {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).map(Counter::get)
    }

    /// Envoy's `/stats` text: one `name: value` line per stat, sorted.
    pub fn render(&self) -> String {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(map.len() * 48);
        for (name, c) in map.iter() {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(&c.get().to_string());
            out.push('\n');
        }
        out
    }
}

/// Per-listener stats (`listener.<address>.*`, address as `0.0.0.0_15001`).
#[derive(Debug, Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Counter,
    pub no_filter_chain_match: Counter,
    pub downstream_pre_cx_timeout: Counter,
}

impl ListenerStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let c = |n: &str| stats.counter(format!("listener.{prefix}.{n}"));
        ListenerStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: c("downstream_cx_active"),
            no_filter_chain_match: c("no_filter_chain_match"),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
        }
    }
}

/// Per-HCM stats (`http.<stat_prefix>.*`).
#[derive(Debug, Clone)]
pub struct HttpStats {
    pub downstream_rq_total: Counter,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Counter,
    pub downstream_rq_2xx: Counter,
    pub downstream_rq_3xx: Counter,
    pub downstream_rq_4xx: Counter,
    pub downstream_rq_5xx: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    /// `http.<prefix>.fault.*` (Envoy's fault filter stats).
    pub fault_delays_injected: Counter,
    pub fault_aborts_injected: Counter,
    pub fault_active_faults: Counter,
}

impl HttpStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let c = |n: &str| stats.counter(format!("http.{prefix}.{n}"));
        HttpStats {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: c("downstream_cx_active"),
            downstream_rq_2xx: c("downstream_rq_2xx"),
            downstream_rq_3xx: c("downstream_rq_3xx"),
            downstream_rq_4xx: c("downstream_rq_4xx"),
            downstream_rq_5xx: c("downstream_rq_5xx"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            fault_delays_injected: c("fault.delays_injected"),
            fault_aborts_injected: c("fault.aborts_injected"),
            fault_active_faults: c("fault.active_faults"),
        }
    }

    pub fn record_status(&self, status: u16) {
        match status / 100 {
            2 => self.downstream_rq_2xx.inc(),
            3 => self.downstream_rq_3xx.inc(),
            4 => self.downstream_rq_4xx.inc(),
            5 => self.downstream_rq_5xx.inc(),
            _ => {}
        }
    }
}

/// Per-status-code counters (`cluster.<name>.upstream_rq_200`), created on
/// first use of a code; counting an existing code is a lock-free map read.
#[derive(Debug)]
pub struct CodeCounters {
    stats: Arc<Stats>,
    prefix: String,
    by_code: ArcSwap<HashMap<u16, Counter>>,
}

impl CodeCounters {
    pub fn new(stats: &Arc<Stats>, prefix: String) -> Self {
        CodeCounters {
            stats: stats.clone(),
            prefix,
            by_code: ArcSwap::default(),
        }
    }

    pub fn inc(&self, code: u16) {
        if let Some(c) = self.by_code.load().get(&code) {
            c.inc();
            return;
        }
        let counter = self.stats.counter(format!("{}{code}", self.prefix));
        counter.inc();
        self.by_code.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(code, counter.clone());
            map
        });
    }
}

/// Per-cluster stats (`cluster.<name>.*`).
#[derive(Debug, Clone)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_by_code: Arc<CodeCounters>,
    pub upstream_rq_active: Counter,
    pub upstream_rq_2xx: Counter,
    pub upstream_rq_3xx: Counter,
    pub upstream_rq_4xx: Counter,
    pub upstream_rq_5xx: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub membership_total: Counter,
    pub membership_healthy: Counter,
}

impl ClusterStats {
    pub fn new(stats: &Arc<Stats>, cluster: &str) -> Self {
        let c = |n: &str| stats.counter(format!("cluster.{cluster}.{n}"));
        ClusterStats {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_by_code: Arc::new(CodeCounters::new(
                stats,
                format!("cluster.{cluster}.upstream_rq_"),
            )),
            upstream_rq_active: c("upstream_rq_active"),
            upstream_rq_2xx: c("upstream_rq_2xx"),
            upstream_rq_3xx: c("upstream_rq_3xx"),
            upstream_rq_4xx: c("upstream_rq_4xx"),
            upstream_rq_5xx: c("upstream_rq_5xx"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: c("upstream_cx_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            membership_total: c("membership_total"),
            membership_healthy: c("membership_healthy"),
        }
    }

    /// A response (or local reply on behalf of the upstream) with this status.
    pub fn record_status(&self, status: u16) {
        self.upstream_rq_completed.inc();
        self.upstream_rq_by_code.inc(status);
        match status / 100 {
            2 => self.upstream_rq_2xx.inc(),
            3 => self.upstream_rq_3xx.inc(),
            4 => self.upstream_rq_4xx.inc(),
            5 => self.upstream_rq_5xx.inc(),
            _ => {}
        }
    }
}

/// Stats of one xDS subscription (`cluster_manager.cds.*`, `listener_manager.lds.*`).
#[derive(Debug, Clone)]
pub struct XdsStats {
    pub update_success: Counter,
    pub update_rejected: Counter,
    pub update_attempt: Counter,
}

impl XdsStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        XdsStats {
            update_success: stats.counter(format!("{prefix}.update_success")),
            update_rejected: stats.counter(format!("{prefix}.update_rejected")),
            update_attempt: stats.counter(format!("{prefix}.update_attempt")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_share_by_name_and_render_sorted() {
        let s = Stats::default();
        s.counter("b.x").inc();
        let a = s.counter("a.y");
        a.inc();
        a.inc();
        s.counter("b.x").inc();
        assert_eq!(s.render(), "a.y: 2\nb.x: 2\n");
        assert_eq!(s.value("b.x"), Some(2));
        let s = Arc::new(s);
        let cluster = ClusterStats::new(&s, "c");
        cluster.record_status(200);
        cluster.record_status(200);
        cluster.record_status(503);
        assert_eq!(s.value("cluster.c.upstream_rq_200"), Some(2));
        assert_eq!(s.value("cluster.c.upstream_rq_503"), Some(1));
        assert_eq!(s.value("cluster.c.upstream_rq_5xx"), Some(1));
        assert_eq!(s.value("cluster.c.upstream_rq_completed"), Some(3));
    }
}
