//! What a training run is made of. spar-app's builder makes these parts from the recipe (the same way for every
//! command); the trainer reads no data file and builds no external model: it receives them as values and traits.
use spar_core::Case;
use spar_core::recipe::Recipe;
use spar_model::Qwen3Model;
use spar_rollout::env::ScriptedDoctor;
use spar_rollout::{Policy, Rollout};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use spar_core::EvalSummary;

/// The held-out evaluation a training run makes before SFT, before RL and after RL, and of the scripted expert
/// (the ceiling). spar-app provides it from spar-eval, so training and `spar eval` play and score held-out
/// consultations with the same code.
pub trait Evaluator {
    /// Plays and scores the held-out cases with `policy`; returns the summary and the transcripts (markdown).
    fn evaluate(&self, policy: Policy<'_>) -> anyhow::Result<(EvalSummary, String)>;
    /// How many held-out cases one evaluation plays.
    fn cases(&self) -> usize;
    /// The sampled evaluation (`[eval.sampled]`): several consultations a case at a sampling temperature; None
    /// when the recipe asks for none.
    fn evaluate_sampled(
        &self,
        _policy: Policy<'_>,
    ) -> anyhow::Result<Option<(EvalSummary, String)>> {
        Ok(None)
    }
    /// What the sampled evaluation plays, for the results table ("4 samples a case, T = 0.7"); None without one.
    fn sampled_label(&self) -> Option<String> {
        None
    }
}

/// Where RL rounds generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The built-in engine over the policy's current weights (colocated: each update is the weight refresh).
    Builtin,
    /// The rollout's external OpenAI-compatible backend (`[rollout] backend = "openai"`): the samples carry the
    /// server's log-probs and the truncated-importance correction accounts for the gap to the learner; with
    /// `[rollout.weight_sync]` the server gets each new version ([`crate::parts::TrainParts::server_weights`]).
    External,
}

/// Everything `spar train` needs, built by spar-app from one recipe.
pub struct TrainParts {
    /// The recipe (after `--set`): the trainer reads its `[trainer]` knobs and the names it logs.
    pub recipe: Recipe,
    /// The run folder.
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// The policy, loaded or random-init.
    pub model: Qwen3Model,
    /// The folder whose tokenizer files ship with the trained model in `final/`.
    pub tokenizer_dir: PathBuf,
    /// Cases in the training split (SFT plays `trainer.sft_fraction` of each diagnosis of them).
    pub train_cases: usize,
    /// Plays the SFT consultations: whole episodes of SFT's cases, one sample each, with the recipe's simulator.
    pub sft_rollout: Rollout,
    /// The teacher whose consultations SFT imitates: the scripted expert, or the partial expert
    /// (`[trainer.sft_expert] partial = true`).
    pub sft_teacher: Arc<dyn ScriptedDoctor>,
    /// The RL rounds' rollout: the recipe's pipeline, simulator and backend over the RL cases.
    pub rl_rollout: Rollout,
    /// Where RL rounds generate.
    pub generation: Generation,
    /// Scores each played group (SPAR advantages, Fact-Aware reward).
    pub rewards: Arc<spar_rewards::RewardPipeline>,
    /// The runtime the reward pipeline was built on (its clients and cache connections live there).
    pub runtime: Arc<tokio::runtime::Runtime>,
    /// Every case by id, for scoring.
    pub cases_by_id: HashMap<String, Case>,
    /// The held-out evaluation.
    pub evaluator: Box<dyn Evaluator>,
    /// The evaluation's ceiling: the full scripted expert.
    pub expert: Arc<dyn ScriptedDoctor>,
    /// Distillation teachers `(name, model)` (`trainer.distill.teachers`), loaded with the student's device.
    pub teachers: Vec<(String, Qwen3Model)>,
    /// Offline distillation from a file (`trainer.distill.teacher_samples`): its samples, read by the builder,
    /// and the file named in errors.
    pub teacher_samples: Option<(Vec<spar_core::Sample>, String)>,
    /// The KL reference folder `[model] reference` (None: the policy entering RL, snapshotted to `out/reference`).
    pub reference_dir: Option<PathBuf>,
    /// The data-parallel ranks (`spar_dist::Local` for one process): each plays and learns its share of every
    /// round; rank 0 alone writes into `out`.
    pub group: Arc<dyn spar_dist::Collectives>,
    /// This rank's expert-parallel group (`[distributed] expert_parallel` ranks inside `group`); None: every
    /// rank computes every expert.
    pub expert_group: Option<Arc<dyn spar_dist::Collectives>>,
    /// Actors apart from learners (`[distributed] actors`): this rank's place among them; None: colocated.
    pub actors: Option<crate::actor_layout::ActorLink>,
    /// The external rollout server's weight refresh (`[rollout.weight_sync]`); None: the built-in engine, or a
    /// server left on its weights.
    pub server_weights: Option<crate::server_weights::ServerWeights>,
}
