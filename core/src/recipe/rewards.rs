//! `[rewards]`: rubric judge, SPAR step penalties and advantage estimators, Fact-Aware reward. Owner: rewards.
use super::{EndpointConfig, check};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The values' TOML spellings, quoted and comma-separated, for messages.
fn names<T: std::fmt::Display>(all: &[T]) -> String {
    let v: Vec<String> = all.iter().map(|x| format!("`{x}`")).collect();
    v.join(", ")
}

recipe_enum! {
    /// Which rubric judge grades the rubric items.
    pub enum JudgeKind {
        /// Keywords / regex of each item's `rule`, offline.
        Rule = "rule",
        /// An OpenAI-compatible model (`endpoint`).
        Llm = "llm",
    }
}

recipe_enum! {
    /// What a rubric item counts as when its judge call still fails after retries.
    pub enum OnFailure {
        /// The whole sample leaves its group (it gets no advantage).
        FailSample = "fail_sample",
        /// The item counts as not met.
        Unmet = "unmet",
        /// The item counts as met.
        Met = "met",
        /// The item leaves the rubric of this sample (neither numerator nor denominator).
        SkipItem = "skip_item",
    }
}

/// The rubric judge.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    pub kind: JudgeKind,
    /// The LLM judge's endpoint (needed by `kind = "llm"`).
    pub endpoint: Option<EndpointConfig>,
    /// On a judge failure after retries.
    pub on_failure: OnFailure,
    /// Most judge calls in flight per pipeline (the LLM client has its own limit per endpoint too).
    pub concurrency: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            kind: JudgeKind::Rule,
            endpoint: None,
            on_failure: OnFailure::FailSample,
            concurrency: 64,
        }
    }
}

impl JudgeConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.kind != JudgeKind::Llm || self.endpoint.is_some(),
            "endpoint",
            "the llm judge needs an endpoint",
        )?;
        check(self.concurrency >= 1, "concurrency", "must be >= 1")?;
        if let Some(e) = &self.endpoint {
            e.validate()
                .map_err(|(k, m)| (format!("endpoint.{k}"), m))?;
        }
        Ok(())
    }
}

recipe_enum! {
    /// Advantage estimator (all live in `spar-rewards`; GAE is the trainer's).
    pub enum Estimator {
        /// SPAR, Eq. 8: penalized step reward against the unpenalized group mean / std.
        Spar = "spar",
        /// Plain GRPO: one advantage per trajectory (mean / std), penalties ignored.
        Grpo = "grpo",
        /// GRPO with the step penalties folded into one global penalty on the trajectory reward.
        GrpoGlobalPenalty = "grpo_global_penalty",
        /// M2 style: R - group mean, no std division.
        MeanOnly = "mean_only",
        /// Leave-one-out baseline.
        Rloo = "rloo",
        /// Value head + GAE (trainer).
        Gae = "gae",
    }
}

recipe_enum! {
    /// Denominator of the group standard deviation of the advantage estimators.
    pub enum StdKind {
        /// Divide by G (the group's own spread).
        Population = "population",
        /// Divide by G - 1 (unbiased variance).
        Sample = "sample",
    }
}

recipe_enum! {
    /// A step detector of SPAR's step verifier; its name is also the violation type it reports (the keys of
    /// `spar.lambdas`).
    pub enum StepDetector {
        /// A reply repeats an earlier one (`repetition_threshold`).
        Repetition = "repetition",
        /// The doctor asks something the patient already answered.
        RedundantQuestion = "redundant_question",
        /// An alarming symptom the patient reported goes unaddressed.
        RedFlag = "red_flag",
        /// A templated reply (`rigid_phrases`, or the same opening as two earlier replies).
        RigidPhrasing = "rigid_phrasing",
        /// The judge at `judge_endpoint`, asked `judge_criterion` about each step.
        Judge = "judge",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparConfig {
    pub estimator: Estimator,
    /// lambda_v per violation type (Eq. 7); a type not listed is ignored.
    pub lambdas: BTreeMap<String, f64>,
    pub sigma_floor: f64,
    /// |A_j| is clipped to this.
    pub adv_clip: f64,
    /// Denominator of the group standard deviation.
    pub std: StdKind,
    /// Which step detectors run.
    pub detectors: Vec<StepDetector>,
    /// Judge endpoint for the judge-based step detector.
    pub judge_endpoint: Option<EndpointConfig>,
    /// DAPO dynamic sampling: drop groups whose advantages are all 0.
    pub dapo_filter: bool,
    /// M2 length bonus 4/sqrt(|o|) when the group's rubric scores clear `length_bonus_threshold` (0 = off).
    pub length_bonus: f64,
    pub length_bonus_threshold: f64,
    /// Repetition detector: a reply repeats an earlier one when their word-trigram Jaccard similarity, or the
    /// share of its sentences found verbatim earlier, reaches this.
    pub repetition_threshold: f64,
    /// Rigid-phrasing detector: stock phrases (lower case) that mark a templated reply. Also flagged: a reply
    /// opening with the same first words as two earlier replies.
    pub rigid_phrases: Vec<String>,
    /// What the judge-based step detector asks about each step (a failure the step must not show).
    pub judge_criterion: String,
}

impl Default for SparConfig {
    fn default() -> Self {
        let lambdas = [
            ("repetition", 0.1),
            ("redundant_question", 0.3),
            ("red_flag", 0.2),
            ("rigid_phrasing", 0.9),
            ("judge", 0.5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        SparConfig {
            estimator: Estimator::Spar,
            lambdas,
            sigma_floor: 0.05,
            adv_clip: 5.0,
            std: StdKind::Population,
            detectors: vec![
                StepDetector::Repetition,
                StepDetector::RedundantQuestion,
                StepDetector::RedFlag,
                StepDetector::RigidPhrasing,
            ],
            judge_endpoint: None,
            dapo_filter: false,
            length_bonus: 0.0,
            length_bonus_threshold: 0.5,
            repetition_threshold: 0.6,
            rigid_phrases: [
                "as an ai",
                "i am not a doctor",
                "i'm not a doctor",
                "i understand your concern",
                "thank you for sharing",
                "it is important to note",
                "please consult a healthcare professional",
                "i hope this helps",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            judge_criterion: "The reply repeats what was already said, asks something the patient already answered, \
                              ignores an alarming symptom, or is unsafe"
                .into(),
        }
    }
}

impl SparConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (k, v) in &self.lambdas {
            check(
                StepDetector::ALL.iter().any(|d| d.name() == k),
                &format!("lambdas.{k}"),
                &format!(
                    "`{k}` is not a violation type (expected one of {})",
                    names(&StepDetector::ALL)
                ),
            )?;
            check(
                *v > 0.0 && *v < 1.0,
                &format!("lambdas.{k}"),
                "lambda must be in (0, 1)",
            )?;
        }
        check(self.sigma_floor >= 0.0, "sigma_floor", "must be >= 0")?;
        check(self.adv_clip > 0.0, "adv_clip", "must be > 0")?;
        check(
            self.repetition_threshold > 0.0 && self.repetition_threshold <= 1.0,
            "repetition_threshold",
            "must be in (0, 1]",
        )?;
        check(
            !(self.dapo_filter && self.estimator == Estimator::Gae),
            "dapo_filter",
            "must be false with estimator = \"gae\": that estimator leaves every spar-rewards advantage at 0 \
             (the trainer's critic makes them), so the filter would drop every group",
        )?;
        if let Some(e) = &self.judge_endpoint {
            e.validate()
                .map_err(|(k, m)| (format!("judge_endpoint.{k}"), m))?;
        }
        Ok(())
    }
}

recipe_enum! {
    /// How the Fact-Aware reward enters the total reward.
    pub enum FactMode {
        /// Denoised claims and the adaptive gate (Eqs. 10-14).
        Gate = "gate",
        /// The naive penalty alpha * hallucination rate (Eq. 9).
        Naive = "naive",
        /// No fact reward (claims are not extracted).
        Off = "off",
    }
}

recipe_enum! {
    /// Which claim extractor splits a reply into checkable claims.
    pub enum ExtractorKind {
        /// The built-in sentence / pattern extractor, offline.
        Rule = "rule",
        /// An OpenAI-compatible model (`endpoint`).
        Llm = "llm",
    }
}

recipe_enum! {
    /// Which fact verifier checks a claim.
    pub enum VerifierKind {
        /// The knowledge base (`[data] knowledge_base`, else the shipped one), offline.
        Kb = "kb",
        /// An OpenAI-compatible model (`endpoint`).
        Llm = "llm",
        /// The knowledge base first, the LLM for the claims it cannot settle.
        KbLlm = "kb+llm",
    }
}

recipe_enum! {
    /// Which sentence encoder embeds claims (clustering, semantic cache).
    pub enum EncoderKind {
        /// Built-in lexical hashing encoder, offline.
        Lexical = "lexical",
        /// The shipped all-MiniLM-L6-v2 (needs libtorch: the binary provides it).
        Minilm = "minilm",
        /// An OpenAI-compatible embeddings endpoint (`encoder_endpoint`).
        Openai = "openai",
    }
}

recipe_enum! {
    /// Where verified claims are cached.
    pub enum ClaimCacheKind {
        /// A SQLite file at `cache_path`.
        Sqlite = "sqlite",
        /// A Redis server at `redis_url`.
        Redis = "redis",
        /// In memory, for one process.
        Memory = "memory",
        /// No cache.
        Off = "off",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactConfig {
    /// How the fact reward enters the total reward.
    pub mode: FactMode,
    /// Gate (Eq. 13).
    pub kappa: f64,
    pub tau_min: f64,
    pub tau_max: f64,
    /// Naive penalty weight alpha (Eq. 9).
    pub alpha: f64,
    /// Claim extractor.
    pub extractor: ExtractorKind,
    /// Fact verifier.
    pub verifier: VerifierKind,
    /// Endpoint of the LLM extractor and the LLM verifier.
    pub endpoint: Option<EndpointConfig>,
    /// Claim encoder.
    pub encoder: EncoderKind,
    /// Endpoint of the `openai` encoder.
    pub encoder_endpoint: Option<EndpointConfig>,
    /// Cosine threshold for clustering claims (Eq. 10) and for semantic cache hits.
    pub cluster_threshold: f64,
    pub cache_threshold: f64,
    /// Claim cache.
    pub cache: ClaimCacheKind,
    /// The SQLite cache file (relative paths against the recipe's folder). Default: `claims.sqlite` in the
    /// command's output folder (the run folder of `spar train`); in memory for a command without one.
    pub cache_path: Option<PathBuf>,
    pub redis_url: Option<String>,
    /// eps of Eq. 12 (keeps R_fact finite when every saliency is 0).
    pub eps: f64,
}

impl Default for FactConfig {
    fn default() -> Self {
        FactConfig {
            mode: FactMode::Gate,
            kappa: 10.0,
            tau_min: 0.75,
            tau_max: 0.95,
            alpha: 0.5,
            extractor: ExtractorKind::Rule,
            verifier: VerifierKind::Kb,
            endpoint: None,
            encoder: EncoderKind::Lexical,
            encoder_endpoint: None,
            cluster_threshold: 0.85,
            cache_threshold: 0.92,
            cache: ClaimCacheKind::Sqlite,
            cache_path: None,
            redis_url: None,
            eps: 1e-8,
        }
    }
}

impl FactConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(self.tau_max > self.tau_min, "tau_max", "must be > tau_min")?;
        check(
            self.cache != ClaimCacheKind::Redis || self.redis_url.is_some(),
            "redis_url",
            "the redis cache needs redis_url",
        )?;
        check(
            (0.0..=1.0).contains(&self.cluster_threshold),
            "cluster_threshold",
            "must be in [0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&self.cache_threshold),
            "cache_threshold",
            "must be in [0, 1]",
        )?;
        check(self.kappa > 0.0, "kappa", "must be > 0")?;
        check(self.eps > 0.0, "eps", "must be > 0")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardsSection {
    pub judge: JudgeConfig,
    pub spar: SparConfig,
    pub fact: FactConfig,
    /// Dynamic rubrics (admission / exit of mined failure modes).
    pub dynamic_rubrics: DynamicRubricConfig,
    /// Stage rewards G_k (also the gate scores V_k).
    pub stages: StageRewardConfig,
}

recipe_enum! {
    /// DDX rank discount of the true diagnosis at rank r (1-based).
    pub enum DdxDiscount {
        /// 1 / log2(r + 1), as nDCG.
        Log = "log",
        /// 1 / r.
        Reciprocal = "reciprocal",
    }
}

/// Knobs of the stage rewards G_k (method.md section 2; SCAN-bench style scoring).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageRewardConfig {
    /// Inquiry: weight multiplier of red flags relative to their own `weight` in the coverage sum.
    pub red_flag_weight: f64,
    /// DDX rank discount of the true diagnosis at rank r.
    pub ddx_discount: DdxDiscount,
    /// DDX: entries beyond this rank are ignored (a long list cannot buy coverage).
    pub ddx_max_len: usize,
    /// Hierarchical ICD-10 credit: same code, same 3-character category, same chapter.
    pub icd_exact: f64,
    pub icd_category: f64,
    pub icd_chapter: f64,
    /// Lab weighted F1: weight of an essential test, an optional test, and a recommended test matching neither.
    pub lab_essential_weight: f64,
    pub lab_optional_weight: f64,
    pub lab_extra_weight: f64,
}

impl Default for StageRewardConfig {
    fn default() -> Self {
        StageRewardConfig {
            red_flag_weight: 1.0,
            ddx_discount: DdxDiscount::Log,
            ddx_max_len: 10,
            icd_exact: 1.0,
            icd_category: 0.5,
            icd_chapter: 0.2,
            lab_essential_weight: 2.0,
            lab_optional_weight: 1.0,
            lab_extra_weight: 1.0,
        }
    }
}

impl StageRewardConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(self.ddx_max_len >= 1, "ddx_max_len", "must be >= 1")?;
        check(
            (0.0..=1.0).contains(&self.icd_exact)
                && (0.0..=1.0).contains(&self.icd_category)
                && (0.0..=1.0).contains(&self.icd_chapter),
            "icd_exact",
            "ICD-10 credits must be in [0, 1]",
        )?;
        check(
            self.icd_exact >= self.icd_category && self.icd_category >= self.icd_chapter,
            "icd_category",
            "credits must satisfy exact >= category >= chapter",
        )?;
        check(
            self.lab_essential_weight > 0.0
                && self.lab_optional_weight >= 0.0
                && self.lab_extra_weight >= 0.0,
            "lab_essential_weight",
            "lab weights must be >= 0 (essential > 0)",
        )?;
        check(
            self.red_flag_weight >= 0.0,
            "red_flag_weight",
            "must be >= 0",
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicRubricConfig {
    pub enabled: bool,
    /// Admit a failure mode when its violation rate among high-scoring responses exceeds this.
    pub admit_rate: f64,
    /// Retire it when its rate stays below `exit_rate` for `exit_epochs` epochs.
    pub exit_rate: f64,
    pub exit_epochs: u32,
    /// Candidate failure modes (JSONL of rubric items with negative points); None: none are mined.
    pub candidates: Option<PathBuf>,
    /// A response counts as high-scoring (where failure modes are looked for) when its core R_task >= this.
    pub high_score: f64,
    /// Fewest high-scoring responses an epoch needs before a rate is trusted for admission or exit.
    pub min_observations: u32,
}

impl Default for DynamicRubricConfig {
    fn default() -> Self {
        DynamicRubricConfig {
            enabled: false,
            admit_rate: 0.2,
            exit_rate: 0.01,
            exit_epochs: 3,
            candidates: None,
            high_score: 0.8,
            min_observations: 10,
        }
    }
}

impl RewardsSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.judge
            .validate()
            .map_err(|(k, m)| (format!("judge.{k}"), m))?;
        self.spar
            .validate()
            .map_err(|(k, m)| (format!("spar.{k}"), m))?;
        self.fact
            .validate()
            .map_err(|(k, m)| (format!("fact.{k}"), m))?;
        self.stages
            .validate()
            .map_err(|(k, m)| (format!("stages.{k}"), m))?;
        // Rates are shares of responses: a rate above 1 would never admit (or never retire) a failure mode.
        let d = &self.dynamic_rubrics;
        check(
            (0.0..=1.0).contains(&d.admit_rate),
            "dynamic_rubrics.admit_rate",
            "must be in [0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&d.exit_rate),
            "dynamic_rubrics.exit_rate",
            "must be in [0, 1]",
        )?;
        check(
            d.admit_rate > d.exit_rate,
            "dynamic_rubrics.admit_rate",
            "must be > exit_rate",
        )
    }
}
