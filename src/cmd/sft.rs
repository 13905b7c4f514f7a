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
    let recipe = crate::recipe_arg::load(&args.recipe, &sets)?;
    // The run folder `spar_trainer::run::run` writes into.
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| recipe.resolve(&recipe.trainer.clone().unwrap_or_default().out_dir));
    let data_files = super::audit::recipe_data_files(&recipe);
    let mut spec = spar_data::audit::AuditSpec::for_dir("spar sft", &run_dir)
        .with_recipe(super::audit::recipe_toml(&recipe))
        .with_data(data_files);
    if let Some(p) = recipe.model.as_ref().and_then(|m| m.path.as_ref()) {
        let p = recipe.resolve(p);
        if p.exists() {
            spec = spec.with_model(&p);
        }
    }
    super::audit::run_audited(spec, || {
        spar_trainer::run::run(
            &recipe,
            &spar_trainer::run::RunOptions {
                resume: args.resume,
                out_dir: args.out.clone(),
            },
        )
    })
}
