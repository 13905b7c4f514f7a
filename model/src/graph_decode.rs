//! Decode steps replayed from CUDA graphs: one launch per step instead of ~30 per layer.
//!
//! Eager decode of a small model is bound by kernel launches (about 12 ms per step for Qwen3-0.6B from batch 1
//! to 64 on an H100, see docs/benchmarks.md). A decode step has the same work every time once its shapes are
//! fixed, so it is captured once per shape and replayed:
//!
//! - **Rows**: the batch is padded to a bucket of `R` rows (1, 2, 4, ... up to the engine's batch). Graph row
//!   `j` is physical KV-cache slot `j` ([`KvCache::gather_low`] moves the decoding sequences there), so
//!   attention reads the cache through a strided view with no gather. Padding rows write their key and value
//!   into the scratch column `max_len` of their slot and their outputs are dropped.
//! - **Keys**: attention covers the first `K` cache positions, `K` the longest sequence rounded up to a
//!   multiple of [`KEY_BLOCK`]; a per-row length mask built on the device hides the rest.
//! - **Inputs** (token ids, write positions, key lengths) are one static `[3, R]` int64 tensor, overwritten by
//!   one host-to-device copy before each replay; logits and chosen experts land in static outputs.
//!
//! Graphs of all shapes share one memory pool (only one runs at a time). The math is the eager forward's
//! (same ops, same order), with two differences that change rounding only: RMSNorm is the torch composition
//! (the NVRTC kernel launches on the legacy stream, which capture forbids) and the query heads sharing a KV
//! head are folded into the query-length axis of one attention call (no repeated keys).
//!
//! Sampling stays outside the graph: the engine samples from the returned logits as it does after an eager
//! forward. Anything the graph path cannot take (CPU, a build without the shim, more rows than the largest
//! bucket, a failed capture) makes [`GraphDecoder::decode`] return `None` and the caller runs the eager forward.

use crate::cache::KvCache;
use crate::moe::moe_forward;
use crate::qwen3::{Mlp, Qwen3Model};
use crate::rope::apply_rotary;
use anyhow::{Context, Result};
use spar_kernels::cuda_graph::{self, CudaGraph, GraphPool};
use spar_kernels::rms_norm_torch;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Attention key windows are multiples of this many positions (fewer graphs, a little masked work).
pub const KEY_BLOCK: usize = 128;

/// Counters, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Graphs captured (one per (rows, keys) shape seen).
    pub captures: u64,
    /// Decode steps served by a replay.
    pub replays: u64,
    /// Decode steps handed back to the eager path.
    pub fallbacks: u64,
}

/// Output of one graph decode step, rows in the order they were given.
pub struct GraphDecodeOutput {
    /// `[b, vocab]` logits in the model dtype (a fresh tensor, not overwritten by the next replay).
    pub logits: Tensor,
    /// `[b, 1, n_moe_layers, k]` int64 chosen experts (MoE models only).
    pub routed_experts: Option<Tensor>,
}

struct Bucket {
    /// `[3, R]` int64: token ids, write positions, key lengths (padding rows: 0, `max_len`, 1).
    inputs: Tensor,
    logits: Tensor,
    experts: Option<Tensor>,
}

/// Captured decode graphs over one model and one KV cache. See the module documentation.
pub struct GraphDecoder {
    ordinal: usize,
    buckets: Vec<usize>,
    inputs: HashMap<usize, Bucket>,
    graphs: HashMap<(usize, usize), CudaGraph>,
    pool: Option<GraphPool>,
    cache_id: usize,
    /// Set when a capture failed: the path then stays off (the error is logged once).
    broken: bool,
    pub stats: GraphStats,
}

impl GraphDecoder {
    /// A decoder for batches of up to `max_rows` sequences over `cache`, or None where graphs cannot run:
    /// a CPU model, a build without the CUDA-graph shim, or `SPAR_CUDA_GRAPHS=0` in the environment.
    pub fn new(model: &Qwen3Model, cache: &KvCache, max_rows: usize) -> Option<Self> {
        let Device::Cuda(ordinal) = model.device() else {
            return None;
        };
        if !cuda_graph::available() || !enabled_by_env() || max_rows == 0 {
            return None;
        }
        let top = max_rows.min(cache.slots());
        let mut buckets: Vec<usize> = (0..)
            .map(|i| 1usize << i)
            .take_while(|b| *b < top)
            .collect();
        buckets.push(top);
        Some(GraphDecoder {
            ordinal,
            buckets,
            inputs: HashMap::new(),
            graphs: HashMap::new(),
            pool: None,
            cache_id: cache.storage_id(),
            broken: false,
            stats: GraphStats::default(),
        })
    }

    /// Row buckets graphs are captured for.
    pub fn buckets(&self) -> &[usize] {
        &self.buckets
    }

    /// Appends one token to each `(slot, token)` row and returns the logits of the next position, or None when
    /// the graph path cannot take this step (the caller then runs the eager forward; nothing was changed).
    /// Slots must be distinct. Advances the slots' lengths like a cached forward does.
    pub fn decode(
        &mut self,
        model: &Qwen3Model,
        cache: &mut KvCache,
        rows: &[(usize, u32)],
    ) -> Result<Option<GraphDecodeOutput>> {
        let b = rows.len();
        let bucket = self.buckets.iter().copied().find(|r| *r >= b);
        let max_len = cache.max_len();
        let longest = rows.iter().map(|(s, _)| cache.len(*s)).max().unwrap_or(0);
        let vocab = model.config.vocab_size as u32;
        let (Some(r), false) = (bucket, self.broken) else {
            self.stats.fallbacks += 1;
            return Ok(None);
        };
        if b == 0
            || longest + 1 > max_len
            || rows.iter().any(|(s, t)| *s >= cache.slots() || *t >= vocab)
        {
            // Let the eager path produce its precise error (overflow, bad slot or token).
            self.stats.fallbacks += 1;
            return Ok(None);
        }
        if cache.storage_id() != self.cache_id {
            self.graphs.clear();
            self.cache_id = cache.storage_id();
        }
        let _g = tch::no_grad_guard();
        let slots: Vec<usize> = rows.iter().map(|(s, _)| *s).collect();
        cache.gather_low(&slots, r)?;
        let keys = (longest + 1).div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let keys = keys.min(max_len);

        // Host side of the static inputs: padding rows decode token 0 into the scratch column.
        let mut host = vec![0i64; 3 * r];
        for j in 0..r {
            host[r + j] = max_len as i64;
            host[2 * r + j] = 1;
        }
        let mut phys = Vec::with_capacity(b);
        for (slot, tok) in rows {
            let p = cache.physical(*slot);
            let len = cache.len(*slot) as i64;
            host[p] = *tok as i64;
            host[r + p] = len;
            host[2 * r + p] = len + 1;
            phys.push(p as i64);
        }
        if !self.inputs.contains_key(&r) {
            let bucket = self.new_bucket(model, r)?;
            self.inputs.insert(r, bucket);
        }
        let bucket = &self.inputs[&r];
        let mut inputs = bucket.inputs.shallow_clone();
        inputs.f_copy_(&Tensor::from_slice(&host).f_view([3, r as i64])?)?;

        if !self.graphs.contains_key(&(r, keys)) {
            match self.capture(model, cache, r, keys) {
                Ok(g) => {
                    self.graphs.insert((r, keys), g);
                    self.stats.captures += 1;
                }
                Err(e) => {
                    tracing::warn!("CUDA graph decode disabled, eager decode from now on: {e:#}");
                    eprintln!("spar-model: CUDA graph decode disabled, using eager decode ({e:#})");
                    self.broken = true;
                    self.stats.fallbacks += 1;
                    return Ok(None);
                }
            }
        }
        self.graphs[&(r, keys)].replay()?;
        self.stats.replays += 1;

        let bucket = &self.inputs[&r];
        let idx = Tensor::from_slice(&phys).f_to_device(model.device())?;
        let logits = bucket.logits.f_index_select(0, &idx)?;
        let routed_experts = match &bucket.experts {
            Some(e) => Some(e.f_index_select(0, &idx)?.f_unsqueeze(1)?),
            None => None,
        };
        for (slot, _) in rows {
            let len = cache.len(*slot);
            cache.set_len(*slot, len + 1);
        }
        Ok(Some(GraphDecodeOutput {
            logits,
            routed_experts,
        }))
    }

    fn new_bucket(&self, model: &Qwen3Model, r: usize) -> Result<Bucket> {
        let dev = model.device();
        let c = &model.config;
        let r = r as i64;
        let n_moe = c.moe_layers().len() as i64;
        Ok(Bucket {
            inputs: Tensor::f_zeros([3, r], (Kind::Int64, dev))?,
            logits: Tensor::f_zeros([r, c.vocab_size as i64], (model.kind(), dev))?,
            experts: (n_moe > 0)
                .then(|| {
                    Tensor::f_zeros(
                        [r, n_moe, c.num_experts_per_tok as i64],
                        (Kind::Int64, dev),
                    )
                })
                .transpose()?,
        })
    }

    /// Warms the step up on a side stream (cuBLAS workspaces, lazy kernels), then captures it.
    fn capture(
        &mut self,
        model: &Qwen3Model,
        cache: &KvCache,
        r: usize,
        keys: usize,
    ) -> Result<CudaGraph> {
        let bucket = &self.inputs[&r];
        // The warm-up runs the real step once: it writes the same keys and values the replay will write.
        cuda_graph::on_side_stream(self.ordinal, || step_into(model, cache, bucket, r, keys))
            .context("warming up the decode step")?;
        let (graph, ()) = CudaGraph::capture(self.ordinal, self.pool, || {
            step_into(model, cache, bucket, r, keys)
        })
        .with_context(|| format!("capturing the decode step ({r} rows, {keys} keys)"))?;
        if self.pool.is_none() {
            self.pool = Some(graph.pool()?);
        }
        Ok(graph)
    }
}

fn enabled_by_env() -> bool {
    std::env::var("SPAR_CUDA_GRAPHS")
        .map(|v| v != "0" && v != "off")
        .unwrap_or(true)
}

/// Runs one decode step of `r` rows over the first `keys` cache positions, reading the bucket's static
/// inputs and writing its static outputs. Graph-safe: no host reads, no host-to-device copies, shapes fixed.
fn step_into(
    model: &Qwen3Model,
    cache: &KvCache,
    bucket: &Bucket,
    r: usize,
    keys: usize,
) -> Result<()> {
    let (logits, experts) = decode_step(model, cache, &bucket.inputs, r as i64, keys as i64)?;
    bucket.logits.shallow_clone().f_copy_(&logits)?;
    if let (Some(dst), Some(src)) = (&bucket.experts, experts) {
        dst.shallow_clone().f_copy_(&src)?;
    }
    Ok(())
}

/// The decode forward over static shapes. `inputs`: `[3, r]` (ids, write positions, key lengths).
/// Returns logits `[r, V]` and, for MoE models, experts `[r, n_moe, k]`.
pub(crate) fn decode_step(
    model: &Qwen3Model,
    cache: &KvCache,
    inputs: &Tensor,
    r: i64,
    keys: i64,
) -> Result<(Tensor, Option<Tensor>)> {
    let c = &model.config;
    let dev = model.device();
    let kind = model.kind();
    let eps = c.rms_norm_eps;
    let (nh, nkv, d, h) = (
        c.num_attention_heads as i64,
        c.num_key_value_heads as i64,
        c.head_dim as i64,
        c.hidden_size as i64,
    );
    let n_rep = nh / nkv;
    let width = cache.max_len() as i64 + 1;
    let slots = cache.slots() as i64;
    let ids = inputs.f_select(0, 0)?.f_view([r, 1])?;
    let pos = inputs.f_select(0, 1)?;
    let key_len = inputs.f_select(0, 2)?;

    let (cos, sin) = model.rope.cos_sin(&pos.f_view([r, 1])?, kind)?; // [r, 1, D]
    let mask = Tensor::f_arange(keys, (Kind::Int64, dev))?
        .f_view([1, 1, 1, keys])?
        .f_lt_tensor(&key_len.f_view([r, 1, 1, 1])?)?; // [r, 1, 1, keys]
    // Row j of the graph is physical slot j: flat index of (slot j, position pos[j]) in a [slots * width] view.
    let write_at = Tensor::f_arange(r, (Kind::Int64, dev))?
        .f_mul_scalar(width)?
        .f_add(&pos)?;

    let mut x = Tensor::f_embedding(&model.embed, &ids, model.pad_idx(), false, false)?; // [r, 1, H]
    let mut experts = Vec::new();
    for layer in &model.layers {
        let a = &layer.attn;
        let hin = rms_norm_torch(&x, &layer.input_ln, eps)?;
        let q = rms_norm_torch(
            &hin.f_linear(&a.q, None::<Tensor>)?.f_view([r, 1, nh, d])?,
            &a.q_norm,
            eps,
        )?
        .f_transpose(1, 2)?;
        let k = rms_norm_torch(
            &hin.f_linear(&a.k, None::<Tensor>)?.f_view([r, 1, nkv, d])?,
            &a.k_norm,
            eps,
        )?
        .f_transpose(1, 2)?;
        let v = hin.f_linear(&a.v, None::<Tensor>)?.f_view([r, nkv, d])?;
        let q = apply_rotary(&q, &cos, &sin)?; // [r, nh, 1, D]
        let k = apply_rotary(&k, &cos, &sin)?.f_reshape([r, nkv, d])?;
        let (kc, vc) = cache.layer(layer.index);
        let _ = kc
            .f_view([slots * width, nkv, d])?
            .f_index_copy_(0, &write_at, &k)?;
        let _ = vc
            .f_view([slots * width, nkv, d])?
            .f_index_copy_(0, &write_at, &v)?;
        let kr = kc.f_narrow(0, 0, r)?.f_narrow(1, 0, keys)?.f_transpose(1, 2)?; // [r, nkv, keys, D]
        let vr = vc.f_narrow(0, 0, r)?.f_narrow(1, 0, keys)?.f_transpose(1, 2)?;
        // Query heads n*n_rep..(n+1)*n_rep share KV head n: fold them into the query axis of KV head n.
        let qg = q.f_reshape([r, nkv, n_rep, d])?;
        let o = Tensor::f_scaled_dot_product_attention(
            &qg,
            &kr,
            &vr,
            Some(&mask),
            0.0,
            false,
            None,
            false,
        )?; // [r, nkv, n_rep, D]
        let o = o.f_reshape([r, 1, nh * d])?.f_linear(&a.o, None::<Tensor>)?;
        x = x.f_add(&o)?;
        let h2 = rms_norm_torch(&x, &layer.post_ln, eps)?;
        let y = match &layer.mlp {
            Mlp::Dense { gate, up, down } => h2
                .f_linear(gate, None::<Tensor>)?
                .f_silu()?
                .f_mul(&h2.f_linear(up, None::<Tensor>)?)?
                .f_linear(down, None::<Tensor>)?,
            Mlp::Moe { weights, .. } => {
                let o = moe_forward(
                    weights,
                    &h2.f_reshape([r, h])?,
                    c.num_experts_per_tok as i64,
                    c.norm_topk_prob,
                    None,
                )?;
                experts.push(o.experts);
                o.hidden.f_view([r, 1, h])?
            }
        };
        x = x.f_add(&y)?;
    }
    let xn = rms_norm_torch(&x, &model.norm, eps)?;
    let w = model.lm_head.as_ref().unwrap_or(&model.embed);
    let logits = xn.f_linear(w, None::<Tensor>)?.f_view([r, -1])?;
    let experts = if experts.is_empty() {
        None
    } else {
        Some(Tensor::f_stack(&experts, 1)?)
    };
    Ok((logits, experts))
}
