//! Envoy's priority levels and locality-weighted balancing: the routable
//! view of a cluster, built whenever its membership or an ejection changes
//! (never per request), then picked from without locks or allocation.
//!
//! Each level's health is `min(100, overprovisioning × healthy / total)`;
//! traffic goes to level 0 up to its health and spills to the next levels in
//! order, normalised when the health of all levels sums below 100. A level
//! is in panic (balances over all its hosts) only when that sum is below 100
//! and its healthy share is under `healthy_panic_threshold`. With
//! `locality_weighted_lb_config`, a level first picks a locality by its
//! weight times its own health, then a host there by the cluster's policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::cluster::LbPolicy;
use crate::config::endpoint::{Health, Locality};
use crate::upstream::host::Host;
use crate::upstream::lb::{HostSet, random};

/// Where a member sits: its priority level, locality and locality weight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub priority: u32,
    pub locality: Locality,
    /// Unset is 0: such a locality gets no traffic under locality weighting.
    pub locality_weight: u32,
}

/// How a cluster balances across its levels and localities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balancing {
    pub policy: LbPolicy,
    /// Percent; 0 disables panic mode.
    pub panic_threshold: u32,
    /// Percent (Envoy's default 140).
    pub overprovisioning_factor: u32,
    pub locality_weighted: bool,
}

impl Default for Balancing {
    fn default() -> Self {
        Balancing {
            policy: LbPolicy::RoundRobin,
            panic_threshold: 50,
            overprovisioning_factor: crate::config::endpoint::DEFAULT_OVERPROVISIONING_FACTOR,
            locality_weighted: false,
        }
    }
}

/// Effective locality weights are kept as integers in thousandths.
const WEIGHT_SCALE: f64 = 1000.0;

/// One priority level as the load balancer picks from it.
#[derive(Debug, Default)]
pub struct Level {
    /// Its healthy hosts (all of its hosts in panic), with the policy's
    /// consistent-hash table when it has one.
    pub hosts: HostSet,
    /// Health in percent (with the overprovisioning factor, capped at 100).
    pub health: u32,
    pub panic: bool,
    /// Locality weighting: each locality's healthy hosts and the cumulative
    /// effective weights to choose among them (empty: pick from `hosts`).
    localities: Vec<HostSet>,
    locality_cumulative: Vec<u64>,
    locality_counter: AtomicU64,
}

impl Level {
    /// A host of this level; `hash` for consistent-hash tables.
    fn pick(&self, policy: LbPolicy, counter: &AtomicU64, hash: Option<u64>) -> Option<&Arc<Host>> {
        if hash.is_none()
            && let Some(total) = self.locality_cumulative.last().copied()
            && total > 0
        {
            // A low-discrepancy (golden-ratio) walk over the weights: each
            // locality gets its share, interleaved, like Envoy's EDF schedule.
            let n = self.locality_counter.fetch_add(1, Ordering::Relaxed);
            let point = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let v = ((u128::from(point) * u128::from(total)) >> 64) as u64;
            let i = self.locality_cumulative.partition_point(|c| *c <= v);
            if let Some(set) = self.localities.get(i) {
                return set.pick(policy, counter);
            }
        }
        self.hosts.pick_hashed(policy, counter, hash)
    }
}

/// The routable view of a cluster: its levels and the load each gets.
#[derive(Debug, Default)]
pub struct PrioritySet {
    pub levels: Vec<Level>,
    /// Envoy's healthy priority load, cumulative in percent (ends at 100).
    cumulative: Vec<u32>,
}

impl PrioritySet {
    /// Build the view from the members (host, weight, EDS health) and their
    /// placement (same order).
    pub fn build(
        members: &[(Arc<Host>, u32, Health)],
        placement: &[Placement],
        b: Balancing,
    ) -> PrioritySet {
        let levels_n = placement
            .iter()
            .take(members.len())
            .map(|p| p.priority as usize + 1)
            .max()
            .unwrap_or(usize::from(!members.is_empty()));
        let at = |i: usize| placement.get(i).map_or(0, |p| p.priority as usize);
        let factor = u64::from(b.overprovisioning_factor);
        let mut counts = vec![(0u64, 0u64); levels_n];
        for (i, (h, _, health)) in members.iter().enumerate() {
            let c = &mut counts[at(i)];
            c.0 += 1;
            if routable(h, *health) {
                c.1 += 1;
            }
        }
        let health: Vec<u32> = counts
            .iter()
            .map(|(total, healthy)| match total {
                0 => 0,
                t => (factor * healthy / t).min(100) as u32,
            })
            .collect();
        let total_health = health.iter().sum::<u32>().min(100);
        let cumulative = cumulative_load(&health, total_health);
        let mut levels = Vec::with_capacity(levels_n);
        for (p, &(total, healthy)) in counts.iter().enumerate() {
            let panic = total_health < 100
                && b.panic_threshold > 0
                && (healthy * 100) < u64::from(b.panic_threshold) * total;
            let in_level = || members.iter().enumerate().filter(move |(i, _)| at(*i) == p);
            let hosts: Vec<(Arc<Host>, u32)> = in_level()
                .filter(|(_, (h, _, health))| panic || routable(h, *health))
                .map(|(_, (h, w, _))| (h.clone(), *w))
                .collect();
            let (localities, locality_cumulative) = if b.locality_weighted && !panic {
                locality_sets(members, placement, p, at, b)
            } else {
                (Vec::new(), Vec::new())
            };
            levels.push(Level {
                hosts: HostSet::for_policy(hosts, b.policy),
                health: health[p],
                panic,
                localities,
                locality_cumulative,
                locality_counter: AtomicU64::new(0),
            });
        }
        PrioritySet { levels, cumulative }
    }

    /// Every host the load balancer may pick now, over all levels.
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.levels.iter().flat_map(|l| l.hosts.hosts.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(|l| l.hosts.is_empty())
    }

    /// Each level's share of traffic in percent.
    pub fn load(&self) -> Vec<u32> {
        let mut prev = 0;
        self.cumulative
            .iter()
            .map(|c| {
                let l = c - prev;
                prev = *c;
                l
            })
            .collect()
    }

    /// The level for a value (Envoy's `choosePriority`: `v % 100 + 1`
    /// against the cumulative load).
    fn level_for(&self, v: u64) -> Option<&Level> {
        if self.levels.len() == 1 {
            return self.levels.first();
        }
        let v = (v % 100) as u32 + 1;
        let i = self.cumulative.partition_point(|c| *c < v);
        self.levels.get(i.min(self.levels.len().saturating_sub(1)))
    }

    /// Pick a host per `policy`; `counter` is the cluster's round-robin state.
    pub fn pick(&self, policy: LbPolicy, counter: &AtomicU64) -> Option<&Arc<Host>> {
        self.pick_hashed(policy, counter, None)
    }

    /// Pick a host for a request whose hash policy produced `hash` (the
    /// level is chosen by the hash too, as Envoy's hashing balancers do).
    pub fn pick_hashed(
        &self,
        policy: LbPolicy,
        counter: &AtomicU64,
        hash: Option<u64>,
    ) -> Option<&Arc<Host>> {
        let v = match (self.levels.len(), hash) {
            (0 | 1, _) => 0,
            (_, Some(h)) => h,
            _ => random(),
        };
        self.level_for(v)?.pick(policy, counter, hash)
    }

    /// Pick with the levels in `excluded` (a bit per priority) given no
    /// health, the load recomputed over the rest (Envoy's
    /// `previous_priorities` retry priority). When nothing is left, the
    /// original load applies.
    pub fn pick_excluding(
        &self,
        policy: LbPolicy,
        counter: &AtomicU64,
        hash: Option<u64>,
        excluded: u128,
    ) -> Option<&Arc<Host>> {
        let kept = |p: usize| p >= 128 || excluded & (1u128 << p) == 0;
        let health = |p: usize| if kept(p) { self.levels[p].health } else { 0 };
        let total = (0..self.levels.len()).map(health).sum::<u32>().min(100);
        if excluded == 0 || total == 0 {
            return self.pick_hashed(policy, counter, hash);
        }
        // The same distribution as `cumulative_load`, without allocating.
        let share = |p: usize| health(p) * 100 / total;
        let mut remaining = 100u32;
        for p in 0..self.levels.len() {
            remaining -= share(p).min(remaining);
        }
        let first = (0..self.levels.len()).find(|p| health(*p) > 0);
        let v = (hash.unwrap_or_else(random) % 100) as u32 + 1;
        let (mut acc, mut left) = (0u32, 100u32);
        for p in 0..self.levels.len() {
            let mut load = share(p).min(left);
            left -= load;
            if Some(p) == first {
                load += remaining;
            }
            acc += load;
            if v <= acc {
                return self.levels[p].pick(policy, counter, hash);
            }
        }
        self.pick_hashed(policy, counter, hash)
    }
}

fn routable(h: &Host, health: Health) -> bool {
    health.routable() && !h.outlier.is_ejected()
}

/// Envoy's `distributeLoad`: each level gets `health × 100 / total` (capped
/// by what is left), the rounding remainder goes to the first level with
/// health; with no health at all, level 0 gets everything.
fn cumulative_load(health: &[u32], total: u32) -> Vec<u32> {
    let mut load = vec![0u32; health.len()];
    let mut left = 100u32;
    for (l, h) in load.iter_mut().zip(health) {
        *l = (h * 100).checked_div(total).unwrap_or(0).min(left);
        left -= *l;
    }
    // The rounding remainder (or, with no health at all, everything) goes
    // to the first level with health, else level 0.
    let first = health.iter().position(|h| *h > 0).unwrap_or(0);
    if let Some(l) = load.get_mut(first) {
        *l += left;
    }
    let mut acc = 0;
    load.iter()
        .map(|l| {
            acc += l;
            acc
        })
        .collect()
}

/// The healthy hosts of each locality of level `p`, and the cumulative
/// effective weights: weight × min(1, overprovisioning × healthy / total).
fn locality_sets(
    members: &[(Arc<Host>, u32, Health)],
    placement: &[Placement],
    p: usize,
    at: impl Fn(usize) -> usize,
    b: Balancing,
) -> (Vec<HostSet>, Vec<u64>) {
    // (placement, its healthy hosts, its host count), in order of appearance.
    type Entry<'a> = (&'a Placement, Vec<(Arc<Host>, u32)>, u64);
    let mut order: Vec<Entry<'_>> = Vec::new();
    for (i, (h, w, health)) in members.iter().enumerate() {
        if at(i) != p {
            continue;
        }
        let Some(place) = placement.get(i) else {
            continue;
        };
        let slot = match order
            .iter()
            .position(|(l, _, _)| l.locality == place.locality)
        {
            Some(s) => s,
            None => {
                order.push((place, Vec::new(), 0));
                order.len() - 1
            }
        };
        let entry = &mut order[slot];
        entry.2 += 1;
        if routable(h, *health) {
            entry.1.push((h.clone(), *w));
        }
    }
    let factor = f64::from(b.overprovisioning_factor) / 100.0;
    let mut sets = Vec::new();
    let mut cumulative = Vec::new();
    let mut acc = 0u64;
    for (place, hosts, total) in order {
        let availability = (factor * hosts.len() as f64 / total as f64).min(1.0);
        let weight = (f64::from(place.locality_weight) * availability * WEIGHT_SCALE) as u64;
        if weight == 0 || hosts.is_empty() {
            continue;
        }
        acc += weight;
        cumulative.push(acc);
        sets.push(HostSet::for_policy(hosts, b.policy));
    }
    (sets, cumulative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize) -> (Arc<Host>, u32, Health) {
        let addr: std::net::SocketAddr = format!("10.0.0.{i}:80").parse().unwrap();
        (Host::new(addr), 1, Health::Healthy)
    }

    fn place(priority: u32, zone: &str, weight: u32) -> Placement {
        Placement {
            priority,
            locality: Locality {
                region: "r".into(),
                zone: zone.into(),
                sub_zone: String::new(),
            },
            locality_weight: weight,
        }
    }

    /// Hosts per level, the first `unhealthy[p]` of each level unhealthy.
    fn set(per_level: &[usize], unhealthy: &[usize], b: Balancing) -> PrioritySet {
        let mut members = Vec::new();
        let mut placement = Vec::new();
        for (p, n) in per_level.iter().enumerate() {
            for k in 0..*n {
                let mut m = member(members.len());
                if k < unhealthy[p] {
                    m.2 = Health::Unhealthy;
                }
                members.push(m);
                placement.push(place(p as u32, "a", 1));
            }
        }
        PrioritySet::build(&members, &placement, b)
    }

    #[test]
    fn all_healthy_goes_to_priority_zero() {
        let s = set(&[2, 2], &[0, 0], Balancing::default());
        assert_eq!(s.load(), [100, 0]);
        let c = AtomicU64::new(0);
        for _ in 0..100 {
            let h = s.pick(LbPolicy::Random, &c).unwrap();
            assert!(s.levels[0].hosts.hosts.iter().any(|x| Arc::ptr_eq(x, h)));
        }
    }

    #[test]
    fn spills_by_the_overprovisioning_factor() {
        // 1 of 2 healthy: 140 × 1/2 = 70 to P0, 30 to P1.
        let s = set(&[2, 2], &[1, 0], Balancing::default());
        assert_eq!(s.load(), [70, 30]);
        assert!(!s.levels[0].panic);
        // 1 of 4 healthy: 35 to P0; P1 65.
        let s = set(&[4, 2], &[3, 0], Balancing::default());
        assert_eq!(s.load(), [35, 65]);
        // Three levels, P0 dead, P1 half: 0 / 70 / 30.
        let s = set(&[1, 2, 1], &[1, 1, 0], Balancing::default());
        assert_eq!(s.load(), [0, 70, 30]);
    }

    #[test]
    fn normalises_and_panics_below_the_threshold() {
        // P0 1/4 (35), P1 1/4 (35): total 70, normalised 50/50; both under
        // 50% healthy, so both in panic.
        let s = set(&[4, 4], &[3, 3], Balancing::default());
        assert_eq!(s.load(), [50, 50]);
        assert!(s.levels[0].panic && s.levels[1].panic);
        assert_eq!(s.levels[0].hosts.hosts.len(), 4);
        // Nothing healthy: everything to P0 in panic.
        let s = set(&[2, 2], &[2, 2], Balancing::default());
        assert_eq!(s.load(), [100, 0]);
        assert!(s.levels[0].panic);
        // Threshold 0: no panic, nothing to pick.
        let b = Balancing {
            panic_threshold: 0,
            ..Balancing::default()
        };
        let s = set(&[2], &[2], b);
        assert!(s.pick(LbPolicy::RoundRobin, &AtomicU64::new(0)).is_none());
    }

    #[test]
    fn locality_weights_split_traffic() {
        let b = Balancing {
            locality_weighted: true,
            ..Balancing::default()
        };
        let members: Vec<_> = (0..4).map(member).collect();
        let placement = vec![
            place(0, "a", 80),
            place(0, "a", 80),
            place(0, "b", 20),
            place(0, "b", 20),
        ];
        let s = PrioritySet::build(&members, &placement, b);
        let c = AtomicU64::new(0);
        let mut in_a = 0;
        for _ in 0..1000 {
            let h = s.pick(LbPolicy::RoundRobin, &c).unwrap();
            if Arc::ptr_eq(h, &members[0].0) || Arc::ptr_eq(h, &members[1].0) {
                in_a += 1;
            }
        }
        assert!((790..=810).contains(&in_a), "{in_a}");
        // Half of a's hosts down: a's weight 80 × min(1, 1.4 × 0.5) = 56.
        let mut members = members;
        members[0].2 = Health::Unhealthy;
        let s = PrioritySet::build(&members, &placement, b);
        let mut in_a = 0;
        for _ in 0..1000 {
            if Arc::ptr_eq(s.pick(LbPolicy::RoundRobin, &c).unwrap(), &members[1].0) {
                in_a += 1;
            }
        }
        // 56 / 76 of the traffic.
        assert!((727..=747).contains(&in_a), "{in_a}");
    }

    #[test]
    fn excluding_tried_priorities_moves_the_load() {
        let s = set(&[2, 2, 2], &[0, 0, 0], Balancing::default());
        let c = AtomicU64::new(0);
        for _ in 0..50 {
            let h = s.pick_excluding(LbPolicy::Random, &c, None, 1).unwrap();
            assert!(s.levels[1].hosts.hosts.iter().any(|x| Arc::ptr_eq(x, h)));
            let h = s.pick_excluding(LbPolicy::Random, &c, None, 0b11).unwrap();
            assert!(s.levels[2].hosts.hosts.iter().any(|x| Arc::ptr_eq(x, h)));
            // Everything excluded: the original load (P0).
            let h = s.pick_excluding(LbPolicy::Random, &c, None, 0b111).unwrap();
            assert!(s.levels[0].hosts.hosts.iter().any(|x| Arc::ptr_eq(x, h)));
        }
    }
}
