//! `RewardPipeline`: everything between finished samples and per-step advantages, for one group at a time.
//! Built from the recipe's `[rewards]` section; any external model can be injected (the binary injects
//! torch-backed ones such as the MiniLM encoder).
use crate::advantage::{self, AdvantageParams};
use crate::components as C;
use crate::dialogue::Dialogue;
use crate::fact::{CacheStats, FactChecker, FactMode, FactOutcome};
use crate::rubric::{
    DynamicRubrics, OnFailure, ReviewedJudge, RubricOutcome, RubricVerifier, Transition,
};
use crate::stage::ClinicalStageScorer;
use crate::steps::StepVerifier;
use serde::{Deserialize, Serialize};
use spar_core::recipe::{FactConfig, RewardsSection};
use spar_core::sample::{SCHEMA_VERSION, StepScore};
use spar_core::traits::{ClaimExtractor, Encoder, FactVerifier, Judge, StageScorer};
use spar_core::{Case, Error, Result, Sample, Scored, Stage};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// External models handed to the pipeline instead of the ones the recipe names.
#[derive(Clone, Default)]
pub struct Injected {
    pub judge: Option<Arc<dyn Judge>>,
    /// For the judge-based step detector.
    pub step_judge: Option<Arc<dyn Judge>>,
    pub extractor: Option<Arc<dyn ClaimExtractor>>,
    pub verifier: Option<Arc<dyn FactVerifier>>,
    pub encoder: Option<Arc<dyn Encoder>>,
    pub stage_scorer: Option<Arc<dyn StageScorer>>,
    pub cache_backend: Option<Arc<dyn crate::fact::CacheBackend>>,
    /// The knowledge base for the "kb" verifiers and ICD-10 chapter matches (None: the shipped one is loaded
    /// when a "kb" verifier is configured). `spar` passes the recipe's `[data] knowledge_base` here.
    pub knowledge_base: Option<Arc<spar_data::kb::KnowledgeBase>>,
}

/// Counters over everything a pipeline scored; every drop is counted with its reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineMetrics {
    pub groups: u64,
    pub samples: u64,
    /// Samples that left their group, by reason kind (`judge_failed`, `end_reason`, `group_too_small`, ...).
    pub dropped_samples: BTreeMap<String, u64>,
    pub dropped_groups: BTreeMap<String, u64>,
    pub judge_failures: u64,
    pub step_judge_failures: u64,
    pub fact_failures: u64,
    /// Stage outputs that did not follow the grammar (scored 0).
    pub stage_unparsed: u64,
    pub claims: u64,
    pub violations: BTreeMap<String, u64>,
}

/// A sample's rewards before the group baseline is known.
struct SampleReward {
    r_task: f64,
    rubric: RubricOutcome,
    stage_score: Option<f64>,
    fact: FactOutcome,
    lambda: f64,
    reward: f64,
    violations: Vec<Vec<String>>,
    gammas: Vec<f64>,
    components: BTreeMap<String, f64>,
    drop: Option<String>,
}

impl SampleReward {
    fn dropped(reason: String, n_steps: usize) -> SampleReward {
        SampleReward {
            r_task: 0.0,
            rubric: RubricOutcome {
                verdicts: vec![],
                score: None,
                failures: 0,
                failed: None,
            },
            stage_score: None,
            fact: FactOutcome::default(),
            lambda: 0.0,
            reward: 0.0,
            violations: vec![vec![]; n_steps],
            gammas: vec![1.0; n_steps],
            components: BTreeMap::new(),
            drop: Some(reason),
        }
    }
}

/// The reward side of spar, ready to score groups.
pub struct RewardPipeline {
    cfg: RewardsSection,
    rubric: RubricVerifier,
    steps: StepVerifier,
    facts: FactChecker,
    stage_scorer: Arc<dyn StageScorer>,
    adv: AdvantageParams,
    on_failure: OnFailure,
    dynamic: Option<Mutex<DynamicRubrics>>,
    metrics: Mutex<PipelineMetrics>,
    /// The rubric judge behind reviewers' overrides (its hit count).
    reviewed: Arc<ReviewedJudge>,
}

fn recipe_err(key: &str, msg: impl Into<String>) -> Error {
    Error::Recipe {
        file: "[rewards]".into(),
        key: key.into(),
        msg: msg.into(),
    }
}

impl RewardPipeline {
    /// Builds the pipeline the recipe section describes; `inj` replaces any of its external models.
    pub async fn new(cfg: &RewardsSection, inj: Injected) -> Result<RewardPipeline> {
        cfg.validate().map_err(|(k, m)| recipe_err(&k, m))?;
        let limit = Arc::new(Semaphore::new(cfg.judge.concurrency));
        let judge = match inj.judge.clone() {
            Some(j) => j,
            None => crate::models::judge(&cfg.judge)?,
        };
        let on_failure = cfg.judge.on_failure;
        let step_judge = match (inj.step_judge.clone(), &cfg.spar.judge_endpoint) {
            (Some(j), _) => Some(j),
            (None, Some(_)) => return Err(crate::models::step_judge()),
            (None, None) => None,
        };
        let steps = StepVerifier::new(&cfg.spar, step_judge)
            .map_err(|m| recipe_err("spar.detectors", m))?;
        let facts = build_fact_checker(&cfg.fact, &inj, limit.clone()).await?;
        // Reviewers' rubric verdicts live in the claim cache's store (`spar review`): they answer first.
        let reviewed = Arc::new(ReviewedJudge::new(judge, facts.cache.backend()));
        let stage_scorer = inj.stage_scorer.clone().unwrap_or_else(|| {
            let s = ClinicalStageScorer::new(cfg.stages.clone());
            Arc::new(match &inj.knowledge_base {
                Some(kb) => s.with_knowledge_base(kb.clone()),
                None => s,
            })
        });
        let dynamic = if cfg.dynamic_rubrics.enabled {
            let state = match &cfg.dynamic_rubrics.candidates {
                Some(p) => DynamicRubrics::from_candidates_file(p)?,
                None => DynamicRubrics::new(vec![])?,
            };
            Some(Mutex::new(state))
        } else {
            None
        };
        Ok(RewardPipeline {
            cfg: cfg.clone(),
            rubric: RubricVerifier::new(reviewed.clone(), on_failure, limit),
            steps,
            facts,
            stage_scorer,
            adv: AdvantageParams::from_config(&cfg.spar),
            on_failure,
            dynamic,
            metrics: Mutex::new(PipelineMetrics::default()),
            reviewed,
        })
    }

    pub fn config(&self) -> &RewardsSection {
        &self.cfg
    }

    /// The stage scorer (the segmented pipeline's gate V_k).
    pub fn stage_scorer(&self) -> Arc<dyn StageScorer> {
        self.stage_scorer.clone()
    }

    pub fn metrics(&self) -> PipelineMetrics {
        self.metrics.lock().expect("metrics lock").clone()
    }

    /// Rubric verdicts answered by a reviewer's override (`spar review`) instead of the judge.
    pub fn rubric_override_hits(&self) -> u64 {
        self.reviewed.override_hits()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.facts.cache.stats()
    }

    /// Which backend the claim cache uses ("sqlite", "redis", "memory", "off").
    pub fn cache_backend(&self) -> &'static str {
        self.facts.cache.backend_name()
    }

    /// The dynamic rubric state, for checkpoints (None when dynamic rubrics are off).
    pub fn dynamic_rubrics(&self) -> Option<DynamicRubrics> {
        self.dynamic
            .as_ref()
            .map(|d| d.lock().expect("dynamic rubric lock").clone())
    }

    /// Restores the dynamic rubric state from a checkpoint.
    pub fn restore_dynamic_rubrics(&self, state: DynamicRubrics) -> Result<()> {
        let d = self.dynamic.as_ref().ok_or_else(|| {
            recipe_err(
                "dynamic_rubrics.enabled",
                "a checkpoint holds dynamic rubrics but they are off",
            )
        })?;
        *d.lock().expect("dynamic rubric lock") = state;
        Ok(())
    }

    /// Closes a training epoch of the dynamic rubrics (admission / exit); nothing when they are off.
    pub fn end_epoch(&self) -> Vec<Transition> {
        match &self.dynamic {
            Some(d) => {
                let t = d
                    .lock()
                    .expect("dynamic rubric lock")
                    .end_epoch(&self.cfg.dynamic_rubrics);
                for x in &t {
                    tracing::info!("dynamic rubric: {x:?}");
                }
                t
            }
            None => vec![],
        }
    }

    /// Scores one group (same case, same stage, same prefix): rewards, step violations and advantages.
    /// Returns one `Scored` per sample, in order; samples that left the group carry a `drop_reason`.
    pub async fn score_group(&self, case: &Case, samples: &[Sample]) -> Vec<Scored> {
        let rewards: Vec<SampleReward> =
            futures::future::join_all(samples.iter().map(|s| self.score_sample(case, s))).await;
        self.finish_group(samples, rewards)
    }

    async fn score_sample(&self, case: &Case, s: &Sample) -> SampleReward {
        let n = s.steps.len();
        if let Err((field, msg)) = s.check() {
            return SampleReward::dropped(format!("invalid_sample: field `{field}`: {msg}"), n);
        }
        if s.case_id != case.id {
            return SampleReward::dropped(
                format!(
                    "invalid_sample: case_id `{}` scored against case `{}`",
                    s.case_id, case.id
                ),
                n,
            );
        }
        if s.end_reason.is_failure() {
            let name = serde_json::to_value(s.end_reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            return SampleReward::dropped(format!("end_reason: {name}"), n);
        }
        let dialogue = match Dialogue::from_sample(s) {
            Ok(d) => d,
            Err(m) => return SampleReward::dropped(format!("invalid_sample: {m}"), n),
        };
        let text = dialogue.sampled_text();
        let (task, steps, fact) = futures::join!(
            self.task_part(case, s, &dialogue, &text),
            self.steps.verify(case, &dialogue),
            self.facts.check(&text, &dialogue.turns)
        );
        let (r_task, rubric, stage_score, mut components) = task;
        components.insert(C::STEP_JUDGE_FAILURES.into(), steps.judge_failures as f64);
        let mut drop = rubric.failed.as_ref().map(|m| format!("judge_failed: {m}"));
        let fact = match fact {
            Ok(f) => f,
            Err(e) => {
                if self.on_failure == OnFailure::FailSample {
                    drop.get_or_insert_with(|| format!("fact_check_failed: {e}"));
                }
                FactOutcome {
                    failures: 1,
                    first_failure: Some(e.to_string()),
                    ..Default::default()
                }
            }
        };
        if fact.failures > 0 && self.on_failure == OnFailure::FailSample {
            drop.get_or_insert_with(|| {
                format!(
                    "fact_check_failed: {}",
                    fact.first_failure.as_deref().unwrap_or("-")
                )
            });
        }
        let lambda = match self.cfg.fact.mode {
            FactMode::Gate => crate::fact::gate_lambda(
                r_task,
                self.cfg.fact.kappa,
                self.cfg.fact.tau_min,
                self.cfg.fact.tau_max,
            ),
            FactMode::Naive => self.cfg.fact.alpha,
            FactMode::Off => 0.0,
        };
        let reward = r_task + lambda * fact.r_fact;
        let gammas: Vec<f64> = steps
            .per_step
            .iter()
            .map(|v| advantage::step_gamma(v, &self.cfg.spar.lambdas))
            .collect();
        components.insert(C::R_TASK.into(), r_task);
        components.insert(C::LAMBDA.into(), lambda);
        components.insert(C::R_FACT.into(), fact.r_fact);
        components.insert(C::FACT_TERM.into(), lambda * fact.r_fact);
        components.insert(C::JUDGE_FAILURES.into(), rubric.failures as f64);
        components.insert(C::FACT_FAILURES.into(), fact.failures as f64);
        components.insert(C::CLAIMS_VERIFIED.into(), fact.verified as f64);
        components.insert(C::CLAIMS_CACHED.into(), fact.cache_hits as f64);
        components.insert(
            C::VIOLATED_STEPS.into(),
            steps.per_step.iter().filter(|v| !v.is_empty()).count() as f64,
        );
        SampleReward {
            r_task,
            rubric,
            stage_score,
            fact,
            lambda,
            reward,
            violations: steps.per_step,
            gammas,
            components,
            drop,
        }
    }

    /// R_task of Eq. 14's slot: the stage score G_k for a segment, Eq. 1 for a whole episode.
    async fn task_part(
        &self,
        case: &Case,
        s: &Sample,
        d: &Dialogue,
        text: &str,
    ) -> (f64, RubricOutcome, Option<f64>, BTreeMap<String, f64>) {
        let mut comp = BTreeMap::new();
        let mut stage_scores = Vec::new();
        let mut unparsed = 0.0;
        for &stage in &s.stages {
            let g = self
                .stage_scorer
                .score(case, stage, &d.stage_replies(stage), &d.turns);
            if !g.parsed {
                unparsed = 1.0;
            }
            comp.insert(format!("{}{}", C::STAGE_PREFIX, stage.name()), g.score);
            stage_scores.push((stage, g.score));
        }
        comp.insert(C::STAGE_UNPARSED.into(), unparsed);
        let empty = RubricOutcome {
            verdicts: vec![],
            score: None,
            failures: 0,
            failed: None,
        };
        if let [(_, g)] = stage_scores[..] {
            return (g, empty, Some(g), comp);
        }
        let mean_g = if stage_scores.is_empty() {
            0.0
        } else {
            stage_scores.iter().map(|x| x.1).sum::<f64>() / stage_scores.len() as f64
        };
        let active = self
            .dynamic
            .as_ref()
            .map(|d| d.lock().expect("dynamic rubric lock").active_items())
            .unwrap_or_default();
        let mut items = case.rubric.clone();
        items.extend(active.iter().cloned());
        let outcome = self.rubric.verify(&d.turns, text, &items).await;
        let core = crate::rubric::rubric_score(
            outcome
                .verdicts
                .iter()
                .take(case.rubric.len())
                .filter_map(|v| v.met.map(|m| (v.points, m))),
        );
        if let Some(c) = core {
            comp.insert(C::R_TASK_CORE.into(), c);
        }
        self.observe_dynamic(d, text, core, &outcome, case.rubric.len())
            .await;
        // A case without a rubric is scored by the mean of its stages' scores (documented fallback).
        let r_task = outcome.score.unwrap_or(mean_g);
        (r_task, outcome, None, comp)
    }

    /// Feeds a high-scoring response's verdicts on the watched failure modes to the dynamic rubric state.
    async fn observe_dynamic(
        &self,
        d: &Dialogue,
        text: &str,
        core: Option<f64>,
        outcome: &RubricOutcome,
        n_core: usize,
    ) {
        let Some(dynamic) = &self.dynamic else { return };
        if core.is_none_or(|c| c < self.cfg.dynamic_rubrics.high_score) {
            return;
        }
        let (active, watched) = {
            let s = dynamic.lock().expect("dynamic rubric lock");
            (s.active_items(), s.watched_items())
        };
        let mut seen: Vec<(String, bool)> = outcome.verdicts[n_core..]
            .iter()
            .filter_map(|v| v.met.map(|m| (v.criterion.clone(), m)))
            .collect();
        let inactive: Vec<_> = watched
            .into_iter()
            .filter(|w| !active.iter().any(|a| a.criterion == w.criterion))
            .collect();
        if !inactive.is_empty() {
            let extra = self.rubric.verify(&d.turns, text, &inactive).await;
            seen.extend(
                extra
                    .verdicts
                    .into_iter()
                    .filter_map(|v| v.met.map(|m| (v.criterion, m))),
            );
        }
        let mut s = dynamic.lock().expect("dynamic rubric lock");
        for (criterion, violated) in seen {
            s.observe(&criterion, violated);
        }
    }

    fn finish_group(&self, samples: &[Sample], mut rs: Vec<SampleReward>) -> Vec<Scored> {
        let alive: Vec<usize> = (0..rs.len()).filter(|&i| rs[i].drop.is_none()).collect();
        let mut group_drop = None;
        let mut adv_of: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        if alive.len() < 2 {
            group_drop = Some(format!(
                "group_too_small: {} of {} samples left",
                alive.len(),
                rs.len()
            ));
        } else {
            let scores: Vec<f64> = alive.iter().map(|&i| rs[i].r_task).collect();
            let tokens: Vec<usize> = alive
                .iter()
                .map(|&i| samples[i].loss_mask.iter().filter(|&&m| m == 1).count())
                .collect();
            let bonus = advantage::length_bonus(
                &scores,
                &tokens,
                self.cfg.spar.length_bonus,
                self.cfg.spar.length_bonus_threshold,
            );
            for (k, &i) in alive.iter().enumerate() {
                rs[i].reward += bonus[k];
                rs[i].components.insert(C::LENGTH_BONUS.into(), bonus[k]);
            }
            let rewards: Vec<f64> = alive.iter().map(|&i| rs[i].reward).collect();
            let gammas: Vec<Vec<f64>> = alive.iter().map(|&i| rs[i].gammas.clone()).collect();
            let adv = advantage::estimate(&rewards, &gammas, &self.adv);
            // The same estimator without step penalties: what of each advantage the penalties account for.
            let unpenalized: Vec<Vec<f64>> = gammas.iter().map(|g| vec![1.0; g.len()]).collect();
            let adv_plain = advantage::estimate(&rewards, &unpenalized, &self.adv);
            let (mu, sigma) = advantage::mean_std(&rewards, self.adv.std);
            if self.cfg.spar.dapo_filter && advantage::all_zero(&adv) {
                group_drop = Some("dapo_zero_advantage: every advantage in the group is 0".into());
            }
            for (k, &i) in alive.iter().enumerate() {
                let r = rs[i].reward;
                let pen: f64 = rs[i]
                    .gammas
                    .iter()
                    .map(|&g| r - advantage::penalize(r, g))
                    .sum::<f64>()
                    / rs[i].gammas.len().max(1) as f64;
                let c = &mut rs[i].components;
                c.insert(C::MU_RAW.into(), mu);
                c.insert(C::SIGMA_RAW.into(), sigma);
                c.insert(C::STEP_PENALTY_MEAN.into(), pen);
                c.insert(C::ADV_ABS.into(), adv[k].iter().map(|a| a.abs()).sum());
                c.insert(
                    C::ADV_PENALTY_ABS.into(),
                    adv[k]
                        .iter()
                        .zip(&adv_plain[k])
                        .map(|(a, b)| (a - b).abs())
                        .sum(),
                );
                adv_of.insert(i, adv[k].clone());
            }
        }
        let mut m = self.metrics.lock().expect("metrics lock");
        m.groups += 1;
        m.samples += rs.len() as u64;
        if let Some(g) = &group_drop {
            *m.dropped_groups.entry(reason_kind(g)).or_default() += 1;
        }
        let mut out = Vec::with_capacity(rs.len());
        for (i, (s, r)) in samples.iter().zip(rs).enumerate() {
            let drop = r.drop.clone().or_else(|| group_drop.clone());
            if let Some(d) = &drop {
                *m.dropped_samples.entry(reason_kind(d)).or_default() += 1;
            }
            m.judge_failures += r.rubric.failures as u64;
            m.step_judge_failures += r
                .components
                .get(C::STEP_JUDGE_FAILURES)
                .copied()
                .unwrap_or(0.0) as u64;
            m.fact_failures += r.fact.failures as u64;
            m.stage_unparsed += r.components.get(C::STAGE_UNPARSED).copied().unwrap_or(0.0) as u64;
            m.claims += r.fact.claims.len() as u64;
            for v in r.violations.iter().flatten() {
                *m.violations.entry(v.clone()).or_default() += 1;
            }
            let advs = if drop.is_none() {
                adv_of.remove(&i)
            } else {
                None
            };
            let steps = r
                .violations
                .iter()
                .zip(&r.gammas)
                .enumerate()
                .map(|(j, (v, &g))| StepScore {
                    violations: v.clone(),
                    gamma: g,
                    advantage: advs.as_ref().map_or(0.0, |a| a[j]),
                })
                .collect();
            out.push(Scored {
                schema_version: SCHEMA_VERSION,
                run_id: s.run_id.clone(),
                case_id: s.case_id.clone(),
                group_id: s.group_id.clone(),
                sample_idx: s.sample_idx,
                r_task: r.r_task,
                rubric: r.rubric.verdicts,
                stage_score: r.stage_score,
                claims: r.fact.claims,
                r_fact: r.fact.r_fact,
                lambda: r.lambda,
                reward: r.reward,
                steps,
                drop_reason: drop,
                components: r.components,
            });
        }
        out
    }
}

/// The reason's kind: the text before the first ':' ("judge_failed: ..." -> "judge_failed").
pub fn reason_kind(reason: &str) -> String {
    reason
        .split(':')
        .next()
        .unwrap_or(reason)
        .trim()
        .to_string()
}

/// The Fact-Aware checker of `[rewards.fact]` (`cfg`): the injected models where given, else the offline ones
/// the section names, and the claim cache over its store. `spar factcheck` uses it on its own; the pipeline
/// builds its checker with it. `limit` bounds verifier calls in flight.
pub async fn build_fact_checker(
    cfg: &FactConfig,
    inj: &Injected,
    limit: Arc<Semaphore>,
) -> Result<FactChecker> {
    let (extractor, verifier, encoder, backend) = (
        &inj.extractor,
        &inj.verifier,
        &inj.encoder,
        inj.cache_backend.clone(),
    );
    let off = cfg.mode == FactMode::Off;
    let extractor = match extractor {
        Some(x) => x.clone(),
        None if off => Arc::new(crate::fact::RuleClaimExtractor),
        None => crate::models::extractor(cfg)?,
    };
    let verifier = match verifier {
        Some(x) => x.clone(),
        None if off => Arc::new(crate::models::Unavailable("fact mode is off".into())),
        None => crate::models::verifier(cfg, inj.knowledge_base.clone())?,
    };
    let encoder = match encoder {
        Some(x) => x.clone(),
        None if off => Arc::new(crate::fact::LexicalEncoder::default()),
        None => crate::models::encoder(cfg)?,
    };
    let backend = match backend {
        Some(b) => b,
        None if off => Arc::new(crate::fact::NoBackend),
        None => crate::models::cache_backend(cfg).await?,
    };
    let cache =
        crate::fact::ClaimCache::open(backend, &verifier.id(), &encoder.id(), cfg.cache_threshold)
            .await?;
    Ok(FactChecker {
        extractor,
        verifier,
        encoder,
        cache: Arc::new(cache),
        mode: cfg.mode,
        cluster_threshold: cfg.cluster_threshold,
        eps: cfg.eps,
        limit,
    })
}

/// Stages a sample covers, for logs.
pub fn stage_names(stages: &[Stage]) -> String {
    stages
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join("+")
}
