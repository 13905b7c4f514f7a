//! One RL round of `spar train`, in two halves so the one-step off-policy schedule can put generation of round
//! t+1 before the update of round t: [`play_round`] (engine + reward pipeline -> samples and scores) and
//! [`learn_round`] (batch assembly, routing replay switch, GAE critic or spar-rewards advantages, on-policy
//! distillation teachers, the PPO-style update).
use crate::batch::{assemble, set_routing_replay};
use crate::critic::Critic;
use crate::learner::{BatchingConfig, Learner, RlExtras, rl_update_with};
use crate::parts::Generation;
use crate::policy_loss::PolicyLossConfig;
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use spar_core::{Case, Sample, Scored};
use spar_model::Qwen3Model;
use spar_rollout::{Group, Policy, Rollout};
use std::collections::HashMap;
use tch::Device;

/// A generated and scored round, waiting to be learned (saved in checkpoints in one-step off-policy mode).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlayedRound {
    pub samples: Vec<Sample>,
    pub scored: Vec<Scored>,
    /// Wall time of generation, for tokens/s.
    pub gen_seconds: f64,
    /// Wall time of scoring (rewards, claims, judges) left after generation (it runs alongside generation).
    #[serde(default)]
    pub score_seconds: f64,
    /// The built-in engine's counters and time line for the round (zero through an external backend).
    #[serde(default)]
    pub engine: spar_rollout::engine::EngineStats,
}

impl PlayedRound {
    /// Sampled tokens per second of generation.
    pub fn gen_tokens_per_s(&self) -> f64 {
        let tokens: usize = self
            .samples
            .iter()
            .map(|x| x.loss_mask.iter().filter(|&&m| m == 1).count())
            .sum();
        tokens as f64 / self.gen_seconds.max(1e-9)
    }

    /// The engine's side of the round: where generation's wall time went (`time/engine_*`: prefill, decode with
    /// its CUDA-graph captures also given apart, idle: waiting for the environment), and the counts behind it
    /// (`rollout/*`: requests, decode steps, the mean decode batch, the share of prompt tokens whose keys and
    /// values came from the cache, the CUDA allocator's retries and mallocs). Empty when the round played
    /// through an external backend.
    pub fn engine_metrics(&self) -> Vec<(String, f64)> {
        let e = &self.engine;
        if e.requests == 0 {
            return Vec::new();
        }
        let busy = e.prefill_seconds + e.decode_seconds;
        vec![
            ("time/engine_prefill_s".into(), e.prefill_seconds),
            ("time/engine_decode_s".into(), e.decode_seconds),
            ("rollout/graph_captures".into(), e.graph_captures as f64),
            ("time/graph_capture_s".into(), e.graph_capture_seconds),
            (
                "rollout/cuda_alloc_retries".into(),
                e.cuda_alloc_retries as f64,
            ),
            ("rollout/cuda_mallocs".into(), e.cuda_mallocs as f64),
            ("time/engine_idle_s".into(), e.idle_seconds),
            (
                "time/engine_busy_frac".into(),
                busy / self.gen_seconds.max(1e-9),
            ),
            ("rollout/requests".into(), e.requests as f64),
            ("rollout/decode_steps".into(), e.decode_steps as f64),
            (
                "rollout/mean_decode_batch".into(),
                e.decode_rows as f64 / (e.decode_steps.max(1)) as f64,
            ),
            (
                "rollout/decode_steps_ahead".into(),
                e.decode_steps_ahead as f64,
            ),
            ("rollout/decoded_past_end".into(), e.decoded_past_end as f64),
            ("rollout/prefill_forwards".into(), e.prefill_forwards as f64),
            (
                "rollout/prefill_graph_replays".into(),
                e.prefill_graph_replays as f64,
            ),
            (
                "rollout/prefill_wait_steps".into(),
                e.prefill_wait_steps as f64,
            ),
            ("rollout/prompt_tokens".into(), e.prompt_tokens as f64),
            (
                "rollout/reused_prompt_frac".into(),
                e.reused_tokens as f64 / (e.prompt_tokens.max(1)) as f64,
            ),
        ]
    }
}

/// Plays `groups` groups (with `model`'s current weights on the built-in engine, or through the rollout's
/// external backend), samples stamped `version`, and scores every group.
///
/// Scoring is host work (rubrics, step detectors, fact checks, judge calls): a thread of its own scores each
/// group as soon as it and the groups before it have played, while the engine keeps the GPU busy with the rest,
/// in the order the groups are returned (the order scoring ran in when it followed generation, so stateful
/// scorers such as dynamic rubrics and claim caches see the same sequence). `score_seconds` is what is left of
/// it once generation ends.
#[allow(clippy::too_many_arguments)]
pub fn play_round(
    rollout: &mut Rollout,
    model: &Qwen3Model,
    generation: Generation,
    version: u64,
    groups: usize,
    pipeline: &spar_rewards::RewardPipeline,
    rt: &tokio::runtime::Runtime,
    cases: &HashMap<String, Case>,
) -> Result<PlayedRound> {
    let t0 = std::time::Instant::now();
    rollout.set_policy_version(version);
    let policy = match generation {
        Generation::Builtin => Policy::Builtin(model),
        Generation::External => Policy::External,
    };
    let score = |g: &Group| -> Result<Vec<Scored>> {
        let case = cases
            .get(&g.case_id)
            .with_context(|| format!("group {} names unknown case {}", g.group_id, g.case_id))?;
        Ok(rt.block_on(pipeline.score_group(case, &g.samples)))
    };
    let (played, scored, gen_seconds, score_seconds) = std::thread::scope(|scope| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Group>();
        let scoring = std::thread::Builder::new()
            .name("spar-score".into())
            .spawn_scoped(scope, move || -> Result<Vec<(String, Vec<Scored>)>> {
                let mut out = Vec::new();
                while let Some(g) = rx.blocking_recv() {
                    out.push((g.group_id.clone(), score(&g)?));
                }
                Ok(out)
            })
            .context("starting the scoring thread")?;
        rollout.set_group_sink(Some(tx));
        let span = spar_model::torch_profiler::range("rl/generate");
        // A panic must still drop the rollout's sender below, or the scope would wait on the thread forever.
        let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rollout.collect_groups(policy, groups)
        }));
        drop(span);
        // The last sender goes with the rollout's copy (the round's own ended with it): the thread drains and ends.
        rollout.set_group_sink(None);
        let played = played.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let gen_seconds = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let span = spar_model::torch_profiler::range("rl/score");
        let scored = scoring
            .join()
            .map_err(|_| anyhow::anyhow!("the scoring thread panicked"))?;
        drop(span);
        Ok::<_, anyhow::Error>((played?, scored?, gen_seconds, t1.elapsed().as_secs_f64()))
    })?;
    let mut round = PlayedRound {
        gen_seconds,
        score_seconds,
        engine: rollout.last_round().engine,
        ..Default::default()
    };
    ensure!(
        scored.len() == played.len(),
        "internal error: {} groups played, {} scored",
        played.len(),
        scored.len()
    );
    for (g, (id, s)) in played.iter().zip(scored) {
        ensure!(
            id == g.group_id && s.len() == g.samples.len(),
            "internal error: group {} ({} samples) was scored as {id} ({} scores)",
            g.group_id,
            g.samples.len(),
            s.len()
        );
        round.scored.extend(s);
        round.samples.extend(g.samples.iter().cloned());
    }
    Ok(round)
}

/// The learner's side of a round's knobs.
pub struct LearnConfig<'a> {
    pub loss: &'a PolicyLossConfig,
    pub batching: &'a BatchingConfig,
    pub ppo_epochs: usize,
    /// `trainer.update_kl`: measure KL(pi_old || pi_new) after the update.
    pub update_kl: bool,
    pub routing_replay: bool,
    pub distill_coef: f64,
    pub task_coef: f64,
    pub device: Device,
    /// The frozen KL reference (`trainer.kl_coef`), if any.
    pub reference: Option<&'a Qwen3Model>,
    /// `trainer.placebo`: the seed the step advantages are shuffled with (None: the real advantages).
    pub placebo: Option<u64>,
}

/// Learns one played round at learner version `version` (RL rounds applied so far), with the KL term against
/// `cfg.reference` when one is given (`trainer.kl_coef`). Returns the round's
/// metrics: loss, clip fractions, ratio, mismatch, ..., `rl/policy_lag` (learner version minus the samples'
/// mean policy version: 0 colocated, 1 in one-step off-policy mode), the critic's and each teacher's.
pub fn learn_round(
    model: &Qwen3Model,
    learner: &mut Learner,
    round: &PlayedRound,
    version: u64,
    cfg: &LearnConfig,
    teachers: &[(String, Qwen3Model)],
    critic: Option<&mut Critic>,
) -> Result<Vec<(String, f64)>> {
    let (mut items, report) = assemble(&round.samples, &round.scored, "rollout round")?;
    // With data-parallel ranks, `round` is this rank's share: counts are summed over the ranks, and every rank
    // takes the same branches (each collective needs all of them).
    let group = learner.group.clone();
    let counts = spar_dist::sum_over_ranks(
        &*group,
        &[
            (report.dropped_by_rewards + report.missing_scored + report.no_trained_tokens) as f64,
            round.samples.len() as f64,
            round
                .samples
                .iter()
                .map(|s| s.policy_version as f64)
                .sum::<f64>(),
        ],
    )?;
    let mut scalars = vec![("rl/samples_dropped".to_string(), counts[0])];
    if counts[1] > 0.0 {
        let mean_version = counts[2] / counts[1];
        scalars.push(("rl/policy_lag".into(), version as f64 - mean_version));
    }
    if !spar_dist::any_rank(&*group, !items.is_empty())? {
        tracing::warn!(version, "no trainable samples this round");
        return Ok(scalars);
    }
    let unrouted = set_routing_replay(&mut items, cfg.routing_replay);
    if cfg.routing_replay {
        if unrouted > 0 && !model.config.moe_layers().is_empty() {
            tracing::warn!(
                version,
                "routing replay: {unrouted} of {} samples carry no expert choices and route afresh",
                items.len()
            );
        }
        scalars.push(("rl/samples_without_routing".into(), unrouted as f64));
    }
    if let Some(seed) = cfg.placebo {
        let n = crate::placebo::shuffle_step_advantages(&mut items, seed, version);
        scalars.push(("rl/placebo_shuffled_steps".into(), n as f64));
    }
    let rewards;
    let mut extras = RlExtras {
        teachers: teachers
            .iter()
            .map(|(n, m)| (n.clone(), m as &dyn crate::policy::Policy))
            .collect(),
        distill_coef: cfg.distill_coef,
        task_coef: cfg.task_coef,
        critic: None,
        update_kl: cfg.update_kl,
    };
    if let Some(c) = critic {
        rewards = crate::gae::token_rewards_for_items(&items, &round.samples, &round.scored)?;
        extras.critic = Some((c, &rewards));
    }
    for rep in rl_update_with(
        model,
        cfg.reference.map(|r| r as &dyn crate::policy::Policy),
        learner,
        &items,
        cfg.loss,
        cfg.batching,
        cfg.ppo_epochs,
        cfg.device,
        &mut extras,
    )? {
        scalars.push(("rl/loss".into(), rep.loss));
        scalars.push(("rl/grad_norm".into(), rep.grad_norm));
        scalars.push(("rl/lr".into(), rep.lr));
        scalars.push(("rl/skipped".into(), rep.skipped as u8 as f64));
        scalars.push((
            "rl/skipped_empty_advantage".into(),
            rep.skipped_empty_advantage as u8 as f64,
        ));
        for (k, v) in rep.stats.means() {
            scalars.push((format!("rl/{k}"), v));
        }
        scalars.extend(rep.extra);
    }
    Ok(scalars)
}
