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
    /// The fused op when this build has it and `SPAR_KERNELS` is not `off`, else the naive one.
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
    /// ATen ops; they run only after a first-use check against the ATen ops on the device ([`kernels_verified`])
    /// and not with `SPAR_KERNELS=off`.
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
        LogprobPath::Auto => fused_available(),
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

/// Whether the fused op's CUDA epilogue kernels may run with `weight`'s device and dtype: checked once per
/// (device, dtype) against the ATen ops on a small problem (log-probs, entropy, argmax and the gradient of a
/// loss using both w.r.t. the hidden states, at temperature 0.7, chunks that do not divide the tokens). A
/// mismatch (a kernel bug, an unexpected device) turns them off for the process with a warning; the ATen ops
/// compute the same thing. Always false off CUDA.
pub fn kernels_verified(weight: &Tensor) -> Result<bool> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CHECKED: Mutex<Option<HashMap<(i64, Kind), bool>>> = Mutex::new(None);
    let tch::Device::Cuda(d) = weight.device() else {
        return Ok(false);
    };
    if !matches!(weight.kind(), Kind::Float | Kind::BFloat16) {
        return Ok(false);
    }
    let key = (d as i64, weight.kind());
    let mut guard = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(ok) = map.get(&key) {
        return Ok(*ok);
    }
    let (ok, report) = tch::with_grad(|| check_kernels(weight))?;
    if !ok {
        eprintln!(
            "spar-model: the fused log-prob CUDA kernels disagree with the ATen ops on cuda:{d} ({:?}: {report}); \
             using the ATen ops",
            weight.kind()
        );
    }
    map.insert(key, ok);
    Ok(ok)
}

/// One comparison of the kernel and ATen epilogues; (agree, what was measured).
fn check_kernels(weight: &Tensor) -> Result<(bool, String)> {
    let (v, h) = (weight.size()[0], weight.size()[1]);
    let dev = weight.device();
    let n = 37i64;
    let w = weight.f_detach()?;
    // Hidden states with the scale of the weight's rows inverted: logits of order a few units.
    let scale = 3.0
        / (w.f_to_kind(Kind::Float)?
            .f_square()?
            .f_mean(Kind::Float)?
            .double_value(&[])
            * h as f64)
            .sqrt()
            .max(1e-6);
    // Deterministic inputs: the check must not draw from torch's generators (a run's random stream).
    let base = Tensor::f_arange(n * h, (Kind::Float, dev))?
        .f_mul_scalar(0.7311)?
        .f_sin()?
        .f_mul_scalar(scale * 2.0f64.sqrt())?
        .f_reshape([n, h])?;
    let targets = Tensor::f_arange(n, (Kind::Int64, dev))?
        .f_mul_scalar(7919)?
        .f_remainder(v)?;
    let wts = Tensor::f_linspace(-1.0, 2.0, n, (Kind::Float, dev))?;
    let run = |kernels: bool| -> Result<Vec<Tensor>> {
        let x = base.f_to_kind(w.kind())?.f_set_requires_grad(true)?;
        let o = spar_kernels::fused_logprob::fused_linear_logprob(
            &x, &w, &targets, 0.7, 16, true, true, kernels,
        )?;
        let ent = o.entropy.expect("asked for");
        o.logp
            .f_mul(&wts)?
            .f_sum(Kind::Float)?
            .f_add(&ent.f_mul(&wts.f_flip([0])?)?.f_sum(Kind::Float)?)?
            .f_backward()?;
        Ok(vec![
            o.logp.f_detach()?,
            ent.f_detach()?,
            x.grad(),
            o.argmax.expect("asked for"),
        ])
    };
    let (k, a) = (run(true)?, run(false)?);
    let rel = |x: &Tensor, y: &Tensor| -> Result<f64> {
        let (x, y) = (x.f_to_kind(Kind::Double)?, y.f_to_kind(Kind::Double)?);
        let d = x.f_sub(&y)?.f_abs()?.f_max()?.double_value(&[]);
        Ok(d / y.f_abs()?.f_max()?.double_value(&[]).max(1e-30))
    };
    let (lp, ent, gh) = (rel(&k[0], &a[0])?, rel(&k[1], &a[1])?, rel(&k[2], &a[2])?);
    let same_argmax = k[3].f_eq_tensor(&a[3])?.f_all()?.int64_value(&[]) != 0;
    let report = format!(
        "relative differences: log-probs {lp:.2e}, entropy {ent:.2e}, grad hidden {gh:.2e}; argmax equal {same_argmax}"
    );
    let ok = lp <= 1e-4 && ent <= 1e-3 && gh <= 2e-2 && same_argmax && lp.is_finite();
    Ok((ok, report))
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

    #[test]
    fn auto_chunk_bounds_one_chunk_of_logits() {
        assert_eq!(auto_chunk(151_936), 1024);
        assert_eq!(auto_chunk(1 << 20), 256);
        assert_eq!(auto_chunk(100), 1024);
        assert!(auto_chunk(1 << 30) >= 1);
    }
}
