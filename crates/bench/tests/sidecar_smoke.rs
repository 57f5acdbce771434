//! The data-plane benchmark's smoke run (`halyard-bench sidecar --smoke`: 2 s
//! per mode, one round, 16 connections, HTTP/1.1): every mode must come up,
//! answer, pass the no-bypass counter check and leave a report. Figures are
//! not judged. Root only (network namespaces); skipped otherwise, unless CI is
//! set. The `halyard` binary must already be built next to this test's target
//! dir (scripts/test.sh runs `cargo build --workspace --all-targets` first).

use std::path::PathBuf;
use std::process::Command;

/// `halyard down` for the smoke's prefix even if the run panics or fails.
struct Cleanup {
    halyard: PathBuf,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The bench tears each mesh down itself; this covers a crash mid-run
        // (its state dirs are gone then, so sweep by prefix via a fresh state dir).
        let state = std::env::temp_dir().join(format!("{}-sweep", self.name));
        let _ = Command::new(&self.halyard)
            .args(["down", "--name", &self.name])
            .arg("--state-dir")
            .arg(&state)
            .status();
        let _ = std::fs::remove_dir_all(state);
    }
}

fn leftovers(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// target/<profile>/halyard: this test runs from target/<profile>/deps/.
fn halyard_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("halyard")
}

#[test]
fn sidecar_smoke_all_modes_report() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the sidecar smoke benchmark needs root and CI is set"
        );
        eprintln!("skipped: the sidecar smoke benchmark needs root (network namespaces)");
        return;
    }
    let halyard = halyard_bin();
    assert!(
        halyard.is_file(),
        "{} missing: build the workspace first (cargo build --workspace --all-targets)",
        halyard.display()
    );
    let name = format!("hbt{}", std::process::id() % 100_000);
    let _cleanup = Cleanup {
        halyard: halyard.clone(),
        name: name.clone(),
    };
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_halyard-bench"))
        .args(["sidecar", "--smoke", "--name", &name])
        .arg("--halyard")
        .arg(&halyard)
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run halyard-bench");
    assert!(
        status.success(),
        "halyard-bench sidecar --smoke failed: {status}"
    );
    let json = std::fs::read_to_string(out.path().join("sidecar-smoke.json")).expect("json");
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "one run per mode");
    for r in runs {
        let mode = r["mode"].as_str().unwrap_or("?");
        assert!(r["open"]["ok"].as_u64() > Some(0), "{mode}: no answers");
        assert_eq!(
            r["checks"].as_array().map(Vec::len),
            Some(0),
            "{mode}: {}",
            r["checks"]
        );
        let sidecars = r["sidecars"].as_array().expect("sidecars");
        assert_eq!(
            sidecars.len(),
            if mode == "direct" { 0 } else { 2 },
            "{mode}"
        );
        for s in sidecars {
            assert_eq!(s["rq_open"], r["open"]["sent"], "{mode}: {s}");
            assert!(s["rss_idle_kib"].as_u64() > Some(0), "{mode}: {s}");
        }
    }
    assert!(report["summary"][0]["halyard_over_envoy"]["max_rps"].is_number());
    assert!(out.path().join("sidecar-smoke.md").is_file());
    assert!(out.path().join("sidecar-smoke.svg").is_file());
    drop(_cleanup);
    assert_eq!(
        leftovers(&name),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

/// `--mtls --smoke`: the static pair plaintext and mTLS, keep-alive and a new
/// connection per request, for both proxies; the key exchange is recorded and
/// the handshake run did one TLS handshake per request.
#[test]
fn sidecar_smoke_mtls_report() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the sidecar smoke benchmark needs root and CI is set"
        );
        eprintln!("skipped: the sidecar smoke benchmark needs root (network namespaces)");
        return;
    }
    let halyard = halyard_bin();
    assert!(halyard.is_file(), "{} missing", halyard.display());
    let name = format!("hbm{}", std::process::id() % 100_000);
    let _cleanup = Cleanup {
        halyard: halyard.clone(),
        name: name.clone(),
    };
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_halyard-bench"))
        .args(["sidecar", "--smoke", "--mtls", "--name", &name])
        .arg("--halyard")
        .arg(&halyard)
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run halyard-bench");
    assert!(
        status.success(),
        "halyard-bench sidecar --smoke --mtls failed: {status}"
    );
    let json = std::fs::read_to_string(out.path().join("sidecar-smoke.json")).expect("json");
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    // 4 cases × 2 proxies + one direct per case shape (keep-alive, per request).
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(10));
    let summary = report["summary"].as_array().expect("summary");
    for c in summary.iter().filter(|c| c["case"]["transport"] == "mtls") {
        for proxy in ["halyard", "envoy"] {
            let curves = c["modes"][proxy]["curves"].as_object().expect("curves");
            assert!(
                curves.keys().any(|k| k.starts_with("server listener ")),
                "{proxy}: {curves:?}"
            );
            assert!(
                c["mtls_over_plaintext"][proxy]["max_rps"].is_number(),
                "{c}"
            );
        }
        if c["case"]["per_request"] == true {
            for proxy in ["halyard", "envoy"] {
                assert_eq!(
                    c["modes"][proxy]["server_handshakes_per_request_open"].as_f64(),
                    Some(1.0),
                    "{proxy}"
                );
            }
        }
    }
    drop(_cleanup);
    assert_eq!(
        leftovers(&name),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}
