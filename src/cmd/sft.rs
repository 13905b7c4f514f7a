//! `spar sft --recipe R.toml`: the supervised stage alone (scripted expert consultations), with the held-out
//! evaluation and the same run folder layout as `spar train` (it is `spar train` with `trainer.steps = 0`).
use super::common::RecipeArgs;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Run folder (replaces `trainer.out_dir`).
    #[arg(long, alias = "out-dir")]
    pub out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// Delete the earlier run in the run folder and start afresh.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.recipe.set.push("trainer.steps=0".into());
    super::train::train(
        args.recipe.builder()?,
        "spar sft",
        args.out,
        super::train::Start::of(args.resume, args.overwrite),
        None,
    )
}
