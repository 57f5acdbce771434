//! Fuzzes the loader, validation and analysis with arbitrary bytes: no
//! panic, bounded time, and every error located inside the input.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Line breaks as YAML counts them: `\n`, `\r\n`, lone `\r`, NEL, LS, PS.
fn line_breaks(data: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => n += 1,
            b'\r' if data.get(i + 1) != Some(&b'\n') => n += 1,
            0xc2 if data.get(i + 1) == Some(&0x85) => n += 1,
            0xe2 if data.get(i + 1) == Some(&0x80) && matches!(data.get(i + 2), Some(0xa8 | 0xa9)) => n += 1,
            _ => {}
        }
        i += 1;
    }
    n
}

fuzz_target!(|data: &[u8]| {
    let lines = line_breaks(data) + 1;
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
