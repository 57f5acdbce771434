//! `halyard validate -f FILE_OR_DIR ...`: load Istio and Kubernetes YAML
//! offline, apply Istio's validation rules, print every problem as
//! `file:line:col: Kind namespace/name: field.path: message` (or JSON), and
//! exit 1 when any document is invalid.

use std::path::PathBuf;

use api::ConfigError;
use api::load::{Loaded, Options};

/// Output format of `validate` and `analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// File or directory to check (repeatable); directories are read recursively.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Report unknown fields as warnings instead of errors.
    #[arg(long)]
    pub allow_unknown: bool,
}

/// Loads every path, returning resources, load errors and warnings.
pub fn load_all(paths: &[PathBuf], allow_unknown: bool) -> Loaded {
    let options = Options { allow_unknown };
    let mut all = Loaded::default();
    for p in paths {
        let l = if p.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => api::load::load_str_with(std::path::Path::new("<stdin>"), &text, options),
                Err(e) => Loaded {
                    errors: vec![ConfigError::new(
                        "<stdin>",
                        1,
                        format!("cannot read stdin: {e}"),
                    )],
                    ..Loaded::default()
                },
            }
        } else if !p.exists() {
            Loaded {
                errors: vec![ConfigError::new(p, 1, "no such file or directory")],
                ..Loaded::default()
            }
        } else {
            api::load::load_path_with(p, options)
        };
        all.resources.extend(l.resources);
        all.errors.extend(l.errors);
        all.warnings.extend(l.warnings);
    }
    all
}

fn json_of(e: &ConfigError, level: &str) -> serde_json::Value {
    serde_json::json!({
        "level": level,
        "file": e.file.display().to_string(),
        "line": e.line,
        "column": e.column,
        "kind": e.kind,
        "namespace": e.namespace,
        "name": e.name,
        "field": e.field,
        "message": e.message,
    })
}

/// Runs `validate`; returns the process exit code.
pub fn run(args: &ValidateArgs) -> i32 {
    let mut loaded = load_all(&args.files, args.allow_unknown);
    let mut v = api::validation::validate_all(&loaded.resources);
    api::load::refine_positions(&mut v.errors);
    api::load::refine_positions(&mut v.warnings);
    loaded.errors.extend(v.errors);
    loaded.warnings.extend(v.warnings);
    let key = |e: &ConfigError| (e.file.clone(), e.line, e.column);
    loaded.errors.sort_by_key(key);
    loaded.warnings.sort_by_key(key);
    match args.output {
        OutputFormat::Json => {
            let items: Vec<_> = loaded
                .errors
                .iter()
                .map(|e| json_of(e, "Error"))
                .chain(loaded.warnings.iter().map(|e| json_of(e, "Warning")))
                .collect();
            let doc = serde_json::json!({
                "valid": loaded.errors.is_empty(),
                "resources": loaded.resources.len(),
                "problems": items,
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        OutputFormat::Text => {
            for e in &loaded.errors {
                println!("{e}");
            }
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            if loaded.errors.is_empty() {
                eprintln!(
                    "{} resource(s) valid{}",
                    loaded.resources.len(),
                    if loaded.warnings.is_empty() {
                        String::new()
                    } else {
                        format!(", {} warning(s)", loaded.warnings.len())
                    }
                );
            } else {
                eprintln!("{} error(s)", loaded.errors.len());
            }
        }
    }
    i32::from(!loaded.errors.is_empty())
}
