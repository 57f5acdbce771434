//! `halyard validate` and `halyard analyze` as a user runs them: exit codes,
//! the `file:line:col: Kind ns/name: field: message` format, JSON output,
//! `--allow-unknown`, istioctl-style analysis lines and thresholds.

use std::path::Path;
use std::process::{Command, Output};

fn halyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(args)
        .env("HALYARD_LOG", "error")
        .output()
        .expect("run halyard")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: prod}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";

const BAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: prod}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, port: {number: 70000}}\n    timeout: 1us\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  subset: []\n";

#[test]
fn validate_good_file_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "good.yaml", GOOD);
    let out = halyard(&["validate", "-f", &f]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn validate_bad_file_prints_positions_and_exits_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", GOOD);
    let bad = write(dir.path(), "bad.yaml", BAD);
    let out = halyard(&["validate", "-f", &good, "-f", &bad]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{bad}:8:51: VirtualService prod/reviews: spec.http[0].route[0].destination.port.number: port must be between 1-65535")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{bad}:9:14: VirtualService prod/reviews: spec.http[0].timeout: must be a valid duration greater than or equal to 1ms"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{bad}:16:3: DestinationRule r: spec.subset: unknown field `subset`"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("did you mean `subsets`?"), "{stdout}");
}

#[test]
fn validate_json_and_allow_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = GOOD.replace(
        "  hosts: [reviews]\n",
        "  hosts: [reviews]\n  colour: blue\n",
    );
    let f = write(dir.path(), "u.yaml", &text);
    let out = halyard(&["validate", "-f", &f, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["field"], "spec.colour");
    assert_eq!(v["problems"][0]["line"], 6);
    let out = halyard(&["validate", "-f", &f, "--allow-unknown"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("warning: "),
        "{out:?}"
    );
}

#[test]
fn validate_directory_recursively() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    write(&dir.path().join("sub"), "bad.yaml", BAD);
    let out = halyard(&["validate", "-f", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn analyze_reports_istio_codes_and_thresholds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "a.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: nowhere}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: web, port: 9080}]\n",
    );
    let out = halyard(&["analyze", &f]);
    assert_eq!(out.status.code(), Some(79), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Error [IST0101] (VirtualService default/vs {f}:1) Referenced host not found: \"nowhere\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Info [IST0118] (Service default/reviews"),
        "{stdout}"
    );
    let out = halyard(&["analyze", &f, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v.as_array()
            .is_some_and(|a| a.iter().any(|m| m["code"] == "IST0101")),
        "{v}"
    );

    let ok = write(
        dir.path(),
        "ok.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  ports: [{name: web, port: 9080}]\n",
    );
    let out = halyard(&["analyze", &ok]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = halyard(&["analyze", &ok, "--failure-threshold", "Info"]);
    assert_eq!(out.status.code(), Some(79), "{out:?}");
}
