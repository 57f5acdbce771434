//! Fuzzes the loader, validation and analysis with arbitrary bytes: no
//! panic, bounded time, and every error located inside the input.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    for allow_unknown in [false, true] {
        let loaded = api::load::load_bytes_with(
            Path::new("fuzz.yaml"),
            data,
            api::load::Options { allow_unknown },
        );
        for e in loaded.errors.iter().chain(&loaded.warnings) {
            assert!(e.line >= 1 && e.line <= lines + 1, "{e}");
            assert!(e.column >= 1, "{e}");
            let _ = e.to_string();
        }
        let v = api::validation::validate_all(&loaded.resources);
        let _ = v.errors.len() + v.warnings.len();
        let messages = api::analysis::analyze(&loaded.resources, &api::analysis::Options::default());
        for m in messages {
            let _ = m.to_string();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = api::mesh_config::parse_mesh_config(Path::new("mesh.yaml"), text);
    }
});
