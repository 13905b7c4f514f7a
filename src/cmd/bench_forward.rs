//! `spar bench forward`: forward (and optionally forward + backward) tokens/s of spar's Qwen3 on a random model
//! of a real shape. `model/bench/forward_hf.py` measures transformers on the same config for comparison.
//!
//! With `--parity-dir DIR` it instead writes the inputs of a bf16 parity check against transformers
//! (`scripts/gpu-parity.sh`): a random model saved in HF format (bf16 weights, so the fp32 and bf16 runs of both
//! implementations use identical weights), seeded input ids, and spar's fp32 and bf16 logits.

use anyhow::{Result, bail};
use serde_json::json;
use spar_model::{ForwardInput, Qwen3Config, Qwen3Model, parse_device, parse_kind};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// qwen3-0.6b | qwen3-30b-a3b
    #[arg(long, default_value = "qwen3-0.6b")]
    shape: String,
    /// Decoder layers (default: the shape's own count).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, default_value_t = 4)]
    batch: i64,
    #[arg(long, default_value_t = 1024)]
    seq: i64,
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Time forward + backward (a training step's model work) instead of an inference forward.
    #[arg(long)]
    backward: bool,
    /// With --backward: recompute layers in backward (activation checkpointing).
    #[arg(long)]
    checkpointing: bool,
    /// Also print the config as config.json (for forward_hf.py --config).
    #[arg(long)]
    print_config: bool,
    /// A config.json to use instead of --shape (tiny configs for CPU checks).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Write a parity case (HF model dir, inputs, spar's fp32 and bf16 logits) into this folder and exit.
    #[arg(long)]
    parity_dir: Option<std::path::PathBuf>,
    /// With --parity-dir: multiply every random weight (norms too) by this factor.
    #[arg(long, default_value_t = 1.0)]
    init_scale: f64,
    /// With --parity-dir: seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// With --parity-dir: dtype of the saved weights (bf16: both dtypes run identical weights; fp32: the bf16
    /// runs also see the rounding of the weights, as a model trained in fp32 and served in bf16 does).
    #[arg(long, default_value = "bf16")]
    weights_dtype: String,
}

/// The config.json of a named shape (the published Qwen3 configs), with `layers` decoder layers.
pub fn shape_config(shape: &str, layers: Option<usize>) -> Result<Qwen3Config> {
    let mut v = match shape {
        "qwen3-0.6b" => {
            json!({"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "max_position_embeddings": 40960})
        }
        "qwen3-30b-a3b" => {
            json!({"model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "max_position_embeddings": 40960,
            "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": true,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001})
        }
        other => bail!("unknown --shape {other:?} (qwen3-0.6b or qwen3-30b-a3b)"),
    };
    if let Some(l) = layers {
        v["num_hidden_layers"] = json!(l);
    }
    Qwen3Config::from_json_value(&v, shape)
}

/// Waits for queued GPU work so wall-clock timings cover it.
pub(super) fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Parses `--device`, refusing CUDA when libtorch has none (a benchmark on the wrong device is worse than none).
pub(super) fn bench_device(name: &str) -> Result<Device> {
    let device = parse_device(name)?;
    if device.is_cuda() && !tch::Cuda::is_available() {
        bail!("--device {name} but CUDA is not available to libtorch");
    }
    Ok(device)
}

pub fn run(args: Args) -> Result<()> {
    let device = bench_device(&args.device)?;
    let kind = parse_kind(&args.dtype)?;
    let config = match &args.config {
        Some(path) => Qwen3Config::from_file(path)?,
        None => shape_config(&args.shape, args.layers)?,
    };
    if let Some(dir) = &args.parity_dir {
        return write_parity_case(&args, config, device, dir);
    }
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config.to_hf_json())?);
    }
    let t0 = Instant::now();
    let mut model = Qwen3Model::random(config.clone(), device, kind, 0)?;
    model.set_activation_checkpointing(args.checkpointing);
    eprintln!("random init: {:.1}s", t0.elapsed().as_secs_f64());
    tch::manual_seed(1);
    let ids = Tensor::randint(
        config.vocab_size as i64,
        [args.batch, args.seq],
        (Kind::Int64, device),
    );
    let step = || -> Result<()> {
        if args.backward {
            let out = model.forward(ForwardInput::new(&ids))?;
            let loss = out.logits.to_kind(Kind::Float).mean(Kind::Float);
            model.backward(&loss, &out)?;
            model.vs.trainable_variables().iter_mut().for_each(|v| {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            });
        } else {
            let _g = tch::no_grad_guard();
            let _ = model.forward(ForwardInput::new(&ids))?;
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        step()?;
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..args.iters {
        step()?;
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64();
    let tokens = (args.batch * args.seq) as f64 * args.iters as f64;
    let report = json!({
        "engine": "spar", "shape": args.shape, "layers": config.num_hidden_layers, "dtype": args.dtype,
        "batch": args.batch, "seq": args.seq, "device": format!("{device:?}"), "backward": args.backward,
        "checkpointing": args.checkpointing, "iters": args.iters, "seconds": secs, "tokens_per_s": tokens / secs,
    });
    println!("{report}");
    Ok(())
}

/// See the module documentation: the spar half of `scripts/gpu-parity.sh`.
fn write_parity_case(
    args: &Args,
    config: Qwen3Config,
    device: Device,
    dir: &std::path::Path,
) -> Result<()> {
    use anyhow::Context;
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("creating {}", model_dir.display()))?;
    {
        let m = Qwen3Model::random(
            config.clone(),
            device,
            parse_kind(&args.weights_dtype)?,
            args.seed,
        )?;
        if args.init_scale != 1.0 {
            tch::no_grad(|| -> Result<()> {
                for (_, mut v) in m.vs.variables() {
                    let _ = v.f_mul_scalar_(args.init_scale)?;
                }
                Ok(())
            })?;
        }
        m.save_hf(&model_dir)?;
    }
    tch::manual_seed(1);
    let ids = Tensor::randint(
        config.vocab_size as i64,
        [args.batch, args.seq],
        (Kind::Int64, Device::Cpu),
    );
    Tensor::write_safetensors(&[("input_ids", &ids)], dir.join("inputs.safetensors"))?;
    let mut report = serde_json::Map::new();
    for (name, kind) in [("fp32", Kind::Float), ("bf16", Kind::BFloat16)] {
        let m = Qwen3Model::load(&model_dir, device, kind)?;
        let logits = tch::no_grad(|| -> Result<Tensor> {
            let out = m.forward(ForwardInput::new(&ids.to_device(device)))?;
            Ok(out.logits.to_kind(Kind::Float).to_device(Device::Cpu))
        })?;
        let path = dir.join(format!("spar_{name}.safetensors"));
        Tensor::write_safetensors(&[("logits", &logits)], &path)?;
        report.insert(name.into(), json!(path.display().to_string()));
    }
    println!(
        "{}",
        json!({"parity_case": dir.display().to_string(), "layers": config.num_hidden_layers,
               "batch": args.batch, "seq": args.seq, "device": format!("{device:?}"), "logits": report})
    );
    Ok(())
}

/// The model a training benchmark builds: a random model of a real shape (or a config file), its dtype and
/// device. Shared by `spar bench train` and `spar bench grpo`.
#[derive(clap::Args)]
pub struct BenchModel {
    /// qwen3-0.6b | qwen3-30b-a3b
    #[arg(long, default_value = "qwen3-0.6b")]
    pub shape: String,
    /// Decoder layers (default: the shape's own count).
    #[arg(long)]
    pub layers: Option<usize>,
    /// A config.json to use instead of --shape (tiny configs for CPU checks).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    #[arg(long, default_value = "cuda")]
    pub device: String,
}

impl BenchModel {
    /// The model's config: `--config`, else the shape with `--layers`.
    pub fn qwen3_config(&self) -> Result<Qwen3Config> {
        match &self.config {
            Some(path) => Qwen3Config::from_file(path),
            None => shape_config(&self.shape, self.layers),
        }
    }
}
