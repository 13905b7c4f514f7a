//! [`Builder`]: one recipe -> the parts of a run, the same way for every command.
use crate::cases::CaseSet;
use crate::external;
use crate::policy;
use anyhow::{Context, Result};
use spar_core::Case;
use spar_core::recipe::{
    ClaimCacheKind, EvalSection, FactMode, JudgeKind, PolicyLoss, Recipe, RewardsSection,
    RolloutBackendKind, RolloutSection, SimulatorConfig, SimulatorKind,
};
use spar_core::traits::StageScorer;
use spar_data::expert::PartialExpertOptions;
use spar_data::kb::KnowledgeBase;
use spar_rewards::{ClinicalStageScorer, RewardPipeline};
use spar_rollout::codec::TextCodec;
use spar_rollout::env::{ExpertDoctor, PartialExpertDoctor, ScriptedDoctor};
use spar_rollout::{Rollout, SimulatorChoice};
use spar_trainer::parts::{Generation, TrainParts};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the SQLite claim cache inside a run or output folder (when the recipe names no `cache_path`).
pub const CLAIM_CACHE_FILE: &str = "claims.sqlite";

/// Turns a recipe (already loaded, `--set` and the common flags applied) into the parts a command needs.
pub struct Builder {
    recipe: Recipe,
    /// The `[rewards]` the held-out evaluation of `spar train` measures with, when not the recipe's own (a run
    /// started from a shared SFT measures with the SFT run's, so runs that differ in their RL reward are measured
    /// with one instrument).
    eval_rewards: Option<RewardsSection>,
}

impl Builder {
    pub fn new(recipe: Recipe) -> Builder {
        Builder {
            recipe,
            eval_rewards: None,
        }
    }

    /// The held-out evaluation of [`Builder::train_parts`] scores with `rewards` instead of the recipe's
    /// `[rewards]` (RL still trains on the recipe's).
    pub fn with_eval_rewards(mut self, rewards: RewardsSection) -> Builder {
        self.eval_rewards = Some(rewards);
        self
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// The recipe's seed (0 when it sets none).
    pub fn seed(&self) -> u64 {
        self.recipe.seed.unwrap_or(0)
    }

    /// The folder relative paths in the recipe resolve against.
    pub fn base(&self) -> Option<PathBuf> {
        self.recipe
            .source
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
    }

    /// `[rollout]` with the recipe seed filled in where the section sets none (`rollout.seed`: "None: the recipe
    /// seed, else 0"), as every command plays it.
    pub fn rollout_section(&self) -> RolloutSection {
        let mut cfg = self.recipe.rollout.clone().unwrap_or_default();
        if cfg.seed.is_none() {
            cfg.seed = Some(self.seed());
        }
        cfg
    }

    /// The cases `[data]` names, split for training, RL and evaluation.
    pub fn cases(&self) -> Result<CaseSet> {
        CaseSet::load(&self.recipe, self.base().as_deref())
    }

    /// The knowledge base `[data] knowledge_base` names (None: the shipped one, which the libraries load
    /// themselves where they need it).
    pub fn knowledge_base(&self) -> Result<Option<Arc<KnowledgeBase>>> {
        let Some(p) = self
            .recipe
            .data
            .as_ref()
            .and_then(|d| d.knowledge_base.as_ref())
        else {
            return Ok(None);
        };
        let p = self.recipe.resolve(p);
        Ok(Some(Arc::new(KnowledgeBase::load(&p).with_context(
            || format!("recipe: data.knowledge_base = {}", p.display()),
        )?)))
    }

    /// The stage scorer of `[rewards.stages]` (G_k and the gate's V_k), with the recipe's knowledge base for
    /// ICD-10 hierarchy matches when it names one.
    pub fn stage_scorer(&self) -> Result<Arc<dyn StageScorer>> {
        Ok(self.stage_scorer_over(self.knowledge_base()?))
    }

    /// [`Builder::stage_scorer`] over a knowledge base already loaded.
    fn stage_scorer_over(&self, kb: Option<Arc<KnowledgeBase>>) -> Arc<dyn StageScorer> {
        let scorer = ClinicalStageScorer::new(self.stages());
        Arc::new(match kb {
            Some(kb) => scorer.with_knowledge_base(kb),
            None => scorer,
        })
    }

    /// `[rewards.stages]` (defaults without one).
    fn stages(&self) -> spar_core::recipe::StageRewardConfig {
        self.recipe
            .rewards
            .as_ref()
            .map(|r| r.stages.clone())
            .unwrap_or_default()
    }

    /// The reward pipeline of `[rewards]` with its external models injected (LLM judges, extractor, verifier
    /// and encoder over their endpoints) and the recipe's knowledge base; a SQLite claim cache goes where
    /// [`Builder::claim_cache_path`] says for the output folder `out`. Build it on the runtime that will score
    /// with it: its clients and cache connections live there.
    pub async fn reward_pipeline(&self, out: Option<&Path>) -> Result<RewardPipeline> {
        self.reward_pipeline_for(self.recipe.rewards.clone().unwrap_or_default(), out)
            .await
    }

    /// The reward pipeline of the `[rewards]` section `rewards` (with this recipe's knowledge base).
    async fn reward_pipeline_for(
        &self,
        mut rewards: RewardsSection,
        out: Option<&Path>,
    ) -> Result<RewardPipeline> {
        match self.claim_cache_path(&rewards, out) {
            Some(p) => rewards.fact.cache_path = Some(p),
            None if rewards.fact.cache == ClaimCacheKind::Sqlite => {
                rewards.fact.cache = ClaimCacheKind::Memory
            }
            None => {}
        }
        let injected = external::reward_models(&rewards, self.knowledge_base()?).await?;
        Ok(RewardPipeline::new(&rewards, injected).await?)
    }

    /// The recipe's Fact-Aware checker alone (`[rewards.fact]`: claim extractor, verifier chain, encoder and claim
    /// cache, external models over their endpoints), for `spar factcheck`. With `[rewards.fact] mode = "off"`
    /// the section's models are still built (checking text is the point). A SQLite cache goes where
    /// [`Builder::claim_cache_path`] says for the output folder `out`.
    pub async fn fact_checker(
        &self,
        out: Option<&Path>,
    ) -> Result<spar_rewards::fact::FactChecker> {
        let mut rewards = self.recipe.rewards.clone().unwrap_or_default();
        if rewards.fact.mode == FactMode::Off {
            rewards.fact.mode = FactMode::Gate;
        }
        match self.claim_cache_path(&rewards, out) {
            Some(p) => rewards.fact.cache_path = Some(p),
            None if rewards.fact.cache == ClaimCacheKind::Sqlite => {
                rewards.fact.cache = ClaimCacheKind::Memory
            }
            None => {}
        }
        let kb = self.knowledge_base()?;
        let fact = &rewards.fact;
        let injected = spar_rewards::Injected {
            extractor: external::claim_extractor(fact)?,
            verifier: external::fact_verifier(fact, kb.clone())?,
            encoder: external::encoder(fact).await?,
            knowledge_base: kb,
            ..Default::default()
        };
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(
            rewards.judge.concurrency.max(1),
        ));
        Ok(spar_rewards::build_fact_checker(fact, &injected, limit).await?)
    }

    /// Where the SQLite claim cache of `rewards` lives for a command writing into the folder `out`: the
    /// recipe's `rewards.fact.cache_path` (relative to the recipe's folder), else `out/claims.sqlite`, so verdicts
    /// about one run's consultations stay in that run's owner-only folder and its audit manifest names them.
    /// None for other cache kinds, and for a SQLite cache with neither (the cache then lives in memory: no
    /// file outside a folder the user chose).
    pub fn claim_cache_path(
        &self,
        rewards: &RewardsSection,
        out: Option<&Path>,
    ) -> Option<PathBuf> {
        if rewards.fact.cache != ClaimCacheKind::Sqlite || rewards.fact.mode == FactMode::Off {
            return None;
        }
        match (&rewards.fact.cache_path, out) {
            (Some(p), _) => Some(self.recipe.resolve(p)),
            (None, Some(dir)) => Some(dir.join(CLAIM_CACHE_FILE)),
            (None, None) => None,
        }
    }

    /// The claim cache file the recipe's `[rewards]` writes for the output folder `out`, if any (for the audit
    /// manifest).
    pub fn recipe_claim_cache(&self, out: Option<&Path>) -> Option<PathBuf> {
        self.claim_cache_path(&self.recipe.rewards.clone().unwrap_or_default(), out)
    }

    /// Who plays the patient in rollouts (`[rollout.simulator]`).
    pub fn simulator(&self) -> Result<SimulatorChoice> {
        external::simulator(&self.rollout_section().simulator, "rollout.simulator")
    }

    /// Who plays the patient in evaluations (`[eval.simulator]`; default: the scripted patient). The policy
    /// cannot play its own evaluation patient.
    pub fn eval_simulator(&self) -> Result<SimulatorChoice> {
        let cfg = self
            .recipe
            .eval
            .as_ref()
            .and_then(|e| e.simulator.clone())
            .unwrap_or_default();
        self.simulator_for(cfg, true)
    }

    fn simulator_for(&self, cfg: SimulatorConfig, evaluation: bool) -> Result<SimulatorChoice> {
        if evaluation && cfg.kind == SimulatorKind::SelfPlay {
            anyhow::bail!(
                "recipe: eval.simulator.kind = \"self\": the policy cannot play its own evaluation patient; use \
                 scripted or llm"
            );
        }
        external::simulator(
            &cfg,
            if evaluation {
                "eval.simulator"
            } else {
                "rollout.simulator"
            },
        )
    }

    /// A patient simulator for scripted doctors (SFT consultations): the recipe's when it is a fixed one, the
    /// scripted patient under self-play (a scripted doctor has no engine to lend the patient).
    pub fn fixed_simulator(&self) -> Result<SimulatorChoice> {
        Ok(match self.simulator()? {
            SimulatorChoice::SelfPlay => {
                SimulatorChoice::Fixed(Arc::new(spar_rollout::simulator::ScriptedPatient))
            }
            fixed => fixed,
        })
    }

    /// A rollout of `cfg` over `cases`: the recipe's rollout backend when `[rollout] backend = "openai"`, asking
    /// the server for the expert choices of the served MoE policy, laid out as `moe`, when `cfg.record_routing`.
    #[allow(clippy::too_many_arguments)]
    pub fn rollout(
        &self,
        cfg: RolloutSection,
        cases: Vec<Case>,
        codec: Arc<dyn TextCodec>,
        scorer: Arc<dyn StageScorer>,
        simulator: SimulatorChoice,
        run_id: impl Into<String>,
        moe: Option<spar_core::routed_wire::MoeLayout>,
    ) -> Result<Rollout> {
        let backend = external::rollout_backend(&cfg, moe)?;
        let rollout = Rollout::new(cfg, cases, codec, scorer, simulator, run_id)?;
        Ok(match backend {
            Some(b) => rollout.with_backend(b),
            None => rollout,
        })
    }

    /// The tokenizer of the model folder `model_dir`.
    pub fn tokenizer(&self, model_dir: &Path) -> Result<Arc<spar_model::Tokenizer>> {
        policy::tokenizer(model_dir)
    }

    /// The weights in `model_dir` on `[model]`'s device and dtype, for commands that play or serve them.
    pub fn saved_model(&self, model_dir: &Path) -> Result<spar_model::Qwen3Model> {
        policy::saved_model(&self.recipe, model_dir)
    }

    /// Everything `spar train` needs, for the run folder `out`, in one process.
    pub fn train_parts(&self, out: &Path, resume: bool) -> Result<TrainParts> {
        self.train_parts_on(out, resume, Arc::new(spar_dist::Local))
    }

    /// [`Builder::train_parts`] for one rank of the data-parallel `group`: every rank builds the same parts
    /// from the same seed; rank 0 trains the demo BPE tokenizer into `out` and the others read it from there.
    pub fn train_parts_on(
        &self,
        out: &Path,
        resume: bool,
        group: Arc<dyn spar_dist::Collectives>,
    ) -> Result<TrainParts> {
        let recipe = &self.recipe;
        let tr = recipe.require(&recipe.trainer, "trainer")?.clone();
        let model_sec = recipe.require(&recipe.model, "model")?.clone();
        let seed = self.seed();
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        tch::manual_seed(seed as i64);
        // Everything cheap is checked before anything heavy starts.
        let cases = self.cases()?;
        cases.require_train_and_eval()?;
        let mut policy = if group.world_size() == 1 {
            policy::training_policy(recipe, out, resume, &cases.train)?
        } else if group.rank() == 0 {
            let p = policy::training_policy(recipe, out, resume, &cases.train)?;
            group.barrier()?.wait()?;
            p
        } else {
            // Rank 0's tokenizer, once it is on disk (`resume` = reuse the run folder's tokenizer).
            group.barrier()?.wait()?;
            policy::training_policy(recipe, out, true, &cases.train)?
        };
        policy
            .model
            .set_activation_checkpointing(model_sec.activation_checkpointing);
        let codec: Arc<dyn TextCodec> = policy.tokenizer.clone();
        let runtime = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let rewards = Arc::new(runtime.block_on(self.reward_pipeline(Some(out)))?);
        let scorer = rewards.stage_scorer();
        if !cases.rl_extra.is_empty() {
            eprintln!(
                "[train] RL also plays {} fresh synthetic patients (data.rl_extra_per_diagnosis = {})",
                cases.rl_extra.len(),
                recipe.data.as_ref().map_or(0, |d| d.rl_extra_per_diagnosis)
            );
        }
        let rollout_sec = self.rollout_section();
        let run_name = recipe.name.clone().unwrap_or_else(|| "run".into());
        let rl_rollout = self.rollout(
            rollout_sec.clone(),
            cases.rl_cases(),
            codec.clone(),
            scorer.clone(),
            self.simulator()?,
            format!("{run_name}-s{seed}"),
            policy.model.config.moe_layout(),
        )?;
        let generation = if rollout_sec.backend == RolloutBackendKind::Openai {
            if rollout_sec.weight_sync.kind == spar_core::recipe::WeightSyncKind::Off {
                eprintln!(
                    "[train] RL rounds generate through {} (rollout.backend = \"openai\") and \
                     rollout.weight_sync is off: spar does not refresh that server's weights, so every round \
                     after the first is off-policy; the truncated importance weight (trainer.tis_cap) corrects \
                     for it",
                    rollout_sec
                        .endpoint
                        .as_ref()
                        .map_or("the endpoint", |e| e.base_url.as_str())
                );
            }
            Generation::External
        } else {
            Generation::Builtin
        };
        let sync_dir = match &rollout_sec.weight_sync.dir {
            Some(d) => recipe.resolve(d),
            None => out.join("policy-sync"),
        };
        let server_weights = crate::external::server_weights(&rollout_sec, sync_dir)?;
        // SFT: the scripted expert's consultations as whole episodes; gold replies (a full differential, every
        // test) are longer than a sampled reply may be, so the limit is the model's context.
        let mut sft_cfg = whole_episodes(rollout_sec.clone());
        sft_cfg.sampling.max_new_tokens = sft_cfg.max_seq_len.saturating_sub(1) as u32;
        let sft_cases = spar_trainer::sft_phase::sft_subset(&cases.train, tr.sft_fraction);
        let sft_rollout = Rollout::new(
            sft_cfg,
            sft_cases,
            codec.clone(),
            scorer.clone(),
            self.fixed_simulator()?,
            "sft",
        )?
        .single_sample();
        let inquiry_turns = rollout_sec.turn_limits[0] as usize;
        let expert: Arc<dyn ScriptedDoctor> =
            Arc::new(ExpertDoctor::with_inquiry_turns(inquiry_turns));
        // SFT's teacher: the full expert, or the partial one `[trainer.sft_expert]` asks for (the held-out ceiling
        // stays the full expert).
        let sft_teacher: Arc<dyn ScriptedDoctor> = if tr.sft_expert.partial {
            let e = &tr.sft_expert;
            eprintln!(
                "[train] SFT teacher: the partial expert (trainer.sft_expert: diagnosis at rank 1..{}, 0..{} \
                 optional tests, essential tests dropped with p = {}, routine questions skipped with p = {})",
                e.max_diagnosis_rank, e.max_optional_tests, e.drop_essential_test, e.skip_question
            );
            // The claims are checked against the knowledge base the run's fact verifier uses: the recipe's, else
            // the shipped one.
            let claims = if e.claims {
                let kb = match self.knowledge_base()? {
                    Some(kb) => kb,
                    None => Arc::new(KnowledgeBase::load_default()?),
                };
                eprintln!(
                    "[train] SFT teacher states one ICD-10-CM claim per differential, false in {:.0}% of cases",
                    100.0 * e.false_claim_rate
                );
                Some(spar_data::expert::DdxClaims {
                    kb,
                    false_rate: e.false_claim_rate,
                })
            } else {
                None
            };
            if e.reask_rate > 0.0 {
                eprintln!(
                    "[train] SFT teacher re-asks a covered topic before a question with p = {}",
                    e.reask_rate
                );
            }
            Arc::new(PartialExpertDoctor::with_inquiry_turns(
                inquiry_turns,
                PartialExpertOptions {
                    seed,
                    max_diagnosis_rank: e.max_diagnosis_rank,
                    max_optional_tests: e.max_optional_tests,
                    drop_essential_test: e.drop_essential_test,
                    skip_question: e.skip_question,
                    reask_rate: e.reask_rate,
                    claims,
                },
            ))
        } else {
            expert.clone()
        };
        let eval_pipeline = match &self.eval_rewards {
            Some(r) => Arc::new(runtime.block_on(self.reward_pipeline_for(r.clone(), Some(out)))?),
            None => rewards.clone(),
        };
        let evaluator = crate::held_out::HeldOut::new(
            self,
            cases.eval.clone(),
            codec.clone(),
            eval_pipeline,
            runtime.clone(),
        )?;
        let teacher_dirs: Vec<PathBuf> = tr
            .distill
            .teachers
            .iter()
            .map(|p| recipe.resolve(p))
            .collect();
        let student_tokenizer = policy.tokenizer_dir.join("tokenizer.json");
        let teachers = spar_trainer::distill_loop::load_teachers(
            &teacher_dirs,
            policy.model.device(),
            policy.model.kind(),
            policy.model.config.vocab_size,
            Some(student_tokenizer.as_path()).filter(|p| p.exists()),
        )?;
        let teacher_samples = match &tr.distill.teacher_samples {
            Some(p) if tr.policy_loss == PolicyLoss::Distill => {
                let p = recipe.resolve(p);
                let samples = spar_data::read_samples(&p).with_context(|| {
                    format!("recipe: trainer.distill.teacher_samples = {}", p.display())
                })?;
                Some((samples, p.display().to_string()))
            }
            _ => None,
        };
        Ok(TrainParts {
            expert_group: None,
            actors: None,
            server_weights,
            recipe: recipe.clone(),
            out: out.to_path_buf(),
            resume,
            model: policy.model,
            tokenizer_dir: policy.tokenizer_dir,
            train_cases: cases.train.len(),
            sft_rollout,
            sft_teacher,
            rl_rollout,
            generation,
            rewards,
            runtime,
            cases_by_id: cases.by_id(),
            evaluator: Box::new(evaluator),
            expert,
            teachers,
            teacher_samples,
            reference_dir: model_sec.reference.as_ref().map(|p| recipe.resolve(p)),
            group,
        })
    }
}

impl Builder {
    /// The evaluation's own models for the `[eval]` section `eval` (the recipe's, after command-line overrides):
    /// its patient (`eval.simulator`), the stage scorer of `[rewards.stages]` (with the recipe's knowledge base),
    /// the claim extractor and verifier of `eval.facts` for the hallucination rate, and the HealthBench judge
    /// (`eval.judge`, an LLM) when `need_judge`.
    pub fn eval_models(
        &self,
        eval: &EvalSection,
        need_judge: bool,
    ) -> Result<spar_eval::run::EvalModels> {
        let simulator =
            match self.simulator_for(eval.simulator.clone().unwrap_or_default(), true)? {
                SimulatorChoice::Fixed(s) => s,
                SimulatorChoice::SelfPlay => {
                    unreachable!("simulator_for rejects self-play for evaluations")
                }
            };
        let stages = self.stages();
        // Loaded once: the fact verifier and the stage scorer share it.
        let kb = self.knowledge_base()?;
        let scorer_id = format!(
            "clinical(ddx_discount={}, lab_essential_weight={})",
            stages.ddx_discount, stages.lab_essential_weight
        );
        let facts = if eval.hallucination {
            let fc = eval.facts.clone().unwrap_or_default();
            let extractor = match external::claim_extractor(&fc)? {
                Some(x) => x,
                None => {
                    spar_rewards::models::extractor(&fc).context("eval.facts: claim extractor")?
                }
            };
            let verifier = match external::fact_verifier(&fc, kb.clone())? {
                Some(v) => v,
                None => spar_rewards::models::verifier(&fc, kb.clone())
                    .context("eval.facts: fact verifier")?,
            };
            Some((extractor, verifier))
        } else {
            None
        };
        let judge = if need_judge {
            let jc = eval.judge.clone().context(
                "HealthBench needs a judge: set [eval.judge] kind = \"llm\" with an endpoint, or give --judge-endpoint",
            )?;
            let ep = match (jc.kind, &jc.endpoint) {
                (JudgeKind::Llm, Some(ep)) => ep.clone(),
                _ => anyhow::bail!(
                    "[eval.judge] kind = \"{}\": HealthBench criteria are free text and need kind = \"llm\" with an \
                     endpoint",
                    jc.kind
                ),
            };
            Some(external::llm_judge(&ep, "eval.judge")?)
        } else {
            None
        };
        Ok(spar_eval::run::EvalModels {
            simulator,
            scorer: self.stage_scorer_over(kb),
            scorer_id,
            facts,
            judge,
        })
    }
}

/// `cfg` for whole episodes: no segmented pipeline, no injected interruption (SFT plays, evaluations).
pub fn whole_episodes(mut cfg: RolloutSection) -> RolloutSection {
    cfg.segmented = false;
    cfg.interruption_rate = 0.0;
    cfg
}

/// One trainer step from files (`spar train --in SAMPLES --scored SCORED --model DIR --out OUT`): the samples
/// of `spar rollout` and the scores of `spar score` train the recipe's `[model] path` once with its loss.
pub fn offline_step(
    builder: &Builder,
    samples_path: &Path,
    scored_path: &Path,
    out: &Path,
) -> Result<spar_trainer::learner::StepReport> {
    let recipe = builder.recipe();
    let tr = recipe.trainer.clone().unwrap_or_default();
    let model_sec = recipe.require(&recipe.model, "model")?;
    let model_dir = recipe.resolve(
        model_sec
            .path
            .as_ref()
            .context("one step from files needs --model DIR (or [model] path)")?,
    );
    // The contract path runs where the files are: "auto" means the CPU here, not the first GPU.
    let mut cpu_default = model_sec.clone();
    if cpu_default.device == "auto" {
        cpu_default.device = "cpu".into();
    }
    let (device, kind) = crate::policy::device_and_kind(&cpu_default)?;
    let samples = spar_data::read_samples(samples_path)?;
    let scored = spar_data::read_scored(scored_path)?;
    let model = spar_model::Qwen3Model::load(&model_dir, device, kind)?;
    spar_trainer::offline_step::offline_step(
        &tr,
        builder.rollout_section().sampling.temperature,
        &model,
        &samples,
        &scored,
        &format!("{} + {}", samples_path.display(), scored_path.display()),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLite claim cache goes where the recipe says (relative to the recipe's folder), else into the output
    /// folder, else nowhere on disk; never into a shared home cache.
    #[test]
    fn claim_cache_lives_in_the_run_folder_unless_the_recipe_names_a_path() {
        let recipe = |extra: &str| {
            let mut r = Recipe::from_toml_str(
                &format!("[rewards.fact]\ncache = \"sqlite\"\n{extra}"),
                "/recipes/r.toml",
                &[],
            )
            .unwrap();
            r.source = Some("/recipes/r.toml".into());
            Builder::new(r)
        };
        let b = recipe("");
        let run = Path::new("/runs/a");
        assert_eq!(
            b.recipe_claim_cache(Some(run)),
            Some(run.join(CLAIM_CACHE_FILE))
        );
        assert_eq!(b.recipe_claim_cache(None), None);
        let b = recipe("cache_path = \"data/claims.sqlite\"");
        assert_eq!(
            b.recipe_claim_cache(Some(run)),
            Some(PathBuf::from("/recipes/data/claims.sqlite"))
        );
        let b = recipe("cache_path = \"/shared/claims.sqlite\"");
        assert_eq!(
            b.recipe_claim_cache(None),
            Some(PathBuf::from("/shared/claims.sqlite"))
        );
        let mem = Builder::new(
            Recipe::from_toml_str("[rewards.fact]\ncache = \"memory\"\n", "r.toml", &[]).unwrap(),
        );
        assert_eq!(mem.recipe_claim_cache(Some(run)), None);
    }
}
