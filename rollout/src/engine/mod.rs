//! The built-in generation engine: continuous batching over a slot KV cache.
//!
//! Each [`Engine::step`] admits queued requests into free slots (reusing cached prefixes), prefills them, then
//! decodes ONE token for every running sequence in a single batched forward. A finished sequence frees its slot
//! at once and the next queued request takes it. The only device-to-host copy per decode step is the sampled
//! tokens with their log-probs (needed to check stops) and the top log-probs of the rows that asked for them;
//! prompt prefill adds one per prefill batch. Prefill and decode, eager or CUDA graph, all sample through
//! [`crate::sampling::sample`], except a CUDA-graph step whose rows ask for no top log-probs and no top-k /
//! top-p / min-p: it takes the tokens the graph chose itself, greedy or at each row's temperature with the
//! row's own uniform ([`spar_model::NextTokens::Chosen`], the same math as the sampler's).
//!
//! The engine borrows the model and runs on the caller's thread (tch tensors are not `Sync`); async code talks
//! to it through [`EngineClient`], whose requests [`Engine::run_until`] drains.
mod async_decode;
mod cancel;
pub mod client;
mod kept_graphs;
pub mod slots;

pub use async_decode::async_decode_override;
pub use cancel::{EngineLoad, LoadSink};
pub use client::{EngineClient, EngineInbox, StreamEvent, WeightLoad, channel};
pub use kept_graphs::{KeptGraphs, keep_graphs_override};

use crate::codec::TextCodec;
use crate::sampling::{RowSampler, Sampled, sample, temperature_params};
use crate::stream::Routing;
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slots::{Placement, SlotState, place};
use spar_core::sample::RoutedExperts;
use spar_core::traits::{FinishReason, GenerateOutput, GenerateRequest};
use spar_model::torch_profiler::range;
use spar_model::{
    ForwardInput, GraphDecoder, GraphStats, KvCache, LaunchedStep, NextTokens, Pick, Qwen3Model,
};
use std::collections::VecDeque;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Engine sizes and knobs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// KV-cache slots (>= max_batch); idle slots keep finished sequences for prefix reuse.
    pub kv_slots: usize,
    /// Tokens per slot: prompt + generated never exceed it.
    pub max_seq_len: usize,
    /// Most tokens (rows x padded length) in one prefill forward; longer prompts are prefilled in chunks.
    pub prefill_tokens: usize,
    /// Seeds requests that carry no seed of their own.
    pub seed: u64,
    /// Record the experts chosen for every token (MoE routing replay).
    pub record_routing: bool,
    /// Batch-invariant generation (`--deterministic`): every forward holds one sequence (no padding, no
    /// batch-mates), no prompt reuses another request's cached prefix and no CUDA graph runs, so a request's
    /// tokens and log-probs depend on its prompt, seed and the weights alone, bit for bit on the CPU, not on
    /// which requests happened to arrive with it. Slower: sequences run one after another.
    pub batch_invariant: bool,
    /// Decode steps a queued request may wait for batch-mates while other sequences decode (0: admitted at the
    /// next step). On a GPU a prefill forward costs milliseconds of host work whatever its rows (~19 ms for the
    /// fused prefill of a 0.6B model on an H100, for ~3 ms of GPU work), and a consultation's new turns arrive
    /// one or two a decode step; waiting a few steps (a few ms each) lets one forward take them together
    /// (measured there at 4 steps: half the forwards, the round's prefill 5.85 -> 3.67 s; docs/benchmarks.md).
    /// A request is admitted at once when nothing is decoding, or when the queue fills the free rows. Ignored
    /// when `batch_invariant`.
    pub prefill_wait_steps: usize,
    /// On a GPU, launch the decoding rows' graph step ahead of a prefill and read its tokens after it, so that
    /// the GPU runs the step while the host issues the prefill's ops (rows the prefill starts decode from the
    /// next step). Off by default: on an H100 the consultation round's generation took 6.45-6.61 s with it
    /// against 6.23 s without (the packed prefill's host time is short, and the later start costs ~3% more
    /// decode steps; docs/benchmarks.md, 2026-12-07 day). `SPAR_PREFILL_OVERLAP=1` / `=0` overrides it.
    pub overlap_prefill: bool,
    /// On a GPU with CUDA graphs, queue decode step k+1 (its input tokens read from step k's choices on the
    /// device) before reading step k's tokens, so that the GPU does not wait for the host between steps
    /// (`async_decode.rs`; vLLM's async scheduling). A sequence that ends at step k has one dropped token decoded
    /// in step k+1. On by default; `SPAR_ASYNC_DECODE=0` / `=1` overrides it. Ignored when `batch_invariant`, and
    /// for steps whose rows need logits on the host (top log-probs, top-k / top-p / min-p).
    pub async_decode: bool,
}

/// KV-cache slots of `per_slot` bytes that fit while leaving `(1 - utilization)` of the GPU's `total` memory to
/// everything else (vLLM's `gpu_memory_utilization`, applied to what can be allocated now: `available`).
pub fn slots_within(per_slot: u64, available: u64, total: u64, utilization: f64) -> usize {
    let keep = ((1.0 - utilization).max(0.0) * total as f64) as u64;
    (available.saturating_sub(keep) / per_slot.max(1)) as usize
}

impl EngineConfig {
    /// With the model on a CUDA device and `utilization` set: at most as many KV slots as fit in what the GPU
    /// can allocate now minus `(1 - utilization)` of its memory ([`slots_within`]), instead of failing to
    /// allocate `kv_slots x max_seq_len`; `max_batch` follows the slots down. Returns the config and, when it
    /// was lowered, a line saying so. A CPU model, or no utilization, keeps the config as it is. Errors when not
    /// even one slot fits.
    pub fn fit_gpu_memory(
        mut self,
        model: &Qwen3Model,
        utilization: Option<f64>,
    ) -> Result<(Self, Option<String>)> {
        let (Some(u), tch::Device::Cuda(device)) = (utilization, model.device()) else {
            return Ok((self, None));
        };
        let mem = spar_model::cuda_memory_now(device)?;
        let per_slot =
            spar_model::KvCache::bytes_per_slot(&model.config, self.max_seq_len, model.kind());
        let fit = slots_within(per_slot, mem.available(), mem.total, u);
        if fit >= self.kv_slots {
            return Ok((self, None));
        }
        let gb = |b: u64| b as f64 / 1e9;
        if fit == 0 {
            bail!(
                "gpu_memory_utilization = {u}: one KV slot of {} tokens takes {:.2} GB, and cuda:{device} can \
                 allocate {:.2} GB of which {:.2} GB must stay free: lower max_seq_len or raise the utilization",
                self.max_seq_len,
                gb(per_slot),
                gb(mem.available()),
                gb(((1.0 - u) * mem.total as f64) as u64)
            );
        }
        let line = format!(
            "KV cache: {} slots x {} tokens would take {:.1} GB; gpu_memory_utilization = {u} of cuda:{device}'s \
             {:.1} GB leaves room for {fit}: the engine runs {fit} slots and at most {} sequences at once",
            self.kv_slots,
            self.max_seq_len,
            gb(per_slot * self.kv_slots as u64),
            gb(mem.total),
            self.max_batch.min(fit)
        );
        self.kv_slots = fit;
        self.max_batch = self.max_batch.min(fit);
        Ok((self, Some(line)))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 64,
            kv_slots: 64,
            max_seq_len: 4096,
            prefill_tokens: 4096,
            seed: 0,
            record_routing: false,
            batch_invariant: false,
            prefill_wait_steps: 0,
            overlap_prefill: false,
            async_decode: true,
        }
    }
}

/// Counters for progress bars, benchmarks and the rollout's time line. The seconds are wall time on the engine's
/// thread: every prefill and decode ends with a device-to-host copy of the sampled tokens, so on a GPU they
/// include the GPU's work, and `idle_seconds` is time with nothing queued or running (waiting for the
/// environment: patient replies, chat templates, scoring).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    pub requests: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens whose KV came from the cache (not recomputed).
    pub reused_tokens: u64,
    pub generated_tokens: u64,
    pub decode_steps: u64,
    pub prefill_forwards: u64,
    /// Steps in which queued requests waited for batch-mates ([`EngineConfig::prefill_wait_steps`]).
    #[serde(default)]
    pub prefill_wait_steps: u64,
    /// Requests dropped because their caller went away (queued or mid-generation).
    pub cancelled: u64,
    /// Sequences fed by decode steps, summed over steps (`decode_rows / decode_steps` is the mean decode batch).
    #[serde(default)]
    pub decode_rows: u64,
    /// Seconds admitting and prefilling (prompt forwards and their first sampled token).
    #[serde(default)]
    pub prefill_seconds: f64,
    /// Seconds in decode steps.
    #[serde(default)]
    pub decode_seconds: f64,
    /// Seconds in [`Engine::run_until`] with nothing queued or running.
    #[serde(default)]
    pub idle_seconds: f64,
    /// CUDA graphs captured for decode steps and prefills, and the seconds that took (part of `decode_seconds`
    /// and `prefill_seconds`). Filled by [`Engine::stats_with_graphs`], as is the next one.
    #[serde(default)]
    pub graph_captures: u64,
    #[serde(default)]
    pub graph_capture_seconds: f64,
    /// Prefill forwards replayed from a CUDA graph (short turns; the rest of `prefill_forwards` ran eagerly).
    #[serde(default)]
    pub prefill_graph_replays: u64,
    /// Decode steps queued before the previous step's tokens were read ([`EngineConfig::async_decode`]), and the
    /// tokens such steps decoded for sequences that had ended meanwhile (dropped).
    #[serde(default)]
    pub decode_steps_ahead: u64,
    #[serde(default)]
    pub decoded_past_end: u64,
    /// Torch's CUDA caching allocator during [`Engine::run_until`] (CUDA only): allocations retried after
    /// freeing its whole cache (each synchronizes the device), and `cudaMalloc` calls. Many of either mean the
    /// KV cache left the allocator too little room (see `rollout.gpu_memory_utilization`).
    #[serde(default)]
    pub cuda_alloc_retries: u64,
    #[serde(default)]
    pub cuda_mallocs: u64,
}

/// A finished request: the wire output plus the expert choices of its prompt (when recorded), which the
/// environment needs to give routing replay every position of an episode.
#[derive(Clone, Debug)]
pub struct EngineOutput {
    pub output: GenerateOutput,
    pub prompt_routing: Option<Routing>,
}

/// Where a request's result goes.
pub enum Reply {
    /// Collected by [`Engine::generate`] at this index.
    Collect(usize),
    Once(tokio::sync::oneshot::Sender<Result<EngineOutput>>),
    /// Every sampled token as it comes, then the result.
    Stream(tokio::sync::mpsc::UnboundedSender<StreamEvent>),
}

struct Queued {
    req: GenerateRequest,
    reply: Reply,
    /// The engine's step count when it arrived ([`EngineConfig::prefill_wait_steps`]).
    since: u64,
}

struct Running {
    /// Unique within the engine: names the sequence in a decode step still in flight.
    id: u64,
    /// Its next input token is the choice of the decode step in flight, not yet on the host (`pending` is
    /// empty; its slot's length already counts that token).
    in_flight: bool,
    slot: usize,
    prompt: Vec<u32>,
    prompt_len: usize,
    /// Tokens of this sequence not yet in the cache (fed by the next forward).
    pending: Vec<u32>,
    /// Copy the first `len` tokens of `from` before prefilling (deferred until `from` has computed them).
    copy_from: Option<(usize, usize)>,
    out: Vec<u32>,
    logprobs: Vec<f32>,
    /// Per generated token, when the request asked for top log-probs.
    top_logprobs: Vec<Vec<(u32, f32)>>,
    sampler: RowSampler,
    max_new: usize,
    stop_ids: Vec<u32>,
    stop_strings: Vec<String>,
    reply: Reply,
    prefilled: bool,
}

/// The engine. See the module documentation.
pub struct Engine<'m> {
    model: &'m Qwen3Model,
    cache: KvCache,
    cfg: EngineConfig,
    slots: Vec<SlotState>,
    queue: VecDeque<Queued>,
    running: Vec<Running>,
    collected: Vec<Option<Result<EngineOutput>>>,
    tick: u64,
    seeds: ChaCha8Rng,
    codec: Option<Arc<dyn TextCodec>>,
    routing_shape: Option<(usize, usize)>,
    /// CUDA-graph decode steps (CUDA only; None: every step runs the eager forward).
    graphs: Option<GraphDecoder>,
    /// Where [`Engine::run_until`] publishes its load (None: nowhere).
    load_sink: Option<LoadSink>,
    /// A weight load waiting for the running sequences to finish (no new one is admitted meanwhile).
    pending_load: Option<WeightLoad>,
    /// The decode step queued and not read yet ([`EngineConfig::async_decode`]).
    ahead: Option<async_decode::Ahead>,
    /// The next [`Running::id`].
    next_id: u64,
    pub stats: EngineStats,
}

fn check_sizes(cfg: &EngineConfig) -> Result<()> {
    if cfg.max_batch == 0 || cfg.kv_slots < cfg.max_batch {
        bail!(
            "engine: max_batch must be >= 1 and kv_slots >= max_batch (got {} and {})",
            cfg.max_batch,
            cfg.kv_slots
        );
    }
    Ok(())
}

/// What a failed KV-cache allocation says.
fn cache_context(model: &Qwen3Model, cfg: &EngineConfig) -> String {
    let gb = KvCache::bytes_per_slot(&model.config, cfg.max_seq_len, model.kind()) as f64
        * cfg.kv_slots as f64
        / 1e9;
    format!(
        "allocating the engine's KV cache ({} slots x {} tokens, {gb:.1} GB; set \
         rollout.gpu_memory_utilization (spar serve: --gpu-memory-utilization) to take the slots that \
         fit, or lower rollout.max_batch or rollout.max_seq_len)",
        cfg.kv_slots, cfg.max_seq_len
    )
}

impl<'m> Engine<'m> {
    /// Allocates the KV cache (`kv_slots x max_seq_len`) in the model's dtype on the model's device (see
    /// [`EngineConfig::fit_gpu_memory`] to size it from the GPU's memory instead).
    pub fn new(model: &'m Qwen3Model, cfg: EngineConfig) -> Result<Self> {
        check_sizes(&cfg)?;
        let cache = KvCache::try_new(
            &model.config,
            cfg.kv_slots,
            cfg.max_seq_len,
            model.device(),
            model.kind(),
        )
        .with_context(|| cache_context(model, &cfg))?;
        // A graph replays a fixed batch shape: not one sequence per forward.
        let graphs = if cfg.batch_invariant {
            None
        } else {
            GraphDecoder::new(model, &cache, cfg.max_batch)
        };
        Ok(Self::over(model, cfg, cache, graphs))
    }

    /// An engine over an allocated cache and, where graphs run, their decoder.
    fn over(
        model: &'m Qwen3Model,
        cfg: EngineConfig,
        cache: KvCache,
        graphs: Option<GraphDecoder>,
    ) -> Self {
        let n_moe = model.config.moe_layers().len();
        let routing_shape =
            (cfg.record_routing && n_moe > 0).then_some((n_moe, model.config.num_experts_per_tok));
        Engine {
            model,
            graphs,
            cache,
            slots: vec![SlotState::default(); cfg.kv_slots],
            queue: VecDeque::new(),
            running: Vec::new(),
            collected: Vec::new(),
            tick: 0,
            seeds: ChaCha8Rng::seed_from_u64(cfg.seed),
            codec: None,
            routing_shape,
            stats: EngineStats::default(),
            load_sink: None,
            pending_load: None,
            ahead: None,
            next_id: 0,
            cfg,
        }
    }

    /// Copies the weights of the transformers folder `dir` into the model in place
    /// ([`Qwen3Model::load_weights_in_place`]: by range, every header checked first; CUDA graphs stay valid),
    /// then forgets every cached prefix (their keys and values came from the old weights).
    pub fn load_weights(&mut self, dir: &std::path::Path) -> Result<()> {
        anyhow::ensure!(
            self.running.is_empty(),
            "weights cannot change under running sequences"
        );
        self.model.load_weights_in_place(dir)?;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            *slot = SlotState::default();
            self.cache.reset(i);
        }
        Ok(())
    }

    /// Gives the engine a tokenizer, needed for requests with stop strings.
    pub fn with_codec(mut self, codec: Arc<dyn TextCodec>) -> Self {
        self.codec = Some(codec);
        self
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Turns CUDA-graph decode steps on (where the device and build allow, see [`GraphDecoder::new`]) or off.
    /// On by default on CUDA; `SPAR_CUDA_GRAPHS=0` turns it off.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if let Err(e) = self.settle_ahead() {
            tracing::warn!("reading the decode step in flight before switching CUDA graphs: {e:#}");
        }
        self.graphs = if on && !self.cfg.batch_invariant {
            GraphDecoder::new(self.model, &self.cache, self.cfg.max_batch)
        } else {
            None
        };
    }

    /// The counters with the CUDA-graph decoder's captures filled in.
    pub fn stats_with_graphs(&self) -> EngineStats {
        let mut stats = self.stats;
        if let Some(g) = &self.graphs {
            let p = g.prefill_stats();
            stats.graph_captures = g.stats.captures + p.captures;
            stats.graph_capture_seconds = g.stats.capture_seconds + p.capture_seconds;
            stats.prefill_graph_replays = p.replays;
        }
        stats
    }

    /// Counters of the CUDA-graph decode path; None when it is off.
    pub fn graph_stats(&self) -> Option<GraphStats> {
        self.graphs.as_ref().map(|g| g.stats)
    }

    /// Queues a request.
    pub fn submit(&mut self, req: GenerateRequest, reply: Reply) {
        let since = self.tick;
        self.queue.push_back(Queued { req, reply, since });
    }

    /// Whether anything is queued or running.
    pub fn has_work(&self) -> bool {
        !self.queue.is_empty() || !self.running.is_empty()
    }

    /// Generates every request to completion (continuous batching within the set); outputs in request order.
    pub fn generate(&mut self, reqs: Vec<GenerateRequest>) -> Result<Vec<EngineOutput>> {
        let base = self.collected.len();
        for (i, r) in reqs.into_iter().enumerate() {
            self.collected.push(None);
            self.submit(r, Reply::Collect(base + i));
        }
        while self.has_work() {
            self.step()?;
        }
        let outs: Vec<Option<Result<EngineOutput>>> = self.collected.drain(base..).collect();
        outs.into_iter()
            .map(|o| o.expect("every collected request finished"))
            .collect()
    }

    /// Serves requests arriving through `inbox` until `done()` is true and no work is left. Requests whose
    /// caller has gone away are dropped (see `cancel.rs`); the load is published after every step.
    ///
    /// A weight load (`EngineInbox::with_weight_loads`) stops admitting new requests, lets the running ones
    /// finish on the old weights, loads ([`Engine::load_weights`]), answers, and admission resumes.
    pub fn run_until(&mut self, inbox: &EngineInbox, done: impl Fn() -> bool) -> Result<()> {
        let events = || match self.model.device() {
            Device::Cuda(d) => spar_model::cuda_allocator_events(d).ok(),
            _ => None,
        };
        let before = events();
        let served = self.serve_until(inbox, done);
        if let (Some(before), Some(after)) = (before, events()) {
            let delta = after.since(&before);
            self.stats.cuda_alloc_retries += delta.retries;
            self.stats.cuda_mallocs += delta.mallocs;
        }
        served
    }

    fn serve_until(&mut self, inbox: &EngineInbox, done: impl Fn() -> bool) -> Result<()> {
        loop {
            while let Some((req, reply)) = inbox.try_recv() {
                self.submit(req, reply);
            }
            if self.pending_load.is_none() {
                self.pending_load = inbox.try_recv_load();
            }
            if self.running.is_empty()
                && let Some(load) = self.pending_load.take()
            {
                let loaded = self.load_weights(&load.dir);
                match &loaded {
                    Ok(()) => tracing::info!(folder = %load.dir.display(), "weights loaded"),
                    Err(e) => tracing::error!("weight load failed: {e:#}"),
                }
                let _ = load.done.send(loaded);
                continue;
            }
            if self.has_work() {
                let stepped = self.step();
                self.publish_load();
                stepped?;
            } else if done() {
                return Ok(());
            } else {
                let waited = std::time::Instant::now();
                let arrived = inbox.recv_timeout(std::time::Duration::from_millis(2));
                self.stats.idle_seconds += waited.elapsed().as_secs_f64();
                if let Some((req, reply)) = arrived {
                    self.submit(req, reply);
                }
            }
        }
    }

    /// One scheduling round: admit, prefill the newcomers, decode one token for every running sequence.
    /// A failed forward fails the requests involved (their replies get the error) and is returned.
    pub fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.tick += 1;
        self.drop_cancelled();
        self.admit();
        let result = self.prefill_and_decode();
        if let Err(e) = &result {
            // The step in flight (if any) belongs to the sequences failed here.
            self.ahead = None;
            let msg = format!("{e:#}");
            for r in std::mem::take(&mut self.running) {
                self.slots[r.slot] = SlotState::default();
                self.cache.reset(r.slot);
                self.respond(
                    r.reply,
                    Err(anyhow::anyhow!("engine forward failed: {msg}")),
                );
            }
        }
        result
    }

    /// Whether this step leaves the queue for a later one ([`EngineConfig::prefill_wait_steps`]): sequences
    /// are decoding, the oldest queued request has waited fewer steps than allowed, and the queue does not fill
    /// the free rows.
    fn waits_for_batch_mates(&self) -> bool {
        let wait = self.cfg.prefill_wait_steps as u64;
        let Some(oldest) = self.queue.front().map(|q| q.since) else {
            return false;
        };
        let free = self.cfg.max_batch.saturating_sub(self.running.len());
        wait > 0
            && !self.cfg.batch_invariant
            && !self.running.is_empty()
            && self.queue.len() < free
            && self.tick <= oldest + wait
    }

    fn admit(&mut self) {
        // A weight load waits for the running sequences; the queued ones wait for the new weights.
        if self.pending_load.is_some() {
            return;
        }
        if self.waits_for_batch_mates() {
            self.stats.prefill_wait_steps += 1;
            return;
        }
        while self.running.len() < self.cfg.max_batch {
            let Some(Queued { req, reply, .. }) = self.queue.pop_front() else {
                break;
            };
            self.stats.requests += 1;
            let prompt = req.prompt_ids.clone();
            if prompt.is_empty() {
                self.respond(reply, Err(anyhow::anyhow!("empty prompt")));
                continue;
            }
            if prompt.len() >= self.cfg.max_seq_len {
                let msg = format!(
                    "prompt of {} tokens does not fit max_seq_len {}",
                    prompt.len(),
                    self.cfg.max_seq_len
                );
                self.respond(reply, Err(anyhow::anyhow!(msg)));
                continue;
            }
            let vocab = self.model.config.vocab_size as u32;
            if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
                self.respond(
                    reply,
                    Err(anyhow::anyhow!(
                        "prompt token id {bad} is outside the vocabulary ({vocab})"
                    )),
                );
                continue;
            }
            // Batch-invariant: the whole prompt is prefilled in one forward of its own. A reused prefix would
            // hold keys computed in other shapes (decode steps, a batch-mate's prefill), whose last bits differ.
            let placement = if self.cfg.batch_invariant {
                Placement::InPlace {
                    slot: slots::victim(&self.slots),
                    keep: 0,
                }
            } else {
                place(&self.slots, &prompt).expect("kv_slots >= max_batch leaves an idle slot")
            };
            let (slot, reused, copy_from) = match placement {
                Placement::InPlace { slot, keep } => {
                    // copy_prefix onto itself only sets the length: truncation.
                    let keep = keep.min(self.cache.len(slot));
                    let _ = self.cache.copy_prefix(slot, slot, keep);
                    self.truncate_slot(slot, keep);
                    (slot, keep, None)
                }
                Placement::CopyFrom { slot, from, len } => (slot, len, Some((from, len))),
            };
            self.stats.prompt_tokens += prompt.len() as u64;
            self.stats.reused_tokens += reused as u64;
            let st = &mut self.slots[slot];
            st.busy = true;
            st.last_used = self.tick;
            // The slot's tokens are what it will hold once prefilled: later arrivals may plan copies from it.
            st.tokens = prompt.clone();
            let seed = req.sampling.seed.unwrap_or_else(|| self.seeds.random());
            let max_new =
                (req.sampling.max_new_tokens as usize).min(self.cfg.max_seq_len - prompt.len());
            self.next_id += 1;
            self.running.push(Running {
                id: self.next_id,
                in_flight: false,
                slot,
                prompt_len: prompt.len(),
                pending: prompt[reused..].to_vec(),
                copy_from,
                out: Vec::new(),
                logprobs: Vec::new(),
                top_logprobs: Vec::new(),
                sampler: RowSampler::new(&req.sampling, seed),
                max_new,
                stop_ids: req.sampling.stop_token_ids.clone(),
                stop_strings: req.sampling.stop_strings.clone(),
                reply,
                prefilled: false,
                prompt,
            });
        }
    }

    fn truncate_slot(&mut self, slot: usize, keep: usize) {
        let st = &mut self.slots[slot];
        st.tokens.truncate(keep);
        if let Some((l, k)) = self.routing_shape {
            st.routing.truncate(keep * l * k);
        }
    }

    fn prefill_and_decode(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        // With `overlap_prefill` and CUDA graphs the rows already decoding go first and are not waited for: the
        // GPU runs their step while the host issues the prefill's ops behind it, and the rows the prefill starts
        // decode from the next step. Otherwise the prefill goes first and its rows join this step.
        let mut launched = None;
        let ahead = self.decodes_ahead();
        if !self.cfg.batch_invariant
            && !ahead
            && prefill_overlap_override().unwrap_or(self.cfg.overlap_prefill)
            && self.running.iter().any(|r| !r.prefilled)
        {
            let rows = self.decoding_rows();
            if !rows.is_empty()
                && let Some(step) = self.launch_decode(&rows)?
            {
                launched = Some((rows, step));
            }
        }
        let span = range("engine/prefill");
        // Wave 1: sequences whose prefix is already in place; wave 2: those copying from a slot wave 1 fills.
        for wave in 0..2 {
            let mut ready = Vec::new();
            for i in 0..self.running.len() {
                let r = &self.running[i];
                if r.prefilled {
                    continue;
                }
                if let Some((from, len)) = r.copy_from {
                    let shared = slots::common_prefix(&self.slots[from].tokens, &r.prompt);
                    let avail = len.min(self.cache.len(from)).min(shared);
                    if avail < len && wave == 0 {
                        continue; // `from` is prefilled in this wave
                    }
                    let to = r.slot;
                    self.cache.copy_prefix(from, to, avail)?;
                    self.slots[to].routing = match self.routing_shape {
                        Some((l, k)) => self.slots[from].routing[..avail * l * k].to_vec(),
                        None => Vec::new(),
                    };
                    let r = &mut self.running[i];
                    r.pending = r.prompt[avail..].to_vec();
                    r.copy_from = None;
                    self.stats.reused_tokens -= (len - avail) as u64;
                }
                ready.push(i);
            }
            if !ready.is_empty() {
                self.prefill(&ready)?;
            }
        }
        drop(span);
        // With a launched step the prefill's time includes waiting for that step's GPU work (its first sampling
        // reads the GPU behind it): the two times add up to the iteration, as before.
        let decode_start = std::time::Instant::now();
        self.stats.prefill_seconds += (decode_start - started).as_secs_f64();
        let rows = match launched {
            Some((rows, step)) => {
                let _span = range("engine/decode");
                self.finish_decode(&rows, step)?;
                rows
            }
            None if ahead => {
                // Decode rows are counted when their step is read (async_decode.rs).
                let rows = self.decoding_rows();
                if !rows.is_empty() || self.ahead.is_some() {
                    let _span = range("engine/decode");
                    self.decode_ahead(&rows)?;
                    self.stats.decode_seconds += decode_start.elapsed().as_secs_f64();
                }
                self.retire();
                return self.settle_orphaned_ahead();
            }
            None => {
                let rows = self.decoding_rows();
                if !rows.is_empty() {
                    let _span = range("engine/decode");
                    self.decode(&rows)?;
                }
                rows
            }
        };
        if !rows.is_empty() {
            self.stats.decode_rows += rows.len() as u64;
            self.stats.decode_seconds += decode_start.elapsed().as_secs_f64();
        }
        self.retire();
        Ok(())
    }

    /// Feeds the pending tokens of `rows` (right-padded into batches of at most `prefill_tokens`), then samples
    /// each row's first new token from the logits at its last real position.
    fn prefill(&mut self, rows: &[usize]) -> Result<()> {
        let chunk = self.cfg.prefill_tokens.max(1);
        // Very long prompts first go through alone in chunks; their last chunk joins a normal batch.
        for &i in rows {
            while self.running[i].pending.len() > chunk {
                let piece: Vec<u32> = self.running[i].pending.drain(..chunk).collect();
                self.forward(&[(i, piece)], false)?;
            }
        }
        let mut order: Vec<usize> = rows.to_vec();
        order.sort_by_key(|&i| self.running[i].pending.len());
        // Rows are right-padded to the batch's longest pending run, and the cache reads `held + padded length`
        // for every row: a row holding a long conversation must not join a batch whose padding would run past
        // max_seq_len.
        let held = |r: &Running| r.prompt_len - r.pending.len();
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            let mut most_held = held(&self.running[order[start]]);
            while end < order.len() {
                let next = &self.running[order[end]];
                let t = next.pending.len();
                let most = most_held.max(held(next));
                if self.cfg.batch_invariant
                    || (end + 1 - start) * t > chunk
                    || most + t > self.cfg.max_seq_len
                {
                    break;
                }
                most_held = most;
                end += 1;
            }
            let batch: Vec<(usize, Vec<u32>)> = order[start..end]
                .iter()
                .map(|&i| (i, std::mem::take(&mut self.running[i].pending)))
                .collect();
            let logits = self.forward(&batch, true)?.expect("logits requested");
            let idx: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
            self.sample_rows(&idx, &logits)?;
            for &i in &idx {
                self.running[i].prefilled = true;
            }
            self.stats.prefill_forwards += 1;
            start = end;
        }
        Ok(())
    }

    fn decode(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(step) = self.launch_decode(rows)? {
            return self.finish_decode(rows, step);
        }
        // Batch-invariant: one forward per sequence, in running order.
        let per_forward = if self.cfg.batch_invariant {
            1
        } else {
            rows.len()
        };
        for part in rows.chunks(per_forward) {
            let batch: Vec<(usize, Vec<u32>)> = part
                .iter()
                .map(|&i| (i, std::mem::take(&mut self.running[i].pending)))
                .collect();
            let logits = self.forward(&batch, true)?.expect("logits requested");
            self.sample_rows(part, &logits)?;
        }
        self.stats.decode_steps += 1;
        Ok(())
    }

    /// The graph decoder's step over `rows` (running indices, each with one pending token), queued on the GPU and
    /// not waited for; None where there is no graph decoder or it cannot take the step (nothing changed then).
    fn launch_decode(&mut self, rows: &[usize]) -> Result<Option<LaunchedStep>> {
        let Some(graphs) = self.graphs.as_mut() else {
            return Ok(None);
        };
        let feed: Vec<(usize, u32)> = rows
            .iter()
            .map(|&i| (self.running[i].slot, self.running[i].pending[0]))
            .collect();
        let kind = pick_kind_of(&self.running, rows);
        let pick = pick_of(kind, &mut self.running, rows);
        graphs.launch(self.model, &mut self.cache, &feed, pick)
    }

    /// What a graph step over `rows` hands back (see [`pick_kind_of`]).
    fn pick_kind(&self, rows: &[usize]) -> PickKind {
        pick_kind_of(&self.running, rows)
    }

    /// Takes a launched graph step's tokens (waiting for the GPU) and appends them to `rows`.
    fn finish_decode(&mut self, rows: &[usize], step: LaunchedStep) -> Result<()> {
        let graphs = self
            .graphs
            .as_ref()
            .context("a launched decode step without its graph decoder")?;
        let out = graphs.finish(self.model, step)?;
        let one_each: Vec<(usize, usize)> =
            rows.iter().map(|&i| (self.running[i].slot, 1)).collect();
        self.append_routing(&one_each, out.routed_experts.as_ref())?;
        for &i in rows {
            self.running[i].pending.clear();
        }
        match out.next {
            NextTokens::Chosen(picked) => {
                let (tokens, logprobs) = picked.into_iter().unzip();
                self.push_sampled(
                    rows,
                    Sampled {
                        tokens,
                        logprobs,
                        top: Vec::new(),
                    },
                )?;
            }
            NextTokens::Logits(logits) => self.sample_rows(rows, &logits)?,
        }
        self.stats.decode_steps += 1;
        Ok(())
    }

    /// One cached forward of `rows` (running index, tokens to append). Returns the logits of each row's last
    /// real token, `[rows, V]`, when asked.
    fn forward(&mut self, rows: &[(usize, Vec<u32>)], want_logits: bool) -> Result<Option<Tensor>> {
        let _span = range("engine/forward");
        let t = rows.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
        let b = rows.len();
        let slot_list: Vec<usize> = rows.iter().map(|(i, _)| self.running[*i].slot).collect();
        // (slot, new tokens) of each row, for the routing each token chose.
        let appended: Vec<(usize, usize)> = slot_list
            .iter()
            .zip(rows)
            .map(|(s, (_, p))| (*s, p.len()))
            .collect();
        // Prefill through the decode step's fused weights and kernels where the graph decoder holds them (under
        // half the plain forward's host ops a layer; packed through flash attention, any turn length);
        // batch-invariant runs keep the plain forward.
        if let (true, false, Some(graphs)) = (t > 1, self.cfg.batch_invariant, self.graphs.as_mut())
            && (self.model.stacks_query_heads(t) || spar_model::fused_prefill::packs(self.model))
            && fused_prefill_enabled()
        {
            let spec: Vec<(usize, &[u32])> = slot_list
                .iter()
                .zip(rows)
                .map(|(s, (_, p))| (*s, p.as_slice()))
                .collect();
            let out = graphs.prefill(self.model, &mut self.cache, &spec)?;
            self.append_routing(&appended, out.routed_experts.as_ref())?;
            return Ok(want_logits.then_some(out.logits));
        }
        let mut ids = vec![0i64; b * t];
        let mut mask = vec![0i64; b * t];
        let ragged = rows.iter().any(|(_, p)| p.len() != t);
        for (r, (_, p)) in rows.iter().enumerate() {
            for (j, &tok) in p.iter().enumerate() {
                ids[r * t + j] = tok as i64;
                mask[r * t + j] = 1;
            }
        }
        let dev = self.model.device();
        let ids_t = Tensor::from_slice(&ids)
            .view([b as i64, t as i64])
            .to_device(dev);
        let mask_t = ragged.then(|| {
            Tensor::from_slice(&mask)
                .view([b as i64, t as i64])
                .to_device(dev)
        });
        self.cache.select_slots(&slot_list)?;
        let mut input = ForwardInput::new(&ids_t).cache(&mut self.cache);
        if let Some(m) = &mask_t {
            input = input.mask(m);
        }
        if t > 1 {
            // Prefill: the head runs on each row's last position only (not [B, T, vocab] logits).
            input = input.hidden_only();
        }
        let out = self.model.forward(input)?;
        self.append_routing(&appended, out.routed_experts.as_ref())?;
        if !want_logits {
            return Ok(None);
        }
        let logits = if t == 1 {
            out.logits.squeeze_dim(1)
        } else {
            let last: Vec<i64> = rows.iter().map(|(_, p)| p.len() as i64 - 1).collect();
            let row_idx = Tensor::arange(b as i64, (Kind::Int64, dev));
            let pos_idx = Tensor::from_slice(&last).to_device(dev);
            let Some(spar_model::LmHead::Hidden { hidden, weight }) = &out.head else {
                bail!("the model returned no hidden states for a prefill");
            };
            hidden
                .index(&[Some(row_idx), Some(pos_idx)])
                .f_linear(weight, None::<Tensor>)?
        };
        Ok(Some(logits))
    }

    /// Appends the experts each row's new tokens chose (`routed: [b, t, n_moe, k]`, rows right-padded to the
    /// longest) to its slot's routing, when the engine records routing. `rows`: (slot, new tokens) per row.
    fn append_routing(&mut self, rows: &[(usize, usize)], routed: Option<&Tensor>) -> Result<()> {
        let (Some((l, k)), Some(re)) = (self.routing_shape, routed) else {
            return Ok(());
        };
        let t = rows.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let flat: Vec<i64> = Vec::<i64>::try_from(re.to_device(Device::Cpu).reshape([-1]))?;
        let per = l * k;
        for (r, (slot, n)) in rows.iter().enumerate() {
            let row = &flat[r * t * per..(r * t + n) * per];
            self.slots[*slot]
                .routing
                .extend(row.iter().map(|&e| e as u16));
        }
        Ok(())
    }

    fn sample_rows(&mut self, rows: &[usize], logits: &Tensor) -> Result<()> {
        let _span = range("engine/sample");
        let picked = sample(logits, &mut samplers_of(&mut self.running, rows));
        self.push_sampled(rows, picked)
    }

    /// Appends each row's chosen token (and log-probs) to its output and its slot, and streams it. A token whose
    /// log-prob is not finite fails the step before anything is appended: its logits were NaN or infinite (the
    /// sampler still "chooses" a token from them, the same one every step, a reply of "!!!!"). The log-probs are
    /// on the host already, so this check of every token, the first forward's included, costs nothing.
    fn push_sampled(&mut self, rows: &[usize], picked: Sampled) -> Result<()> {
        if let Some(n) = picked.logprobs.iter().position(|lp| !lp.is_finite()) {
            let r = &self.running[rows[n]];
            bail!(
                "the model's logits are not finite (log-prob {} at generated token {} of a {}-token prompt): its \
                 weights or activations overflowed (try dtype fp32) or are damaged",
                picked.logprobs[n],
                r.out.len() + 1,
                r.prompt_len
            );
        }
        let mut tops = picked.top.into_iter();
        for (n, &i) in rows.iter().enumerate() {
            let (tok, lp) = (picked.tokens[n], picked.logprobs[n]);
            let top = tops.next().unwrap_or_default();
            let r = &mut self.running[i];
            r.out.push(tok);
            r.logprobs.push(lp);
            r.pending = vec![tok];
            self.slots[r.slot].tokens.push(tok);
            if let Reply::Stream(tx) = &r.reply {
                let _ = tx.send(StreamEvent::Token {
                    id: tok,
                    logprob: lp,
                    top_logprobs: top.clone(),
                });
            }
            if r.sampler.top_logprobs > 0 {
                r.top_logprobs.push(top);
            }
        }
        self.stats.generated_tokens += rows.len() as u64;
        Ok(())
    }

    /// Finishes sequences that hit a stop or their length limit and frees their slots.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let finish = self.finish_reason(i);
            let Some(finish) = finish else {
                i += 1;
                continue;
            };
            let r = self.running.swap_remove(i);
            self.release_slot(r.slot, r.in_flight);
            let out = self.output_of(&r, finish);
            self.respond(r.reply, Ok(out));
        }
    }

    fn finish_reason(&self, i: usize) -> Option<FinishReason> {
        let r = &self.running[i];
        if !r.prefilled {
            return None;
        }
        let last = *r.out.last()?;
        if r.stop_ids.contains(&last) {
            return Some(FinishReason::Stop);
        }
        if let (false, Some(codec)) = (r.stop_strings.is_empty(), &self.codec) {
            // Only the tail can complete a stop string that was not there one token ago.
            let longest = r.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0);
            let from = r.out.len().saturating_sub(longest + 2);
            if let Ok(text) = codec.decode(&r.out[from..])
                && r.stop_strings
                    .iter()
                    .any(|s| !s.is_empty() && text.contains(s.as_str()))
            {
                return Some(FinishReason::Stop);
            }
        }
        // A sequence in the decode step in flight: its slot already counts that step's input token.
        let cached = self.cache.len(r.slot) - r.in_flight as usize;
        self.at_length_limit(r, r.out.len(), cached)
            .then_some(FinishReason::Length)
    }

    /// Whether `r` ends by length once it has generated `generated` tokens and its slot holds `cached` (the last
    /// generated token not fed yet): its `max_new`, or no room in `max_seq_len` to feed that token.
    fn at_length_limit(&self, r: &Running, generated: usize, cached: usize) -> bool {
        generated >= r.max_new || cached + 1 >= self.cfg.max_seq_len
    }

    /// The running sequences a decode step feeds: prefilled, with their next token on the host or in the decode
    /// step in flight.
    fn decoding_rows(&self) -> Vec<usize> {
        (0..self.running.len())
            .filter(|&i| {
                let r = &self.running[i];
                r.prefilled && (r.pending.len() == 1 || r.in_flight)
            })
            .collect()
    }

    fn output_of(&self, r: &Running, finish: FinishReason) -> EngineOutput {
        let (routed_experts, prompt_routing) = match self.routing_shape {
            Some((layers, k)) => {
                let per = layers * k;
                let all = &self.slots[r.slot].routing;
                let prompt = all.get(..r.prompt_len * per).map(|p| Routing {
                    layers,
                    k,
                    ids: p.to_vec(),
                });
                // Generated token g is fed (and routed) at position prompt_len + g; the last one never is, and its
                // routing influences no log-prob, so it repeats the one before it.
                let mut gen_ids: Vec<u16> = all.get(r.prompt_len * per..).unwrap_or(&[]).to_vec();
                gen_ids.truncate((r.out.len().saturating_sub(1)) * per);
                while gen_ids.len() < r.out.len() * per {
                    let prev = if gen_ids.len() >= per {
                        gen_ids[gen_ids.len() - per..].to_vec()
                    } else {
                        all.get(all.len().saturating_sub(per)..)
                            .unwrap_or(&[])
                            .to_vec()
                    };
                    if prev.len() != per {
                        break;
                    }
                    gen_ids.extend(prev);
                }
                let gen_ids = (gen_ids.len() == r.out.len() * per).then_some(RoutedExperts {
                    layers,
                    k,
                    ids: gen_ids,
                });
                (gen_ids, prompt)
            }
            None => (None, None),
        };
        EngineOutput {
            output: GenerateOutput {
                token_ids: r.out.clone(),
                logprobs: r.logprobs.clone(),
                top_logprobs: r.top_logprobs.clone(),
                finish,
                routed_experts,
                // In process the prompt's routing travels beside the output (`EngineOutput::prompt_routing`).
                prompt_routed_experts: None,
            },
            prompt_routing,
        }
    }

    fn respond(&mut self, reply: Reply, result: Result<EngineOutput>) {
        match reply {
            Reply::Collect(i) => self.collected[i] = Some(result),
            Reply::Once(tx) => {
                let _ = tx.send(result);
            }
            Reply::Stream(tx) => {
                let _ = tx.send(StreamEvent::Done(result.map_err(|e| format!("{e:#}"))));
            }
        }
    }
}

/// Whether prefills may take the fused path (`SPAR_FUSED_PREFILL=0` keeps the plain forward, for comparisons).
pub fn fused_prefill_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_FUSED_PREFILL").map_or(true, |v| v != "0"))
}

/// The environment's choice of [`EngineConfig::overlap_prefill`], for comparisons: `SPAR_PREFILL_OVERLAP=1` queues
/// the decode step ahead of a prefill, `=0` runs the prefill first; None where unset (the config decides).
pub fn prefill_overlap_override() -> Option<bool> {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_PREFILL_OVERLAP").ok().map(|v| v != "0"))
}

/// Whether temperature sampling may run inside the decode graphs (`SPAR_GRAPH_SAMPLING=0` samples from the
/// graphs' logits on the host side instead, for comparisons).
pub fn graph_sampling_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_GRAPH_SAMPLING").map_or(true, |v| v != "0"))
}

/// What a graph decode step hands back for a set of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PickKind {
    Greedy,
    Sample,
    Logits,
}

/// A batch without top log-probs and without top-k / top-p / min-p takes the graph's own choices: greedy, or
/// sampled at each row's temperature with the uniforms of the rows' own streams. Anything else needs the logits.
fn pick_kind_of(running: &[Running], rows: &[usize]) -> PickKind {
    let plain = |i: &usize| {
        let s = &running[*i].sampler;
        s.top_logprobs == 0 && s.temperature_only()
    };
    if rows
        .iter()
        .all(|i| plain(i) && running[*i].sampler.greedy())
    {
        PickKind::Greedy
    } else if rows.iter().all(plain) && graph_sampling_enabled() {
        PickKind::Sample
    } else {
        PickKind::Logits
    }
}

/// The graph step's [`Pick`] for `kind`; a sampled step draws the rows' uniforms only if the graph runs it, as
/// the eager sampler would draw them.
fn pick_of<'a>(kind: PickKind, running: &'a mut [Running], rows: &'a [usize]) -> Pick<'a> {
    match kind {
        PickKind::Greedy => Pick::Greedy,
        PickKind::Sample => Pick::Sample(Box::new(move || {
            temperature_params(&mut samplers_of(running, rows))
        })),
        PickKind::Logits => Pick::Logits,
    }
}

/// Disjoint mutable borrows of the samplers of `running[rows[0]]`, `running[rows[1]]`, ... in `rows` order.
fn samplers_of<'a>(running: &'a mut [Running], rows: &[usize]) -> Vec<&'a mut RowSampler> {
    let mut by_index: Vec<Option<&mut RowSampler>> =
        running.iter_mut().map(|r| Some(&mut r.sampler)).collect();
    rows.iter()
        .map(|&i| by_index[i].take().expect("rows are distinct"))
        .collect()
}
