//! `spar bench train`: the learner's training step (forward, backward, gradient clipping, AdamW with fp32
//! masters: exactly what `spar train`'s SFT phase runs per step) on a random model of a real shape, plain or
//! fully sharded, with tokens/s and the peak GPU memory. Under `spar launch` / torchrun it joins the process
//! group (NCCL on `cuda:LOCAL_RANK`, gloo on CPU), so `--nproc-per-node 1 ... --sharded` measures the sharded
//! path's overhead through real collectives on one GPU.
use super::bench_forward::{BenchModel, bench_device, sync};
use anyhow::Result;
use serde_json::json;
use spar_core::recipe::{LossAgg, OptimizerState, TrainerSection};
use spar_model::torch_profiler::{ProfileOptions, Recording, range};
use spar_model::{Qwen3Model, parse_kind};
use spar_trainer::batch::TrainItem;
use spar_trainer::knobs::{batching_config, new_learner};
use spar_trainer::learner::{BatchingConfig, sft_update};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: BenchModel,
    /// Sequences per step (one micro-batch of --micro-batch sequences at a time).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    #[arg(long, default_value_t = 1024)]
    seq: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Recompute layers in backward (always on when sharded).
    #[arg(long)]
    checkpointing: bool,
    /// Fully sharded parameters, gradients and optimizer over the launched ranks.
    #[arg(long)]
    sharded: bool,
    /// Replay each micro-batch's forward and backward as a CUDA graph (`trainer.learner_cuda_graphs`).
    #[arg(long)]
    learner_graphs: bool,
    #[command(flatten)]
    optimizer: OptimizerArgs,
    /// The GPU's dense bf16 peak in TFLOP/s, for the model FLOPs utilisation (`mfu`) on CUDA. The default is
    /// the H100 SXM's and the H200's (989.4, without sparsity).
    #[arg(long, default_value_t = 989.4)]
    peak_tflops: f64,
    /// After the timed steps, record one more with the torch profiler: DIR/train.md (spans, host ops, GPU
    /// kernels, CUDA runtime calls) and DIR/train.trace.json.gz (Chrome trace); `train-rankR.*` when launched.
    #[arg(long, value_name = "DIR")]
    profile: Option<std::path::PathBuf>,
}

/// What a training bench's line says of the learner's CUDA graphs: null without them, else how many it recorded or
/// why they turned off.
pub fn learner_graphs_state(learner: &spar_trainer::learner::Learner) -> Option<String> {
    learner.cuda_graphs.as_ref().map(|g| match g.off_reason() {
        Some(why) => format!("off: {why}"),
        None => format!("{} recorded", g.recorded()),
    })
}

/// `--optimizer-state`, shared by the benches that train.
#[derive(clap::Args)]
pub struct OptimizerArgs {
    /// AdamW's state for bf16 weights (`trainer.optimizer_state`): `fp32` masters and moments, `compact` (a
    /// bf16 compensation instead of the master, a bf16 first moment) or `packed` (the compact state in 6 bytes).
    #[arg(long, default_value = "fp32", value_parser = parse_optimizer_state)]
    pub optimizer_state: OptimizerState,
}

impl OptimizerArgs {
    /// What a training bench's line says of the learner's settings, so that lines of one device call tell their
    /// runs apart: the optimizer state (its size in `adamw`) and the kernels' A/B switches.
    pub fn report(
        &self,
        device: tch::Device,
        adamw: &spar_trainer::adamw::AdamW,
    ) -> serde_json::Value {
        json!({
            "optimizer_state": self.optimizer_state.name(),
            "optimizer_state_gib": adamw.state_bytes() as f64 / (1u64 << 30) as f64,
            "sdpa_cudnn": spar_kernels::sdpa_backends::cudnn_enabled(),
            "aten_rms_norm": device.is_cuda() && spar_kernels::rms_norm::aten_enabled(),
            "padding_mask": spar_trainer::qwen3::padding_mask_kept(),
            "fused_adamw": device.is_cuda() && spar_kernels::optimizer_ops::fused_adamw_enabled(),
        })
    }
}

/// Adds the fields of `extra` (an object) to `line` (an object).
pub fn with_fields(mut line: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
        line.extend(extra);
    }
    line
}

/// An [`OptimizerState`] as the recipe spells it.
fn parse_optimizer_state(s: &str) -> std::result::Result<OptimizerState, String> {
    OptimizerState::ALL
        .into_iter()
        .find(|v| v.name() == s)
        .ok_or_else(|| {
            let names: Vec<_> = OptimizerState::ALL.iter().map(|v| v.name()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

pub fn run(args: Args) -> Result<()> {
    let env = spar_dist::DistEnv::from_env()?;
    let launched = env.world_size > 1 || env.launcher == spar_dist::Launcher::Torchrun;
    let mut device = bench_device(&args.model.device)?;
    let group: Arc<dyn spar_dist::Collectives> = if launched {
        let backend = if device.is_cuda() {
            let gpu = super::train::gpu_of_rank(
                env.local_rank,
                tch::Cuda::device_count().max(0) as usize,
                spar_core::recipe::DistributedBackend::Nccl,
            )?;
            device = Device::Cuda(gpu);
            spar_dist::Backend::Nccl { device: gpu }
        } else {
            spar_dist::default_gloo(&env)
        };
        spar_dist::init(
            &env,
            &spar_dist::InitOptions {
                backend: Some(backend),
                ..Default::default()
            },
        )?
        .group
    } else {
        Arc::new(spar_dist::Local)
    };
    let (rank, world) = (group.rank(), group.world_size());
    let kind = parse_kind(&args.model.dtype)?;
    let config = args.model.qwen3_config()?;
    let mut model = Qwen3Model::random(config.clone(), device, kind, 0)?;
    model.set_activation_checkpointing(args.checkpointing);
    let tr = TrainerSection {
        micro_batch: args.micro_batch,
        token_budget: 0,
        optimizer_state: args.optimizer.optimizer_state,
        learner_cuda_graphs: args.learner_graphs,
        ..Default::default()
    };
    let batching = BatchingConfig {
        agg: LossAgg::TokenMean,
        ..batching_config(&tr)?
    };
    let mut learner = new_learner(&tr, &model, 1e-5, 1000, 0)?;
    learner.join(group.clone(), &mut model, args.sharded, None)?;
    // This rank's share of a global batch of `batch` sequences, every token trained.
    let vocab = config.vocab_size as i64;
    let items: Vec<TrainItem> = (0..args.batch)
        .filter(|i| i % world == rank)
        .map(|i| {
            let ids: Vec<i64> = (0..args.seq)
                .map(|p| ((i * 7919 + p * 104_729) as i64) % vocab)
                .collect();
            let mut targets = ids[1..].to_vec();
            targets.push(0);
            let n = ids.len();
            TrainItem {
                group_id: format!("b{i}"),
                sample_idx: 0,
                input_ids: ids,
                targets,
                mask: vec![1.0; n],
                advantages: vec![0.0; n],
                step_ids: vec![-1; n],
                n_steps: 0,
                rollout_logp: vec![0.0; n],
                routed: None,
                reward: 0.0,
            }
        })
        .collect();
    for _ in 0..args.warmup {
        sft_update(&model, &mut learner, &items, &batching, device)?;
    }
    sync(device);
    if let Device::Cuda(d) = device {
        spar_kernels::cuda_memory::reset_peak_memory(d)?;
    }
    let t = Instant::now();
    let mut loss = 0.0;
    for _ in 0..args.iters {
        loss = sft_update(&model, &mut learner, &items, &batching, device)?.loss;
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64();
    let peak = match device {
        Device::Cuda(d) => Some(spar_kernels::cuda_memory::peak_memory(d)?),
        _ => None,
    };
    if let Some(dir) = &args.profile {
        let rec = Recording::start(ProfileOptions {
            cuda: device.is_cuda(),
            ..ProfileOptions::default()
        })?;
        let span = range("bench/train_step");
        sft_update(&model, &mut learner, &items, &batching, device)?;
        sync(device);
        drop(span);
        let stem = if world == 1 {
            "train".to_string()
        } else {
            format!("train-rank{rank}")
        };
        let md =
            spar_trainer::profiling::save(rec, dir, &stem, "spar bench train, one step", true)?;
        eprintln!("profile of one step: {}", md.display());
    }
    let tokens = (args.batch * args.seq * args.iters) as f64;
    // Model FLOPs (forward and backward, no recomputation counted) over the wall time: a packed sequence's
    // token attends to (seq + 1) / 2 positions on average.
    let model_tflops =
        tokens * config.train_flops_per_token((args.seq as f64 + 1.0) / 2.0) / secs / 1e12;
    if rank == 0 {
        let report = json!({
            "engine": "spar", "bench": "train",
            "shape": if args.model.config.is_some() { "config" } else { args.model.shape.as_str() }, "layers": config.num_hidden_layers,
            "dtype": args.model.dtype, "batch": args.batch, "micro_batch": args.micro_batch, "seq": args.seq,
            "device": format!("{device:?}"), "world_size": world, "sharded": args.sharded,
            "checkpointing": args.checkpointing || args.sharded, "iters": args.iters,
            "learner_graphs": learner_graphs_state(&learner),
            "seconds_per_step": secs / args.iters as f64, "tokens_per_s": tokens / secs, "loss": loss,
            "model_tflops_per_s": model_tflops,
            "mfu": device.is_cuda().then(|| model_tflops / args.peak_tflops),
            "peak_allocated_gib": peak.map(|p| p.0 as f64 / (1u64 << 30) as f64),
            "peak_reserved_gib": peak.map(|p| p.1 as f64 / (1u64 << 30) as f64),
        });
        println!(
            "{}",
            with_fields(report, args.optimizer.report(device, &learner.adamw))
        );
    }
    Ok(())
}
