//! `spar-dp-check --out DIR [--sharded] [--checkpointing] [--expert-parallel P] [--one-expert] [--aux]
//! [--micro-batch N] [--stop-after K | --resume]`: the data-parallel learner (plain or fully sharded, optionally
//! activation-checkpointed, optionally with the MoE experts divided among groups of P ranks) on real ranks
//! against one process on the union batch. `--one-expert` replays a routing that sends every token to experts 0
//! and 1 (the most uneven load: the ranks owning the other experts receive no rows). `--aux` turns the MoE
//! load-balancing loss on (`spar_trainer::aux_loss`: counted over every rank's tokens at each micro-batch step);
//! `--micro-batch N` (default 2) sets the items per micro-batch.
//!
//! Without a launcher it is one process on the whole batch; under `spar launch` / torchrun each rank takes the
//! items `i` with `i % world == rank` of the same global batches (so shares differ in size). Every rank builds
//! the same tiny random Qwen3-MoE and runs four updates: two PPO epochs of an RL update, an RL update whose
//! advantages are 0 outside rank 0's share (no rank may skip), one whose advantages are all 0 (every rank skips),
//! and an SFT step. Rank 0 writes `DIR/report.json` (losses, grad norms, token counts, skips) and
//! `DIR/weights.safetensors`; the trainer's `data_parallel` test compares those of 1 to 4 ranks. The report
//! also counts the plain learner's gradient reductions started during backward (`overlapped_units`) and in all
//! (`reduced_units`), on rank 0.
//!
//! `--stop-after K` checkpoints the run after K updates into `DIR/checkpoints` (through the trainer's
//! `Session`, sharded optimizer state included) and stops; `--resume` loads that checkpoint, on whatever world
//! size and mode it is launched with, and runs the remaining updates.
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use spar_core::recipe::{LossAgg, TrainerSection};
use spar_model::{Qwen3Config, Qwen3Model};
use spar_trainer::batch::TrainItem;
use spar_trainer::checkpoint;
use spar_trainer::knobs::{batching_config, new_learner, policy_loss_config, ratio_level};
use spar_trainer::learner::{StepReport, rl_update, sft_update};
use spar_trainer::session::Session;
use spar_trainer::sharded::AtRest;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Kind};

const CONFIG: &str = r#"{"model_type": "qwen3_moe", "vocab_size": 48, "hidden_size": 32, "intermediate_size": 64,
  "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
  "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": true, "decoder_sparse_step": 1,
  "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
  "router_aux_loss_coef": 0.0}"#;

/// A deterministic global batch of `n` items (seeded by `seed`); `adv(i)` scales item i's advantages.
fn batch(seed: u64, n: usize, adv: impl Fn(usize) -> f32) -> Vec<TrainItem> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let t = rng.random_range(6..20usize);
            let input_ids: Vec<i64> = (0..t).map(|_| rng.random_range(0..48i64)).collect();
            let mut targets: Vec<i64> = input_ids[1..].to_vec();
            targets.push(0);
            // The first third is the prompt; two steps share the rest.
            let start = t / 3;
            let mid = (start + t - 1) / 2;
            let mask: Vec<f32> = (0..t)
                .map(|p| (p >= start && p < t - 1) as u8 as f32)
                .collect();
            let step_ids: Vec<i64> = (0..t)
                .map(|p| match p {
                    p if p < start || p >= t - 1 => -1,
                    p if p < mid => 0,
                    _ => 1,
                })
                .collect();
            let a = [
                rng.random_range(-1.0..1.0f32),
                rng.random_range(-1.0..1.0f32),
            ];
            let advantages: Vec<f32> = step_ids
                .iter()
                .map(|&j| if j < 0 { 0.0 } else { a[j as usize] * adv(i) })
                .collect();
            let rollout_logp: Vec<f32> = mask.iter().map(|&m| -3.8 * m).collect();
            TrainItem {
                group_id: format!("g{}", i / 2),
                sample_idx: (i % 2) as u32,
                input_ids,
                targets,
                mask,
                advantages,
                step_ids,
                n_steps: 2,
                rollout_logp,
                routed: None,
                reward: 0.0,
            }
        })
        .collect()
}

fn report(rep: &StepReport) -> serde_json::Value {
    serde_json::json!({
        "loss": rep.loss, "grad_norm": rep.grad_norm, "tokens": rep.tokens, "skipped": rep.skipped,
        "skipped_empty_advantage": rep.skipped_empty_advantage, "entropy": rep.stats.entropy_sum,
        "stat_tokens": rep.stats.tokens, "clipped": rep.stats.clipped_low + rep.stats.clipped_high,
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let (mut sharded, mut resume, mut stop_after) = (false, false, None::<usize>);
    let (mut checkpointing, mut expert_parallel, mut one_expert) = (false, 1usize, false);
    let (mut aux, mut micro_batch, mut at_rest) = (false, 2usize, AtRest::Whole);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = Some(args.next().context("--out needs a folder")?.into()),
            "--sharded" => sharded = true,
            // `[distributed] weights_at_rest = "sharded"` (with --sharded).
            "--at-rest-sharded" => at_rest = AtRest::Sharded,
            "--checkpointing" => checkpointing = true,
            "--one-expert" => one_expert = true,
            "--aux" => aux = true,
            "--micro-batch" => {
                micro_batch = args
                    .next()
                    .context("--micro-batch needs a count")?
                    .parse()?
            }
            "--expert-parallel" => {
                expert_parallel = args
                    .next()
                    .context("--expert-parallel needs a group size")?
                    .parse()?
            }
            "--resume" => resume = true,
            "--stop-after" => {
                stop_after = Some(args.next().context("--stop-after needs a count")?.parse()?)
            }
            other => bail!(
                "unknown argument {other:?} (usage: spar-dp-check --out DIR [--sharded [--at-rest-sharded]] [--checkpointing] \
                 [--expert-parallel P] [--one-expert] [--aux] [--micro-batch N] [--stop-after K | --resume])"
            ),
        }
    }
    let out = out.context("--out DIR is required")?;
    let env = spar_dist::DistEnv::from_env()?;
    let dist = spar_dist::init(
        &env,
        &spar_dist::InitOptions {
            timeout: std::time::Duration::from_secs(60),
            ..Default::default()
        },
    )?;
    let group: Arc<dyn spar_dist::Collectives> = dist.group.clone();
    let experts = dist.expert_group(expert_parallel)?;
    let (rank, world) = (group.rank(), group.world_size());
    let share = |items: &[TrainItem]| -> Vec<TrainItem> {
        items
            .iter()
            .enumerate()
            .filter(|(i, _)| i % world == rank)
            .map(|(_, it)| {
                let mut it = it.clone();
                if one_expert {
                    // Routing replay: every token of both MoE layers to experts 0 and 1.
                    let t = it.input_ids.len();
                    it.routed = Some((2, 2, [0i64, 1].repeat(t * 2)));
                }
                it
            })
            .collect()
    };

    let mut model = Qwen3Model::random(
        Qwen3Config::from_json_str(CONFIG, "dp-check config")?,
        Device::Cpu,
        Kind::Float,
        7,
    )?;
    model.set_activation_checkpointing(checkpointing);
    let tr = TrainerSection {
        micro_batch,
        loss_agg: LossAgg::SeqMeanTokenMean,
        lr: 1e-3,
        grad_clip: 0.5,
        // `--aux`: the MoE load-balancing loss on, over the ranks' tokens at each micro-batch step. Micro-batches
        // take items in order (no token budget), so one process with `--micro-batch` (world x 2) cuts the batch
        // into the unions of the ranks' micro-batches.
        aux_loss_coef: aux.then_some(0.05),
        ..Default::default()
    };
    let loss_cfg = policy_loss_config(&tr, ratio_level(&tr), 1.0)?;
    let batching = batching_config(&tr)?;
    let mut learner = new_learner(&tr, &model, tr.lr, 100, 0)?;
    learner.at_rest = at_rest;
    learner.join(group.clone(), &mut model, sharded, Some(experts))?;
    let mut session = Session::open(&out, 0, resume, 2, group.clone())?;
    session.sharded = sharded;
    session.at_rest = at_rest;
    let mut first = 0;
    if resume {
        let dir = session
            .resume_dir
            .take()
            .context("--resume: no checkpoint under DIR/checkpoints")?;
        let st = checkpoint::load_learner(&dir, &mut model, &mut learner)?;
        learner.step = st.extra["learner_step"].as_u64().context("learner_step")? as usize;
        first = st.phase_step;
    }
    let sft_batching = spar_trainer::learner::BatchingConfig {
        agg: LossAgg::TokenMean,
        ..batching
    };
    let mut reports = Vec::new();
    for update in first..4 {
        if stop_after == Some(update) {
            session.global_step = learner.step;
            session.checkpoint("rl", update, &model, &learner, &[&learner])?;
            eprintln!("dp-check: rank {rank} of {world} checkpointed after {update} updates");
            return Ok(());
        }
        let steps = match update {
            // Two PPO epochs on one batch (the second sees moved weights and Adam moments).
            0 => rl_update(
                &model,
                None,
                &mut learner,
                &share(&batch(1, 7, |_| 1.0)),
                &loss_cfg,
                &batching,
                2,
                Device::Cpu,
            )?,
            // Advantages only on items 0 and 6 (rank 0's share with 2 or 3 ranks): every rank must still step.
            1 => rl_update(
                &model,
                None,
                &mut learner,
                &share(&batch(2, 7, |i| (i % 6 == 0) as u8 as f32)),
                &loss_cfg,
                &batching,
                1,
                Device::Cpu,
            )?,
            // No advantage anywhere: every rank skips.
            2 => rl_update(
                &model,
                None,
                &mut learner,
                &share(&batch(3, 7, |_| 0.0)),
                &loss_cfg,
                &batching,
                1,
                Device::Cpu,
            )?,
            // One supervised step (token-mean, as `spar train`'s SFT phase).
            _ => vec![sft_update(
                &model,
                &mut learner,
                &share(&batch(4, 5, |_| 0.0)),
                &sft_batching,
                Device::Cpu,
            )?],
        };
        reports.extend(steps.iter().map(report));
    }
    let overlap = learner
        .grad_sum
        .as_ref()
        .map_or((0, 0), |s| s.overlap_counts());
    // Sharded at rest the model holds stand-ins: gather the weights once (every rank) for the file below.
    if let Some(sh) = learner
        .sharded
        .as_ref()
        .filter(|_| at_rest == AtRest::Sharded)
    {
        sh.unshard()?;
    }
    if rank == 0 {
        std::fs::create_dir_all(&out)?;
        std::fs::write(
            out.join("report.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "world": world, "steps": reports,
                "overlapped_units": overlap.0, "reduced_units": overlap.1,
            }))?,
        )?;
        model.vs.save(out.join("weights.safetensors"))?;
    }
    group.barrier()?.wait()?;
    eprintln!("dp-check: rank {rank} of {world} done");
    Ok(())
}
