//! `spar train --recipe R.toml`: the whole pipeline a recipe describes (SFT, then SPAR + Fact-Aware RL,
//! evaluation before / after, checkpoints, metrics, plots). See docs/training.md.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The TOML recipe file, or the name of a shipped recipe (`spar data recipes` lists them).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override any recipe key: `--set trainer.lr=1e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run folder (replaces `trainer.out_dir`).
    #[arg(long, alias = "out-dir")]
    pub out: Option<PathBuf>,
    /// Policy model directory (replaces `model.path`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Continue from the newest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// One trainer step from files instead of the loop: samples written by `spar rollout` ...
    #[arg(long = "in", alias = "input", requires = "rewards", requires = "model")]
    pub input: Option<PathBuf>,
    /// ... and their scores written by `spar score`.
    #[arg(long, alias = "scored")]
    pub rewards: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut sets = args.set.clone();
    if let (Some(m), None) = (&args.model, &args.input) {
        sets.push(format!("model.path=\"{}\"", m.display()));
    }
    // Parsing, overrides and validation of every section happen here, before any heavy work.
    let recipe = crate::recipe_arg::load(&args.recipe, &sets)?;
    if let (Some(samples), Some(scored), Some(model)) = (&args.input, &args.rewards, &args.model) {
        let out = args
            .out
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--in needs --out (where the checkpoint goes)"))?;
        let rep = spar_trainer::run::offline_step(&recipe, samples, scored, model, &out)?;
        eprintln!(
            "one step: loss {:.6}, grad norm {:.4}, {} tokens, skipped {}",
            rep.loss, rep.grad_norm, rep.tokens, rep.skipped
        );
        return Ok(());
    }
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| recipe.resolve(&recipe.trainer.clone().unwrap_or_default().out_dir));
    let data_files = super::audit::recipe_data_files(&recipe);
    super::audit::audited(&run_dir, &recipe, &data_files, || {
        spar_trainer::run::run(
            &recipe,
            &spar_trainer::run::RunOptions {
                resume: args.resume,
                out_dir: args.out.clone(),
            },
        )
    })
}
