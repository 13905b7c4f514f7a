//! The sparse MoE block of Qwen3-MoE with experts stacked into two tensors and routing kept on the device.
//!
//! Routing follows transformers' `Qwen3MoeTopKRouter`: router logits in the model dtype, softmax in float32,
//! top-k of the probabilities, optional renormalisation (`norm_topk_prob`), weights cast back to the model
//! dtype. Compute: the `N*k` (token, expert) pairs are sorted by expert, each expert's rows are multiplied in
//! one grouped GEMM (`torch._grouped_mm`, offsets computed on the device), and the results are un-permuted
//! and summed over k. No step reads anything back to the host.

use anyhow::Result;
use tch::{Kind, Tensor};

/// Result of one MoE block.
pub struct MoeOutput {
    /// `[N, H]`.
    pub hidden: Tensor,
    /// `[N, E]` router logits in the model dtype (for the aux loss).
    pub router_logits: Tensor,
    /// `[N, k]` int64 chosen experts, in descending probability order (or as forced).
    pub experts: Tensor,
}

/// Stacked expert weights of one MoE layer.
#[derive(Debug)]
pub struct MoeWeights {
    /// `[E, H]` (HF `mlp.gate.weight`).
    pub router: Tensor,
    /// `[E, 2I, H]`: rows `0..I` are HF `experts.e.gate_proj.weight`, rows `I..2I` `experts.e.up_proj.weight`.
    pub gate_up: Tensor,
    /// `[E, H, I]` (HF `experts.e.down_proj.weight`).
    pub down: Tensor,
}

/// Runs the MoE block on `x: [N, H]`. `forced: [N, k]` int64 replaces the top-k choice (routing replay); the
/// routing weights are then the router probabilities of the forced experts.
pub fn moe_forward(
    w: &MoeWeights,
    x: &Tensor,
    k: i64,
    norm_topk_prob: bool,
    forced: Option<&Tensor>,
) -> Result<MoeOutput> {
    moe_forward_with(w, x, k, norm_topk_prob, forced, true)
}

/// [`moe_forward`] with the grouped GEMM allowed or not (`grouped = false` always gathers each pair's expert
/// weights: slower, but free of the host copies some `_grouped_mm` fallbacks make, so a CUDA graph can
/// capture it).
pub fn moe_forward_with(
    w: &MoeWeights,
    x: &Tensor,
    k: i64,
    norm_topk_prob: bool,
    forced: Option<&Tensor>,
    grouped: bool,
) -> Result<MoeOutput> {
    let (router_logits, top_i, weights) = route(w, x, k, norm_topk_prob, forced)?;
    let e = w.router.size()[0];
    let flat = top_i.f_reshape([-1])?;
    let order = flat.f_argsort_stable(true, 0, false)?;
    let sorted_experts = flat.f_index_select(0, &order)?;
    let xs = x.f_index_select(0, &order.f_floor_divide_scalar(k)?)?;
    let counts = expert_counts(&flat, e)?;
    let ys = expert_ffn(&w.gate_up, &w.down, &xs, &sorted_experts, &counts, grouped)?;
    Ok(MoeOutput {
        hidden: combine(&ys, &order, &weights, k)?,
        router_logits,
        experts: top_i,
    })
}

/// The router: `[N, E]` logits, the `[N, k]` chosen (or forced) experts and their `[N, k]` weights in the model
/// dtype.
pub(crate) fn route(
    w: &MoeWeights,
    x: &Tensor,
    k: i64,
    norm_topk_prob: bool,
    forced: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let router_logits = x.f_linear(&w.router, None::<Tensor>)?;
    let probs = router_logits.f_softmax(-1, Kind::Float)?;
    let (top_v, top_i) = match forced {
        Some(f) => (probs.f_gather(1, f, false)?, f.shallow_clone()),
        None => probs.f_topk(k, -1, true, true)?,
    };
    let top_v = if norm_topk_prob {
        top_v.f_div(&top_v.f_sum_dim_intlist(-1, true, Kind::Float)?)?
    } else {
        top_v
    };
    Ok((router_logits, top_i, top_v.f_to_kind(x.kind())?))
}

/// Rows per expert: `[E]` int64 counts of `experts` (any shape, values in `0..e`).
pub(crate) fn expert_counts(experts: &Tensor, e: i64) -> Result<Tensor> {
    let flat = experts.f_reshape([-1])?;
    Ok(
        Tensor::f_zeros([e], (Kind::Int64, flat.device()))?.f_scatter_add(
            0,
            &flat,
            &flat.f_ones_like()?,
        )?,
    )
}

/// The experts' SwiGLU on rows sorted by expert: `xs: [R, H]`, `sorted_experts: [R]` (indices into the
/// stacks `gate_up: [E, 2I, H]`, `down: [E, H, I]`), `counts: [E]` rows per expert. One grouped GEMM per
/// projection when the shapes allow it, else each row's expert weights gathered.
pub(crate) fn expert_ffn(
    gate_up: &Tensor,
    down: &Tensor,
    xs: &Tensor,
    sorted_experts: &Tensor,
    counts: &Tensor,
    grouped: bool,
) -> Result<Tensor> {
    let kind = xs.kind();
    let inter = down.size()[2];
    let h = xs.size()[1];
    let elt = kind.elt_size_in_bytes() as i64;
    let aligned = grouped && (h * elt) % 16 == 0 && (inter * elt) % 16 == 0;
    if aligned {
        let offs = counts.f_cumsum(0, Kind::Int)?;
        let gu = xs.f_internal_grouped_mm(
            &gate_up.f_transpose(1, 2)?,
            Some(&offs),
            None::<&Tensor>,
            None::<Kind>,
        )?;
        let act = gu
            .f_narrow(1, 0, inter)?
            .f_silu()?
            .f_mul(&gu.f_narrow(1, inter, inter)?)?;
        Ok(act.f_internal_grouped_mm(
            &down.f_transpose(1, 2)?,
            Some(&offs),
            None::<&Tensor>,
            None::<Kind>,
        )?)
    } else {
        // Grouped GEMM needs 16-byte aligned rows; odd tiny shapes gather each pair's expert weights instead.
        let wgu = gate_up.f_index_select(0, sorted_experts)?;
        let gu = xs
            .f_unsqueeze(1)?
            .f_bmm(&wgu.f_transpose(1, 2)?)?
            .f_squeeze_dim(1)?;
        let act = gu
            .f_narrow(1, 0, inter)?
            .f_silu()?
            .f_mul(&gu.f_narrow(1, inter, inter)?)?;
        let wd = down.f_index_select(0, sorted_experts)?;
        Ok(act
            .f_unsqueeze(1)?
            .f_bmm(&wd.f_transpose(1, 2)?)?
            .f_squeeze_dim(1)?)
    }
}

/// The block's output from the expert rows `ys: [N*k, H]` sorted by `order`: each row times its routing
/// weight, the sort undone (inverse permutation by scatter, no second sort), each token's k rows summed.
pub(crate) fn combine(ys: &Tensor, order: &Tensor, weights: &Tensor, k: i64) -> Result<Tensor> {
    let (nk, h) = ys.size2()?;
    let w_sorted = weights
        .f_reshape([-1])?
        .f_index_select(0, order)?
        .f_unsqueeze(-1)?;
    let ys = ys.f_mul(&w_sorted)?;
    Ok(ys
        .f_index_select(0, &inverse_permutation(order)?)?
        .f_view([nk / k, k, h])?
        .f_sum_dim_intlist(1, false, ys.kind())?)
}

/// The inverse of permutation `order` (`inv[order[i]] = i`), by scatter.
pub(crate) fn inverse_permutation(order: &Tensor) -> Result<Tensor> {
    let n = order.size()[0];
    let arange = Tensor::f_arange(n, (Kind::Int64, order.device()))?;
    Ok(order.f_zeros_like()?.f_scatter(0, order, &arange)?)
}

/// Switch-Transformer load-balancing loss over all MoE layers, as transformers' `load_balancing_loss_func`
/// without an attention mask: `E * sum_e f_e * P_e` with `f_e` the fraction of top-k slots routed to expert e
/// and `P_e` the mean router probability of e, both over all tokens of all layers.
pub fn aux_load_balancing_loss(router_logits: &[Tensor], num_experts: usize, k: usize) -> Tensor {
    aux_load_balancing_loss_masked(router_logits, num_experts, k, None)
        .unwrap_or_else(|e| panic!("aux_load_balancing_loss: {e}"))
}

/// [`aux_load_balancing_loss`] counting only tokens where `mask` (`[B, T]` or `[B*T]`, 1 = real) is 1.
/// Returns 0 (float32 scalar on the CPU) when there are no router logits.
pub fn aux_load_balancing_loss_masked(
    router_logits: &[Tensor],
    num_experts: usize,
    k: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let Some(s) = routing_sums(router_logits, num_experts, k, mask)? else {
        return Ok(Tensor::f_zeros([], (Kind::Float, tch::Device::Cpu))?);
    };
    let f = s.counts.f_div(&s.rows)?;
    let pm = s.probs.f_div(&s.rows)?;
    Ok(f.f_mul(&pm)?
        .f_sum(Kind::Float)?
        .f_mul_scalar(num_experts as f64)?)
}

/// The sums the load-balancing loss is made of, over all MoE layers and the tokens `mask` keeps: top-k slots
/// routed to each expert (`counts`, `[E]` float32, no gradient), each expert's router probability summed over
/// the tokens (`probs`, `[E]` float32, with gradient) and the number of (token, layer) rows (`rows`, a float32
/// scalar). Sums add across micro-batches and ranks, which is how the trainer computes the loss over the
/// tokens of every rank (`E * sum_e counts_e * probs_e / rows^2` over the sums of all of them).
pub struct RoutingSums {
    pub counts: Tensor,
    pub probs: Tensor,
    pub rows: Tensor,
}

/// [`RoutingSums`] of one forward's router logits (None when there are none: a dense model).
pub fn routing_sums(
    router_logits: &[Tensor],
    num_experts: usize,
    k: usize,
    mask: Option<&Tensor>,
) -> Result<Option<RoutingSums>> {
    let Some(first) = router_logits.first() else {
        return Ok(None);
    };
    let dev = first.device();
    let e = num_experts as i64;
    let mut tokens = Tensor::f_zeros([e], (Kind::Float, dev))?;
    let mut probs_sum = Tensor::f_zeros([e], (Kind::Float, dev))?;
    let mut rows = Tensor::f_zeros([], (Kind::Float, dev))?;
    let flat_mask = match mask {
        Some(m) => Some(
            m.f_reshape([-1])?
                .f_to_kind(Kind::Float)?
                .f_to_device(dev)?,
        ),
        None => None,
    };
    for logits in router_logits {
        let p = logits.f_softmax(-1, Kind::Float)?;
        let (_, sel) = p.f_topk(k as i64, -1, true, true)?;
        let sel = sel.f_reshape([-1])?;
        match &flat_mask {
            None => {
                tokens =
                    tokens.f_scatter_add(0, &sel, &sel.f_ones_like()?.f_to_kind(Kind::Float)?)?;
                probs_sum = probs_sum.f_add(&p.f_sum_dim_intlist(0, false, Kind::Float)?)?;
                rows = rows.f_add_scalar(p.size()[0] as f64)?;
            }
            Some(m) => {
                let mk = m.f_repeat_interleave_self_int(k as i64, None, None)?;
                tokens = tokens.f_scatter_add(0, &sel, &mk)?;
                probs_sum = probs_sum.f_add(&p.f_mul(&m.f_unsqueeze(-1)?)?.f_sum_dim_intlist(
                    0,
                    false,
                    Kind::Float,
                )?)?;
                rows = rows.f_add(&m.f_sum(Kind::Float)?)?;
            }
        }
    }
    Ok(Some(RoutingSums {
        counts: tokens.f_detach()?,
        probs: probs_sum,
        rows,
    }))
}
