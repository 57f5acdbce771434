//! The control-plane benchmark's smoke run (N=20, M=20, pilot in-process):
//! the harness must still connect, sync, see every change converge and write
//! its report. Figures are not judged; only that they exist.

use std::process::Command;

#[test]
fn pilot_smoke_run_converges_and_reports() {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_halyard-bench"))
        .args([
            "pilot",
            "--smoke",
            "--in-process",
            "--timeout",
            "30",
            "--quiet-ms",
            "300",
            "--send-timeout",
            "1",
            "--stuck",
            "3",
        ])
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run halyard-bench");
    assert!(status.success(), "halyard-bench failed: {status}");
    let json = std::fs::read_to_string(out.path().join("pilot-smoke.json")).expect("json");
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let r = &report["results"][0];
    assert_eq!(r["proxies"], 20);
    assert!(r["error"].is_null(), "{}", r["error"]);
    for phase in [
        "first_sync",
        "endpoint_change",
        "virtual_service_change",
        "burst",
    ] {
        assert_eq!(r[phase]["timed_out"], false, "{phase}: {}", r[phase]);
        assert_eq!(r[phase]["converged"], 20, "{phase}: {}", r[phase]);
    }
    assert!(r["first_sync_bytes_per_proxy"][0].as_u64() > Some(0));
    // After every edit each proxy holds what a fresh proxy gets.
    assert_eq!(r["final_check"]["proxies"], 20, "{}", r["final_check"]);
    assert_eq!(r["final_check"]["mismatched"], 0, "{}", r["final_check"]);
    assert!(r["final_check"]["resources_per_proxy"].as_f64() > Some(20.0));
    // Stuck clients did not hold the change back and were dropped.
    let stuck = &r["stuck"];
    assert_eq!(stuck["clients"], 3);
    assert_eq!(stuck["virtual_service_change"]["converged"], 20, "{stuck}");
    assert!(stuck["dropped_after_s"].as_f64().is_some(), "{stuck}");
    assert!(out.path().join("pilot-smoke.md").is_file());
    assert!(out.path().join("pilot-smoke.svg").is_file());
}
