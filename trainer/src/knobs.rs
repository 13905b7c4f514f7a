//! The `[trainer]` section as the learner's configuration structs.
use crate::adamw::{AdamW, AdamWConfig};
use crate::learner::{BatchingConfig, Learner};
use crate::policy_loss::{PolicyLossConfig, RatioLevel};
use crate::schedule::LrSchedule;
use anyhow::Result;
use spar_core::recipe::TrainerSection;
use spar_model::Qwen3Model;

/// The policy-loss knobs at the given ratio level, for samples drawn at `sampling_temperature` (the rollout's
/// `sampling.temperature`; see [`crate::policy_loss::training_temperature`]).
pub fn policy_loss_config(
    tr: &TrainerSection,
    level: RatioLevel,
    sampling_temperature: f32,
) -> Result<PolicyLossConfig> {
    Ok(PolicyLossConfig {
        level,
        eps_low: tr.eps_low,
        eps_high: tr.eps_high,
        dual_clip: tr.dual_clip,
        tis_cap: tr.tis_cap,
        kl_coef: tr.kl_coef,
        kl_estimator: tr.kl_estimator.into(),
        kl_in_reward: tr.kl_in_reward,
        entropy_coef: tr.entropy_coef,
        temperature: crate::policy_loss::training_temperature(sampling_temperature),
    })
}

/// The ratio level of `policy_loss`. SFT and distillation have no importance ratio of their own; their
/// RL-shaped knobs use SPAR's segment level.
pub fn ratio_level(tr: &TrainerSection) -> RatioLevel {
    RatioLevel::of(tr.policy_loss).unwrap_or(RatioLevel::Segment)
}

/// The batching knobs of RL updates.
pub fn batching_config(tr: &TrainerSection) -> Result<BatchingConfig> {
    Ok(BatchingConfig {
        micro_batch: tr.micro_batch,
        token_budget: tr.token_budget,
        pack: tr.pack_sequences,
        agg: tr.loss_agg,
        l_max: tr.l_max,
    })
}

/// A fresh learner (AdamW over `model`'s parameters, the LR schedule over `steps` optimizer steps).
pub fn new_learner(
    tr: &TrainerSection,
    model: &Qwen3Model,
    lr: f64,
    steps: usize,
    warmup: usize,
) -> Result<Learner> {
    Ok(Learner {
        adamw: AdamW::new(
            &model.vs,
            AdamWConfig {
                beta1: tr.betas[0],
                beta2: tr.betas[1],
                eps: 1e-8,
                weight_decay: tr.weight_decay,
                state: tr.optimizer_state,
            },
        ),
        schedule: LrSchedule::new(lr, warmup, steps, tr.schedule),
        step: 0,
        grad_clip: tr.grad_clip,
        max_bad_steps: tr.max_bad_steps,
        bad_in_a_row: 0,
        bad_total: 0,
        aux_loss_coef: aux_loss_coef(tr.aux_loss_coef, model),
        group: std::sync::Arc::new(spar_dist::Local),
        sharded: None,
        grad_sum: None,
        expert_parallel: false,
        offload_optimizer: tr.offload_optimizer,
        optimizer_parked: false,
        at_rest: crate::sharded::AtRest::Whole,
        cuda_graphs: (tr.learner_cuda_graphs
            && crate::learner_graphs::LearnerGraphs::supported(model.device()))
        .then(Default::default),
    })
}

/// A fresh learner for RL updates: [`new_learner`] with the RL phase's load-balancing weight
/// (`trainer.rl_aux_loss_coef`, else `aux_loss_coef`'s).
pub fn new_rl_learner(
    tr: &TrainerSection,
    model: &Qwen3Model,
    lr: f64,
    steps: usize,
    warmup: usize,
) -> Result<Learner> {
    let mut learner = new_learner(tr, model, lr, steps, warmup)?;
    learner.aux_loss_coef = aux_loss_coef(tr.rl_aux_loss_coef.or(tr.aux_loss_coef), model);
    Ok(learner)
}

/// The MoE load-balancing loss weight: `coef`, else the model config's `router_aux_loss_coef`. A dense model has
/// no router: 0, so that no rank waits on the loss's per-micro-batch all-reduce.
fn aux_loss_coef(coef: Option<f64>, model: &Qwen3Model) -> f64 {
    if model.config.num_experts == 0 {
        0.0
    } else {
        coef.unwrap_or(model.config.router_aux_loss_coef)
    }
}
