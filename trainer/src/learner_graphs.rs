//! CUDA graphs of the learner's micro-steps (`trainer.learner_cuda_graphs`): the forward, the loss and the
//! backward of one micro-batch, supervised (SFT) or RL (`learner::rl_update_with`), are recorded once per input
//! shape and replayed with one launch.
//!
//! On a GPU the eager step of a small model is bound by the host: a Qwen3-0.6B micro-batch of 2 x 1024 tokens
//! dispatches ~3,300 torch ops (forward ~1,400, autograd ~1,900) at 10-20 µs of host time each, for less GPU
//! work than that (`docs/results/train-step-profile-h100-call5.md`: the GPU was busy 31% of the step). A replay
//! costs the host a few microseconds, so the step runs at the GPU's pace (the idea of PyTorch's
//! `make_graphed_callables`, applied to the whole micro-step including the parameters' gradient accumulation;
//! measured in `docs/benchmarks.md`, calls 8-12: the profiled step became 88.5% GPU-busy).
//!
//! How it stays correct:
//! - Inputs are copied into static tensors before each replay, right-padded to a length that is a multiple of
//!   [`LENGTH_BUCKET`] (so nearby lengths share a graph; padding is masked out of every loss and statistic).
//!   What the step reports comes out of one static float64 tensor the caller adds to its own sums (supervised:
//!   loss, trained tokens, entropy sum; RL: the policy loss's statistics, the loss, the greedy-token count; and
//!   the detached log-probs when pi_old comes from this forward), so a step reads the device once.
//! - The loss's denominators (the whole batch's tokens or sequences, host numbers that change every step) are
//!   not baked in: the graph computes the loss with denominators of 1 and multiplies it by a static scalar
//!   tensor set to 1 / denominator before each replay. Every aggregation mode is linear in its denominator, so
//!   the gradient is the eager step's (up to one rounding: x * (1/n) instead of x / n).
//! - Gradients accumulate into the parameters' `.grad` tensors in place (autograd adds into a defined
//!   gradient), so they are defined before any capture and must keep their storage: a fingerprint of every
//!   parameter's and gradient's address is checked at each step, and a change drops the graphs (they are
//!   captured again).
//! - A new shape runs eagerly once on a side stream first (lazy initialisation, the fused log-prob's first-use
//!   check and cuBLAS workspaces must not happen inside a capture), is captured the second time it is seen and
//!   replayed from then on. The warm-up run is a real micro-step: its gradients count. At most [`MAX_GRAPHS`]
//!   shapes are kept; later ones run eagerly.
//! - A capture must not synchronise with the host. Models whose forward routes tokens to experts (MoE) are not
//!   captured (the warm-up run notices the routing and turns the graphs off); nor are sharded, data-parallel
//!   or expert-parallel learners, steps with the MoE load-balancing loss (collectives and host-side counts run
//!   inside those steps), or RL updates with a critic.
//!
//! Memory: the graphs share one private pool that keeps the largest micro-step's activations reserved while
//! the learner lives (the eager step frees them back to torch's cache instead); torch's cache is emptied before
//! each capture so that the warm-up's activations are not held twice. Compare peak *reserved* memory with and
//! without graphs, not peak allocated: a replay's temporaries are invisible to the allocator's counters.
use crate::agg::{AggMode, Aggregator};
use crate::batch::MicroBatch;
use crate::policy::Policy;
use anyhow::Result;
use spar_model::cuda_graph::{self, CudaGraph, GraphPool};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Micro-batch lengths are padded up to a multiple of this many tokens before a graph reads them (right padding
/// that no loss reads; see `trainer/tests/it/padding.rs`), so that batches of nearby lengths share a graph.
pub const LENGTH_BUCKET: i64 = 64;

/// Graphs a learner keeps at most; a shape beyond them runs eagerly.
pub const MAX_GRAPHS: usize = 32;

/// Which micro-step a graph records (their bodies differ).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StepKind {
    /// Supervised (SFT): forward, token loss, backward.
    Supervised,
    /// The RL update's micro-step (policy loss against pi_old, or pi_old taken from this forward).
    Rl,
}

/// What makes two micro-batches replay the same graph: the step, the shapes of everything it reads (lengths
/// bucketed) and which optional inputs it has.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct StepShape {
    kind: StepKind,
    rows: i64,
    len: i64,
    packed: bool,
    n_seqs: usize,
    n_segs: usize,
    old: bool,
    reference: bool,
}

impl StepShape {
    fn of(kind: StepKind, mb: &MicroBatch) -> Self {
        let s = mb.input_ids.size();
        let len = s.get(1).copied().unwrap_or(1);
        StepShape {
            kind,
            rows: s[0],
            len: (len + LENGTH_BUCKET - 1) / LENGTH_BUCKET * LENGTH_BUCKET,
            packed: mb.packed_seq_ids.is_some(),
            n_seqs: mb.n_seqs,
            n_segs: mb.n_segs,
            old: mb.old_logp.is_some(),
            reference: mb.ref_logp.is_some(),
        }
    }
}

/// A recorded micro-step and the static tensors it reads and writes.
struct Recorded {
    graph: CudaGraph,
    inputs: MicroBatch,
    /// 1 / the aggregation's denominator (float32 scalar).
    scale: Tensor,
    outputs: Vec<Tensor>,
}

enum Slot {
    /// Ran once eagerly; captured the next time.
    Warm,
    Recorded(Box<Recorded>),
}

/// A micro-step body: `(micro_batch, scale) -> (outputs, routed)`. It must aggregate with unit denominators
/// ([`unit_aggregator`]) and multiply its loss by `scale` before backward; `outputs` are what the caller reads
/// after the step (the first is the `[..]` float64 statistics the caller accumulates), `routed` whether the
/// forward routed tokens to experts.
pub type StepBody<'a> = dyn FnMut(&MicroBatch, &Tensor) -> Result<(Vec<Tensor>, bool)> + 'a;

/// The supervised step's token loss: `(micro_batch, logp, aggregator) -> (loss, trained-token mask)`.
pub type TokenLoss<'a> = dyn FnMut(&MicroBatch, &Tensor, &Aggregator) -> (Tensor, Tensor) + 'a;

/// The graphs of one learner (see the module documentation).
#[derive(Default)]
pub struct LearnerGraphs {
    slots: HashMap<StepShape, Slot>,
    pool: Option<GraphPool>,
    /// Addresses of every trainable parameter and its gradient when the graphs were recorded.
    fingerprint: Vec<(usize, usize)>,
    /// Set when the model turned out not to be capturable (routing); every step is eager from then on.
    off: Option<&'static str>,
}

// SAFETY: a `CudaGraph` is a handle to libtorch's `at::cuda::CUDAGraph`, which any thread may replay or destroy
// as long as two threads never use it at once; `LearnerGraphs` is only reached through `&mut Learner`.
unsafe impl Send for LearnerGraphs {}

impl LearnerGraphs {
    /// Whether this build and `device` can run graphs at all.
    pub fn supported(device: Device) -> bool {
        device.is_cuda() && cuda_graph::available()
    }

    /// Why the graphs are off for good (a model they cannot record), if they are.
    pub fn off_reason(&self) -> Option<&'static str> {
        self.off
    }

    /// Graphs recorded so far (one per micro-batch shape and step).
    pub fn recorded(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Recorded(_)))
            .count()
    }

    /// Before a step's first micro-batch: defines every missing gradient (a graph adds into them in place)
    /// and drops the graphs if a parameter or gradient moved since they were recorded.
    pub fn begin_step(&mut self, policy: &dyn Policy) -> Result<()> {
        let params: Vec<Tensor> = policy.var_store().trainable_variables();
        crate::grad_sum::define_missing_grads(&params)?;
        let now: Vec<(usize, usize)> = params
            .iter()
            .map(|p| (p.data_ptr() as usize, p.grad().data_ptr() as usize))
            .collect();
        if now != self.fingerprint {
            if self.recorded() > 0 {
                tracing::info!(
                    "parameters or gradients moved: the learner's CUDA graphs are recorded again"
                );
            }
            let dropped = !self.slots.is_empty();
            self.slots.clear();
            self.pool = None;
            self.fingerprint = now;
            if dropped {
                // The dropped graphs' pool blocks serve nothing else until returned to the device.
                spar_model::cuda_empty_cache()?;
            }
        }
        Ok(())
    }

    /// One micro-step of `mb` through `body`: eager on a side stream the first time its shape is seen, captured
    /// the second, replayed from then on (eager in place when the graphs are off or full). `scale` is 1 / the
    /// aggregation's denominator ([`inverse_denominator`]). Returns `body`'s outputs, trimmed back to `mb`'s
    /// length where they are per token; they hold until the next micro-step.
    pub fn run(
        &mut self,
        kind: StepKind,
        mb: &MicroBatch,
        scale: f64,
        body: &mut StepBody<'_>,
    ) -> Result<Vec<Tensor>> {
        let Device::Cuda(device) = mb.input_ids.device() else {
            anyhow::bail!("learner CUDA graphs: the micro-batch is not on a CUDA device");
        };
        let shape = StepShape::of(kind, mb);
        let len = mb.input_ids.size().get(1).copied().unwrap_or(1);
        let trim = |outs: Vec<Tensor>| -> Vec<Tensor> {
            outs.into_iter()
                .map(|t| match t.size().as_slice() {
                    [r, l] if *r == shape.rows && *l == shape.len => t.narrow(1, 0, len),
                    _ => t,
                })
                .collect()
        };
        let full = self.slots.len() >= MAX_GRAPHS;
        match self.slots.get(&shape) {
            None if self.off.is_none() && !full => {
                let scale_t = scalar(scale, mb.input_ids.device());
                let inputs = padded_inputs(mb, shape.len);
                let (outs, routed) =
                    cuda_graph::on_side_stream(device, || body(&inputs, &scale_t))?;
                if routed {
                    self.off = Some(
                        "the model routes tokens to experts (MoE), whose forward syncs with the host",
                    );
                    tracing::info!("learner CUDA graphs off: {}", self.off.unwrap_or_default());
                }
                self.slots.insert(shape, Slot::Warm);
                Ok(trim(outs))
            }
            None => {
                let scale_t = scalar(scale, mb.input_ids.device());
                Ok(body(mb, &scale_t)?.0)
            }
            Some(Slot::Warm) => {
                // The warm-up left its activations in torch's cache, where the capture's private pool cannot
                // reuse them: give them back first, or the step's memory is held twice.
                spar_model::cuda_empty_cache()?;
                let inputs = padded_inputs(mb, shape.len);
                let scale_t = scalar(scale, mb.input_ids.device());
                let (graph, (outputs, _)) =
                    CudaGraph::capture(device, self.pool, || body(&inputs, &scale_t))?;
                if self.pool.is_none() {
                    self.pool = Some(graph.pool()?);
                }
                graph.replay()?;
                let outs = trim(outputs.iter().map(Tensor::shallow_clone).collect());
                self.slots.insert(
                    shape,
                    Slot::Recorded(Box::new(Recorded {
                        graph,
                        inputs,
                        scale: scale_t,
                        outputs,
                    })),
                );
                Ok(outs)
            }
            Some(Slot::Recorded(r)) => {
                copy_inputs(&r.inputs, mb);
                let _ = r.scale.shallow_clone().fill_(scale);
                r.graph.replay()?;
                Ok(trim(r.outputs.iter().map(Tensor::shallow_clone).collect()))
            }
        }
    }

    /// The supervised micro-step of `mb` (forward, `token_loss` aggregated by `agg`, backward into `.grad`)
    /// through [`LearnerGraphs::run`]. Adds (loss, trained tokens, entropy sum) to `acc` (float64 `[3]` on the
    /// model's device).
    pub fn supervised_step(
        &mut self,
        policy: &dyn Policy,
        mb: &MicroBatch,
        agg: &Aggregator,
        token_loss: &mut TokenLoss<'_>,
        acc: &mut Tensor,
    ) -> Result<()> {
        let unit = unit_aggregator(agg);
        let outs = self.run(
            StepKind::Supervised,
            mb,
            inverse_denominator(agg),
            &mut |mb, scale| {
                let fwd = crate::learner::forward_mb(policy, mb)?;
                let routed = fwd.routing.is_some();
                let (logp, entropy) =
                    crate::learner::output_logprobs_and_entropy(&fwd, &mb.targets, 1.0)?;
                let (loss, mask) = token_loss(mb, &logp, &unit);
                let loss = loss * scale;
                let out = Tensor::stack(
                    &[
                        loss.detach().to_kind(Kind::Double),
                        mask.sum(Kind::Double),
                        (entropy.detach() * &mask).sum(Kind::Double),
                    ],
                    0,
                );
                policy.backward(&loss, &fwd)?;
                Ok((vec![out], routed))
            },
        )?;
        *acc += &outs[0];
        Ok(())
    }
}

/// `agg` with denominators of 1: a graph's loss is this aggregation times [`inverse_denominator`]'s scale.
pub fn unit_aggregator(agg: &Aggregator) -> Aggregator {
    Aggregator {
        total_tokens: 1.0,
        total_seqs: 1.0,
        ..*agg
    }
}

/// 1 / the denominator `agg` divides by (0 when it has nothing to divide: the loss is then 0).
pub fn inverse_denominator(agg: &Aggregator) -> f64 {
    if agg.total_tokens <= 0.0 || agg.total_seqs <= 0.0 {
        return 0.0;
    }
    match agg.mode {
        AggMode::TokenMean => 1.0 / agg.total_tokens,
        AggMode::SeqMeanTokenSum | AggMode::SeqMeanTokenMean | AggMode::SeqMeanTokenSumNorm => {
            1.0 / agg.total_seqs
        }
    }
}

fn scalar(v: f64, device: Device) -> Tensor {
    Tensor::from(v as f32).to_device(device)
}

/// The padding value of each per-token input (what `batch::collate` writes past a row's end).
fn pad_values(mb: &MicroBatch) -> Vec<(&Tensor, f64)> {
    let mut v = vec![
        (&mb.input_ids, 0.0),
        (&mb.attention_mask, 0.0),
        (&mb.position_ids, 0.0),
        (&mb.targets, 0.0),
        (&mb.mask, 0.0),
        (&mb.advantages, 0.0),
        (&mb.seq_ids, -1.0),
        (&mb.seg_ids, -1.0),
        (&mb.rollout_logp, 0.0),
    ];
    v.extend(mb.packed_seq_ids.as_ref().map(|t| (t, -1.0)));
    v.extend(mb.old_logp.as_ref().map(|t| (t, 0.0)));
    v.extend(mb.ref_logp.as_ref().map(|t| (t, 0.0)));
    v
}

/// Static copies of every tensor a micro-step may read, `len` tokens long (`mb`'s, then padding), allocated
/// outside any graph's pool.
fn padded_inputs(mb: &MicroBatch, len: i64) -> MicroBatch {
    let alloc = |t: &Tensor| Tensor::empty([t.size()[0], len], (t.kind(), t.device()));
    let inputs = MicroBatch {
        input_ids: alloc(&mb.input_ids),
        attention_mask: alloc(&mb.attention_mask),
        position_ids: alloc(&mb.position_ids),
        packed_seq_ids: mb.packed_seq_ids.as_ref().map(alloc),
        targets: alloc(&mb.targets),
        mask: alloc(&mb.mask),
        advantages: alloc(&mb.advantages),
        seq_ids: alloc(&mb.seq_ids),
        seg_ids: alloc(&mb.seg_ids),
        rollout_logp: alloc(&mb.rollout_logp),
        old_logp: mb.old_logp.as_ref().map(alloc),
        ref_logp: mb.ref_logp.as_ref().map(alloc),
        // Routed models are not recorded (the warm-up run turns the graphs off).
        forced_experts: None,
        n_seqs: mb.n_seqs,
        n_segs: mb.n_segs,
        tokens: mb.tokens,
        padding: false,
    };
    copy_inputs(&inputs, mb);
    inputs
}

/// Overwrites the static inputs with `mb`'s (same [`StepShape`]; the tail past `mb`'s length gets the padding
/// values again, since a longer batch of the same bucket may have written there).
fn copy_inputs(to: &MicroBatch, mb: &MicroBatch) {
    for ((dst, _), (src, value)) in pad_values(to).into_iter().zip(pad_values(mb)) {
        let (len, full) = (src.size()[1], dst.size()[1]);
        let dst = dst.shallow_clone();
        if len < full {
            let _ = dst.narrow(1, len, full - len).fill_(value);
        }
        dst.narrow(1, 0, len).copy_(src);
    }
}
