//! Prefill of new tokens into the KV cache through the decode step's fused weights and kernels.
//!
//! A consultation appends a turn of a few to a few hundred tokens to a cached history, many times a round. The
//! plain cached forward ([`Qwen3Model::forward`]) issues about 86 top-level torch ops a layer on the CPU trace of
//! a 28-layer model (about 65 on a GPU, where RMSNorm is one kernel): separate q, k, v GEMMs, RoPE as a composition
//! of small ops, the cache writes. A prefill is then ~1,800 host dispatches whatever its size, tens of
//! milliseconds of host time (the H100 runs measured ~70 ms per prefill forward, docs/benchmarks.md). This path
//! issues about 30 a layer, doing what the decode step
//! ([`crate::graph_decode`]) does, with every new token of every row as one row of the fused kernels:
//!
//! - one GEMM for q, k and v ([`FusedLayers`]);
//! - one kernel for the q and k norms, RoPE and the cache writes of every token
//!   ([`spar_kernels::decode_ops::qk_norm_rope_store`]: token `j` of row `i` is flat cache row `slot_i * width + held_i + j`);
//! - attention over each row's cached keys: on a CUDA model in bf16 / fp16 the new tokens stay packed (no
//!   padding) and flash attention's varlen kernel reads each row's keys where they sit in the cache
//!   ([`spar_kernels::varlen_attention`]: about 15 host ops a layer in all, no gather of scattered slots, no
//!   mask); elsewhere the rows are right-padded to the longest and SDPA runs with the query heads of a KV head
//!   stacked along the query axis and one additive mask built once per prefill;
//! - the residual add fused with the next norm, and one GEMM for the MLP's gate and up.
//!
//! Where a kernel does not apply (CPU, another dtype) its torch composition runs instead, so the path computes
//! the plain forward's values everywhere (summation order aside); the CPU tests compare the two, the GPU tests
//! both paths.

use crate::cache::KvCache;
use crate::fused_layers::{FusedLayers, first_input_norm, mlp_and_next_norm, queries_and_store};
use crate::qwen3::{Qwen3Model, grouped_query_attention, stack_mask};
use anyhow::{Result, bail, ensure};
use spar_kernels::varlen_attention;
use tch::{Kind, Tensor};

/// What a fused prefill hands back.
pub struct PrefillOutput {
    /// `[b, vocab]` logits of each row's last new token, in the model dtype.
    pub logits: Tensor,
    /// `[b, t, n_moe_layers, k]` int64 chosen experts of every new token (rows right-padded to the longest), as
    /// [`Qwen3Model::forward`] returns them; None for a dense model. Padding positions hold whatever the path
    /// computed for them (the packed path: 0); only a row's own tokens mean anything.
    pub routed_experts: Option<Tensor>,
}

/// Appends `tokens` to each `(slot, tokens)` row's cached sequence and returns the logits after each row's last
/// token. Slots must be distinct, tokens non-empty. Advances the slots' lengths like a cached forward. The new
/// tokens go packed through flash attention over the cache where it applies ([`packs`]), else right-padded to
/// the longest row through SDPA; the padded path is meant for turns, where [`Qwen3Model::stacks_query_heads`]
/// holds (a long chunk works too but its stacked mask outweighs the plain forward's copy of the keys).
pub fn prefill(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &mut KvCache,
    rows: &[(usize, &[u32])],
) -> Result<PrefillOutput> {
    prefill_with(model, fused, cache, rows, true)
}

/// Whether [`prefill`] takes the packed path for `model` (a CUDA model in bf16 or fp16, heads of a multiple of 8
/// dimensions up to 256, flash attention not refused; `SPAR_VARLEN_PREFILL=0`: never): any turn length then.
pub fn packs(model: &Qwen3Model) -> bool {
    varlen_attention::applies(model.device(), model.kind(), model.config.head_dim as i64)
}

/// [`prefill`], the packed path allowed or not (`packed`: tests compare the two).
pub fn prefill_with(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &mut KvCache,
    rows: &[(usize, &[u32])],
    packed: bool,
) -> Result<PrefillOutput> {
    let turns = Turns::new(model, cache, rows)?;
    let _g = tch::no_grad_guard();
    if packed
        && packs(model)
        && let Some(out) = prefill_packed(model, fused, cache, rows, &turns)?
    {
        return Ok(out);
    }
    prefill_padded(model, fused, cache, rows, &turns)
}

/// The rows of a prefill, checked: each row's token ids, cached length, new tokens and physical slot.
pub(crate) struct Turns {
    /// `[b * t]` int64 ids, each row right-padded with 0 to the longest, `t`.
    ids: Vec<i64>,
    t: usize,
    held: Vec<i64>,
    valid: Vec<i64>,
    phys: Vec<i64>,
}

impl Turns {
    pub(crate) fn new(
        model: &Qwen3Model,
        cache: &KvCache,
        rows: &[(usize, &[u32])],
    ) -> Result<Turns> {
        let c = &model.config;
        let b = rows.len();
        let t = rows.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
        ensure!(
            b > 0 && rows.iter().all(|(_, p)| !p.is_empty()),
            "a prefill needs rows with tokens"
        );
        ensure!(
            cache.device() == model.device(),
            "KV cache is on {:?}, model on {:?}",
            cache.device(),
            model.device()
        );
        let max_len = cache.max_len();
        let mut ids = vec![0i64; b * t];
        let (mut held, mut valid, mut phys) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (slot, toks)) in rows.iter().enumerate() {
            if *slot >= cache.slots() || rows[..i].iter().any(|(s, _)| s == slot) {
                bail!(
                    "prefill: slot {slot} out of range or listed twice ({} slots)",
                    cache.slots()
                );
            }
            if cache.len(*slot) + t > max_len {
                bail!(
                    "KV cache overflow: a slot would hold {} tokens, max_len is {max_len}",
                    cache.len(*slot) + t
                );
            }
            for (j, &tok) in toks.iter().enumerate() {
                ensure!(
                    (tok as usize) < c.vocab_size,
                    "token {tok} is outside the vocabulary"
                );
                ids[i * t + j] = tok as i64;
            }
            held.push(cache.len(*slot) as i64);
            valid.push(toks.len() as i64);
            phys.push(cache.physical(*slot) as i64);
        }
        Ok(Turns {
            ids,
            t,
            held,
            valid,
            phys,
        })
    }

    /// The new tokens of every row.
    pub(crate) fn tokens(&self) -> usize {
        self.valid.iter().map(|v| *v as usize).sum()
    }
}

/// The packed path's device inputs as built on the host, for `rows` rows of `tokens` new tokens in all (at least
/// the real rows and tokens; a CUDA graph's bucket may ask for more, see [`packed_layout`]).
pub(crate) struct PackedLayout {
    /// `[3 T + R]` int64: token ids, positions, flat cache rows written (`slot x width + position`), and each
    /// row's last token (its index among the `T`).
    pub(crate) long: Vec<i64>,
    /// `[3 R + 2]` int32: query offsets `cu_q` (`R + 1`), key starts (`R + 1`, the kernel's `cu_seqlens_k`), key
    /// counts (`R`).
    pub(crate) int: Vec<i32>,
    /// Each real row's cached length after the prefill.
    pub(crate) used: Vec<i64>,
    /// The longest real row's new tokens and keys.
    pub(crate) max_q: i64,
    pub(crate) max_k: i64,
}

/// The packed layout of `turns` over `tokens` (`T`) token rows and `rows` (`R`) attention rows. The eager path
/// asks for exactly its rows and tokens; a CUDA graph ([`crate::graph_prefill`]) for its bucket's. Rows past the
/// real ones are empty, except that padding tokens (`T` past the real tokens) form the last row: they attend
/// over the first keys of the cache's flat row 0 (read only, any values), and write their keys and values into
/// the scratch column `max_len` of the first row's slot, which nothing reads. Padding thus stays finite and
/// touches no real row (every kernel but attention works token by token). Needs `rows > b` when `tokens > n`.
pub(crate) fn packed_layout(
    cache: &KvCache,
    rows: &[(usize, &[u32])],
    turns: &Turns,
    tokens: usize,
    rows_out: usize,
) -> Result<PackedLayout> {
    let (b, n) = (rows.len(), turns.tokens());
    let pad = tokens.saturating_sub(n);
    ensure!(
        tokens >= n && rows_out >= b + usize::from(pad > 0),
        "a packed prefill of {b} rows and {n} tokens cannot take {rows_out} rows and {tokens} tokens"
    );
    let width = cache.max_len() as i64 + 1;
    let starts: Vec<i64> = turns.phys.iter().map(|p| p * width).collect();
    let mut long = Vec::with_capacity(3 * tokens + rows_out);
    long.extend(
        rows.iter()
            .flat_map(|(_, p)| p.iter().map(|&tok| tok as i64)),
    );
    long.extend(std::iter::repeat_n(0, pad));
    let positions = || {
        turns
            .held
            .iter()
            .zip(&turns.valid)
            .flat_map(|(h, v)| *h..h + v)
    };
    long.extend(positions());
    long.extend(0..pad as i64);
    long.extend(
        starts
            .iter()
            .zip(turns.held.iter().zip(&turns.valid))
            .flat_map(|(s, (h, v))| s + h..s + h + v),
    );
    long.extend(std::iter::repeat_n(starts[0] + width - 1, pad));
    let mut cu = vec![0i64; rows_out + 1];
    for i in 0..rows_out {
        cu[i + 1] = cu[i] + turns.valid.get(i).copied().unwrap_or(0);
    }
    cu[rows_out] += pad as i64;
    long.extend(cu[1..=b].iter().map(|e| e - 1));
    long.extend(std::iter::repeat_n(0, rows_out - b));
    let used: Vec<i64> = turns
        .held
        .iter()
        .zip(&turns.valid)
        .map(|(h, v)| h + v)
        .collect();
    let mut int: Vec<i32> = cu.iter().map(|&x| x as i32).collect();
    // k_start has R + 1 entries (the kernel's cu_seqlens_k); with k_used it reads only the first R.
    int.extend(starts.iter().map(|&x| x as i32));
    int.extend(std::iter::repeat_n(0, rows_out - b));
    int.push((turns.phys.iter().max().copied().unwrap_or(0) + 1) as i32 * width as i32);
    int.extend(used.iter().map(|&x| x as i32));
    int.extend(std::iter::repeat_n(0, rows_out - b));
    if pad > 0 {
        *int.last_mut().expect("rows_out > b") = pad as i32;
    }
    Ok(PackedLayout {
        long,
        int,
        max_q: turns.t as i64,
        max_k: used.iter().max().copied().unwrap_or(1),
        used,
    })
}

/// The packed forward over device inputs laid out as [`PackedLayout`] (`tokens` = `T`, `rows` = `R`): every
/// token one row of the GEMMs and fused kernels, attention through flash's varlen kernel over each row's keys in
/// place ([`varlen_attention::cached_varlen_attention`]; `max_q`, `max_k` bound its rows' new tokens and keys).
/// Returns the `[R, vocab]` logits of each row's last token and an MoE model's experts of every token
/// (`[T, n_moe, k]`), or None when flash refuses the first layer's call. No host reads and shapes fixed by its
/// arguments: a CUDA graph captures it as is.
#[allow(clippy::too_many_arguments)]
pub(crate) fn packed_forward(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &KvCache,
    long: &Tensor,
    int: &Tensor,
    (tokens, rows): (i64, i64),
    (max_q, max_k): (i64, i64),
    grouped: bool,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let c = &model.config;
    let (kind, eps) = (model.kind(), c.rms_norm_eps);
    let (nh, nkv, d) = c.attention_dims();
    let n = tokens;
    let ids = long.f_narrow(0, 0, n)?;
    let pos = long.f_narrow(0, n, n)?;
    let write_at = long.f_narrow(0, 2 * n, n)?;
    let last = long.f_narrow(0, 3 * n, rows)?;
    let cu_q = int.f_narrow(0, 0, rows + 1)?;
    let k_start = int.f_narrow(0, rows + 1, rows + 1)?;
    let k_used = int.f_narrow(0, 2 * rows + 2, rows)?;
    let (cos, sin) = model.rope.cos_sin(&pos.f_view([n, 1])?, kind)?; // [n, 1, d]

    let mut x = Tensor::f_embedding(&model.embed, &ids, model.pad_idx(), false, false)?; // [n, H]
    let mut hin = first_input_norm(model, &x)?;
    let mut experts = Vec::new();
    for (li, (layer, fl)) in model.layers.iter().zip(fused.iter()).enumerate() {
        let a = &layer.attn;
        let (kc, vc) = cache.layer(layer.index);
        let qkv = hin.f_linear(&fl.qkv, None::<Tensor>)?.f_view([n, 1, -1])?;
        let q = queries_and_store(a, &qkv, &cos, &sin, &write_at, (kc, vc), (nh, nkv, d), eps)?
            .f_reshape([n, nh, d])?;
        let Some(o) = varlen_attention::cached_varlen_attention(
            &q, kc, vc, &cu_q, &k_start, &k_used, max_q, max_k,
        )?
        else {
            ensure!(
                li == 0,
                "flash attention refused layer {li} of a prefill after taking layer 0"
            );
            return Ok(None);
        };
        let o = o.f_reshape([n, nh * d])?.f_linear(&a.o, None::<Tensor>)?;
        let (x2, hn, chosen) = mlp_and_next_norm(model, li, fl, &x, &o, grouped)?;
        experts.extend(chosen);
        x = x2;
        hin = hn;
    }
    // `hin` is the last layer's output through the final norm: the head reads each row's last token.
    let logits = hin
        .f_index_select(0, &last)?
        .f_linear(model.lm_head_weight(), None::<Tensor>)?;
    let experts = if experts.is_empty() {
        None
    } else {
        Some(Tensor::f_stack(&experts, 1)?)
    };
    Ok(Some((logits, experts)))
}

/// An MoE prefill's experts, packed `[n, layers, k]` (the real tokens first, row after row), as the padded path
/// returns them: `[b, t, layers, k]`, rows right-padded to the longest (padding positions 0).
pub(crate) fn experts_padded(packed: &Tensor, turns: &Turns) -> Result<Tensor> {
    let dev = packed.device();
    let b = turns.valid.len();
    let t = turns.t as i64;
    let at: Vec<i64> = (0..b)
        .flat_map(|i| (0..turns.valid[i]).map(move |j| i as i64 * t + j))
        .collect();
    let packed = packed.f_narrow(0, 0, at.len() as i64)?;
    let at = Tensor::from_slice(&at).f_to_device(dev)?;
    let mut sizes = packed.size();
    sizes[0] = b as i64 * t;
    let padded =
        Tensor::f_zeros(sizes.as_slice(), (packed.kind(), dev))?.f_index_copy(0, &at, &packed)?;
    Ok(padded.f_view([b as i64, t, sizes[1], -1])?)
}

/// The packed path (see [`packed_forward`]): about 15 host ops a layer. None when flash refuses the first layer's
/// call (the padded path then runs; the keys and values layer 0 wrote are the ones it writes again).
fn prefill_packed(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &mut KvCache,
    rows: &[(usize, &[u32])],
    turns: &Turns,
) -> Result<Option<PrefillOutput>> {
    let dev = model.device();
    let (b, n) = (rows.len(), turns.tokens());
    let layout = packed_layout(cache, rows, turns, n, b)?;
    // Two uploads: the int64 and the int32 inputs.
    let long = Tensor::from_slice(&layout.long).f_to_device(dev)?;
    let int = Tensor::from_slice(&layout.int).f_to_device(dev)?;
    let Some((logits, experts)) = packed_forward(
        model,
        fused,
        cache,
        &long,
        &int,
        (n as i64, b as i64),
        (layout.max_q, layout.max_k),
        true,
    )?
    else {
        return Ok(None);
    };
    for ((slot, _), u) in rows.iter().zip(&layout.used) {
        cache.set_len(*slot, *u as usize);
    }
    let routed_experts = experts.map(|e| experts_padded(&e, turns)).transpose()?;
    Ok(Some(PrefillOutput {
        logits,
        routed_experts,
    }))
}

/// The padded path: rows right-padded to the longest turn, SDPA over each row's cached keys with the query heads
/// of a KV head stacked along the query axis and one additive mask built once.
fn prefill_padded(
    model: &Qwen3Model,
    fused: &FusedLayers,
    cache: &mut KvCache,
    rows: &[(usize, &[u32])],
    turns: &Turns,
) -> Result<PrefillOutput> {
    let c = &model.config;
    let (dev, kind, eps) = (model.device(), model.kind(), c.rms_norm_eps);
    let (nh, nkv, d) = c.attention_dims();
    let n_rep = nh / nkv;
    let width = cache.max_len() as i64 + 1;
    let Turns {
        ids,
        held,
        valid,
        phys,
        ..
    } = turns;
    let (b, t) = (rows.len() as i64, turns.t as i64);
    let read_len = held.iter().max().copied().unwrap_or(0) + t;

    let to_dev = |v: &[i64]| -> Result<Tensor> { Ok(Tensor::from_slice(v).f_to_device(dev)?) };
    let ids = to_dev(ids)?.f_view([b, t])?;
    let held_t = to_dev(held)?.f_view([b, 1])?;
    let phys_t = to_dev(phys)?;
    let pos = held_t.f_add(&Tensor::f_arange(t, (Kind::Int64, dev))?.f_view([1, t])?)?; // [b, t]
    let write_at = phys_t
        .f_view([b, 1])?
        .f_mul_scalar(width)?
        .f_add(&pos)?
        .f_view([b * t])?;
    // Query (i, j) sees key k if k <= its position and k is a real token of row i; a padding query sees itself.
    let keys = Tensor::f_arange(read_len, (Kind::Int64, dev))?.f_view([1, 1, read_len])?;
    let qpos = pos.f_unsqueeze(-1)?;
    let end = held_t
        .f_add(&to_dev(valid)?.f_view([b, 1])?)?
        .f_view([b, 1, 1])?;
    let visible = keys
        .f_le_tensor(&qpos)?
        .f_logical_and(&keys.f_lt_tensor(&end)?)?
        .f_logical_or(&keys.f_eq_tensor(&qpos)?)?; // [b, t, read_len]
    // Additive, in the model dtype, stacked for the query heads of each KV head: built once, not per layer.
    let additive = Tensor::f_zeros([b, t, read_len], (kind, dev))?
        .f_masked_fill(&visible.f_logical_not()?, f64::NEG_INFINITY)?
        .f_unsqueeze(1)?;
    let mask = stack_mask(&additive, n_rep)?; // [b, 1, n_rep * t, read_len]
    let (cos, sin) = model.rope.cos_sin(&pos.f_view([b * t, 1])?, kind)?; // [b t, 1, d]
    let contiguous_from = phys.windows(2).all(|w| w[1] == w[0] + 1).then(|| phys[0]);
    // Rows' cached keys or values, [b, nkv, read_len, d]: a view when the slots are contiguous, else a gather.
    let rows_of = |cache_layer: &Tensor| -> Result<Tensor> {
        let window = cache_layer.f_narrow(1, 0, read_len)?;
        let picked = match contiguous_from {
            Some(s) => window.f_narrow(0, s, b)?,
            None => window.f_index_select(0, &phys_t)?,
        };
        Ok(picked.f_transpose(1, 2)?)
    };

    let mut x = Tensor::f_embedding(&model.embed, &ids, model.pad_idx(), false, false)?; // [b, t, H]
    let mut hin = first_input_norm(model, &x)?;
    let mut experts = Vec::new();
    for (li, (layer, fl)) in model.layers.iter().zip(fused.iter()).enumerate() {
        let a = &layer.attn;
        let (kc, vc) = cache.layer(layer.index);
        let qkv = hin
            .f_linear(&fl.qkv, None::<Tensor>)?
            .f_view([b * t, 1, -1])?;
        let q = queries_and_store(a, &qkv, &cos, &sin, &write_at, (kc, vc), (nh, nkv, d), eps)?;
        let q = q.f_reshape([b, t, nh, d])?.f_transpose(1, 2)?; // [b, nh, t, d]
        let o = grouped_query_attention(&q, &rows_of(kc)?, &rows_of(vc)?, &mask)?
            .f_transpose(1, 2)?
            .f_reshape([b, t, nh * d])?
            .f_linear(&a.o, None::<Tensor>)?;
        let (x2, hn, chosen) = mlp_and_next_norm(model, li, fl, &x, &o, true)?;
        experts.extend(chosen);
        x = x2;
        hin = hn;
    }
    for ((slot, _), (h0, n)) in rows.iter().zip(held.iter().zip(valid)) {
        cache.set_len(*slot, (h0 + n) as usize);
    }
    // `hin` is the last layer's output through the final norm: the head reads each row's last real token.
    let last = to_dev(valid)?.f_sub_scalar(1)?;
    let logits = hin
        .f_index(&[Some(Tensor::f_arange(b, (Kind::Int64, dev))?), Some(last)])?
        .f_linear(model.lm_head_weight(), None::<Tensor>)?;
    let routed_experts = if experts.is_empty() {
        None
    } else {
        let n_moe = experts.len() as i64;
        Some(Tensor::f_stack(&experts, 1)?.f_view([b, t, n_moe, -1])?)
    };
    Ok(PrefillOutput {
        logits,
        routed_experts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Qwen3Config;
    use tch::Device;

    /// The host side of a graph bucket's layout: real rows first, an empty row, then the padding tokens' row,
    /// which reads slot 0's first keys and writes into the first row's scratch column.
    #[test]
    fn a_padded_layout_keeps_real_rows_in_place_and_gives_padding_a_row_of_its_own() {
        let cfg = Qwen3Config::from_json_str(
            r#"{"model_type":"qwen3","vocab_size":128,"hidden_size":32,"intermediate_size":64,
                "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":16}"#,
            "test",
        )
        .unwrap();
        let m = Qwen3Model::random(cfg, Device::Cpu, Kind::Float, 1).unwrap();
        let mut cache = KvCache::new(&m.config, 4, 16, Device::Cpu, Kind::Float);
        cache.set_len(2, 3); // slot 2 holds 3 tokens; slot 0 is fresh
        let rows: [(usize, &[u32]); 2] = [(2, &[5, 6]), (0, &[7])];
        let turns = Turns::new(&m, &cache, &rows).unwrap();
        let width = 17; // max_len + the scratch column
        let l = packed_layout(&cache, &rows, &turns, 8, 4).unwrap();
        let scratch = 2 * width + 16;
        assert_eq!(
            l.long,
            [
                vec![5, 6, 7, 0, 0, 0, 0, 0],          // ids
                vec![3, 4, 0, 0, 1, 2, 3, 4],          // positions (padding: 0..5)
                vec![2 * width + 3, 2 * width + 4, 0], // rows written
                vec![scratch; 5],                      // padding: the scratch column
                vec![1, 2, 0, 0],                      // each row's last token
            ]
            .concat()
        );
        let (ks, kw) = (2 * width as i32, 3 * width as i32);
        assert_eq!(
            l.int,
            [
                vec![0, 2, 3, 3, 8],   // cu_q: the padding row owns tokens 3..8
                vec![ks, 0, 0, 0, kw], // key starts
                vec![5, 1, 0, 5],      // key counts
            ]
            .concat()
        );
        assert_eq!((l.used, l.max_q, l.max_k), (vec![5, 1], 2, 5));
        // The eager path's own layout has no padding.
        let exact = packed_layout(&cache, &rows, &turns, 3, 2).unwrap();
        assert_eq!(exact.int, [0, 2, 3, ks, 0, kw, 5, 1]);
        // Padding tokens need a row of their own.
        let e = packed_layout(&cache, &rows, &turns, 8, 2).err().unwrap();
        assert!(
            format!("{e}").contains("cannot take 2 rows and 8 tokens"),
            "{e}"
        );
    }
}
