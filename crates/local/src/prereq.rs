//! What `halyard up` needs on the machine, checked before it touches
//! anything: the programs it runs (found on PATH) and the Debian package of each.

use crate::RuntimeError;

/// (program, Debian package) for everything the runtime execs.
pub const PROGRAMS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
    ("setpriv", "util-linux"),
];

/// The first missing program, as a one-line error naming its package.
pub fn check() -> Result<(), RuntimeError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in PROGRAMS {
        if !on_path(&path, program) {
            return Err(RuntimeError::Missing { program, package });
        }
    }
    Ok(())
}

fn on_path(path: &std::ffi::OsStr, program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_a_path() {
        assert!(on_path(std::ffi::OsStr::new("/usr/bin:/bin"), "sh"));
        assert!(!on_path(std::ffi::OsStr::new("/nonexistent"), "sh"));
        let e = RuntimeError::Missing {
            program: "iptables-save",
            package: "iptables",
        };
        assert_eq!(
            e.to_string(),
            "halyard up needs `iptables-save`, which is not on PATH: install it with `apt-get install iptables` (or run scripts/demo.sh); nothing was started"
        );
    }
}
