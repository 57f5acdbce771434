//! Load balancers over a cluster's routable hosts (Envoy's lb_policy):
//! ROUND_ROBIN on an atomic counter, LEAST_REQUEST as power of two choices on
//! active requests, RANDOM, RING_HASH and MAGLEV (tables in `hash_lb`);
//! endpoint weights honoured. Also the per-thread fast RNG used for weighted
//! clusters.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::cluster::LbPolicy;
use crate::upstream::hash_lb::{HashTable, Maglev, Ring};
use crate::upstream::host::Host;

/// The hosts a load balancer picks from, with their weights.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    /// Cumulative weights, empty when all weights are equal.
    cumulative: Vec<u64>,
    total: u64,
    /// RING_HASH / MAGLEV: the table over `hosts`, built with them.
    hash: Option<HashTable>,
}

impl HostSet {
    pub fn new(weighted: Vec<(Arc<Host>, u32)>) -> Self {
        let uniform = weighted.windows(2).all(|w| w[0].1 == w[1].1);
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        if !uniform {
            for (_, w) in &weighted {
                total += *w as u64;
                cumulative.push(total);
            }
        }
        HostSet {
            hosts: weighted.into_iter().map(|(h, _)| h).collect(),
            cumulative,
            total,
            hash: None,
        }
    }

    /// The set for `policy`: with its ring or Maglev table for hash policies.
    pub fn for_policy(weighted: Vec<(Arc<Host>, u32)>, policy: LbPolicy) -> Self {
        let hash = match policy {
            LbPolicy::RingHash { min_size, max_size } => {
                Some(HashTable::Ring(Ring::new(&weighted, min_size, max_size)))
            }
            LbPolicy::Maglev { table_size } => {
                Some(HashTable::Maglev(Maglev::new(&weighted, table_size)))
            }
            _ => None,
        };
        HostSet {
            hash,
            ..HostSet::new(weighted)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The host for a value in `0..` (reduced by the total weight).
    fn by_value(&self, v: u64) -> &Arc<Host> {
        if self.cumulative.is_empty() {
            &self.hosts[(v % self.hosts.len() as u64) as usize]
        } else {
            let r = v % self.total;
            let i = self.cumulative.partition_point(|c| *c <= r);
            &self.hosts[i.min(self.hosts.len() - 1)]
        }
    }

    /// Pick a host per `policy` for a request whose hash policy produced
    /// `hash`: the consistent-hash table's host when the set has a table,
    /// else as [`HostSet::pick`].
    pub fn pick_hashed(
        &self,
        policy: LbPolicy,
        counter: &AtomicU64,
        hash: Option<u64>,
    ) -> Option<&Arc<Host>> {
        match (&self.hash, hash) {
            (Some(table), Some(h)) => table.lookup(h).map(|i| &self.hosts[i]),
            _ => self.pick(policy, counter),
        }
    }

    /// Pick a host per `policy`; `counter` is the cluster's round-robin state.
    /// Hash policies without a hash pick at random, as Envoy.
    pub fn pick(&self, policy: LbPolicy, counter: &AtomicU64) -> Option<&Arc<Host>> {
        if let Some(table) = &self.hash
            && self.hosts.len() > 1
        {
            return table.lookup(random()).map(|i| &self.hosts[i]);
        }
        match self.hosts.len() {
            0 => None,
            1 => Some(&self.hosts[0]),
            n => Some(match policy {
                LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                    self.by_value(counter.fetch_add(1, Ordering::Relaxed))
                }
                LbPolicy::Random | LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                    self.by_value(random())
                }
                LbPolicy::LeastRequest => {
                    let a = self.by_value(random());
                    let b = if self.cumulative.is_empty() {
                        // A second, distinct choice.
                        let ia = self
                            .hosts
                            .iter()
                            .position(|h| Arc::ptr_eq(h, a))
                            .unwrap_or(0);
                        &self.hosts[(ia + 1 + (random() % (n as u64 - 1)) as usize) % n]
                    } else {
                        self.by_value(random())
                    };
                    if b.rq_active.get() < a.rq_active.get() {
                        b
                    } else {
                        a
                    }
                }
            }),
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A fast per-thread pseudo-random number (xorshift64*); not for secrets.
pub fn random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[u32]) -> HostSet {
        HostSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    (
                        Host::new(
                            format!("10.0.0.{i}:80")
                                .parse::<std::net::SocketAddr>()
                                .unwrap(),
                        ),
                        *w,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn round_robin_alternates_and_honours_weights() {
        let set = hosts(&[1, 1]);
        let c = AtomicU64::new(0);
        let picks: Vec<_> = (0..4)
            .map(|_| set.pick(LbPolicy::RoundRobin, &c).unwrap().addr.to_string())
            .collect();
        assert_eq!(
            picks,
            ["10.0.0.0:80", "10.0.0.1:80", "10.0.0.0:80", "10.0.0.1:80"]
        );
        let set = hosts(&[3, 1]);
        let c = AtomicU64::new(0);
        let zero = (0..400)
            .filter(|_| {
                set.pick(LbPolicy::RoundRobin, &c).unwrap().addr.to_string() == "10.0.0.0:80"
            })
            .count();
        assert_eq!(zero, 300);
    }

    #[test]
    fn least_request_prefers_idle_host() {
        let set = hosts(&[1, 1]);
        set.hosts[0].rq_active.set(10);
        let c = AtomicU64::new(0);
        for _ in 0..50 {
            assert_eq!(
                set.pick(LbPolicy::LeastRequest, &c)
                    .unwrap()
                    .addr
                    .to_string(),
                "10.0.0.1:80"
            );
        }
    }

    #[test]
    fn random_spreads() {
        let set = hosts(&[1, 1, 1, 1]);
        let c = AtomicU64::new(0);
        let mut seen = [0; 4];
        for _ in 0..4000 {
            let h = set.pick(LbPolicy::Random, &c).unwrap();
            seen[set.hosts.iter().position(|x| Arc::ptr_eq(x, h)).unwrap()] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }
}
