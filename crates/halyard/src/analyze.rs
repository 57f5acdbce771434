//! `halyard analyze DIR...`: cross-resource checks with Istio's message
//! codes, printed like `istioctl analyze`:
//! `Error [IST0101] (VirtualService ns/name file:line) Referenced host not found: "x"`.
//! Exit status 79 (istioctl's) when a message reaches `--failure-threshold`.

use std::path::PathBuf;

use api::analysis::{self, Level, Message};

use crate::validate::{OutputFormat, load_all};

/// istioctl's exit code when analysis finds messages at or above the threshold.
const ANALYZER_FOUND_ISSUES: i32 = 79;

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Files or directories of Istio and Kubernetes YAML.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Lowest level that makes the command fail (Error, Warning or Info).
    #[arg(long, default_value = "Error", value_parser = parse_level)]
    pub failure_threshold: Level,
    /// Lowest level printed (Error, Warning or Info).
    #[arg(long, default_value = "Info", value_parser = parse_level)]
    pub output_threshold: Level,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Mesh config file (MeshConfig, `meshConfig:` values, or the `istio` ConfigMap).
    #[arg(long)]
    pub meshconfig: Option<PathBuf>,
    /// Report unknown fields as warnings instead of errors.
    #[arg(long)]
    pub allow_unknown: bool,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

/// Runs `analyze`; returns the process exit code.
pub fn run(args: &AnalyzeArgs) -> i32 {
    let loaded = load_all(&args.paths, args.allow_unknown);
    let mut validation = api::validation::validate_all(&loaded.resources);
    api::load::refine_positions(&mut validation.errors);
    let mesh_config = match &args.meshconfig {
        None => None,
        Some(p) => match api::mesh_config::load_mesh_config(p) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    let mut messages = analysis::schema_messages(&loaded.errors);
    messages.extend(analysis::schema_messages(&validation.errors));
    messages.extend(analysis::analyze(
        &loaded.resources,
        &analysis::Options {
            mesh_config,
            only: Vec::new(),
            default_resources: true,
        },
    ));
    let shown: Vec<&Message> = messages
        .iter()
        .filter(|m| m.code.level >= args.output_threshold)
        .collect();
    match args.output {
        OutputFormat::Json => {
            let items: Vec<_> = shown
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "code": m.code.code,
                        "level": m.code.level.as_str(),
                        "message": m.text,
                        "origin": m.origin(),
                        "reference": m.source.as_ref().map(ToString::to_string),
                        "documentationUrl": format!("https://istio.io/latest/docs/reference/config/analysis/{}/", m.code.code.to_ascii_lowercase()),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&items).unwrap_or_default()
            );
        }
        OutputFormat::Text => {
            if shown.is_empty() {
                eprintln!(
                    "\u{2714} No validation issues found when analyzing {}.",
                    describe(&args.paths)
                );
            }
            for m in &shown {
                println!("{m}");
            }
        }
    }
    if messages
        .iter()
        .any(|m| m.code.level >= args.failure_threshold)
    {
        ANALYZER_FOUND_ISSUES
    } else {
        0
    }
}

fn describe(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
