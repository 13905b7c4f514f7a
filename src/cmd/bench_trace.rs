//! `spar bench trace TRACE`: the Markdown summary `[trainer.profile]` writes, of any torch profiler Chrome trace
//! (`.json` or `.json.gz`): spar's own, or one `torch.profiler` exported from a transformers or TRL run, so two
//! traces of the same workload read side by side.
use anyhow::{Context, Result};
use spar_trainer::trace_summary::TraceSummary;
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A Chrome trace from the torch profiler (`export_chrome_trace`, spar's `profile/*.trace.json.gz`).
    trace: PathBuf,
    /// Rows of each table (the tables inside each span show a third as many).
    #[arg(long, default_value_t = 30)]
    top: usize,
}

pub fn run(args: Args) -> Result<()> {
    let path = &args.trace;
    let mut text = String::new();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).read_to_string(&mut text)
    } else {
        std::io::BufReader::new(file).read_to_string(&mut text)
    }
    .with_context(|| format!("reading {}", path.display()))?;
    let summary = TraceSummary::from_json(&text).with_context(|| format!("{}", path.display()))?;
    print!(
        "{}",
        summary.to_markdown(&path.display().to_string(), args.top)
    );
    Ok(())
}
