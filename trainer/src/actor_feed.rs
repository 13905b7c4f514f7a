//! A learner's side of actors apart from learners (see [`crate::actor_layout`]): the Arrow Flight inbox its
//! actors send rounds to, the start-up exchange, the weight refreshes, and the rounds received ahead of the one
//! being learned (kept in checkpoints, so that a resumed job neither loses nor repeats a round).
use crate::actor_layout::{
    ActorLink, ActorRound, ActorSchedule, ActorStart, LearnerHello, RoundEnvelope,
};
use crate::checkpoint::TrainerState;
use crate::rl_round::PlayedRound;
use crate::session::Checkpointed;
use anyhow::{Context, Result, bail};
use spar_dist::flight::Inbox;
use spar_model::Qwen3Model;
use spar_rollout::StagePools;
use std::collections::BTreeMap;
use std::time::Instant;

/// Checkpoint keys (this learner's rank state).
const ROUNDS_KEY: &str = "actor_rounds";
const POOLS_KEY: &str = "actor_pools";

/// How a learned round arrived: seconds the learner waited for it and what the actors report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Arrival {
    /// Seconds this learner was idle, waiting for the round's last actor.
    pub wait_seconds: f64,
    /// Mean over its actors of their busy seconds (generation + scoring) for the round.
    pub actor_busy_seconds: f64,
    /// Samples older than `max_policy_lag` versions, dropped.
    pub stale_dropped: usize,
}

/// The learner's end of the actor link.
pub struct ActorFeed {
    link: ActorLink,
    schedule: ActorSchedule,
    inbox: Inbox,
    runtime: tokio::runtime::Runtime,
    /// Rounds received and not yet learned, by round then actor.
    received: BTreeMap<usize, BTreeMap<usize, ActorRound>>,
    /// Each of this learner's actors' stage pools after the newest round received from it.
    pools: BTreeMap<usize, StagePools>,
    /// The model's parameters in a fixed order (what the broadcasts send).
    params: Vec<tch::Tensor>,
    /// The newest weight refresh, until the actors have taken it (the learner goes on meanwhile).
    refresh: Option<spar_dist::PendingWeights>,
    mine: Vec<usize>,
}

impl ActorFeed {
    /// Opens this learner's inbox, tells every actor where to send and where to start (from `state`, the
    /// checkpoint's rank state, when resuming at RL round `start`), and sends the actors the weights of version
    /// `start`. Every rank of the job (learners and actors) takes part.
    pub fn start(
        link: ActorLink,
        rounds: usize,
        start: usize,
        state: &TrainerState,
        model: &Qwen3Model,
    ) -> Result<ActorFeed> {
        let rank = link.world.rank();
        let mine = link.actors_of(rank);
        // One round in flight per actor and lag step, plus one: actors never wait on a learner that keeps up.
        let capacity = mine.len() * (link.max_policy_lag + 2);
        let bind: std::net::SocketAddr = format!("{}:0", link.bind_host)
            .parse()
            .with_context(|| format!("sample inbox bind address {}:0", link.bind_host))?;
        // The inbox's own runtime, with a worker thread: it takes the actors' puts while this thread learns
        // (a current-thread runtime would serve them only while the learner waits in `round`).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("spar-inbox")
            .enable_all()
            .build()?;
        let inbox = Inbox::serve(&runtime, bind, capacity)?;
        let mut received: BTreeMap<usize, BTreeMap<usize, ActorRound>> = BTreeMap::new();
        if let Some(v) = state.extra.get(ROUNDS_KEY) {
            let saved: Vec<ActorRound> = serde_json::from_value(v.clone())
                .context("checkpoint: actor_rounds (rounds received ahead)")?;
            for r in saved {
                received
                    .entry(r.envelope.round)
                    .or_default()
                    .insert(r.envelope.actor, r);
            }
        }
        let pools: BTreeMap<usize, StagePools> = match state.extra.get(POOLS_KEY) {
            Some(v) => serde_json::from_value::<Vec<(usize, StagePools)>>(v.clone())
                .context("checkpoint: actor_pools")?
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };
        for a in pools.keys() {
            if !mine.contains(a) {
                bail!(
                    "checkpoint: learner {rank} saved actor {a}'s pools, but now learns the rounds of actors \
                     {mine:?}: resume with the layout the run was started with"
                );
            }
        }
        let starts = mine
            .iter()
            .map(|&a| {
                // An actor goes on after the newest round this learner holds of it.
                let ahead = received
                    .iter()
                    .filter(|(_, by)| by.contains_key(&a))
                    .map(|(&r, _)| r + 1)
                    .max();
                let s = ActorStart {
                    first_round: ahead.unwrap_or(start).max(start),
                    version: start as u64,
                    pools: pools.get(&a).cloned(),
                };
                (a, s)
            })
            .collect();
        let hello = LearnerHello {
            inbox: format!("{}:{}", link.advertise_host, inbox.addr().port()),
            starts,
        };
        spar_dist::all_gather_bytes(&*link.world, &serde_json::to_vec(&hello)?)
            .context("actors: start-up exchange with every rank")?;
        let params = ordered_params(model);
        spar_dist::broadcast_weights(
            &*link.world,
            &params,
            0,
            start as u64,
            spar_dist::DEFAULT_BUCKET_BYTES,
        )
        .context("actors: the start weights")?;
        if rank == 0 {
            eprintln!(
                "[train] actors apart: {} learner(s), {} actor(s); rounds played up to {} version(s) ahead; \
                 {:.1} MB of weights per refresh",
                link.learners,
                link.actors,
                link.max_policy_lag,
                spar_dist::tensor_bytes(&params) as f64 / 1e6
            );
        }
        let schedule = ActorSchedule {
            lag: link.max_policy_lag,
            rounds,
            start_version: start as u64,
        };
        Ok(ActorFeed {
            link,
            schedule,
            inbox,
            runtime,
            received,
            pools,
            params,
            refresh: None,
            mine,
        })
    }

    /// Round `round` from every one of this learner's actors, merged in actor order, samples more than
    /// `max_policy_lag` versions older than `round` dropped and counted.
    pub fn round(&mut self, round: usize) -> Result<(PlayedRound, Arrival)> {
        let t0 = Instant::now();
        self.receive_through(round)?;
        let wait_seconds = t0.elapsed().as_secs_f64();
        let by_actor = self.received.remove(&round).unwrap_or_default();
        let mut played = PlayedRound::default();
        let mut arrival = Arrival {
            wait_seconds,
            ..Default::default()
        };
        for (_, r) in by_actor {
            let e = r.envelope;
            played.gen_seconds = played.gen_seconds.max(e.gen_seconds);
            played.score_seconds = played.score_seconds.max(e.score_seconds);
            arrival.actor_busy_seconds +=
                (e.gen_seconds + e.score_seconds) / self.mine.len() as f64;
            let oldest = (round as u64).saturating_sub(self.link.max_policy_lag as u64);
            let (keep, stale): (Vec<_>, Vec<_>) = r
                .samples
                .into_iter()
                .partition(|s| s.policy_version >= oldest);
            arrival.stale_dropped += stale.len();
            played.samples.extend(keep);
            played.scored.extend(e.scored);
        }
        Ok((played, arrival))
    }

    /// After the update that made version `version`: starts sending the weights to the actors when a remaining
    /// round is played with them (every rank of the job takes part in the same broadcasts). The learner does not
    /// wait for the actors to take them: with `max_policy_lag` 1 an actor is still playing the round ahead and
    /// joins the broadcast after it. Returns the seconds spent here (waiting for the previous refresh, copying
    /// the weights into the broadcast's buckets).
    pub fn updated(&mut self, version: u64) -> Result<f64> {
        if !self.schedule.publishes(version) {
            return Ok(0.0);
        }
        let t0 = Instant::now();
        self.finish_refresh()?;
        self.refresh = Some(
            spar_dist::start_broadcast_weights(
                &*self.link.world,
                &self.params,
                0,
                version,
                spar_dist::DEFAULT_BUCKET_BYTES,
            )
            .with_context(|| format!("actors: weights of version {version}"))?,
        );
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Waits until the actors have taken the newest weight refresh (at the end of RL, and before the next).
    pub fn finish_refresh(&mut self) -> Result<()> {
        if let Some(r) = self.refresh.take() {
            r.finish().context("actors: taking the weights")?;
        }
        Ok(())
    }

    /// Before a checkpoint after `done` rounds: receives every round the actors are playing ahead (up to
    /// `done + max_policy_lag - 1`), so the checkpoint holds them and the actors' pools after them.
    pub fn receive_ahead(&mut self, done: usize) -> Result<()> {
        let last = (done + self.link.max_policy_lag).min(self.schedule.rounds);
        if last > done {
            self.receive_through(last - 1)?;
        }
        Ok(())
    }

    /// Takes puts from the inbox until every one of this learner's actors has sent round `round`.
    fn receive_through(&mut self, round: usize) -> Result<()> {
        let deadline = Instant::now() + self.link.timeout;
        loop {
            let missing: Vec<usize> = self
                .mine
                .iter()
                .copied()
                .filter(|a| {
                    !self
                        .received
                        .get(&round)
                        .is_some_and(|by| by.contains_key(a))
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(d) = self.inbox.recv_timeout(&self.runtime, left) else {
                bail!(
                    "actors {missing:?} sent nothing for RL round {round} in {} s (distributed.timeout_secs): \
                     an actor died or is stuck; the job stops here and `--resume` goes on from the last \
                     checkpoint",
                    self.link.timeout.as_secs()
                );
            };
            let envelope: RoundEnvelope = serde_json::from_slice(&d.metadata)
                .with_context(|| format!("round envelope from {}", d.sender))?;
            let mut samples = Vec::new();
            for b in &d.batches {
                samples.extend(self.link.wire.decode(b, &d.sender)?);
            }
            if !self.mine.contains(&envelope.actor) {
                bail!(
                    "{} sent round {} as actor {}, which is not one of this learner's actors {:?}",
                    d.sender,
                    envelope.round,
                    envelope.actor,
                    self.mine
                );
            }
            self.pools.insert(envelope.actor, envelope.pools.clone());
            let slot = self.received.entry(envelope.round).or_default();
            if slot.contains_key(&envelope.actor) {
                bail!(
                    "actor {} sent round {} twice",
                    envelope.actor,
                    envelope.round
                );
            }
            slot.insert(envelope.actor, ActorRound { envelope, samples });
        }
    }
}

/// The model's parameters sorted by name: the same order on every rank (weight broadcasts to actors, the
/// data-parallel ranks' start from rank 0's weights).
pub fn ordered_params(model: &Qwen3Model) -> Vec<tch::Tensor> {
    let mut vars: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}

/// Rounds received ahead and the actors' pools go into this learner's rank state.
impl Checkpointed for ActorFeed {
    fn save_state(&self, state: &mut TrainerState) -> Result<()> {
        let rounds: Vec<&ActorRound> = self.received.values().flat_map(|by| by.values()).collect();
        state
            .extra
            .insert(ROUNDS_KEY.into(), serde_json::to_value(rounds)?);
        let pools: Vec<(usize, &StagePools)> = self.pools.iter().map(|(&a, p)| (a, p)).collect();
        state
            .extra
            .insert(POOLS_KEY.into(), serde_json::to_value(pools)?);
        Ok(())
    }
}
