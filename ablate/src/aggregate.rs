//! Aggregation of an ablation's run folders into one table: every run's `comparison.json` (the held-out
//! evaluation before RL, after RL and the scripted expert's: spar-core's `EvalSummary`) and `metrics.jsonl` (per
//! step; `rl/*` every logged round, `eval/*` at the held-out evaluations) become, per metric and arm, the mean over
//! seeds with a 95% bootstrap CI, the paired difference to the baseline arm (mean, 95% CI) and the exact sign-flip
//! test; per-step curves become mean and CI bands per arm. Written as `OUT/ablation.md`, `OUT/ablation.json`
//! and `OUT/plots/`.
use crate::spec::{SftSource, Spec};
use crate::stats::{self, Estimate, SignFlip};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use spar_core::{EvalSummary, SampledRows};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One (arm, seed) and the folder its results are read from.
#[derive(Clone, Debug, Serialize)]
pub struct RunRef {
    pub arm: String,
    pub seed: u64,
    pub dir: PathBuf,
    /// The arm runs no RL: its result is the evaluation before RL.
    pub sft_only: bool,
}

/// What a run's `comparison.json` holds (fields this report reads).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Comparison {
    #[serde(default)]
    pub eval_cases: usize,
    pub before_rl: EvalSummary,
    pub after_rl: EvalSummary,
    #[serde(default)]
    pub expert: EvalSummary,
    /// `[eval.sampled]`: the held-out cases played several times a case at the rollout's temperature.
    #[serde(default)]
    pub sampled: Option<SampledRows>,
}

/// The sampled row that is an arm's result: after RL, or an SFT-only arm's evaluation of its SFT checkpoint.
fn sampled_result(s: &SampledRows, sft_only: bool) -> &EvalSummary {
    match (&s.before_rl, sft_only) {
        (Some(before), true) => before,
        _ => &s.after_rl,
    }
}

/// Reads `dir/comparison.json` (None when the run has not finished).
pub fn read_comparison(dir: &Path) -> Result<Option<Comparison>> {
    let p = dir.join("comparison.json");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: not a spar comparison.json", p.display())
    })?))
}

/// The metrics of the table, in order: (key, label, value of an evaluation). Violation types are added per
/// type found in the runs.
pub fn metric_keys(types: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = vec![
        (
            "stage_mean".into(),
            "held-out stage mean (mean of G_k)".into(),
        ),
        ("G_inquiry".into(), "G_inquiry".into()),
        ("G_ddx".into(), "G_ddx".into()),
        ("G_lab".into(), "G_lab".into()),
        ("G_diag".into(), "G_diag".into()),
        (
            "reward".into(),
            "rubric reward R (R_task + lambda R_fact)".into(),
        ),
        (
            "hallucination_rate".into(),
            "hallucination rate (per claim)".into(),
        ),
        (
            "claims_per_episode".into(),
            "claims per consultation".into(),
        ),
        (
            "violation_rate".into(),
            "violation rate (share of doctor steps, any type)".into(),
        ),
    ];
    for t in types {
        m.push((
            format!("violation_rate/{t}"),
            format!("violation rate: {t}"),
        ));
    }
    m
}

/// The value of metric `key` in `e` (NaN when a violation type is absent).
pub fn metric_value(e: &EvalSummary, key: &str) -> f64 {
    let g = |i: usize| e.stage_means[i];
    match key {
        "stage_mean" => e.stage_means.iter().sum::<f64>() / 4.0,
        "G_inquiry" => g(0),
        "G_ddx" => g(1),
        "G_lab" => g(2),
        "G_diag" => g(3),
        "reward" => e.reward_mean,
        "hallucination_rate" => e.hallucination_rate,
        "claims_per_episode" => e.claims_per_episode,
        "violation_rate" => e.violation_rate,
        k => k
            .strip_prefix("violation_rate/")
            .and_then(|t| e.violation_rates.get(t).copied())
            .unwrap_or(f64::NAN),
    }
}

/// One arm's row of one metric.
#[derive(Clone, Debug, Serialize)]
pub struct ArmStat {
    pub arm: String,
    /// (seed, value) of every finished run.
    pub values: Vec<(u64, f64)>,
    pub estimate: Estimate,
    /// Paired with the baseline arm over the seeds both finished (absent for the baseline itself).
    pub diff: Option<PairedDiff>,
}

/// arm - baseline, paired by seed.
#[derive(Clone, Debug, Serialize)]
pub struct PairedDiff {
    pub vs: String,
    pub n: usize,
    pub mean: f64,
    pub ci: (f64, f64),
    pub test: SignFlip,
}

/// One metric of the table.
#[derive(Clone, Debug, Serialize)]
pub struct MetricTable {
    pub key: String,
    pub label: String,
    pub arms: Vec<ArmStat>,
    /// The scripted expert's value (mean over the runs), the ceiling.
    pub expert: f64,
}

/// One point of an arm's curve: the mean over the seeds that logged step `x` and its 95% bootstrap CI.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub x: f64,
    pub n: usize,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// A per-step metric, per arm.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub key: String,
    pub label: String,
    pub arms: Vec<(String, Vec<CurvePoint>)>,
}

/// A run's status in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    pub arm: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub finished: bool,
    pub before_stage_mean: Option<f64>,
    pub after_stage_mean: Option<f64>,
}

/// The whole report (`ablation.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub spec: PathBuf,
    pub grid: String,
    pub description: Option<String>,
    pub baseline: String,
    pub seeds: Vec<u64>,
    pub sft: String,
    pub eval_cases: usize,
    pub confidence: f64,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    /// The smallest two-sided p-value the sign-flip test can give with all seeds (2 / 2^n).
    pub min_p_all_seeds: f64,
    pub runs: Vec<RunRow>,
    /// Per seed: whether every arm's before-RL evaluation is the same (true by construction with a shared SFT).
    pub before_rl_identical: Vec<(u64, bool)>,
    pub metrics: Vec<MetricTable>,
    pub curves: Vec<Curve>,
}

/// A run's per-step metrics: key -> [(RL round, value)].
pub type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// The curves drawn: (metrics.jsonl key, label). `eval/stage_mean` is the mean of the four `eval/G_*`.
pub const CURVES: &[(&str, &str)] = &[
    ("rl/reward_mean", "RL reward (training rounds)"),
    ("eval/stage_mean", "held-out stage mean"),
    (
        "eval_sampled/stage_mean",
        "held-out stage mean, sampled ([eval.sampled])",
    ),
    ("eval/reward", "held-out rubric reward"),
    ("eval/hallucination_rate", "held-out hallucination rate"),
];

/// Bootstrap resamples per curve point (fewer than the table's: a curve has many points).
pub const CURVE_RESAMPLES: usize = 2_000;

/// Every arm's row of one metric, `value` reading it from an (arm, run) result (None or NaN: the run has none):
/// the mean over seeds with its CI, and the difference to the baseline arm paired by seed.
fn arm_stats(
    spec: &Spec,
    results: &BTreeMap<(String, u64), Comparison>,
    value: &dyn Fn(&str, &Comparison) -> Option<f64>,
) -> Vec<ArmStat> {
    let values_of = |arm: &str| -> Vec<(u64, f64)> {
        spec.seeds
            .iter()
            .filter_map(|s| {
                let v = value(arm, results.get(&(arm.to_string(), *s))?)?;
                v.is_finite().then_some((*s, v))
            })
            .collect()
    };
    let base = values_of(&spec.baseline);
    spec.arms
        .iter()
        .map(|a| {
            let values = values_of(&a.name);
            let xs: Vec<f64> = values.iter().map(|v| v.1).collect();
            let diff = (a.name != spec.baseline).then(|| {
                let d: Vec<f64> = values
                    .iter()
                    .filter_map(|(s, v)| base.iter().find(|(bs, _)| bs == s).map(|(_, b)| v - b))
                    .collect();
                PairedDiff {
                    vs: spec.baseline.clone(),
                    n: d.len(),
                    mean: stats::mean(&d),
                    ci: stats::bootstrap_ci(&d, 0.95, stats::RESAMPLES, stats::BOOTSTRAP_SEED),
                    test: stats::sign_flip_test(&d),
                }
            });
            ArmStat {
                arm: a.name.clone(),
                estimate: stats::estimate(&xs),
                values,
                diff,
            }
        })
        .collect()
}

/// Builds the report of `runs` (finished or not) for `spec`.
pub fn aggregate(spec: &Spec, runs: &[RunRef]) -> Result<Report> {
    let mut results: BTreeMap<(String, u64), Comparison> = BTreeMap::new();
    let mut rows = Vec::new();
    for r in runs {
        let c = read_comparison(&r.dir)?;
        rows.push(RunRow {
            arm: r.arm.clone(),
            seed: r.seed,
            dir: r.dir.clone(),
            finished: c.is_some(),
            before_stage_mean: c.as_ref().map(|c| metric_value(&c.before_rl, "stage_mean")),
            after_stage_mean: c.as_ref().map(|c| {
                metric_value(
                    if r.sft_only {
                        &c.before_rl
                    } else {
                        &c.after_rl
                    },
                    "stage_mean",
                )
            }),
        });
        if let Some(c) = c {
            results.insert((r.arm.clone(), r.seed), c);
        }
    }
    let sft_only: BTreeSet<&str> = runs
        .iter()
        .filter(|r| r.sft_only)
        .map(|r| r.arm.as_str())
        .collect();
    let result_of = |arm: &str, c: &Comparison| -> EvalSummary {
        if sft_only.contains(arm) {
            c.before_rl.clone()
        } else {
            c.after_rl.clone()
        }
    };
    let types: BTreeSet<String> = results
        .values()
        .flat_map(|c| {
            let sampled = c.sampled.iter().flat_map(|s| {
                s.before_rl
                    .iter()
                    .chain([&s.after_rl])
                    .flat_map(|e| e.violation_rates.keys())
            });
            c.before_rl
                .violation_rates
                .keys()
                .chain(c.after_rl.violation_rates.keys())
                .chain(sampled)
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    let mut metrics = Vec::new();
    for (key, label) in metric_keys(&types) {
        let value = |arm: &str, c: &Comparison| Some(metric_value(&result_of(arm, c), &key));
        let expert: Vec<f64> = results
            .values()
            .map(|c| metric_value(&c.expert, &key))
            .filter(|v| v.is_finite())
            .collect();
        metrics.push(MetricTable {
            arms: arm_stats(spec, &results, &value),
            key,
            label,
            expert: stats::mean(&expert),
        });
    }
    // The sampled evaluation's tables, where the runs made one: the same metrics, keyed `sampled/...`.
    let sampled_label = results
        .values()
        .find_map(|c| c.sampled.as_ref().map(|s| s.label.clone()));
    if let Some(sampled_label) = sampled_label {
        for (key, label) in metric_keys(&types) {
            let value = |arm: &str, c: &Comparison| {
                let s = c.sampled.as_ref()?;
                Some(metric_value(
                    sampled_result(s, sft_only.contains(arm)),
                    &key,
                ))
            };
            metrics.push(MetricTable {
                arms: arm_stats(spec, &results, &value),
                key: format!("sampled/{key}"),
                label: format!("{label}, sampled ({sampled_label})"),
                expert: f64::NAN,
            });
        }
    }
    let before_rl_identical = spec
        .seeds
        .iter()
        .map(|s| {
            let rows: Vec<&EvalSummary> = spec
                .arms
                .iter()
                .filter_map(|a| results.get(&(a.name.clone(), *s)).map(|c| &c.before_rl))
                .collect();
            (*s, rows.windows(2).all(|w| w[0] == w[1]))
        })
        .collect();
    let mut curves = Vec::new();
    let mut series: BTreeMap<(String, u64), Series> = BTreeMap::new();
    for r in runs {
        let p = r.dir.join("metrics.jsonl");
        if results.contains_key(&(r.arm.clone(), r.seed)) && p.is_file() {
            series.insert((r.arm.clone(), r.seed), read_rl_series(&p)?);
        }
    }
    for (key, label) in CURVES {
        let mut arms = Vec::new();
        for a in &spec.arms {
            let mut by_x: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for s in &spec.seeds {
                let Some(m) = series.get(&(a.name.clone(), *s)) else {
                    continue;
                };
                let points = m.get(*key).map(Vec::as_slice).unwrap_or_default();
                // An SFT-only arm ran no RL round: its curve is the evaluation before RL (its run's
                // "after RL" row, logged one step later, evaluates the same weights).
                for (x, v) in points.iter().filter(|(x, _)| !a.sft_only || *x <= 0.0) {
                    by_x.entry(x.round() as i64).or_default().push(*v);
                }
                // An RL run from a shared SFT checkpoint logs no evaluation at round 0: its curve starts at the
                // evaluation it made before its first round (comparison.json), the point the SFT arm shows.
                let logged_at_start = points.iter().any(|(x, _)| x.round() as i64 == 0);
                if !a.sft_only
                    && !logged_at_start
                    && let Some(c) = results.get(&(a.name.clone(), *s))
                {
                    let before = match key.split_once('/') {
                        Some(("eval", metric)) => Some((&c.before_rl, metric)),
                        Some(("eval_sampled", metric)) => c
                            .sampled
                            .as_ref()
                            .and_then(|x| x.before_rl.as_ref())
                            .map(|e| (e, metric)),
                        _ => None,
                    };
                    if let Some((e, metric)) = before {
                        by_x.entry(0).or_default().push(metric_value(e, metric));
                    }
                }
            }
            let points: Vec<CurvePoint> = by_x
                .into_iter()
                .map(|(x, vs)| {
                    let (lo, hi) =
                        stats::bootstrap_ci(&vs, 0.95, CURVE_RESAMPLES, stats::BOOTSTRAP_SEED);
                    CurvePoint {
                        x: x as f64,
                        n: vs.len(),
                        mean: stats::mean(&vs),
                        lo,
                        hi,
                    }
                })
                .collect();
            if !points.is_empty() {
                arms.push((a.name.clone(), points));
            }
        }
        curves.push(Curve {
            key: key.to_string(),
            label: label.to_string(),
            arms,
        });
    }
    Ok(Report {
        spec: spec.file.clone(),
        grid: crate::spec::describe(spec),
        description: spec.description.clone(),
        baseline: spec.baseline.clone(),
        seeds: spec.seeds.clone(),
        sft: match &spec.from {
            SftSource::Shared => {
                "one shared SFT run per seed (OUT/sft-s<seed>): every arm of a seed starts RL from its checkpoint"
                    .into()
            }
            SftSource::Own => "every run trains its own SFT (from = \"none\")".into(),
            SftSource::Path(p) => format!("the SFT run folders {p}: every arm of a seed starts RL from one"),
        },
        eval_cases: results.values().map(|c| c.eval_cases).max().unwrap_or(0),
        confidence: 0.95,
        bootstrap_resamples: stats::RESAMPLES,
        bootstrap_seed: stats::BOOTSTRAP_SEED,
        min_p_all_seeds: 2.0 / 2f64.powi(spec.seeds.len() as i32),
        runs: rows,
        before_rl_identical,
        metrics,
        curves,
    })
}

/// A run's metrics as (key -> [(RL round, value)]): the step minus the last SFT step (`sft/loss` rows), so the
/// evaluation before RL is at 0 and round r's metrics at r; `eval/stage_mean` (`eval_sampled/stage_mean`) is
/// added where all four `eval/G_*` (`eval_sampled/G_*`) were logged.
pub fn read_rl_series(path: &Path) -> Result<Series> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let Some(obj) = v.as_object() else { continue };
        let Some(step) = obj.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        rows.push((step, obj.clone()));
    }
    let sft_end = rows
        .iter()
        .filter(|(_, o)| o.contains_key("sft/loss"))
        .map(|(s, _)| *s)
        .fold(0.0, f64::max);
    let mut out: Series = BTreeMap::new();
    for (step, obj) in rows {
        let x = step - sft_end;
        let get = |k: &str| obj.get(k).and_then(|v| v.as_f64());
        for (k, v) in &obj {
            if k == "step" || k == "time" {
                continue;
            }
            if let Some(v) = v.as_f64() {
                out.entry(k.clone()).or_default().push((x, v));
            }
        }
        for prefix in ["eval", "eval_sampled"] {
            let g: Vec<f64> = ["inquiry", "ddx", "lab", "diag"]
                .iter()
                .filter_map(|s| get(&format!("{prefix}/G_{s}")))
                .collect();
            if g.len() == 4 {
                out.entry(format!("{prefix}/stage_mean"))
                    .or_default()
                    .push((x, g.iter().sum::<f64>() / 4.0));
            }
        }
    }
    Ok(out)
}

fn fmt(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "-".into()
    }
}

fn fmt_signed(v: f64) -> String {
    if v.is_finite() {
        format!("{v:+.3}")
    } else {
        "-".into()
    }
}

/// `ablation.md`: the table, readable.
pub fn markdown(r: &Report, command: &str) -> String {
    let mut md = String::new();
    md.push_str(&format!("# Ablation: {}\n\n", r.spec.display()));
    if let Some(d) = &r.description {
        md.push_str(&format!("{}\n\n", d.trim()));
    }
    md.push_str(&format!("`{command}`\n\n"));
    md.push_str(&format!("Grid: {}.\n\n", r.grid));
    md.push_str(&format!("SFT: {}.", r.sft));
    let same: Vec<String> = r
        .before_rl_identical
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(s, _)| s.to_string())
        .collect();
    if same.is_empty() {
        md.push_str(" Every arm of a seed reports the same held-out evaluation before RL.\n\n");
    } else {
        md.push_str(&format!(
            " The before-RL evaluations differ between arms for seed(s) {}: those arms do not share their SFT.\n\n",
            same.join(", ")
        ));
    }
    let done = r.runs.iter().filter(|x| x.finished).count();
    md.push_str(&format!("Runs: {done} of {} finished", r.runs.len()));
    let missing: Vec<String> = r
        .runs
        .iter()
        .filter(|x| !x.finished)
        .map(|x| format!("{}-s{}", x.arm, x.seed))
        .collect();
    if missing.is_empty() {
        md.push_str(".\n\n");
    } else {
        md.push_str(&format!(
            " (missing: {}; their seeds are left out of the paired comparisons).\n\n",
            missing.join(", ")
        ));
    }
    md.push_str(&format!(
        "Each value is the held-out evaluation ({} cases, greedy) after RL; an SFT-only arm's is the SFT checkpoint's. \
         Per arm: the mean over seeds [95% percentile bootstrap CI, {} resamples, seeded]. Δ: arm − {} paired by \
         seed, mean [95% bootstrap CI]. p: the exact two-sided sign-flip permutation test over the paired seeds; \
         with n seeds its smallest possible value is 2/2^n ({} for the {} seeds here), so p > 0.05 is not evidence \
         of no effect when that minimum is above 0.05: read the CI of Δ.\n\n",
        r.eval_cases,
        r.bootstrap_resamples,
        r.baseline,
        fmt_p(r.min_p_all_seeds),
        r.seeds.len()
    ));
    if r.metrics.iter().any(|m| m.key.starts_with("sampled/")) {
        md.push_str(
            "The tables marked \"sampled\" are the `[eval.sampled]` evaluation of the same checkpoints: every \
             held-out case played several times at the rollout's temperature (the policy RL trains), every sample \
             averaged; they come after the greedy tables.\n\n",
        );
    }
    for m in &r.metrics {
        md.push_str(&format!("## {}\n\n", m.label));
        md.push_str(&format!(
            "| arm | n | mean [95% CI] | Δ vs {} [95% CI] | p |\n|---|---|---|---|---|\n",
            r.baseline
        ));
        for a in &m.arms {
            let e = &a.estimate;
            let (d, p) = match &a.diff {
                Some(d) => (
                    format!(
                        "{} [{}, {}] (n={})",
                        fmt_signed(d.mean),
                        fmt_signed(d.ci.0),
                        fmt_signed(d.ci.1),
                        d.n
                    ),
                    fmt_p(d.test.p),
                ),
                None => ("(baseline)".into(), "".into()),
            };
            md.push_str(&format!(
                "| {} | {} | {} [{}, {}] | {} | {} |\n",
                a.arm,
                e.n,
                fmt(e.mean),
                fmt(e.ci.0),
                fmt(e.ci.1),
                d,
                p
            ));
        }
        if m.expert.is_finite() {
            md.push_str(&format!("\nScripted expert: {}.\n\n", fmt(m.expert)));
        } else {
            md.push('\n');
        }
    }
    md.push_str(
        "## Runs\n\n| run | folder | stage mean before RL | after (result) |\n|---|---|---|---|\n",
    );
    for x in &r.runs {
        md.push_str(&format!(
            "| {}-s{} | {} | {} | {} |\n",
            x.arm,
            x.seed,
            x.dir.display(),
            x.before_stage_mean.map_or("not finished".into(), fmt),
            x.after_stage_mean.map_or("".into(), fmt)
        ));
    }
    md.push_str(
        "\nCurves (mean and 95% bootstrap band over seeds, x = RL round; the held-out evaluation before RL is at 0, \
         the last one at steps + 1): `plots/`.\n",
    );
    md
}

fn fmt_p(p: f64) -> String {
    if p.is_finite() {
        format!("{p:.4}")
    } else {
        "-".into()
    }
}

/// Writes `out/ablation.md`, `out/ablation.json` and the curves in `out/plots/` (atomically; a machine without
/// fonts loses the pictures, not the table). Returns the plot files written.
pub fn write(out: &Path, report: &Report, command: &str) -> Result<Vec<PathBuf>> {
    spar_core::fsio::write_atomic(
        &out.join("ablation.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    spar_core::fsio::write_atomic(
        &out.join("ablation.md"),
        markdown(report, command).as_bytes(),
    )?;
    match crate::plots::draw_curves(&out.join("plots"), &report.curves) {
        Ok(files) => Ok(files),
        Err(e) => {
            eprintln!(
                "[ablate] warning: no plots ({e:#}); install a font (e.g. apt-get install fonts-dejavu-core) and \
                 run again with --report-only"
            );
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(stage: f64, halluc: f64) -> EvalSummary {
        EvalSummary {
            episodes: 4,
            reward_mean: stage,
            stage_means: [stage; 4],
            hallucination_rate: halluc,
            violation_rates: [("repetition".to_string(), halluc / 2.0)]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn write_run(dir: &Path, before: &EvalSummary, after: &EvalSummary, rl: &[f64]) {
        std::fs::create_dir_all(dir).unwrap();
        let c = serde_json::json!({
            "seed": 0, "eval_cases": 4, "initial": EvalSummary::default(),
            "before_rl": before, "after_rl": after, "expert": summary(0.9, 0.0),
        });
        std::fs::write(dir.join("comparison.json"), c.to_string()).unwrap();
        let mut lines = vec![
            serde_json::json!({"step": 1, "sft/loss": 2.0}).to_string(),
            serde_json::json!({"step": 2, "sft/loss": 1.0}).to_string(),
            serde_json::json!({"step": 2, "eval/G_inquiry": 0.5, "eval/G_ddx": 0.5, "eval/G_lab": 0.5, "eval/G_diag": 0.5})
                .to_string(),
        ];
        for (i, v) in rl.iter().enumerate() {
            lines.push(serde_json::json!({"step": 3 + i, "rl/reward_mean": v}).to_string());
        }
        // The "after RL" evaluation, logged one step past the last round.
        lines.push(
            serde_json::json!({"step": 3 + rl.len(), "eval/G_inquiry": 0.7, "eval/G_ddx": 0.7, "eval/G_lab": 0.7, "eval/G_diag": 0.7})
                .to_string(),
        );
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    }

    #[test]
    fn the_report_pairs_arms_with_the_baseline_by_seed() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec::parse(
            "base = \"b\"\nseeds = [0, 1, 2]\nbaseline = \"sft\"\n[[arm]]\nname = \"sft\"\nsft_only = true\n\
             [[arm]]\nname = \"up\"\nset = [\"trainer.lr=1\"]\n[[arm]]\nname = \"late\"\nset = [\"trainer.lr=2\"]\n",
            &tmp.path().join("spec.toml"),
        )
        .unwrap();
        let mut runs = Vec::new();
        for s in 0..3u64 {
            let before = summary(0.5 + 0.1 * s as f64, 0.2);
            let sft = tmp.path().join(format!("sft-s{s}"));
            write_run(&sft, &before, &before, &[]);
            let up = tmp.path().join(format!("up-s{s}"));
            // "up" gains 0.1, 0.2, 0.3 over SFT and halves the hallucination rate.
            write_run(
                &up,
                &before,
                &summary(0.6 + 0.2 * s as f64, 0.1),
                &[0.1 * s as f64, 0.5],
            );
            runs.push(RunRef {
                arm: "sft".into(),
                seed: s,
                dir: sft,
                sft_only: true,
            });
            runs.push(RunRef {
                arm: "up".into(),
                seed: s,
                dir: up,
                sft_only: false,
            });
            // "late" finished only seed 0.
            let late = tmp.path().join(format!("late-s{s}"));
            if s == 0 {
                write_run(&late, &before, &before, &[0.0]);
            }
            runs.push(RunRef {
                arm: "late".into(),
                seed: s,
                dir: late,
                sft_only: false,
            });
        }
        let r = aggregate(&spec, &runs).unwrap();
        let stage = &r.metrics[0];
        assert_eq!(stage.key, "stage_mean");
        let up = stage.arms.iter().find(|a| a.arm == "up").unwrap();
        assert!((up.estimate.mean - 0.8).abs() < 1e-12);
        let d = up.diff.as_ref().unwrap();
        assert_eq!(d.n, 3);
        assert!((d.mean - 0.2).abs() < 1e-12, "{}", d.mean);
        assert!(d.ci.0 >= 0.1 - 1e-12 && d.ci.1 <= 0.3 + 1e-12 && d.ci.0 < d.mean);
        assert_eq!(d.test.p, 0.25); // 3 positive pairs: 2 / 8
        let sft = stage.arms.iter().find(|a| a.arm == "sft").unwrap();
        assert!(sft.diff.is_none());
        assert!((sft.estimate.mean - 0.6).abs() < 1e-12);
        let late = stage.arms.iter().find(|a| a.arm == "late").unwrap();
        assert_eq!((late.estimate.n, late.diff.as_ref().unwrap().n), (1, 1));
        let h = r
            .metrics
            .iter()
            .find(|m| m.key == "hallucination_rate")
            .unwrap();
        let hd = h
            .arms
            .iter()
            .find(|a| a.arm == "up")
            .unwrap()
            .diff
            .clone()
            .unwrap();
        assert!((hd.mean + 0.1).abs() < 1e-12);
        assert!(
            r.metrics
                .iter()
                .any(|m| m.key == "violation_rate/repetition")
        );
        assert!((stage.expert - 0.9).abs() < 1e-12);
        assert!(r.before_rl_identical.iter().all(|(_, ok)| *ok));
        assert_eq!(r.runs.iter().filter(|x| !x.finished).count(), 2);
        // Curves: RL rounds counted from the end of SFT; eval/stage_mean derived at round 0.
        let rl = r.curves.iter().find(|c| c.key == "rl/reward_mean").unwrap();
        let (_, up_curve) = rl.arms.iter().find(|(a, _)| a == "up").unwrap();
        assert_eq!(up_curve[0].x, 1.0);
        assert_eq!(up_curve[0].n, 3);
        assert!((up_curve[0].mean - 0.1).abs() < 1e-12);
        assert!((up_curve[1].mean - 0.5).abs() < 1e-12 && up_curve[1].lo == 0.5);
        let ev = r
            .curves
            .iter()
            .find(|c| c.key == "eval/stage_mean")
            .unwrap();
        // The SFT-only arm's curve is its evaluation before RL alone; an RL arm's goes on to its last one.
        let xs = |arm: &str| -> Vec<f64> {
            let (_, p) = ev.arms.iter().find(|(a, _)| a == arm).unwrap();
            p.iter().map(|p| p.x).collect()
        };
        assert_eq!(xs("sft"), vec![0.0]);
        assert_eq!(xs("up"), vec![0.0, 3.0]);
        let md = markdown(&r, "spar ablate spec.toml");
        assert!(md.contains("| up | 3 | 0.800 ["), "{md}");
        assert!(md.contains("+0.200 ["), "{md}");
        assert!(md.contains("missing: late-s1, late-s2"), "{md}");
        assert!(md.contains("0.2500"), "{md}");
    }

    /// A spec of two arms over `seeds` (TOML): "sft" (SFT only, the baseline) and "rl".
    fn sft_vs_rl_spec(dir: &Path, seeds: &str) -> Spec {
        Spec::parse(
            &format!(
                "base = \"b\"\nseeds = {seeds}\nbaseline = \"sft\"\n[[arm]]\nname = \"sft\"\nsft_only = true\n\
                 [[arm]]\nname = \"rl\"\n"
            ),
            &dir.join("spec.toml"),
        )
        .unwrap()
    }

    /// Seed `s`'s runs of [`sft_vs_rl_spec`]'s two arms.
    fn push_sft_and_rl(runs: &mut Vec<RunRef>, s: u64, sft: PathBuf, rl: PathBuf) {
        for (arm, dir, sft_only) in [("sft", sft, true), ("rl", rl, false)] {
            runs.push(RunRef {
                arm: arm.into(),
                seed: s,
                dir,
                sft_only,
            });
        }
    }

    /// An RL run from a shared SFT checkpoint logs RL rounds and evaluations but no SFT steps and no evaluation
    /// at round 0: its held-out curves start from its own evaluation before RL.
    #[test]
    fn rl_curves_from_a_shared_sft_start_at_the_evaluation_before_rl() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = sft_vs_rl_spec(tmp.path(), "[0, 1]");
        let mut runs = Vec::new();
        for s in 0..2u64 {
            let before = summary(0.5 + 0.1 * s as f64, 0.2);
            let sft = tmp.path().join(format!("sft-s{s}"));
            write_run(&sft, &before, &before, &[]);
            let rl = tmp.path().join(format!("rl-s{s}"));
            write_run(&rl, &before, &summary(0.7, 0.1), &[0.4, 0.5]);
            // Shared SFT: the RL run's log starts at its first round (step 1), an evaluation after round 2.
            let lines = [
                serde_json::json!({"step": 1, "rl/reward_mean": 0.4}),
                serde_json::json!({"step": 2, "rl/reward_mean": 0.5}),
                serde_json::json!({"step": 2, "eval/G_inquiry": 0.7, "eval/G_ddx": 0.7, "eval/G_lab": 0.7,
                    "eval/G_diag": 0.7, "eval/reward": 0.8, "eval/hallucination_rate": 0.1}),
            ];
            let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            std::fs::write(rl.join("metrics.jsonl"), text.join("\n")).unwrap();
            push_sft_and_rl(&mut runs, s, sft, rl);
        }
        let r = aggregate(&spec, &runs).unwrap();
        let curve = |key: &str| {
            let c = r.curves.iter().find(|c| c.key == key).unwrap();
            c.arms.iter().find(|(a, _)| a == "rl").unwrap().1.clone()
        };
        let stage = curve("eval/stage_mean");
        assert_eq!(
            stage.iter().map(|p| p.x).collect::<Vec<_>>(),
            vec![0.0, 2.0]
        );
        // summary(s) puts s in every stage: the seeds' 0.5 and 0.6 before RL.
        assert_eq!(stage[0].n, 2);
        assert!((stage[0].mean - 0.55).abs() < 1e-12, "{}", stage[0].mean);
        assert!((stage[1].mean - 0.7).abs() < 1e-12);
        let halluc = curve("eval/hallucination_rate");
        assert!((halluc[0].mean - 0.2).abs() < 1e-12 && halluc[0].x == 0.0);
        // The training-reward curve has no evaluation to borrow: it starts at round 1.
        assert_eq!(curve("rl/reward_mean")[0].x, 1.0);
    }

    /// Adds `[eval.sampled]` rows to a run written by `write_run`, and their metrics to its log (the evaluation
    /// before RL at the last SFT step, the one after RL one step past the last round).
    fn add_sampled(dir: &Path, before: Option<&EvalSummary>, after: &EvalSummary, rounds: usize) {
        let p = dir.join("comparison.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c["sampled"] = serde_json::json!({
            "label": "4 a case at T = 0.7", "before_rl": before, "after_rl": after,
        });
        std::fs::write(&p, c.to_string()).unwrap();
        let stages = |e: &EvalSummary, step: usize| {
            let g = e.stage_means;
            serde_json::json!({"step": step, "eval_sampled/G_inquiry": g[0], "eval_sampled/G_ddx": g[1],
                "eval_sampled/G_lab": g[2], "eval_sampled/G_diag": g[3]})
            .to_string()
        };
        let log = dir.join("metrics.jsonl");
        let mut text = std::fs::read_to_string(&log).unwrap();
        if let Some(b) = before {
            text.push_str(&format!("\n{}", stages(b, 2)));
        }
        if rounds > 0 {
            text.push_str(&format!("\n{}", stages(after, 3 + rounds)));
        }
        std::fs::write(&log, text).unwrap();
    }

    /// Runs with a sampled evaluation get the same metrics again, keyed `sampled/...` (an SFT-only arm's result
    /// its sampled row after SFT), paired by seed like the greedy ones, and a sampled stage-mean curve; runs
    /// without one leave the report as it was.
    #[test]
    fn sampled_rows_get_tables_and_a_curve_of_their_own() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = sft_vs_rl_spec(tmp.path(), "[0, 1, 2]");
        let mut runs = Vec::new();
        for s in 0..3u64 {
            let before = summary(0.5, 0.2);
            let sft = tmp.path().join(format!("sft-s{s}"));
            write_run(&sft, &before, &before, &[]);
            let rl = tmp.path().join(format!("rl-s{s}"));
            // Greedy: RL changes nothing; sampled: 0.40 after SFT, 0.44 + 0.01 s after RL.
            write_run(&rl, &before, &before, &[0.1, 0.2]);
            let sampled_before = summary(0.40, 0.3);
            // An SFT-only run's "after RL" row evaluates its SFT checkpoint again (other samples).
            add_sampled(&sft, Some(&sampled_before), &summary(0.41, 0.3), 0);
            add_sampled(
                &rl,
                Some(&sampled_before),
                &summary(0.44 + 0.01 * s as f64, 0.25),
                2,
            );
            push_sft_and_rl(&mut runs, s, sft, rl);
        }
        let r = aggregate(&spec, &runs).unwrap();
        let table = |key: &str| r.metrics.iter().find(|m| m.key == key).unwrap();
        let rl_diff = |key: &str| {
            let a = table(key).arms.iter().find(|a| a.arm == "rl").unwrap();
            a.diff.clone().unwrap()
        };
        assert!(rl_diff("stage_mean").mean.abs() < 1e-12);
        let d = rl_diff("sampled/stage_mean");
        assert_eq!(d.n, 3);
        assert!((d.mean - 0.05).abs() < 1e-12, "{}", d.mean);
        assert!(d.ci.0 > 0.0 && d.test.p == 0.25);
        assert!((rl_diff("sampled/hallucination_rate").mean + 0.05).abs() < 1e-12);
        let sft = table("sampled/stage_mean").arms[0].clone();
        assert_eq!(sft.arm, "sft");
        assert!((sft.estimate.mean - 0.40).abs() < 1e-12);
        assert!(
            table("sampled/stage_mean")
                .label
                .contains("4 a case at T = 0.7")
        );
        let curve = r
            .curves
            .iter()
            .find(|c| c.key == "eval_sampled/stage_mean")
            .unwrap();
        let (_, points) = curve.arms.iter().find(|(a, _)| a == "rl").unwrap();
        assert_eq!(
            points.iter().map(|p| p.x).collect::<Vec<_>>(),
            vec![0.0, 3.0]
        );
        assert!((points[0].mean - 0.40).abs() < 1e-12 && (points[1].mean - 0.45).abs() < 1e-12);
        let md = markdown(&r, "spar ablate spec.toml");
        assert!(md.contains("sampled (4 a case at T = 0.7)"), "{md}");
        assert!(md.contains("+0.050 ["), "{md}");
        // Without sampled rows: no sampled tables.
        for run in &runs {
            write_run(&run.dir, &summary(0.5, 0.2), &summary(0.5, 0.2), &[]);
        }
        let plain = aggregate(&spec, &runs).unwrap();
        assert!(!plain.metrics.iter().any(|m| m.key.starts_with("sampled/")));
        assert!(!markdown(&plain, "x").contains("sampled"));
    }

    #[test]
    fn differing_before_rl_rows_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec::parse(
            "base = \"b\"\nseeds = [0]\nbaseline = \"a\"\n[[arm]]\nname = \"a\"\n[[arm]]\nname = \"b\"\n",
            &tmp.path().join("spec.toml"),
        )
        .unwrap();
        let (a, b) = (tmp.path().join("a-s0"), tmp.path().join("b-s0"));
        write_run(&a, &summary(0.5, 0.0), &summary(0.5, 0.0), &[]);
        write_run(&b, &summary(0.4, 0.0), &summary(0.5, 0.0), &[]);
        let runs = vec![
            RunRef {
                arm: "a".into(),
                seed: 0,
                dir: a,
                sft_only: false,
            },
            RunRef {
                arm: "b".into(),
                seed: 0,
                dir: b,
                sft_only: false,
            },
        ];
        let r = aggregate(&spec, &runs).unwrap();
        assert_eq!(r.before_rl_identical, vec![(0, false)]);
        assert!(markdown(&r, "x").contains("differ between arms for seed(s) 0"));
    }
}
