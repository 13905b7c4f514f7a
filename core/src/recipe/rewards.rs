//! `[rewards]`: rubric judge, SPAR step penalties and advantage estimators, Fact-Aware reward. Owner: rewards.
use super::{check, EndpointConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The rubric judge: "rule" (keywords / regex of each item's `rule`) or "llm" (OpenAI-compatible).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    pub kind: String,
    pub endpoint: Option<EndpointConfig>,
    /// On a judge failure after retries: "fail_sample" (sample leaves its group) | "unmet" | "met" | "skip_item".
    pub on_failure: String,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig { kind: "rule".into(), endpoint: None, on_failure: "fail_sample".into() }
    }
}

impl JudgeConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(["rule", "llm"].contains(&self.kind.as_str()), "kind", "must be rule or llm")?;
        check(self.kind != "llm" || self.endpoint.is_some(), "endpoint", "the llm judge needs an endpoint")?;
        check(["fail_sample", "unmet", "met", "skip_item"].contains(&self.on_failure.as_str()), "on_failure", "must be fail_sample, unmet, met or skip_item")
    }
}

/// Advantage estimator (all live in `spar-rewards`; GAE is the trainer's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// SPAR, Eq. 8: penalized step reward against the unpenalized group mean / std.
    Spar,
    /// Plain GRPO: one advantage per trajectory (mean / std), penalties ignored.
    Grpo,
    /// GRPO with the step penalties folded into one global penalty on the trajectory reward.
    GrpoGlobalPenalty,
    /// M2 style: R - group mean, no std division.
    MeanOnly,
    /// Leave-one-out baseline.
    Rloo,
    /// Value head + GAE (trainer).
    Gae,
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
    /// "population" (divide by G) | "sample" (G - 1).
    pub std: String,
    /// Which built-in step detectors run: repetition, redundant_question, red_flag, rigid_phrasing; and "judge".
    pub detectors: Vec<String>,
    /// Judge endpoint for the judge-based step detector.
    pub judge_endpoint: Option<EndpointConfig>,
    /// DAPO dynamic sampling: drop groups whose advantages are all 0.
    pub dapo_filter: bool,
    /// M2 length bonus 4/sqrt(|o|) when the group's rubric scores clear `length_bonus_threshold` (0 = off).
    pub length_bonus: f64,
    pub length_bonus_threshold: f64,
}

impl Default for SparConfig {
    fn default() -> Self {
        let lambdas = [("repetition", 0.1), ("redundant_question", 0.3), ("red_flag", 0.2), ("rigid_phrasing", 0.9), ("judge", 0.5)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        SparConfig {
            estimator: Estimator::Spar,
            lambdas,
            sigma_floor: 0.05,
            adv_clip: 5.0,
            std: "population".into(),
            detectors: vec!["repetition".into(), "redundant_question".into(), "red_flag".into(), "rigid_phrasing".into()],
            judge_endpoint: None,
            dapo_filter: false,
            length_bonus: 0.0,
            length_bonus_threshold: 0.5,
        }
    }
}

impl SparConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (k, v) in &self.lambdas {
            check(*v > 0.0 && *v < 1.0, &format!("lambdas.{k}"), "lambda must be in (0, 1)")?;
        }
        check(self.sigma_floor >= 0.0, "sigma_floor", "must be >= 0")?;
        check(self.adv_clip > 0.0, "adv_clip", "must be > 0")?;
        check(["population", "sample"].contains(&self.std.as_str()), "std", "must be population or sample")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactConfig {
    /// "gate" (Eqs. 10-14) | "naive" (Eq. 9) | "off".
    pub mode: String,
    /// Gate (Eq. 13).
    pub kappa: f64,
    pub tau_min: f64,
    pub tau_max: f64,
    /// Naive penalty weight alpha (Eq. 9).
    pub alpha: f64,
    /// Claim extractor: "rule" (built-in) | "llm".
    pub extractor: String,
    /// Verifier: "kb" (shipped knowledge base) | "llm" | "kb+llm" (knowledge base first, LLM for the rest).
    pub verifier: String,
    pub endpoint: Option<EndpointConfig>,
    /// Encoder: "lexical" (built-in) | "minilm" (shipped all-MiniLM-L6-v2, needs libtorch) | "openai".
    pub encoder: String,
    pub encoder_endpoint: Option<EndpointConfig>,
    /// Cosine threshold for clustering claims (Eq. 10) and for semantic cache hits.
    pub cluster_threshold: f64,
    pub cache_threshold: f64,
    /// Claim cache: "sqlite" (file at `cache_path`) | "redis" (url in `redis_url`) | "memory" | "off".
    pub cache: String,
    pub cache_path: Option<PathBuf>,
    pub redis_url: Option<String>,
}

impl Default for FactConfig {
    fn default() -> Self {
        FactConfig {
            mode: "gate".into(),
            kappa: 10.0,
            tau_min: 0.75,
            tau_max: 0.95,
            alpha: 0.5,
            extractor: "rule".into(),
            verifier: "kb".into(),
            endpoint: None,
            encoder: "lexical".into(),
            encoder_endpoint: None,
            cluster_threshold: 0.85,
            cache_threshold: 0.92,
            cache: "sqlite".into(),
            cache_path: None,
            redis_url: None,
        }
    }
}

impl FactConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(["gate", "naive", "off"].contains(&self.mode.as_str()), "mode", "must be gate, naive or off")?;
        check(self.tau_max > self.tau_min, "tau_max", "must be > tau_min")?;
        check(["rule", "llm"].contains(&self.extractor.as_str()), "extractor", "must be rule or llm")?;
        check(["kb", "llm", "kb+llm"].contains(&self.verifier.as_str()), "verifier", "must be kb, llm or kb+llm")?;
        check(["lexical", "minilm", "openai"].contains(&self.encoder.as_str()), "encoder", "must be lexical, minilm or openai")?;
        check(["sqlite", "redis", "memory", "off"].contains(&self.cache.as_str()), "cache", "must be sqlite, redis, memory or off")?;
        check(self.cache != "redis" || self.redis_url.is_some(), "redis_url", "the redis cache needs redis_url")?;
        check((0.0..=1.0).contains(&self.cluster_threshold), "cluster_threshold", "must be in [0, 1]")
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
}

impl Default for DynamicRubricConfig {
    fn default() -> Self {
        DynamicRubricConfig { enabled: false, admit_rate: 0.2, exit_rate: 0.01, exit_epochs: 3 }
    }
}

impl RewardsSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.judge.validate().map_err(|(k, m)| (format!("judge.{k}"), m))?;
        self.spar.validate().map_err(|(k, m)| (format!("spar.{k}"), m))?;
        self.fact.validate().map_err(|(k, m)| (format!("fact.{k}"), m))?;
        check(self.dynamic_rubrics.admit_rate > self.dynamic_rubrics.exit_rate, "dynamic_rubrics.admit_rate", "must be > exit_rate")
    }
}
