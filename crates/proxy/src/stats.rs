//! The proxy's stats: counters, gauges and histograms, each with Envoy's flat
//! name (`cluster.X.upstream_rq_total`, rendered by `/stats`) and a labelled
//! Prometheus name (`envoy_cluster_upstream_rq_total{cluster_name="X"}`,
//! rendered by `/stats/prometheus`, with the tag names Istio's bootstrap
//! extracts). Every stat is handed out once, at config time, as atomics: the
//! request path increments and records without a lock. The registry's lock is
//! taken only to create a stat and to render.
//!
//! Labelled families whose label values are only known per request (status
//! codes now, Istio's request metrics later) are a [`Family`]: a lock-free
//! read of a swapped map, a stat created on the first miss.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
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

/// Envoy's default histogram bucket bounds (milliseconds for `_ms`/`_time`).
pub const DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A histogram of durations in milliseconds over [`DEFAULT_BUCKETS`]: one
/// atomic per bucket, plus sum and count. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; DEFAULT_BUCKETS.len() + 1],
    /// Sum in microseconds (rendered as milliseconds).
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bound of [`DEFAULT_BUCKETS`], then +Inf.
    pub cumulative: Vec<u64>,
    pub sum_ms: f64,
    pub count: u64,
}

impl Histogram {
    /// Record one duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let ms = us as f64 / 1000.0;
        let at = DEFAULT_BUCKETS.partition_point(|b| *b < ms);
        let cells = &self.0;
        cells.buckets[at].fetch_add(1, Ordering::Relaxed);
        cells.sum_us.fetch_add(us, Ordering::Relaxed);
        cells.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Record one plain value (bytes), bucketed as if milliseconds.
    #[inline]
    pub fn record_value(&self, v: u64) {
        let at = DEFAULT_BUCKETS.partition_point(|b| *b < v as f64);
        let cells = &self.0;
        cells.buckets[at].fetch_add(1, Ordering::Relaxed);
        cells
            .sum_us
            .fetch_add(v.saturating_mul(1000), Ordering::Relaxed);
        cells.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .0
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_ms: self.0.sum_us.load(Ordering::Relaxed) as f64 / 1000.0,
            count: self.0.count.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// The q-quantile (0..=1) estimated from the buckets by linear
    /// interpolation inside the bucket that holds it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower_count = 0u64;
        let mut lower_bound = 0.0;
        for (i, &c) in self.cumulative.iter().enumerate() {
            let upper_bound = DEFAULT_BUCKETS.get(i).copied().unwrap_or(lower_bound);
            if (c as f64) >= rank && c > lower_count {
                let within = (rank - lower_count as f64) / (c - lower_count) as f64;
                return Some(lower_bound + (upper_bound - lower_bound) * within.clamp(0.0, 1.0));
            }
            lower_count = c;
            lower_bound = upper_bound;
        }
        Some(lower_bound)
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Counter),
    Histogram(Histogram),
}

/// A stat's Prometheus identity: name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PromName {
    name: String,
    labels: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
struct Entry {
    metric: Metric,
    prom: PromName,
}

/// The registry of every stat of one proxy, by Envoy name.
#[derive(Debug, Default)]
pub struct Stats {
    by_name: Mutex<BTreeMap<String, Entry>>,
}

/// The labels of a stat: (tag name, value), most specific first.
pub type Labels = Vec<(&'static str, String)>;

impl Stats {
    fn entry(&self, flat: String, make: impl FnOnce() -> Entry) -> Metric {
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(flat).or_insert_with(make).metric.clone()
    }

    /// The counter called `name` (no labels), created at zero if new.
    pub fn counter(&self, name: impl Into<String>) -> Counter {
        let name = name.into();
        let prom = untagged(&name);
        self.tagged_counter(name, prom, Vec::new())
    }

    /// The gauge called `name` (no labels).
    pub fn gauge(&self, name: impl Into<String>) -> Counter {
        let name = name.into();
        let prom = untagged(&name);
        self.tagged_gauge(name, prom, Vec::new())
    }

    /// A counter with an Envoy name and a labelled Prometheus name.
    pub fn tagged_counter(&self, flat: String, prom: String, labels: Labels) -> Counter {
        self.value_stat(flat, prom, labels, Metric::Counter)
    }

    /// A gauge with an Envoy name and a labelled Prometheus name.
    pub fn tagged_gauge(&self, flat: String, prom: String, labels: Labels) -> Counter {
        self.value_stat(flat, prom, labels, Metric::Gauge)
    }

    fn value_stat(
        &self,
        flat: String,
        prom: String,
        labels: Labels,
        kind: fn(Counter) -> Metric,
    ) -> Counter {
        let metric = self.entry(flat, || Entry {
            metric: kind(Counter::default()),
            prom: PromName { name: prom, labels },
        });
        match metric {
            Metric::Counter(c) | Metric::Gauge(c) => c,
            Metric::Histogram(_) => Counter::default(),
        }
    }

    /// A histogram with an Envoy name and a labelled Prometheus name.
    pub fn histogram(&self, flat: String, prom: String, labels: Labels) -> Histogram {
        let metric = self.entry(flat, || Entry {
            metric: Metric::Histogram(Histogram::default()),
            prom: PromName { name: prom, labels },
        });
        match metric {
            Metric::Histogram(h) => h,
            _ => Histogram::default(),
        }
    }

    /// Current value of a counter or gauge, if it exists.
    pub fn value(&self, name: &str) -> Option<i64> {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        match &map.get(name)?.metric {
            Metric::Counter(c) | Metric::Gauge(c) => Some(c.get()),
            Metric::Histogram(h) => Some(h.snapshot().count as i64),
        }
    }

    /// A histogram's current values, if it exists.
    pub fn histogram_values(&self, name: &str) -> Option<HistogramSnapshot> {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        match &map.get(name)?.metric {
            Metric::Histogram(h) => Some(h.snapshot()),
            _ => None,
        }
    }

    /// Envoy's `/stats` text: `name: value` per counter and gauge, sorted;
    /// then histograms as quantiles (`P50(nan,1.05)`: this registry keeps
    /// cumulative values only, so the interval column is `nan`).
    pub fn render(&self) -> String {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(map.len() * 48);
        let mut histograms = String::new();
        for (name, e) in map.iter() {
            match &e.metric {
                Metric::Counter(c) | Metric::Gauge(c) => {
                    let _ = writeln!(out, "{name}: {}", c.get());
                }
                Metric::Histogram(h) => {
                    let snap = h.snapshot();
                    let _ = write!(histograms, "{name}:");
                    if snap.count == 0 {
                        histograms.push_str(" No recorded values\n");
                        continue;
                    }
                    for (label, q) in QUANTILES {
                        let v = snap.quantile(q).unwrap_or(0.0);
                        let _ = write!(histograms, " {label}(nan,{})", trim_float(v));
                    }
                    histograms.push('\n');
                }
            }
        }
        out.push_str(&histograms);
        out
    }

    /// Prometheus text exposition (version 0.0.4), as Envoy's
    /// `/stats/prometheus`: one `# TYPE` per metric name, labelled samples,
    /// histograms as `_bucket{le}`/`_sum`/`_count`.
    pub fn render_prometheus(&self) -> String {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_prom: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for e in map.values() {
            by_prom.entry(e.prom.name.as_str()).or_default().push(e);
        }
        let mut out = String::with_capacity(map.len() * 96);
        for (name, mut entries) in by_prom {
            entries.sort_by(|a, b| a.prom.labels.cmp(&b.prom.labels));
            let kind = match entries[0].metric {
                Metric::Counter(_) => "counter",
                Metric::Gauge(_) => "gauge",
                Metric::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for e in entries {
                let labels = &e.prom.labels;
                match &e.metric {
                    Metric::Counter(c) | Metric::Gauge(c) => {
                        let _ = writeln!(out, "{name}{} {}", label_text(labels, None), c.get());
                    }
                    Metric::Histogram(h) => {
                        let snap = h.snapshot();
                        for (i, count) in snap.cumulative.iter().enumerate() {
                            let le = DEFAULT_BUCKETS
                                .get(i)
                                .map_or_else(|| "+Inf".to_string(), |b| trim_float(*b));
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {count}",
                                label_text(labels, Some(&le))
                            );
                        }
                        let l = label_text(labels, None);
                        let _ = writeln!(out, "{name}_sum{l} {}", trim_float(snap.sum_ms));
                        let _ = writeln!(out, "{name}_count{l} {}", snap.count);
                    }
                }
            }
        }
        out
    }
}

const QUANTILES: [(&str, f64); 10] = [
    ("P0", 0.0),
    ("P25", 0.25),
    ("P50", 0.5),
    ("P75", 0.75),
    ("P90", 0.9),
    ("P95", 0.95),
    ("P99", 0.99),
    ("P99.5", 0.995),
    ("P99.9", 0.999),
    ("P100", 1.0),
];

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn label_text(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)))
    {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(k);
        s.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// Envoy's Prometheus name for a stat without tags: `envoy_` and the flat
/// name with every character outside `[a-zA-Z0-9_]` as `_`.
fn untagged(flat: &str) -> String {
    prom_name(flat)
}

fn prom_name(stem: &str) -> String {
    let mut s = String::with_capacity(stem.len() + 6);
    s.push_str("envoy_");
    s.extend(stem.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s
}

/// Stats under one tagged prefix: Envoy's `cluster.X.` is Prometheus's
/// `envoy_cluster_*{cluster_name="X"}`.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `cluster.X.`
    flat: String,
    /// `cluster_`
    stem: String,
    labels: Labels,
}

impl Scope {
    /// `kind` is the flat prefix's first segment (`cluster`, `http`,
    /// `listener`, `tcp`), `tag` the label its value goes in.
    pub fn new(kind: &str, tag: &'static str, value: &str) -> Scope {
        Scope {
            flat: format!("{kind}.{value}."),
            stem: format!("{kind}_"),
            labels: vec![(tag, value.to_string())],
        }
    }

    pub fn counter(&self, stats: &Stats, name: &str) -> Counter {
        stats.tagged_counter(
            format!("{}{name}", self.flat),
            prom_name(&format!("{}{name}", self.stem)),
            self.labels.clone(),
        )
    }

    pub fn gauge(&self, stats: &Stats, name: &str) -> Counter {
        stats.tagged_gauge(
            format!("{}{name}", self.flat),
            prom_name(&format!("{}{name}", self.stem)),
            self.labels.clone(),
        )
    }

    pub fn histogram(&self, stats: &Stats, name: &str) -> Histogram {
        stats.histogram(
            format!("{}{name}", self.flat),
            prom_name(&format!("{}{name}", self.stem)),
            self.labels.clone(),
        )
    }

    /// `<stem>_rq_2xx` as Istio tags it: `<stem>_rq_xx{response_code_class="2"}`.
    pub fn code_class(&self, stats: &Stats, stem: &str, class: u8) -> Counter {
        let mut labels = vec![("response_code_class", class.to_string())];
        labels.extend(self.labels.iter().cloned());
        stats.tagged_counter(
            format!("{}{stem}_{class}xx", self.flat),
            prom_name(&format!("{}{stem}_xx", self.stem)),
            labels,
        )
    }

    /// `<stem>_200` as Istio tags it: `<stem>{response_code="200"}`.
    pub fn code(&self, stats: &Stats, stem: &str, code: u16) -> Counter {
        let mut labels = vec![("response_code", code.to_string())];
        labels.extend(self.labels.iter().cloned());
        stats.tagged_counter(
            format!("{}{stem}_{code}", self.flat),
            prom_name(&format!("{}{stem}", self.stem)),
            labels,
        )
    }
}

/// A labelled family whose members are made on first use: reading an
/// existing member is a lock-free map load; a miss makes the member (with
/// the registry's lock) and swaps in a map that has it.
pub struct Family<K, M> {
    by_key: ArcSwap<HashMap<K, M>>,
    make: Box<dyn Fn(&K) -> M + Send + Sync>,
}

impl<K, M> std::fmt::Debug for Family<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("members", &self.by_key.load().len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone, M: Clone> Family<K, M> {
    pub fn new(make: impl Fn(&K) -> M + Send + Sync + 'static) -> Self {
        Family {
            by_key: ArcSwap::default(),
            make: Box::new(make),
        }
    }

    /// The member for `key`.
    pub fn get(&self, key: &K) -> M {
        if let Some(m) = self.by_key.load().get(key) {
            return m.clone();
        }
        let member = (self.make)(key);
        self.by_key.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(key.clone()).or_insert_with(|| member.clone());
            map
        });
        member
    }
}

/// Per-listener stats (`listener.<address>.*`, address as `0.0.0.0_15001`).
#[derive(Debug, Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Counter,
    pub no_filter_chain_match: Counter,
    pub downstream_pre_cx_timeout: Counter,
    /// `ssl.*`: TLS handshakes done, failed, and clients without a certificate.
    pub ssl_handshake: Counter,
    pub ssl_connection_error: Counter,
    pub ssl_no_certificate: Counter,
    /// `ssl.curves.<group>`: the key exchange each handshake negotiated.
    pub ssl_curves: [(&'static str, Counter); 4],
}

impl ListenerStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let s = Scope::new("listener", "listener_address", prefix);
        ListenerStats {
            downstream_cx_total: s.counter(stats, "downstream_cx_total"),
            downstream_cx_active: s.gauge(stats, "downstream_cx_active"),
            no_filter_chain_match: s.counter(stats, "no_filter_chain_match"),
            downstream_pre_cx_timeout: s.counter(stats, "downstream_pre_cx_timeout"),
            ssl_handshake: s.counter(stats, "ssl.handshake"),
            ssl_connection_error: s.counter(stats, "ssl.connection_error"),
            ssl_no_certificate: s.counter(stats, "ssl.no_certificate"),
            ssl_curves: ["X25519MLKEM768", "X25519", "P-256", "P-384"]
                .map(|g| (g, s.counter(stats, &format!("ssl.curves.{g}")))),
        }
    }
}

/// Per-HCM stats (`http.<stat_prefix>.*`).
#[derive(Debug, Clone)]
pub struct HttpStats {
    pub downstream_rq_total: Counter,
    pub downstream_rq_completed: Counter,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Counter,
    /// 1xx..5xx, by class.
    pub downstream_rq_xx: [Counter; 5],
    /// `downstream_rq_time`: request start to the response's last byte.
    pub downstream_rq_time: Histogram,
    pub no_route: Counter,
    pub no_cluster: Counter,
    /// `http.<prefix>.fault.*` (Envoy's fault filter stats).
    pub fault_delays_injected: Counter,
    pub fault_aborts_injected: Counter,
    pub fault_active_faults: Counter,
    pub cors_origin_valid: Counter,
    pub cors_origin_invalid: Counter,
}

impl HttpStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let s = Scope::new("http", "http_conn_manager_prefix", prefix);
        HttpStats {
            downstream_rq_total: s.counter(stats, "downstream_rq_total"),
            downstream_rq_completed: s.counter(stats, "downstream_rq_completed"),
            downstream_cx_total: s.counter(stats, "downstream_cx_total"),
            downstream_cx_active: s.gauge(stats, "downstream_cx_active"),
            downstream_rq_xx: [1, 2, 3, 4, 5].map(|c| s.code_class(stats, "downstream_rq", c)),
            downstream_rq_time: s.histogram(stats, "downstream_rq_time"),
            no_route: s.counter(stats, "no_route"),
            no_cluster: s.counter(stats, "no_cluster"),
            fault_delays_injected: s.counter(stats, "fault.delays_injected"),
            fault_aborts_injected: s.counter(stats, "fault.aborts_injected"),
            fault_active_faults: s.gauge(stats, "fault.active_faults"),
            cors_origin_valid: s.counter(stats, "cors.origin_valid"),
            cors_origin_invalid: s.counter(stats, "cors.origin_invalid"),
        }
    }

    /// Response headers went out with this status (Envoy counts the class then).
    pub fn record_status(&self, status: u16) {
        if let Some(c) = class_counter(&self.downstream_rq_xx, status) {
            c.inc();
        }
    }

    /// The response's last byte went out, or the stream ended early.
    pub fn record_end(&self, elapsed: Duration) {
        self.downstream_rq_completed.inc();
        self.downstream_rq_time.record(elapsed);
    }
}

fn class_counter(by_class: &[Counter; 5], status: u16) -> Option<&Counter> {
    by_class.get(usize::from(status / 100).checked_sub(1)?)
}

/// Per-cluster stats (`cluster.<name>.*`).
#[derive(Debug, Clone)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_completed: Counter,
    /// `upstream_rq_<code>`, made per code on first use.
    pub upstream_rq_by_code: Arc<Family<u16, Counter>>,
    pub upstream_rq_active: Counter,
    /// 1xx..5xx, by class.
    pub upstream_rq_xx: [Counter; 5],
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_retry_backoff_exponential: Counter,
    /// `upstream_rq_time`: upstream request start to the response's last byte.
    pub upstream_rq_time: Histogram,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_ms: Histogram,
    pub upstream_cx_none_healthy: Counter,
    /// Circuit breakers: max_pending_requests refused a request.
    pub upstream_rq_pending_overflow: Counter,
    /// max_requests refused a request (Envoy 1.40's name for it).
    pub upstream_rq_active_overflow: Counter,
    /// max_connections kept a new connection from being opened.
    pub upstream_cx_overflow: Counter,
    /// max_retries refused a retry.
    pub upstream_rq_retry_overflow: Counter,
    /// Pooled connections closed by idle_timeout, max_requests_per_connection
    /// and max_connection_duration.
    pub upstream_cx_idle_timeout: Counter,
    pub upstream_cx_max_requests: Counter,
    pub upstream_cx_max_duration_reached: Counter,
    pub membership_total: Counter,
    pub membership_healthy: Counter,
}

impl ClusterStats {
    pub fn new(stats: &Arc<Stats>, cluster: &str) -> Self {
        let s = Scope::new("cluster", "cluster_name", cluster);
        let by_code = {
            let (stats, s) = (stats.clone(), s.clone());
            Family::new(move |code: &u16| s.code(&stats, "upstream_rq", *code))
        };
        ClusterStats {
            upstream_rq_total: s.counter(stats, "upstream_rq_total"),
            upstream_rq_completed: s.counter(stats, "upstream_rq_completed"),
            upstream_rq_by_code: Arc::new(by_code),
            upstream_rq_active: s.gauge(stats, "upstream_rq_active"),
            upstream_rq_xx: [1, 2, 3, 4, 5].map(|c| s.code_class(stats, "upstream_rq", c)),
            upstream_rq_timeout: s.counter(stats, "upstream_rq_timeout"),
            upstream_rq_per_try_timeout: s.counter(stats, "upstream_rq_per_try_timeout"),
            upstream_rq_retry: s.counter(stats, "upstream_rq_retry"),
            upstream_rq_retry_success: s.counter(stats, "upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: s.counter(stats, "upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_backoff_exponential: s
                .counter(stats, "upstream_rq_retry_backoff_exponential"),
            upstream_rq_time: s.histogram(stats, "upstream_rq_time"),
            upstream_cx_total: s.counter(stats, "upstream_cx_total"),
            upstream_cx_active: s.gauge(stats, "upstream_cx_active"),
            upstream_cx_connect_fail: s.counter(stats, "upstream_cx_connect_fail"),
            upstream_cx_connect_ms: s.histogram(stats, "upstream_cx_connect_ms"),
            upstream_cx_none_healthy: s.counter(stats, "upstream_cx_none_healthy"),
            upstream_rq_pending_overflow: s.counter(stats, "upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: s.counter(stats, "upstream_rq_active_overflow"),
            upstream_cx_overflow: s.counter(stats, "upstream_cx_overflow"),
            upstream_rq_retry_overflow: s.counter(stats, "upstream_rq_retry_overflow"),
            upstream_cx_idle_timeout: s.counter(stats, "upstream_cx_idle_timeout"),
            upstream_cx_max_requests: s.counter(stats, "upstream_cx_max_requests"),
            upstream_cx_max_duration_reached: s.counter(stats, "upstream_cx_max_duration_reached"),
            membership_total: s.gauge(stats, "membership_total"),
            membership_healthy: s.gauge(stats, "membership_healthy"),
        }
    }

    /// A response (or local reply on behalf of the upstream) with this status.
    pub fn record_status(&self, status: u16) {
        self.upstream_rq_completed.inc();
        self.upstream_rq_by_code.get(&status).inc();
        if let Some(c) = class_counter(&self.upstream_rq_xx, status) {
            c.inc();
        }
    }
}

/// Per-tcp_proxy stats (`tcp.<stat_prefix>.*`).
#[derive(Debug, Clone)]
pub struct TcpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
}

impl TcpStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let s = Scope::new("tcp", "tcp_prefix", prefix);
        TcpStats {
            downstream_cx_total: s.counter(stats, "downstream_cx_total"),
            downstream_cx_no_route: s.counter(stats, "downstream_cx_no_route"),
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

    #[test]
    fn prometheus_names_carry_istio_tags() {
        let s = Arc::new(Stats::default());
        let name = "outbound|9080||reviews.bookinfo.svc.cluster.local";
        let cluster = ClusterStats::new(&s, name);
        cluster.upstream_rq_total.inc();
        cluster.record_status(200);
        cluster.record_status(503);
        let http = HttpStats::new(&s, "outbound_0.0.0.0_9080");
        http.record_status(404);
        s.counter("cluster_manager.cds.update_success").inc();
        let text = s.render_prometheus();
        for line in [
            "# TYPE envoy_cluster_upstream_rq_total counter",
            &format!("envoy_cluster_upstream_rq_total{{cluster_name=\"{name}\"}} 1"),
            "# TYPE envoy_cluster_upstream_rq counter",
            &format!(
                "envoy_cluster_upstream_rq{{response_code=\"200\",cluster_name=\"{name}\"}} 1"
            ),
            &format!(
                "envoy_cluster_upstream_rq{{response_code=\"503\",cluster_name=\"{name}\"}} 1"
            ),
            &format!(
                "envoy_cluster_upstream_rq_xx{{response_code_class=\"5\",cluster_name=\"{name}\"}} 1"
            ),
            "# TYPE envoy_cluster_upstream_cx_active gauge",
            "envoy_http_downstream_rq_xx{response_code_class=\"4\",http_conn_manager_prefix=\"outbound_0.0.0.0_9080\"} 1",
            "envoy_cluster_manager_cds_update_success 1",
            "# TYPE envoy_cluster_upstream_rq_time histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // One TYPE line per name.
        let types = text
            .lines()
            .filter(|l| l.starts_with("# TYPE envoy_cluster_upstream_rq "))
            .count();
        assert_eq!(types, 1);
    }

    #[test]
    fn histograms_bucket_sum_and_quantiles() {
        let s = Stats::default();
        let h = Scope::new("cluster", "cluster_name", "c").histogram(&s, "upstream_rq_time");
        for ms in [1, 2, 3, 40, 4000] {
            h.record(Duration::from_millis(ms));
        }
        let snap = s
            .histogram_values("cluster.c.upstream_rq_time")
            .expect("made");
        assert_eq!(snap.count, 5);
        assert_eq!(snap.sum_ms, 4046.0);
        // le=0.5: 0, le=1: 1, le=5: 3, le=50: 4, le=5000: 5.
        assert_eq!(&snap.cumulative[..3], &[0, 1, 3]);
        assert_eq!(snap.cumulative[5], 4);
        assert_eq!(snap.cumulative[11], 5);
        assert_eq!(*snap.cumulative.last().expect("+Inf"), 5);
        let p50 = snap.quantile(0.5).expect("values");
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        let p100 = snap.quantile(1.0).expect("values");
        assert!((2500.0..=5000.0).contains(&p100), "{p100}");
        let prom = s.render_prometheus();
        assert!(
            prom.contains("envoy_cluster_upstream_rq_time_bucket{cluster_name=\"c\",le=\"1\"} 1\n")
        );
        assert!(
            prom.contains(
                "envoy_cluster_upstream_rq_time_bucket{cluster_name=\"c\",le=\"+Inf\"} 5\n"
            )
        );
        assert!(prom.contains("envoy_cluster_upstream_rq_time_sum{cluster_name=\"c\"} 4046\n"));
        assert!(prom.contains("envoy_cluster_upstream_rq_time_count{cluster_name=\"c\"} 5\n"));
        let text = s.render();
        assert!(
            text.starts_with("cluster.c.upstream_rq_time: P0(nan,"),
            "{text}"
        );
        let empty = Stats::default();
        Scope::new("http", "http_conn_manager_prefix", "p").histogram(&empty, "downstream_rq_time");
        assert_eq!(
            empty.render(),
            "http.p.downstream_rq_time: No recorded values\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            label_text(&[("a", "x\"y\\z\n".to_string())], Some("1")),
            "{a=\"x\\\"y\\\\z\\n\",le=\"1\"}"
        );
    }
}
