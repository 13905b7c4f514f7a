//! Actors apart from learners (`[distributed] actors = A`): who is what, which weights each round is played
//! with, and what travels between them.
//!
//! Of the launcher's W ranks the first L = W - A learn (data-parallel among themselves) and the last A only play
//! and score RL rounds. Actor a plays `groups_per_step / A` groups of every round from its own share of the
//! cases (the case split and seeds of data-parallel rank a of A, see `Rollout::shard`) and sends them to learner
//! `a mod L`, which learns the rounds of its actors.
//!
//! Flows (docs/training.md draws them):
//! - weights, learner rank 0 -> every actor: [`spar_dist::broadcast_weights`] over the whole job's group (gloo
//!   on CPU, NCCL on GPU), versioned and bucketed, once at the start of RL and after each update an actor will
//!   play with;
//! - rounds, actor -> its learner: one Arrow Flight `DoPut` per round (`spar_dist::flight`): the samples as
//!   record batches of the Sample schema, the [`RoundEnvelope`] (round, version, scores, timings, the actor's
//!   stage pools) as the put's metadata.
//!
//! The schedule ([`ActorSchedule`]): with `max_policy_lag = s`, round r is played with policy version
//! `max(v0, r - s)` (v0: the version RL starts or resumes at). s = 0 is on-policy: the actors wait for every
//! update. s = 1 is the one-step off-policy schedule of `trainer.off_policy_one_step`, now concurrent: actors
//! play round r + 1 while the learner learns round r.
use anyhow::Result;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use spar_core::{Sample, Scored};
use spar_dist::Collectives;
use spar_rollout::StagePools;
use std::sync::Arc;
use std::time::Duration;

/// This process's place in an actors-apart job, handed to the trainer by `spar train`.
#[derive(Clone)]
pub struct ActorLink {
    /// Every rank of the job (learners and actors): the weight broadcasts and the start-up exchange.
    pub world: Arc<dyn Collectives>,
    /// L: the first L ranks learn.
    pub learners: usize,
    /// A: the last A ranks play.
    pub actors: usize,
    /// s: rounds the actors play ahead of the learner; older samples are dropped.
    pub max_policy_lag: usize,
    /// How long a learner waits for an actor's round before it gives up (`distributed.timeout_secs`).
    pub timeout: Duration,
    /// The address a learner's sample inbox binds (`127.0.0.1` for a job on loopback, else `0.0.0.0`), and
    /// the host actors reach it at.
    pub bind_host: String,
    pub advertise_host: String,
    /// Samples to and from Arrow record batches (the Sample schema of `spar_data::wire`, handed in: the trainer
    /// reads no data format itself).
    pub wire: Arc<dyn SampleWire>,
}

/// How samples travel as Arrow record batches.
pub trait SampleWire: Send + Sync {
    /// The Sample schema.
    fn schema(&self) -> SchemaRef;
    /// Samples as one record batch of [`SampleWire::schema`].
    fn encode(&self, samples: &[Sample]) -> Result<RecordBatch>;
    /// The samples of a batch that came from `from` (named in errors), checked as when reading a file.
    fn decode(&self, batch: &RecordBatch, from: &str) -> Result<Vec<Sample>>;
}

impl ActorLink {
    /// Whether this rank is an actor.
    pub fn is_actor(&self) -> bool {
        self.world.rank() >= self.learners
    }

    /// This actor's index `0..A` (rank - L).
    pub fn actor_index(&self) -> usize {
        self.world.rank() - self.learners
    }

    /// The learner rank actor `a` sends its rounds to.
    pub fn learner_of(&self, actor: usize) -> usize {
        actor % self.learners
    }

    /// The actors whose rounds learner `learner` learns, in order.
    pub fn actors_of(&self, learner: usize) -> Vec<usize> {
        (0..self.actors)
            .filter(|&a| self.learner_of(a) == learner)
            .collect()
    }
}

/// Which policy version plays each round, and which updates are sent to the actors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActorSchedule {
    /// s: `max_policy_lag`.
    pub lag: usize,
    /// RL rounds of the run (`trainer.steps`).
    pub rounds: usize,
    /// The version the actors start with (rounds learned when RL starts or resumes).
    pub start_version: u64,
}

impl ActorSchedule {
    /// The policy version round `r` is played with: `max(v0, r - s)`.
    pub fn version_for_round(&self, r: usize) -> u64 {
        (r.saturating_sub(self.lag) as u64).max(self.start_version)
    }

    /// Whether the learner sends the weights of version `v` (after learning round v - 1): only a version some
    /// remaining round is played with.
    pub fn publishes(&self, v: u64) -> bool {
        v > self.start_version && (v as usize) + self.lag < self.rounds
    }
}

/// What an actor sends with each round's samples (the Flight put's metadata, JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoundEnvelope {
    pub actor: usize,
    pub round: usize,
    /// The policy version the round was played with (every sample carries it too).
    pub policy_version: u64,
    /// Scores of the round's samples (the reward pipeline ran on the actor).
    pub scored: Vec<Scored>,
    /// Wall seconds of generation and of scoring on the actor.
    pub gen_seconds: f64,
    pub score_seconds: f64,
    /// The actor's stage pools after this round: a checkpoint saves them so a resumed actor goes on from here.
    pub pools: StagePools,
}

/// One actor's round as a learner holds it until it is learned (also in checkpoints: rounds received ahead).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ActorRound {
    pub envelope: RoundEnvelope,
    pub samples: Vec<Sample>,
}

/// Where an actor starts: sent by its learner in the start-up exchange.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ActorStart {
    /// The first round it plays (later rounds than the learner's when a checkpoint kept rounds received ahead).
    pub first_round: usize,
    /// The version of the weights broadcast at the start.
    pub version: u64,
    /// Its stage pools from the checkpoint (None: a fresh start).
    pub pools: Option<StagePools>,
}

/// A learner's part of the start-up exchange: its inbox and where each of its actors starts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LearnerHello {
    /// `host:port` of its Arrow Flight sample inbox.
    pub inbox: String,
    pub starts: Vec<(usize, ActorStart)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_policy_rounds_wait_for_every_update_and_one_step_rounds_lag_one() {
        let on = ActorSchedule {
            lag: 0,
            rounds: 4,
            start_version: 0,
        };
        assert_eq!(
            (0..4).map(|r| on.version_for_round(r)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // Versions 1..3 are played with; version 4 (after the last round) is not sent.
        assert_eq!(
            (0..=4).map(|v| on.publishes(v)).collect::<Vec<_>>(),
            [false, true, true, true, false]
        );
        let one = ActorSchedule { lag: 1, ..on };
        assert_eq!(
            (0..4).map(|r| one.version_for_round(r)).collect::<Vec<_>>(),
            [0, 0, 1, 2]
        );
        assert_eq!(
            (0..=4).map(|v| one.publishes(v)).collect::<Vec<_>>(),
            [false, true, true, false, false]
        );
        // Resumed after 2 rounds learned: the actors start with version 2, which the start broadcast sends.
        let resumed = ActorSchedule {
            start_version: 2,
            ..one
        };
        assert_eq!(resumed.version_for_round(3), 2);
        assert!(!resumed.publishes(2));
    }
}
