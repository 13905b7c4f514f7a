//! One optimisation step on a batch of trained items: pi_old recomputed by a no-grad forward before the first
//! update, then `ppo_epochs` passes of gradient accumulation over micro-batches, global grad-norm clipping,
//! a NaN/Inf guard (skip the step, count it, stop after too many in a row) and the AdamW update.
//!
//! Data parallel: the learner's `group` holds the ranks (a [`spar_dist::Local`] world of one without a
//! launcher). Each rank passes its own share of the batch; token / sequence counts are summed over the ranks
//! before any loss is divided, the all-zero-advantage skip is one decision for all ranks, and the gradients are
//! summed over the ranks (bucketed) before clipping, so N ranks take the step one process takes on the union
//! batch (up to float summation order). Losses and statistics in the [`StepReport`] are the union batch's.
//! With a Qwen3 policy the sum overlaps the last micro-batch's backward (see [`crate::grad_sum`]).
//!
//! Fully sharded (`sharded`, see [`crate::sharded`]): the same step, but the gradients arrive reduce-scattered
//! into each rank's chunk during backward, the norm is summed over the chunks, and AdamW updates the chunks;
//! the ranks' micro-batch counts are padded to the largest so that every rank gathers the same layers.
use crate::adamw::AdamW;
use crate::agg::{AggMode, Aggregator};
use crate::batch::{MicroBatch, TrainItem, collate, plan_micro_batches, totals};
use crate::distill;
use crate::grad_sum::OverlappedGradSum;
use crate::learner_graphs::{LearnerGraphs, StepKind};
use crate::policy::{Policy, PolicyInput, PolicyOutput};
use crate::policy_loss::{
    LossStats, PolicyLossConfig, PolicyLossInput, policy_loss, policy_loss_parts, stat,
};
use crate::schedule::LrSchedule;
use crate::sharded::{AtRest, ShardedParams};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use spar_dist::{Collectives, any_rank, max_over_ranks, sum_over_ranks};
use spar_model::LogprobOptions;
use spar_model::torch_profiler::range;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// How a batch is cut and accumulated.
#[derive(Clone, Copy, Debug)]
pub struct BatchingConfig {
    pub micro_batch: usize,
    pub token_budget: usize,
    pub pack: bool,
    pub agg: AggMode,
    pub l_max: usize,
}

/// Optimizer-side state of a run: what a checkpoint must hold besides the weights.
pub struct Learner {
    pub adamw: AdamW,
    pub schedule: LrSchedule,
    /// Optimizer steps taken (skipped steps are not counted).
    pub step: usize,
    pub grad_clip: f64,
    pub max_bad_steps: usize,
    pub bad_in_a_row: usize,
    pub bad_total: usize,
    /// MoE load-balancing loss coefficient (0 = off).
    pub aux_loss_coef: f64,
    /// The data-parallel ranks this learner steps with (`Arc::new(spar_dist::Local)`: one process).
    pub group: Arc<dyn Collectives>,
    /// Fully sharded parameters and optimizer ([`Learner::shard`]); None: every rank holds everything.
    pub sharded: Option<Arc<ShardedParams>>,
    /// Plain data parallelism's gradient sum overlapped with backward ([`Learner::join`]); None: summed after
    /// backward, in one go.
    pub grad_sum: Option<Arc<OverlappedGradSum>>,
    /// The model's MoE layers divide their experts among an expert-parallel group ([`Learner::join`]): the
    /// ranks' micro-batch counts are padded to the largest, as when sharded.
    pub expert_parallel: bool,
    /// `trainer.offload_optimizer`: [`Learner::park_optimizer`] moves the optimizer state to host memory while
    /// the rollout plays; the next update brings it back.
    pub offload_optimizer: bool,
    /// The optimizer state is parked in host memory now (set and cleared by the learner).
    pub optimizer_parked: bool,
    /// What a sharded learner ([`Learner::shard`]) keeps between updates (`[distributed] weights_at_rest`).
    pub at_rest: AtRest,
    /// `trainer.learner_cuda_graphs`: supervised micro-steps replay CUDA graphs (see [`crate::learner_graphs`]);
    /// None: eager.
    pub cuda_graphs: Option<LearnerGraphs>,
}

/// What one optimisation step did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepReport {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub skipped: bool,
    pub tokens: usize,
    pub micro_batches: usize,
    pub stats: LossStats,
    /// The update was skipped because every advantage of the batch was 0 and no other loss term asked to
    /// train on its own (`skipped` is then set too): the policy gradient is 0, and an optimizer step would only
    /// replay Adam's momentum and the MoE aux loss (method.md section 9, "Rounds without signal").
    #[serde(default)]
    pub skipped_empty_advantage: bool,
    /// Metrics of the optional parts (critic, distillation teachers), already averaged, by metric name.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, f64>,
}

impl Learner {
    /// Clips, checks and applies accumulated gradients; `loss` is this rank's accumulated loss value. With
    /// several ranks, first sums the gradients and the loss over them (the norm, the clipping and the
    /// non-finite check then see the union batch's, identically on every rank). Returns (the union batch's loss,
    /// grad norm before clipping, lr, skipped).
    pub(crate) fn apply(&mut self, loss: f64) -> Result<(f64, f64, f64, bool)> {
        let norm = match &self.sharded {
            // The gradients already sit reduced in each rank's chunk; the norm is summed over the chunks.
            Some(sh) => {
                sh.finish_grads()?;
                sum_over_ranks(&*self.group, &[self.adamw.grad_sq_sum()])?[0].sqrt()
            }
            None => {
                match &self.grad_sum {
                    Some(sum) => sum.finish()?,
                    None => self.adamw.all_reduce_grads(&*self.group)?,
                }
                self.adamw.grad_norm()
            }
        };
        let loss = sum_over_ranks(&*self.group, &[loss])?[0];
        self.adamw.clip_to(norm, self.grad_clip);
        let lr = self.schedule.lr(self.step);
        if !loss.is_finite() || !norm.is_finite() {
            self.bad_in_a_row += 1;
            self.bad_total += 1;
            self.adamw.zero_grad();
            tracing::warn!(
                step = self.step,
                loss,
                grad_norm = norm,
                "non-finite loss or gradient: step skipped"
            );
            // Sharded: the masters did not move; the weights are made whole again as after a step.
            self.end_update()?;
            if self.bad_in_a_row > self.max_bad_steps {
                bail!(
                    "{} non-finite steps in a row (trainer.max_bad_steps = {}): stopping",
                    self.bad_in_a_row,
                    self.max_bad_steps
                );
            }
            return Ok((loss, norm, lr, true));
        }
        self.bad_in_a_row = 0;
        self.adamw.step(lr);
        self.adamw.zero_grad();
        if let Some(sh) = &self.sharded {
            let sums = sum_over_ranks(
                &*self.group,
                &[self.adamw.last_update_sums.0, self.adamw.last_update_sums.1],
            )?;
            self.adamw.last_update_ratio = crate::adamw::update_ratio((sums[0], sums[1]));
            // The new weights, whole again for the rollout engine (the next update reshards them), or only
            // this rank's chunks when they stay sharded at rest.
            sh.settle()?;
        }
        self.step += 1;
        Ok((loss, norm, lr, false))
    }

    /// Makes this learner step with `group`: fully sharded ([`Learner::shard`]) when `sharded`, otherwise plain
    /// data parallel with the gradient sum overlapped with `model`'s backward (with more than one rank). With
    /// `experts` (a group of more than one rank, inside `group`), the model's training forwards divide the
    /// experts among its ranks (see [`spar_model::expert_parallel`]); the expert gradients then arise on their
    /// owners only, and the sum over `group` that follows gives every rank the whole gradient.
    pub fn join(
        &mut self,
        group: Arc<dyn Collectives>,
        model: &mut spar_model::Qwen3Model,
        sharded: bool,
        experts: Option<Arc<dyn Collectives>>,
    ) -> Result<()> {
        self.group = group;
        if let Some(eg) = experts.filter(|g| g.world_size() > 1) {
            model.set_expert_parallel(Some(Arc::new(crate::expert_parallel::ExpertGroup(eg))))?;
            self.expert_parallel = true;
        }
        if sharded {
            self.shard(model)
        } else {
            if self.group.world_size() > 1 {
                self.grad_sum = Some(OverlappedGradSum::install(model, self.group.clone()));
            }
            Ok(())
        }
    }

    /// The coming backward is the update's last: the overlapped gradient sum starts as it goes.
    fn last_backward(&self) {
        if let Some(sum) = &self.grad_sum {
            sum.arm();
        }
    }

    /// Shards `model`'s parameters and this learner's optimizer over [`Learner::group`] (fully sharded data
    /// parallelism, see [`crate::sharded`]): AdamW then holds this rank's chunks only. Call it on a fresh
    /// learner, before loading a checkpoint into it.
    pub fn shard(&mut self, model: &mut spar_model::Qwen3Model) -> Result<()> {
        anyhow::ensure!(
            self.adamw.config.state == crate::adamw::OptimizerState::Fp32,
            "trainer.optimizer_state = \"{}\" is for plain learners: a sharded learner keeps fp32 chunks of \
             the weights as its masters (set it to \"fp32\" with distributed.sharding = \"full\")",
            self.adamw.config.state.name()
        );
        let (sh, adamw) =
            ShardedParams::new(model, self.group.clone(), self.adamw.config, self.at_rest)?;
        model.set_param_units(Some(sh.clone()));
        self.adamw = adamw;
        self.sharded = Some(sh);
        Ok(())
    }

    /// Moves the optimizer state (Adam moments and fp32 masters; when sharded, this rank's master chunks and
    /// their gradients) to host memory, so that the GPU holds only the weights and the rollout engine's
    /// cache while a round is played (`trainer.offload_optimizer`, verl's optimizer offload). The next update
    /// moves it back first. A no-op without the knob, when parked already, or when the state is on the CPU.
    pub fn park_optimizer(&mut self) -> Result<()> {
        if !self.offload_optimizer || self.optimizer_parked {
            return Ok(());
        }
        if !self.adamw.device().is_some_and(|d| d.is_cuda()) {
            return Ok(());
        }
        let t = std::time::Instant::now();
        self.move_optimizer_state(Device::Cpu)?;
        self.optimizer_parked = true;
        tracing::debug!(
            seconds = t.elapsed().as_secs_f64(),
            "optimizer state parked in host memory"
        );
        Ok(())
    }

    /// Brings a parked optimizer state back to `device` (the model's) before an update.
    fn unpark_optimizer(&mut self, device: Device) -> Result<()> {
        if !self.optimizer_parked {
            return Ok(());
        }
        self.move_optimizer_state(device)?;
        self.optimizer_parked = false;
        Ok(())
    }

    /// The moments and masters to `device`; when sharded, the master chunks and their gradients too.
    fn move_optimizer_state(&mut self, device: Device) -> Result<()> {
        self.adamw.move_state(device)?;
        match &self.sharded {
            Some(sh) => sh.move_masters(device),
            None => Ok(()),
        }
    }

    /// Frees the whole parameters before an update's forwards (sharded; a no-op otherwise), after bringing a
    /// parked optimizer state back to `device`.
    fn begin_update(&mut self, device: Device) -> Result<()> {
        self.unpark_optimizer(device)?;
        match &self.sharded {
            Some(sh) => sh.reshard(),
            None => Ok(()),
        }
    }

    /// Puts the parameters back in their state between updates when an update ends without a step (sharded; a
    /// no-op otherwise). After a step [`Learner::apply`] does it from the moved masters.
    fn end_update(&self) -> Result<()> {
        match &self.sharded {
            Some(sh) => sh.settle(),
            None => Ok(()),
        }
    }

    /// Sharded or expert parallel: appends padding micro-batches until every rank has as many as the rank with
    /// the most (each forward and backward gathers and reduces every layer, or exchanges every MoE layer's
    /// rows, so the counts must match).
    fn pad_micro_batches(
        &self,
        mbs: &mut Vec<MicroBatch>,
        pack: bool,
        device: Device,
    ) -> Result<()> {
        // The MoE load-balancing loss all-reduces its counts at every micro-batch step (`crate::aux_loss`).
        let lockstep = self.sharded.is_some() || self.expert_parallel || self.aux_loss_coef != 0.0;
        if !lockstep || self.group.world_size() == 1 {
            return Ok(());
        }
        let most = max_over_ranks(&*self.group, &[mbs.len() as f64])?[0] as usize;
        while mbs.len() < most {
            let item = TrainItem {
                group_id: "padding".into(),
                sample_idx: 0,
                input_ids: vec![0, 0],
                targets: vec![0, 0],
                mask: vec![0.0, 0.0],
                advantages: vec![0.0, 0.0],
                step_ids: vec![-1, -1],
                n_steps: 0,
                rollout_logp: vec![0.0, 0.0],
                routed: None,
                reward: 0.0,
            };
            let mut mb = collate(&[&item], pack, device)?;
            mb.padding = true;
            mb.tokens = 0;
            mbs.push(mb);
        }
        Ok(())
    }

    /// The learner's CUDA graphs for one step's micro-batch loop (see [`crate::learner_graphs`]), taken out of
    /// the learner so that the loop may still read it (put them back after), or None for an eager step: when
    /// `allowed` is false (the step's loss is not recordable), the graphs are off, or the step is not one this
    /// process runs alone with nothing counted on the host between forward and backward (more than one rank,
    /// sharded, expert parallel, the load-balancing loss on).
    fn take_graphs(&mut self, allowed: bool, aux_tokens: Option<f64>) -> Option<LearnerGraphs> {
        let plain = self.group.world_size() == 1
            && self.sharded.is_none()
            && self.grad_sum.is_none()
            && !self.expert_parallel
            && aux_tokens.is_none();
        let on = self
            .cuda_graphs
            .as_ref()
            .is_some_and(|g| g.off_reason().is_none());
        if allowed && plain && on {
            self.cuda_graphs.take()
        } else {
            None
        }
    }

    /// The real tokens of the batch over every rank, when the MoE load-balancing loss is on (see
    /// [`crate::aux_loss`]).
    fn aux_tokens(&self, mbs: &[MicroBatch]) -> Result<Option<f64>> {
        if self.aux_loss_coef == 0.0 {
            return Ok(None);
        }
        Ok(Some(crate::aux_loss::global_real_tokens(
            &*self.group,
            mbs,
        )?))
    }

    /// This rank's share of the load-balancing loss of micro-batch step `mb` (None: off, or a dense model).
    fn micro_step_aux(
        &self,
        fwd: &PolicyOutput,
        mb: &MicroBatch,
        aux_tokens: Option<f64>,
    ) -> Result<Option<Tensor>> {
        match (&fwd.routing, aux_tokens) {
            (Some(r), Some(total)) => Ok(Some(crate::aux_loss::micro_step_aux(
                &*self.group,
                r,
                mb,
                total,
            )?)),
            _ => Ok(None),
        }
    }

    /// The union batch's trained (tokens, sequences): [`totals`] summed over the ranks.
    pub fn global_totals(&self, items: &[TrainItem]) -> Result<(f64, f64)> {
        let (t, s) = totals(items);
        let v = sum_over_ranks(&*self.group, &[t, s])?;
        Ok((v[0], v[1]))
    }

    /// Sums `stats` over the ranks (the maximum for `mismatch_max`).
    fn global_stats(&self, stats: &mut LossStats) -> Result<()> {
        if self.group.world_size() == 1 {
            return Ok(());
        }
        let v = sum_over_ranks(
            &*self.group,
            &[
                stats.tokens,
                stats.pg_loss,
                stats.clipped_low,
                stats.clipped_high,
                stats.ratio_sum,
                stats.kl_sum,
                stats.entropy_sum,
                stats.mismatch_sum,
                stats.tis_truncated,
                stats.non_finite,
                stats.outside_steps,
            ],
        )?;
        // Maxima over the ranks (the minimum as the maximum of the negation; a rank without tokens sends -inf).
        let m = max_over_ranks(
            &*self.group,
            &[
                stats.mismatch_max,
                stats.ratio_max.unwrap_or(f64::NEG_INFINITY),
                -stats.ratio_min.unwrap_or(f64::INFINITY),
            ],
        )?;
        let max = m[0];
        let finite = |x: f64| x.is_finite().then_some(x);
        *stats = LossStats {
            tokens: v[0],
            pg_loss: v[1],
            clipped_low: v[2],
            clipped_high: v[3],
            ratio_sum: v[4],
            ratio_min: finite(-m[2]),
            ratio_max: finite(m[1]),
            kl_sum: v[5],
            entropy_sum: v[6],
            mismatch_sum: v[7],
            mismatch_max: max,
            tis_truncated: v[8],
            non_finite: v[9],
            outside_steps: v[10],
        };
        Ok(())
    }

    /// The union batch's token count of `mbs` (every rank's micro-batches).
    fn global_tokens(&self, mbs: &[MicroBatch]) -> Result<usize> {
        let n = mbs.iter().map(|m| m.tokens).sum::<usize>() as f64;
        Ok(sum_over_ranks(&*self.group, &[n])?[0] as usize)
    }
}

pub(crate) fn forward_mb(policy: &dyn Policy, mb: &MicroBatch) -> Result<PolicyOutput> {
    policy.forward(&PolicyInput {
        input_ids: &mb.input_ids,
        attention_mask: &mb.attention_mask,
        position_ids: &mb.position_ids,
        packed_seq_ids: mb.packed_seq_ids.as_ref(),
        forced_experts: mb.forced_experts.as_ref(),
    })
}

/// Per-token log-probs of the targets and per-token entropy under softmax(logits / temperature), from one
/// log-softmax of whole logits (see `spar_model::token_logprobs`; the learner itself goes through
/// [`PolicyOutput::token_logprobs`], fused when the policy returns hidden states).
pub fn logprobs_and_entropy(
    logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> (Tensor, Tensor) {
    let out = spar_model::token_logprobs::logits_logprobs(
        logits,
        targets,
        &LogprobOptions::at(temperature).with_entropy(),
    )
    .unwrap_or_else(|e| panic!("logprobs_and_entropy: {e:#}"));
    (out.logp, out.entropy.expect("asked for"))
}

/// Log-probs and entropy of a forward's output (both carry gradient).
pub(crate) fn output_logprobs_and_entropy(
    out: &PolicyOutput,
    targets: &Tensor,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let o = out.token_logprobs(targets, &LogprobOptions::at(temperature).with_entropy())?;
    Ok((o.logp, o.entropy.expect("asked for")))
}

/// The number of `mb`'s trained tokens that are `argmax` (the policy's greedy choice).
fn greedy_tokens(argmax: &Tensor, mb: &MicroBatch) -> f64 {
    greedy_count(argmax, mb).double_value(&[])
}

/// [`greedy_tokens`] on the device (float64 scalar).
fn greedy_count(argmax: &Tensor, mb: &MicroBatch) -> Tensor {
    (argmax.eq_tensor(&mb.targets).to_kind(Kind::Float) * &mb.mask).sum(Kind::Double)
}

/// The RL micro-step of `mb` through the learner's graphs: forward, log-probs (pi_old from this forward when
/// `mb` has none), the policy loss with unit denominators times the graph's scale, backward. Outputs: float64
/// `[stat::STAT_COUNT + 2]` (the loss statistics, the loss, the greedy-token count) and, without pi_old, this
/// forward's detached log-probs.
fn rl_graph_step(
    g: &mut LearnerGraphs,
    policy: &dyn Policy,
    mb: &MicroBatch,
    cfg: &PolicyLossConfig,
    agg: &Aggregator,
) -> Result<Vec<Tensor>> {
    let unit = crate::learner_graphs::unit_aggregator(agg);
    let scale = crate::learner_graphs::inverse_denominator(agg);
    g.run(StepKind::Rl, mb, scale, &mut |mb, scale| {
        let fwd = forward_mb(policy, mb)?;
        let routed = fwd.routing.is_some();
        let (logp, entropy, old, greedy) = match &mb.old_logp {
            Some(old) => {
                let (logp, entropy) =
                    output_logprobs_and_entropy(&fwd, &mb.targets, cfg.temperature)?;
                (logp, entropy, old.shallow_clone(), None)
            }
            None => {
                let opts = LogprobOptions::at(cfg.temperature)
                    .with_entropy()
                    .with_argmax();
                let o = fwd.token_logprobs(&mb.targets, &opts)?;
                let greedy = greedy_count(&o.argmax.expect("asked for"), mb);
                let old = o.logp.detach();
                (o.logp, o.entropy.expect("asked for"), old, Some(greedy))
            }
        };
        let parts = policy_loss_parts(cfg, &unit, &loss_input(mb, &logp, &old, &entropy));
        let loss = parts.loss * scale;
        let greedy = greedy.unwrap_or_else(|| Tensor::zeros([], (Kind::Double, loss.device())));
        let out = Tensor::cat(
            &[
                parts.stats,
                loss.detach().to_kind(Kind::Double).reshape([1]),
                greedy.reshape([1]),
            ],
            0,
        );
        policy.backward(&loss, &fwd)?;
        let mut outs = vec![out];
        if mb.old_logp.is_none() {
            outs.push(old);
        }
        Ok((outs, routed))
    })
}

/// The policy loss's input for micro-batch `mb` given this forward's log-probs and entropy and pi_old.
fn loss_input<'a>(
    mb: &'a MicroBatch,
    logp: &'a Tensor,
    old: &'a Tensor,
    entropy: &'a Tensor,
) -> PolicyLossInput<'a> {
    PolicyLossInput {
        logp,
        old_logp: old,
        rollout_logp: &mb.rollout_logp,
        ref_logp: mb.ref_logp.as_ref(),
        entropy: Some(entropy),
        advantages: &mb.advantages,
        mask: &mb.mask,
        seq_ids: &mb.seq_ids,
        n_seqs: mb.n_seqs,
        seg_ids: &mb.seg_ids,
        n_segs: mb.n_segs,
    }
}

/// The sums of [`rl_graph_step`]'s first output before any micro-batch.
fn rl_graph_acc(device: Device) -> Tensor {
    Tensor::cat(
        &[
            crate::policy_loss::empty_stats(device),
            Tensor::zeros([2], (Kind::Double, device)),
        ],
        0,
    )
}

/// Adds one [`rl_graph_step`] output into `acc` ([`rl_graph_acc`]).
fn accumulate_rl_graph(acc: &mut Tensor, out: &Tensor) {
    let n = stat::STAT_COUNT as i64;
    crate::policy_loss::accumulate_stats(&mut acc.narrow(0, 0, n), &out.narrow(0, 0, n));
    let _ = acc.narrow(0, n, 2).g_add_(&out.narrow(0, n, 2));
}

/// Collates the planned micro-batches.
pub fn micro_batches(
    items: &[TrainItem],
    cfg: &BatchingConfig,
    device: Device,
) -> Result<Vec<MicroBatch>> {
    plan_micro_batches(items, cfg.micro_batch, cfg.token_budget, cfg.pack)
        .into_iter()
        .map(|idx| {
            let refs: Vec<&TrainItem> = idx.iter().map(|&i| &items[i]).collect();
            collate(&refs, cfg.pack, device)
        })
        .collect()
}

/// Fills `old_logp` (and `ref_logp` from `reference`) with no-grad forwards, at the sampling `temperature`.
pub fn fill_old_logprobs(
    policy: &dyn Policy,
    reference: Option<&dyn Policy>,
    mbs: &mut [MicroBatch],
    temperature: f64,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for mb in mbs.iter_mut() {
            let out = forward_mb(policy, mb)?;
            mb.old_logp = Some(out.logprobs(&mb.targets, temperature)?);
            drop(out);
            if let Some(r) = reference {
                let out = forward_mb(r, mb)?;
                mb.ref_logp = Some(out.logprobs(&mb.targets, temperature)?);
            }
        }
        Ok(())
    })
}

/// RL update(s) on `items`: `ppo_epochs` optimizer steps over the same batch, pi_old fixed from before the first.
#[allow(clippy::too_many_arguments)]
pub fn rl_update(
    policy: &dyn Policy,
    reference: Option<&dyn Policy>,
    learner: &mut Learner,
    items: &[TrainItem],
    loss_cfg: &PolicyLossConfig,
    batching: &BatchingConfig,
    ppo_epochs: usize,
    device: Device,
) -> Result<Vec<StepReport>> {
    rl_update_with(
        policy,
        reference,
        learner,
        items,
        loss_cfg,
        batching,
        ppo_epochs,
        device,
        &mut RlExtras::none(),
    )
}

/// What an RL update may add to the clipped policy loss.
pub struct RlExtras<'a> {
    /// On-policy distillation: teachers (name, policy) that score the student's sampled tokens. Each token's
    /// advantage becomes `task_coef * A + distill_coef * mean_t(log pi_t - log pi_old)` (reverse KL, sampled
    /// from the student).
    pub teachers: Vec<(String, &'a dyn Policy)>,
    pub distill_coef: f64,
    pub task_coef: f64,
    /// PPO with a value head: the critic and each item's token rewards (target-aligned, from
    /// [`crate::gae::token_rewards`]). With a critic the items' own advantages are ignored; GAE's replace them
    /// (the reverse-KL term of distillation, if any, is added to the token rewards).
    pub critic: Option<(&'a mut crate::critic::Critic, &'a [Vec<f32>])>,
    /// After the last epoch, one more no-grad forward to measure KL(pi_old || pi_new) (`rl/kl_old_new`).
    pub update_kl: bool,
}

impl RlExtras<'_> {
    /// Nothing beyond the policy loss.
    pub fn none() -> Self {
        RlExtras {
            teachers: Vec::new(),
            distill_coef: 0.0,
            task_coef: 1.0,
            critic: None,
            update_kl: false,
        }
    }
}

/// The no-grad pass before the first update: pi_old, the reference, the old values of the critic, and the
/// teachers' reverse-KL term folded into the advantages. Returns (old values per micro-batch, per-teacher sums of
/// log pi_old - log pi_t over trained tokens, the number of trained tokens that are pi_old's argmax). Without
/// `with_policy` only the reference's log-probs are taken (pi_old then comes from the update's own forward, see
/// [`old_from_update`]).
fn old_pass(
    policy: &dyn Policy,
    reference: Option<&dyn Policy>,
    mbs: &mut [MicroBatch],
    extras: &RlExtras,
    loss_cfg: &PolicyLossConfig,
    with_policy: bool,
) -> Result<(Vec<Tensor>, Vec<f64>, f64)> {
    let mut old_values = Vec::new();
    let mut teacher_kl = vec![0.0; extras.teachers.len()];
    let mut greedy = 0.0;
    tch::no_grad(|| -> Result<()> {
        for mb in mbs.iter_mut() {
            let temp = loss_cfg.temperature;
            if !with_policy {
                if let Some(r) = reference {
                    let out = forward_mb(r, mb)?;
                    mb.ref_logp = Some(out.logprobs(&mb.targets, temp)?);
                }
                continue;
            }
            let out = forward_mb(policy, mb)?;
            let lp = out.token_logprobs(&mb.targets, &LogprobOptions::at(temp).with_argmax())?;
            let old = lp.logp;
            // A sampled token that is the policy's argmax is what greedy decoding would have emitted there.
            greedy += greedy_tokens(&lp.argmax.expect("asked for"), mb);
            if let Some((critic, _)) = &extras.critic {
                old_values.push(critic.head.values(&out.logits()?)?);
            }
            drop(out);
            if let Some(r) = reference {
                let out = forward_mb(r, mb)?;
                mb.ref_logp = Some(out.logprobs(&mb.targets, temp)?);
            }
            if !extras.teachers.is_empty() {
                let zeros = old.zeros_like();
                let student = old.where_self(&old.isfinite(), &zeros);
                let mut per_teacher = Vec::new();
                for (i, (_, t)) in extras.teachers.iter().enumerate() {
                    // A teacher routes its own experts: the rollout's routing belongs to the student.
                    let out = t.forward(&PolicyInput {
                        input_ids: &mb.input_ids,
                        attention_mask: &mb.attention_mask,
                        position_ids: &mb.position_ids,
                        packed_seq_ids: mb.packed_seq_ids.as_ref(),
                        forced_experts: None,
                    })?;
                    let lp = out.logprobs(&mb.targets, temp)?;
                    // A non-finite log-prob carries no signal: the token gets no distillation term.
                    let ok = lp.isfinite().logical_and(&old.isfinite());
                    let lp = lp.where_self(&ok, &student);
                    teacher_kl[i] += ((&student - &lp) * &mb.mask)
                        .sum(Kind::Double)
                        .double_value(&[]);
                    per_teacher.push(lp);
                }
                let kl_adv =
                    distill::reverse_kl_advantage(&student, &per_teacher, extras.distill_coef)
                        * &mb.mask;
                mb.advantages = &mb.advantages * extras.task_coef + kl_adv;
            }
            if let (true, Some(ref_lp)) = (loss_cfg.kl_in_reward, &mb.ref_logp) {
                // KL in the reward: each token's reward (a critic's token reward, else its advantage) pays
                // kl_coef * KL_t, pi_old against the reference; tokens without finite log-probs pay nothing.
                let ok = old.isfinite().logical_and(&ref_lp.isfinite());
                let zeros = old.zeros_like();
                let kl = loss_cfg.kl_estimator.estimate(
                    &old.where_self(&ok, &zeros),
                    &ref_lp.where_self(&ok, &zeros),
                ) * ok.to_kind(Kind::Float)
                    * &mb.mask;
                mb.advantages = &mb.advantages - kl * loss_cfg.kl_coef;
            }
            mb.old_logp = Some(old);
        }
        Ok(())
    })?;
    Ok((old_values, teacher_kl, greedy))
}

/// Whether pi_old can be the update forward's own log-probs, detached, instead of a no-grad forward over the
/// batch before it: with one epoch the update's weights are pi_old's, so the values are the same (the ratio is
/// exactly 1 and its gradient the policy gradient), and one forward over the batch is saved. Not when something
/// needs pi_old before the update: distillation teachers and KL in the reward fold it into the advantages, a
/// critic's old values come from the same pass.
fn old_from_update(
    ppo_epochs: usize,
    has_reference: bool,
    loss_cfg: &PolicyLossConfig,
    extras: &RlExtras,
) -> bool {
    ppo_epochs <= 1
        && extras.critic.is_none()
        && extras.teachers.is_empty()
        && !(loss_cfg.kl_in_reward && has_reference)
}

/// Sum over trained tokens of the k3 estimate of KL(pi_old || pi_theta) (`exp(d) - 1 - d`, d = log pi_theta -
/// log pi_old: unbiased for samples from pi_old, never negative), with the current weights; no gradient.
fn kl_old_new_sum(policy: &dyn Policy, mbs: &[MicroBatch], temperature: f64) -> Result<f64> {
    tch::no_grad(|| -> Result<f64> {
        let mut sum = 0.0;
        for mb in mbs {
            let out = forward_mb(policy, mb)?;
            let new = out.logprobs(&mb.targets, temperature)?;
            let old = mb.old_logp.as_ref().expect("filled by the old pass");
            let ok = new.isfinite().logical_and(&old.isfinite());
            let d = (&new - old).where_self(&ok, &new.zeros_like());
            let k3 = d.exp() - 1.0 - &d;
            sum += (k3 * &mb.mask).sum(Kind::Double).double_value(&[]);
        }
        Ok(sum)
    })
}

/// Whether a loss term other than the advantage-weighted one trains the policy on its own: the entropy bonus,
/// or the KL to the reference as a loss term (in the reward it is part of the advantages).
fn trains_without_advantage(cfg: &PolicyLossConfig) -> bool {
    cfg.entropy_coef != 0.0 || (cfg.kl_coef != 0.0 && !cfg.kl_in_reward)
}

/// Whether every trained token of the batch has advantage exactly 0.
fn no_advantage(mbs: &[MicroBatch]) -> bool {
    mbs.iter()
        .all(|mb| (&mb.advantages * &mb.mask).abs().max().double_value(&[]) == 0.0)
}

/// [`rl_update`] with distillation teachers and / or a critic (see [`RlExtras`]).
#[allow(clippy::too_many_arguments)]
pub fn rl_update_with(
    policy: &dyn Policy,
    reference: Option<&dyn Policy>,
    learner: &mut Learner,
    items: &[TrainItem],
    loss_cfg: &PolicyLossConfig,
    batching: &BatchingConfig,
    ppo_epochs: usize,
    device: Device,
    extras: &mut RlExtras,
) -> Result<Vec<StepReport>> {
    if learner.sharded.is_some() && extras.critic.is_some() {
        bail!(
            "GAE with a value head is not built for fully sharded training: set distributed.sharding = \"none\""
        );
    }
    learner.begin_update(device)?;
    // With a critic, the token rewards travel in the advantage slot until GAE replaces them.
    let with_rewards: Vec<TrainItem>;
    let items = match &extras.critic {
        Some((_, rewards)) => {
            if rewards.len() != items.len() {
                bail!(
                    "{} token-reward lists for {} items",
                    rewards.len(),
                    items.len()
                );
            }
            with_rewards = items
                .iter()
                .zip(rewards.iter())
                .map(|(it, r)| {
                    if r.len() != it.len() {
                        bail!(
                            "item {}/{}: {} token rewards for {} tokens",
                            it.group_id,
                            it.sample_idx,
                            r.len(),
                            it.len()
                        );
                    }
                    let mut it = it.clone();
                    it.advantages = r.clone();
                    Ok(it)
                })
                .collect::<Result<_>>()?;
            &with_rewards[..]
        }
        None => items,
    };
    if extras.critic.is_some() && learner.group.world_size() > 1 {
        bail!(
            "GAE with a value head is not built for data-parallel training (its whitening and the critic's \
             gradients are per rank): run it in one process"
        );
    }
    let mut mbs = micro_batches(items, batching, device)?;
    learner.pad_micro_batches(&mut mbs, batching.pack, device)?;
    let from_update = old_from_update(ppo_epochs, reference.is_some(), loss_cfg, extras);
    let t_old = std::time::Instant::now();
    let span = range("learn/old_pass");
    let (old_values, mut teacher_kl, greedy) =
        old_pass(policy, reference, &mut mbs, extras, loss_cfg, !from_update)?;
    drop(span);
    // The old pass reads its results on the host, so the GPU work is inside this interval.
    let old_pass_seconds = t_old.elapsed().as_secs_f64();
    // One decision for every rank: a rank whose own share has no advantage still takes part in the others'
    // update (its gradient is zero), or their gradient all-reduce would wait for it forever.
    if extras.critic.is_none()
        && !trains_without_advantage(loss_cfg)
        && !any_rank(&*learner.group, !no_advantage(&mbs))?
    {
        // Checked after the old pass: distillation teachers and KL in the reward fold into the advantages.
        tracing::info!(
            step = learner.step,
            "every advantage of the batch is 0: policy update skipped"
        );
        learner.end_update()?;
        return Ok(vec![StepReport {
            lr: learner.schedule.lr(learner.step),
            skipped: true,
            skipped_empty_advantage: true,
            tokens: learner.global_tokens(&mbs)?,
            micro_batches: real_count(&mbs),
            ..Default::default()
        }]);
    }
    let (total_tokens, total_seqs) = learner.global_totals(items)?;
    teacher_kl = sum_over_ranks(&*learner.group, &teacher_kl)?;
    let greedy = sum_over_ranks(&*learner.group, &[greedy])?[0];
    let mut fixed = std::collections::BTreeMap::new();
    fixed.insert("time/old_logprob_s".into(), old_pass_seconds);
    fixed.insert(
        "rl/greedy_token_frac".into(),
        greedy / total_tokens.max(1.0),
    );
    for ((name, _), kl) in extras.teachers.iter().zip(&teacher_kl) {
        fixed.insert(
            format!("distill/reverse_kl/{name}"),
            kl / total_tokens.max(1.0),
        );
    }
    let mut returns = Vec::new();
    if let Some((critic, _)) = &extras.critic {
        let mut advs = Vec::new();
        for (mb, v) in mbs.iter().zip(&old_values) {
            let (a, r) = crate::gae::gae_masked(
                &mb.advantages,
                v,
                &mb.mask,
                &mb.seq_ids,
                critic.cfg.gamma,
                critic.cfg.lambda,
            )?;
            advs.push(a);
            returns.push(r);
        }
        let n = total_tokens.max(1.0);
        let sum = |ts: &[Tensor]| -> f64 {
            ts.iter()
                .zip(&mbs)
                .map(|(t, mb)| (t * &mb.mask).sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                / n
        };
        fixed.insert("critic/values_mean".into(), sum(&old_values));
        fixed.insert("critic/returns_mean".into(), sum(&returns));
        fixed.insert("critic/advantages_mean_raw".into(), sum(&advs));
        if critic.cfg.whiten {
            let masks: Vec<&Tensor> = mbs.iter().map(|m| &m.mask).collect();
            crate::gae::whiten(&mut advs, &masks);
        }
        for (mb, a) in mbs.iter_mut().zip(advs) {
            mb.advantages = a;
        }
    }
    let agg = Aggregator {
        mode: batching.agg,
        l_max: batching.l_max as f64,
        total_tokens,
        total_seqs,
    };
    let aux_tokens = learner.aux_tokens(&mbs)?;
    let mut reports = Vec::new();
    for _ in 0..ppo_epochs.max(1) {
        // Sharded: the last epoch's step left the weights whole; this epoch gathers them as it goes.
        learner.begin_update(device)?;
        learner.adamw.zero_grad();
        if let Some((critic, _)) = &mut extras.critic {
            critic.adamw.zero_grad();
        }
        let mut loss_sum = 0.0;
        let (mut vloss_sum, mut vclip) = (0.0, 0.0);
        let mut stats = LossStats::default();
        let (n_mbs, mut olds, mut greedy_now) = (mbs.len(), Vec::new(), 0.0);
        let mut graphs = learner.take_graphs(extras.critic.is_none(), aux_tokens);
        let mut graph_acc = graphs.as_ref().map(|_| rl_graph_acc(device));
        // Put back after the loop, even when a micro-step fails.
        let looped = (|| -> Result<()> {
            if let Some(g) = &mut graphs {
                g.begin_step(policy)?;
            }
            for (i, mb) in mbs.iter().enumerate() {
                if let (Some(g), Some(acc)) = (
                    graphs
                        .as_mut()
                        .filter(|g| g.off_reason().is_none() && !mb.padding),
                    graph_acc.as_mut(),
                ) {
                    let _span = range("learn/micro_step_graph");
                    let outs = rl_graph_step(g, policy, mb, loss_cfg, &agg)?;
                    accumulate_rl_graph(acc, &outs[0]);
                    if mb.old_logp.is_none() {
                        olds.push((i, outs[1].copy()));
                    }
                    continue;
                }
                if i + 1 == n_mbs {
                    learner.last_backward();
                }
                let span = range("learn/forward");
                let fwd = forward_mb(policy, mb)?;
                let aux = learner.micro_step_aux(&fwd, mb, aux_tokens)?;
                let (logp, entropy, old) = match &mb.old_logp {
                    Some(old) => {
                        let (logp, entropy) =
                            output_logprobs_and_entropy(&fwd, &mb.targets, loss_cfg.temperature)?;
                        (logp, entropy, old.shallow_clone())
                    }
                    None => {
                        // pi_old is this forward's own log-probs (the same weights), detached.
                        let opts = LogprobOptions::at(loss_cfg.temperature)
                            .with_entropy()
                            .with_argmax();
                        let o = fwd.token_logprobs(&mb.targets, &opts)?;
                        if !mb.padding {
                            greedy_now += greedy_tokens(&o.argmax.expect("asked for"), mb);
                        }
                        let old = o.logp.detach();
                        olds.push((i, old.shallow_clone()));
                        (o.logp, o.entropy.expect("asked for"), old)
                    }
                };
                let out = policy_loss(loss_cfg, &agg, &loss_input(mb, &logp, &old, &entropy));
                let mut loss = out.loss;
                if let Some(aux) = aux {
                    loss = loss + aux * learner.aux_loss_coef;
                }
                if mb.padding {
                    // Runs the gathers and reductions of a real micro-batch and trains nothing.
                    drop(span);
                    let _span = range("learn/backward");
                    policy.backward(&padding_loss(&fwd)?, &fwd)?;
                    continue;
                }
                if let Some((critic, _)) = &extras.critic {
                    let v = critic.values(&fwd.logits()?)?;
                    let per_tok = crate::gae::ValueHead::per_token_loss(
                        &v,
                        &old_values[i],
                        &returns[i],
                        critic.cfg.value_clip,
                    );
                    // Divided by the whole mini-batch's token count, so accumulation gives the batch's mean.
                    let vloss = (per_tok * &mb.mask).sum(Kind::Float) / total_tokens.max(1.0);
                    vloss_sum += vloss.double_value(&[]);
                    vclip += ((&v - &old_values[i])
                        .abs()
                        .gt(critic.cfg.value_clip)
                        .to_kind(Kind::Float)
                        * &mb.mask)
                        .sum(Kind::Double)
                        .double_value(&[]);
                    loss = loss + vloss * critic.cfg.vf_coef;
                }
                loss_sum += loss.double_value(&[]);
                stats.add(&out.stats);
                drop(span);
                let _span = range("learn/backward");
                policy.backward(&loss, &fwd)?;
            }
            Ok(())
        })();
        if let Some(g) = graphs {
            learner.cuda_graphs = Some(g);
        }
        looped?;
        if let Some(acc) = graph_acc {
            let v = Vec::<f64>::try_from(&acc)?;
            stats.add(&LossStats::from_values(&v[..stat::STAT_COUNT])?);
            loss_sum += v[stat::STAT_COUNT];
            greedy_now += v[stat::STAT_COUNT + 1];
        }
        let _span = range("learn/optimizer");
        let (loss_sum, grad_norm, lr, skipped) = learner.apply(loss_sum)?;
        learner.global_stats(&mut stats)?;
        if from_update {
            let greedy = sum_over_ranks(&*learner.group, &[greedy_now])?[0];
            fixed.insert(
                "rl/greedy_token_frac".into(),
                greedy / total_tokens.max(1.0),
            );
        }
        // KL(pi_old || pi_new) after the update reads pi_old.
        for (i, old) in olds {
            mbs[i].old_logp = Some(old);
        }
        let mut extra = fixed.clone();
        if !skipped {
            extra.insert(
                "rl/update_to_weight_ratio".into(),
                learner.adamw.last_update_ratio,
            );
        }
        if let Some((critic, _)) = &mut extras.critic {
            let cs = critic.step(skipped);
            extra.insert("critic/value_loss".into(), vloss_sum);
            extra.insert(
                "critic/value_clip_frac".into(),
                vclip / total_tokens.max(1.0),
            );
            extra.insert("critic/grad_norm".into(), cs.grad_norm);
        }
        reports.push(StepReport {
            loss: loss_sum,
            grad_norm,
            lr,
            skipped,
            tokens: learner.global_tokens(&mbs)?,
            micro_batches: real_count(&mbs),
            stats,
            skipped_empty_advantage: false,
            extra,
        });
    }
    if extras.update_kl && reports.iter().any(|r| !r.skipped) {
        // One more forward over the batch (`trainer.update_kl = false` skips it).
        let span = range("learn/kl_old_new");
        let kl = kl_old_new_sum(policy, &mbs, loss_cfg.temperature)?;
        drop(span);
        let kl = sum_over_ranks(&*learner.group, &[kl])?[0];
        if let Some(last) = reports.last_mut() {
            last.extra
                .insert("rl/kl_old_new".into(), kl / total_tokens.max(1.0));
        }
    }
    Ok(reports)
}

/// One supervised step (cross-entropy on masked tokens, token-mean) over `items`.
pub fn sft_update(
    policy: &dyn Policy,
    learner: &mut Learner,
    items: &[TrainItem],
    batching: &BatchingConfig,
    device: Device,
) -> Result<StepReport> {
    let mut loss = |mb: &MicroBatch, logp: &Tensor, agg: &Aggregator| {
        let loss = distill::sft_loss(logp, &mb.mask, &mb.seq_ids, mb.n_seqs, agg);
        (loss, mb.mask.shallow_clone())
    };
    supervised_step(policy, learner, items, batching, device, true, &mut loss)
}

/// The frame of a step whose loss needs no pi_old (SFT, offline distillation): micro-batches, the aggregator
/// over the whole batch, forward, the router aux loss, entropy statistics, backward, one optimizer step.
/// `token_loss(micro_batch, logp, aggregator)` gives the micro-batch's loss and the mask of the tokens it trains
/// (the statistics count those). `graphable`: `token_loss` reads only the micro-batch's tensors that
/// [`crate::learner_graphs`] keeps static (ids, positions, targets, mask, sequence ids), so the learner's
/// CUDA graphs may record it.
pub(crate) fn supervised_step(
    policy: &dyn Policy,
    learner: &mut Learner,
    items: &[TrainItem],
    batching: &BatchingConfig,
    device: Device,
    graphable: bool,
    token_loss: &mut crate::learner_graphs::TokenLoss<'_>,
) -> Result<StepReport> {
    learner.begin_update(device)?;
    let mut mbs = micro_batches(items, batching, device)?;
    learner.pad_micro_batches(&mut mbs, batching.pack, device)?;
    let (total_tokens, total_seqs) = learner.global_totals(items)?;
    let agg = Aggregator {
        mode: batching.agg,
        l_max: batching.l_max as f64,
        total_tokens,
        total_seqs,
    };
    learner.adamw.zero_grad();
    let aux_tokens = learner.aux_tokens(&mbs)?;
    let mut loss_sum = 0.0;
    let mut stats = LossStats::default();
    // Put back after the loop, even when a micro-step fails.
    let mut graphs = learner.take_graphs(graphable, aux_tokens);
    let mut graph_sums = Tensor::zeros([3], (Kind::Double, device));
    let looped = (|| -> Result<()> {
        if let Some(g) = &mut graphs {
            g.begin_step(policy)?;
        }
        for (i, mb) in mbs.iter().enumerate() {
            if let Some(g) = graphs.as_mut().filter(|g| g.off_reason().is_none()) {
                let _span = range("learn/micro_step_graph");
                g.supervised_step(policy, mb, &agg, token_loss, &mut graph_sums)?;
                continue;
            }
            if i + 1 == mbs.len() {
                // Padding micro-batches included: every rank must start the same reductions at the same point.
                learner.last_backward();
            }
            let span = range("learn/forward");
            let fwd = forward_mb(policy, mb)?;
            let aux = learner.micro_step_aux(&fwd, mb, aux_tokens)?;
            if mb.padding {
                drop(span);
                let _span = range("learn/backward");
                policy.backward(&padding_loss(&fwd)?, &fwd)?;
                continue;
            }
            // Supervised targets are not samples of the policy: the policy's own distribution (temperature 1).
            let (logp, entropy) = output_logprobs_and_entropy(&fwd, &mb.targets, 1.0)?;
            let (mut loss, mask) = token_loss(mb, &logp, &agg);
            if let Some(aux) = aux {
                loss = loss + aux * learner.aux_loss_coef;
            }
            stats.tokens += mask.sum(Kind::Double).double_value(&[]);
            stats.entropy_sum += (entropy.detach() * &mask)
                .sum(Kind::Double)
                .double_value(&[]);
            loss_sum += loss.double_value(&[]);
            drop(span);
            let _span = range("learn/backward");
            policy.backward(&loss, &fwd)?;
        }
        Ok(())
    })();
    if let Some(g) = graphs {
        learner.cuda_graphs = Some(g);
        let sums = Vec::<f64>::try_from(&graph_sums)?;
        loss_sum += sums[0];
        stats.tokens += sums[1];
        stats.entropy_sum += sums[2];
    }
    looped?;
    let _span = range("learn/optimizer");
    let (loss_sum, grad_norm, lr, skipped) = learner.apply(loss_sum)?;
    learner.global_stats(&mut stats)?;
    Ok(StepReport {
        loss: loss_sum,
        grad_norm,
        lr,
        skipped,
        tokens: learner.global_tokens(&mbs)?,
        micro_batches: real_count(&mbs),
        stats,
        skipped_empty_advantage: false,
        extra: Default::default(),
    })
}

/// Micro-batches that train something (not sharded padding).
fn real_count(mbs: &[MicroBatch]) -> usize {
    mbs.iter().filter(|m| !m.padding).count()
}

/// A padding micro-batch's loss: 0, but with the graph of a real forward, so its backward gathers and reduces
/// every unit (with zero gradients) as the other ranks' real micro-batches do.
fn padding_loss(fwd: &PolicyOutput) -> Result<Tensor> {
    fwd.head.zero_loss()
}
