//! Envoy's outlier detection for one cluster: every upstream result is
//! reported ([`Outcome`]) to the host's counters; consecutive 5xx, gateway
//! failures and local-origin failures eject a host as soon as they reach
//! their threshold, and a timer on tokio's clock every `interval` returns
//! hosts whose ejection time (base × times ejected, capped) has passed,
//! runs the success-rate and failure-percentage checks, and shortens the
//! ejection multiplier of hosts that stayed healthy. An ejection or return
//! swaps the cluster's routable host set ([`Routing`]); the request path
//! never takes a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::outlier::OutlierConfig;
use crate::error::RequestError;
use crate::stats::{Counter, Scope, Stats};
use crate::upstream::cluster::Routing;
use crate::upstream::host::Host;
use crate::upstream::lb::random;

/// What happened to one request or connection to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// Connected (HTTP: the response is still to be judged).
    LocalOriginConnectSuccess,
    /// Connected, and that is the whole result (TCP proxy).
    LocalOriginConnectSuccessFinal,
    /// Connect failure, or a reset before the response.
    LocalOriginConnectFailed,
    /// No response in time.
    LocalOriginTimeout,
}

impl Outcome {
    /// The local-origin event behind a failed attempt (None: not the host's
    /// doing, e.g. a circuit breaker's overflow).
    pub fn of_error(e: &RequestError) -> Option<Outcome> {
        match e {
            RequestError::ConnectFailure(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                Some(Outcome::LocalOriginTimeout)
            }
            RequestError::ConnectFailure(_) | RequestError::UpstreamReset(_) => {
                Some(Outcome::LocalOriginConnectFailed)
            }
            RequestError::Timeout => Some(Outcome::LocalOriginTimeout),
            _ => None,
        }
    }
}

/// Envoy's ejection types (`envoy.data.cluster.v3.OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl EjectionType {
    const ALL: [EjectionType; 7] = [
        EjectionType::Consecutive5xx,
        EjectionType::ConsecutiveGatewayFailure,
        EjectionType::ConsecutiveLocalOriginFailure,
        EjectionType::SuccessRate,
        EjectionType::SuccessRateLocalOrigin,
        EjectionType::FailurePercentage,
        EjectionType::FailurePercentageLocalOrigin,
    ];

    /// The stem of `ejections_{detected,enforced}_<stem>`.
    fn stat(self) -> &'static str {
        match self {
            EjectionType::Consecutive5xx => "consecutive_5xx",
            EjectionType::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionType::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            EjectionType::SuccessRate => "success_rate",
            EjectionType::SuccessRateLocalOrigin => "local_origin_success_rate",
            EjectionType::FailurePercentage => "failure_percentage",
            EjectionType::FailurePercentageLocalOrigin => "local_origin_failure_percentage",
        }
    }
}

/// A host's outlier state: counters the request path bumps, the ejected
/// flag the load balancer's host set is built from, and the bookkeeping
/// only the detector touches.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// Since the last interval: (total, successes), external and local origin.
    external: (AtomicU64, AtomicU64),
    local: (AtomicU64, AtomicU64),
    ejected: AtomicBool,
    book: Mutex<Book>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Book {
    /// The ejection-time multiplier.
    backoff: u32,
    num_ejections: u32,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    jitter: Duration,
}

impl HostOutlier {
    /// Ejected now (`/clusters` shows `/failed_outlier_check`).
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Times ejected so far.
    pub fn num_ejections(&self) -> u32 {
        self.book().num_ejections
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
    }

    fn take(pair: &(AtomicU64, AtomicU64)) -> (u64, u64) {
        (
            pair.0.swap(0, Ordering::Relaxed),
            pair.1.swap(0, Ordering::Relaxed),
        )
    }
}

/// `cluster.<name>.outlier_detection.*`.
#[derive(Debug)]
struct OutlierStats {
    ejections_active: Counter,
    ejections_total: Counter,
    ejections_overflow: Counter,
    ejections_enforced_total: Counter,
    ejections_consecutive_5xx: Counter,
    ejections_success_rate: Counter,
    /// detect_degraded_hosts is outside the subset: always 0, kept for Envoy's names.
    _ejections_detected_degradation: Counter,
    detected: [Counter; 7],
    enforced: [Counter; 7],
}

impl OutlierStats {
    fn new(stats: &Stats, cluster: &str) -> Self {
        let s = Scope::new("cluster", "cluster_name", cluster);
        let c = |n: &str| s.counter(stats, &format!("outlier_detection.{n}"));
        OutlierStats {
            ejections_active: s.gauge(stats, "outlier_detection.ejections_active"),
            ejections_total: c("ejections_total"),
            ejections_overflow: c("ejections_overflow"),
            ejections_enforced_total: c("ejections_enforced_total"),
            ejections_consecutive_5xx: c("ejections_consecutive_5xx"),
            ejections_success_rate: c("ejections_success_rate"),
            _ejections_detected_degradation: c("ejections_detected_degradation"),
            detected: EjectionType::ALL.map(|t| c(&format!("ejections_detected_{}", t.stat()))),
            enforced: EjectionType::ALL.map(|t| c(&format!("ejections_enforced_{}", t.stat()))),
        }
    }
}

/// One cluster's detector. Replaced (all hosts returned) when the
/// cluster's `outlier_detection` changes, as Envoy rebuilds the cluster.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierConfig,
    stats: OutlierStats,
    routing: Arc<Routing>,
    /// Serialises ejection decisions (not taken on the request path unless
    /// a threshold is reached).
    decide: Mutex<()>,
    timer_started: AtomicBool,
}

impl Detector {
    pub fn new(
        config: OutlierConfig,
        stats: &Stats,
        cluster: &str,
        routing: Arc<Routing>,
    ) -> Arc<Self> {
        let d = Arc::new(Detector {
            config,
            stats: OutlierStats::new(stats, cluster),
            routing,
            decide: Mutex::new(()),
            timer_started: AtomicBool::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            d.start_timer();
        }
        d
    }

    /// Arm the interval timer (once; lazily when built outside a runtime).
    fn start_timer(self: &Arc<Self>) {
        if self.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Detector> = Arc::downgrade(self);
        let interval = self.config.interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match weak.upgrade() {
                    Some(d) => d.on_interval(),
                    None => return,
                }
            }
        });
    }

    /// Record one result for `host`; may eject it.
    pub fn report(self: &Arc<Self>, host: &Arc<Host>, outcome: Outcome) {
        if !self.timer_started.load(Ordering::Relaxed) {
            self.start_timer();
        }
        let split = self.config.split_external_local_origin_errors;
        match outcome {
            Outcome::Status(code) => self.http_status(host, code),
            Outcome::LocalOriginConnectSuccess if split => self.local_success(host),
            Outcome::LocalOriginConnectSuccess => {}
            Outcome::LocalOriginConnectSuccessFinal if split => {
                self.local_success(host);
            }
            Outcome::LocalOriginConnectSuccessFinal => self.http_status(host, 200),
            Outcome::LocalOriginConnectFailed | Outcome::LocalOriginTimeout if split => {
                self.local_failure(host)
            }
            Outcome::LocalOriginConnectFailed => self.http_status(host, 503),
            Outcome::LocalOriginTimeout => self.http_status(host, 504),
        }
    }

    fn http_status(&self, host: &Arc<Host>, code: u16) {
        let o = &host.outlier;
        o.external.0.fetch_add(1, Ordering::Relaxed);
        if (500..600).contains(&code) {
            if matches!(code, 502..=504) {
                let n = o.consecutive_gateway_failure.fetch_add(1, Ordering::AcqRel) + 1;
                if n == self.config.consecutive_gateway_failure {
                    self.consecutive(host, EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            }
            let n = o.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
            if n == self.config.consecutive_5xx {
                self.consecutive(host, EjectionType::Consecutive5xx);
            }
        } else {
            o.external.1.fetch_add(1, Ordering::Relaxed);
            o.consecutive_5xx.store(0, Ordering::Relaxed);
            o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
    }

    fn local_failure(&self, host: &Arc<Host>) {
        let o = &host.outlier;
        o.local.0.fetch_add(1, Ordering::Relaxed);
        let n = o
            .consecutive_local_origin_failure
            .fetch_add(1, Ordering::AcqRel)
            + 1;
        if n == self.config.consecutive_local_origin_failure {
            self.consecutive(host, EjectionType::ConsecutiveLocalOriginFailure);
        }
    }

    fn local_success(&self, host: &Arc<Host>) {
        let o = &host.outlier;
        o.local.0.fetch_add(1, Ordering::Relaxed);
        o.local.1.fetch_add(1, Ordering::Relaxed);
        o.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.decide.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consecutive-error threshold was reached.
    fn consecutive(&self, host: &Arc<Host>, kind: EjectionType) {
        let _decide = self.lock();
        let members = self.routing.members();
        if host.outlier.is_ejected() || !members.iter().any(|(h, _, _)| Arc::ptr_eq(h, host)) {
            return;
        }
        self.stats.detected[kind as usize].inc();
        if self.eject(host, kind, members.len()) {
            self.routing.rebuild();
        }
        let o = &host.outlier;
        match kind {
            EjectionType::Consecutive5xx => {
                self.stats.ejections_consecutive_5xx.inc();
                o.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            EjectionType::ConsecutiveGatewayFailure => {
                o.consecutive_gateway_failure.store(0, Ordering::Relaxed)
            }
            _ => o
                .consecutive_local_origin_failure
                .store(0, Ordering::Relaxed),
        }
    }

    /// Ejected hosts among the current members.
    fn active(&self) -> usize {
        self.routing
            .members()
            .iter()
            .filter(|(h, _, _)| h.outlier.is_ejected())
            .count()
    }

    /// Envoy's ejectHost: within max_ejection_percent (or the one host
    /// `always_eject_one_host` allows), then enforced with the type's
    /// percentage. Returns whether the host was ejected. Lock held.
    fn eject(&self, host: &Arc<Host>, kind: EjectionType, members: usize) -> bool {
        let active = self.active();
        let max = self.config.max_ejection_percent.min(100) as f64;
        let percent = 100.0 * (active + 1) as f64 / members.max(1) as f64;
        let allowed = percent <= max || (self.config.always_eject_one_host && active == 0);
        if !allowed {
            self.stats.ejections_overflow.inc();
            return false;
        }
        if matches!(
            kind,
            EjectionType::Consecutive5xx | EjectionType::SuccessRate
        ) {
            self.stats.ejections_total.inc();
        }
        if !enforced(self.enforcing(kind)) {
            return false;
        }
        self.stats.ejections_enforced_total.inc();
        self.stats.enforced[kind as usize].inc();
        let c = &self.config;
        let mut book = host.outlier.book();
        book.num_ejections += 1;
        book.last_ejection = Some(Instant::now());
        let jitter_ms = c.max_ejection_time_jitter.as_millis() as u64;
        book.jitter = Duration::from_millis(random() % (jitter_ms + 1));
        if c.base_ejection_time * book.backoff < c.max_ejection_time + c.base_ejection_time {
            book.backoff += 1;
        }
        host.outlier.ejected.store(true, Ordering::Release);
        self.stats.ejections_active.set(active as i64 + 1);
        tracing::debug!(host = %host.addr, ?kind, ejections = book.num_ejections, "outlier: ejected");
        true
    }

    fn enforcing(&self, kind: EjectionType) -> u32 {
        let c = &self.config;
        match kind {
            EjectionType::Consecutive5xx => c.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => {
                c.enforcing_consecutive_local_origin_failure
            }
            EjectionType::SuccessRate => c.enforcing_success_rate,
            EjectionType::SuccessRateLocalOrigin => c.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => c.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                c.enforcing_failure_percentage_local_origin
            }
        }
    }

    /// The interval timer: return hosts whose time is up, run the
    /// success-rate and failure-percentage checks, shorten multipliers.
    pub fn on_interval(&self) {
        let _decide = self.lock();
        let c = &self.config;
        let now = Instant::now();
        let members = self.routing.members();
        let mut changed = false;
        let mut samples = Vec::with_capacity(members.len());
        for (host, _, _) in members.iter() {
            let o = &host.outlier;
            if o.is_ejected() {
                let mut book = o.book();
                let time = (c.base_ejection_time * book.backoff).min(c.max_ejection_time);
                if book
                    .last_ejection
                    .is_none_or(|at| time + book.jitter <= now - at)
                {
                    o.ejected.store(false, Ordering::Release);
                    o.reset_consecutive();
                    book.last_unejection = Some(now);
                    changed = true;
                    tracing::debug!(host = %host.addr, "outlier: returned");
                }
            }
            samples.push((
                host.clone(),
                HostOutlier::take(&o.external),
                HostOutlier::take(&o.local),
            ));
        }
        if changed {
            self.routing.rebuild();
        }
        let external: Vec<_> = samples.iter().map(|(h, e, _)| (h, *e)).collect();
        let local: Vec<_> = samples.iter().map(|(h, _, l)| (h, *l)).collect();
        changed = self.success_rate(&external, false, members.len());
        if c.split_external_local_origin_errors {
            changed |= self.success_rate(&local, true, members.len());
        }
        for (host, _, _) in members.iter() {
            if host.outlier.is_ejected() {
                continue;
            }
            let mut book = host.outlier.book();
            if book
                .last_unejection
                .is_some_and(|at| now - at >= c.interval)
            {
                book.backoff = book.backoff.saturating_sub(1);
            }
        }
        if changed {
            self.routing.rebuild();
        }
        self.stats.ejections_active.set(self.active() as i64);
    }

    /// Envoy's success-rate (mean − stdev × factor) and failure-percentage
    /// ejections over the last interval's (total, successes) per host.
    fn success_rate(&self, samples: &[(&Arc<Host>, (u64, u64))], local: bool, n: usize) -> bool {
        let c = &self.config;
        let (sr_min, fp_min) = (
            c.success_rate_minimum_hosts as usize,
            c.failure_percentage_minimum_hosts as usize,
        );
        if n < sr_min && n < fp_min {
            return false;
        }
        let mut sr_hosts = Vec::new();
        let mut fp_hosts = Vec::new();
        for (host, (total, ok)) in samples {
            if host.outlier.is_ejected() || *total == 0 {
                continue;
            }
            let rate = *ok as f64 * 100.0 / *total as f64;
            if *total >= c.success_rate_request_volume.into() {
                sr_hosts.push((*host, rate));
            }
            if *total >= c.failure_percentage_request_volume.into() {
                fp_hosts.push((*host, rate));
            }
        }
        let mut ejected = false;
        if !sr_hosts.is_empty() && sr_hosts.len() >= sr_min {
            let mean = sr_hosts.iter().map(|(_, r)| r).sum::<f64>() / sr_hosts.len() as f64;
            let variance = sr_hosts
                .iter()
                .map(|(_, r)| (r - mean).powi(2))
                .sum::<f64>()
                / sr_hosts.len() as f64;
            let threshold = mean - c.success_rate_stdev_factor as f64 / 1000.0 * variance.sqrt();
            let kind = if local {
                EjectionType::SuccessRateLocalOrigin
            } else {
                EjectionType::SuccessRate
            };
            for (host, rate) in &sr_hosts {
                if *rate < threshold && !host.outlier.is_ejected() {
                    self.stats.ejections_success_rate.inc();
                    self.stats.detected[kind as usize].inc();
                    ejected |= self.eject(host, kind, n);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() >= fp_min {
            let kind = if local {
                EjectionType::FailurePercentageLocalOrigin
            } else {
                EjectionType::FailurePercentage
            };
            for (host, rate) in &fp_hosts {
                if 100.0 - rate >= c.failure_percentage_threshold as f64
                    && !host.outlier.is_ejected()
                {
                    self.stats.detected[kind as usize].inc();
                    ejected |= self.eject(host, kind, n);
                }
            }
        }
        ejected
    }

    /// Return every host (the detector is being replaced or removed).
    pub fn release_all(&self) {
        let _decide = self.lock();
        for (host, _, _) in self.routing.members().iter() {
            host.outlier.ejected.store(false, Ordering::Release);
            host.outlier.reset_consecutive();
            *host.outlier.book() = Book::default();
        }
        self.stats.ejections_active.set(0);
        self.routing.rebuild();
    }
}

/// Envoy's runtime featureEnabled with a percentage.
fn enforced(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && random() % 100 < u64::from(percent))
}

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;
