//! `halyard-bench render`: rewrite a report's markdown and SVG from its JSON,
//! optionally storing findings written after the run, so the committed
//! markdown always matches the code that renders it.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::PilotReport;

/// Which report to re-render.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// A report JSON, e.g. bench/results/pilot-20261126.json.
    pub json: PathBuf,
    /// A markdown file of findings to store in the report ("Findings").
    #[arg(long)]
    pub notes: Option<PathBuf>,
}

/// Re-render STEM.md and STEM.svg (and rewrite STEM.json) beside the JSON.
pub fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let mut rep = PilotReport::read(&args.json)?;
    if let Some(notes) = &args.notes {
        rep.notes = Some(
            std::fs::read_to_string(notes).with_context(|| format!("read {}", notes.display()))?,
        );
    }
    let dir = args.json.parent().unwrap_or(Path::new("."));
    let stem = args
        .json
        .file_stem()
        .and_then(|s| s.to_str())
        .context("report file name")?;
    for p in rep.write(dir, stem)? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
