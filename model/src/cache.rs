//! Slot-based KV cache for incremental decoding and continuous batching.
//!
//! Each layer holds `k, v: [slots, max_len, n_kv_heads, head_dim]` (token-major so one `index_put_` writes a
//! whole `[B, T, n_kv, D]` projection). Slot lengths live on the host: the engine knows how many tokens it
//! feeds, so positions and masks are built without reading anything back from the device.

use crate::config::Qwen3Config;
use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// Per-layer keys and values of up to `slots` sequences of up to `max_len` tokens each.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    lens: Vec<usize>,
    max_len: usize,
    /// Row i of the next forward's batch reads and appends slot `selected[i]`; None = rows map to 0..B.
    selected: Option<Vec<usize>>,
    device: Device,
}

impl KvCache {
    /// Allocates the cache. Panics only if the allocation itself fails; use [`KvCache::try_new`] to handle that.
    pub fn new(
        config: &Qwen3Config,
        slots: usize,
        max_len: usize,
        device: Device,
        kind: Kind,
    ) -> Self {
        match Self::try_new(config, slots, max_len, device, kind) {
            Ok(c) => c,
            Err(e) => panic!("allocating KV cache ({slots} slots x {max_len} tokens): {e:#}"),
        }
    }

    /// Allocates the cache, returning an error (e.g. out of memory) instead of panicking.
    pub fn try_new(
        config: &Qwen3Config,
        slots: usize,
        max_len: usize,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        if slots == 0 || max_len == 0 {
            bail!(
                "KV cache needs at least one slot and max_len > 0 (got {slots} slots, max_len {max_len})"
            );
        }
        let shape = [
            slots as i64,
            max_len as i64,
            config.num_key_value_heads as i64,
            config.head_dim as i64,
        ];
        let mut k = Vec::with_capacity(config.num_hidden_layers);
        let mut v = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            k.push(Tensor::f_zeros(shape, (kind, device))?);
            v.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(KvCache {
            k,
            v,
            lens: vec![0; slots],
            max_len,
            selected: None,
            device,
        })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Capacity of each slot in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokens currently held by `slot` (0 for an unknown slot).
    pub fn len(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    /// Whether every slot is empty.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|l| *l == 0)
    }

    /// Forgets the contents of `slot` (the memory is reused by the next append).
    pub fn reset(&mut self, slot: usize) {
        if let Some(l) = self.lens.get_mut(slot) {
            *l = 0;
        }
    }

    /// Copies the first `len` tokens of slot `from` into slot `to` and sets `to`'s length to `len`
    /// (prefix reuse: the samples of a GRPO group share the prompt's KV).
    pub fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let n = self.slots();
        if from >= n || to >= n {
            bail!("copy_prefix: slot out of range (from {from}, to {to}, {n} slots)");
        }
        if len > self.lens[from] {
            bail!(
                "copy_prefix: slot {from} holds {} tokens, asked to copy {len}",
                self.lens[from]
            );
        }
        if from != to && len > 0 {
            let _g = tch::no_grad_guard();
            for t in self.k.iter_mut().chain(self.v.iter_mut()) {
                let src = t.f_select(0, from as i64)?.f_narrow(0, 0, len as i64)?;
                t.f_select(0, to as i64)?
                    .f_narrow(0, 0, len as i64)?
                    .f_copy_(&src)?;
            }
        }
        self.lens[to] = len;
        Ok(())
    }

    /// Maps the rows of the next forward's batch to slots: row i reads and appends `slots[i]`.
    /// The mapping stays until changed. Slots must be distinct.
    pub fn select_slots(&mut self, slots: &[usize]) -> Result<()> {
        for (i, s) in slots.iter().enumerate() {
            if *s >= self.slots() {
                bail!(
                    "select_slots: slot {s} out of range ({} slots)",
                    self.slots()
                );
            }
            if slots[..i].contains(s) {
                bail!("select_slots: slot {s} listed twice");
            }
        }
        self.selected = Some(slots.to_vec());
        Ok(())
    }

    /// The slots rows map to for a batch of `batch` rows.
    pub(crate) fn row_slots(&self, batch: usize) -> Result<Vec<usize>> {
        match &self.selected {
            Some(s) if s.len() == batch => Ok(s.clone()),
            Some(s) => bail!(
                "KV cache: {} slots selected but the batch has {batch} rows",
                s.len()
            ),
            None if batch <= self.slots() => Ok((0..batch).collect()),
            None => bail!(
                "KV cache has {} slots but the batch has {batch} rows",
                self.slots()
            ),
        }
    }

    pub(crate) fn set_len(&mut self, slot: usize, len: usize) {
        self.lens[slot] = len;
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }
}
