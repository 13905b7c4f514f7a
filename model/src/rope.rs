//! Rotary position embeddings, computed exactly as transformers' Qwen3 rotary embedding: inverse frequencies in
//! float32 (`1 / base^(arange(0, d, 2) / d)`, then the scaling variant), `cos`/`sin` of `position * inv_freq`
//! duplicated over both halves, times the variant's attention factor, cast to the activation dtype.

use crate::config::{Qwen3Config, RopeScaling};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// Inverse frequencies and the cos/sin post-scaling factor of one model.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
    attention_scaling: f64,
}

impl Rope {
    /// Builds the frequencies for `config` on `device`.
    pub fn new(config: &Qwen3Config, device: Device) -> Result<Self> {
        let dim = config.head_dim as i64;
        let base = config.rope_theta;
        let exps = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(dim as f64)?;
        let pos_freqs = Tensor::f_pow_scalar(base, &exps)?;
        let default_inv = pos_freqs.f_reciprocal()?;
        let (inv_freq, attention_scaling) = match &config.rope_scaling {
            None => (default_inv, 1.0),
            Some(RopeScaling::Linear { factor }) => (default_inv.f_div_scalar(*factor)?, 1.0),
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
            }) => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let att = match attention_factor {
                    Some(a) => *a,
                    None => match (mscale, mscale_all_dim) {
                        (Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                            get_mscale(*factor, *m) / get_mscale(*factor, *ma)
                        }
                        _ => get_mscale(*factor, 1.0),
                    },
                };
                let d = dim as f64;
                let corr = |rot: f64| {
                    (d * ((*original_max_position_embeddings as f64)
                        / (rot * 2.0 * std::f64::consts::PI))
                        .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(d - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let ramp = Tensor::f_arange(dim / 2, (Kind::Float, Device::Cpu))?
                    .f_sub_scalar(low)?
                    .f_div_scalar(high - low)?
                    .f_clamp(0.0, 1.0)?;
                let extra_factor = ramp.f_neg()?.f_add_scalar(1.0)?; // 1 - ramp
                let inv_interp = pos_freqs.f_mul_scalar(*factor)?.f_reciprocal()?;
                let inv_extra = pos_freqs.f_reciprocal()?;
                let one_minus = extra_factor.f_neg()?.f_add_scalar(1.0)?;
                let inv = inv_interp
                    .f_mul(&one_minus)?
                    .f_add(&inv_extra.f_mul(&extra_factor)?)?;
                (inv, att)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wl = old / low_freq_factor;
                let high_wl = old / high_freq_factor;
                let wavelen = default_inv
                    .f_reciprocal()?
                    .f_mul_scalar(2.0 * std::f64::consts::PI)?;
                let scaled = default_inv.f_div_scalar(*factor)?;
                let llama = scaled.f_where_self(&wavelen.f_gt(low_wl)?, &default_inv)?;
                let smooth = wavelen
                    .f_reciprocal()?
                    .f_mul_scalar(old)?
                    .f_sub_scalar(*low_freq_factor)?
                    .f_div_scalar(high_freq_factor - low_freq_factor)?;
                let smoothed = smooth
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_mul(&llama)?
                    .f_div_scalar(*factor)?
                    .f_add(&smooth.f_mul(&llama)?)?;
                let medium = wavelen
                    .f_ge(high_wl)?
                    .f_logical_and(&wavelen.f_le(low_wl)?)?;
                (smoothed.f_where_self(&medium, &llama)?, 1.0)
            }
        };
        Ok(Rope {
            inv_freq: inv_freq.f_to_device(device)?,
            attention_scaling,
        })
    }

    /// `(cos, sin)`, each `[B, T, head_dim]` in `kind`, for integer positions `[B, T]`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let (mut cos, mut sin) = (emb.f_cos()?, emb.f_sin()?);
        if self.attention_scaling != 1.0 {
            cos = cos.f_mul_scalar(self.attention_scaling)?;
            sin = sin.f_mul_scalar(self.attention_scaling)?;
        }
        Ok((cos.f_to_kind(kind)?, sin.f_to_kind(kind)?))
    }
}

/// `sin` with the sign of `rotate_half` folded in, `cat(-sin[.., ..D/2], sin[.., D/2..])`, for
/// [`apply_rotary_folded`]: `rotate_half(x) * sin == x.roll(D/2) * folded` exactly, since negation is exact.
pub fn fold_rotate_half_sign(sin: &Tensor) -> Result<Tensor> {
    let d = sin.size().last().copied().unwrap_or(0);
    let (s1, s2) = (sin.f_narrow(-1, 0, d / 2)?, sin.f_narrow(-1, d / 2, d / 2)?);
    Ok(Tensor::f_cat(&[&s1.f_neg()?, &s2], -1)?)
}

/// [`apply_rotary`] with `folded = fold_rotate_half_sign(sin)`, computed once per forward: one roll where
/// `rotate_half` takes two slices, a negation and a cat, so autograd's backward is one roll and two multiplies
/// instead of ten kernels (the training step's backward on the GPU is bound by kernel launches). Bit for bit the
/// same values and gradients.
pub fn apply_rotary_folded(x: &Tensor, cos: &Tensor, folded: &Tensor) -> Result<Tensor> {
    let d = x.size().last().copied().unwrap_or(0);
    let rot = x.f_roll([d / 2], [-1])?;
    Ok(x.f_mul(&cos.f_unsqueeze(1)?)?
        .f_add(&rot.f_mul(&folded.f_unsqueeze(1)?)?)?)
}

/// `x * cos + rotate_half(x) * sin` for `x: [B, H, T, D]`, `cos`/`sin: [B, T, D]`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.f_unsqueeze(1)?;
    let sin = sin.f_unsqueeze(1)?;
    let d = x.size().last().copied().unwrap_or(0);
    let x1 = x.f_narrow(-1, 0, d / 2)?;
    let x2 = x.f_narrow(-1, d / 2, d / 2)?;
    let rot = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    Ok(x.f_mul(&cos)?.f_add(&rot.f_mul(&sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Output and gradient of `x` through `f` under a fixed upstream gradient.
    fn with_grad(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, up: &Tensor) -> (Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let y = f(&x);
        let g = Tensor::run_backward(&[(&y * up).sum(Kind::Float)], &[&x], false, false);
        (y.detach(), g[0].shallow_clone())
    }

    #[test]
    fn folded_rotation_is_rotate_half_bit_for_bit_with_gradients() {
        for kind in [Kind::Float, Kind::BFloat16] {
            tch::manual_seed(0);
            let x = Tensor::randn([2, 3, 5, 8], (Kind::Float, Device::Cpu)).to_kind(kind);
            let up = Tensor::randn([2, 3, 5, 8], (Kind::Float, Device::Cpu)).to_kind(kind);
            let angles = Tensor::randn([2, 5, 4], (Kind::Float, Device::Cpu)) * 3.0;
            let emb = Tensor::cat(&[&angles, &angles], -1);
            let (cos, sin) = (emb.cos().to_kind(kind), emb.sin().to_kind(kind));
            let folded = fold_rotate_half_sign(&sin).unwrap();
            let (y0, g0) = with_grad(|x| apply_rotary(x, &cos, &sin).unwrap(), &x, &up);
            let (y1, g1) = with_grad(|x| apply_rotary_folded(x, &cos, &folded).unwrap(), &x, &up);
            assert!(y0.equal(&y1), "{kind:?}: values differ");
            assert!(g0.equal(&g1), "{kind:?}: gradients differ");
            // Not vacuous: the rotation moves values between the halves.
            assert!(!y1.equal(&x.f_mul(&cos.unsqueeze(1)).unwrap()));
        }
    }
}
