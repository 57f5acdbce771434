//! The names the mesh answers for, each with its addresses: built by the pilot
//! from its registry, swapped whole when config changes.

use std::collections::HashMap;
use std::net::IpAddr;

/// Lower-case names (no trailing dot) to addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameTable {
    names: HashMap<String, Vec<IpAddr>>,
}

impl NameTable {
    pub fn new() -> NameTable {
        NameTable::default()
    }

    /// Add `addrs` to `name` (duplicates ignored; the first definition's order
    /// is kept).
    pub fn insert(&mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        let key = normalize(name);
        if key.is_empty() {
            return;
        }
        let entry = self.names.entry(key).or_default();
        for a in addrs {
            if !entry.contains(&a) {
                entry.push(a);
            }
        }
    }

    /// The addresses of `name` (case-insensitive, trailing dot optional).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&normalize(name)).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every name, sorted (for debug output and tests).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_and_trailing_dot() {
        let mut t = NameTable::new();
        t.insert(
            "Reviews.default.svc.cluster.local",
            ["10.96.0.5".parse().expect("ip")],
        );
        t.insert(
            "reviews.default.svc.cluster.local.",
            ["10.96.0.5".parse().expect("ip")],
        );
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.lookup("REVIEWS.default.svc.cluster.local.")
                .map(<[_]>::len),
            Some(1)
        );
        assert!(t.lookup("ratings.default.svc.cluster.local").is_none());
    }
}
