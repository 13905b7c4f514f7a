//! `spar bench trace TRACE`: the Markdown summary `[trainer.profile]` writes, of any torch profiler Chrome trace
//! (`.json` or `.json.gz`): spar's own, or one `torch.profiler` exported from a transformers or TRL run, so two
//! traces of the same workload read side by side.
use anyhow::Result;
use spar_trainer::trace_summary::TraceSummary;
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
    let summary = TraceSummary::from_file(&args.trace)?;
    print!(
        "{}",
        summary.to_markdown(&args.trace.display().to_string(), args.top)
    );
    Ok(())
}
