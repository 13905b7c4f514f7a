//! What a training run reports: per-round and held-out metrics, and the run's results on disk (the held-out
//! comparison, the trained model in HF format, plots, the table printed at the end).
use crate::parts::EvalSummary;
use crate::session::Session;
use anyhow::Result;
use spar_core::{Sample, Scored, Stage};
use spar_model::Qwen3Model;
use std::path::Path;

/// The held-out evaluations of one run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HeldOutTable {
    pub initial: EvalSummary,
    pub before_rl: EvalSummary,
    pub after_rl: EvalSummary,
    pub expert: EvalSummary,
    /// `[eval.sampled]`: what it played ([`crate::parts::Evaluator::sampled_label`]) and its rows after SFT and
    /// after RL (None: not asked for, or a run resumed from before it existed).
    #[serde(default)]
    pub sampled: Option<SampledRows>,
}

pub use spar_core::SampledRows;

/// Writes a held-out evaluation's transcripts to `OUT/transcripts/<name>.md` (atomically).
pub fn write_transcripts(out: &Path, name: &str, transcripts: &str) -> Result<()> {
    spar_core::fsio::write_atomic(
        &out.join("transcripts").join(format!("{name}.md")),
        transcripts.as_bytes(),
    )?;
    Ok(())
}

/// Logs a held-out evaluation (`eval/reward`, `eval/G_<stage>`, `eval/violation_rate/<type>`, ...) at the
/// session's current step + `offset`.
pub fn log_eval(session: &mut Session, offset: usize, s: &EvalSummary) -> Result<()> {
    log_eval_as(session, offset, s, "eval")
}

/// [`log_eval`] under another prefix (`eval_sampled`: the sampled held-out evaluation).
pub fn log_eval_as(
    session: &mut Session,
    offset: usize,
    s: &EvalSummary,
    prefix: &str,
) -> Result<()> {
    let mut v = vec![
        (format!("{prefix}/reward"), s.reward_mean),
        (format!("{prefix}/parsed_rate"), s.parsed_rate),
        (format!("{prefix}/hallucination_rate"), s.hallucination_rate),
        (format!("{prefix}/claims_per_episode"), s.claims_per_episode),
        (format!("{prefix}/violation_rate"), s.violation_rate),
    ];
    for (kind, rate) in &s.violation_rates {
        v.push((format!("{prefix}/violation_rate/{kind}"), *rate));
    }
    for st in Stage::ALL {
        v.push((
            format!("{prefix}/G_{}", st.name()),
            s.stage_means[st.index()],
        ));
    }
    let step = session.global_step + offset;
    session.log_at(step, &v)
}

/// Writes the run's results: `comparison.json`, `final/` (HF weights + the tokenizer), plots; prints the
/// held-out table.
pub fn write_results(
    out: &Path,
    seed: u64,
    eval_cases: usize,
    table: &HeldOutTable,
    model: Option<&Qwen3Model>,
    tokenizer_dir: &Path,
) -> Result<()> {
    let comparison = serde_json::json!({
        "seed": seed,
        "eval_cases": eval_cases,
        "initial": table.initial,
        "before_rl": table.before_rl,
        "after_rl": table.after_rl,
        "expert": table.expert,
        "sampled": table.sampled,
    });
    spar_core::fsio::write_atomic(
        &out.join("comparison.json"),
        serde_json::to_string_pretty(&comparison)?.as_bytes(),
    )?;
    // None: written already, by every rank together (weights sharded at rest).
    if let Some(model) = model {
        model.save_hf(&out.join("final"))?;
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        // The tokenizer config is optional (a trained BPE has none).
        std::fs::copy(tokenizer_dir.join(f), out.join("final").join(f)).ok();
    }
    // The run's results are on disk by now: a machine without fonts loses the charts, not the run.
    let plots = crate::plot::plot_run(out, &[]).unwrap_or_else(|e| {
        eprintln!(
            "[train] warning: no plots ({e:#}); `spar plot {}` draws them once a font is installed \
             (e.g. apt-get install fonts-dejavu-core)",
            out.display()
        );
        Vec::new()
    });
    // The rubric reward is the headline; the stage means are what RL optimises (G_k); then the stage mean's
    // average, the hallucination rate per claim and the share of doctor steps with a violation.
    eprintln!(
        "[train] held-out ({eval_cases} cases, greedy)   reward  inquiry  ddx    lab    diag   stages  halluc  viol"
    );
    let rows = [
        ("initial (random)", &table.initial),
        ("after SFT", &table.before_rl),
        ("after RL", &table.after_rl),
        ("scripted expert", &table.expert),
    ];
    for (label, e) in rows {
        print_row(label, e);
    }
    if let Some(t) = &table.sampled {
        eprintln!(
            "[train] held-out, sampled ({eval_cases} cases, {}; the policy RL trains)",
            t.label
        );
        let before = t.before_rl.as_ref();
        for (label, e) in [("after SFT", before), ("after RL", Some(&t.after_rl))] {
            if let Some(e) = e {
                print_row(label, e);
            }
        }
    }
    let kinds: std::collections::BTreeSet<&String> = rows
        .iter()
        .flat_map(|(_, e)| e.violation_rates.keys())
        .collect();
    if !kinds.is_empty() {
        eprintln!("[train] held-out violation rate per doctor step, by detector:");
        for kind in kinds {
            let rates: Vec<String> = rows
                .iter()
                .map(|(label, e)| {
                    let r = e.violation_rates.get(kind).copied().unwrap_or(0.0);
                    format!("{label} {r:.3}")
                })
                .collect();
            eprintln!("[train]   {kind:<20} {}", rates.join("  "));
        }
    }
    eprintln!(
        "[train] wrote {} (comparison.json, transcripts/, {} plot files, final/)",
        out.display(),
        plots.len()
    );
    Ok(())
}

/// One row of the held-out table: reward, the four G_k, their mean, hallucination and violation rates.
fn print_row(label: &str, e: &EvalSummary) {
    let g = e.stage_means;
    eprintln!(
        "[train]   {label:<24} {:.3}   {:.3}    {:.3}  {:.3}  {:.3}  {:.3}   {:.3}   {:.3}",
        e.reward_mean,
        g[0],
        g[1],
        g[2],
        g[3],
        g.iter().sum::<f64>() / 4.0,
        e.hallucination_rate,
        e.violation_rate
    );
}

/// Reward, per-stage score, violation and hallucination rates of one round, and its diagnostics
/// ([`crate::round_stats`]).
pub fn round_metrics(samples: &[Sample], scored: &[Scored]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let kept: Vec<&Scored> = scored.iter().filter(|s| s.drop_reason.is_none()).collect();
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            f64::NAN
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    out.push((
        "rl/reward_mean".into(),
        mean(&kept.iter().map(|s| s.reward).collect::<Vec<_>>()),
    ));
    out.push((
        "rl/r_fact_mean".into(),
        mean(&kept.iter().map(|s| s.r_fact).collect::<Vec<_>>()),
    ));
    let stage_of = crate::round_stats::stage_of(samples);
    for st in Stage::ALL {
        let g: Vec<f64> = kept
            .iter()
            .filter(|s| stage_of.get(&(s.group_id.as_str(), s.sample_idx)) == Some(&st))
            .filter_map(|s| s.stage_score)
            .collect();
        if !g.is_empty() {
            out.push((format!("rl/G_{}", st.name()), mean(&g)));
        }
    }
    let steps: Vec<&spar_core::sample::StepScore> =
        kept.iter().flat_map(|s| s.steps.iter()).collect();
    out.push((
        "rl/violation_rate".into(),
        steps.iter().filter(|s| !s.violations.is_empty()).count() as f64
            / steps.len().max(1) as f64,
    ));
    let claims: Vec<_> = kept.iter().flat_map(|s| s.claims.iter()).collect();
    out.push((
        "rl/hallucination_rate".into(),
        claims
            .iter()
            .map(|c| c.label.hallucination_weight())
            .sum::<f64>()
            / claims.len().max(1) as f64,
    ));
    out.push((
        "rl/dropped_groups_samples".into(),
        (scored.len() - kept.len()) as f64,
    ));
    out.extend(crate::round_stats::RoundTally::of(samples, scored).metrics());
    out
}
