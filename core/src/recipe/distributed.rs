//! `[distributed]`: torchrun-style layout. Owner: trainer.
//!
//! What is built: data parallelism, plain or fully sharded. `spar train` launched with world size N > 1 (`spar
//! launch --nproc-per-node N -- train ...`, torchrun, srun) runs N data-parallel ranks; `data_parallel` is then
//! N, or 0 / 1 meaning "the launcher's world size". `sharding = "full"` shards parameters, gradients, fp32
//! masters and Adam moments over those ranks (FSDP / ZeRO-3). `expert_parallel = P` divides each MoE layer's
//! experts among consecutive blocks of P of those ranks (expert parallelism inside data parallelism, as in
//! DeepSpeed-MoE and Megatron: P must divide the world size and the expert count). Tensor and pipeline
//! parallelism are not built: their degrees above 1 are rejected, so a recipe never believes it trains on a
//! layout that nothing sets up.
//!
//! Actors apart from learners: `actors = A` makes the launcher's last A ranks actors (they only play and score
//! consultations with the newest weights they were sent) and the first `WORLD_SIZE - A` ranks learners (they
//! only train, data-parallel among themselves). `max_policy_lag = s` lets actors play up to s policy versions
//! ahead of the learner (s = 0: on-policy, actors and learners take turns; s = 1: round t+1 is generated while
//! round t is learned).
//!
//! `weights_at_rest = "sharded"` (with `sharding = "full"`) keeps the parameters sharded between updates too:
//! no rank ever holds the whole model. Learners then read only their chunks from the HF files at start, write
//! checkpoints, the final model and every policy version for the rollout server one unit at a time, and evaluate
//! through that server. It is the layout of a model whose weights do not fit one GPU (Qwen3-235B-A22B on H100s),
//! so it needs the rollout apart from the learners: `[rollout] backend = "openai"` with `[rollout.weight_sync]`.
use super::check;
use serde::{Deserialize, Serialize};

recipe_enum! {
    /// Collective-communication backend of a multi-process run.
    pub enum DistributedBackend {
        /// NVIDIA's collectives (GPUs).
        Nccl = "nccl",
        /// Gloo (CPU).
        Gloo = "gloo",
    }
}

recipe_enum! {
    /// What the learners hold between updates with `sharding = "full"`.
    pub enum WeightsAtRest {
        /// The whole weights, gathered after each step (for the colocated engine, evaluation, checkpoints).
        Whole = "whole",
        /// Only this rank's chunks (FSDP's `reshard_after_forward` kept after the step): whole-weight readers
        /// stream unit by unit, generation and evaluation go to the external rollout server.
        Sharded = "sharded",
    }
}

recipe_enum! {
    /// How the data-parallel ranks hold the model and optimizer (FSDP's sharding strategies).
    pub enum Sharding {
        /// Every rank holds everything; gradients are all-reduced (DDP, FSDP's NO_SHARD).
        None = "none",
        /// Parameters, gradients, fp32 masters and Adam moments sharded over the ranks; layers gathered as the
        /// forward and the (activation-checkpointed) backward use them, gradients reduce-scattered (FSDP's
        /// FULL_SHARD, ZeRO-3).
        Full = "full",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedSection {
    /// Data-parallel degree: the launcher's WORLD_SIZE, or 0 / 1 to take it from the launcher.
    pub data_parallel: usize,
    /// Tensor-parallel degree (only 1: not built).
    pub tensor_parallel: usize,
    /// Expert-parallel degree (MoE): each MoE layer's experts divided among blocks of this many data-parallel
    /// ranks in training forwards; 1: every rank computes every expert.
    pub expert_parallel: usize,
    /// Pipeline-parallel degree (only 1: not built).
    pub pipeline_parallel: usize,
    /// Collective backend for models on a GPU (a CPU model always reduces through gloo: NCCL has no CPU path).
    pub backend: DistributedBackend,
    /// Plain data parallelism or fully sharded (`"none"` | `"full"`); also valid on one rank.
    pub sharding: Sharding,
    /// With `sharding = "full"`: whole weights between updates (`"whole"`, the colocated engine's need) or only
    /// this rank's chunks (`"sharded"`: a model too large for one GPU; see the module documentation).
    pub weights_at_rest: WeightsAtRest,
    /// Ranks that only play and score RL rounds (the launcher's last `actors` ranks); 0: every rank plays its
    /// share and learns it (colocated).
    pub actors: usize,
    /// With actors: how many policy versions a learned sample may lag the learner. Actors play this many rounds
    /// ahead (0: on-policy, no overlap; 1: generation of round t+1 overlaps learning on round t); a sample
    /// older than this is dropped and counted (`rl/samples_stale_dropped`).
    pub max_policy_lag: usize,
    /// Bounds the rendezvous and every collective wait, in seconds. The other ranks wait at their next
    /// collective while rank 0 alone runs a held-out evaluation or writes a checkpoint, so this must exceed
    /// the longest of those.
    pub timeout_secs: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection {
            data_parallel: 1,
            tensor_parallel: 1,
            expert_parallel: 1,
            pipeline_parallel: 1,
            backend: DistributedBackend::Nccl,
            sharding: Sharding::None,
            weights_at_rest: WeightsAtRest::Whole,
            actors: 0,
            max_policy_lag: 0,
            timeout_secs: 1800,
        }
    }
}

impl DistributedSection {
    /// Tensor / pipeline degrees are exactly 1 (not built); the expert degree is at least 1; the timeout is
    /// positive.
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(self.expert_parallel >= 1, "expert_parallel", "must be >= 1")?;
        for (k, v) in [
            ("tensor_parallel", self.tensor_parallel),
            ("pipeline_parallel", self.pipeline_parallel),
        ] {
            check(v >= 1, k, "must be >= 1")?;
            check(
                v == 1,
                k,
                &format!(
                    "is {v}, but only data parallelism (plain or fully sharded) and expert parallelism are \
                     built (tensor and pipeline parallelism are not): set it to 1"
                ),
            )?;
        }
        check(self.timeout_secs > 0, "timeout_secs", "must be > 0")?;
        check(
            self.weights_at_rest == WeightsAtRest::Whole || self.sharding == Sharding::Full,
            "weights_at_rest",
            "= \"sharded\" needs sharding = \"full\" (plain data parallelism keeps the whole model on every rank)",
        )?;
        check(
            self.weights_at_rest == WeightsAtRest::Whole || self.actors == 0,
            "weights_at_rest",
            "= \"sharded\" plays through the external rollout server; actors are sent whole weights (set \
             actors = 0)",
        )?;
        Ok(())
    }

    /// Checks `data_parallel` against the launcher's world size: N, or 0 / 1 (take the world size). Returns
    /// the data-parallel degree in use.
    pub fn data_parallel_for(&self, world_size: usize) -> Result<usize, String> {
        let world_size = self.learners_for(world_size)?;
        let ep = self.expert_parallel.max(1);
        if !world_size.is_multiple_of(ep) {
            return Err(format!(
                "recipe: distributed.expert_parallel = {ep} does not divide the {world_size} learner rank(s): \
                 expert-parallel groups are blocks of {ep} data-parallel ranks"
            ));
        }
        match self.data_parallel {
            0 | 1 => Ok(world_size),
            n if n == world_size => Ok(n),
            n => Err(format!(
                "recipe: distributed.data_parallel = {n}, but the launcher started {world_size} rank(s): \
                 launch {n} ranks (`spar launch --nproc-per-node {n} -- train ...`) or set data_parallel = 0 to \
                 take the launcher's world size"
            )),
        }
    }

    /// Learner ranks among the launcher's `world_size`: all of them without actors, else the first
    /// `world_size - actors`, which must be at least one and divide the actors evenly (actor a sends its rounds to
    /// learner a mod learners, so every learner learns the same number of groups).
    pub fn learners_for(&self, world_size: usize) -> Result<usize, String> {
        let a = self.actors;
        if a == 0 {
            return Ok(world_size);
        }
        if world_size <= a {
            return Err(format!(
                "recipe: distributed.actors = {a}, but the launcher started {world_size} rank(s): launch at least \
                 {} (the first WORLD_SIZE - {a} ranks learn, the last {a} play)",
                a + 1
            ));
        }
        let learners = world_size - a;
        if !a.is_multiple_of(learners) {
            return Err(format!(
                "recipe: distributed.actors = {a} is not a multiple of the {learners} learner rank(s) ({world_size} \
                 launched - {a} actors): each learner takes the rounds of the same number of actors"
            ));
        }
        Ok(learners)
    }

    /// Processes the layout asks for (data x tensor x pipeline learners, expert parallelism reusing those ranks,
    /// plus the actors).
    pub fn world_size(&self) -> usize {
        self.data_parallel.max(1) * self.tensor_parallel * self.pipeline_parallel + self.actors
    }
}

impl DistributedSection {
    /// Whether the learners keep only their chunks between updates (see [`WeightsAtRest`]).
    pub fn sharded_at_rest(&self) -> bool {
        self.sharding == Sharding::Full && self.weights_at_rest == WeightsAtRest::Sharded
    }
}
