//! One whole evaluation as `spar eval` runs it: the models an `[eval]` section names (built apart from the
//! training ones), the cases, and the consultation + HealthBench runs gathered into one [`EvalReport`].
use crate::consultation::{ConsultationConfig, EvalEnv, evaluate_consultations};
use crate::facts::FactChecker;
use crate::healthbench::score::AggregateOptions;
use crate::healthbench::{HbExample, HealthBenchConfig, run_healthbench};
use crate::policy::ChatPolicy;
use crate::report::{EvalReport, EvalSetup};
use anyhow::{Context, Result, bail};
use spar_core::Case;
use spar_core::grammar::normalize_icd10;
use spar_core::recipe::{
    EvalSection, FactConfig, JudgeConfig, JudgeKind, Recipe, SimulatorConfig, SimulatorKind,
    StageRewardConfig,
};
use spar_core::traits::{ClaimExtractor, FactVerifier, Judge, PatientSimulator};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The evaluation's own external models.
pub struct EvalModels {
    pub simulator: Arc<dyn PatientSimulator>,
    pub scorer: spar_rewards::ClinicalStageScorer,
    pub scorer_id: String,
    /// Claim extractor and verifier for H (None: H not measured).
    pub facts: Option<(Arc<dyn ClaimExtractor>, Arc<dyn FactVerifier>)>,
    /// HealthBench judge (None: no HealthBench).
    pub judge: Option<Arc<dyn Judge>>,
}

/// The evaluation simulator `[eval.simulator]` names (default: the scripted patient).
pub fn simulator(cfg: Option<&SimulatorConfig>) -> Result<Arc<dyn PatientSimulator>> {
    let cfg = cfg.cloned().unwrap_or_default();
    Ok(match cfg.kind {
        SimulatorKind::Scripted => Arc::new(spar_rollout::simulator::ScriptedPatient),
        SimulatorKind::Llm => Arc::new(spar_clients::LlmPatientSimulator::from_config(&cfg)?),
        SimulatorKind::SelfPlay => bail!(
            "[eval.simulator] kind = \"self\": the policy cannot play its own evaluation patient; use scripted or llm"
        ),
    })
}

/// Builds the evaluation models of `eval`. The stage scorer takes `[rewards.stages]` when the recipe has one, so
/// evaluation and training measure a stage the same way; simulator, judge and fact checker come only from `[eval]`.
pub fn eval_models(recipe: &Recipe, eval: &EvalSection, need_judge: bool) -> Result<EvalModels> {
    let stages: StageRewardConfig = recipe
        .rewards
        .as_ref()
        .map(|r| r.stages.clone())
        .unwrap_or_default();
    let scorer_id = format!(
        "clinical(ddx_discount={}, lab_essential_weight={})",
        stages.ddx_discount, stages.lab_essential_weight
    );
    let facts = if eval.hallucination {
        let fc: FactConfig = eval.facts.clone().unwrap_or_default();
        let extractor =
            spar_rewards::models::extractor(&fc).context("[eval.facts] claim extractor")?;
        // The recipe's knowledge base (`[data] knowledge_base`) when it names one, else the shipped one.
        let kb = match recipe.data.as_ref().and_then(|d| d.knowledge_base.as_ref()) {
            Some(p) => {
                let p = recipe.resolve(p);
                Some(Arc::new(
                    spar_data::kb::KnowledgeBase::load(&p)
                        .with_context(|| format!("knowledge base {}", p.display()))?,
                ))
            }
            None => None,
        };
        let verifier =
            spar_rewards::models::verifier(&fc, kb).context("[eval.facts] fact verifier")?;
        Some((extractor, verifier))
    } else {
        None
    };
    let judge = if need_judge {
        let jc: JudgeConfig = eval.judge.clone().context("HealthBench needs a judge: set [eval.judge] kind = \"llm\" with an endpoint, or give --judge-endpoint")?;
        if jc.kind != JudgeKind::Llm {
            bail!(
                "[eval.judge] kind = \"{}\": HealthBench criteria are free text and need kind = \"llm\"",
                jc.kind
            );
        }
        Some(spar_rewards::models::judge(&jc)?)
    } else {
        None
    };
    Ok(EvalModels {
        simulator: simulator(eval.simulator.as_ref())?,
        scorer: spar_rewards::ClinicalStageScorer::new(stages),
        scorer_id,
        facts,
        judge,
    })
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
        }
    }
}

/// Runs the plan against `policy` and gathers the report.
pub async fn run_eval(policy: &dyn ChatPolicy, plan: &EvalPlan, models: &EvalModels) -> EvalReport {
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
            simulator: models.simulator.as_ref(),
            scorer: &models.scorer,
            scorer_id: models.scorer_id.clone(),
            facts: checker.as_ref(),
            seen_diagnoses: plan.seen.as_ref(),
        };
        let records = evaluate_consultations(policy, &plan.cases, &env, &plan.consultation).await;
        report = report.with_consultations(records);
    }
    if let (false, Some(judge)) = (plan.healthbench.is_empty(), &models.judge) {
        let (summary, results) = run_healthbench(
            policy,
            judge.as_ref(),
            &plan.healthbench,
            &plan.healthbench_cfg,
        )
        .await;
        report = report.with_healthbench(summary, results);
    }
    report
}
