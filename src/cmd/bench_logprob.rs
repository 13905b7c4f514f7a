//! `spar bench logprob`: per-token log-probs + entropy of the LM head (what the learner computes per micro-batch),
//! forward and backward, by the fused chunked op (`spar_model::token_logprobs`, never the whole logits) against
//! the naive path (whole logits, one log-softmax): seconds per step, seconds of the forward alone (the no-grad
//! old / reference log-prob pass) and the peak GPU memory. One JSON line per (tokens, chunk, path), then one line
//! comparing the two, and a parity line (fused vs naive at `--parity-tokens` on the same device).
use super::bench_forward::{bench_device, sync};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use spar_model::token_logprobs::{LogprobOptions, LogprobPath, auto_chunk, head_logprobs};
use spar_model::{TokenLogprobs, parse_kind};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// Token counts, comma-separated (one row each).
    #[arg(long, default_value = "4096,16384", value_delimiter = ',')]
    tokens: Vec<usize>,
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    #[arg(long, default_value_t = 151_936)]
    vocab: usize,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Tokens per chunk of the fused op, comma-separated (0: the automatic choice).
    #[arg(long, default_value = "0", value_delimiter = ',')]
    chunk: Vec<usize>,
    /// Which paths to run: fused (with the CUDA epilogue kernels where they apply), fused-aten (ATen ops for
    /// the per-chunk epilogue), naive (whole logits).
    #[arg(long, default_value = "naive,fused-aten,fused", value_delimiter = ',')]
    paths: Vec<String>,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// The loss also trains the entropy (an entropy bonus), as with `entropy_coef != 0`.
    #[arg(long)]
    entropy_grad: bool,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Tokens of the parity check (fused vs naive on this device); 0 skips it.
    #[arg(long, default_value_t = 1024)]
    parity_tokens: usize,
}

/// Inputs of one measurement: hidden `[n, H]` and weight `[V, H]` leaves that require grad, targets `[n]`.
struct Inputs {
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
}

fn inputs(n: usize, args: &Args, kind: Kind, device: Device) -> Result<Inputs> {
    tch::manual_seed(0);
    let (n, h, v) = (n as i64, args.hidden as i64, args.vocab as i64);
    // Scaled like a trained model's final hidden states and head: peaked distributions, not uniform ones.
    let hidden = (Tensor::f_randn([n, h], (Kind::Float, device))? * 2.0)
        .f_to_kind(kind)?
        .f_set_requires_grad(true)?;
    let weight = (Tensor::f_randn([v, h], (Kind::Float, device))? * (1.0 / (h as f64).sqrt()))
        .f_to_kind(kind)?
        .f_set_requires_grad(true)?;
    let targets = Tensor::f_randint(v, [n], (Kind::Int64, device))?;
    Ok(Inputs {
        hidden,
        weight,
        targets,
    })
}

/// A path of `--paths`: the implementation and, for the fused one, whether the CUDA epilogue kernels run.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Variant {
    path: LogprobPath,
    kernels: bool,
}

impl Variant {
    fn parse(name: &str) -> Result<Self> {
        let (path, kernels) = match name {
            "fused" => (LogprobPath::Fused, true),
            "fused-aten" => (LogprobPath::Fused, false),
            "naive" => (LogprobPath::Naive, false),
            other => bail!("unknown --paths entry {other:?} (fused, fused-aten or naive)"),
        };
        Ok(Variant { path, kernels })
    }
    fn name(&self) -> &'static str {
        match (self.path, self.kernels) {
            (LogprobPath::Naive, _) => "naive",
            (_, true) => "fused",
            (_, false) => "fused-aten",
        }
    }
}

fn options(args: &Args, variant: Variant, chunk: usize) -> LogprobOptions {
    LogprobOptions::at(args.temperature)
        .with_entropy()
        .chunk(chunk)
        .path(variant.path)
        .kernels(variant.kernels)
}

/// The learner's use of the outputs: a token-mean log-prob loss, plus an entropy bonus with `--entropy-grad`
/// (the entropy itself is always computed, for the statistics).
fn loss(o: &TokenLogprobs, entropy_grad: bool) -> Result<Tensor> {
    let mut l = o.logp.f_mean(Kind::Float)?.f_neg()?;
    let ent = o.entropy.as_ref().expect("asked for");
    if entropy_grad {
        l = l.f_sub(&ent.f_mean(Kind::Float)?.f_mul_scalar(0.01)?)?;
    } else {
        let _ = ent.f_detach()?.f_sum(Kind::Float)?;
    }
    Ok(l)
}

fn step(x: &Inputs, opts: &LogprobOptions, entropy_grad: bool) -> Result<()> {
    for t in [&x.hidden, &x.weight] {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.f_zero_()?;
        }
    }
    let o = head_logprobs(&x.hidden, &x.weight, &x.targets, opts)?;
    loss(&o, entropy_grad)?.f_backward()?;
    Ok(())
}

fn forward_only(x: &Inputs, opts: &LogprobOptions) -> Result<()> {
    tch::no_grad(|| head_logprobs(&x.hidden, &x.weight, &x.targets, opts).map(|_| ()))
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Times `f` over `iters` runs after `warmup`; (seconds per run, peak (allocated, reserved) bytes on CUDA).
fn measure(
    device: Device,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<(u64, u64)>)> {
    for _ in 0..warmup {
        f()?;
    }
    sync(device);
    if let Device::Cuda(d) = device {
        spar_kernels::cuda_memory::reset_peak_memory(d)?;
    }
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        f()?;
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64() / iters.max(1) as f64;
    let peak = match device {
        Device::Cuda(d) => Some(spar_kernels::cuda_memory::peak_memory(d)?),
        _ => None,
    };
    Ok((secs, peak))
}

/// One (tokens, chunk, path) row; an error (e.g. out of memory) is reported in the row, not raised.
fn row(args: &Args, n: usize, chunk: usize, variant: Variant, kind: Kind, device: Device) -> Value {
    let naive = variant.path == LogprobPath::Naive;
    let mut r = json!({
        "engine": "spar", "bench": "logprob", "path": variant.name(), "tokens": n,
        "hidden": args.hidden, "vocab": args.vocab, "dtype": args.dtype, "device": format!("{device:?}"),
        "chunk": if naive { Value::Null } else { json!(chunk) },
        "temperature": args.temperature, "entropy_grad": args.entropy_grad, "iters": args.iters,
    });
    let res = (|| -> Result<()> {
        let x = inputs(n, args, kind, device)?;
        // What exists before the op: hidden, weight and their gradients.
        let elem = x.hidden.kind().elt_size_in_bytes() as u64;
        r["inputs_gib"] = json!(gib(2 * elem * ((n + args.vocab) * args.hidden) as u64));
        let opts = options(args, variant, chunk);
        let (fwd, fwd_peak) = measure(device, args.warmup, args.iters, || forward_only(&x, &opts))?;
        r["forward_seconds"] = json!(fwd);
        r["forward_peak_allocated_gib"] = json!(fwd_peak.map(|p| gib(p.0)));
        let (secs, peak) = measure(device, args.warmup, args.iters, || {
            step(&x, &opts, args.entropy_grad)
        })?;
        r["seconds_per_step"] = json!(secs);
        r["tokens_per_s"] = json!(n as f64 / secs);
        r["peak_allocated_gib"] = json!(peak.map(|p| gib(p.0)));
        r["peak_reserved_gib"] = json!(peak.map(|p| gib(p.1)));
        Ok(())
    })();
    if let Err(e) = res {
        r["error"] = json!(format!("{e:#}").lines().next().unwrap_or("").to_string());
    }
    if device.is_cuda() {
        // Hand the failed or finished row's memory back before the next one.
        sync(device);
    }
    r
}

/// `variant` vs naive on this device at `n` tokens: max relative differences of log-probs, entropy and both
/// gradients (chunks of 100 tokens, so the chunking is exercised).
fn parity(args: &Args, n: usize, variant: Variant, kind: Kind, device: Device) -> Result<Value> {
    let run = |v: Variant| -> Result<Vec<Tensor>> {
        let x = inputs(n, args, kind, device)?;
        let opts = options(args, v, 100);
        let o = head_logprobs(&x.hidden, &x.weight, &x.targets, &opts)?;
        let ent = o.entropy.as_ref().expect("asked for");
        // Uneven per-token weights on both outputs, so every gradient term is exercised.
        let w = Tensor::f_linspace(-1.0, 2.0, n as i64, (Kind::Float, device))?;
        let l = o
            .logp
            .f_mul(&w)?
            .f_sum(Kind::Float)?
            .f_add(&ent.f_mul(&w.f_flip([0])?)?.f_sum(Kind::Float)?)?;
        l.f_backward()?;
        Ok(vec![
            o.logp.f_detach()?,
            ent.f_detach()?,
            x.hidden.grad(),
            x.weight.grad(),
        ])
    };
    let (f, b) = (run(variant)?, run(Variant::parse("naive")?)?);
    let rel = |a: &Tensor, b: &Tensor| -> Result<f64> {
        let (a, b) = (a.f_to_kind(Kind::Double)?, b.f_to_kind(Kind::Double)?);
        let d = a.f_sub(&b)?.f_abs()?.f_max()?.double_value(&[]);
        Ok(d / b.f_abs()?.f_max()?.double_value(&[]).max(1e-30))
    };
    Ok(json!({
        "engine": "spar", "bench": "logprob_parity", "path": variant.name(), "tokens": n, "hidden": args.hidden, "vocab": args.vocab,
        "dtype": args.dtype, "device": format!("{device:?}"), "temperature": args.temperature,
        "logp_rel": rel(&f[0], &b[0])?, "entropy_rel": rel(&f[1], &b[1])?,
        "grad_hidden_rel": rel(&f[2], &b[2])?, "grad_weight_rel": rel(&f[3], &b[3])?,
    }))
}

pub fn run(args: Args) -> Result<()> {
    let device = bench_device(&args.device)?;
    let kind = parse_kind(&args.dtype)?;
    let variants = args
        .paths
        .iter()
        .map(|p| Variant::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let fused: Vec<Variant> = variants
        .iter()
        .copied()
        .filter(|v| v.path == LogprobPath::Fused)
        .collect();
    if !fused.is_empty() && !spar_kernels::fused_logprob::available() {
        bail!(
            "this build has no fused log-prob op (libtorch's C++ headers were missing at build time)"
        );
    }
    if fused.iter().any(|v| v.kernels) && device.is_cuda() {
        // The first-use check of the epilogue kernels against the ATen ops (what training relies on).
        let w = Tensor::f_randn(
            [args.vocab as i64, args.hidden as i64],
            (Kind::Float, device),
        )?
        .f_mul_scalar(1.0 / (args.hidden as f64).sqrt())?
        .f_to_kind(kind)?;
        let ok = spar_model::token_logprobs::kernels_verified(&w)?;
        println!(
            "{}",
            json!({"engine": "spar", "bench": "logprob_kernels_check", "dtype": args.dtype,
                   "device": format!("{device:?}"), "kernels_verified": ok})
        );
    }
    if args.parity_tokens > 0 && variants.iter().any(|v| v.path == LogprobPath::Naive) {
        for v in &fused {
            println!("{}", parity(&args, args.parity_tokens, *v, kind, device)?);
        }
    }
    for &n in &args.tokens {
        let mut naive: Option<Value> = None;
        if variants.iter().any(|v| v.path == LogprobPath::Naive) {
            let r = row(&args, n, 0, Variant::parse("naive")?, kind, device);
            println!("{r}");
            naive = Some(r);
        }
        for &c in &args.chunk {
            for &variant in &fused {
                let chunk = if c == 0 {
                    auto_chunk(args.vocab as i64)
                } else {
                    c
                };
                let r = row(&args, n, chunk, variant, kind, device);
                println!("{r}");
                if let Some(nv) = &naive {
                    let ratio = |k: &str| match (r[k].as_f64(), nv[k].as_f64()) {
                        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
                        _ => Value::Null,
                    };
                    println!(
                        "{}",
                        json!({
                            "engine": "spar", "bench": "logprob_vs_naive", "path": variant.name(), "tokens": n, "chunk": chunk,
                            "dtype": args.dtype, "device": format!("{device:?}"),
                            "peak_memory_ratio": ratio("peak_allocated_gib"),
                            "time_ratio": ratio("seconds_per_step"),
                            "forward_time_ratio": ratio("forward_seconds"),
                            "naive_error": nv.get("error"),
                        })
                    );
                }
            }
        }
    }
    Ok(())
}
