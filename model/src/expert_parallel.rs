//! Expert parallelism for Qwen3-MoE's sparse blocks: the experts of every MoE layer are divided among the ranks
//! of an expert-parallel group (rank r computes experts `r*E/P .. (r+1)*E/P`), and each token-expert pair is
//! sent to the rank that computes its expert and its result sent back (DeepSpeed-MoE / Megatron's all-to-all
//! dispatch and combine).
//!
//! One block on one rank:
//! 1. route its own tokens (router, top-k, weights) and sort the `N*k` pairs by expert, as one process does;
//! 2. exchange the per-expert counts (every rank learns how many rows it will receive for each of its experts
//!    from each rank), then the rows themselves (`dispatch`);
//! 3. run its experts on the received rows (one grouped GEMM per projection, rows re-sorted by local expert);
//! 4. send the results back the reverse way (`combine`) and finish as one process does (routing weights, sum
//!    over k).
//!
//! Both row exchanges are autograd ops ([`ExpertExchange::exchange_rows`]): backward sends the gradients back
//! the reverse way, so the same forward serves training, activation checkpointing's recomputation and a staged
//! backward. The experts' gradients arise only on the rank that computes them (the other ranks' slices of the
//! stacked expert tensors get zero), so the data-parallel sum over all ranks that follows is the gradient one
//! process would compute.
//!
//! Capacity: none (dropless). Every routed pair is computed, however uneven the load; a rank that receives no
//! rows still takes part in every exchange. The exchanges are collectives: every rank of the group must run the
//! same MoE layers in the same order (the trainer pads micro-batch counts), so the model uses expert
//! parallelism only for forwards that record autograd without a KV cache (the learner's), never for decoding.
use crate::moe::{
    MoeOutput, MoeWeights, combine, expert_counts, expert_ffn, inverse_permutation, route,
};
use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor};

/// The expert-parallel group as the model sees it (the trainer adapts its collectives to this).
pub trait ExpertExchange: Send + Sync {
    /// This rank's place in the group.
    fn rank(&self) -> usize;
    /// The group's size P (the number of expert shards).
    fn size(&self) -> usize;
    /// Equal-split all-to-all of an int64 `[P * m]` tensor (no autograd): rank r's slice s goes to rank s.
    fn exchange_counts(&self, counts: &Tensor) -> Result<Tensor>;
    /// All-to-all of `x`'s rows as an autograd op: `in_splits[s]` rows go to rank s, `out_splits[s]` rows
    /// arrive from rank s, in rank order.
    fn exchange_rows(&self, x: &Tensor, out_splits: &[i64], in_splits: &[i64]) -> Result<Tensor>;
}

/// [`crate::moe::moe_forward_with`] with the experts divided among `ep`'s ranks (see the module documentation).
/// Same result as the whole block, up to float summation order inside the grouped GEMMs.
pub fn moe_forward_expert_parallel(
    w: &MoeWeights,
    x: &Tensor,
    k: i64,
    norm_topk_prob: bool,
    forced: Option<&Tensor>,
    grouped: bool,
    ep: &dyn ExpertExchange,
) -> Result<MoeOutput> {
    let e = w.router.size()[0];
    let p = ep.size() as i64;
    ensure!(
        e % p == 0,
        "expert parallelism: {e} experts do not divide among {p} ranks"
    );
    let local = e / p;
    let (router_logits, top_i, weights) = route(w, x, k, norm_topk_prob, forced)?;

    // 1. This rank's pairs, sorted by expert (so by destination rank too).
    let flat = top_i.f_reshape([-1])?;
    let order = flat.f_argsort_stable(true, 0, false)?;
    let xs = x.f_index_select(0, &order.f_floor_divide_scalar(k)?)?;
    let counts = expert_counts(&flat, e)?;

    // 2. Who receives what: `recv[s][j]` rows from rank s for local expert j.
    let recv = ep.exchange_counts(&counts)?;
    let send_splits = host_i64(&counts.f_view([p, local])?.f_sum_dim_intlist(
        1,
        false,
        Kind::Int64,
    )?)?;
    let recv_by_src = recv.f_view([p, local])?;
    let recv_splits = host_i64(&recv_by_src.f_sum_dim_intlist(1, false, Kind::Int64)?)?;
    let received = ep.exchange_rows(&xs, &recv_splits, &send_splits)?;

    // 3. The received rows arrive grouped by source, then by local expert: re-sort them by local expert.
    let expert_of_row = Tensor::f_arange(local, (Kind::Int64, x.device()))?
        .f_repeat([p])?
        .f_repeat_interleave_self_tensor(&recv.f_reshape([-1])?, 0, None)?;
    let by_expert = expert_of_row.f_argsort_stable(true, 0, false)?;
    let rows = received.f_index_select(0, &by_expert)?;
    let start = ep.rank() as i64 * local;
    let ys_local = if rows.size()[0] == 0 {
        // Nothing to compute, but the reverse exchange must stay in the graph (every rank takes part).
        received.f_mul_scalar(0.0)?
    } else {
        expert_ffn(
            &w.gate_up.f_narrow(0, start, local)?,
            &w.down.f_narrow(0, start, local)?,
            &rows,
            &expert_of_row.f_index_select(0, &by_expert)?,
            &recv_by_src.f_sum_dim_intlist(0, false, Kind::Int64)?,
            grouped,
        )?
        .f_index_select(0, &inverse_permutation(&by_expert)?)?
    };

    // 4. Results back to the rows' owners, in the order they were sent.
    let ys = ep.exchange_rows(&ys_local, &send_splits, &recv_splits)?;
    Ok(MoeOutput {
        hidden: combine(&ys, &order, &weights, k)?,
        router_logits,
        experts: top_i,
    })
}

fn host_i64(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(&t.f_to_device(Device::Cpu)?)?)
}
