//! The HealthBench runner: the user's HealthBench JSONL, answered by the policy, graded by a judge, scored the way
//! HealthBench scores (not Eq. 1).
mod format;
mod run;
pub mod score;

pub use format::{HbExample, HbMessage, HbRubric, load_healthbench};
pub use run::{
    CriterionResult, ExampleResult, HealthBenchConfig, HealthBenchSummary, run_healthbench,
};
