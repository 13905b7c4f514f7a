//! Names of the entries of `Scored::components`: every reward component's contribution, so that an ablation
//! can be analysed from `scored.jsonl` alone.

/// The value in Eq. 14's R_task slot: Eq. 1 rubric score (whole episode) or the stage score G_k (segment).
pub const R_TASK: &str = "r_task";
/// Eq. 1 over the case's core rubric only (whole episode; dynamic items excluded).
pub const R_TASK_CORE: &str = "r_task_core";
/// lambda (Eq. 13 in gate mode, alpha in naive mode, 0 when off).
pub const LAMBDA: &str = "lambda";
/// R_fact (Eq. 12, or Eq. 9's -N_flawed/N_total in naive mode).
pub const R_FACT: &str = "r_fact";
/// lambda * R_fact: what the fact side added to R.
pub const FACT_TERM: &str = "fact_term";
/// M2 length bonus added to R.
pub const LENGTH_BONUS: &str = "length_bonus";
/// Mean over steps of R - R_j: what step penalties took away on average (0 without violations).
pub const STEP_PENALTY_MEAN: &str = "step_penalty_mean";
/// Sum over the sample's steps of |A_j|, and of |A_j - A_j(no penalties)|: the advantage the step penalties
/// account for (the same estimator run with every gamma_j = 1; 0 for plain GRPO).
pub const ADV_ABS: &str = "adv_abs";
pub const ADV_PENALTY_ABS: &str = "adv_penalty_abs";
/// Steps with at least one violation.
pub const VIOLATED_STEPS: &str = "violated_steps";
/// Baseline of the group (mean and spread of the unpenalized R over the samples left in the group).
pub const MU_RAW: &str = "mu_raw";
pub const SIGMA_RAW: &str = "sigma_raw";
/// Failures: rubric judge items, step-judge calls, claim verifications.
pub const JUDGE_FAILURES: &str = "judge_failures";
pub const STEP_JUDGE_FAILURES: &str = "step_judge_failures";
pub const FACT_FAILURES: &str = "fact_failures";
/// Claims verified by a verifier call, and answered by the claim cache.
pub const CLAIMS_VERIFIED: &str = "claims_verified";
pub const CLAIMS_CACHED: &str = "claims_cached";
/// 1 when a stage's output did not follow the grammar (it then scores 0).
pub const STAGE_UNPARSED: &str = "stage_unparsed";
/// Prefix of per-stage scores in whole-episode mode (`g_inquiry`, `g_ddx`, `g_lab`, `g_diag`).
pub const STAGE_PREFIX: &str = "g_";
