//! The MoE load-balancing loss over the tokens of every rank.
//!
//! Switch-Transformer / transformers' loss is `E * sum_e f_e * P_e`: `f_e` the share of top-k slots routed to
//! expert e, `P_e` its mean router probability. Computed on each rank's micro-batch alone (as one process
//! computes it), `f_e` measures how one rank's few sequences happen to route, which is noisy and pushes every
//! micro-batch towards uniform routing instead of the whole batch (Qiu et al. 2025, "Demons in the detail",
//! the global-batch balance loss Qwen3 trains with). Here each micro-batch step all-reduces the counts over the
//! ranks, so `f_e` and the token count are those of the step's tokens on every rank:
//!
//! - rank r contributes `E * sum_e C_e * s_e^r / R^2`, with `C_e` and `R` (the (token, layer) rows) summed over
//!   the ranks and `s_e^r` its own probability sums (which carry the gradient); the gradient sum over the ranks
//!   then gives the gradient of `E * sum_e f_e * P_e` over the union of the ranks' micro-batches;
//! - only real tokens count (padding positions and the stand-in micro-batches of lockstep ranks contribute 0);
//! - each micro-batch step is weighted by its share of the step's rows, `R / R_total`, so the loss is a token
//!   mean over the whole batch.
//!
//! Every rank must run the same number of micro-batches for the per-step all-reduce: the learner pads their
//! counts when this loss is on (`Learner::pad_micro_batches`). Equal to one process whose
//! micro-batch `i` is the union of the ranks' micro-batches `i` (tested by `spar-dp-check --aux`).
use crate::batch::MicroBatch;
use crate::policy::Routing;
use anyhow::Result;
use spar_dist::{Collectives, ReduceOp};
use tch::{Kind, Tensor};

/// The batch's real tokens over every rank (`R_total / layers`); one all-reduce.
pub(crate) fn global_real_tokens(group: &dyn Collectives, mbs: &[MicroBatch]) -> Result<f64> {
    // `tokens` is the micro-batch's real token count (0 for padding ones), known on the host: no device sync.
    let local = mbs.iter().map(|mb| mb.tokens as f64).sum::<f64>();
    Ok(spar_dist::sum_over_ranks(group, &[local])?[0])
}

/// This rank's share of micro-batch step `mb`'s load-balancing loss, weighted by the step's share of the
/// batch's `total_tokens` real tokens (see the module documentation). Every rank calls it once per micro-batch,
/// padding ones included (one all-reduce of `E + 1` floats).
pub(crate) fn micro_step_aux(
    group: &dyn Collectives,
    routing: &Routing,
    mb: &MicroBatch,
    total_tokens: f64,
) -> Result<Tensor> {
    let real = if mb.padding {
        mb.attention_mask.f_zeros_like()?
    } else {
        mb.attention_mask.shallow_clone()
    };
    let s = spar_model::routing_sums(
        &routing.logits,
        routing.num_experts,
        routing.top_k,
        Some(&real),
    )?
    .ok_or_else(|| {
        anyhow::anyhow!("MoE load-balancing loss: the forward returned no router logits")
    })?;
    let mut counts = Tensor::f_cat(
        &[s.counts.shallow_clone(), s.rows.f_reshape([1])?.f_detach()?],
        0,
    )?;
    if group.world_size() > 1 {
        group.all_reduce(&mut counts, ReduceOp::Sum)?.wait()?;
    }
    let e = routing.num_experts as i64;
    let c = counts.f_narrow(0, 0, e)?;
    let rows = counts.f_narrow(0, e, 1)?.f_squeeze()?;
    let layers = routing.logits.len() as f64;
    let total_rows = (total_tokens * layers).max(1.0);
    // E * sum_e C_e s_e / R^2 * (R / R_total) = E * sum_e C_e s_e / (R * R_total).
    Ok(c.f_mul(&s.probs)?
        .f_sum(Kind::Float)?
        .f_div(&rows.f_clamp_min(1.0)?)?
        .f_mul_scalar(routing.num_experts as f64 / total_rows)?)
}
