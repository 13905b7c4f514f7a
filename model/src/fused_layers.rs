//! Each layer's projections concatenated so that one GEMM computes q, k and v (and one the dense MLP's gate and
//! up): the weights of the decode step ([`crate::graph_decode`]) and of the fused prefill
//! ([`crate::fused_prefill`]).
//!
//! The model's own parameters are re-pointed into these buffers (same values, shared memory), so in-place weight
//! updates (optimizer steps, weight sync) reach them; [`FusedLayers::ensure`] notices when anything re-pointed the
//! parameters since (a dtype change, a load) and rebuilds the buffers. One owner per model: a second set would
//! re-point the parameters away from the first.

use crate::moe::moe_forward_with;
use crate::qwen3::{Attention, Mlp, Qwen3Model};
use crate::rope::apply_rotary;
use anyhow::{Context, Result};
use spar_kernels::{decode_ops, rms_norm};
use tch::Tensor;

/// One layer's fused projection weights.
pub(crate) struct FusedLayer {
    /// `[(nh + 2 nkv) d, H]`: q rows, then k, then v.
    pub(crate) qkv: Tensor,
    /// `[2 I, H]`: gate rows, then up (dense layers only).
    pub(crate) gate_up: Option<Tensor>,
}

/// The fused weights of every layer of one model (empty until [`FusedLayers::ensure`]).
#[derive(Default)]
pub struct FusedLayers {
    layers: Vec<FusedLayer>,
}

impl FusedLayers {
    /// Fuses `model`'s weights (re-pointing its parameters into the buffers).
    pub fn new(model: &Qwen3Model) -> Result<FusedLayers> {
        let mut f = FusedLayers::default();
        f.ensure(model)?;
        Ok(f)
    }

    /// Makes sure the model's parameters live in these buffers, rebuilding them when not (first use, or the
    /// parameters were replaced). Returns whether they were rebuilt.
    pub fn ensure(&mut self, model: &Qwen3Model) -> Result<bool> {
        if fused_intact(model, &self.layers) {
            return Ok(false);
        }
        self.layers = fuse_weights(model)?;
        Ok(true)
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, FusedLayer> {
        self.layers.iter()
    }
}

/// The attention inputs of `r` tokens, one a row, from their fused projection `qkv: [r, 1, (nh + 2 nkv) d]`:
/// returns the queries after `q_norm` and RoPE (`[r, nh, d]`, or `[r, nh, 1, d]` from the composition: reshape
/// either) and stores each token's key (after `k_norm` and RoPE) and value at flat row `write_at[i]` (`[r]`)
/// of the layer's caches viewed as `[rows, nkv, d]`. One kernel where [`decode_ops::qk_norm_rope_store`]
/// applies, its torch composition elsewhere. `cos`, `sin`: `[r, 1, d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn queries_and_store(
    attn: &Attention,
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    write_at: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    (nh, nkv, d): (i64, i64, i64),
    eps: f64,
) -> Result<Tensor> {
    let stored = decode_ops::qk_norm_rope_store(
        qkv,
        &attn.q_norm,
        &attn.k_norm,
        cos,
        sin,
        write_at,
        k_cache,
        v_cache,
        (nh, nkv, d),
        eps,
    )?;
    if let Some(q) = stored {
        return Ok(q);
    }
    let r = qkv.size()[0];
    let ql = qkv.f_narrow(-1, 0, nh * d)?;
    let kl = qkv.f_narrow(-1, nh * d, nkv * d)?;
    let vl = qkv.f_narrow(-1, (nh + nkv) * d, nkv * d)?;
    let q = rms_norm(&ql.f_reshape([r, 1, nh, d])?, &attn.q_norm, eps)?.f_transpose(1, 2)?;
    let k = rms_norm(&kl.f_reshape([r, 1, nkv, d])?, &attn.k_norm, eps)?.f_transpose(1, 2)?;
    // Queries and keys rotate together (one set of RoPE ops instead of two).
    let qk = apply_rotary(&Tensor::f_cat(&[&q, &k], 1)?, cos, sin)?; // [r, nh + nkv, 1, d]
    let rows = k_cache.size()[0] * k_cache.size()[1];
    let k = qk.f_narrow(1, nh, nkv)?.f_reshape([r, nkv, d])?;
    let _ = k_cache
        .f_view([rows, nkv, d])?
        .f_index_copy_(0, write_at, &k)?;
    let _ =
        v_cache
            .f_view([rows, nkv, d])?
            .f_index_copy_(0, write_at, &vl.f_reshape([r, nkv, d])?)?;
    Ok(qk.f_narrow(1, 0, nh)?)
}

/// The first layer's input norm of the embeddings `x` (the final norm for a model without layers): the norm each
/// later layer's residual add is fused with ([`mlp_and_next_norm`]).
pub(crate) fn first_input_norm(model: &Qwen3Model, x: &Tensor) -> Result<Tensor> {
    let w = model.layers.first().map_or(&model.norm, |l| &l.input_ln);
    rms_norm(x, w, model.config.rms_norm_eps)
}

/// Layer `li` after its attention, as the decode step and the fused prefill run it: the residual add fused with
/// the post-attention norm, the MLP (one gate-up GEMM for a dense layer; the experts for an MoE one, through
/// `_grouped_mm` when `grouped`), and the residual add fused with the next layer's input norm (the final norm
/// after the last layer). `x`: the layer's input `[.., H]`; `attn_out`: attention's output projection, same
/// shape. Returns the layer's output, that output through the next norm, and an MoE layer's chosen experts
/// `[tokens, k]`.
pub(crate) fn mlp_and_next_norm(
    model: &Qwen3Model,
    li: usize,
    fused: &FusedLayer,
    x: &Tensor,
    attn_out: &Tensor,
    grouped: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (c, layer) = (&model.config, &model.layers[li]);
    let eps = c.rms_norm_eps;
    let (x1, h2) = decode_ops::add_rms_norm(x, attn_out, &layer.post_ln, eps)?;
    let (y, experts) = match &layer.mlp {
        Mlp::Dense { down, .. } => {
            let gu = fused
                .gate_up
                .as_ref()
                .with_context(|| format!("dense layer {li} without fused gate_up"))?;
            // A decode step's few rows take the skinny kernel; a prefill's many take cuBLAS.
            let y = decode_ops::linear(
                &decode_ops::silu_mul_packed(&decode_ops::linear(&h2, gu)?)?,
                down,
            )?;
            (y, None)
        }
        Mlp::Moe { weights, .. } => {
            let o = moe_forward_with(
                weights,
                &h2.f_reshape([-1, c.hidden_size as i64])?,
                c.num_experts_per_tok as i64,
                c.norm_topk_prob,
                None,
                grouped,
            )?;
            (o.hidden.f_view(h2.size().as_slice())?, Some(o.experts))
        }
    };
    let next_norm = model
        .layers
        .get(li + 1)
        .map_or(&model.norm, |next| &next.input_ln);
    let (x2, hn) = decode_ops::add_rms_norm(&x1, &y, next_norm, eps)?;
    Ok((x2, hn, experts))
}

/// Builds the fused buffers and re-points the model's q/k/v (and dense gate/up) parameters into them.
fn fuse_weights(model: &Qwen3Model) -> Result<Vec<FusedLayer>> {
    let _g = tch::no_grad_guard();
    let point = |var: &Tensor, fused: &Tensor, start: i64, len: i64| -> Result<()> {
        let mut v = var.shallow_clone();
        v.f_set_data(&fused.f_narrow(0, start, len)?)?;
        Ok(())
    };
    let mut out = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let a = &layer.attn;
        let (nq, nk) = (a.q.size()[0], a.k.size()[0]);
        let qkv = Tensor::f_cat(&[&a.q, &a.k, &a.v], 0)?;
        point(&a.q, &qkv, 0, nq)?;
        point(&a.k, &qkv, nq, nk)?;
        point(&a.v, &qkv, nq + nk, nk)?;
        let gate_up = match &layer.mlp {
            Mlp::Dense { gate, up, .. } => {
                let ni = gate.size()[0];
                let gu = Tensor::f_cat(&[gate, up], 0)?;
                point(gate, &gu, 0, ni)?;
                point(up, &gu, ni, ni)?;
                Some(gu)
            }
            Mlp::Moe { .. } => None,
        };
        out.push(FusedLayer { qkv, gate_up });
    }
    Ok(out)
}

/// Whether the model's parameters still live inside the fused buffers.
fn fused_intact(model: &Qwen3Model, fused: &[FusedLayer]) -> bool {
    let at = |var: &Tensor, buf: &Tensor, row: i64| {
        let elt = buf.kind().elt_size_in_bytes() as i64;
        let row_bytes = buf.size().get(1).copied().unwrap_or(0) * elt;
        var.data_ptr() as i64 == buf.data_ptr() as i64 + row * row_bytes && var.kind() == buf.kind()
    };
    fused.len() == model.layers.len()
        && model.layers.iter().zip(fused).all(|(layer, f)| {
            let a = &layer.attn;
            let (nq, nk) = (a.q.size()[0], a.k.size()[0]);
            let attn_ok = at(&a.q, &f.qkv, 0) && at(&a.k, &f.qkv, nq) && at(&a.v, &f.qkv, nq + nk);
            let mlp_ok = match (&layer.mlp, &f.gate_up) {
                (Mlp::Dense { gate, up, .. }, Some(gu)) => {
                    at(gate, gu, 0) && at(up, gu, gate.size()[0])
                }
                (Mlp::Moe { .. }, None) => true,
                _ => false,
            };
            attn_ok && mlp_ok
        })
}
