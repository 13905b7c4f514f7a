//! CUDA graphs kept from one engine to the next over the same model: the rollout builds an engine every round
//! and used to capture its ~24 decode and prefill graphs again each time (0.3-0.9 s of host time a round on an
//! H100, the GPU idle meanwhile).
//!
//! A graph replays at the addresses it was captured at, and the KV cache must not stay allocated while the
//! learner runs. So the cache lives in a [`FixedAddressRange`]: [`Engine::into_kept`] hands the next engine the
//! graph decoder and the range, the cache's physical memory going back to the driver in between; the next
//! [`Engine::new_keeping`] maps new memory at the same addresses and replays the old graphs. The decoder's fused
//! weights are the model's own parameters (updated in place by the optimizer), so the graphs read the new
//! weights; when anything re-pointed the parameters since, the decoder notices and captures again.

use super::{Engine, EngineConfig, check_sizes};
use anyhow::Result;
use spar_model::fixed_address::FixedAddressRange;
use spar_model::{GraphDecoder, KvCache, Qwen3Model};
use std::sync::Arc;
use tch::Device;

/// `SPAR_KEEP_GRAPHS=0` / `1`: overrides `rollout.keep_graphs` (to compare).
pub fn keep_graphs_override() -> Option<bool> {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_KEEP_GRAPHS").ok().map(|v| v != "0"))
}

/// What an engine left for the next engine over the same model: its CUDA graphs and the addresses its KV cache
/// lived at (no memory: that went back to the driver with the cache).
pub struct KeptGraphs {
    decoder: GraphDecoder,
    range: Arc<FixedAddressRange>,
    kv_slots: usize,
    max_seq_len: usize,
    max_batch: usize,
    /// The cache's dtype and laid-out bytes (the model's shape as the cache sees it).
    kind: tch::Kind,
    cache_bytes: usize,
}

impl KeptGraphs {
    /// Whether an engine of `cfg` over `model` can replay these graphs: the same cache layout, dtype and batch on the
    /// same device.
    pub fn fits(&self, model: &Qwen3Model, cfg: &EngineConfig) -> bool {
        self.kv_slots == cfg.kv_slots
            && self.max_seq_len == cfg.max_seq_len
            && self.max_batch == cfg.max_batch
            && !cfg.batch_invariant
            && model.device() == Device::Cuda(self.range.ordinal())
            && model.kind() == self.kind
            && self.cache_bytes
                == KvCache::bytes_at_fixed_address(
                    &model.config,
                    cfg.kv_slots,
                    cfg.max_seq_len,
                    model.kind(),
                )
    }

    /// Graphs held (decode and prefill shapes).
    pub fn graphs_held(&self) -> usize {
        self.decoder.graphs_held()
    }

    /// Bytes of addresses the KV cache lived at (no memory is held there while kept).
    pub fn bytes(&self) -> usize {
        self.range.bytes()
    }

    /// The KV-cache slots the graphs were captured for.
    pub fn kv_slots(&self) -> usize {
        self.kv_slots
    }
}

impl<'m> Engine<'m> {
    /// [`Engine::new`] with the KV cache at fixed addresses, so that [`Engine::into_kept`] can hand its graphs
    /// to the next engine. `kept`: what an earlier engine over the same model left; when it fits `cfg`
    /// ([`KeptGraphs::fits`]) its graphs replay over this engine's cache without a capture, otherwise it is
    /// dropped (its graphs' memory with it) before the cache is allocated. A CPU model, a batch-invariant
    /// engine, a driver without virtual memory management or a fixed-address cache the GPU cannot map gets
    /// [`Engine::new`].
    pub fn new_keeping(
        model: &'m Qwen3Model,
        cfg: EngineConfig,
        kept: Option<KeptGraphs>,
    ) -> Result<Self> {
        check_sizes(&cfg)?;
        let Device::Cuda(ordinal) = model.device() else {
            return Self::new(model, cfg);
        };
        if cfg.batch_invariant {
            return Self::new(model, cfg);
        }
        let (config, kind) = (&model.config, model.kind());
        if let Some(k) = kept.filter(|k| k.fits(model, &cfg)) {
            match KvCache::try_new_at(config, cfg.kv_slots, cfg.max_seq_len, kind, &k.range) {
                Ok(cache) => {
                    let mut decoder = k.decoder;
                    decoder.reset_stats();
                    return Ok(Self::over(model, cfg, cache, Some(decoder)));
                }
                Err(e) => tracing::warn!(
                    "mapping the KV cache at the kept CUDA graphs' addresses: {e:#}; capturing them anew"
                ),
            }
        }
        let bytes = KvCache::bytes_at_fixed_address(config, cfg.kv_slots, cfg.max_seq_len, kind);
        let range = match FixedAddressRange::reserve(ordinal, bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "no fixed addresses for the KV cache ({e:#}): the engine's CUDA graphs are captured anew \
                     each round"
                );
                return Self::new(model, cfg);
            }
        };
        match KvCache::try_new_at(config, cfg.kv_slots, cfg.max_seq_len, kind, &range) {
            Ok(cache) => {
                let graphs = GraphDecoder::new(model, &cache, cfg.max_batch);
                Ok(Self::over(model, cfg, cache, graphs))
            }
            Err(e) => {
                // A torch allocation says what is short, in the words the recipe's knobs use.
                tracing::warn!("KV cache at fixed addresses: {e:#}; allocating it through torch");
                drop(range);
                Self::new(model, cfg)
            }
        }
    }

    /// Ends the engine, keeping its CUDA graphs for the next engine over the same model
    /// ([`Engine::new_keeping`]); its KV cache's memory goes back to the driver. None when there is nothing to
    /// keep: no graphs, a cache not at fixed addresses, or the decode step in flight failed.
    pub fn into_kept(mut self) -> Option<KeptGraphs> {
        if let Err(e) = self.settle_ahead() {
            tracing::warn!("reading the decode step in flight before keeping the graphs: {e:#}");
            return None;
        }
        let decoder = self.graphs.take()?;
        let range = self.cache.fixed_range()?.clone();
        let (kv_slots, max_seq_len, max_batch) =
            (self.cfg.kv_slots, self.cfg.max_seq_len, self.cfg.max_batch);
        let kind = self.model.kind();
        let cache_bytes =
            KvCache::bytes_at_fixed_address(&self.model.config, kv_slots, max_seq_len, kind);
        // The cache's views go with the engine, then its memory.
        drop(self);
        Some(KeptGraphs {
            decoder,
            range,
            kv_slots,
            max_seq_len,
            max_batch,
            kind,
            cache_bytes,
        })
    }
}
