//! `spar plot RUN_DIR`: PNG and SVG curves of a run's `metrics.jsonl`, written to `RUN_DIR/plots/`.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run folder holding `metrics.jsonl` (the trainer's `out_dir`).
    pub run_dir: PathBuf,
    /// Only metrics whose name starts with one of these prefixes (e.g. `eval/`, `train/loss`).
    #[arg(long = "only")]
    pub only: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let files = spar_trainer::plot::plot_run(&args.run_dir, &args.only)?;
    eprintln!(
        "wrote {} files under {}",
        files.len(),
        args.run_dir.join("plots").display()
    );
    Ok(())
}
