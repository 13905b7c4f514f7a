//! `spar rollout --recipe R.toml --out DIR`: plays consultations with the recipe's policy, simulator and
//! pipeline, and writes `DIR/samples.parquet` (schema: docs/trajectories.md), one markdown transcript per group
//! in `DIR/transcripts/`, and `DIR/summary.json`.
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use spar_core::recipe::{Recipe, RolloutSection, StageRewardConfig};
use spar_core::traits::{PatientSimulator, RolloutBackend};
use spar_model::{Qwen3Config, Qwen3Model, Tokenizer, parse_device, parse_kind};
use spar_rollout::output::{Summary, write_run};
use spar_rollout::simulator::ScriptedPatient;
use spar_rollout::{Policy, Rollout, SimulatorChoice};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub recipe: PathBuf,
    /// Recipe override `key.path=value` (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Output folder.
    #[arg(long, alias = "output")]
    pub out: PathBuf,
    /// Policy model directory (overrides `[model] path`; with an external backend, only its tokenizer is used).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Case file or folder (overrides `[data] cases`).
    #[arg(long = "in", alias = "input", alias = "cases")]
    pub input: Option<PathBuf>,
    /// Rounds to play.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Groups per round (default `[rollout] groups_per_step`).
    #[arg(long)]
    pub groups: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let recipe = crate::recipe_arg::load(&args.recipe, &args.set)?;
    let cfg: RolloutSection = recipe.rollout.clone().unwrap_or_default();
    let model_sec = recipe.model.clone().unwrap_or_default();
    let base = recipe
        .source
        .as_ref()
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf());
    let mut data = recipe.data.clone().unwrap_or_default();
    if let Some(i) = &args.input {
        data.cases = Some(i.clone());
    }
    let cases = spar_data::recipe::train_cases(&data, base.as_deref())?;
    let model_dir = args
        .model
        .clone()
        .or_else(|| model_sec.path.as_ref().map(|p| recipe.resolve(p)));
    let model_dir = model_dir
        .context("no model: give --model DIR or [model] path (the tokenizer comes from it)")?;
    let mut spec = spar_data::audit::AuditSpec::for_dir("spar rollout", &args.out)
        .with_recipe(super::audit::recipe_toml(&recipe))
        .with_data(super::audit::case_data_files(&data, base.as_deref()));
    if model_dir.exists() {
        spec = spec.with_model(&model_dir);
    }
    super::audit::run_audited(spec, || {
        play(&args, &recipe, cfg, &model_sec, cases, &model_dir)
    })
}

fn play(
    args: &Args,
    recipe: &Recipe,
    cfg: RolloutSection,
    model_sec: &spar_core::recipe::ModelSection,
    cases: Vec<spar_core::Case>,
    model_dir: &std::path::Path,
) -> Result<()> {
    let device = parse_device(&model_sec.device)?;
    let kind = parse_kind(&model_sec.dtype)?;
    let tokenizer = Arc::new(
        Tokenizer::from_dir(model_dir)
            .with_context(|| format!("tokenizer of {}", model_dir.display()))?,
    );
    let model = if cfg.backend == "builtin" {
        Some(match &model_sec.init {
            Some(init) if !model_dir.join("config.json").exists() => Qwen3Model::random(
                Qwen3Config::from_toml_table(init, "[model] init")?,
                device,
                kind,
                0,
            )?,
            _ => Qwen3Model::load(model_dir, device, kind)?,
        })
    } else {
        None
    };
    let stages: StageRewardConfig = recipe
        .rewards
        .as_ref()
        .map(|r| r.stages.clone())
        .unwrap_or_default();
    let scorer = Arc::new(spar_rewards::ClinicalStageScorer::new(stages));
    let simulator = match cfg.simulator.kind.as_str() {
        "llm" => SimulatorChoice::Fixed(Arc::new(spar_clients::LlmPatientSimulator::from_config(
            &cfg.simulator,
        )?) as Arc<dyn PatientSimulator>),
        "self" => SimulatorChoice::SelfPlay,
        _ => SimulatorChoice::Fixed(Arc::new(ScriptedPatient)),
    };
    let run_id = recipe.name.clone().unwrap_or_else(|| "rollout".into());
    let groups_per_round = args.groups.unwrap_or(cfg.groups_per_step);
    let mut cfg = cfg;
    if cfg.seed.is_none() {
        cfg.seed = recipe.seed;
    }
    let mut rollout = Rollout::new(cfg.clone(), cases, tokenizer, scorer, simulator, run_id)?;
    if cfg.backend == "openai" {
        let ep = cfg
            .endpoint
            .as_ref()
            .context("[rollout] backend = \"openai\" needs [rollout.endpoint]")?;
        rollout = rollout.with_backend(Arc::new(spar_clients::OpenAiRolloutBackend::from_endpoint(
            ep,
        )?) as Arc<dyn RolloutBackend>);
    }
    let total = (args.rounds * groups_per_round * cfg.group_size) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} rollout [{elapsed_precise}] {bar:30} {pos}/{len} episodes ({per_sec}) {msg}",
    )?);
    rollout.set_progress(Some(bar.clone()));
    let started = std::time::Instant::now();
    let mut groups = Vec::new();
    for _ in 0..args.rounds {
        let policy = match &model {
            Some(m) => Policy::Builtin(m),
            None => Policy::External,
        };
        groups.extend(rollout.collect_groups(policy, groups_per_round)?);
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
