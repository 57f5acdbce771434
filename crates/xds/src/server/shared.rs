//! What streams share so that per-proxy state stays small: the difference
//! between two versions of a type's resources (computed once, however many
//! streams move from one to the other), and interned sets of subscribed
//! names (proxies with the same config subscribe to the same names).

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use super::{Resource, ResourceMap};

/// Resources in `new` that are absent from `old` or differ in version, and
/// names in `old` that `new` lacks.
#[derive(Debug, Default)]
pub(crate) struct Diff {
    pub changed: Vec<Arc<Resource>>,
    pub removed: Vec<Arc<str>>,
}

impl Diff {
    fn between(old: &ResourceMap, new: &ResourceMap) -> Diff {
        let mut diff = Diff::default();
        let mut a = old.iter().peekable();
        let mut b = new.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((name, _)), None) => {
                    diff.removed.push((*name).clone());
                    a.next();
                }
                (None, Some((_, r))) => {
                    diff.changed.push((*r).clone());
                    b.next();
                }
                (Some((na, ra)), Some((nb, rb))) => match na.cmp(nb) {
                    std::cmp::Ordering::Less => {
                        diff.removed.push((*na).clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        diff.changed.push((*rb).clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(ra, rb) && ra.version != rb.version {
                            diff.changed.push((*rb).clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        diff
    }
}

type DiffKey = (usize, usize);

/// A memoised diff and the two maps it is between (held weakly).
type DiffEntry = (Weak<ResourceMap>, Weak<ResourceMap>, Arc<Diff>);

/// Diffs by (old, new) resource map, kept while both maps are alive.
#[derive(Default)]
pub(crate) struct DiffCache {
    entries: Mutex<HashMap<DiffKey, DiffEntry>>,
}

/// Diffs kept before dead ones are swept.
const DIFFS_KEPT: usize = 512;

impl DiffCache {
    pub fn diff(&self, old: &Arc<ResourceMap>, new: &Arc<ResourceMap>) -> Arc<Diff> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((o, n, diff)) = entries.get(&key)
                && o.as_ptr() == Arc::as_ptr(old)
                && n.as_ptr() == Arc::as_ptr(new)
                && o.strong_count() > 0
                && n.strong_count() > 0
            {
                return diff.clone();
            }
        }
        let diff = Arc::new(Diff::between(old, new));
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= DIFFS_KEPT {
            entries.retain(|_, (o, n, _)| o.strong_count() > 0 && n.strong_count() > 0);
            if entries.len() >= DIFFS_KEPT {
                entries.clear();
            }
        }
        entries.insert(
            key,
            (Arc::downgrade(old), Arc::downgrade(new), diff.clone()),
        );
        diff
    }
}

/// A set of resource names.
pub(crate) type NameSet = BTreeSet<Arc<str>>;

/// Equal name sets, shared: one copy per distinct set among live streams.
#[derive(Default)]
pub(crate) struct NameSets {
    by_hash: Mutex<NameSetTable>,
}

#[derive(Default)]
struct NameSetTable {
    sets: HashMap<u64, Vec<Weak<NameSet>>>,
    inserts: usize,
}

impl NameSets {
    /// The shared copy of `set` (it becomes the shared copy if new).
    pub fn intern(&self, set: Arc<NameSet>) -> Arc<NameSet> {
        if set.is_empty() {
            return set;
        }
        let mut h = DefaultHasher::new();
        for name in set.iter() {
            name.hash(&mut h);
        }
        let hash = h.finish();
        let mut table = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = table.sets.entry(hash).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        for weak in bucket.iter() {
            if let Some(existing) = weak.upgrade()
                && (Arc::ptr_eq(&existing, &set) || *existing == *set)
            {
                return existing;
            }
        }
        bucket.push(Arc::downgrade(&set));
        table.inserts += 1;
        if table.inserts.is_multiple_of(1024) {
            table.sets.retain(|_, b| {
                b.retain(|w| w.strong_count() > 0);
                !b.is_empty()
            });
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &str)]) -> Arc<ResourceMap> {
        Arc::new(
            items
                .iter()
                .map(|(n, v)| {
                    let r = Resource::with_version(*n, *v, prost_types::Any::default());
                    (r.name.clone(), Arc::new(r))
                })
                .collect(),
        )
    }

    #[test]
    fn diff_lists_changed_added_and_removed() {
        let old = map(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let new = map(&[("b", "2"), ("c", "1"), ("d", "1")]);
        let cache = DiffCache::default();
        let d = cache.diff(&old, &new);
        let changed: Vec<&str> = d.changed.iter().map(|r| &*r.name).collect();
        let removed: Vec<&str> = d.removed.iter().map(|n| &**n).collect();
        assert_eq!(changed, ["b", "d"]);
        assert_eq!(removed, ["a"]);
        assert!(Arc::ptr_eq(&d, &cache.diff(&old, &new)), "computed once");
        assert!(cache.diff(&new, &new).changed.is_empty());
    }

    #[test]
    fn equal_name_sets_are_shared() {
        let sets = NameSets::default();
        let set = |names: &[&str]| Arc::new(names.iter().map(|n| Arc::from(*n)).collect());
        let a = sets.intern(set(&["x", "y"]));
        let b = sets.intern(set(&["x", "y"]));
        let c = sets.intern(set(&["x"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let d = sets.intern(set(&["x", "y"]));
        assert_eq!(d.len(), 2);
    }
}
