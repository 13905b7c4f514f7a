//! An actor's process (see [`crate::actor_layout`]): it learns nothing. It waits for the learners' start-up
//! exchange (they run the held-out evaluations and SFT first), takes the weights each round is played with from
//! learner rank 0's broadcasts, plays and scores its share of every remaining RL round, and sends each round to
//! its learner over Arrow Flight. With `max_policy_lag = s > 0` it plays up to s rounds ahead, so its
//! generation of round t + s overlaps the learner's update on round t.
use crate::actor_feed::ordered_params;
use crate::actor_layout::{ActorLink, ActorSchedule, LearnerHello, RoundEnvelope};
use crate::parts::TrainParts;
use crate::profiling::RoundProfiler;
use crate::progress::bar;
use crate::rl_round::play_round;
use anyhow::{Context, Result};
use spar_model::torch_profiler::range;
use std::net::ToSocketAddrs;

/// Runs actor `link.actor_index()` until the run's last RL round is sent.
pub fn run(parts: TrainParts, link: ActorLink) -> Result<()> {
    let TrainParts {
        recipe,
        out,
        model,
        rl_rollout,
        generation,
        rewards,
        runtime,
        cases_by_id,
        ..
    } = parts;
    let tr = recipe.require(&recipe.trainer, "trainer")?.clone();
    let a = link.actor_index();
    crate::run::check_actors(&tr, generation, rl_rollout.config().groups_per_step, &link)?;
    let groups = rl_rollout.config().groups_per_step / link.actors;
    let mut rollout = rl_rollout.shard(a, link.actors)?;
    let hellos = spar_dist::all_gather_bytes(&*link.world, &[])
        .context("actor: start-up exchange with the learners")?;
    let learner = link.learner_of(a);
    let hello: LearnerHello = serde_json::from_slice(&hellos[learner])
        .with_context(|| format!("actor {a}: learner {learner}'s start-up message"))?;
    let start = hello
        .starts
        .iter()
        .find(|(x, _)| *x == a)
        .map(|(_, s)| s.clone())
        .with_context(|| format!("learner {learner} sent no start for actor {a}"))?;
    let inbox = hello
        .inbox
        .to_socket_addrs()
        .with_context(|| {
            format!(
                "actor {a}: resolving learner {learner}'s inbox {}",
                hello.inbox
            )
        })?
        .next()
        .with_context(|| format!("actor {a}: {} resolves to no address", hello.inbox))?;
    if let Some(p) = start.pools.clone() {
        rollout.restore_pools(p);
    }
    let params = ordered_params(&model);
    let mut version = spar_dist::broadcast_weights(
        &*link.world,
        &params,
        0,
        start.version,
        spar_dist::DEFAULT_BUCKET_BYTES,
    )
    .with_context(|| format!("actor {a}: the start weights"))?;
    let schedule = ActorSchedule {
        lag: link.max_policy_lag,
        rounds: tr.steps,
        start_version: start.version,
    };
    eprintln!(
        "[actor {a}] rank {}: {groups} group(s) per round from {} case(s), rounds {}..{} to learner {learner} at {}",
        link.world.rank(),
        rollout.case_count(),
        start.first_round,
        tr.steps,
        hello.inbox
    );
    let pb = bar(tr.steps as u64, &format!("actor {a}"));
    pb.set_position(start.first_round as u64);
    let sender = format!("actor-{a}");
    let mut profiler = RoundProfiler::new(
        &tr.profile,
        &out,
        &format!("actor{a}"),
        model.device().is_cuda(),
    )?;
    for round in start.first_round..tr.steps {
        profiler.begin(round + 1)?;
        // Waits for the updates this round is played with (on-policy: the one after the previous round).
        let span = range("actor/wait_weights");
        while version < schedule.version_for_round(round) {
            version = spar_dist::broadcast_weights(
                &*link.world,
                &params,
                0,
                version + 1,
                spar_dist::DEFAULT_BUCKET_BYTES,
            )
            .with_context(|| format!("actor {a}: weights of version {}", version + 1))?;
        }
        drop(span);
        let played = play_round(
            &mut rollout,
            &model,
            generation,
            version,
            groups,
            &rewards,
            &runtime,
            &cases_by_id,
        )?;
        let envelope = RoundEnvelope {
            actor: a,
            round,
            policy_version: version,
            scored: played.scored,
            gen_seconds: played.gen_seconds,
            score_seconds: played.score_seconds,
            pools: rollout.pools().clone(),
        };
        let span = range("actor/send");
        let batch = link.wire.encode(&played.samples)?;
        let meta = serde_json::to_vec(&envelope)?;
        runtime
            .block_on(spar_dist::flight::send_batches(
                inbox,
                &sender,
                meta.into(),
                link.wire.schema(),
                vec![batch],
            ))
            .with_context(|| format!("actor {a}: sending round {round} to learner {learner}"))?;
        drop(span);
        profiler.end(round + 1)?;
        pb.inc(1);
    }
    pb.finish();
    eprintln!("[actor {a}] done: every round sent");
    Ok(())
}
