//! `spar train --recipe R.toml`: the whole pipeline a recipe describes (SFT, then SPAR + Fact-Aware RL,
//! evaluation before / after, checkpoints, metrics, plots). See docs/training.md.
use super::common::RecipeArgs;
use anyhow::{Context, Result};
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
    /// One trainer step from files instead of the loop: samples written by `spar rollout` ...
    #[arg(long = "in", alias = "input", requires = "scored", requires = "model")]
    pub input: Option<PathBuf>,
    /// ... and their scores written by `spar score`.
    #[arg(long, alias = "rewards")]
    pub scored: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    // Parsing, overrides and validation of every section happen here, before any heavy work.
    let builder = args.recipe.builder()?;
    if let (Some(samples), Some(scored)) = (&args.input, &args.scored) {
        let out = args
            .out
            .clone()
            .context("--in needs --out (where the checkpoint goes)")?;
        let rep = spar_app::offline_step(&builder, samples, scored, &out)?;
        eprintln!(
            "one step: loss {:.6}, grad norm {:.4}, {} tokens, skipped {}",
            rep.loss, rep.grad_norm, rep.tokens, rep.skipped
        );
        return Ok(());
    }
    train(builder, "spar train", args.out, args.resume)
}

/// Runs the recipe's training loop into `out` (default `trainer.out_dir`), audited.
pub fn train(
    builder: spar_app::Builder,
    command: &str,
    out: Option<PathBuf>,
    resume: bool,
) -> Result<()> {
    let recipe = builder.recipe();
    let out = match out {
        Some(o) => o,
        None => recipe.resolve(&recipe.require(&recipe.trainer, "trainer")?.out_dir),
    };
    let mut spec = spar_data::audit::AuditSpec::for_dir(command, &out)
        .with_recipe(super::audit::recipe_toml(recipe))
        .with_data(super::audit::recipe_data_files(recipe));
    if let Some(p) = recipe.model.as_ref().and_then(|m| m.path.as_ref()) {
        spec = spec.with_model(&recipe.resolve(p));
    }
    super::audit::run_audited(spec, || {
        spar_trainer::run::run(builder.train_parts(&out, resume)?)
    })
}
