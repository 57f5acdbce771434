//! Conformance against Istio's own validation test data (in /work/shared):
//! every valid document must load and validate cleanly, every invalid one
//! must be rejected, and where the file says what the error is (`_err:`),
//! ours must say the same thing in substance. Documents of kinds Halyard
//! does not model (EnvoyFilter, Telemetry, WasmPlugin, ProxyConfig) are
//! counted as out of scope.

use std::path::{Path, PathBuf};

fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!(
            "skipping: {} not found (Istio test data is not checked out)",
            p.display()
        );
        None
    }
}

/// One document of a test file: its text without the `_err` line, and the
/// expected error text if any.
struct Case {
    file: String,
    line: usize,
    text: String,
    expected: Option<String>,
}

fn cases(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut line = 1;
    for doc in text.split("\n---") {
        let start = line;
        line += doc.matches('\n').count() + 1;
        let mut expected = None;
        let mut kept = String::new();
        for l in doc.lines() {
            if let Some(rest) = l.strip_prefix("_err:") {
                let v = rest.trim().trim_matches(['\'', '"']);
                expected = Some(v.to_string());
                kept.push('\n'); // keep line numbers
            } else {
                kept.push_str(l);
                kept.push('\n');
            }
        }
        if kept.trim().is_empty() || !kept.contains("kind:") {
            continue;
        }
        out.push(Case {
            file: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            line: start,
            text: kept,
            expected,
        });
    }
    out
}

const OUT_OF_SCOPE: [&str; 4] = ["EnvoyFilter", "Telemetry", "WasmPlugin", "ProxyConfig"];

/// Whether our messages say what Istio's `_err` says: they share its field
/// name, quoted value, or most of its significant words.
fn same_substance(expected: &str, ours: &str) -> bool {
    let ours_l = ours.to_lowercase();
    let exp_l = expected.to_lowercase();
    if ours_l.contains(&exp_l) {
        return true;
    }
    // A quoted value such as "BLAH" or "MANDATORY".
    for q in expected.split('"').skip(1).step_by(2) {
        if q.len() > 1 && q != "object" && q != "integer" && q != "null" && ours.contains(q) {
            return true;
        }
    }
    let words: Vec<&str> = exp_l
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '.' || c == '[' || c == ']'))
        .filter(|w| {
            w.len() >= 4
                && ![
                    "spec", "body", "value", "should", "must", "with", "required", "invalid",
                ]
                .contains(w)
        })
        .collect();
    if words.is_empty() {
        return false;
    }
    let hits = words.iter().filter(|w| ours_l.contains(*w)).count();
    hits * 2 >= words.len()
}

#[derive(Default, Debug)]
struct Tally {
    valid: (usize, usize),
    invalid: (usize, usize),
    substance: (usize, usize),
    out_of_scope: usize,
    failures: Vec<String>,
}

fn run_suite(dir: &Path) -> Tally {
    let mut t = Tally::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let want_valid = name.ends_with("-valid.yaml");
        for c in cases(&f) {
            let kind = c
                .text
                .lines()
                .find_map(|l| l.strip_prefix("kind:"))
                .unwrap_or("")
                .trim()
                .to_string();
            if OUT_OF_SCOPE.contains(&kind.as_str()) {
                t.out_of_scope += 1;
                continue;
            }
            let padded = format!("{}{}", "\n".repeat(c.line.saturating_sub(1)), c.text);
            let (res, mut errs) = api::load::load_str(&f, &padded);
            errs.extend(api::validation::validate_all(&res).errors);
            let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
            let where_ = format!("{}:{}", c.file, c.line);
            if want_valid {
                t.valid.1 += 1;
                if msgs.is_empty() && !res.is_empty() {
                    t.valid.0 += 1;
                } else {
                    t.failures
                        .push(format!("{where_}: valid doc rejected: {msgs:?}"));
                }
            } else {
                t.invalid.1 += 1;
                if msgs.is_empty() {
                    t.failures.push(format!(
                        "{where_}: invalid doc accepted (expected {:?})",
                        c.expected
                    ));
                    continue;
                }
                t.invalid.0 += 1;
                if let Some(exp) = &c.expected {
                    t.substance.1 += 1;
                    if msgs.iter().any(|m| same_substance(exp, m)) {
                        t.substance.0 += 1;
                    } else {
                        t.failures
                            .push(format!("{where_}: expected {exp:?}, we said {msgs:?}"));
                    }
                }
            }
        }
    }
    t
}

fn check(rel: &str, floor: (usize, usize, usize)) {
    let Some(dir) = shared(rel) else { return };
    let t = run_suite(&dir);
    for f in &t.failures {
        println!("{f}");
    }
    println!(
        "{rel}: valid accepted {}/{}, invalid rejected {}/{}, same error {}/{}, out of scope {}",
        t.valid.0,
        t.valid.1,
        t.invalid.0,
        t.invalid.1,
        t.substance.0,
        t.substance.1,
        t.out_of_scope
    );
    assert!(
        t.valid.0 >= floor.0 && t.invalid.0 >= floor.1 && t.substance.0 >= floor.2,
        "{rel}: below the recorded floor {floor:?}: {t:?}"
    );
}

#[test]
fn istio_api_testdata() {
    check("istio-testdata/istio-api/tests/testdata", (20, 52, 51));
}

#[test]
fn pkg_config_validation_testdata() {
    check(
        "istio-testdata/pkg/config/validation/testdata/crds",
        (20, 53, 52),
    );
}

/// Loads (and validates) every file of a directory of Istio's sample
/// config: returns (files, files loaded cleanly, resources, validation errors).
fn load_suite(rel: &str) -> Option<(usize, usize, usize, Vec<String>)> {
    let dir = shared(rel)?;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.retain(|p| p.is_dir() || api::load::is_config_file(p));
    let (mut total, mut clean, mut resources, mut problems) = (0, 0, 0, Vec::new());
    let mut stack = files;
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
            continue;
        }
        if !api::load::is_config_file(&p) {
            continue;
        }
        total += 1;
        let (res, errs) = api::load::load_file(&p);
        if errs.is_empty() {
            clean += 1;
        } else {
            problems.extend(errs.iter().map(ToString::to_string));
        }
        problems.extend(
            api::validation::validate_all(&res)
                .errors
                .iter()
                .map(ToString::to_string),
        );
        resources += res.len();
    }
    Some((total, clean, resources, problems))
}

#[test]
fn istio_sample_config_loads() {
    for rel in [
        "istio-testdata/tests/testdata/config",
        "istio-testdata/samples/bookinfo",
    ] {
        let Some((total, clean, resources, problems)) = load_suite(rel) else {
            continue;
        };
        println!(
            "{rel}: {clean}/{total} files load, {resources} resources, {} validation errors",
            problems.len()
        );
        assert_eq!(clean, total, "{rel}: {problems:#?}");
        assert!(problems.is_empty(), "{rel}: {problems:#?}");
    }
}
