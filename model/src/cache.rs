//! Slot-based KV cache for incremental decoding and continuous batching.
//!
//! Each layer holds `k, v: [slots, max_len + 1, n_kv_heads, head_dim]` (token-major so one `index_put_` writes a
//! whole `[B, T, n_kv, D]` projection). Slot lengths live on the host: the engine knows how many tokens it
//! feeds, so positions and masks are built without reading anything back from the device.
//!
//! Two details serve the CUDA-graph decode path ([`crate::graph_decode`]): position `max_len` of every slot is
//! a scratch column that padding rows of a fixed-size graph batch write into (never read as real data), and
//! callers' slot numbers are logical: a graph batch of `N` rows reads physical slots `0..N` as one strided view,
//! so the cache can move a sequence to a low physical slot (swapping contents) without its caller noticing.

use crate::config::Qwen3Config;
use anyhow::{Result, bail};
use spar_kernels::fixed_address::{Backing, FixedAddressRange};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Per-layer keys and values of up to `slots` sequences of up to `max_len` tokens each.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    lens: Vec<usize>,
    /// Logical slot (what callers name) -> physical row of `k`/`v`, and its inverse.
    phys: Vec<usize>,
    owner: Vec<usize>,
    max_len: usize,
    /// Row i of the next forward's batch reads and appends slot `selected[i]`; None = rows map to 0..B.
    selected: Option<Vec<usize>>,
    device: Device,
    /// Every layer's key and value addresses, and the shape: graphs captured over this cache are valid for a
    /// cache with the same id ([`KvCache::try_new_at`] gives one across allocations).
    storage_id: u64,
    /// The physical memory under `k` and `v` when they live in a [`FixedAddressRange`] (declared after them:
    /// the views go first, then the memory).
    backing: Option<Backing>,
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

    /// Shape of one layer's key (or value) tensor: `[slots, max_len + 1, kv_heads, head_dim]`.
    fn layer_shape(config: &Qwen3Config, slots: usize, max_len: usize) -> [i64; 4] {
        [
            slots as i64,
            max_len as i64 + 1,
            config.num_key_value_heads as i64,
            config.head_dim as i64,
        ]
    }

    /// Bytes one slot of `max_len` tokens takes (keys and values of every layer, in `kind`).
    pub fn bytes_per_slot(config: &Qwen3Config, max_len: usize, kind: Kind) -> u64 {
        let per_layer: i64 = Self::layer_shape(config, 1, max_len).iter().product();
        2 * config.num_hidden_layers as u64 * per_layer as u64 * kind.elt_size_in_bytes() as u64
    }

    /// Allocates the cache, returning an error (e.g. out of memory) instead of panicking.
    pub fn try_new(
        config: &Qwen3Config,
        slots: usize,
        max_len: usize,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        check_size(slots, max_len)?;
        let shape = Self::layer_shape(config, slots, max_len);
        let mut k = Vec::with_capacity(config.num_hidden_layers);
        let mut v = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            k.push(Tensor::f_zeros(shape, (kind, device))?);
            v.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(Self::over(k, v, slots, max_len, device, None))
    }

    fn over(
        k: Vec<Tensor>,
        v: Vec<Tensor>,
        slots: usize,
        max_len: usize,
        device: Device,
        backing: Option<Backing>,
    ) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for t in k.iter().chain(&v) {
            (t.data_ptr() as usize, t.size(), format!("{:?}", t.kind())).hash(&mut h);
        }
        KvCache {
            k,
            v,
            lens: vec![0; slots],
            phys: (0..slots).collect(),
            owner: (0..slots).collect(),
            max_len,
            selected: None,
            device,
            storage_id: h.finish(),
            backing,
        }
    }

    /// Bytes [`KvCache::try_new_at`] lays the cache out in: every layer's keys and values, each starting on
    /// a 256-byte boundary.
    pub fn bytes_at_fixed_address(
        config: &Qwen3Config,
        slots: usize,
        max_len: usize,
        kind: Kind,
    ) -> usize {
        2 * config.num_hidden_layers * Self::aligned_layer_bytes(config, slots, max_len, kind)
    }

    fn aligned_layer_bytes(
        config: &Qwen3Config,
        slots: usize,
        max_len: usize,
        kind: Kind,
    ) -> usize {
        let elems: i64 = Self::layer_shape(config, slots, max_len).iter().product();
        (elems as usize * kind.elt_size_in_bytes()).div_ceil(256) * 256
    }

    /// Allocates the cache in `range`'s addresses, which it maps for as long as the cache lives (then gives
    /// the memory back to the driver). Caches of the same shape in the same range have the same
    /// storage id, so CUDA graphs captured over one replay over the next ([`crate::GraphDecoder`]).
    pub fn try_new_at(
        config: &Qwen3Config,
        slots: usize,
        max_len: usize,
        kind: Kind,
        range: &Arc<FixedAddressRange>,
    ) -> Result<Self> {
        check_size(slots, max_len)?;
        let need = Self::bytes_at_fixed_address(config, slots, max_len, kind);
        if need > range.bytes() {
            bail!(
                "KV cache of {slots} slots x {max_len} tokens needs {need} bytes; the fixed address range holds {}",
                range.bytes()
            );
        }
        let backing = range.map()?;
        let device = Device::Cuda(range.ordinal());
        let shape = Self::layer_shape(config, slots, max_len);
        let layer_bytes = Self::aligned_layer_bytes(config, slots, max_len, kind) as u64;
        let _g = tch::no_grad_guard();
        let mut views = Vec::with_capacity(2 * config.num_hidden_layers);
        for i in 0..2 * config.num_hidden_layers as u64 {
            let at = (range.base() + i * layer_bytes) as *const u8;
            // SAFETY: `at` lies inside the mapped range with `layer_bytes` after it (checked above), and the
            // cache keeps the mapping (`backing`) alive as long as these views.
            let mut t = unsafe { Tensor::f_from_blob(at, &shape, &[], kind, device)? };
            // Fresh physical pages hold anything: the same zeros as a torch allocation.
            let _ = t.f_zero_()?;
            views.push(t);
        }
        let v = views.split_off(config.num_hidden_layers);
        Ok(Self::over(views, v, slots, max_len, device, Some(backing)))
    }

    /// The fixed address range the cache lives in ([`KvCache::try_new_at`]), if any.
    pub fn fixed_range(&self) -> Option<&Arc<FixedAddressRange>> {
        self.backing.as_ref().map(|b| b.range())
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
            let (pf, pt) = (self.phys[from] as i64, self.phys[to] as i64);
            for t in self.k.iter_mut().chain(self.v.iter_mut()) {
                let src = t.f_select(0, pf)?.f_narrow(0, 0, len as i64)?;
                t.f_select(0, pt)?
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

    /// The physical row of logical `slot`.
    pub(crate) fn physical(&self, slot: usize) -> usize {
        self.phys[slot]
    }

    /// Moves the logical `slots` into physical rows `0..bound` (swapping contents with whatever sequences
    /// sat there), so that a graph batch of `bound` rows covers them. Cheap when nothing has to move.
    pub(crate) fn gather_low(&mut self, slots: &[usize], bound: usize) -> Result<()> {
        if bound > self.slots() {
            bail!(
                "gather_low: {bound} rows asked of a cache of {} slots",
                self.slots()
            );
        }
        let mut taken = vec![false; bound];
        for &s in slots {
            if self.phys[s] < bound {
                taken[self.phys[s]] = true;
            }
        }
        let mut free = (0..bound).filter(|p| !taken[*p]);
        for &s in slots {
            let hi = self.phys[s];
            if hi < bound {
                continue;
            }
            let Some(lo) = free.next() else {
                bail!("gather_low: {} slots do not fit {bound} rows", slots.len());
            };
            let other = self.owner[lo];
            let n = self.lens[s].max(self.lens[other]).min(self.max_len) as i64;
            if n > 0 {
                let _g = tch::no_grad_guard();
                let dev = self.device;
                let from = Tensor::from_slice(&[hi as i64, lo as i64]).f_to_device(dev)?;
                let to = Tensor::from_slice(&[lo as i64, hi as i64]).f_to_device(dev)?;
                for t in self.k.iter_mut().chain(self.v.iter_mut()) {
                    let mut window = t.f_narrow(1, 0, n)?;
                    let rows = window.f_index_select(0, &from)?;
                    let _ = window.f_index_copy_(0, &to, &rows)?;
                }
            }
            self.phys.swap(s, other);
            self.owner.swap(hi, lo);
        }
        Ok(())
    }

    /// Keys and values of `layer`, `[slots, max_len + 1, n_kv_heads, head_dim]`, physical row order.
    pub(crate) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.k[layer], &self.v[layer])
    }

    /// Identity of the storage (graphs captured over this cache are only valid for it).
    pub(crate) fn storage_id(&self) -> u64 {
        self.storage_id
    }

    pub(crate) fn set_len(&mut self, slot: usize, len: usize) {
        self.lens[slot] = len;
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }
}

fn check_size(slots: usize, max_len: usize) -> Result<()> {
    if slots == 0 || max_len == 0 {
        bail!(
            "KV cache needs at least one slot and max_len > 0 (got {slots} slots, max_len {max_len})"
        );
    }
    Ok(())
}
