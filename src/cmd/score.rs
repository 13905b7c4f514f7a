//! `spar score`: scores finished trajectories offline with the recipe's `[rewards]` section and writes, per
//! trajectory, R_task with every rubric verdict, claims with labels, R_fact, the gate lambda, the final reward,
//! and per step the violations, gamma and advantage (plus every component's contribution).
use super::common::RecipeArgs;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spar_app::Builder;
use spar_core::Case;
use spar_rewards::score::{group_samples, read_samples, report, score_groups};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// `--recipe` (its `[rewards]` section, and `[data]` for the cases and knowledge base; defaults apply
    /// without one), `--set`, `--model` (unused here).
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Trajectories: `.jsonl` or `.parquet` of samples.
    #[arg(long = "in", alias = "input")]
    pub input: PathBuf,
    /// Scored records: `.jsonl` (or `.parquet`), written atomically.
    #[arg(long)]
    pub out: PathBuf,
    /// Cases the trajectories were rolled out on (file or folder; replaces `[data] cases`).
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// Groups scored at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Also write the run report (counts, drops by reason, cache hit rate) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(c) = &args.cases {
        let p = super::common::absolute(c)?;
        args.recipe.set.push(format!(
            "data.cases={}",
            super::common::toml_string(&p.display().to_string())
        ));
    }
    let builder = args.recipe.builder()?;
    let recipe = builder.recipe();
    let data = recipe.data.clone().unwrap_or_default();
    let cases_path = spar_data::recipe::cases_path(&data, builder.base().as_deref())?;
    let mut data_files = vec![args.input.clone()];
    data_files.extend(if cases_path.is_dir() {
        super::audit::files_of(&cases_path)
    } else {
        vec![cases_path.clone()]
    });
    if let Some(kb) = &data.knowledge_base {
        data_files.extend(super::audit::files_of(&recipe.resolve(kb)));
    }
    let mut spec = spar_data::audit::AuditSpec::for_file("spar score", &args.out)
        .with_recipe(super::audit::recipe_toml(recipe))
        .with_data(data_files)
        .with_claim_cache(builder.recipe_claim_cache(Some(&out_folder(&args.out))));
    if let Some(r) = &args.report {
        spec = spec.with_output_file(r);
    }
    super::audit::run_audited(spec, || score(&args, &builder, &cases_path))
}

/// The folder the scored file goes to: the claim cache's default home (the data folder of this run).
fn out_folder(out: &std::path::Path) -> std::path::PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    }
}

fn score(args: &Args, builder: &Builder, cases_path: &std::path::Path) -> anyhow::Result<()> {
    let mut cases = spar_data::load_cases(cases_path)
        .with_context(|| format!("reading cases {}", cases_path.display()))?;
    // The same ingest rule as every recipe-driven command (`spar_data::recipe::split_cases`).
    if builder
        .recipe()
        .data
        .as_ref()
        .is_none_or(|d| d.redact_on_ingest)
    {
        spar_data::redact::redact_cases(&mut cases);
    }
    let cases: HashMap<String, Case> = cases.into_iter().map(|c| (c.id.clone(), c)).collect();
    let (samples, bad) = read_samples(&args.input)?;
    for b in &bad {
        eprintln!(
            "warning: {}: line {}: skipped: {}",
            args.input.display(),
            b.line,
            b.error
        );
    }
    let n = samples.len();
    let groups = group_samples(samples);
    let n_groups = groups.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (scored, rep) = rt.block_on(async {
        let pipeline = builder
            .reward_pipeline(Some(&out_folder(&args.out)))
            .await?;
        let bar = ProgressBar::new(n as u64);
        bar.set_style(ProgressStyle::with_template(
            "scoring {bar:40} {pos}/{len} samples {elapsed_precise} eta {eta}",
        )?);
        let scored = score_groups(&pipeline, &cases, groups, args.parallel, |k| {
            bar.inc(k as u64)
        })
        .await;
        bar.finish_and_clear();
        let rep = report(&pipeline, &scored, n_groups, bad);
        anyhow::Ok((scored, rep))
    })?;
    spar_data::wire::write_scored(&args.out, &scored)?;
    if let Some(p) = &args.report {
        spar_core::fsio::write_atomic(p, &serde_json::to_vec_pretty(&rep)?)?;
    }
    eprintln!(
        "scored {} samples in {} groups -> {} ({} dropped, {} bad input lines); mean R {:.4}; claim cache ({}) hit rate {:.1}% ({} exact, {} semantic, {} reviewer overrides of {} lookups); {} rubric verdicts from reviewer overrides",
        rep.samples,
        rep.groups,
        args.out.display(),
        rep.dropped,
        rep.bad_records.len(),
        rep.mean_reward,
        rep.cache_backend,
        100.0 * rep.cache_hit_rate,
        rep.cache.exact_hits,
        rep.cache.semantic_hits,
        rep.cache.override_hits,
        rep.cache.lookups,
        rep.rubric_overrides
    );
    for (reason, k) in &rep.metrics.dropped_samples {
        eprintln!("  dropped {k} samples: {reason}");
    }
    if rep.metrics.judge_failures + rep.metrics.fact_failures + rep.metrics.stage_unparsed > 0 {
        eprintln!(
            "  judge failures {}, fact-check failures {}, unparseable stage outputs {}",
            rep.metrics.judge_failures, rep.metrics.fact_failures, rep.metrics.stage_unparsed
        );
    }
    Ok(())
}
