//! `spar train`: the whole M3 loop over parts built from one recipe (spar-app's builder). The held-out
//! evaluation runs first (the scripted expert's ceiling and the untrained policy), then the SFT phase, the held-out
//! evaluation again, the RL phase (colocated or one-step off-policy RL, or distillation), the last evaluation, and
//! the results: `comparison.json`, transcripts, plots, `final/`. Each phase resumes from the run's checkpoints.
//!
//! Data parallel (`parts.group` of N > 1 ranks): every rank starts from rank 0's weights (broadcast), plays
//! `groups_per_step / N` groups per round from its own share of the cases with its own seed, and learns with
//! global counts and all-reduced gradients (see [`crate::learner`]); round metrics cover every rank's samples.
//! Rank 0 alone evaluates and writes metrics, checkpoints, transcripts, plots and `final/`.
use crate::knobs::{batching_config, policy_loss_config, ratio_level};
use crate::learner::BatchingConfig;
use crate::parts::{EvalSummary, Evaluator, TrainParts};
use crate::report::{
    HeldOutTable, SampledRows, log_eval, log_eval_as, write_results, write_transcripts,
};
use crate::rl_phase::{RlInputs, RlState};
use crate::rl_round::LearnConfig;
use crate::session::Session;
use crate::sharded::{AtRest, ShardedParams};
use anyhow::{Context, Result, bail};
use spar_core::recipe::PolicyLoss;
use spar_model::Qwen3Model;
use spar_rollout::Policy;

/// Runs the recipe end to end.
pub fn run(parts: TrainParts) -> Result<()> {
    let TrainParts {
        recipe,
        out,
        resume,
        mut model,
        tokenizer_dir,
        train_cases,
        mut sft_rollout,
        sft_teacher,
        rl_rollout,
        generation,
        rewards,
        runtime,
        cases_by_id,
        evaluator,
        expert,
        teachers,
        teacher_samples,
        reference_dir,
        group,
        expert_group,
        actors,
        server_weights,
    } = parts;
    let tr = recipe.require(&recipe.trainer, "trainer")?.clone();
    let (rank, world) = (group.rank(), group.world_size());
    let writer = rank == 0;
    let seed = recipe.seed.unwrap_or(0);
    let loss_cfg = policy_loss_config(
        &tr,
        ratio_level(&tr),
        rl_rollout.config().sampling.temperature,
    )?;
    let batching = batching_config(&tr)?;
    let use_gae = rewards.config().spar.estimator == spar_core::recipe::Estimator::Gae;
    let sharded = recipe
        .distributed
        .as_ref()
        .is_some_and(|d| d.sharding == spar_core::recipe::Sharding::Full);
    if world > 1 || sharded {
        check_data_parallel(&tr, use_gae, rl_rollout.config().groups_per_step, world)?;
    }
    if let Some(link) = &actors {
        check_actors(&tr, generation, rl_rollout.config().groups_per_step, link)?;
    }
    if sharded {
        eprintln!(
            "[train] fully sharded over {world} rank(s): parameters, gradients, fp32 masters and Adam moments \
             1/{world} per rank during updates"
        );
    }
    let at_rest = match &recipe.distributed {
        Some(d) if d.sharded_at_rest() => AtRest::Sharded,
        _ => AtRest::Whole,
    };
    if at_rest == AtRest::Sharded {
        let (state_gb, root_gb, layer_gb) =
            crate::sharded::at_rest_memory(&model.config, model.kind(), world);
        eprintln!(
            "[train] weights sharded at rest: no rank holds the whole model; rounds and held-out evaluations \
             play through the rollout server, and checkpoints, the final model and every policy version are \
             written one unit at a time. Per rank: {state_gb:.2} GB of fp32 masters, gradients and Adam \
             moments; during an update also the root ({root_gb:.2} GB) and one layer at a time (up to \
             {layer_gb:.2} GB) whole"
        );
    }
    // Every rank starts from rank 0's weights (they are built from the same seed; this makes sure). A model
    // whose weights are still in the files (sharded at rest) has none to send: every rank reads its chunks.
    if world > 1 && model.unread_weights().is_none() {
        let tensors = crate::actor_feed::ordered_params(&model);
        spar_dist::broadcast_tensors(&*group, &tensors, 0)?;
    }
    if world > 1 {
        eprintln!(
            "[train] data parallel: rank {rank} of {world}, {} of rollout.groups_per_step = {} groups per round",
            rl_rollout.config().groups_per_step / world,
            rl_rollout.config().groups_per_step
        );
    }
    let mut rl_rollout = rl_rollout.shard(rank, world)?;

    let mut session = Session::open(&out, seed, resume, tr.keep_last, group.clone())?;
    session.sharded = sharded;
    session.at_rest = at_rest;
    if let Some(eg) = expert_group.as_ref().filter(|g| g.world_size() > 1) {
        eprintln!(
            "[train] expert parallel: rank {rank}'s MoE layers compute 1/{} of the experts in training forwards",
            eg.world_size()
        );
    }
    session.expert_group = expert_group;
    // Every checkpoint records the recipe its run went on under (a shared SFT checks runs against it).
    session.state.extra.insert(
        crate::shared_sft::RECIPE_KEY.into(),
        serde_json::to_value(&recipe)?,
    );
    if tr.sft_steps == 0 && session.in_phase("sft").is_some() {
        session.enter("rl");
    }
    // Held-out evaluations are rank 0's: the other ranks skip them (and wait at their next collective). Sharded
    // at rest, every rank first publishes the weights to the rollout server, which then plays them
    // (`sharder`: the phase's learner's; `version`: the label the server gets).
    let held_out = |s: &mut Session,
                    model: &Qwen3Model,
                    sharder: Option<&ShardedParams>,
                    version: u64,
                    name: &str,
                    sampled: bool|
     -> Result<(EvalSummary, Option<EvalSummary>)> {
        if s.at_rest == AtRest::Sharded {
            let sw = server_weights
                .as_ref()
                .context("weights sharded at rest need [rollout.weight_sync]")?;
            sw.publish(model, version, s.global_step, sharder, &*s.group, &runtime)?;
        }
        if !s.writer() {
            return Ok((EvalSummary::default(), None));
        }
        let greedy = evaluate_and_write(evaluator.as_ref(), eval_policy(s, model), &s.out, name)?;
        // `[eval.sampled]`, after SFT and after RL: the same weights, several sampled consultations a case.
        let sampled = match sampled {
            true => evaluator.evaluate_sampled(eval_policy(s, model))?,
            false => None,
        };
        let sampled = match sampled {
            Some((summary, transcripts)) => {
                write_transcripts(&s.out, &format!("{name}-sampled"), &transcripts)?;
                Some(summary)
            }
            None => None,
        };
        Ok((greedy, sampled))
    };
    // The expert's score on the same held-out consultations is the ceiling; the untrained model's is the floor.
    let expert_row = if writer {
        evaluator.evaluate(Policy::Scripted(expert))?.0
    } else {
        EvalSummary::default()
    };
    let initial = session.once("eval_initial", |s| {
        held_out(s, &model, None, 0, "initial", false).map(|(greedy, _)| greedy)
    })?;

    crate::sft_phase::run(
        &mut session,
        &tr,
        &mut model,
        train_cases,
        &mut sft_rollout,
        sft_teacher,
        &batching,
    )?;

    let mut rl = RlState::start(&mut session, &tr, &mut model, &mut rl_rollout, use_gae)?;
    let before = session.once("eval_before", |s| {
        let version = s.in_phase("rl").unwrap_or(0) as u64;
        let (summary, sampled) = held_out(
            s,
            &model,
            rl.learner.sharded.as_deref(),
            version,
            "before",
            true,
        )?;
        log_eval(s, 0, &summary)?;
        if let Some(sampled) = &sampled {
            log_eval_as(s, 0, sampled, "eval_sampled")?;
        }
        // Kept apart from "eval_before", whose checkpoints from before `[eval.sampled]` hold a summary alone.
        s.state
            .extra
            .insert(BEFORE_SAMPLED_KEY.into(), serde_json::to_value(&sampled)?);
        Ok(summary)
    })?;
    let before_sampled: Option<EvalSummary> = match session.state.extra.get(BEFORE_SAMPLED_KEY) {
        Some(v) => serde_json::from_value(v.clone())?,
        None => None,
    };
    // KL to a frozen reference (`trainer.kl_coef`): `[model] reference`, else the policy entering RL.
    let reference = if tr.kl_coef != 0.0 && session.in_phase("rl").is_some() {
        if reference_dir.is_none()
            && session.state.phase_step > 0
            && !out.join("reference").exists()
        {
            eprintln!(
                "[train] warning: resuming RL with no saved KL reference; the reference is the resumed policy"
            );
        }
        // Rank 0 snapshots the reference; the others load that snapshot once it is on disk.
        let load = || crate::reference::load_or_snapshot(&model, reference_dir.as_deref(), &out);
        let reference = if writer { Some(load()?) } else { None };
        group.barrier()?.wait()?;
        match reference {
            Some(r) => Some(r),
            None => Some(load()?),
        }
    } else {
        None
    };
    let teacher_pool = match &teacher_samples {
        Some((samples, origin)) if tr.policy_loss == PolicyLoss::Distill => Some(
            crate::distill_loop::teacher_sample_items(samples, origin, model.config.vocab_size)?,
        ),
        _ => None,
    };
    let learn = LearnConfig {
        loss: &loss_cfg,
        batching: &batching,
        ppo_epochs: tr.ppo_epochs,
        update_kl: tr.update_kl,
        routing_replay: tr.routing_replay,
        distill_coef: tr.distill.coef,
        task_coef: tr.distill.task_coef,
        device: model.device(),
        reference: reference.as_ref(),
        placebo: tr.placebo.then_some(seed),
    };
    let inputs = RlInputs {
        rollout: &mut rl_rollout,
        generation,
        rewards: &rewards,
        cases: &cases_by_id,
        teachers: &teachers,
        teacher_pool: teacher_pool.as_deref(),
        runtime: &runtime,
        evaluator: evaluator.as_ref(),
        actors,
        server_weights: server_weights.as_ref(),
    };
    let sft_batching = BatchingConfig {
        agg: crate::agg::AggMode::TokenMean,
        ..batching
    };
    crate::rl_phase::run(
        &mut session,
        &tr,
        &model,
        &mut rl,
        inputs,
        &learn,
        &sft_batching,
    )?;

    let sharder = rl.learner.sharded.clone();
    let (after, after_sampled) = held_out(
        &mut session,
        &model,
        sharder.as_deref(),
        tr.steps as u64,
        "after",
        true,
    )?;
    // Sharded at rest, the final model is written by every rank together.
    let final_written = at_rest == AtRest::Sharded;
    if final_written {
        let dir = out.join("final");
        crate::sharded::save_policy(&model, &dir, writer, sharder.as_deref())?;
    }
    if !writer {
        eprintln!("[train] rank {rank}: done (rank 0 writes the results)");
        return Ok(());
    }
    log_eval(&mut session, 1, &after)?;
    if let Some(sampled) = &after_sampled {
        log_eval_as(&mut session, 1, sampled, "eval_sampled")?;
    }
    let table = HeldOutTable {
        initial,
        before_rl: before,
        after_rl: after,
        expert: expert_row,
        sampled: after_sampled.map(|after_rl| SampledRows {
            label: evaluator.sampled_label().unwrap_or_default(),
            before_rl: before_sampled,
            after_rl,
        }),
    };
    write_results(
        &out,
        seed,
        evaluator.cases(),
        &table,
        (!final_written).then_some(&model),
        &tokenizer_dir,
    )
}

/// What a data-parallel run (world size `world` > 1) cannot do yet, refused before any work starts.
fn check_data_parallel(
    tr: &spar_core::recipe::TrainerSection,
    use_gae: bool,
    groups_per_step: usize,
    world: usize,
) -> Result<()> {
    // An SFT-only run (no RL rounds) plays no groups.
    if tr.steps > 0 && !groups_per_step.is_multiple_of(world) {
        bail!(
            "rollout.groups_per_step = {groups_per_step} is not divisible by the {world} data-parallel ranks \
             (each rank plays groups_per_step / {world} groups per round)"
        );
    }
    if tr.policy_loss == PolicyLoss::Distill {
        bail!(
            "trainer.policy_loss = \"distill\" (offline distillation) is not built for data-parallel training: \
             run it in one process without sharding (on-policy distillation, trainer.distill.teachers with an \
             RL loss, is)"
        );
    }
    if use_gae {
        bail!(
            "rewards.spar.estimator = \"gae\" is not built for data-parallel training (the value head's \
             whitening and gradients are per rank): run it in one process without sharding"
        );
    }
    Ok(())
}

/// What actors apart from learners cannot do, refused before any work starts (by the learners and the actors).
pub(crate) fn check_actors(
    tr: &spar_core::recipe::TrainerSection,
    generation: crate::parts::Generation,
    groups_per_step: usize,
    link: &crate::actor_layout::ActorLink,
) -> Result<()> {
    let a = link.actors;
    if tr.steps > 0 && !groups_per_step.is_multiple_of(a) {
        bail!(
            "rollout.groups_per_step = {groups_per_step} is not divisible by distributed.actors = {a} (each actor \
             plays groups_per_step / {a} groups per round)"
        );
    }
    if tr.off_policy_one_step {
        bail!(
            "trainer.off_policy_one_step with distributed.actors: the actors' schedule is \
             distributed.max_policy_lag (1 is the one-step off-policy schedule, run concurrently); drop \
             off_policy_one_step"
        );
    }
    if tr.policy_loss == PolicyLoss::Distill {
        bail!(
            "trainer.policy_loss = \"distill\" (offline distillation) plays no RL rounds: run it without actors"
        );
    }
    if generation != crate::parts::Generation::Builtin {
        bail!(
            "distributed.actors: actors generate with the built-in engine; [rollout] backend = \"openai\" \
             already plays apart from the learner (run without actors)"
        );
    }
    Ok(())
}

/// The policy a held-out evaluation plays: the built-in engine over `model`'s whole weights, or, with the
/// weights sharded at rest, the rollout server (which must hold them: see `server_weights`).
/// The checkpoint's key for the sampled held-out evaluation after SFT (`[eval.sampled]`; null without one).
const BEFORE_SAMPLED_KEY: &str = "eval_before_sampled";

pub(crate) fn eval_policy<'m>(session: &Session, model: &'m Qwen3Model) -> Policy<'m> {
    match session.at_rest {
        AtRest::Whole => Policy::Builtin(model),
        AtRest::Sharded => Policy::External,
    }
}

/// Evaluates `policy` and writes the transcripts to `OUT/transcripts/<name>.md` (atomically).
fn evaluate_and_write(
    evaluator: &dyn Evaluator,
    policy: Policy<'_>,
    out: &std::path::Path,
    name: &str,
) -> Result<EvalSummary> {
    let (summary, transcripts) = evaluator.evaluate(policy)?;
    spar_core::fsio::write_atomic(
        &out.join("transcripts").join(format!("{name}.md")),
        transcripts.as_bytes(),
    )?;
    Ok(summary)
}
