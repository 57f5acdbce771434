//! Loader tests: real-world files (seed config, bookinfo), positions, error
//! shapes, isolation of bad documents, and hostile input.

use std::path::{Path, PathBuf};

use super::*;
use crate::{Kind, Spec};

fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!("skipping: {} not found", p.display());
        None
    }
}

fn load(text: &str) -> (Vec<Resource>, Vec<ConfigError>) {
    load_str(Path::new("t.yaml"), text)
}

fn errors(text: &str) -> Vec<String> {
    load(text).1.iter().map(ToString::to_string).collect()
}

#[test]
fn seed_production_config_loads() {
    let Some(path) = shared("seed/production-config.yaml") else {
        return;
    };
    let (res, errs) = load_path(&path);
    assert!(errs.is_empty(), "{errs:#?}");
    let kinds: Vec<_> = res.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::PeerAuthentication,
            Kind::PeerAuthentication,
            Kind::AuthorizationPolicy,
            Kind::AuthorizationPolicy,
            Kind::VirtualService,
            Kind::DestinationRule,
            Kind::Gateway,
            Kind::VirtualService
        ]
    );
    let v = crate::validation::validate_all(&res);
    assert!(v.errors.is_empty(), "{:#?}", v.errors);
    let res = &res[4..];
    let Spec::VirtualService(vs) = &res[0].spec else {
        panic!("not a VirtualService");
    };
    assert_eq!(res[0].key(), "VirtualService/production/payments-api");
    assert_eq!(res[0].source.line, 37);
    let rule = &vs.http[1];
    assert_eq!(rule.route[1].weight, 10);
    assert_eq!(rule.timeout.map(|d| d.get().as_secs()), Some(15));
    let abort = rule
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!(abort.http_status, Some(500));
    assert_eq!(abort.percentage.map(|p| p.value), Some(0.1));
    assert_eq!(
        vs.http[0].matches[0].headers["x-canary"],
        crate::networking::StringMatch::Exact("true".into())
    );
}

#[test]
fn bookinfo_networking_loads() {
    let Some(dir) = shared("istio-testdata/samples/bookinfo/networking") else {
        return;
    };
    let files: Vec<_> = fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_config_file(p))
        .collect();
    assert!(files.len() >= 20, "only {} files", files.len());
    let mut total = 0;
    for f in &files {
        let (res, errs) = load_file(f);
        assert!(errs.is_empty(), "{}: {errs:#?}", f.display());
        total += res.len();
    }
    let (res, errs) = load_dir(&dir);
    assert!(errs.is_empty());
    assert_eq!(res.len(), total);
    assert!(
        total >= files.len(),
        "{total} resources from {} files",
        files.len()
    );
    println!("bookinfo: {} files, {total} resources", files.len());
}

const VS_TYPO: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: prod
spec:
  hosts: [reviews]
  http:
  - rout:
    - destination: {host: reviews}
";

#[test]
fn unknown_field_names_path_and_suggests() {
    let errs = errors(VS_TYPO);
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert!(
        e.starts_with("t.yaml:9:5: VirtualService prod/reviews: spec.http[0].rout: unknown field `rout`, expected one of `name`, `match`, `route`"),
        "{e}"
    );
    assert!(e.ends_with(", did you mean `route`?"), "{e}");
    let (_, errs) = load(VS_TYPO);
    assert_eq!(errs[0].field.as_deref(), Some("spec.http[0].rout"));
    assert_eq!(errs[0].kind.as_deref(), Some("VirtualService"));
}

#[test]
fn bad_document_in_the_middle_is_isolated() {
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: prod}}\n---\n{VS_TYPO}---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sa, namespace: prod}}\n"
    );
    let (res, errs) = load(&text);
    assert_eq!(res.len(), 2, "{errs:#?}");
    assert_eq!(res[0].kind, Kind::Namespace);
    assert_eq!(res[1].kind, Kind::ServiceAccount);
    assert_eq!(res[1].source.line, 16);
    assert_eq!(errs.len(), 1);
    // The typo is on line 9 of the VirtualService, which starts on line 5.
    assert_eq!((errs[0].line, errs[0].column), (13, 5));
}

#[test]
fn source_line_skips_leading_comments() {
    let (res, _) = load(
        "# c\n\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# d\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
    );
    let lines: Vec<_> = res.iter().map(|r| r.source.line).collect();
    assert_eq!(lines, [3, 8]);
}

#[test]
fn syntax_error_points_at_file_line() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
                apiVersion: v1\nkind: Namespace\nmetadata: {name: b\n---\n\
                apiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
    let (res, errs) = load(text);
    assert_eq!(res.len(), 2);
    assert_eq!(errs.len(), 1);
    assert!((7..=8).contains(&errs[0].line), "{}", errs[0]);
    assert_eq!(errs[0].kind, None);
}

#[test]
fn wrong_type_and_enum_errors() {
    let e = errors(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\n\
         spec:\n  host: r\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBN}\n",
    );
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.yaml:7:28: DestinationRule r: spec.trafficPolicy.loadBalancer.simple: unknown variant `ROUND_ROBN`, expected one of"), "{}", e[0]);
    assert!(e[0].ends_with("did you mean `ROUND_ROBIN`?"), "{}", e[0]);

    let e = errors(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: v}\n\
         spec:\n  http:\n  - timeout: 5\n    route: [{destination: {host: a}}]\n",
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("spec.http[0].timeout: invalid duration \"5\""),
        "{}",
        e[0]
    );

    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {}\n",
    );
    assert!(
        e[0].contains("DestinationRule r: spec.host: Required value: missing field `host`"),
        "{}",
        e[0]
    );

    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nsepc: {}\n",
    );
    assert!(
        e[0].contains("Gateway g: sepc: unknown field `sepc`"),
        "{}",
        e[0]
    );
    assert!(e[0].ends_with("did you mean `spec`?"), "{}", e[0]);
}

#[test]
fn skips_unknown_and_unmodelled_kinds() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\n\
                apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: d}\nspec: {x: 1}\n---\n\
                apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {gatewayClassName: x}\n---\n\
                apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: w}\nspec: {}\n---\n\
                meshConfig: {accessLogFile: /dev/stdout}\n---\n- a\n- b\n---\nnull\n";
    let (res, errs) = load(text);
    assert!(res.is_empty(), "{res:#?}");
    assert!(errs.is_empty(), "{errs:#?}");
}

#[test]
fn rejects_unsupported_networking_version_and_half_headers() {
    let e = errors(
        "apiVersion: networking.istio.io/v2\nkind: Sidecar\nmetadata: {name: s}\nspec: {}\n",
    );
    assert!(
        e[0].contains("Sidecar s: apiVersion: unsupported apiVersion"),
        "{}",
        e[0]
    );
    let e = errors("kind: Sidecar\nmetadata: {name: s}\nspec: {}\n");
    assert!(
        e[0].contains("missing or non-string `apiVersion`"),
        "{}",
        e[0]
    );
}

#[test]
fn kubectl_list_items() {
    let text = "# header\napiVersion: v1\nkind: List\nitems:\n\
                - apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: n}\n  spec: {ports: [{port: 80}]}\n\
                - apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n\
                - apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {name: v}\n  spec: {hostz: [a]}\n";
    let (res, errs) = load(text);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].key(), "Service/n/a");
    assert_eq!(res[0].source.line, 5);
    assert_eq!(errs.len(), 1);
    assert_eq!(load(text).0[0].source.line, 5);
    assert!(
        errs[0]
            .to_string()
            .starts_with("t.yaml:15:10: VirtualService v: spec.hostz: unknown field `hostz`"),
        "{}",
        errs[0]
    );
    // Flow-style items cannot be cut out: errors point at the List.
    let text = "\n# c\napiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {ports: 1}}]\n";
    let (_, errs) = load(text);
    assert!(
        errs[0]
            .to_string()
            .starts_with("t.yaml:3:1: Service a: spec.ports: invalid type"),
        "{}",
        errs[0]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let e = errors("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels: {x: 1, x: 2}\n");
    assert_eq!(
        e,
        ["t.yaml:5:11: Service a: duplicate entry with key \"x\""]
    );
}

#[test]
fn hostile_input_does_not_panic() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(errors(&deep).len(), 1);
    let deep_map = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {}",
        "{a: ".repeat(5000)
    );
    assert_eq!(errors(&deep_map).len(), 1);
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    let _ = load(bomb);
    let big = "#".repeat(MAX_FILE_BYTES + 1);
    let e = errors(&big);
    assert!(e[0].contains("bytes allowed"), "{}", e[0]);
    for junk in [
        "\t",
        ":",
        "- - -",
        "{",
        "'",
        "apiVersion: [",
        "kind: {}\napiVersion: 1",
        "!!binary x",
        "*x",
        "? [a]\n: b",
    ] {
        let _ = load(junk);
    }
}

#[test]
fn invalid_utf8_names_the_file_and_line() {
    let (res, errs) = load_bytes(Path::new("bad.yaml"), b"a: 1\nb: \xff\n");
    assert!(res.is_empty());
    assert_eq!(errs[0].to_string(), "bad.yaml:2:4: file is not valid UTF-8");
}

#[test]
fn load_dir_recurses_sorted_and_reads_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
    fs::create_dir_all(dir.path().join("b/c")).expect("mkdir");
    fs::create_dir_all(dir.path().join(".git")).expect("mkdir");
    fs::write(dir.path().join("b/c/z.yml"), ns("z")).expect("write");
    fs::write(dir.path().join("a.yaml"), ns("a")).expect("write");
    fs::write(dir.path().join(".git/x.yaml"), ns("hidden")).expect("write");
    fs::write(dir.path().join("notes.txt"), ns("txt")).expect("write");
    fs::write(
        dir.path().join("b/svc.json"),
        "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Service\",\n\t\"metadata\": {\"name\": \"j\"},\n\
         \t\"spec\": {\"ports\": [{\"port\": 80, \"targetPort\": \"http\"}]}\n}\n",
    )
    .expect("write");
    let (res, errs) = load_path(dir.path());
    assert!(errs.is_empty(), "{errs:#?}");
    let names: Vec<_> = res.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(names, ["a", "z", "j"]); // path order: b/c/z.yml < b/svc.json
    let (_, errs) = load_path(&dir.path().join("missing.yaml"));
    assert!(
        errs[0].message.starts_with("cannot read file"),
        "{}",
        errs[0]
    );
}

/// Loads all of Istio's test data and prints every error (run with
/// `--ignored --nocapture` to review; invalid-config files are expected to fail).
#[test]
#[ignore]
fn corpus_report() {
    let Some(dir) = shared("istio-testdata") else {
        return;
    };
    let (res, errs) = load_dir(&dir);
    for e in &errs {
        println!("{e}");
    }
    println!("{} resources, {} errors", res.len(), errs.len());
}

/// Cheap in-tree fuzzing: thousands of byte-level mutations of real documents
/// must never panic, and every error must carry a position inside the input.
#[test]
fn mutated_documents_never_panic() {
    let seeds = [
        VS_TYPO.to_string(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: n}\n\
         spec:\n  host: r\n  trafficPolicy: {loadBalancer: {simple: RANDOM}, connectionPool: {tcp: {connectTimeout: 1s}}}\n\
         \x20 subsets: [{name: v1, labels: {v: '1'}}]\n---\napiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {ports: [{port: 80, targetPort: http}]}}\n"
            .to_string(),
    ];
    let alphabet: &[u8] = b" \n\t:-{}[],'\"#&*!|>?%@`0aZ\xc3\xff";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        for _ in 0..1500 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..(1 + next() % 4) {
                let pos = (next() as usize) % bytes.len();
                let b = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => bytes[pos] = b,
                    1 => bytes.insert(pos, b),
                    _ => {
                        bytes.remove(pos);
                    }
                }
            }
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
            let (_, errs) = load_bytes(Path::new("f.yaml"), &bytes);
            for e in errs {
                assert!(e.line >= 1 && e.line <= lines + 1, "{e} (of {lines} lines)");
                assert!(e.column >= 1, "{e}");
            }
        }
    }
}

#[test]
fn type_errors_speak_yaml() {
    let e = errors(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: http}]}\n",
    );
    assert_eq!(
        e,
        [
            "t.yaml:4:23: Service a: spec.ports[0].port: invalid type: string \"http\", expected a non-negative integer"
        ]
    );
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: a}\n",
    );
    assert!(
        e[0].ends_with("spec.hosts: invalid type: string \"a\", expected a list"),
        "{}",
        e[0]
    );
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n\
         spec: {http: [{route: [{destination: {host: a, port: 80}}]}]}\n",
    );
    assert!(
        e[0].ends_with("destination.port: invalid type: integer `80`, expected a mapping"),
        "{}",
        e[0]
    );
}

/// Loads `$API_LOAD_PATH` and prints every error (a manual check tool).
#[test]
#[ignore]
fn report_env_path() {
    let Some(path) = std::env::var_os("API_LOAD_PATH") else {
        return;
    };
    let (res, errs) = load_path(Path::new(&path));
    for e in &errs {
        println!("{e}");
    }
    println!("{} resources, {} errors", res.len(), errs.len());
}

#[test]
fn crlf_files_keep_line_numbers() {
    let text = VS_TYPO.replace('\n', "\r\n");
    let text =
        format!("apiVersion: v1\r\nkind: Namespace\r\nmetadata: {{name: a}}\r\n---\r\n{text}");
    let (res, errs) = load(&text);
    assert_eq!(res.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (13, 5), "{}", errs[0]);
}

#[test]
fn allow_unknown_downgrades_to_warnings() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  colour: blue\n  http:\n  - route:\n    - destination: {host: a, hots: x}\n";
    let strict = load_str_with(Path::new("t.yaml"), text, Options::default());
    assert!(strict.resources.is_empty());
    assert!(
        strict.errors[0]
            .to_string()
            .contains("unknown field `colour`")
    );
    let lax = load_str_with(
        Path::new("t.yaml"),
        text,
        Options {
            allow_unknown: true,
        },
    );
    assert!(lax.errors.is_empty(), "{:?}", lax.errors);
    assert_eq!(lax.resources.len(), 1);
    let w: Vec<String> = lax.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("t.yaml:6:3: VirtualService r: spec.colour: unknown field `colour`"),
        "{w:?}"
    );
    assert!(
        w[1].contains("spec.http[0].route[0].destination.hots: unknown field `hots`"),
        "{w:?}"
    );
    assert!(w[1].contains("did you mean `host`?"), "{w:?}");
}
