//! `spar bench grpo`: one full GRPO iteration on TRL's GRPO workload, timed phase by phase: generation of P
//! prompts x G completions (exactly `--prompt-len` random tokens each, up to `--new` new tokens, temperature 1,
//! the built-in engine with CUDA-graph decode), a rule reward (the share of even token ids, as
//! `model/bench/grpo_trl.py`), group-normalised advantages, and the learner's update with the DAPO loss
//! (token-level ratio clipped to [0.8, 1.28], token-mean over the batch, no KL), one AdamW step. The same call
//! should run `grpo_trl.py` with the same flags for the comparison.
use super::bench_forward::{BenchModel, bench_device, sync};
use super::bench_train::with_fields;
use anyhow::{Result, bail};
use serde_json::json;
use spar_core::recipe::{LossAgg, TrainerSection};
use spar_core::traits::{GenerateRequest, SamplingParams};
use spar_model::torch_profiler::{ProfileOptions, Recording, range};
use spar_model::{Qwen3Model, parse_kind};
use spar_rollout::engine::{self, Engine, EngineConfig};
use spar_trainer::batch::TrainItem;
use spar_trainer::knobs::{batching_config, new_learner};
use spar_trainer::learner::rl_update;
use spar_trainer::policy_loss::{PolicyLossConfig, RatioLevel};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: BenchModel,
    /// Prompts per iteration.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Completions per prompt (the GRPO group).
    #[arg(long, default_value_t = 8)]
    group: usize,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Maximum new tokens per completion.
    #[arg(long, default_value_t = 256)]
    new: u32,
    /// Sequences per micro-batch of the update.
    #[arg(long, default_value_t = 8)]
    micro_batch: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Decode with CUDA graphs (on CUDA).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    graphs: bool,
    /// Recompute layers in backward.
    #[arg(long)]
    checkpointing: bool,
    /// Replay the update's micro-steps as CUDA graphs (`trainer.learner_cuda_graphs`).
    #[arg(long)]
    learner_graphs: bool,
    #[command(flatten)]
    optimizer: super::bench_train::OptimizerArgs,
    /// Record the last iteration with the torch profiler: DIR/grpo.md (spans, host ops, GPU kernels, CUDA
    /// runtime calls) and DIR/grpo.trace.json.gz (Chrome trace). That iteration is slower than the others.
    #[arg(long, value_name = "DIR")]
    profile: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if args.prompts == 0 || args.group < 2 || args.new == 0 {
        bail!("--prompts must be >= 1, --group >= 2 and --new >= 1");
    }
    let device = bench_device(&args.model.device)?;
    let kind = parse_kind(&args.model.dtype)?;
    let config = args.model.qwen3_config()?;
    if config.vocab_size < 1100 {
        bail!(
            "bench grpo draws prompt tokens from 10 .. vocab - 1000: vocab_size {} is too small",
            config.vocab_size
        );
    }
    let vocab = config.vocab_size as u64;
    let mut model = Qwen3Model::random(config, device, kind, 0)?;
    model.set_activation_checkpointing(args.checkpointing);
    let tr = TrainerSection {
        micro_batch: args.micro_batch,
        token_budget: 0,
        loss_agg: LossAgg::TokenMean,
        optimizer_state: args.optimizer.optimizer_state,
        learner_cuda_graphs: args.learner_graphs,
        ..Default::default()
    };
    let batching = batching_config(&tr)?;
    let loss_cfg = PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.28);
    let mut learner = new_learner(&tr, &model, 1e-6, 1000, 0)?;
    let batch = args.prompts * args.group;
    let mut engine = Engine::new(
        &model,
        EngineConfig {
            max_batch: batch,
            kv_slots: batch,
            max_seq_len: args.prompt_len + args.new as usize + 8,
            prefill_tokens: 16384,
            seed: 0,
            record_routing: false,
            batch_invariant: false,
            prefill_wait_steps: 0,
            overlap_prefill: false,
            async_decode: true,
        },
    )?;
    engine.set_cuda_graphs(args.graphs && device.is_cuda());
    let mut salt = 0u64;
    let last = args.warmup + args.iters - 1;
    for it in 0..=last {
        let recording = match &args.profile {
            Some(_) if it == last => Some(Recording::start(ProfileOptions {
                cuda: device.is_cuda(),
                ..ProfileOptions::default()
            })?),
            _ => None,
        };
        // Distinct random prompts each iteration, G requests per prompt.
        let prompts: Vec<Vec<u32>> = (0..args.prompts)
            .map(|_| {
                salt += 1;
                (0..args.prompt_len as u64)
                    .map(|i| ((i * 2654435761 + salt * 40503) % (vocab - 1000)) as u32 + 10)
                    .collect()
            })
            .collect();
        let reqs: Vec<GenerateRequest> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, args.group))
            .map(|p| GenerateRequest {
                prompt_ids: p.clone(),
                sampling: SamplingParams {
                    temperature: 1.0,
                    max_new_tokens: args.new,
                    ..Default::default()
                },
            })
            .collect();
        sync(device);
        let t0 = Instant::now();
        let span = range("bench/generate");
        let outs = engine.generate(reqs)?;
        sync(device);
        drop(span);
        let t_gen = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let span = range("bench/score");
        let rewards: Vec<f64> = outs
            .iter()
            .map(|o| {
                let ids = &o.output.token_ids;
                ids.iter().filter(|&&t| t % 2 == 0).count() as f64 / ids.len().max(1) as f64
            })
            .collect();
        let mut items = Vec::with_capacity(batch);
        for (g, chunk) in rewards.chunks(args.group).enumerate() {
            let mean = chunk.iter().sum::<f64>() / chunk.len() as f64;
            let std = (chunk.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
                / (chunk.len() - 1) as f64)
                .sqrt();
            for (j, r) in chunk.iter().enumerate() {
                let out = &outs[g * args.group + j].output;
                let adv = ((r - mean) / (std + 1e-4)) as f32;
                items.push(item(&prompts[g], out, adv, g, j));
            }
        }
        drop(span);
        let t_score = t1.elapsed().as_secs_f64();

        let t2 = Instant::now();
        let span = range("bench/learn");
        let reports = rl_update(
            &model,
            None,
            &mut learner,
            &items,
            &loss_cfg,
            &batching,
            1,
            device,
        )?;
        sync(device);
        drop(span);
        let t_learn = t2.elapsed().as_secs_f64();
        if let (Some(rec), Some(dir)) = (recording, &args.profile) {
            let md = spar_trainer::profiling::save(
                rec,
                dir,
                "grpo",
                "spar bench grpo, one iteration",
                true,
            )?;
            eprintln!("profile of iteration {it}: {}", md.display());
        }
        let generated: usize = outs.iter().map(|o| o.output.token_ids.len()).sum();
        let tokens: usize = items.iter().map(|i| i.input_ids.len()).sum();
        let line = json!({"bench": "grpo", "engine": "spar", "shape": args.model.shape,
               "layers": args.model.layers, "dtype": args.model.dtype, "device": format!("{device:?}"), "iteration": it,
               "warmup": it < args.warmup, "prompts": args.prompts, "group": args.group,
               "prompt_len": args.prompt_len, "new_tokens": args.new, "micro_batch": args.micro_batch,
               "generated_tokens": generated, "trained_tokens": tokens,
               "seconds": t_gen + t_score + t_learn, "generate_s": t_gen, "score_s": t_score,
               "learn_s": t_learn, "generate_tokens_per_s": generated as f64 / t_gen,
               "loss": reports.last().map(|r| r.loss), "grad_norm": reports.last().map(|r| r.grad_norm),
               "peak_gib": peak_gib(device)?,
               "learner_graphs": super::bench_train::learner_graphs_state(&learner),
               // The engine's A/B switches, so that lines of one call tell their runs apart.
               "graph_sampling": engine::graph_sampling_enabled(), "fused_prefill": engine::fused_prefill_enabled(),
               "fused_sampling": device.is_cuda() && spar_kernels::decode_ops::fused_sampling_enabled()});
        println!(
            "{}",
            with_fields(line, args.optimizer.report(device, &learner.adamw))
        );
    }
    Ok(())
}

/// Peak allocated GPU memory so far, in GiB (None on the CPU).
fn peak_gib(device: tch::Device) -> Result<Option<f64>> {
    Ok(match device {
        tch::Device::Cuda(d) => {
            Some(spar_kernels::cuda_memory::peak_memory(d)?.0 as f64 / (1u64 << 30) as f64)
        }
        _ => None,
    })
}

/// The learner's item for one completion: prompt and completion, trained on the completion's tokens with one
/// advantage (one GRPO step), the engine's log-probs as the rollout's.
fn item(
    prompt: &[u32],
    out: &spar_core::traits::GenerateOutput,
    adv: f32,
    g: usize,
    j: usize,
) -> TrainItem {
    let ids: Vec<i64> = prompt
        .iter()
        .chain(&out.token_ids)
        .map(|&t| t as i64)
        .collect();
    let n = ids.len();
    let p = prompt.len();
    let mut targets = ids[1..].to_vec();
    targets.push(0);
    // Position i predicts token i + 1: the completion's tokens are predicted from positions p-1 .. n-2.
    let trained = |i: usize| i + 1 >= p && i + 1 < n;
    let mut rollout_logp = vec![0.0f32; n];
    for (k, lp) in out.logprobs.iter().enumerate() {
        rollout_logp[p - 1 + k] = *lp;
    }
    TrainItem {
        group_id: format!("p{g}"),
        sample_idx: j as u32,
        input_ids: ids,
        targets,
        mask: (0..n).map(|i| trained(i) as u8 as f32).collect(),
        advantages: (0..n).map(|i| if trained(i) { adv } else { 0.0 }).collect(),
        step_ids: (0..n).map(|i| if trained(i) { 0 } else { -1 }).collect(),
        n_steps: 1,
        rollout_logp,
        routed: None,
        reward: 0.0,
    }
}
