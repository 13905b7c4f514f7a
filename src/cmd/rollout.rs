//! `spar rollout --recipe R.toml --out DIR`: plays consultations with the recipe's policy, simulator, backend and
//! pipeline, and writes `DIR/samples.parquet` (schema: docs/trajectories.md), one markdown transcript per group
//! in `DIR/transcripts/`, and `DIR/summary.json`.
use super::common::RecipeArgs;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use spar_app::Builder;
use spar_rollout::output::{Summary, write_run};
use spar_rollout::{Policy, Rollout};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Output folder.
    #[arg(long, alias = "output")]
    pub out: PathBuf,
    /// Case file or folder (replaces `[data] cases`).
    #[arg(long = "in", alias = "input", alias = "cases")]
    pub input: Option<PathBuf>,
    /// Rounds to play.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Groups per round (default `[rollout] groups_per_step`).
    #[arg(long)]
    pub groups: Option<usize>,
}

pub fn run(mut args: Args) -> Result<()> {
    if let Some(i) = &args.input {
        let p = super::common::absolute(i)?;
        args.recipe.set.push(format!(
            "data.cases={}",
            super::common::toml_string(&p.display().to_string())
        ));
    }
    let builder = args.recipe.builder()?;
    let recipe = builder.recipe();
    let model_dir = recipe
        .model
        .as_ref()
        .and_then(|m| m.path.as_ref())
        .map(|p| recipe.resolve(p))
        .context("no model: give --model DIR or [model] path (the tokenizer comes from it)")?;
    let mut spec = spar_data::audit::AuditSpec::for_dir("spar rollout", &args.out)
        .with_recipe(super::audit::recipe_toml(recipe))
        .with_data(super::audit::recipe_data_files(recipe));
    if model_dir.exists() {
        spec = spec.with_model(&model_dir);
    }
    super::audit::run_audited(spec, || play(&args, &builder, &model_dir))
}

fn play(args: &Args, builder: &Builder, model_dir: &std::path::Path) -> Result<()> {
    let cfg = builder.rollout_section();
    let cases = builder.cases()?.train;
    let external = cfg.backend == spar_core::recipe::RolloutBackendKind::Openai;
    let tokenizer = builder.tokenizer(model_dir)?;
    // With an external backend only the tokenizer is needed: the server holds the weights.
    let model = match external {
        true => None,
        false => Some(builder.saved_model(model_dir)?),
    };
    if let Some(m) = &model {
        spar_app::check_vocabulary(&tokenizer, m, model_dir)?;
    }
    let run_id = builder
        .recipe()
        .name
        .clone()
        .unwrap_or_else(|| "rollout".into());
    let groups_per_round = args.groups.unwrap_or(cfg.groups_per_step);
    // The served model's MoE layout, which the server's expert choices are read against (record_routing only:
    // otherwise an external run needs no config.json, just the tokenizer).
    let moe = match (&model, cfg.record_routing) {
        (Some(m), _) => m.config.moe_layout(),
        (None, true) => {
            spar_model::Qwen3Config::from_file(&model_dir.join("config.json"))?.moe_layout()
        }
        (None, false) => None,
    };
    let mut rollout: Rollout = builder.rollout(
        cfg.clone(),
        cases,
        tokenizer,
        builder.stage_scorer()?,
        builder.simulator()?,
        run_id,
        moe,
    )?;
    let total = (args.rounds * groups_per_round * cfg.group_size) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} rollout [{elapsed_precise}] {bar:30} {pos}/{len} episodes ({per_sec}) {msg}",
    )?);
    rollout.set_progress(Some(bar.clone()));
    let started = std::time::Instant::now();
    let mut groups = Vec::new();
    for _ in 0..args.rounds {
        let p = match &model {
            Some(m) => Policy::Builtin(m),
            None => Policy::External,
        };
        groups.extend(rollout.collect_groups(p, groups_per_round)?);
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let mut summary = Summary {
        groups: groups.len(),
        seconds: secs,
        pool_sizes: rollout.pools().sizes(),
        ..Default::default()
    };
    for g in &groups {
        for s in &g.samples {
            summary.samples += 1;
            summary.generated_tokens += s.loss_mask.iter().map(|&m| m as u64).sum::<u64>();
            *summary
                .end_reasons
                .entry(format!("{:?}", s.end_reason))
                .or_default() += 1;
            *summary
                .stages
                .entry(g.stage.map_or("episode".into(), |st| st.name().to_string()))
                .or_default() += 1;
        }
    }
    summary.episodes_per_s = summary.samples as f64 / secs.max(1e-9);
    summary.tokens_per_s = summary.generated_tokens as f64 / secs.max(1e-9);
    let path = write_run(&args.out, &groups, &summary)?;
    eprintln!(
        "wrote {} samples in {} groups to {} ({:.2} episodes/s, {:.0} tokens/s)",
        summary.samples,
        summary.groups,
        path.display(),
        summary.episodes_per_s,
        summary.tokens_per_s
    );
    Ok(())
}
