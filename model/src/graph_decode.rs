//! Decode steps replayed from CUDA graphs: one launch per step instead of ~30 per layer.
//!
//! Eager decode of a small model is bound by kernel launches (about 12 ms per step for Qwen3-0.6B from batch 1
//! to 64 on an H100, see docs/benchmarks.md). A decode step has the same work every time once its shapes are
//! fixed, so it is captured once per shape and replayed:
//!
//! - **Rows**: the batch is padded to a bucket of `R` rows (1, 2, 4, ... up to the engine's batch). Graph row
//!   `j` is physical KV-cache slot `j` (`KvCache::gather_low` moves the decoding sequences there), so
//!   attention reads the cache through a strided view with no gather. Padding rows write their key and value
//!   into the scratch column `max_len` of their slot and their outputs are dropped.
//! - **Keys**: attention covers the first `K` cache positions, `K` the longest sequence rounded up to a power of
//!   two (at least [`KEY_BLOCK`]; [`key_window`]); a per-row length mask built on the device hides the rest.
//!   Windows grow by octaves because every window is a capture: multi-turn consultations append turns to
//!   histories of thousands of tokens, and 32-key windows made them capture a graph every 32 tokens of
//!   history (hundreds per round, each a warm-up step plus a capture). The decode kernel splits each row's own
//!   keys, so the padded window costs it nothing; the SDPA fallback does at most twice the masked work.
//! - **Inputs** (token ids, write positions, key lengths) are one static `[3, R]` int64 tensor, overwritten by
//!   one host-to-device copy before each replay; logits and chosen experts land in static outputs.
//!
//! Graphs of all shapes share one memory pool (only one runs at a time). The math is the eager forward's
//! (same ops, same order; the fused kernels launch on the capture stream), except attention: the decode
//! attention kernel ([`decode_ops::decode_attention`]: each row reads only its own keys, query heads sharing
//! a KV head read them once, split-K when few rows leave SMs idle) or, where it does not apply, SDPA with the
//! query heads of a KV head folded into its query axis and an additive key mask. Both change summation order
//! only.
//!
//! Sampling stays outside the graph (the engine samples from the returned logits as it does after an eager
//! forward), except the greedy choice: every replay also writes each row's first argmax and its log-prob, and a
//! caller whose rows are all greedy takes those instead of the logits. Anything the graph path cannot take (CPU, a build without the shim, more rows than the largest
//! bucket, a failed capture) makes [`GraphDecoder::decode`] return `None` and the caller runs the eager forward.

use crate::cache::KvCache;
use crate::fused_layers::{FusedLayers, first_input_norm, mlp_and_next_norm, queries_and_store};
use crate::fused_prefill::{self, PrefillOutput};
use crate::graph_prefill::{PrefillGraphStats, PrefillGraphs};
use crate::qwen3::Qwen3Model;
use crate::temperature_sampling::{PARAMS_ROWS, pick_at_temperature_into};
use anyhow::{Context, Result};
use spar_kernels::cuda_graph::{self, CudaEvent, CudaGraph, GraphPool};
use spar_kernels::decode_ops;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// The smallest attention key window.
pub const KEY_BLOCK: usize = 32;

/// The attention key window of a decode step whose longest row will hold `keys` positions: the next power of
/// two, at least [`KEY_BLOCK`], at most `max_len` (`SPAR_GRAPH_KEY_WINDOWS=linear`: the next multiple of
/// [`KEY_BLOCK`], the old rule, for comparisons).
pub fn key_window(keys: usize, max_len: usize) -> usize {
    let w = if linear_key_windows() {
        keys.div_ceil(KEY_BLOCK) * KEY_BLOCK
    } else {
        keys.max(KEY_BLOCK).next_power_of_two()
    };
    w.min(max_len)
}

fn linear_key_windows() -> bool {
    static LINEAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LINEAR.get_or_init(|| std::env::var("SPAR_GRAPH_KEY_WINDOWS").is_ok_and(|v| v == "linear"))
}

/// Counters, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GraphStats {
    /// Graphs captured (one per (rows, keys) shape seen).
    pub captures: u64,
    /// Wall seconds spent capturing them (warm-up step, capture, instantiation).
    pub capture_seconds: f64,
    /// Decode steps served by a replay.
    pub replays: u64,
    /// Decode steps handed back to the eager path.
    pub fallbacks: u64,
}

/// The shape of one captured step: its rows, its key window, whether it samples inside the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StepShape {
    rows: usize,
    keys: usize,
    sampling: bool,
}

/// What a graph decode step is asked to hand back.
pub enum Pick<'a> {
    /// The logits (the caller samples).
    Logits,
    /// Each row's greedy token and its log-prob, chosen inside the graph.
    Greedy,
    /// Each row's token sampled inside the graph at its temperature
    /// ([`crate::temperature_sampling::pick_at_temperature_into`]). The closure gives the `[3, b]` parameters
    /// (row-major: temperatures, log-prob temperatures, uniforms; rows in the order given) and is called only once
    /// the step will run, so a caller that draws the uniforms from its rows' streams draws none for a step handed
    /// back to the eager path.
    Sample(Box<dyn FnOnce() -> Vec<f32> + 'a>),
}

/// What a graph decode step hands back to choose the next tokens from, rows in the order they were given.
pub enum NextTokens {
    /// `[b, vocab]` logits in the model dtype (a fresh tensor, not overwritten by the next replay).
    Logits(Tensor),
    /// Each row's chosen token (greedy or sampled, as asked) and its log-prob, computed inside the graph: one
    /// small host copy instead of the logits and the sampling ops.
    Chosen(Vec<(u32, f32)>),
}

/// Output of one graph decode step, rows in the order they were given.
pub struct GraphDecodeOutput {
    pub next: NextTokens,
    /// `[b, 1, n_moe_layers, k]` int64 chosen experts (MoE models only): on the host when the step chose its
    /// tokens ([`NextTokens::Chosen`], copied out with them), on the device with [`NextTokens::Logits`].
    pub routed_experts: Option<Tensor>,
}

/// A decode step queued by [`GraphDecoder::launch`], for [`GraphDecoder::finish`].
pub struct LaunchedStep {
    /// The step's row bucket.
    r: usize,
    /// Each given row's slot and graph row (its physical slot), in the order given.
    slots: Vec<usize>,
    phys: Vec<i64>,
    sampling: bool,
    /// A step that chooses its tokens: `[2, R]` choices and the `[R, n_moe, k]` experts, copied into pinned host
    /// memory behind the replay, and the event after those copies. [`GraphDecoder::finish`] waits on the event
    /// only, not on steps queued after this one. None: the step hands back its logits (on the device).
    copied: Option<(Tensor, Option<Tensor>, CudaEvent)>,
}

impl LaunchedStep {
    /// The slots of the step's rows, in the order given.
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }

    /// Whether the step chooses its tokens inside the graph, so that a later step can take them as its input
    /// on the device ([`StepToken::Chosen`]).
    pub fn chooses_tokens(&self) -> bool {
        self.copied.is_some()
    }
}

/// Where a row of a decode step takes its input token from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepToken {
    /// A token the host holds.
    Host(u32),
    /// The token the given earlier step chose for this slot, read on the device: the step can be queued before
    /// the earlier one has run (asynchronous decode, see [`GraphDecoder::launch_after`]).
    Chosen,
}

struct Bucket {
    /// `[3, R]` int64: token ids, write positions, key lengths (padding rows: 0, `max_len`, 1).
    inputs: Tensor,
    logits: Tensor,
    /// `[2, R]` float64: greedy token id and its log-prob per row.
    greedy: Tensor,
    /// `[3, R]` float32 sampling inputs (temperature, log-prob temperature, uniform; padding rows greedy).
    sample_params: Tensor,
    /// `[2, R]` float64: sampled token id and its log-prob per row (graphs captured for sampling only).
    sampled: Tensor,
    experts: Option<Tensor>,
}

impl Bucket {
    /// The `[2, R]` tokens and log-probs the graph chose: sampled, or greedy.
    fn choices(&self, sampling: bool) -> &Tensor {
        if sampling {
            &self.sampled
        } else {
            &self.greedy
        }
    }
}

/// Captured decode graphs over one model and one KV cache. See the module documentation.
pub struct GraphDecoder {
    fused: FusedLayers,
    ordinal: usize,
    buckets: Vec<usize>,
    inputs: HashMap<usize, Bucket>,
    /// By (rows, keys, sampling inside the graph).
    graphs: HashMap<(usize, usize, bool), CudaGraph>,
    pool: Option<GraphPool>,
    cache_id: u64,
    /// Set when a capture failed: the path then stays off (the error is logged once).
    broken: bool,
    /// MoE experts through `_grouped_mm` (cleared when it cannot be captured).
    grouped: bool,
    /// The decode steps' counters ([`GraphDecoder::prefill_stats`]: the prefills').
    pub stats: GraphStats,
    /// Short prefills replayed from graphs ([`crate::graph_prefill`]).
    prefills: PrefillGraphs,
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
            fused: FusedLayers::default(),
            ordinal,
            buckets,
            inputs: HashMap::new(),
            graphs: HashMap::new(),
            pool: None,
            cache_id: cache.storage_id(),
            broken: false,
            grouped: true,
            stats: GraphStats::default(),
            prefills: PrefillGraphs::default(),
        })
    }

    /// Appends several tokens to each `(slot, tokens)` row through the decode step's fused weights and kernels
    /// and returns the logits after each row's last token. Slots must be distinct. A short prefill is replayed
    /// from a CUDA graph of its shape ([`crate::graph_prefill`]); the rest, and anything the graphs cannot take,
    /// run eagerly ([`crate::fused_prefill`]: under half the plain forward's host ops a layer).
    pub fn prefill(
        &mut self,
        model: &Qwen3Model,
        cache: &mut KvCache,
        rows: &[(usize, &[u32])],
    ) -> Result<PrefillOutput> {
        self.follow(model, cache)?;
        let graphed = self.prefills.prefill(
            model,
            &self.fused,
            cache,
            rows,
            self.ordinal,
            &mut self.pool,
            self.grouped,
        )?;
        match graphed {
            Some(out) => Ok(out),
            None => fused_prefill::prefill(model, &self.fused, cache, rows),
        }
    }

    /// The prefill graphs' counters.
    pub fn prefill_stats(&self) -> PrefillGraphStats {
        self.prefills.stats
    }

    /// Zeroes the decode and prefill counters (the graphs stay): a decoder kept for another engine counts
    /// that engine's captures and replays only.
    pub fn reset_stats(&mut self) {
        self.stats = GraphStats::default();
        self.prefills.stats = PrefillGraphStats::default();
    }

    /// Graphs captured and held now (decode and prefill).
    pub fn graphs_held(&self) -> usize {
        self.graphs.len() + self.prefills.len()
    }

    /// Drops every graph when the cache's storage or the model's parameters were replaced since they were
    /// captured (first use: fuses the weights).
    fn follow(&mut self, model: &Qwen3Model, cache: &KvCache) -> Result<()> {
        if cache.storage_id() != self.cache_id {
            self.graphs.clear();
            self.prefills.clear();
            self.cache_id = cache.storage_id();
        }
        if self.fused.ensure(model)? {
            // First use, or someone replaced the parameters' storage (e.g. a dtype change): recapture.
            self.graphs.clear();
            self.prefills.clear();
        }
        Ok(())
    }

    /// Row buckets graphs are captured for.
    pub fn buckets(&self) -> &[usize] {
        &self.buckets
    }

    /// Appends one token to each `(slot, token)` row and returns what `pick` asks for (the logits of the next
    /// position, or each row's token chosen inside the graph), or None when the graph path cannot take this step
    /// (the caller then runs the eager forward; nothing was changed, `pick`'s closure was not called). Slots must
    /// be distinct. Advances the slots' lengths like a cached forward does. [`GraphDecoder::launch`] then
    /// [`GraphDecoder::finish`].
    pub fn decode(
        &mut self,
        model: &Qwen3Model,
        cache: &mut KvCache,
        rows: &[(usize, u32)],
        pick: Pick<'_>,
    ) -> Result<Option<GraphDecodeOutput>> {
        match self.launch(model, cache, rows, pick)? {
            Some(step) => Ok(Some(self.finish(model, step)?)),
            None => Ok(None),
        }
    }

    /// [`GraphDecoder::decode`] up to the replay: the step is queued on the GPU and nothing waits for it, so the
    /// caller may queue other work behind it (a prefill of rows not in the step) while the GPU runs it. Hand the
    /// step to [`GraphDecoder::finish`] before the next launch: the next replay overwrites its outputs.
    pub fn launch(
        &mut self,
        model: &Qwen3Model,
        cache: &mut KvCache,
        rows: &[(usize, u32)],
        pick: Pick<'_>,
    ) -> Result<Option<LaunchedStep>> {
        let rows: Vec<(usize, StepToken)> = rows
            .iter()
            .map(|(s, t)| (*s, StepToken::Host(*t)))
            .collect();
        self.launch_after(model, cache, &rows, None, pick)
    }

    /// [`GraphDecoder::launch`] where rows may take their input token from `earlier`, a step launched before and
    /// not finished yet ([`StepToken::Chosen`]: the token it chose for the same slot, copied on the device). The
    /// host can so queue step k+1 while the GPU runs step k and read step k's tokens afterwards: the GPU does not
    /// wait for the host between steps (vLLM's async scheduling). A row whose sequence turns out to have ended at
    /// step k has decoded one token too many: drop it, and give its slot's last position back
    /// ([`KvCache::copy_prefix`] onto itself). Finish `earlier` before launching the step after this one: that one's replay
    /// overwrites `earlier`'s outputs.
    pub fn launch_after(
        &mut self,
        model: &Qwen3Model,
        cache: &mut KvCache,
        rows: &[(usize, StepToken)],
        earlier: Option<&LaunchedStep>,
        pick: Pick<'_>,
    ) -> Result<Option<LaunchedStep>> {
        let launched = self.launch_rows(model, cache, rows, earlier, pick)?;
        anyhow::ensure!(
            launched.is_some() || rows.iter().all(|(_, t)| *t != StepToken::Chosen),
            "a decode step whose rows read an earlier step's tokens on the device could not run as a graph (the \
             eager path has no such tokens)"
        );
        Ok(launched)
    }

    fn launch_rows(
        &mut self,
        model: &Qwen3Model,
        cache: &mut KvCache,
        rows: &[(usize, StepToken)],
        earlier: Option<&LaunchedStep>,
        pick: Pick<'_>,
    ) -> Result<Option<LaunchedStep>> {
        // Where each row reading an earlier choice finds it: (its row in `earlier`'s outputs, the earlier bucket).
        let mut chained: Vec<(usize, i64)> = Vec::new();
        for (i, (slot, tok)) in rows.iter().enumerate() {
            if *tok == StepToken::Chosen {
                let prev = earlier
                    .filter(|e| e.chooses_tokens())
                    .context("a decode row takes the token of an earlier step that chose none")?;
                let at = prev.slots.iter().position(|s| s == slot).with_context(|| {
                    format!("slot {slot} takes the token of an earlier step it was not in")
                })?;
                chained.push((i, prev.phys[at]));
            }
        }
        let sampling = matches!(pick, Pick::Sample(_));
        let want_logits = matches!(pick, Pick::Logits);
        let b = rows.len();
        let bucket = self.buckets.iter().copied().find(|r| *r >= b);
        let max_len = cache.max_len();
        let longest = rows.iter().map(|(s, _)| cache.len(*s)).max().unwrap_or(0);
        let vocab = model.config.vocab_size as u32;
        let (Some(r), false) = (bucket, self.broken) else {
            self.stats.fallbacks += 1;
            return Ok(None);
        };
        let bad_token = |t: &StepToken| matches!(t, StepToken::Host(t) if *t >= vocab);
        if b == 0
            || longest + 1 > max_len
            || rows
                .iter()
                .any(|(s, t)| *s >= cache.slots() || bad_token(t))
        {
            // Let the eager path produce its precise error (overflow, bad slot or token).
            self.stats.fallbacks += 1;
            return Ok(None);
        }
        self.follow(model, cache)?;
        let _g = tch::no_grad_guard();
        let slots: Vec<usize> = rows.iter().map(|(s, _)| *s).collect();
        cache.gather_low(&slots, r)?;
        let keys = key_window(longest + 1, max_len);

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
            host[p] = match tok {
                StepToken::Host(t) => *t as i64,
                StepToken::Chosen => 0, // filled on the device below
            };
            host[r + p] = len;
            host[2 * r + p] = len + 1;
            phys.push(p as i64);
        }
        if !self.inputs.contains_key(&r) {
            let bucket = self.new_bucket(model, r)?;
            self.inputs.insert(r, bucket);
        }
        let bucket = &self.inputs[&r];
        upload(
            &bucket.inputs,
            &Tensor::from_slice(&host).f_view([3, r as i64])?,
        )?;
        if let (Some(prev), false) = (earlier, chained.is_empty()) {
            let choices = self.inputs[&prev.r].choices(prev.sampling);
            // The steady state of a decode: the same rows at the same graph rows as the step before, every one
            // taking its choice. One copy (with the cast) of the whole row: padding rows take whatever token the
            // earlier step chose there, a valid id they decode into the scratch column like any other.
            let same_rows =
                prev.r == r && chained.len() == b && chained.iter().all(|(i, at)| phys[*i] == *at);
            if same_rows {
                bucket
                    .inputs
                    .f_select(0, 0)?
                    .f_copy_(&choices.f_select(0, 0)?)?;
            } else {
                // Each chained row's token: the earlier step's choice at its graph row there.
                let (to, from): (Vec<i64>, Vec<i64>) =
                    chained.iter().map(|(i, at)| (phys[*i], *at)).unzip();
                let index = Tensor::from_slice(&[to, from].concat()).f_view([2, -1])?;
                let index = index.f_internal_pin_memory(model.device())?.f_to_device_(
                    model.device(),
                    Kind::Int64,
                    true,
                    false,
                )?;
                let tokens = choices
                    .f_select(0, 0)?
                    .f_index_select(0, &index.f_select(0, 1)?)?
                    .f_to_kind(Kind::Int64)?;
                let _ = bucket.inputs.f_select(0, 0)?.f_index_copy_(
                    0,
                    &index.f_select(0, 0)?,
                    &tokens,
                )?;
            }
        }

        if !self.graphs.contains_key(&(r, keys, sampling)) {
            let started = std::time::Instant::now();
            let captured = self.capture(model, cache, r, keys, sampling);
            self.stats.capture_seconds += started.elapsed().as_secs_f64();
            match captured {
                Ok(g) => {
                    self.graphs.insert((r, keys, sampling), g);
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
        let bucket = &self.inputs[&r];
        if let Pick::Sample(params) = pick {
            // Graph row p is physical slot p; padding rows stay greedy (temperature 0).
            let given = params();
            anyhow::ensure!(
                given.len() == PARAMS_ROWS as usize * b,
                "sampling parameters for {} rows, {b} rows given",
                given.len() / PARAMS_ROWS as usize
            );
            let mut host = vec![0f32; PARAMS_ROWS as usize * r];
            for j in 0..r {
                host[r + j] = 1.0;
            }
            for (i, &p) in phys.iter().enumerate() {
                for k in 0..PARAMS_ROWS as usize {
                    host[k * r + p as usize] = given[k * b + i];
                }
            }
            upload(
                &bucket.sample_params,
                &Tensor::from_slice(&host).f_view([PARAMS_ROWS, r as i64])?,
            )?;
        }
        self.graphs[&(r, keys, sampling)].replay()?;
        self.stats.replays += 1;
        for (slot, _) in rows {
            let len = cache.len(*slot);
            cache.set_len(*slot, len + 1);
        }
        // A step that chose its tokens copies them (and the experts) out behind the replay, before a later
        // step's replay can overwrite them, and marks the copies with an event.
        let copied = if want_logits {
            None
        } else {
            let bucket = &self.inputs[&r];
            let to_host = |t: &Tensor| t.f_to_device_(Device::Cpu, t.kind(), true, false);
            let chosen = to_host(bucket.choices(sampling))?;
            let experts = bucket.experts.as_ref().map(to_host).transpose()?;
            Some((chosen, experts, CudaEvent::record(self.ordinal)?))
        };
        Ok(Some(LaunchedStep {
            r,
            slots,
            phys,
            sampling,
            copied,
        }))
    }

    /// What a launched step hands back (see [`GraphDecoder::decode`]); reading it waits for the step and for
    /// whatever was queued behind it.
    pub fn finish(&self, model: &Qwen3Model, step: LaunchedStep) -> Result<GraphDecodeOutput> {
        let LaunchedStep {
            r, phys, copied, ..
        } = step;
        if let Some((chosen, experts, done)) = copied {
            done.synchronize()?;
            let host = Vec::<f64>::try_from(chosen.f_view([-1])?)?;
            let picked = phys
                .iter()
                .map(|&p| (host[p as usize] as u32, host[r + p as usize] as f32))
                .collect();
            let idx = Tensor::from_slice(&phys);
            let routed_experts = match experts {
                Some(e) => Some(e.f_index_select(0, &idx)?.f_unsqueeze(1)?),
                None => None,
            };
            return Ok(GraphDecodeOutput {
                next: NextTokens::Chosen(picked),
                routed_experts,
            });
        }
        // A step that asked for the logits: they (and the experts) stay on the device, in the rows' order.
        let b = phys.len();
        let bucket = &self.inputs[&r];
        let in_order = phys.iter().enumerate().all(|(i, p)| *p == i as i64);
        let in_row_order = |t: &Tensor| -> Result<Tensor> {
            if in_order {
                // Rows already in graph order: a copy of the leading rows (no gather, no index upload).
                Ok(t.f_narrow(0, 0, b as i64)?.f_detach_copy()?)
            } else {
                let idx = Tensor::from_slice(&phys).f_to_device(model.device())?;
                Ok(t.f_index_select(0, &idx)?)
            }
        };
        let routed_experts = match &bucket.experts {
            Some(e) => Some(in_row_order(e)?.f_unsqueeze(1)?),
            None => None,
        };
        Ok(GraphDecodeOutput {
            next: NextTokens::Logits(in_row_order(&bucket.logits)?),
            routed_experts,
        })
    }

    fn new_bucket(&self, model: &Qwen3Model, r: usize) -> Result<Bucket> {
        let dev = model.device();
        let c = &model.config;
        let r = r as i64;
        let n_moe = c.moe_layers().len() as i64;
        Ok(Bucket {
            inputs: Tensor::f_zeros([3, r], (Kind::Int64, dev))?,
            logits: Tensor::f_zeros([r, c.vocab_size as i64], (model.kind(), dev))?,
            greedy: Tensor::f_zeros([2, r], (Kind::Double, dev))?,
            sample_params: Tensor::f_zeros([PARAMS_ROWS, r], (Kind::Float, dev))?,
            sampled: Tensor::f_zeros([2, r], (Kind::Double, dev))?,
            experts: (n_moe > 0)
                .then(|| {
                    Tensor::f_zeros([r, n_moe, c.num_experts_per_tok as i64], (Kind::Int64, dev))
                })
                .transpose()?,
        })
    }

    /// Warms the step up on a side stream (cuBLAS workspaces, lazy kernels), then captures it. MoE models try
    /// `_grouped_mm` first; a torch build that cannot capture it (its fp32 fallback copies from the host) gets
    /// the gathered-weights expert path, and the choice sticks.
    fn capture(
        &mut self,
        model: &Qwen3Model,
        cache: &KvCache,
        r: usize,
        keys: usize,
        sampling: bool,
    ) -> Result<CudaGraph> {
        let _span = crate::torch_profiler::range("engine/graph_capture");
        // The graph keeps each launch's attributes: `SPAR_PDL=small` decides by the step's rows here.
        spar_kernels::cuda::with_step_rows(r, || {
            let first = self.capture_with(model, cache, r, keys, sampling, self.grouped);
            match first {
                Err(e) if self.grouped && !model.config.moe_layers().is_empty() => {
                    // libtorch's message goes on with a C++ backtrace after its first line.
                    let why = format!("{e:#}");
                    tracing::info!(
                        "grouped-GEMM experts not capturable, using gathered weights: {}",
                        why.lines().next().unwrap_or_default()
                    );
                    self.grouped = false;
                    self.capture_with(model, cache, r, keys, sampling, false)
                }
                other => other,
            }
        })
    }

    fn capture_with(
        &mut self,
        model: &Qwen3Model,
        cache: &KvCache,
        r: usize,
        keys: usize,
        sampling: bool,
        grouped: bool,
    ) -> Result<CudaGraph> {
        let bucket = &self.inputs[&r];
        let fused = &self.fused;
        let shape = StepShape {
            rows: r,
            keys,
            sampling,
        };
        let what = format!("the decode step ({r} rows, {keys} keys, sampling {sampling})");
        warm_up_and_capture(self.ordinal, &mut self.pool, &what, || {
            step_into(model, fused, cache, bucket, shape, grouped)
        })
    }
}

/// Runs `body` once on a side stream (cuBLAS workspaces, lazy kernels: the real work, whose writes the replay
/// repeats), then captures it into a graph sharing `pool`, the decoder's one memory pool for its decode and
/// prefill graphs, which the first capture sets. `what` names the work in errors.
pub(crate) fn warm_up_and_capture(
    ordinal: usize,
    pool: &mut Option<GraphPool>,
    what: &str,
    body: impl Fn() -> Result<()>,
) -> Result<CudaGraph> {
    if pool.is_none() {
        // A decoder's first capture: free the blocks of earlier decoders' graph pools (the last round's
        // engine), which no allocation can reuse and a malloc inside the capture cannot free.
        spar_kernels::cuda_memory::empty_cache()?;
    }
    cuda_graph::on_side_stream(ordinal, &body).with_context(|| format!("warming up {what}"))?;
    let (graph, ()) =
        CudaGraph::capture(ordinal, *pool, &body).with_context(|| format!("capturing {what}"))?;
    if pool.is_none() {
        *pool = Some(graph.pool()?);
    }
    Ok(graph)
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
    fused: &FusedLayers,
    cache: &KvCache,
    bucket: &Bucket,
    StepShape {
        rows: r,
        keys,
        sampling,
    }: StepShape,
    grouped: bool,
) -> Result<()> {
    let (logits, experts) = decode_step(
        model,
        fused,
        cache,
        &bucket.inputs,
        r as i64,
        keys as i64,
        grouped,
    )?;
    bucket.logits.shallow_clone().f_copy_(&logits)?;
    // The greedy choice rides in the graph (a few microseconds): a greedy batch then needs no sampling ops.
    if !decode_ops::greedy_pick_into(&bucket.logits, &bucket.greedy)? {
        let lf = bucket.logits.f_to_kind(Kind::Float)?;
        let ids = lf.f_argmax(-1, false)?;
        let lp = lf
            .f_log_softmax(-1, Kind::Float)?
            .f_gather(-1, &ids.f_unsqueeze(-1)?, false)?
            .f_squeeze_dim(-1)?;
        let both = Tensor::f_stack(
            &[ids.f_to_kind(Kind::Double)?, lp.f_to_kind(Kind::Double)?],
            0,
        )?;
        bucket.greedy.shallow_clone().f_copy_(&both)?;
    }
    if sampling {
        // Temperature sampling rides in the graph too: a sampled batch then needs one upload of its rows'
        // temperatures and uniforms and one small download, no sampling ops on the host.
        pick_at_temperature_into(&bucket.logits, &bucket.sample_params, &bucket.sampled)?;
    }
    if let (Some(dst), Some(src)) = (&bucket.experts, experts) {
        dst.shallow_clone().f_copy_(&src)?;
    }
    Ok(())
}

/// The decode forward over static shapes. `inputs`: `[3, r]` (ids, write positions, key lengths).
/// Returns logits `[r, V]` and, for MoE models, experts `[r, n_moe, k]`. `grouped`: MoE experts through
/// `_grouped_mm` (else per-pair gathered weights, which every torch build can capture).
fn decode_step(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &KvCache,
    inputs: &Tensor,
    r: i64,
    keys: i64,
    grouped: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let c = &model.config;
    let dev = model.device();
    let kind = model.kind();
    let eps = c.rms_norm_eps;
    let (nh, nkv, d) = c.attention_dims();
    let n_rep = nh / nkv;
    let width = cache.max_len() as i64 + 1;
    let ids = inputs.f_select(0, 0)?.f_view([r, 1])?;
    let pos = inputs.f_select(0, 1)?;
    let key_len = inputs.f_select(0, 2)?;

    let (cos, sin) = model.rope.cos_sin(&pos.f_view([r, 1])?, kind)?; // [r, 1, D]
    // The SDPA fallback's additive mask, built once per step when first needed (a boolean mask would be
    // converted in every layer's attention; the decode kernel needs none, so its steps launch none of this).
    let mut mask: Option<Tensor> = None;
    let additive_mask = || -> Result<Tensor> {
        let hidden = Tensor::f_arange(keys, (Kind::Int64, dev))?
            .f_view([1, 1, 1, keys])?
            .f_ge_tensor(&key_len.f_view([r, 1, 1, 1])?)?; // [r, 1, 1, keys]
        Ok(Tensor::f_zeros([r, 1, 1, keys], (kind, dev))?
            .f_masked_fill(&hidden, f64::NEG_INFINITY)?)
    };
    // Row j of the graph is physical slot j: flat index of (slot j, position pos[j]) in a [slots * width] view.
    let write_at = Tensor::f_arange(r, (Kind::Int64, dev))?
        .f_mul_scalar(width)?
        .f_add(&pos)?;

    // The decode attention's split merge counters, zeroed once for every layer (one memset a step, not a merge
    // kernel a layer).
    let arrivals = Tensor::f_zeros(
        [
            model.layers.len() as i64,
            decode_ops::decode_attention_arrivals(r, nh, nkv),
        ],
        (Kind::Int, dev),
    )?;

    let mut x = Tensor::f_embedding(&model.embed, &ids, model.pad_idx(), false, false)?; // [r, 1, H]
    let mut experts = Vec::new();
    // The input norm of each layer is fused with the residual add that ends the layer before it.
    let mut hin = first_input_norm(model, &x)?;
    for (li, (layer, fl)) in model.layers.iter().zip(fused.iter()).enumerate() {
        let a = &layer.attn;
        let (kc, vc) = cache.layer(layer.index);
        let qkv = decode_ops::linear(&hin, &fl.qkv)?; // [r, 1, (nh + 2 nkv) D]
        let q = queries_and_store(a, &qkv, &cos, &sin, &write_at, (kc, vc), (nh, nkv, d), eps)?;
        let kr = kc
            .f_narrow(0, 0, r)?
            .f_narrow(1, 0, keys)?
            .f_transpose(1, 2)?; // [r, nkv, keys, D]
        let vr = vc
            .f_narrow(0, 0, r)?
            .f_narrow(1, 0, keys)?
            .f_transpose(1, 2)?;
        let o = match decode_ops::decode_attention(
            &q,
            kc,
            vc,
            &key_len,
            nkv,
            keys,
            Some(&arrivals.f_select(0, li as i64)?),
        )? {
            Some(o) => o, // [r, nh, D], each row over its own key_len keys only
            None => {
                // Query heads n*n_rep..(n+1)*n_rep share KV head n: fold them into the query axis of KV head n.
                let qg = q.f_reshape([r, nkv, n_rep, d])?;
                if mask.is_none() {
                    mask = Some(additive_mask()?);
                }
                Tensor::f_scaled_dot_product_attention(
                    &qg,
                    &kr,
                    &vr,
                    mask.as_ref(),
                    0.0,
                    false,
                    None,
                    false,
                )? // [r, nkv, n_rep, D]
            }
        };
        let o = decode_ops::linear(&o.f_reshape([r, 1, nh * d])?, &a.o)?;
        let (x2, hn, chosen) = mlp_and_next_norm(model, li, fl, &x, &o, grouped)?;
        experts.extend(chosen);
        x = x2;
        hin = hn;
    }
    let w = model.lm_head.as_ref().unwrap_or(&model.embed);
    let logits = decode_ops::linear(&hin, w)?.f_view([r, -1])?;
    let experts = if experts.is_empty() {
        None
    } else {
        Some(Tensor::f_stack(&experts, 1)?)
    };
    Ok((logits, experts))
}

/// Copies the host tensor `host` into the device tensor `dst` without waiting for the GPU: through pinned memory
/// (torch's caching host allocator keeps the block until the copy has run) and a device-to-device copy. A plain
/// `copy_` from pageable memory synchronises the stream, which would wait for a step still running.
pub(crate) fn upload(dst: &Tensor, host: &Tensor) -> Result<()> {
    let device = dst.device();
    let staged =
        host.f_internal_pin_memory(device)?
            .f_to_device_(device, dst.kind(), true, false)?;
    dst.shallow_clone().f_copy_(&staged)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_windows_grow_by_octaves_within_the_cache() {
        assert_eq!(key_window(1, 8192), KEY_BLOCK);
        assert_eq!(key_window(33, 8192), 64);
        assert_eq!(key_window(257, 8192), 512);
        assert_eq!(key_window(4096, 8192), 4096);
        assert_eq!(key_window(5000, 6000), 6000);
        // A consultation growing from 300 to 4,000 tokens of history meets 4 windows, not 116 of 32 keys.
        let windows: std::collections::BTreeSet<usize> =
            (300..4000).map(|k| key_window(k, 8192)).collect();
        assert_eq!(windows.len(), 4);
    }
}
