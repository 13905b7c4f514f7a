//! `spar ablate SPEC.toml`: a reward-design ablation. Every (arm, seed) of the spec is a `spar train` run in its own
//! folder `OUT/<arm>-s<seed>/` (RL from one shared SFT run per seed, `OUT/sft-s<seed>/`, by default), run as child
//! processes of this binary, `--jobs` at once, resumably; then `OUT/ablation.md`, `OUT/ablation.json` and
//! `OUT/plots/` (mean, 95% bootstrap CI, paired difference to the baseline arm and sign-flip test; curves with CI
//! bands). `--report-only` aggregates what is there. See docs/training.md, "Ablations: spar ablate".
use anyhow::{Context, Result, bail};
use spar_ablate::Spec;
use spar_ablate::runner::{self, Outcome, RunOptions};
use spar_ablate::spec::SftSource;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The ablation spec: a file, or the name of a shipped one (`spar data recipes` lists them: ablate-main,
    /// ablate-fact, ablate-spar, ablate-rl-knobs).
    pub spec: PathBuf,
    /// The ablation's folder (default: `./runs/<spec name>`, with an `ablate-` prefix when it has none).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs at once (default: half the cores, at least one); each child gets cores / jobs threads.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Cores the runs share (default: all). Unpinned runs get the cores divided among the runs that can run at
    /// the time: a shared SFT phase several threads per run, the RL phase after it fewer.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Run these seeds of the spec only (e.g. `--seeds 0,1,2`); each must be one of the spec's.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Compare every arm with this one instead of the spec's baseline (e.g. `--report-only --baseline placebo
    /// --out DIR` for RL - placebo; the report is written to `DIR/vs-<arm>/`).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Pin each child to its own cores (taskset; Linux only), cores / jobs each.
    #[arg(long)]
    pub pin: bool,
    /// Aggregate the run folders that are there into the table and plots; run nothing.
    #[arg(long)]
    pub report_only: bool,
    /// More overrides for every run, after the spec's `[shared] set` (e.g. shorter runs:
    /// `--set trainer.steps=4`). They are part of each run's recorded command.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let spec_path = resolve_spec(&args.spec)?;
    let mut spec = Spec::load(&spec_path)?;
    spec.shared.set.extend(args.set.iter().cloned());
    if !args.seeds.is_empty() {
        if let Some(s) = args.seeds.iter().find(|s| !spec.seeds.contains(s)) {
            bail!(
                "--seeds: seed {s} is not one of {}'s seeds {:?}",
                spec_path.display(),
                spec.seeds
            );
        }
        spec.seeds.retain(|s| args.seeds.contains(s));
    }
    let out = match &args.out {
        Some(o) => std::path::absolute(o)?,
        None => {
            let stem = spec_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "spec".into());
            let name = if stem.starts_with("ablate-") {
                stem
            } else {
                format!("ablate-{stem}")
            };
            std::env::current_dir()?.join("runs").join(name)
        }
    };
    let mut report_dir = out.clone();
    if let Some(b) = &args.baseline {
        if !spec.arms.iter().any(|a| &a.name == b) {
            bail!(
                "--baseline {b}: not an arm of {} (arms: {})",
                spec_path.display(),
                spec.arms
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if *b != spec.baseline {
            report_dir = out.join(format!("vs-{b}"));
        }
        spec.baseline = b.clone();
    }
    let (jobs, refs) = runner::plan(&spec, &out)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut failed = Vec::new();
    if !args.report_only {
        check_recipes(&spec)?;
        let cores = args
            .cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let opts = RunOptions {
            exe: std::env::current_exe().context("locating the spar binary")?,
            jobs: args.jobs.unwrap_or((cores / 2).max(1)).max(1),
            cores,
            pin: args.pin,
        };
        let outcomes = runner::run_all(&jobs, &out, &opts)?;
        for (j, o) in jobs.iter().zip(&outcomes) {
            if let Outcome::Failed(m) = o {
                failed.push(format!("{}: {}", j.name, m.lines().next().unwrap_or("")));
            }
        }
    }
    let report = spar_ablate::aggregate::aggregate(&spec, &refs)?;
    if report.runs.iter().all(|r| !r.finished) {
        anyhow::bail!(
            "{}: none of the {} runs of {} has finished (no <run>/comparison.json there){}",
            out.display(),
            report.runs.len(),
            args.spec.display(),
            if args.report_only {
                "; --report-only aggregates the run folders `spar ablate` wrote into --out"
            } else {
                ""
            }
        );
    }
    let plots = spar_ablate::aggregate::write(&report_dir, &report, &command)?;
    if let Some(m) = report.metrics.first() {
        eprintln!(
            "[ablate] {} (mean [95% CI]; Δ vs {}):",
            m.label, report.baseline
        );
        for a in &m.arms {
            let d = a.diff.as_ref().map_or(String::new(), |d| {
                format!(
                    "  Δ {:+.3} [{:+.3}, {:+.3}] p {:.4}",
                    d.mean, d.ci.0, d.ci.1, d.test.p
                )
            });
            eprintln!(
                "[ablate]   {:<24} n {}  {:.3} [{:.3}, {:.3}]{d}",
                a.arm, a.estimate.n, a.estimate.mean, a.estimate.ci.0, a.estimate.ci.1
            );
        }
    }
    eprintln!(
        "[ablate] wrote {} and ablation.json, {} plot files",
        report_dir.join("ablation.md").display(),
        plots.len()
    );
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed (logs in {}):\n{}",
            failed.len(),
            out.display(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// A spec file, else a shipped spec of that name.
fn resolve_spec(arg: &Path) -> Result<PathBuf> {
    if arg.is_file() {
        return Ok(arg.to_path_buf());
    }
    let shipped = arg
        .to_str()
        .map(spar_data::shipped::recipe_path)
        .transpose()?
        .flatten();
    match shipped {
        Some(p) if spar_ablate::spec::looks_like_spec(&std::fs::read_to_string(&p)?) => Ok(p),
        _ => bail!(
            "ablation spec {}: no such file, and no shipped spec of that name (shipped: ablate-main, ablate-fact, \
             ablate-spar, ablate-rl-knobs)",
            arg.display()
        ),
    }
}

/// Loads every run's recipe before anything runs (a typo in an arm fails now, not after the SFT runs), and with a
/// shared SFT checks that each arm changes only RL knobs of the SFT run's recipe.
fn check_recipes(spec: &Spec) -> Result<()> {
    let base = spec.base_arg();
    for &seed in &spec.seeds {
        let mut common = spec.shared.set.clone();
        common.push(format!("seed={seed}"));
        let mut sft_sets = common.clone();
        sft_sets.push("trainer.steps=0".into());
        let sft = crate::recipe_arg::load(&base, &sft_sets)
            .with_context(|| format!("ablation spec {}: the SFT run", spec.file.display()))?;
        for arm in spec.arms.iter().filter(|a| !a.sft_only) {
            let mut sets = common.clone();
            sets.extend(arm.set.iter().cloned());
            let recipe = crate::recipe_arg::load(&base, &sets).with_context(|| {
                format!("ablation spec {}: arm {}", spec.file.display(), arm.name)
            })?;
            if spec.from == SftSource::Shared {
                let bad = spar_core::recipe::shared_sft::sft_invalidating_changes(&sft, &recipe);
                if !bad.is_empty() {
                    bail!(
                        "ablation spec {}: arm {} changes {} from the shared SFT run's recipe; arms that share an \
                         SFT may change only RL knobs (put SFT settings in [shared] set, or use from = \"none\")",
                        spec.file.display(),
                        arm.name,
                        bad.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}
