//! A simple single-batch generation loop over the KV cache: greedy or sampled (temperature, top-k, top-p).
//! The high-throughput engine lives in `spar-rollout`; this one serves `spar generate` and the tests.

use crate::cache::KvCache;
use crate::qwen3::{ForwardInput, Qwen3Model};
use anyhow::{Result, ensure};
use tch::{Kind, Tensor};

/// How the next token is chosen.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = off).
    pub top_p: f64,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Generation stops after any of these ids (the id is kept in the output).
    pub stop_ids: Vec<u32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop_ids: Vec::new(),
            seed: 0,
        }
    }
}

/// One finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token under the unmodified model distribution.
    pub logprobs: Vec<f32>,
    /// Whether a stop id ended it (else the token budget did).
    pub stopped: bool,
}

/// Generates a continuation of `prompt` (one sequence) with a fresh KV cache.
pub fn generate(model: &Qwen3Model, prompt: &[u32], params: &SamplingParams) -> Result<Generation> {
    ensure!(!prompt.is_empty(), "generate: empty prompt");
    let dev = model.device();
    let max_len = prompt.len() + params.max_new_tokens + 1;
    let mut cache = KvCache::try_new(&model.config, 1, max_len, dev, model.kind())?;
    tch::manual_seed(params.seed as i64);
    let _g = tch::no_grad_guard();
    let ids: Vec<i64> = prompt.iter().map(|t| *t as i64).collect();
    let mut input = Tensor::from_slice(&ids).f_view([1, -1])?.f_to_device(dev)?;
    let mut out = Generation {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        stopped: false,
    };
    for _ in 0..params.max_new_tokens {
        let o = model.forward(ForwardInput::new(&input).cache(&mut cache))?;
        let last = o.logits.f_select(1, -1)?.f_to_kind(Kind::Float)?; // [1, V]
        let next = choose(&last, params)?;
        let lp = last
            .f_log_softmax(-1, Kind::Float)?
            .f_gather(1, &next, false)?;
        // One host read per token: a single-sequence loop must see the token to stop on it.
        let tok = next.int64_value(&[0, 0]) as u32;
        let lp = lp.double_value(&[0, 0]);
        // NaN logits (weights or activations gone non-finite, e.g. an overflowing dtype) would still "choose"
        // a token, the same one every step: an error instead of a reply of garbage.
        ensure!(
            !lp.is_nan(),
            "generate: the model's logits are not finite (NaN) at generated token {}; its weights or activations \
             overflowed (try --dtype f32) or are damaged",
            out.tokens.len() + 1
        );
        out.tokens.push(tok);
        out.logprobs.push(lp as f32);
        if params.stop_ids.contains(&tok) {
            out.stopped = true;
            break;
        }
        input = next;
    }
    Ok(out)
}

/// Picks the next token `[B, 1]` from float32 logits `[B, V]`.
pub fn choose(logits: &Tensor, p: &SamplingParams) -> Result<Tensor> {
    if p.temperature <= 0.0 {
        return Ok(logits.f_argmax(-1, true)?);
    }
    let mut l = logits.f_div_scalar(p.temperature)?;
    let v = l.size()[1];
    if p.top_k > 0 && (p.top_k as i64) < v {
        let (kth, _) = l.f_topk(p.top_k as i64, -1, true, true)?;
        let thresh = kth.f_narrow(1, p.top_k as i64 - 1, 1)?;
        l = l.f_masked_fill(&l.f_lt_tensor(&thresh)?, f64::NEG_INFINITY)?;
    }
    if p.top_p < 1.0 {
        let (sorted, idx) = l.f_sort(-1, true)?;
        let probs = sorted.f_softmax(-1, Kind::Float)?;
        let cum = probs.f_cumsum(-1, Kind::Float)?;
        // Drop a token when the mass before it already reaches top_p (the top token always stays).
        let drop_sorted = cum.f_sub(&probs)?.f_ge(p.top_p)?;
        let drop = drop_sorted.f_scatter(-1, &idx, &drop_sorted)?;
        l = l.f_masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    Ok(l.f_softmax(-1, Kind::Float)?.f_multinomial(1, false)?)
}
