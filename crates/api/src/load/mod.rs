//! Loading Istio and Kubernetes YAML (or JSON) from strings, files and
//! directory trees into [`Resource`]s, with every problem reported as a
//! [`ConfigError`] that points at `file:line:col`.
//!
//! Each document stands alone: a bad one is reported and skipped, the others
//! in the same file still load. Documents that are not Kubernetes objects
//! (no `apiVersion`/`kind`), kinds Halyard does not read (ConfigMap, Gateway
//! API, ...) and Istio kinds not modelled yet (WasmPlugin,
//! EnvoyFilter, Telemetry, ...) are skipped without an error.

mod document;
mod locate;
mod split;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{ConfigError, Resource};
use document::Loader;
pub use document::{NETWORKING_VERSIONS, SECURITY_VERSIONS};
pub use locate::{locate, locate_in_document, refine_positions};

/// Largest file (or string) the loader accepts.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Deepest directory nesting `load_dir` descends into.
const MAX_DIR_DEPTH: usize = 32;

/// Loader settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Unknown fields in Istio kinds become warnings (the field is ignored)
    /// instead of errors that reject the document.
    pub allow_unknown: bool,
}

/// What a load produced: resources, errors (documents rejected) and warnings
/// (documents loaded, something ignored).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl Loaded {
    fn extend(&mut self, other: Loaded) {
        self.resources.extend(other.resources);
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}

/// Loads every document of `text` (split on `---` lines; `kind: List`
/// documents yield their `items`). `file` is only used in positions.
pub fn load_str(file: &Path, text: &str) -> (Vec<Resource>, Vec<ConfigError>) {
    let l = load_str_with(file, text, Options::default());
    (l.resources, l.errors)
}

/// [`load_str`] with options.
pub fn load_str_with(file: &Path, text: &str, options: Options) -> Loaded {
    let mut loader = Loader {
        file,
        options,
        resources: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    if text.len() > MAX_FILE_BYTES {
        let msg = format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} bytes allowed",
            text.len()
        );
        loader.errors.push(ConfigError::new(file, 1, msg));
    } else {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for doc in split::split_documents(text) {
            loader.document(doc);
        }
    }
    Loaded {
        resources: loader.resources,
        errors: loader.errors,
        warnings: loader.warnings,
    }
}

/// Like [`load_str`], for raw bytes that must be UTF-8.
pub fn load_bytes(file: &Path, bytes: &[u8]) -> (Vec<Resource>, Vec<ConfigError>) {
    let l = load_bytes_with(file, bytes, Options::default());
    (l.resources, l.errors)
}

/// [`load_bytes`] with options.
pub fn load_bytes_with(file: &Path, bytes: &[u8], options: Options) -> Loaded {
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str_with(file, text, options),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let mut err = ConfigError::new(file, line, "file is not valid UTF-8");
            err.column = valid.len() - line_start + 1;
            Loaded {
                errors: vec![err],
                ..Loaded::default()
            }
        }
    }
}

/// Loads one file.
pub fn load_file(file: &Path) -> (Vec<Resource>, Vec<ConfigError>) {
    let l = load_file_with(file, Options::default());
    (l.resources, l.errors)
}

/// [`load_file`] with options.
pub fn load_file_with(file: &Path, options: Options) -> Loaded {
    match read_bounded(file) {
        Ok(bytes) => load_bytes_with(file, &bytes, options),
        Err(msg) => Loaded {
            errors: vec![ConfigError::new(file, 1, msg)],
            ..Loaded::default()
        },
    }
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file under `dir`, recursively,
/// in path order. Hidden files and directories (`.git`, `..data`) are skipped;
/// symlinks to files are followed, symlinks to directories are not.
pub fn load_dir(dir: &Path) -> (Vec<Resource>, Vec<ConfigError>) {
    let l = load_dir_with(dir, Options::default());
    (l.resources, l.errors)
}

/// [`load_dir`] with options.
pub fn load_dir_with(dir: &Path, options: Options) -> Loaded {
    let mut files = Vec::new();
    let mut out = Loaded::default();
    collect_files(dir, 0, &mut files, &mut out.errors);
    files.sort();
    for file in files {
        out.extend(load_file_with(&file, options));
    }
    out
}

/// The files [`load_dir_with`] reads under `dir`, sorted, and the errors met
/// walking it.
pub fn config_files(dir: &Path) -> (Vec<PathBuf>, Vec<ConfigError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    collect_files(dir, 0, &mut files, &mut errors);
    files.sort();
    (files, errors)
}

/// [`load_dir`] when `path` is a directory, [`load_file`] otherwise.
pub fn load_path(path: &Path) -> (Vec<Resource>, Vec<ConfigError>) {
    let l = load_path_with(path, Options::default());
    (l.resources, l.errors)
}

/// [`load_path`] with options.
pub fn load_path_with(path: &Path, options: Options) -> Loaded {
    if path.is_dir() {
        load_dir_with(path, options)
    } else {
        load_file_with(path, options)
    }
}

/// Whether `load_dir` reads this file.
pub fn is_config_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["yaml", "yml", "json"].contains(&e.to_ascii_lowercase().as_str()))
}

fn read_bounded(file: &Path) -> Result<Vec<u8>, String> {
    let f = fs::File::open(file).map_err(|e| format!("cannot read file: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is larger than the {MAX_FILE_BYTES} bytes allowed"
        ));
    }
    Ok(bytes)
}

fn collect_files(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<ConfigError>,
) {
    if depth > MAX_DIR_DEPTH {
        errors.push(ConfigError::new(
            dir,
            1,
            "directory nesting too deep; not descending",
        ));
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ConfigError::new(
                dir,
                1,
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(ConfigError::new(
                    dir,
                    1,
                    format!("cannot read directory: {e}"),
                ));
                continue;
            }
        };
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            collect_files(&path, depth + 1, files, errors);
        } else if is_config_file(&path) && (file_type.is_file() || path.is_file()) {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests;
