//! `spar sft --recipe R.toml`: the supervised stage alone (scripted expert consultations), with the held-out
//! evaluation and the same run folder layout as `spar train` (it is `spar train` with `trainer.steps = 0`).
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub recipe: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub resume: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut sets = args.set.clone();
    if let Some(m) = &args.model {
        sets.push(format!("model.path=\"{}\"", m.display()));
    }
    sets.push("trainer.steps=0".into());
    let recipe = spar_core::recipe::Recipe::load(&args.recipe, &sets)?;
    spar_trainer::run::run(
        &recipe,
        &spar_trainer::run::RunOptions {
            resume: args.resume,
            out_dir: args.out,
        },
    )
}
