//! Everything the pilot's golden tests say it emits (crates/pilot/tests/
//! golden/*/expected.json: routing, Sidecar scoping, every mTLS mode,
//! DestinationRule TLS, auto-mTLS) is config our proxy runs: not one
//! resource is refused. A pilot feature our proxy lacks fails here, with
//! the field path, before any mesh does.

use std::path::Path;

#[test]
fn every_pilot_golden_is_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pilot/tests/golden");
    let mut checked = 0;
    let mut refused = Vec::new();
    for case in std::fs::read_dir(&root).expect("pilot goldens").flatten() {
        let file = case.path().join("expected.json");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let dump: serde_json::Value = serde_json::from_str(&text).expect("golden JSON");
        for (kind, name, result) in proxy::config::check_dump(&dump) {
            checked += 1;
            if let Err(e) = result {
                refused.push(format!("{}: {kind} {name}: {e}", file.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} resources found under {}",
        root.display()
    );
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}
