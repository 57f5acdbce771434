//! The config directory: load every YAML under it, keep the last good version
//! of any resource that turns bad, and watch for edits (polled, debounced like
//! Istio's 100 ms push debounce).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use api::{ConfigError, Resource};

/// Loaded config plus what went wrong loading it.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub errors: Vec<ConfigError>,
    /// Resources served from their last good version because the new one is bad.
    pub kept: Vec<String>,
}

/// Loads the directory and remembers the last good version of each resource.
#[derive(Debug)]
pub struct ConfigStore {
    dir: PathBuf,
    last_good: HashMap<String, Resource>,
}

impl ConfigStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ConfigStore {
            dir: dir.into(),
            last_good: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Load everything. A resource whose new version fails keeps its last good
    /// one; a resource deleted from the files is gone.
    pub fn load(&mut self) -> Loaded {
        let (mut resources, errors) = api::load::load_path(&self.dir);
        let mut kept = Vec::new();
        for e in &errors {
            let (Some(kind), Some(name)) = (&e.kind, &e.name) else {
                continue;
            };
            let ns = e.namespace.as_deref().unwrap_or("default");
            let key = format!("{kind}/{ns}/{name}");
            if resources.iter().any(|r| r.key() == key) {
                continue;
            }
            if let Some(good) = self.last_good.get(&key) {
                kept.push(key);
                resources.push(good.clone());
            }
        }
        for e in &errors {
            tracing::warn!("{e}");
        }
        self.last_good = resources.iter().map(|r| (r.key(), r.clone())).collect();
        Loaded {
            resources,
            errors,
            kept,
        }
    }
}

/// A cheap fingerprint of the directory: path → (modified, length).
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Option<SystemTime>, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            // A single file, or gone.
            if let Ok(m) = std::fs::metadata(&d) {
                out.insert(d.clone(), (m.modified().ok(), m.len()));
            }
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.insert(path, (meta.modified().ok(), meta.len()));
            }
        }
    }
    out
}

/// Wait for the directory to change and then settle for `debounce`.
pub async fn changed(
    dir: &Path,
    since: &mut BTreeMap<PathBuf, (Option<SystemTime>, u64)>,
    debounce: Duration,
) {
    let poll = Duration::from_millis(50).min(debounce);
    loop {
        tokio::time::sleep(poll).await;
        let now = fingerprint(dir);
        if now != *since {
            // Debounce: wait until nothing changed for `debounce`.
            let mut settled = now;
            loop {
                tokio::time::sleep(debounce).await;
                let again = fingerprint(dir);
                if again == settled {
                    break;
                }
                settled = again;
            }
            *since = settled;
            return;
        }
    }
}
