//! Phase 1 of `spar train`: supervised fine-tuning on the scripted expert's consultations, played in the
//! rollout's own environment (the simulator's opening and answers, the recipe's stage instructions, turn limits
//! and chat template), so the token stream the policy learns from is exactly the one it later generates into.
//!
//! Data parallel: every rank plays the same expert consultations and draws the same batch from the same RNG,
//! then learns its contiguous share of it (rank r of N: items `r*B/N .. (r+1)*B/N`); counts and gradients are
//! summed over the ranks, so the step is the one-process step on the whole batch.
use crate::agg::AggMode;
use crate::batch::TrainItem;
use crate::checkpoint;
use crate::learner::{BatchingConfig, sft_update};
use crate::progress::bar;
use crate::session::Session;
use anyhow::{Result, bail};
use rand::seq::IndexedRandom;
use spar_core::Case;
use spar_core::recipe::TrainerSection;
use spar_model::Qwen3Model;
use spar_rollout::env::ScriptedDoctor;
use spar_rollout::{Policy, Rollout};
use std::collections::HashMap;
use std::sync::Arc;

/// Runs SFT from the session's position (nothing when the run is past it) and leaves the session at the start
/// of RL. Checkpoints every `10 * save_every` steps and at the end.
pub fn run(
    session: &mut Session,
    tr: &TrainerSection,
    model: &mut Qwen3Model,
    cases: usize,
    player: &mut Rollout,
    teacher: Arc<dyn ScriptedDoctor>,
    batching: &BatchingConfig,
) -> Result<()> {
    let Some(start) = session.in_phase("sft") else {
        return Ok(());
    };
    let mut learner = crate::knobs::new_learner(
        tr,
        model,
        tr.sft_lr,
        tr.sft_steps,
        tr.warmup_steps.min(tr.sft_steps / 10),
    )?;
    learner.at_rest = session.at_rest;
    learner.join(
        session.group.clone(),
        model,
        session.sharded,
        session.expert_group.clone(),
    )?;
    let (rank, world) = (session.group.rank(), session.group.world_size());
    if let Some(dir) = session.resume_dir.take() {
        checkpoint::load_learner(&dir, model, &mut learner)?;
        learner.step = start;
    }
    let batching = BatchingConfig {
        agg: AggMode::TokenMean,
        ..*batching
    };
    eprintln!(
        "[train] SFT on {} of {} training cases (trainer.sft_fraction = {}); RL plays all of them",
        player.case_count(),
        cases,
        tr.sft_fraction
    );
    let items = expert_items(player, teacher)?;
    let pb = bar(tr.sft_steps as u64, "sft");
    pb.set_position(start as u64);
    for s in start..tr.sft_steps {
        let batch: Vec<TrainItem> = items
            .choose_multiple(&mut session.rng, tr.sft_batch.min(items.len()))
            .cloned()
            .collect();
        let share = &batch[rank * batch.len() / world..(rank + 1) * batch.len() / world];
        let rep = sft_update(model, &mut learner, share, &batching, model.device())?;
        session.global_step += 1;
        pb.inc(1);
        pb.set_message(format!("loss {:.3}", rep.loss));
        session.log(&[
            ("sft/loss".into(), rep.loss),
            ("sft/grad_norm".into(), rep.grad_norm),
            ("sft/lr".into(), rep.lr),
            (
                "sft/entropy".into(),
                rep.stats.entropy_sum / rep.stats.tokens.max(1.0),
            ),
        ])?;
        let done = s + 1;
        if done == tr.sft_steps {
            session.checkpoint("rl", 0, model, &learner, &[])?;
        } else if tr.save_every > 0 && done % (tr.save_every * 10) == 0 {
            session.checkpoint("sft", done, model, &learner, &[])?;
        }
    }
    pb.finish();
    // Resumed with `sft_steps` at or below the checkpoint's position: SFT is done.
    if session.state.phase == "sft" {
        session.enter("rl");
    }
    Ok(())
}

/// The first `round(n * fraction)` cases (at least one) of each diagnosis, in file order: every diagnosis is
/// taught, and the rest are patients only RL meets.
pub fn sft_subset(cases: &[Case], fraction: f64) -> Vec<Case> {
    let mut per_dx: HashMap<&str, usize> = HashMap::new();
    for c in cases {
        *per_dx.entry(c.diagnosis.icd10.as_str()).or_default() += 1;
    }
    let mut taken: HashMap<&str, usize> = HashMap::new();
    cases
        .iter()
        .filter(|c| {
            let dx = c.diagnosis.icd10.as_str();
            let keep = ((per_dx[dx] as f64 * fraction).round() as usize).max(1);
            let t = taken.entry(dx).or_default();
            *t += 1;
            *t <= keep
        })
        .cloned()
        .collect()
}

/// SFT items: `teacher`'s consultation of each of the player's cases (whole episodes, one sample each). Loss on
/// the doctor's tokens.
pub fn expert_items(
    player: &mut Rollout,
    teacher: Arc<dyn ScriptedDoctor>,
) -> Result<Vec<TrainItem>> {
    let n = player.case_count();
    let groups = player.collect_groups(Policy::Scripted(teacher), n)?;
    let mut items = Vec::new();
    for g in &groups {
        let Some(s) = g.samples.first() else { continue };
        let t = s.token_ids.len();
        if t < 2 || s.end_reason.is_failure() {
            continue;
        }
        let input_ids: Vec<i64> = s.token_ids.iter().map(|&x| x as i64).collect();
        let mut targets = vec![0i64; t];
        let mut m = vec![0f32; t];
        for p in 0..t - 1 {
            targets[p] = input_ids[p + 1];
            m[p] = s.loss_mask[p + 1] as f32;
        }
        items.push(TrainItem {
            group_id: format!("sft/{}", s.case_id),
            sample_idx: 0,
            input_ids,
            targets,
            mask: m,
            advantages: vec![0.0; t],
            step_ids: vec![-1; t],
            n_steps: 0,
            rollout_logp: vec![0.0; t],
            routed: None,
            reward: 0.0,
        });
    }
    if items.is_empty() {
        bail!("no SFT consultation could be played from {n} cases");
    }
    Ok(items)
}
