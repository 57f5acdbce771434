//! The config directory: load every YAML under it, keep the last good version
//! of any resource that turns bad, and watch for edits (inotify, polling where
//! that is refused; debounced like Istio's 100 ms push debounce).

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
    paths: Vec<PathBuf>,
    last_good: HashMap<String, Resource>,
    /// Each file's parse, by its (modified, length, inode) when parsed: a
    /// reload parses only the files that changed.
    parsed: HashMap<PathBuf, (FileStamp, api::load::Loaded)>,
}

/// What tells that a file changed.
type FileStamp = (Option<SystemTime>, u64, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

impl ConfigStore {
    /// Load from these files or directories (a user's config, and the local
    /// runtime's generated registry).
    pub fn new(paths: Vec<PathBuf>) -> Self {
        ConfigStore {
            paths,
            last_good: HashMap::new(),
            parsed: HashMap::new(),
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Load everything. A resource whose new version fails keeps its last good
    /// one; a resource deleted from the files is gone.
    pub fn load(&mut self) -> Loaded {
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        for path in &self.paths {
            if path.is_dir() {
                let (found, e) = api::load::config_files(path);
                files.extend(found);
                errors.extend(e);
            } else {
                files.push(path.clone());
            }
        }
        let mut parsed = HashMap::with_capacity(files.len());
        let mut fresh = Vec::new();
        for file in files {
            let now = stamp(&file);
            let reuse = now.is_some()
                && self
                    .parsed
                    .get(&file)
                    .is_some_and(|(then, _)| Some(*then) == now);
            let loaded = match (reuse, self.parsed.remove(&file)) {
                (true, Some((_, loaded))) => loaded,
                _ => {
                    let loaded = api::load::load_file_with(&file, api::load::Options::default());
                    fresh.extend(loaded.resources.iter().cloned());
                    loaded
                }
            };
            resources.extend(loaded.resources.iter().cloned());
            errors.extend(loaded.errors.iter().cloned());
            if let Some(now) = now {
                parsed.insert(file, (now, loaded));
            }
        }
        self.parsed = parsed;
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
        // The last good version of every current resource: unchanged files'
        // resources are already in; deleted ones go.
        let current: std::collections::HashSet<String> =
            resources.iter().map(|r| r.key()).collect();
        self.last_good.retain(|key, _| current.contains(key));
        for r in fresh {
            self.last_good.insert(r.key(), r);
        }
        Loaded {
            resources,
            errors,
            kept,
        }
    }
}

/// What [`fingerprint`] returns.
pub type Fingerprint = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

/// Fingerprint of several paths.
pub fn fingerprint_all(paths: &[PathBuf]) -> Fingerprint {
    paths.iter().flat_map(|p| fingerprint(p)).collect()
}

/// A cheap fingerprint of the directory: path → (modified, length).
pub fn fingerprint(dir: &Path) -> Fingerprint {
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

/// Longest a stream of edits can hold a push back (Istio's PILOT_DEBOUNCE_MAX).
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(10);

/// Change notifications for the config paths: inotify (through `notify`),
/// so an edit is seen at once and nothing is polled while nothing changes.
pub struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    events: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Watcher {
    /// Watch `paths` (directories recursively). If the kernel refuses (no
    /// inotify, watch limit reached), fall back to polling.
    pub fn new(paths: &[PathBuf]) -> Watcher {
        use notify::Watcher as _;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let made = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|e| !e.kind.is_access());
            if relevant {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            for p in paths {
                w.watch(p, notify::RecursiveMode::Recursive)?;
            }
            Ok(w)
        });
        match made {
            Ok(w) => Watcher {
                inner: Some(w),
                events,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config for changes; polling instead");
                Watcher {
                    inner: None,
                    events,
                }
            }
        }
    }

    /// Wait for a notification, or for `poll` when there is no watcher.
    async fn next(&mut self, poll: Duration) {
        if self.inner.is_some() {
            if self.events.recv().await.is_none() {
                tokio::time::sleep(poll).await;
            }
        } else {
            tokio::time::sleep(poll).await;
        }
    }

    /// Istio's push debounce: return once no notification has come for
    /// `debounce` (each one restarts the wait from its own arrival, so the
    /// burst of events one edit makes costs `debounce`, not a multiple), but
    /// never later than [`DEBOUNCE_MAX`] after the first.
    async fn quiet_for(&mut self, debounce: Duration) {
        let first = tokio::time::Instant::now();
        let cap = first + DEBOUNCE_MAX.max(debounce);
        let mut deadline = (first + debounce).min(cap);
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(()) => deadline = (tokio::time::Instant::now() + debounce).min(cap),
                    None => {
                        tokio::time::sleep_until(deadline).await;
                        return;
                    }
                },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// Wait for the config to change and then settle for `debounce` (Istio's
/// push debounce: no further change for that long). A notification is
/// confirmed against the files' fingerprint, so touching a file that did not
/// change pushes nothing.
pub async fn changed(
    paths: &[PathBuf],
    since: &mut Fingerprint,
    debounce: Duration,
    watcher: &mut Watcher,
) {
    let poll = Duration::from_millis(50).min(debounce);
    loop {
        watcher.next(poll).await;
        let watched = watcher.inner.is_some();
        if watched {
            watcher.quiet_for(debounce).await;
        }
        let now = fingerprint_all(paths);
        if now == *since {
            continue;
        }
        let mut settled = now;
        if !watched {
            loop {
                tokio::time::sleep(debounce).await;
                let again = fingerprint_all(paths);
                if again == settled {
                    break;
                }
                settled = again;
            }
        }
        *since = settled;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn edits_are_seen_and_unchanged_touches_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = vec![dir.path().to_path_buf()];
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a: 1\n").expect("write");
        let mut watcher = Watcher::new(&paths);
        assert!(watcher.inner.is_some(), "inotify is available here");
        let mut since = fingerprint_all(&paths);
        let debounce = Duration::from_millis(20);

        // Reading a file is no change.
        let _ = std::fs::read(&file).expect("read");
        let quiet = tokio::time::timeout(
            Duration::from_millis(300),
            changed(&paths, &mut since, debounce, &mut watcher),
        )
        .await;
        assert!(quiet.is_err(), "a read is not a change");

        // An atomic replace (write a temporary, rename), as editors and
        // the bench do, in a new subdirectory too.
        let sub = dir.path().join("more");
        std::fs::create_dir(&sub).expect("mkdir");
        let tmp = sub.join(".b.tmp");
        std::fs::write(&tmp, "b: 2\n").expect("write");
        std::fs::rename(&tmp, sub.join("b.yaml")).expect("rename");
        tokio::time::timeout(
            Duration::from_secs(5),
            changed(&paths, &mut since, debounce, &mut watcher),
        )
        .await
        .expect("the edit is seen");
        assert!(since.contains_key(&sub.join("b.yaml")));
    }

    /// A watcher fed by hand (no inotify), for the paused clock.
    fn fed() -> (Watcher, tokio::sync::mpsc::UnboundedSender<()>) {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        (
            Watcher {
                inner: None,
                events,
            },
            tx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_runs_from_the_last_event_not_per_batch() {
        let (mut w, tx) = fed();
        let debounce = Duration::from_millis(100);
        let start = tokio::time::Instant::now();
        // One edit's events: a few within a millisecond, then one at 50 ms.
        let feeder = tokio::spawn(async move {
            tx.send(()).expect("send");
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(()).expect("send");
            tokio::time::sleep(Duration::from_millis(49)).await;
            tx.send(()).expect("send");
            tx
        });
        w.quiet_for(debounce).await;
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        let _tx = feeder.await.expect("feeder");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_of_edits_is_pushed_by_the_max() {
        let (mut w, tx) = fed();
        let start = tokio::time::Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..1000 {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        w.quiet_for(Duration::from_millis(100)).await;
        assert_eq!(start.elapsed(), DEBOUNCE_MAX);
        drop(w);
        feeder.await.expect("feeder");
    }
}
