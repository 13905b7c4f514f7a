//! The rubric verifier (method.md section 5): Eq. 1, the rule-based judge, the judge runner with its failure
//! policy, and dynamic rubrics.
pub mod dynamic;
pub mod reviewed;
pub mod rule_judge;
pub mod score;
pub mod verifier;

pub use dynamic::{DynamicItem, DynamicRubrics, Transition};
pub use reviewed::{
    RUBRIC_OVERRIDE_NAMESPACE, ReviewedJudge, RubricOverride, get_rubric_override,
    put_rubric_override,
};
pub use rule_judge::RuleJudge;
pub use score::{healthbench_score, rubric_score};
pub use verifier::{OnFailure, RubricOutcome, RubricVerifier};
