//! Prefills of short turns replayed from CUDA graphs: one launch instead of ~15 host ops a layer.
//!
//! A consultation round prefills a few hundred new turns (the patient's reply, the chat template's tokens), most
//! of them one row of tens of tokens. The packed prefill ([`crate::fused_prefill`]) issues ~430 host ops for a
//! 28-layer model whatever the turn's size: ~5 ms of host time on an H100 for ~2.5 ms of GPU work, so the GPU
//! idles through half of every prefill (docs/benchmarks.md, 2026-12-07). Captured once per shape and replayed,
//! a prefill costs two small uploads and one launch:
//!
//! - **Shapes**: the new tokens are padded to a bucket of `T` (a power of two from [`MIN_TOKENS`] up to
//!   [`max_tokens`]) and the rows to a power of two `R`, plus one row that owns the padding tokens
//!   (`fused_prefill::packed_layout`: they read keys they cannot harm and write into a scratch column).
//!   Longer prefills (a conversation's first prompt) keep the eager packed path, where the host's work is small
//!   against the GPU's.
//! - **Attention** is flash's varlen kernel with its row offsets, key starts and key counts read from device
//!   tensors, so one graph serves any layout of its shape: the rows' slots, cached lengths and turn lengths.
//!   Its grid follows `max_q`, fixed at `T` for the capture (blocks past a row's queries return at once).
//! - **Inputs** are one static int64 and one static int32 tensor, overwritten before each replay; the logits of
//!   each row's last token (and an MoE model's experts) land in static outputs and are copied out.
//!
//! The graphs share the decode graphs' memory pool (one runs at a time, on one stream). The math is the eager
//! packed path's, op for op, on more token rows: GEMMs may pick other kernels for the padded row count, so
//! the values can differ in their last bits (the GPU test compares the two). Anything the graphs cannot take
//! (CPU, a refused kernel, a failed capture) returns None and the caller runs the eager prefill.

use crate::cache::KvCache;
use crate::fused_layers::FusedLayers;
use crate::fused_prefill::{self, PrefillOutput, Turns};
use crate::graph_decode::{upload, warm_up_and_capture};
use crate::qwen3::Qwen3Model;
use anyhow::{Context, Result};
use spar_kernels::cuda_graph::{CudaGraph, GraphPool};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// The smallest token bucket.
pub const MIN_TOKENS: usize = 16;

/// The most new tokens a prefill may have to be replayed from a graph: `SPAR_GRAPH_PREFILL_TOKENS` (0 turns the
/// graphs off), else 512. Past it the eager path's host time is small against its GPU work, and each larger
/// bucket would be one more capture a round.
pub fn max_tokens() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("SPAR_GRAPH_PREFILL_TOKENS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(512)
    })
}

/// The graph shape of a prefill of `b` rows and `n` new tokens in all: `(T, R)`, the token bucket and the rows
/// with the padding row, or None past [`max_tokens`].
pub fn prefill_shape(n: usize, b: usize) -> Option<(usize, usize)> {
    let t = n.max(MIN_TOKENS).next_power_of_two();
    (n > 0 && b > 0 && t <= max_tokens()).then(|| (t, b.next_power_of_two() + 1))
}

/// One captured shape: its static inputs and outputs, and the graph.
struct Shape {
    /// `[3 T + R]` int64 and `[3 R + 2]` int32, as [`fused_prefill::PackedLayout`].
    long: Tensor,
    int: Tensor,
    /// `[R, vocab]` in the model dtype.
    logits: Tensor,
    /// `[T, n_moe, k]` int64 (MoE models only).
    experts: Option<Tensor>,
    graph: CudaGraph,
}

/// Counters, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefillGraphStats {
    /// Graphs captured (one per (tokens, rows) shape seen), and the wall seconds that took.
    pub captures: u64,
    pub capture_seconds: f64,
    /// Prefills served by a replay.
    pub replays: u64,
}

/// Captured prefill graphs over one model and one KV cache, owned by the [`crate::GraphDecoder`] (its fused
/// weights, its memory pool). See the module documentation.
#[derive(Default)]
pub(crate) struct PrefillGraphs {
    shapes: HashMap<(usize, usize), Shape>,
    /// Set when a capture failed: the path then stays off (said once).
    broken: bool,
    pub(crate) stats: PrefillGraphStats,
}

impl PrefillGraphs {
    /// Forgets every graph (the weights or the cache they captured were replaced).
    pub(crate) fn clear(&mut self) {
        self.shapes.clear();
    }

    /// Shapes captured.
    pub(crate) fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Prefills `rows` by replaying the graph of their shape (capturing it first if new), or None where the
    /// graphs do not take this prefill (nothing changed then): too many tokens, flash attention not applicable,
    /// or graphs broken. `pool`: the decode graphs' pool, set by the first capture of either.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prefill(
        &mut self,
        model: &Qwen3Model,
        fused: &FusedLayers,
        cache: &mut KvCache,
        rows: &[(usize, &[u32])],
        ordinal: usize,
        pool: &mut Option<GraphPool>,
        grouped: bool,
    ) -> Result<Option<PrefillOutput>> {
        let n: usize = rows.iter().map(|(_, p)| p.len()).sum();
        let Some((t, r)) = prefill_shape(n, rows.len()) else {
            return Ok(None);
        };
        if self.broken || !fused_prefill::packs(model) || cache.slots() * (cache.max_len() + 1) < t
        {
            return Ok(None);
        }
        let turns = Turns::new(model, cache, rows)?;
        let layout = fused_prefill::packed_layout(cache, rows, &turns, t, r)?;
        let _g = tch::no_grad_guard();
        if !self.shapes.contains_key(&(t, r)) {
            let started = std::time::Instant::now();
            let captured = capture(model, fused, cache, (t, r), &layout, ordinal, pool, grouped);
            self.stats.capture_seconds += started.elapsed().as_secs_f64();
            match captured {
                Ok(shape) => {
                    self.shapes.insert((t, r), shape);
                    self.stats.captures += 1;
                }
                Err(e) => {
                    tracing::warn!("CUDA graph prefill disabled, eager prefill from now on: {e:#}");
                    eprintln!(
                        "spar-model: CUDA graph prefill disabled, using eager prefill ({e:#})"
                    );
                    self.broken = true;
                    return Ok(None);
                }
            }
        }
        let shape = &self.shapes[&(t, r)];
        // Through pinned memory: a decode step may still run ahead of this prefill (asynchronous decode), and a
        // pageable copy would wait for it.
        upload(&shape.long, &Tensor::from_slice(&layout.long))?;
        upload(&shape.int, &Tensor::from_slice(&layout.int))?;
        shape.graph.replay()?;
        self.stats.replays += 1;
        for ((slot, _), u) in rows.iter().zip(&layout.used) {
            cache.set_len(*slot, *u as usize);
        }
        // Copies, not views: the next replay overwrites the static outputs.
        let b = rows.len() as i64;
        let logits = shape.logits.f_narrow(0, 0, b)?.f_detach_copy()?;
        let routed_experts = match &shape.experts {
            Some(e) => Some(fused_prefill::experts_padded(e, &turns)?),
            None => None,
        };
        Ok(Some(PrefillOutput {
            logits,
            routed_experts,
        }))
    }
}

/// Allocates a shape's static tensors, fills its inputs with `layout`, and warms the forward up and captures it
/// ([`warm_up_and_capture`]: the warm-up writes the keys and values the replay will write again).
#[allow(clippy::too_many_arguments)]
fn capture(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &KvCache,
    (t, r): (usize, usize),
    layout: &fused_prefill::PackedLayout,
    ordinal: usize,
    pool: &mut Option<GraphPool>,
    grouped: bool,
) -> Result<Shape> {
    let _span = crate::torch_profiler::range("engine/graph_capture");
    let dev = model.device();
    let c = &model.config;
    let long = Tensor::from_slice(&layout.long).f_to_device(dev)?;
    let int = Tensor::from_slice(&layout.int).f_to_device(dev)?;
    let logits = Tensor::f_zeros([r as i64, c.vocab_size as i64], (model.kind(), dev))?;
    let n_moe = c.moe_layers().len() as i64;
    let experts = (n_moe > 0)
        .then(|| {
            Tensor::f_zeros(
                [t as i64, n_moe, c.num_experts_per_tok as i64],
                (Kind::Int64, dev),
            )
        })
        .transpose()?;
    // Every row's new tokens and keys fit these bounds, whatever the layout the graph is replayed with.
    let bounds = (t as i64, cache.max_len() as i64);
    let body = || -> Result<()> {
        let (l, e) = fused_prefill::packed_forward(
            model,
            fused,
            cache,
            &long,
            &int,
            (t as i64, r as i64),
            bounds,
            grouped,
        )?
        .context("flash attention refused the prefill")?;
        logits.shallow_clone().f_copy_(&l)?;
        if let (Some(dst), Some(src)) = (&experts, e) {
            dst.shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    };
    let what = format!("the prefill ({t} tokens, {r} rows)");
    let graph =
        spar_kernels::cuda::with_step_rows(t, || warm_up_and_capture(ordinal, pool, &what, body))?;
    Ok(Shape {
        long,
        int,
        logits,
        experts,
        graph,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_pad_tokens_to_octaves_and_add_a_padding_row() {
        assert_eq!(prefill_shape(1, 1), Some((16, 2)));
        assert_eq!(prefill_shape(17, 1), Some((32, 2)));
        assert_eq!(prefill_shape(100, 3), Some((128, 5)));
        assert_eq!(prefill_shape(512, 64), Some((512, 65)));
        assert_eq!(prefill_shape(513, 1), None);
        assert_eq!(prefill_shape(0, 0), None);
    }
}
