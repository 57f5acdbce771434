//! User errors are one clear line on stderr with a non-zero exit, never a
//! backtrace; the fresh-machine script's dry run works.

use std::process::{Command, Output};

fn halyard(args: &[&str], path: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_halyard"));
    c.args(args)
        .env("HALYARD_LOG", "error")
        .env("RUST_BACKTRACE", "1");
    if let Some(p) = path {
        c.env("PATH", p);
    }
    c.output().expect("run halyard")
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );
    err
}

#[test]
fn missing_config_dir() {
    let err = one_line_error(&halyard(&["up", "/nonexistent/dir"], None));
    assert!(
        err.contains("/nonexistent/dir") && err.contains("nothing was started"),
        "{err}"
    );
}

#[test]
fn bad_flag() {
    let out = halyard(&["up", "--no-such-flag"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = one_line_error(&out);
    assert!(
        err.contains("--no-such-flag") && err.contains("--help"),
        "{err}"
    );
}

#[test]
fn missing_program_names_its_package() {
    let dir = tempfile::tempdir().expect("tmp");
    let empty = tempfile::tempdir().expect("path");
    let err = one_line_error(&halyard(
        &["up", dir.path().to_str().expect("utf8")],
        Some(empty.path().to_str().expect("utf8")),
    ));
    assert!(
        err.contains("`ip`") && err.contains("apt-get install iproute2"),
        "{err}"
    );
}

#[test]
fn status_without_a_mesh() {
    let state = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args([
            "status",
            "--state-dir",
            state.path().to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    one_line_error(&out);
}

#[test]
fn demo_script_dry_run() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/demo.sh");
    let out = Command::new("bash")
        .args([script, "--dry-run", "--detach"])
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("would run: cargo build --release -p halyard"),
        "{text}"
    );
    assert!(
        text.contains("halyard up examples/bookinfo --detach"),
        "{text}"
    );
}

#[test]
fn missing_required_flag_is_named() {
    let err = one_line_error(&halyard(&["token", "--key", "k"], None));
    assert!(err.contains("--namespace"), "{err}");
    let err = one_line_error(&halyard(
        &["pilot", "--config", "/tmp", "--ca-dir", "/tmp/x"],
        None,
    ));
    assert!(err.contains("--token-key"), "{err}");
}

#[test]
fn token_keys_are_created_once_and_issue_tokens() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("sa.key");
    let key = key.to_str().expect("utf8");
    let out = halyard(&["token", "--key", key, "--new-key"], None);
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(format!("{key}.pub")).expect("public key");
    let out = halyard(
        &[
            "token",
            "--key",
            key,
            "--namespace",
            "default",
            "--service-account",
            "sleep",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).expect("utf8");
    let verifier = identity::LocalTokens::new(&public).expect("verifier");
    use identity::TokenVerifier;
    let sa = verifier.verify(token.trim()).expect("a valid token");
    assert_eq!(
        (sa.namespace.as_str(), sa.name.as_str()),
        ("default", "sleep")
    );
    // Never overwritten.
    let err = one_line_error(&halyard(&["token", "--key", key, "--new-key"], None));
    assert!(err.contains("sa.key") && err.contains("exists"), "{err}");
    // A pilot whose token key is unreadable stops with the file named.
    let err = one_line_error(&halyard(
        &[
            "pilot",
            "--config",
            dir.path().to_str().expect("utf8"),
            "--ca-dir",
            dir.path().join("ca").to_str().expect("utf8"),
            "--token-key",
            "/nonexistent/sa.pub",
            "--xds",
            "127.0.0.1:0",
            "--debug",
            "127.0.0.1:0",
            "--secure-xds",
            "127.0.0.1:0",
        ],
        None,
    ));
    assert!(err.contains("/nonexistent/sa.pub"), "{err}");
}
