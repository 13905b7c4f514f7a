//! Temperature sampling of a batch of next tokens, all on the device: the engine's sampler for rows without
//! top-k, top-p or min-p, shared by its eager step (rollout's `sampling::sample`) and its CUDA-graph decode step
//! ([`crate::graph_decode`]), which runs it inside the graph: no host synchronisation, fixed shapes.
//!
//! Row `i` has a temperature `T_i` (`<= 0`: greedy), a log-prob temperature and a uniform `u_i` in `[0, 1)` drawn
//! by the caller from the row's own seeded stream. A sampling row takes the first token whose cumulative
//! probability under `softmax(logits / T_i)` exceeds `u_i` times the total (inverse CDF), a greedy row the
//! argmax; either token's log-prob is read from `log_softmax(logits / T_lp,i)`.

use anyhow::Result;
use tch::{Kind, Tensor};

/// The per-row inputs, one column a row: `[3, R]` float32 (temperature, log-prob temperature, uniform).
pub const PARAMS_ROWS: i64 = 3;

/// What [`sample_at_temperature`] returns.
pub struct TemperatureSample {
    /// `[R]` int64 chosen tokens.
    pub tokens: Tensor,
    /// `[R]` float32 log-probs of the chosen tokens.
    pub logprobs: Tensor,
    /// `[R, V]` float32 `log_softmax(logits / T_lp)` (the top log-probs some callers report are read from it).
    pub logp: Tensor,
}

/// Samples one token per row of `logits: [R, V]` under `params: [3, R]` (see the module documentation).
pub fn sample_at_temperature(logits: &Tensor, params: &Tensor) -> Result<TemperatureSample> {
    let v = logits.size().last().copied().unwrap_or(0);
    let logits = logits.f_to_kind(Kind::Float)?;
    let column = |i: i64| -> Result<Tensor> { Ok(params.f_select(0, i)?.f_unsqueeze(-1)?) };
    let (temperature, uniform) = (column(0)?, column(2)?);
    let logp = log_softmax_at_temperature(&logits, params)?;
    let argmax = logits.f_argmax(-1, false)?;
    let sampling = temperature.f_gt(0.0)?;
    let probs = logits
        .f_div(&temperature.f_where_scalarother(&sampling, 1.0)?)?
        .f_softmax(-1, Kind::Float)?;
    let sampled = inverse_cdf(&probs, &uniform, v)?;
    let tokens = sampled.f_where_self(&sampling.f_squeeze_dim(-1)?, &argmax)?;
    let logprobs = logp
        .f_gather(-1, &tokens.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?;
    Ok(TemperatureSample {
        tokens,
        logprobs,
        logp,
    })
}

/// `log_softmax(logits / T_lp)` in fp32, `[R, V]`, with each row's log-prob temperature from `params` (`[3, R]`).
pub fn log_softmax_at_temperature(logits: &Tensor, params: &Tensor) -> Result<Tensor> {
    let lp_temperature = params.f_select(0, 1)?.f_unsqueeze(-1)?;
    // Dividing by a temperature of exactly 1 changes no bit: one expression for tempered and plain log-probs.
    Ok(logits
        .f_to_kind(Kind::Float)?
        .f_div(&lp_temperature)?
        .f_log_softmax(-1, Kind::Float)?)
}

/// [`sample_at_temperature`]'s tokens and log-probs written into `out: [2, R]` float64 (token ids, then log-probs:
/// one host copy carries both), without the `[R, V]` log-softmax. On a GPU one kernel does it
/// (`decode_ops::temperature_pick_into`); elsewhere the composition. Graph-safe either way. The kernel sums in
/// another order: where a row's target falls within that rounding (~1e-6 of the mass) of a token's edge it may
/// take the neighbour, a valid inverse-CDF pick either way; rare for peaked logits, common over a random model's
/// ~150k comparable tokens. Returns the `[R, V]` log-softmax where the composition ran and computed it anyway
/// (None after the kernel), for callers that also report top log-probs.
pub fn pick_at_temperature_into(
    logits: &Tensor,
    params: &Tensor,
    out: &Tensor,
) -> Result<Option<Tensor>> {
    if spar_kernels::decode_ops::temperature_pick_into(logits, params, out)? {
        return Ok(None);
    }
    let s = sample_at_temperature(logits, params)?;
    let both = Tensor::f_stack(
        &[
            s.tokens.f_to_kind(Kind::Double)?,
            s.logprobs.f_to_kind(Kind::Double)?,
        ],
        0,
    )?;
    out.shallow_clone().f_copy_(&both)?;
    Ok(Some(s.logp))
}

/// Per row, the first index whose cumulative probability exceeds `uniform` (`[R, 1]`) times the row's total:
/// the count of cumulative values at or below that target, clamped to the vocabulary.
pub fn inverse_cdf(probs: &Tensor, uniform: &Tensor, v: i64) -> Result<Tensor> {
    let cum = probs.f_cumsum(-1, Kind::Float)?;
    let target = cum.f_select(-1, v - 1)?.f_unsqueeze(-1)?.f_mul(uniform)?;
    Ok(cum
        .f_le_tensor(&target)?
        .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)?
        .f_clamp_max(v - 1)?)
}
