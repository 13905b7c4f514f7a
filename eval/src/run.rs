//! One whole evaluation as `spar eval` runs it: the models an `[eval]` section names (built apart from the
//! training ones), the cases, and the consultation + HealthBench runs gathered into one [`EvalReport`].
use crate::consultation::{ConsultationConfig, EvalEnv, evaluate_consultations};
use crate::facts::FactChecker;
use crate::healthbench::score::AggregateOptions;
use crate::healthbench::{HbExample, HealthBenchConfig, run_healthbench};
use crate::policy::EvalPolicy;
use crate::report::{EvalReport, EvalSetup};
use anyhow::{Context, Result};
use spar_core::Case;
use spar_core::grammar::normalize_icd10;
use spar_core::recipe::EvalSection;
use spar_core::traits::{
    ClaimExtractor, FactVerifier, Judge, PatientSimulator, SamplingParams, StageScorer,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The evaluation's own external models (spar-app's builder makes them from `[eval]`).
pub struct EvalModels {
    /// The evaluation patient (`[eval.simulator]`), built by the caller.
    pub simulator: Arc<dyn PatientSimulator>,
    pub scorer: Arc<dyn StageScorer>,
    pub scorer_id: String,
    /// Claim extractor and verifier for H (None: H not measured).
    pub facts: Option<(Arc<dyn ClaimExtractor>, Arc<dyn FactVerifier>)>,
    /// HealthBench judge (None: no HealthBench).
    pub judge: Option<Arc<dyn Judge>>,
}

/// Normalised ICD-10 codes of the diagnoses in `train`.
pub fn diagnoses(train: &[Case]) -> BTreeSet<String> {
    train
        .iter()
        .map(|c| normalize_icd10(&c.diagnosis.icd10))
        .collect()
}

/// What to evaluate.
pub struct EvalPlan {
    /// Cases for the consultation evaluation (empty: skip it).
    pub cases: Vec<Case>,
    /// Training diagnoses for the seen / unseen split (None: unknown).
    pub seen: Option<BTreeSet<String>>,
    pub consultation: ConsultationConfig,
    /// HealthBench examples (empty: skip).
    pub healthbench: Vec<HbExample>,
    pub healthbench_cfg: HealthBenchConfig,
    pub setup: EvalSetup,
}

impl EvalPlan {
    /// HealthBench knobs of an `[eval]` section.
    pub fn healthbench_config(eval: &EvalSection) -> HealthBenchConfig {
        HealthBenchConfig {
            concurrency: eval.concurrency,
            aggregate: AggregateOptions {
                clip: eval.healthbench_clip,
                bootstrap: eval.bootstrap,
                seed: eval.seed,
            },
            sampling: SamplingParams {
                temperature: eval.temperature,
                max_new_tokens: eval.max_new_tokens,
                seed: Some(eval.seed),
                ..Default::default()
            },
        }
    }
}

/// Runs the plan against `policy` and gathers the report: the consultations through rollout's environment, then
/// HealthBench with the same policy as a chat model. Call from a plain thread (not inside a tokio runtime). An
/// error here is the run's (a model that cannot be served, a broken case set); a failed consultation or
/// HealthBench answer is recorded in the report instead.
pub fn run_eval(
    policy: &EvalPolicy<'_>,
    plan: &EvalPlan,
    models: &EvalModels,
) -> Result<EvalReport> {
    let mut setup = plan.setup.clone();
    setup.simulator = Some(models.simulator.id());
    setup.scorer = Some(models.scorer_id.clone());
    let checker = models
        .facts
        .as_ref()
        .map(|(e, v)| FactChecker::new(e.as_ref(), v.as_ref()));
    if let Some(c) = &checker {
        setup.extractor = Some(c.extractor_id());
        setup.verifier = Some(c.verifier_id());
    }
    if let Some(j) = &models.judge {
        setup.judge = Some(j.id());
    }
    setup.config =
        serde_json::json!({"consultation": plan.consultation, "healthbench": plan.healthbench_cfg});
    let mut report = EvalReport::new(policy.id(), setup);
    if !plan.cases.is_empty() {
        let env = EvalEnv {
            simulator: models.simulator.clone(),
            scorer: models.scorer.clone(),
            scorer_id: models.scorer_id.clone(),
            facts: checker.as_ref(),
            seen_diagnoses: plan.seen.as_ref(),
        };
        let records = evaluate_consultations(policy, &plan.cases, &env, &plan.consultation)?;
        report = report.with_consultations(records);
    }
    if let (false, Some(judge)) = (plan.healthbench.is_empty(), &models.judge) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the HealthBench runtime")?;
        let (summary, results) =
            policy.with_chat(&plan.consultation.rollout, plan.consultation.seed, |chat| {
                rt.block_on(run_healthbench(
                    chat,
                    judge.as_ref(),
                    &plan.healthbench,
                    &plan.healthbench_cfg,
                ))
            })?;
        report = report.with_healthbench(summary, results);
    }
    Ok(report)
}
