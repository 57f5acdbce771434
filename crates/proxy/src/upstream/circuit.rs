//! Envoy's circuit breakers for one cluster (default priority): counts of
//! open connections, active requests, requests waiting for a connection and
//! retries in flight, each against its limit, lock-free. Every slot is an
//! RAII [`Permit`] released on drop. The counts outlive config updates (a
//! new limit applies to what is already open); the gauges are Envoy's
//! `circuit_breakers.default.{cx,rq,rq_pending,rq_retry}_open` (1 when at
//! the limit) and, with `track_remaining`, `remaining_{cx,rq,pending,retries}`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use crate::config::circuit_breakers::{CircuitBreakerConfig, RetryBudget};
use crate::stats::{Counter, Scope, Stats};

/// Which limit a permit holds a slot of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connection,
    Request,
    Pending,
    Retry,
}

const ALL: [Resource; 4] = [
    Resource::Connection,
    Resource::Request,
    Resource::Pending,
    Resource::Retry,
];

impl Resource {
    fn index(self) -> usize {
        self as usize
    }

    /// Envoy's gauge names: `<open>` and `<remaining>`.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Resource::Connection => ("cx_open", "remaining_cx"),
            Resource::Request => ("rq_open", "remaining_rq"),
            Resource::Pending => ("rq_pending_open", "remaining_pending"),
            Resource::Retry => ("rq_retry_open", "remaining_retries"),
        }
    }
}

#[derive(Debug)]
struct Slot {
    count: AtomicU64,
    max: AtomicU64,
    open: Counter,
}

/// A cluster's breakers; shared by every version of the cluster.
#[derive(Debug)]
pub struct CircuitBreakers {
    slots: [Slot; 4],
    scope: Scope,
    stats: Arc<Stats>,
    track_remaining: AtomicBool,
    remaining: OnceLock<[Counter; 4]>,
    retry_budget: ArcSwapOption<RetryBudget>,
    /// A connection of the cluster closed: a request waiting for one may
    /// open its own now.
    pub(crate) connection_closed: Notify,
    /// max_connection_pools is outside the subset (unlimited): Envoy's
    /// `cx_pool_open` (0) and `remaining_cx_pools` gauges, for its names.
    _pools_open: Counter,
}

impl CircuitBreakers {
    pub fn new(stats: &Arc<Stats>, cluster: &str, config: &CircuitBreakerConfig) -> Arc<Self> {
        let scope = Scope::new("cluster", "cluster_name", cluster);
        let slot = |r: Resource| Slot {
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
            open: scope.gauge(stats, &format!("circuit_breakers.default.{}", r.names().0)),
        };
        let cb = Arc::new(CircuitBreakers {
            slots: ALL.map(slot),
            scope: scope.clone(),
            stats: stats.clone(),
            track_remaining: AtomicBool::new(false),
            remaining: OnceLock::new(),
            retry_budget: ArcSwapOption::empty(),
            connection_closed: Notify::new(),
            _pools_open: scope.gauge(stats, "circuit_breakers.default.cx_pool_open"),
        });
        cb.configure(config);
        cb
    }

    /// New limits from a cluster update; slots already held stay held.
    pub fn configure(&self, config: &CircuitBreakerConfig) {
        let limits = [
            config.max_connections,
            config.max_requests,
            config.max_pending_requests,
            config.max_retries,
        ];
        for (slot, max) in self.slots.iter().zip(limits) {
            slot.max.store(max.into(), Ordering::Relaxed);
        }
        self.retry_budget
            .store(config.retry_budget.clone().map(Arc::new));
        if config.track_remaining {
            self.scope
                .gauge(&self.stats, "circuit_breakers.default.remaining_cx_pools")
                .set(i64::MAX);
            self.remaining.get_or_init(|| {
                ALL.map(|r| {
                    self.scope.gauge(
                        &self.stats,
                        &format!("circuit_breakers.default.{}", r.names().1),
                    )
                })
            });
        }
        self.track_remaining
            .store(config.track_remaining, Ordering::Relaxed);
        for r in ALL {
            self.publish(r);
        }
    }

    /// The limit now (for retries, the budget's when one is configured).
    pub fn max(&self, r: Resource) -> u64 {
        if r == Resource::Retry
            && let Some(b) = self.retry_budget.load().as_deref()
        {
            // Envoy: a share of active plus pending requests, with a floor.
            let in_flight = self.count(Resource::Request) + self.count(Resource::Pending);
            let budget = (in_flight as f64 * b.budget_percent / 100.0) as u64;
            return budget.max(b.min_retry_concurrency.into());
        }
        self.slots[r.index()].max.load(Ordering::Relaxed)
    }

    pub fn count(&self, r: Resource) -> u64 {
        self.slots[r.index()].count.load(Ordering::Relaxed)
    }

    /// A slot if one is free (`None`: the breaker is open; the caller
    /// counts the overflow stat it is named for).
    pub fn try_acquire(self: &Arc<Self>, r: Resource) -> Option<Permit> {
        let max = self.max(r);
        let slot = &self.slots[r.index()];
        slot.count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.publish(r);
        Some(Permit {
            breakers: self.clone(),
            resource: r,
        })
    }

    /// A slot even over the limit: Envoy lets a host with no connection
    /// open one, so requests queued for it can run.
    pub fn force_acquire(self: &Arc<Self>, r: Resource) -> Permit {
        self.slots[r.index()].count.fetch_add(1, Ordering::AcqRel);
        self.publish(r);
        Permit {
            breakers: self.clone(),
            resource: r,
        }
    }

    fn release(&self, r: Resource) {
        self.slots[r.index()].count.fetch_sub(1, Ordering::AcqRel);
        self.publish(r);
        if r == Resource::Connection {
            self.connection_closed.notify_one();
        }
    }

    fn publish(&self, r: Resource) {
        let (count, max) = (self.count(r), self.max(r));
        self.slots[r.index()].open.set(i64::from(count >= max));
        if self.track_remaining.load(Ordering::Relaxed)
            && let Some(remaining) = self.remaining.get()
        {
            remaining[r.index()].set(max.saturating_sub(count) as i64);
        }
    }
}

/// One held slot of a breaker, released when dropped.
#[derive(Debug)]
pub struct Permit {
    breakers: Arc<CircuitBreakers>,
    resource: Resource,
}

impl Permit {
    pub fn resource(&self) -> Resource {
        self.resource
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breakers.release(self.resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(yaml: &str) -> (Arc<Stats>, Arc<CircuitBreakers>) {
        let cb: envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers =
            xds::json::from_yaml(yaml).expect("parses");
        let config = CircuitBreakerConfig::try_from(&cb).expect("valid");
        let stats = Arc::new(Stats::default());
        let b = CircuitBreakers::new(&stats, "c", &config);
        (stats, b)
    }

    #[test]
    fn permits_overflow_at_the_limit_and_free_on_drop() {
        let (stats, b) = breakers(
            "thresholds: [{max_requests: 2, max_connections: 1, max_pending_requests: 1, \
             max_retries: 1, track_remaining: true}]",
        );
        let g = |n: &str| stats.value(&format!("cluster.c.circuit_breakers.default.{n}"));
        assert_eq!(g("remaining_rq"), Some(2));
        let a = b.try_acquire(Resource::Request).expect("first");
        let c = b.try_acquire(Resource::Request).expect("second");
        assert_eq!(g("rq_open"), Some(1));
        assert_eq!(g("remaining_rq"), Some(0));
        assert!(
            b.try_acquire(Resource::Request).is_none(),
            "third overflows"
        );
        drop(a);
        assert_eq!(g("rq_open"), Some(0));
        assert_eq!(g("remaining_rq"), Some(1));
        let _again = b.try_acquire(Resource::Request).expect("slot freed");
        drop(c);
        let cx = b.try_acquire(Resource::Connection).expect("one connection");
        assert!(b.try_acquire(Resource::Connection).is_none());
        let forced = b.force_acquire(Resource::Connection);
        assert_eq!(b.count(Resource::Connection), 2);
        assert_eq!(g("remaining_cx"), Some(0));
        drop((cx, forced));
        assert_eq!(b.count(Resource::Connection), 0);
        let r = b.try_acquire(Resource::Retry).expect("a retry");
        assert!(b.try_acquire(Resource::Retry).is_none());
        assert_eq!(g("rq_retry_open"), Some(1));
        drop(r);
        assert_eq!(g("remaining_retries"), Some(1));
    }

    #[test]
    fn defaults_and_no_remaining_gauges_without_tracking() {
        let (stats, b) = breakers("thresholds: [{}]");
        assert_eq!(b.max(Resource::Connection), 1024);
        assert_eq!(b.max(Resource::Request), 1024);
        assert_eq!(b.max(Resource::Pending), 1024);
        assert_eq!(b.max(Resource::Retry), 3);
        assert_eq!(
            stats.value("cluster.c.circuit_breakers.default.cx_open"),
            Some(0)
        );
        assert_eq!(
            stats.value("cluster.c.circuit_breakers.default.remaining_cx"),
            None
        );
    }

    #[test]
    fn retry_budget_scales_with_requests_in_flight() {
        let (_, b) = breakers(
            "thresholds: [{retry_budget: {budget_percent: {value: 50}, min_retry_concurrency: 1}}]",
        );
        assert_eq!(
            b.max(Resource::Retry),
            1,
            "the floor with nothing in flight"
        );
        let held: Vec<_> = (0..6)
            .map(|_| b.try_acquire(Resource::Request).unwrap())
            .collect();
        assert_eq!(b.max(Resource::Retry), 3, "half of 6 requests");
        drop(held);
        let err = CircuitBreakerConfig::try_from(
            &xds::json::from_yaml::<envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers>(
                "thresholds: [{priority: HIGH}, {priority: HIGH}]",
            )
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.path, "thresholds[1].priority");
    }
}
