//! Per-token log-probabilities of target tokens (and the entropy and argmax of each token's distribution), from
//! logits or, without ever materialising the `[tokens x vocab]` logits, from the final hidden states and the LM
//! head's weight.
//!
//! [`head_logprobs`] is the one entry point for the second case: the fused path is the libtorch shim's autograd
//! function ([`spar_kernels::fused_logprob`]), which walks the tokens in chunks in its forward and again in its
//! backward (recomputing each chunk's logits), so only `chunk x vocab` floats exist at a time; the naive path
//! ([`naive_head_logprobs`], the reference and the fallback when the shim is absent or `SPAR_KERNELS=off`)
//! computes the logits whole and takes [`logits_logprobs`] of them. Both compute the logits in the model dtype
//! (what the plain head gives), divide them by the temperature and take the log-softmax in float32 (float64 for
//! double models), so they agree up to the order of floating-point sums.
//!
//! [`LmHead`] is a model's output before the vocabulary projection or after it, with one `logprobs` for both.

use anyhow::{Result, bail, ensure};
use tch::{Kind, Tensor};

/// Which implementation [`head_logprobs`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogprobPath {
    /// The fused op when this build has it and `SPAR_KERNELS` is not `off` (on CUDA: unless its first-use check
    /// on the device failed, see [`kernels_verified`]), else the naive one.
    #[default]
    Auto,
    /// The chunked autograd function of the libtorch shim (an error if the build lacks it).
    Fused,
    /// Whole logits, then [`logits_logprobs`].
    Naive,
}

/// What to compute besides the targets' log-probs, and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogprobOptions {
    /// The distribution is `softmax(logits / temperature)`.
    pub temperature: f64,
    /// Also the entropy of each token's distribution (carries gradient when the inputs do).
    pub entropy: bool,
    /// Also each token's most likely token id (int64, no gradient).
    pub argmax: bool,
    /// Tokens per chunk of the fused path; 0: [`auto_chunk`].
    pub chunk: usize,
    pub path: LogprobPath,
    /// Fused path on CUDA: the epilogue kernels of spar-kernels (one pass over each chunk's logits) rather than
    /// ATen ops; they run only after a first-use check against the whole-logits composition on the device
    /// ([`kernels_verified`]) and not with `SPAR_KERNELS=off`.
    pub kernels: bool,
}

impl Default for LogprobOptions {
    fn default() -> Self {
        LogprobOptions {
            temperature: 1.0,
            entropy: false,
            argmax: false,
            chunk: 0,
            path: LogprobPath::Auto,
            kernels: true,
        }
    }
}

impl LogprobOptions {
    /// Log-probs under `softmax(logits / temperature)`, nothing else.
    pub fn at(temperature: f64) -> Self {
        LogprobOptions {
            temperature,
            ..Default::default()
        }
    }
    pub fn with_entropy(mut self) -> Self {
        self.entropy = true;
        self
    }
    pub fn with_argmax(mut self) -> Self {
        self.argmax = true;
        self
    }
    pub fn chunk(mut self, tokens: usize) -> Self {
        self.chunk = tokens;
        self
    }
    pub fn path(mut self, path: LogprobPath) -> Self {
        self.path = path;
        self
    }
    /// See [`LogprobOptions::kernels`].
    pub fn kernels(mut self, on: bool) -> Self {
        self.kernels = on;
        self
    }
}

/// Per-token results, each shaped like the targets.
pub struct TokenLogprobs {
    /// log p(target), float32 (float64 for double models).
    pub logp: Tensor,
    /// Entropy of each token's distribution, when asked for.
    pub entropy: Option<Tensor>,
    /// The most likely token id of each position (int64), when asked for.
    pub argmax: Option<Tensor>,
}

/// Whether [`LogprobPath::Auto`] runs the fused op in this process.
pub fn fused_available() -> bool {
    spar_kernels::fused_logprob::available() && spar_kernels::cuda::enabled()
}

/// The default tokens per chunk for a vocabulary of `vocab`: 1024, fewer when one chunk's float32 logits would
/// exceed 1 GiB (a multiple of 64 when that leaves at least 64).
pub fn auto_chunk(vocab: i64) -> usize {
    const BUDGET: i64 = 1 << 30;
    let fit = (BUDGET / (vocab.max(1) * 4)).max(1);
    let c = fit.min(1024);
    (if c >= 64 { c / 64 * 64 } else { c }) as usize
}

/// Log-probs of `targets` (any shape `[...]`, int64) under `softmax(hidden @ weight^T / temperature)`, with
/// `hidden [..., H]` (the final, normalised hidden states) and `weight [V, H]` (the LM head, same dtype).
/// Outputs have the targets' shape and carry gradient to `hidden` and `weight` (the entropy too).
pub fn head_logprobs(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    opts: &LogprobOptions,
) -> Result<TokenLogprobs> {
    let hs = hidden.size();
    let ws = weight.size();
    ensure!(
        !hs.is_empty() && ws.len() == 2 && hs[hs.len() - 1] == ws[1],
        "head log-probs: hidden {hs:?} and weight {ws:?} do not match ([..., H] and [V, H])"
    );
    ensure!(
        targets.size() == hs[..hs.len() - 1],
        "head log-probs: targets {:?} do not match hidden {hs:?}",
        targets.size()
    );
    ensure!(
        opts.temperature > 0.0 && opts.temperature.is_finite(),
        "head log-probs: temperature must be positive, got {}",
        opts.temperature
    );
    let fused = match opts.path {
        LogprobPath::Auto => fused_available() && cuda_check(weight)? != CudaCheck::Naive,
        LogprobPath::Fused => {
            if !spar_kernels::fused_logprob::available() {
                bail!("head log-probs: this build has no fused log-prob op");
            }
            true
        }
        LogprobPath::Naive => false,
    };
    if !fused {
        return naive_head_logprobs(hidden, weight, targets, opts);
    }
    let shape = targets.size();
    let h = hidden.f_reshape([-1, ws[1]])?;
    let t = targets
        .f_to_device(hidden.device())?
        .f_to_kind(Kind::Int64)?
        .f_reshape([-1])?;
    let chunk = match opts.chunk {
        0 => auto_chunk(ws[0]),
        c => c,
    };
    let kernels = opts.kernels && spar_kernels::cuda::enabled() && kernels_verified(weight)?;
    let out = spar_kernels::fused_logprob::fused_linear_logprob(
        &h,
        weight,
        &t,
        opts.temperature,
        chunk,
        opts.entropy,
        opts.argmax,
        kernels,
    )?;
    let back = |x: Tensor| x.f_reshape(shape.as_slice());
    Ok(TokenLogprobs {
        logp: back(out.logp)?,
        entropy: out.entropy.map(back).transpose()?,
        argmax: out.argmax.map(back).transpose()?,
    })
}

/// What the first-use check on a CUDA device found the fused op fit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CudaCheck {
    /// Not a CUDA tensor of float32 / bf16, or the check itself could not run: nothing checked.
    NotApplicable,
    /// The fused op with its epilogue kernels agrees with the whole-logits composition.
    Kernels,
    /// Only with the ATen epilogue.
    Aten,
    /// Neither: [`LogprobPath::Auto`] takes the naive path on this device.
    Naive,
}

/// The first-use check of the fused op on `weight`'s CUDA device and dtype, once per process: the fused op
/// with the epilogue kernels, then with the ATen epilogue, against the whole-logits composition on a small
/// problem with the real head (log-probs, entropy, argmax and the gradients w.r.t. hidden states and weight of a
/// loss using both, at temperature 0.7, chunks that do not divide the tokens). A disagreement (a kernel bug, an
/// op behaving differently on an unexpected device) is reported once on stderr and routes
/// [`LogprobPath::Auto`] around it.
fn cuda_check(weight: &Tensor) -> Result<CudaCheck> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CHECKED: Mutex<Option<HashMap<(i64, Kind), CudaCheck>>> = Mutex::new(None);
    let tch::Device::Cuda(d) = weight.device() else {
        return Ok(CudaCheck::NotApplicable);
    };
    if !matches!(weight.kind(), Kind::Float | Kind::BFloat16)
        || !spar_kernels::fused_logprob::available()
    {
        return Ok(CudaCheck::NotApplicable);
    }
    let key = (d as i64, weight.kind());
    let mut guard = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(&key) {
        return Ok(*c);
    }
    let (kernels, aten) = tch::with_grad(|| -> Result<(String, String)> {
        let whole = check_run(weight, None)?;
        let k = check_compare(&check_run(weight, Some(true))?, &whole, weight.kind())?;
        let a = check_compare(&check_run(weight, Some(false))?, &whole, weight.kind())?;
        Ok((k, a))
    })?;
    let c = if kernels.is_empty() {
        CudaCheck::Kernels
    } else if aten.is_empty() {
        CudaCheck::Aten
    } else {
        CudaCheck::Naive
    };
    if c != CudaCheck::Kernels {
        eprintln!(
            "spar-model: fused log-prob check on cuda:{d} ({:?}): epilogue kernels: {kernels}; ATen epilogue: {}; \
             using {}",
            weight.kind(),
            if aten.is_empty() { "agrees" } else { &aten },
            if c == CudaCheck::Aten {
                "the ATen epilogue"
            } else {
                "whole logits"
            }
        );
    }
    map.insert(key, c);
    Ok(c)
}

/// Whether the fused op's CUDA epilogue kernels may run with `weight`'s device and dtype (see `cuda_check`).
/// Always false off CUDA.
pub fn kernels_verified(weight: &Tensor) -> Result<bool> {
    Ok(cuda_check(weight)? == CudaCheck::Kernels)
}

/// One run of the check: `kernels` Some(on) the fused op (with / without the epilogue kernels), None the
/// whole-logits composition. Returns (logp, entropy, argmax, grad hidden, grad weight).
fn check_run(weight: &Tensor, kernels: Option<bool>) -> Result<Vec<Tensor>> {
    let (v, h) = (weight.size()[0], weight.size()[1]);
    let dev = weight.device();
    let n = 37i64;
    let w = weight.f_detach()?.copy().f_set_requires_grad(true)?;
    // Hidden states with the scale of the weight's rows inverted: logits of order a few units. Deterministic:
    // the check must not draw from torch's generators (a run's random stream).
    let scale = 3.0
        / (w.f_to_kind(Kind::Float)?
            .f_square()?
            .f_mean(Kind::Float)?
            .double_value(&[])
            * h as f64)
            .sqrt()
            .max(1e-6);
    let x = Tensor::f_arange(n * h, (Kind::Float, dev))?
        .f_mul_scalar(0.7311)?
        .f_sin()?
        .f_mul_scalar(scale * 2.0f64.sqrt())?
        .f_reshape([n, h])?
        .f_to_kind(w.kind())?
        .f_set_requires_grad(true)?;
    let targets = Tensor::f_arange(n, (Kind::Int64, dev))?
        .f_mul_scalar(7919)?
        .f_remainder(v)?;
    let wts = Tensor::f_linspace(-1.0, 2.0, n, (Kind::Float, dev))?;
    let o = match kernels {
        Some(k) => {
            let o = spar_kernels::fused_logprob::fused_linear_logprob(
                &x, &w, &targets, 0.7, 16, true, true, k,
            )?;
            TokenLogprobs {
                logp: o.logp,
                entropy: o.entropy,
                argmax: o.argmax,
            }
        }
        None => naive_head_logprobs(
            &x,
            &w,
            &targets,
            &LogprobOptions::at(0.7).with_entropy().with_argmax(),
        )?,
    };
    let ent = o.entropy.expect("asked for");
    o.logp
        .f_mul(&wts)?
        .f_sum(Kind::Float)?
        .f_add(&ent.f_mul(&wts.f_flip([0])?)?.f_sum(Kind::Float)?)?
        .f_backward()?;
    Ok(vec![
        o.logp.f_detach()?,
        ent.f_detach()?,
        o.argmax.expect("asked for"),
        x.grad(),
        w.grad(),
    ])
}

/// Empty when `got` agrees with `want` (tolerances of the float32 / bf16 parity tests), else what differs.
fn check_compare(got: &[Tensor], want: &[Tensor], kind: Kind) -> Result<String> {
    let rel = |x: &Tensor, y: &Tensor| -> Result<f64> {
        let (x, y) = (x.f_to_kind(Kind::Double)?, y.f_to_kind(Kind::Double)?);
        let d = x.f_sub(&y)?.f_abs()?.f_max()?.double_value(&[]);
        Ok(d / y.f_abs()?.f_max()?.double_value(&[]).max(1e-30))
    };
    let (out_tol, grad_tol) = if kind == Kind::Float {
        (1e-4, 1e-3)
    } else {
        (1e-2, 5e-2)
    };
    let mut bad = Vec::new();
    for (i, what, tol) in [
        (0, "log-probs", out_tol),
        (1, "entropy", out_tol),
        (3, "grad hidden", grad_tol),
        (4, "grad weight", grad_tol),
    ] {
        let r = rel(&got[i], &want[i])?;
        // NaN fails too.
        if r.is_nan() || r > tol {
            bad.push(format!("{what} relative difference {r:.2e}"));
        }
    }
    let agree = got[2]
        .f_eq_tensor(&want[2])?
        .f_to_kind(Kind::Float)?
        .f_mean(Kind::Float)?
        .double_value(&[]);
    if agree < 0.9 {
        bad.push(format!("argmax agrees on {agree:.2} of the tokens"));
    }
    Ok(bad.join(", "))
}

/// The naive [`head_logprobs`]: the whole logits `hidden @ weight^T`, then [`logits_logprobs`].
pub fn naive_head_logprobs(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    opts: &LogprobOptions,
) -> Result<TokenLogprobs> {
    let logits = hidden.f_linear(weight, None::<Tensor>)?;
    logits_logprobs(&logits, targets, opts)
}

/// Log-probs (and the entropy / argmax asked for) from logits `[..., V]` and targets `[...]`: the logits divided
/// by the temperature and log-softmaxed in float32 (float64 for double logits).
pub fn logits_logprobs(
    logits: &Tensor,
    targets: &Tensor,
    opts: &LogprobOptions,
) -> Result<TokenLogprobs> {
    let ls = logits.size();
    ensure!(
        !ls.is_empty() && targets.size() == ls[..ls.len() - 1],
        "log-probs: logits {ls:?} and targets {:?} do not match ([..., V] and [...])",
        targets.size()
    );
    let acc = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let logp_all = if opts.temperature == 1.0 {
        logits.f_log_softmax(-1, acc)?
    } else {
        logits
            .f_to_kind(acc)?
            .f_div_scalar(opts.temperature)?
            .f_log_softmax(-1, acc)?
    };
    let t = targets
        .f_to_device(logits.device())?
        .f_to_kind(Kind::Int64)?;
    let logp = logp_all
        .f_gather(-1, &t.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?;
    let entropy = if opts.entropy {
        Some(
            logp_all
                .f_exp()?
                .f_mul(&logp_all)?
                .f_sum_dim_intlist([-1i64].as_slice(), false, acc)?
                .f_neg()?,
        )
    } else {
        None
    };
    let argmax = if opts.argmax {
        Some(logp_all.f_argmax(-1, false)?)
    } else {
        None
    };
    Ok(TokenLogprobs {
        logp,
        entropy,
        argmax,
    })
}

/// Per-token log-probabilities: `log_softmax(logits)[.., targets]`, computed in float32. `logits: [B, T, V]`,
/// `targets: [B, T]` int64 → `[B, T]` float32.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Tensor {
    try_token_logprobs(logits, targets).unwrap_or_else(|e| panic!("token_logprobs: {e:#}"))
}

/// Fallible [`token_logprobs`].
pub fn try_token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let ls = logits.size();
    if ls.len() != 3 || targets.size() != ls[..2] {
        bail!(
            "token_logprobs: logits {:?} and targets {:?} do not match ([B, T, V] and [B, T])",
            ls,
            targets.size()
        );
    }
    let lp = logits.f_log_softmax(-1, Kind::Float)?;
    Ok(lp
        .f_gather(
            -1,
            &targets.f_to_device(logits.device())?.f_unsqueeze(-1)?,
            false,
        )?
        .f_squeeze_dim(-1)?)
}

/// A model's output at the LM head: the logits, or the final normalised hidden states with the head's weight
/// (the logits never computed whole).
pub enum LmHead {
    /// `[B, T, V]`.
    Logits(Tensor),
    /// `hidden [B, T, H]`, `weight [V, H]`.
    Hidden { hidden: Tensor, weight: Tensor },
}

impl LmHead {
    /// Per-token log-probs of `targets` `[B, T]` (see [`head_logprobs`] / [`logits_logprobs`]).
    pub fn logprobs(&self, targets: &Tensor, opts: &LogprobOptions) -> Result<TokenLogprobs> {
        match self {
            LmHead::Logits(l) => logits_logprobs(l, targets, opts),
            LmHead::Hidden { hidden, weight } => head_logprobs(hidden, weight, targets, opts),
        }
    }

    /// The logits `[B, T, V]`, computed whole when this is [`LmHead::Hidden`] (for consumers that need them all,
    /// e.g. a value head over the logits).
    pub fn logits(&self) -> Result<Tensor> {
        match self {
            LmHead::Logits(l) => Ok(l.shallow_clone()),
            LmHead::Hidden { hidden, weight } => Ok(hidden.f_linear(weight, None::<Tensor>)?),
        }
    }

    /// A zero scalar whose graph reaches everything the head's output depends on (the hidden states and the
    /// head's weight): its backward runs every gradient hook with zero gradients.
    pub fn zero_loss(&self) -> Result<Tensor> {
        Ok(match self {
            LmHead::Logits(l) => l.f_sum(Kind::Float)?.f_mul_scalar(0.0)?,
            LmHead::Hidden { hidden, weight } => hidden
                .f_sum(Kind::Float)?
                .f_add(&weight.f_sum(Kind::Float)?)?
                .f_mul_scalar(0.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Random `hidden [n, h]`, `weight [v, h]` (leaves that require grad) of `kind`, peaked enough that the
    /// distributions are far from uniform, and targets.
    fn inputs(n: i64, h: i64, v: i64, kind: Kind, seed: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let hidden = (Tensor::randn([n, h], (Kind::Float, Device::Cpu)) * 1.5)
            .to_kind(kind)
            .set_requires_grad(true);
        let weight = (Tensor::randn([v, h], (Kind::Float, Device::Cpu)) * 0.8)
            .to_kind(kind)
            .set_requires_grad(true);
        let targets = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
        (hidden, weight, targets)
    }

    /// A loss that uses log-probs and entropy with uneven per-token weights (as the policy loss does).
    fn loss(o: &TokenLogprobs, n: i64) -> Tensor {
        let w1 = Tensor::linspace(-1.0, 2.0, n, (Kind::Float, Device::Cpu));
        let w2 = Tensor::linspace(0.5, -0.7, n, (Kind::Float, Device::Cpu));
        (&o.logp.to_kind(Kind::Float) * w1).sum(Kind::Float)
            + (o.entropy.as_ref().unwrap().to_kind(Kind::Float) * w2).sum(Kind::Float)
    }

    /// max |a - b| / max(max |b|, 1e-12).
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
        let d = (&a - &b).abs().max().double_value(&[]);
        d / b.abs().max().double_value(&[]).max(1e-12)
    }

    struct Run {
        logp: Tensor,
        entropy: Tensor,
        argmax: Tensor,
        grad_h: Tensor,
        grad_w: Tensor,
    }

    fn run(x: &(Tensor, Tensor, Tensor), temperature: f64, path: LogprobPath, chunk: usize) -> Run {
        let leaf = |t: &Tensor| t.detach().copy().set_requires_grad(true);
        let (hidden, weight, targets) = (leaf(&x.0), leaf(&x.1), &x.2);
        let n = hidden.size()[0];
        let opts = LogprobOptions::at(temperature)
            .with_entropy()
            .with_argmax()
            .chunk(chunk)
            .path(path);
        let o = head_logprobs(&hidden, &weight, targets, &opts).unwrap();
        loss(&o, n).backward();
        Run {
            logp: o.logp.detach(),
            entropy: o.entropy.unwrap().detach(),
            argmax: o.argmax.unwrap(),
            grad_h: hidden.grad(),
            grad_w: weight.grad(),
        }
    }

    fn compare(kind: Kind, temperature: f64, chunk: usize, tol: f64) {
        // Drawn once (torch's generator is shared by the tests running in parallel).
        let x = inputs(37, 24, 101, kind, 7);
        let a = run(&x, temperature, LogprobPath::Fused, chunk);
        let b = run(&x, temperature, LogprobPath::Naive, 0);
        for (what, x, y) in [
            ("logp", &a.logp, &b.logp),
            ("entropy", &a.entropy, &b.entropy),
            ("grad hidden", &a.grad_h, &b.grad_h),
            ("grad weight", &a.grad_w, &b.grad_w),
        ] {
            let r = rel(x, y);
            eprintln!("{kind:?} T={temperature} chunk={chunk}: {what} relative difference {r:.3e}");
            assert!(
                r <= tol,
                "{kind:?} T={temperature} chunk={chunk}: {what} differs by {r:.3e} (relative to its max), tolerance {tol:.0e}"
            );
        }
        assert_eq!(a.argmax, b.argmax);
        let acc = if kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        assert_eq!((a.logp.kind(), b.logp.kind()), (acc, acc));
    }

    #[test]
    fn fused_head_logprobs_match_naive_in_fp32() {
        if !spar_kernels::fused_logprob::available() {
            eprintln!("skipped: this build has no fused log-prob shim");
            return;
        }
        // Chunks that do not divide the 37 tokens, one token per chunk, and one chunk for all.
        for chunk in [1, 5, 16, 37, 1000] {
            for temperature in [1.0, 0.7, 1.3] {
                compare(Kind::Float, temperature, chunk, 1e-5);
            }
        }
    }

    #[test]
    fn fused_head_logprobs_match_naive_in_fp64_and_bf16() {
        if !spar_kernels::fused_logprob::available() {
            eprintln!("skipped: this build has no fused log-prob shim");
            return;
        }
        compare(Kind::Double, 0.7, 5, 1e-12);
        // bf16: the same bf16 logits per chunk; the gradients differ by bf16 rounding of the per-chunk weight
        // gradient (fused: float32 sum of the chunks' bf16 products; naive: one bf16 product).
        compare(Kind::BFloat16, 0.7, 5, 2e-2);
        // Against float64 on the same (bf16-valued) inputs, the fused weight gradient is no worse than the
        // naive one.
        let x = inputs(37, 24, 101, Kind::BFloat16, 7);
        let x64 = (
            x.0.to_kind(Kind::Double),
            x.1.to_kind(Kind::Double),
            x.2.shallow_clone(),
        );
        let f = run(&x, 0.7, LogprobPath::Fused, 5);
        let n = run(&x, 0.7, LogprobPath::Naive, 0);
        let r = run(&x64, 0.7, LogprobPath::Naive, 0);
        let (ef, en) = (rel(&f.grad_w, &r.grad_w), rel(&n.grad_w, &r.grad_w));
        let (hf, hn) = (rel(&f.grad_h, &r.grad_h), rel(&n.grad_h, &r.grad_h));
        eprintln!(
            "bf16 vs float64: grad weight fused {ef:.3e}, naive {en:.3e}; grad hidden fused {hf:.3e}, naive {hn:.3e}"
        );
        assert!(ef <= en * 1.5 + 1e-3 && hf <= hn * 1.5 + 1e-3);
    }

    #[test]
    fn fused_logprobs_without_entropy_or_weight_grad() {
        if !spar_kernels::fused_logprob::available() {
            return;
        }
        let (hidden, weight, targets) = inputs(9, 8, 13, Kind::Float, 3);
        let weight = weight.detach();
        let opts = LogprobOptions::at(1.0).chunk(4);
        let f = head_logprobs(&hidden, &weight, &targets, &opts.path(LogprobPath::Fused)).unwrap();
        assert!(f.entropy.is_none() && f.argmax.is_none());
        f.logp.sum(Kind::Float).backward();
        let g_fused = hidden.grad().copy();
        let _ = hidden.grad().zero_();
        let n = head_logprobs(&hidden, &weight, &targets, &opts.path(LogprobPath::Naive)).unwrap();
        n.logp.sum(Kind::Float).backward();
        assert!(rel(&g_fused, &hidden.grad()) <= 1e-5);
        assert!(rel(&f.logp, &n.logp) <= 1e-6);
        // No gradient anywhere: the forward alone (the old log-prob pass).
        let no = tch::no_grad(|| {
            head_logprobs(&hidden, &weight, &targets, &opts.path(LogprobPath::Fused)).unwrap()
        });
        assert!(!no.logp.requires_grad());
        // Batched shapes: [B, T, H] hidden, [B, T] targets.
        let h3 = hidden.detach().reshape([3, 3, 8]);
        let t3 = targets.reshape([3, 3]);
        let b = head_logprobs(&h3, &weight, &t3, &opts.path(LogprobPath::Fused)).unwrap();
        assert_eq!(b.logp.size(), [3, 3]);
        assert!(rel(&b.logp.reshape([-1]), &n.logp.detach()) <= 1e-6);
    }

    /// The first-use check's comparison (run on CUDA devices) on the CPU: the fused op agrees with whole logits
    /// in float32 and bf16, and a wrong result is reported.
    #[test]
    fn first_use_check_accepts_the_fused_op_and_reports_a_wrong_one() {
        if !spar_kernels::fused_logprob::available() {
            return;
        }
        for kind in [Kind::Float, Kind::BFloat16] {
            let w = (Tensor::arange(301 * 24, (Kind::Float, Device::Cpu)) * 0.37)
                .cos()
                .reshape([301, 24])
                .to_kind(kind);
            let whole = tch::with_grad(|| check_run(&w, None)).unwrap();
            let fused = tch::with_grad(|| check_run(&w, Some(true))).unwrap();
            assert_eq!(check_compare(&fused, &whole, kind).unwrap(), "", "{kind:?}");
            let mut bad: Vec<Tensor> = fused.iter().map(|t| t.copy()).collect();
            bad[4] = &bad[4] * 1.2;
            let report = check_compare(&bad, &whole, kind).unwrap();
            assert!(report.contains("grad weight"), "{report}");
            bad[0] = bad[0].full_like(f64::NAN);
            assert!(
                check_compare(&bad, &whole, kind)
                    .unwrap()
                    .contains("log-probs")
            );
        }
        // Off CUDA nothing is checked and the kernels never run.
        let w = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
        assert_eq!(cuda_check(&w).unwrap(), CudaCheck::NotApplicable);
        assert!(!kernels_verified(&w).unwrap());
    }

    #[test]
    fn auto_chunk_bounds_one_chunk_of_logits() {
        assert_eq!(auto_chunk(151_936), 1024);
        assert_eq!(auto_chunk(1 << 20), 256);
        assert_eq!(auto_chunk(100), 1024);
        assert!(auto_chunk(1 << 30) >= 1);
    }
}
