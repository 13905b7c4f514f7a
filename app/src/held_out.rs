//! The held-out evaluation of `spar train` as the trainer's [`Evaluator`]: spar-eval's
//! [`HeldOutEval`](spar_eval::held_out::HeldOutEval), which plays with the same consultation code as `spar eval`,
//! over the run's evaluation cases, reward pipeline and `[eval.simulator]` patient.
use crate::builder::Builder;
use anyhow::Result;
use spar_core::Case;
use spar_core::recipe::{EvalSection, RolloutSection};
use spar_core::traits::PatientSimulator;
use spar_rewards::RewardPipeline;
use spar_rollout::codec::TextCodec;
use spar_rollout::{Policy, SimulatorChoice};
use spar_trainer::parts::{EvalSummary, Evaluator};
use std::sync::Arc;

/// Owns what [`spar_eval::held_out::HeldOutEval`] borrows.
pub struct HeldOut {
    cases: Vec<Case>,
    rollout: RolloutSection,
    eval: EvalSection,
    codec: Arc<dyn TextCodec>,
    simulator: Arc<dyn PatientSimulator>,
    pipeline: Arc<RewardPipeline>,
    runtime: Arc<tokio::runtime::Runtime>,
    seed: u64,
    /// The run's rollout server (`[rollout] backend = "openai"`), for `Policy::External` evaluations.
    backend: Option<Arc<dyn spar_core::traits::RolloutBackend>>,
}

impl HeldOut {
    pub fn new(
        builder: &Builder,
        cases: Vec<Case>,
        codec: Arc<dyn TextCodec>,
        pipeline: Arc<RewardPipeline>,
        runtime: Arc<tokio::runtime::Runtime>,
    ) -> Result<HeldOut> {
        let simulator = match builder.eval_simulator()? {
            SimulatorChoice::Fixed(s) => s,
            SimulatorChoice::SelfPlay => unreachable!("eval_simulator rejects self-play"),
        };
        Ok(HeldOut {
            cases,
            rollout: builder.rollout_section(),
            eval: builder.recipe().eval.clone().unwrap_or_default(),
            codec,
            simulator,
            pipeline,
            runtime,
            seed: builder.seed(),
            // Evaluation trains on nothing: no routing is asked for.
            backend: crate::external::rollout_backend(&builder.rollout_section(), None)?,
        })
    }
}

impl HeldOut {
    /// Plays and scores the held-out cases with `eval`'s sampling, `samples_per_case` consultations a case.
    fn run(
        &self,
        policy: Policy<'_>,
        eval: &EvalSection,
        samples_per_case: usize,
    ) -> Result<(EvalSummary, String)> {
        let held_out = spar_eval::held_out::HeldOutEval {
            cases: &self.cases,
            rollout: &self.rollout,
            eval,
            codec: self.codec.clone(),
            scorer: self.pipeline.stage_scorer(),
            pipeline: &self.pipeline,
            rt: &self.runtime,
            seed: self.seed,
            samples_per_case,
            simulator: self.simulator.clone(),
            backend: self.backend.clone(),
        };
        held_out.run(policy)
    }

    /// `[eval]` with `[eval.sampled]`'s temperature and concurrency, and its samples a case; None without it.
    fn sampled(&self) -> Option<(EvalSection, usize)> {
        let sampled = self.eval.sampled.as_ref()?;
        let mut eval = self.eval.clone();
        eval.temperature = sampled
            .temperature
            .unwrap_or(self.rollout.sampling.temperature);
        eval.concurrency = sampled.concurrency.unwrap_or(self.rollout.max_batch);
        Some((eval, sampled.samples_per_case))
    }
}

impl Evaluator for HeldOut {
    fn cases(&self) -> usize {
        self.cases.len()
    }

    fn evaluate(&self, policy: Policy<'_>) -> Result<(EvalSummary, String)> {
        self.run(policy, &self.eval, 1)
    }

    fn evaluate_sampled(&self, policy: Policy<'_>) -> Result<Option<(EvalSummary, String)>> {
        match self.sampled() {
            Some((eval, samples)) => self.run(policy, &eval, samples).map(Some),
            None => Ok(None),
        }
    }

    fn sampled_label(&self) -> Option<String> {
        self.sampled()
            .map(|(eval, samples)| format!("{samples} samples a case, T = {}", eval.temperature))
    }
}
