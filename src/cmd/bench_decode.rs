//! `spar bench decode`: decode tokens/s of the built-in rollout engine (continuous batching over the slot KV
//! cache) on a random model of a real shape, at several batch sizes: B prompts of `--prompt` random tokens,
//! `--new` tokens each (greedy, or sampled at `--temperature`), no stop tokens. `rollout/bench/decode_hf.py` times
//! transformers' `generate` on the same config for comparison (run both in the same session on the same GPU). On
//! CUDA both decode paths are timed: `eager` (one tch forward per step) and `graph` (each step replayed from a
//! captured CUDA graph). `--ragged` spreads the prompt lengths as in a rollout batch (the decode-attention kernel
//! reads each row's own keys only).
use anyhow::{Result, bail};
use serde_json::json;
use spar_core::traits::{GenerateRequest, SamplingParams};
use spar_model::torch_profiler::{ProfileOptions, Recording};
use spar_model::{Qwen3Model, parse_kind};
use spar_rollout::engine::{Engine, EngineConfig};
use std::time::Instant;

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
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    new: u32,
    /// Timed repetitions per batch size (the best is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Ragged batch: prompt lengths spread evenly from a quarter of `--prompt` to `--prompt` (as rows of a rollout
    /// batch are), instead of all `--prompt` long.
    #[arg(long)]
    ragged: bool,
    /// Sampling temperature (0: greedy, the default); above 0 each token is drawn by inverse CDF on the device,
    /// as rollouts draw them.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Decode paths to time: eager, graph or both (graph needs CUDA and is skipped elsewhere).
    #[arg(long, default_value = "both")]
    paths: String,
    /// Record the last timed run of each path and batch size with the torch profiler (CUDA kernels included):
    /// DIR/decode-PATH-bBATCH.md (where the time goes, by kernel) and its Chrome trace.
    #[arg(long, value_name = "DIR")]
    profile: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let device = super::bench_forward::bench_device(&args.device)?;
    let kind = parse_kind(&args.dtype)?;
    let config = super::bench_forward::shape_config(&args.shape, args.layers)?;
    let vocab = config.vocab_size as u64;
    let model = Qwen3Model::random(config, device, kind, 0)?;
    let max_b = args.batch.iter().copied().max().unwrap_or(1);
    let cfg = EngineConfig {
        max_batch: max_b,
        kv_slots: max_b,
        max_seq_len: args.prompt + args.new as usize + 8,
        prefill_tokens: 16384,
        seed: 0,
        record_routing: false,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    };
    let mut engine = Engine::new(&model, cfg)?;
    let mut salt = 0u64;
    let mut requests = |b: usize, new: u32| -> Vec<GenerateRequest> {
        (0..b)
            .map(|i| {
                salt += 1;
                let len = if args.ragged && b > 1 {
                    let lo = (args.prompt / 4).max(1);
                    lo + (args.prompt - lo) * i / (b - 1)
                } else {
                    args.prompt
                };
                // Distinct random prompts: no prefix reuse flatters the numbers.
                let prompt = (0..len as u64)
                    .map(|i| ((i * 2654435761 + salt * 40503) % (vocab - 1000)) as u32 + 10)
                    .collect();
                GenerateRequest {
                    prompt_ids: prompt,
                    sampling: SamplingParams {
                        temperature: args.temperature,
                        max_new_tokens: new,
                        ..Default::default()
                    },
                }
            })
            .collect()
    };
    let paths: Vec<&str> = match args.paths.as_str() {
        "both" if device.is_cuda() => vec!["eager", "graph"],
        "both" | "eager" => vec!["eager"],
        "graph" => vec!["graph"],
        other => bail!("--paths {other:?}: expected eager, graph or both"),
    };
    for path in paths {
        engine.set_cuda_graphs(path == "graph");
        if path == "graph" && engine.graph_stats().is_none() {
            bail!(
                "the CUDA-graph decode path is not available here (needs CUDA and a build with the shim)"
            );
        }
        // Warm-up: allocator, kernels, every batch shape's first launch (and, for graphs, the captures).
        for &b in &args.batch {
            engine.generate(requests(b, 4))?;
        }
        super::bench_forward::sync(device);
        for &b in &args.batch {
            let mut best = f64::INFINITY;
            let mut best_decode = f64::INFINITY;
            let mut best_prefill = f64::INFINITY;
            let iters = args.iters.max(1);
            for it in 0..iters {
                let profiled = args.profile.is_some() && it + 1 == iters;
                let recording = if profiled {
                    Some(Recording::start(ProfileOptions {
                        cuda: device.is_cuda(),
                        ..ProfileOptions::default()
                    })?)
                } else {
                    None
                };
                let reqs = requests(b, args.new);
                let before = engine.stats;
                super::bench_forward::sync(device);
                let t0 = Instant::now();
                let outs = engine.generate(reqs)?;
                super::bench_forward::sync(device);
                let dt = t0.elapsed().as_secs_f64();
                if let (Some(rec), Some(dir)) = (recording, &args.profile) {
                    let stem = format!("decode-{path}-b{b}");
                    let title = format!(
                        "spar bench decode, {path} path, batch {b}, one run (profiled: slower)"
                    );
                    let md = spar_trainer::profiling::save(rec, dir, &stem, &title, true)?;
                    eprintln!("profile of {path} at batch {b}: {}", md.display());
                }
                let generated: usize = outs.iter().map(|o| o.output.token_ids.len()).sum();
                if generated != b * args.new as usize {
                    bail!("expected {} tokens, got {generated}", b * args.new as usize);
                }
                let steps = engine.stats.decode_steps - before.decode_steps;
                // The profiled run is slower (the profiler's own work): it is not a timing, unless it is the only run.
                if profiled && iters > 1 {
                    continue;
                }
                best = best.min(dt);
                // The run's wall time includes the prompts' prefill (64 x 4,096 tokens is seconds): the decode
                // step is the engine's own decode time over its steps.
                let decode_s = engine.stats.decode_seconds - before.decode_seconds;
                best_decode = best_decode.min(decode_s / steps.max(1) as f64);
                best_prefill =
                    best_prefill.min(engine.stats.prefill_seconds - before.prefill_seconds);
            }
            let toks = (b * args.new as usize) as f64;
            println!(
                "{}",
                json!({"bench": "decode", "engine": "spar", "path": path, "shape": args.shape, "dtype": args.dtype,
                   "device": format!("{device:?}"), "batch": b, "prompt": args.prompt, "ragged": args.ragged, "temperature": args.temperature, "new_tokens": args.new,
                   "seconds": best, "tokens_per_s": toks / best, "ms_per_step": best_decode * 1e3, "prefill_s": best_prefill,
                   "graph_stats": engine.graph_stats().map(|s| json!({"captures": s.captures, "replays": s.replays, "fallbacks": s.fallbacks}))})
            );
        }
    }
    Ok(())
}
