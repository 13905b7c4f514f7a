//! One trainer step from files: samples (from `spar rollout`) and their scores (from `spar score`) train a
//! policy once with the recipe's loss; the result is a checkpoint under `out/checkpoints` plus
//! `out/metrics.jsonl`. This is the contract path rollout -> rewards -> trainer with nothing hand-built between;
//! the caller (spar-app) reads the files and loads the model.
use crate::batch::assemble;
use crate::checkpoint::{self, TrainerState};
use crate::knobs::{batching_config, new_rl_learner, policy_loss_config};
use crate::learner::{StepReport, rl_update};
use crate::metrics::MetricsLogger;
use crate::policy_loss::RatioLevel;
use anyhow::{Context, Result, bail};
use spar_core::recipe::TrainerSection;
use spar_core::{Sample, Scored};
use spar_model::Qwen3Model;
use std::path::Path;

/// Trains `model` once on `samples` + `scored` (`origin` names their files in errors) with a constant LR; the
/// samples were drawn at `sampling_temperature` (the recipe's `rollout.sampling.temperature`).
pub fn offline_step(
    tr: &TrainerSection,
    sampling_temperature: f32,
    model: &Qwen3Model,
    samples: &[Sample],
    scored: &[Scored],
    origin: &str,
    out: &Path,
) -> Result<StepReport> {
    let (items, report) = assemble(samples, scored, origin)?;
    if items.is_empty() {
        bail!("{origin}: no trainable sample ({report:?})");
    }
    let level = RatioLevel::of(tr.policy_loss).with_context(|| {
        format!(
            "trainer.policy_loss = \"{}\": one step from files needs an RL loss",
            tr.policy_loss
        )
    })?;
    let loss_cfg = policy_loss_config(tr, level, sampling_temperature)?;
    let batching = batching_config(tr)?;
    let mut constant = tr.clone();
    constant.schedule = spar_core::recipe::LrDecay::Constant;
    let mut learner = new_rl_learner(&constant, model, tr.lr, 1, 0)?;
    let rep = rl_update(
        model,
        None,
        &mut learner,
        &items,
        &loss_cfg,
        &batching,
        1,
        model.device(),
    )?
    .remove(0);
    let mut metrics = MetricsLogger::open(out, None)?;
    let mut scalars = vec![
        ("rl/loss".to_string(), rep.loss),
        ("rl/grad_norm".into(), rep.grad_norm),
        ("rl/samples".into(), items.len() as f64),
    ];
    scalars.extend(
        rep.stats
            .means()
            .into_iter()
            .map(|(k, v)| (format!("rl/{k}"), v)),
    );
    metrics.log(1, &scalars)?;
    let state = TrainerState {
        step: learner.step,
        phase: "offline".into(),
        phase_step: 1,
        ..Default::default()
    };
    checkpoint::save(
        &out.join("checkpoints"),
        model,
        &learner.adamw,
        &state,
        tr.keep_last,
    )?;
    Ok(rep)
}
