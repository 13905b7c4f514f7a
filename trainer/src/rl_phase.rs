//! Phase 2 of `spar train`: RL rounds with SPAR advantages and the Fact-Aware reward (colocated or one-step
//! off-policy), or the distillation variants (offline from teachers or a teacher-samples file). Each round plays
//! or reads a batch and learns it; every `log_every` rounds the window's mean metrics are logged and a console
//! line printed, every `eval_every` rounds the held-out evaluation runs (a held-out curve during RL, `eval/*`),
//! and every `save_every` rounds the run is checkpointed.
use crate::actor_feed::ActorFeed;
use crate::actor_layout::ActorLink;
use crate::batch::TrainItem;
use crate::checkpoint::{self, TrainerState};
use crate::critic::Critic;
use crate::learner::{BatchingConfig, Learner};
use crate::off_policy::RoundScheduler;
use crate::parts::{Evaluator, Generation};
use crate::profiling::RoundProfiler;
use crate::progress::bar;
use crate::report::{log_eval, round_metrics, write_transcripts};
use crate::rl_round::{LearnConfig, PlayedRound, learn_round, play_round};
use crate::server_weights::ServerWeights;
use crate::session::{Checkpointed, Session};
use anyhow::{Context, Result};
use spar_core::Case;
use spar_core::recipe::PolicyLoss;
use spar_core::recipe::TrainerSection;
use spar_model::Qwen3Model;
use spar_model::torch_profiler::range;
use spar_rewards::RewardPipeline;
use spar_rollout::Rollout;
use std::collections::HashMap;
use std::path::Path;

/// What the RL phase plays and learns with (borrowed from the run's parts).
pub struct RlInputs<'a> {
    pub rollout: &'a mut Rollout,
    pub generation: Generation,
    pub rewards: &'a RewardPipeline,
    pub cases: &'a HashMap<String, Case>,
    pub teachers: &'a [(String, Qwen3Model)],
    /// Offline distillation from a file: its training items.
    pub teacher_pool: Option<&'a [TrainItem]>,
    pub runtime: &'a tokio::runtime::Runtime,
    /// The held-out evaluation run every `trainer.eval_every` rounds.
    pub evaluator: &'a dyn Evaluator,
    /// Actors apart (`[distributed] actors`): the rounds come from them instead of `rollout`.
    pub actors: Option<ActorLink>,
    /// The external rollout server's weight refresh (`[rollout.weight_sync]`), if any.
    pub server_weights: Option<&'a ServerWeights>,
}

/// The RL phase's learner-side state besides the model (restored from a checkpoint, saved into the next).
pub struct RlState {
    pub learner: Learner,
    pub critic: Option<Critic>,
    pub pending: Option<PlayedRound>,
}

impl RlState {
    /// A fresh learner for `tr.steps` rounds (and a critic with GAE), or the one of the checkpoint the session
    /// resumes from (which also restores `rollout`'s stage pools).
    pub fn start(
        session: &mut Session,
        tr: &TrainerSection,
        model: &mut Qwen3Model,
        rollout: &mut Rollout,
        use_gae: bool,
    ) -> Result<RlState> {
        // The schedule counts optimizer steps: `ppo_epochs` per RL round (one per offline distillation round).
        let per_round = if tr.policy_loss == PolicyLoss::Distill {
            1
        } else {
            tr.ppo_epochs.max(1)
        };
        // A checkpoint from the end of SFT (phase rl, step 0) holds SFT's optimizer: RL starts with a fresh one
        // over its weights, as the uninterrupted run does, so a run resumed there (or started from a shared SFT)
        // learns exactly like one that went straight on.
        let resume_dir = session.resume_dir.take();
        let at_rl_start = resume_dir.is_some() && session.state.phase_step == 0;
        if let (Some(dir), true) = (&resume_dir, at_rl_start) {
            match model.unread_weights() {
                // Sharded at rest: the RL learner's sharder reads its chunks of the checkpoint's weights.
                Some(_) if model.param_units().is_none() => {
                    model.stand_in_for(&dir.join("model"))?
                }
                _ => crate::policy::Policy::load_weights(model, &dir.join("model"))?,
            }
        }
        let mut learner =
            crate::knobs::new_rl_learner(tr, model, tr.lr, tr.steps * per_round, tr.warmup_steps)?;
        learner.at_rest = session.at_rest;
        learner.join(
            session.group.clone(),
            model,
            session.sharded,
            session.expert_group.clone(),
        )?;
        let critic = use_gae.then(|| {
            Critic::new(
                model.config.vocab_size as i64,
                model.device(),
                tr.gae.clone(),
                tr.grad_clip,
            )
        });
        let mut st = RlState {
            learner,
            critic,
            pending: None,
        };
        if let Some(dir) = resume_dir {
            st.restore(&dir, &session.state, model, rollout, !at_rl_start)?;
        }
        Ok(st)
    }

    /// Restores the RL state of checkpoint `dir`; the weights and optimizer too when `optimizer` (a checkpoint
    /// taken during RL).
    fn restore(
        &mut self,
        dir: &Path,
        state: &TrainerState,
        model: &mut Qwen3Model,
        rollout: &mut Rollout,
        optimizer: bool,
    ) -> Result<()> {
        if optimizer {
            checkpoint::load_learner(dir, model, &mut self.learner)?;
        }
        // Optimizer steps taken (skipped ones are not counted), as saved; older checkpoints had one per round.
        self.learner.step = state
            .extra
            .get("learner_step")
            .and_then(|v| v.as_u64())
            .map_or(state.phase_step, |v| v as usize);
        if let Some(saved) = state.extra.get("stage_pools_of_ranks") {
            // Another world size wrote the checkpoint: keep the pooled segments of this rank's cases.
            let saved: Vec<spar_rollout::StagePools> =
                serde_json::from_value(saved.clone()).context("checkpoint stage_pools_of_ranks")?;
            let (rank, world) = (self.learner.group.rank(), self.learner.group.world_size());
            let pools =
                spar_rollout::StagePools::reshard(saved, |id| rollout.has_case(id), rank, world);
            rollout.restore_pools(pools);
        } else if !state.stage_pools.is_null() {
            rollout.restore_pools(
                serde_json::from_value(state.stage_pools.clone())
                    .context("checkpoint stage_pools")?,
            );
        }
        if let Some(c) = &mut self.critic {
            // A checkpoint from the end of SFT has no critic yet; one taken during RL must.
            if dir.join("critic").exists() || state.phase_step > 0 {
                c.load(dir)?;
            }
        }
        if let Some(v) = state.extra.get("pending_round") {
            self.pending =
                Some(serde_json::from_value(v.clone()).context("checkpoint pending_round")?);
        }
        Ok(())
    }
}

/// Runs the RL rounds from the session's position to `tr.steps`.
pub fn run(
    session: &mut Session,
    tr: &TrainerSection,
    model: &Qwen3Model,
    st: &mut RlState,
    inputs: RlInputs<'_>,
    learn: &LearnConfig,
    sft_batching: &BatchingConfig,
) -> Result<()> {
    let distill = tr.policy_loss == PolicyLoss::Distill;
    let RlInputs {
        rollout,
        generation,
        rewards,
        cases,
        teachers,
        teacher_pool,
        runtime,
        evaluator,
        actors,
        server_weights,
    } = inputs;
    // With actors, every learner takes part in the start-up exchange even when no round is left (a resumed run
    // that had finished RL), so that the actors learn there is nothing to play and exit.
    let mut feed = match actors {
        Some(link) => {
            let at = session.in_phase("rl").unwrap_or(tr.steps);
            Some(ActorFeed::start(link, tr.steps, at, &session.state, model)?)
        }
        None => None,
    };
    let Some(start) = session.in_phase("rl") else {
        return Ok(());
    };
    // Data parallel: each rank plays its share of the round's groups (run.rs checked the division).
    let (group, writer) = (session.group.clone(), session.writer());
    let groups = rollout.config().groups_per_step / group.world_size();
    let pb = bar(tr.steps as u64, if distill { "distill" } else { "rl" });
    pb.set_position(start as u64);
    // The external server plays the first round with the policy entering RL (after SFT, or resumed).
    let server_weights = server_weights.filter(|_| !distill);
    if let Some(sw) = server_weights {
        let sharded = st.learner.sharded.as_deref();
        sw.publish(
            model,
            start as u64,
            session.global_step,
            sharded,
            &*group,
            runtime,
        )?;
    }
    let mut rounds = RoundScheduler::new(tr.off_policy_one_step, st.pending.take());
    let mut window = MetricWindow::default();
    let mut profiler = RoundProfiler::new(
        &tr.profile,
        &session.out,
        &format!("rank{}", group.rank()),
        model.device().is_cuda(),
    )?;
    for s in start..tr.steps {
        profiler.begin(s + 1)?;
        let t0 = std::time::Instant::now();
        // Seconds of the step the round's time line accounts for (playing and learning).
        let mut timed = 0.0;
        let mut scalars = match (distill, teacher_pool) {
            (true, Some(pool)) => crate::distill_loop::offline_round_from_pool(
                model,
                &mut st.learner,
                pool,
                &mut session.rng,
                groups * rollout.config().group_size,
                sft_batching,
                model.device(),
            )?,
            (true, None) => crate::distill_loop::offline_round(
                model,
                teachers,
                rollout,
                &mut st.learner,
                sft_batching,
                groups,
                s,
                model.device(),
            )?,
            (false, _) => {
                let t_play = std::time::Instant::now();
                let span = range("rl/play");
                let (round, arrival) = match &mut feed {
                    Some(f) => {
                        let (round, arrival) = f.round(s)?;
                        (round, Some(arrival))
                    }
                    None => {
                        // The engine decodes now: the optimizer state can wait in host memory
                        // (`trainer.offload_optimizer`; the update brings it back).
                        st.learner.park_optimizer()?;
                        let round = rounds.next(s, tr.steps, |version| {
                            play_round(
                                rollout, model, generation, version, groups, rewards, runtime,
                                cases,
                            )
                        })?;
                        (round, None)
                    }
                };
                let play_seconds = t_play.elapsed().as_secs_f64();
                drop(span);
                let mut scalars = union_round_metrics(&*group, &round)?;
                let t_learn = std::time::Instant::now();
                let span = range("rl/learn");
                scalars.extend(learn_round(
                    model,
                    &mut st.learner,
                    &round,
                    s as u64,
                    learn,
                    teachers,
                    st.critic.as_mut(),
                )?);
                let learn_seconds = t_learn.elapsed().as_secs_f64();
                drop(span);
                let span = range("rl/weight_sync");
                let sync_seconds = match server_weights {
                    // `global_step + 1`: this round's step is counted below.
                    Some(sw) => sw.publish(
                        model,
                        s as u64 + 1,
                        session.global_step + 1,
                        st.learner.sharded.as_deref(),
                        &*group,
                        runtime,
                    )?,
                    None => 0.0,
                };
                drop(span);
                // The round's time line (this rank's): playing (generation, then scoring) and learning; the
                // rest of the step (metrics, collectives waiting for other ranks) is `time/other_s`. With actors
                // the learner plays nothing: it waits for its actors' round (idle), learns (busy) and sends the
                // new weights; the actors' busy seconds are theirs, in parallel with both.
                match (&mut feed, arrival) {
                    (Some(f), Some(arrival)) => {
                        let publish_seconds = f.updated(s as u64 + 1)?;
                        scalars.push(("time/learner_wait_s".into(), arrival.wait_seconds));
                        scalars.push(("time/actor_busy_s".into(), arrival.actor_busy_seconds));
                        scalars.push(("time/publish_s".into(), publish_seconds));
                        let stale =
                            spar_dist::sum_over_ranks(&*group, &[arrival.stale_dropped as f64])?[0];
                        scalars.push(("rl/samples_stale_dropped".into(), stale));
                        timed = play_seconds + learn_seconds + publish_seconds;
                    }
                    _ => {
                        scalars.push(("time/play_s".into(), play_seconds));
                        if server_weights.is_some() {
                            scalars.push(("time/weight_sync_s".into(), sync_seconds));
                        }
                        timed = play_seconds + learn_seconds + sync_seconds;
                    }
                }
                scalars.push(("time/generate_s".into(), round.gen_seconds));
                scalars.extend(round.engine_metrics());
                scalars.push(("time/score_s".into(), round.score_seconds));
                scalars.push(("time/learn_s".into(), learn_seconds));
                // Every rank generates at once: the job's throughput is the sum of the ranks'.
                let tps = spar_dist::sum_over_ranks(&*group, &[round.gen_tokens_per_s()])?[0];
                scalars.push(("rl/gen_tokens_per_s".into(), tps));
                scalars
            }
        };
        let step_seconds = t0.elapsed().as_secs_f64();
        profiler.end(s + 1)?;
        if timed > 0.0 {
            scalars.push(("time/other_s".into(), (step_seconds - timed).max(0.0)));
        }
        scalars.push(("rl/step_seconds".into(), step_seconds));
        session.global_step += 1;
        pb.inc(1);
        let done = s + 1;
        let save_now = done == tr.steps || (tr.save_every > 0 && done % tr.save_every == 0);
        window.add(&scalars);
        // A checkpoint flushes the window: a resumed run keeps the metrics up to its checkpoint.
        if window.rounds >= tr.log_every.max(1) || save_now {
            let means = window.take();
            session.log(&means)?;
            let (label, key) = if distill {
                ("forward KL", "distill/forward_kl")
            } else {
                ("reward", "rl/reward_mean")
            };
            let value = means
                .iter()
                .find(|(k, _)| k == key)
                .map_or(f64::NAN, |x| x.1);
            pb.set_message(format!("{label} {value:.3}"));
            if writer {
                pb.println(console_line(done, tr.steps, &means));
            }
        }
        // Rank 0 alone evaluates; the others wait for it at the next round's first collective. (Sharded at
        // rest, it plays through the rollout server, which got this round's weights above.)
        if writer && tr.eval_every > 0 && done % tr.eval_every == 0 && done < tr.steps {
            // The last round's evaluation is the run's "after RL" one.
            let (summary, transcripts) =
                evaluator.evaluate(crate::run::eval_policy(session, model))?;
            write_transcripts(&session.out, &format!("rl-{done:04}"), &transcripts)?;
            log_eval(session, 0, &summary)?;
            pb.println(format!(
                "[rl] held-out after {done} rounds: reward {:.3}, stages {}",
                summary.reward_mean,
                stage_list(&summary.stage_means)
            ));
        }
        if save_now {
            let phase = if done == tr.steps { "done" } else { "rl" };
            // The rounds the actors are playing ahead belong to this checkpoint (with their pools after them).
            if let Some(f) = &mut feed {
                f.receive_ahead(done)?;
            }
            let mut parts: Vec<&dyn Checkpointed> = vec![&*rollout, rewards, &st.learner, &rounds];
            if let Some(c) = &st.critic {
                parts.push(c);
            }
            if let Some(f) = &feed {
                parts.push(f);
            }
            session.checkpoint(phase, done, model, &st.learner, &parts)?;
        }
    }
    pb.finish();
    if let Some(f) = &mut feed {
        f.finish_refresh()?;
    }
    Ok(())
}

/// [`round_metrics`] over every rank's samples and scores (each rank sends its scores and the samples' ids and
/// stages, not their tokens), so reward means are those of the whole round.
fn union_round_metrics(
    group: &dyn spar_dist::Collectives,
    round: &PlayedRound,
) -> Result<Vec<(String, f64)>> {
    if group.world_size() == 1 {
        return Ok(round_metrics(&round.samples, &round.scored));
    }
    let ids: Vec<spar_core::Sample> = round
        .samples
        .iter()
        .map(|s| spar_core::Sample {
            token_ids: Vec::new(),
            loss_mask: Vec::new(),
            rollout_logprobs: Vec::new(),
            routed_experts: None,
            steps: Vec::new(),
            turns: Vec::new(),
            ..s.clone()
        })
        .collect();
    let bytes = serde_json::to_vec(&(ids, &round.scored))?;
    let (mut samples, mut scored) = (Vec::new(), Vec::new());
    for b in spar_dist::all_gather_bytes(group, &bytes)? {
        let (s, c): (Vec<spar_core::Sample>, Vec<spar_core::Scored>) =
            serde_json::from_slice(&b).context("a rank's round for the metrics")?;
        samples.extend(s);
        scored.extend(c);
    }
    Ok(round_metrics(&samples, &scored))
}

/// The metrics of the rounds since the last log line: each key's mean over the rounds that reported it (a
/// round's NaN, e.g. no sample of a stage, is left out of that key's mean).
#[derive(Default)]
struct MetricWindow {
    rounds: usize,
    sums: Vec<(String, f64, usize)>,
}

impl MetricWindow {
    fn add(&mut self, scalars: &[(String, f64)]) {
        self.rounds += 1;
        for (k, v) in scalars {
            let i = match self.sums.iter().position(|(n, _, _)| n == k) {
                Some(i) => i,
                None => {
                    self.sums.push((k.clone(), 0.0, 0));
                    self.sums.len() - 1
                }
            };
            if v.is_finite() {
                self.sums[i].1 += v;
                self.sums[i].2 += 1;
            }
        }
    }

    /// The window's means (NaN for a key no round reported finitely), in first-reported order; the window
    /// starts over.
    fn take(&mut self) -> Vec<(String, f64)> {
        self.rounds = 0;
        std::mem::take(&mut self.sums)
            .into_iter()
            .map(|(k, sum, n)| (k, if n == 0 { f64::NAN } else { sum / n as f64 }))
            .collect()
    }
}

/// G_k means as `inquiry 0.500 ddx 0.250 ...`.
fn stage_list(g: &[f64; 4]) -> String {
    spar_core::Stage::ALL
        .iter()
        .map(|st| format!("{} {:.3}", st.name(), g[st.index()]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The console line of a log window: reward, stage means, loss, and how many rounds skipped their update.
fn console_line(done: usize, total: usize, means: &[(String, f64)]) -> String {
    let get = |k: &str| means.iter().find(|(n, _)| n == k).map(|x| x.1);
    let mut line = format!("[rl] round {done}/{total}");
    for (label, key) in [
        ("reward", "rl/reward_mean"),
        ("forward KL", "distill/forward_kl"),
        ("G_inquiry", "rl/G_inquiry"),
        ("G_ddx", "rl/G_ddx"),
        ("G_lab", "rl/G_lab"),
        ("G_diag", "rl/G_diag"),
        ("loss", "rl/loss"),
        ("skipped (no signal)", "rl/skipped_empty_advantage"),
    ] {
        if let Some(v) = get(key).filter(|v| v.is_finite()) {
            line.push_str(&format!("  {label} {v:.3}"));
        }
    }
    line
}

impl Checkpointed for Rollout {
    fn save_state(&self, state: &mut TrainerState) -> Result<()> {
        state.stage_pools = serde_json::to_value(self.pools())?;
        Ok(())
    }
}

impl Checkpointed for RewardPipeline {
    fn save_state(&self, state: &mut TrainerState) -> Result<()> {
        state.claim_cache = Some(format!(
            "{} ({})",
            self.config().fact.cache,
            self.cache_backend()
        ));
        Ok(())
    }
}

impl Checkpointed for Learner {
    fn save_state(&self, state: &mut TrainerState) -> Result<()> {
        state.bad_steps_total = self.bad_total;
        state.extra.insert("learner_step".into(), self.step.into());
        Ok(())
    }
}

impl Checkpointed for Critic {
    fn save_state(&self, _state: &mut TrainerState) -> Result<()> {
        Ok(())
    }
    fn save_files(&self, dir: &Path) -> Result<()> {
        self.save(dir)
    }
}

/// One-step off-policy: the round generated ahead is part of the state (its pools moved on).
impl Checkpointed for RoundScheduler<PlayedRound> {
    fn save_state(&self, state: &mut TrainerState) -> Result<()> {
        match self.pending() {
            Some(p) => {
                state
                    .extra
                    .insert("pending_round".into(), serde_json::to_value(p)?);
            }
            None => {
                state.extra.remove("pending_round");
            }
        }
        Ok(())
    }
}
