//! Running HealthBench: the policy answers each example's conversation, an OpenAI-compatible judge (any
//! [`Judge`]) grades the answer against every rubric criterion, and the scores are aggregated as HealthBench
//! defines them ([`super::score`]). An example whose answer or any of whose grades failed after retries is left out
//! of the scores and counted (simple-evals retries the grader until it answers; a silent "not met" would lower
//! the score for an infrastructure fault).
use super::format::HbExample;
use super::score::{
    AggregateOptions, ExampleScore, GradedCriterion, HealthBenchScores, aggregate, score_example,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use spar_core::case::RubricItem;
use spar_core::traits::{ChatBackend, Judge, JudgeRequest, SamplingParams};

/// Knobs of a HealthBench run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthBenchConfig {
    /// Examples answered at once; each runs its criteria's judge calls at once.
    pub concurrency: usize,
    pub aggregate: AggregateOptions,
    /// How the policy answers (temperature, `max_new_tokens`, seed).
    #[serde(default = "default_sampling")]
    pub sampling: SamplingParams,
}

/// Greedy, seeded, 1024 new tokens.
fn default_sampling() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens: 1024,
        seed: Some(0),
        ..Default::default()
    }
}

impl Default for HealthBenchConfig {
    fn default() -> Self {
        HealthBenchConfig {
            concurrency: 8,
            aggregate: AggregateOptions::default(),
            sampling: default_sampling(),
        }
    }
}

/// One graded criterion in the per-example results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CriterionResult {
    pub criterion: String,
    pub points: f64,
    pub tags: Vec<String>,
    /// None when the judge failed.
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub explanation: String,
}

/// One example's answer and grades.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    pub prompt_id: String,
    pub example_tags: Vec<String>,
    pub response: String,
    pub criteria: Vec<CriterionResult>,
    /// The example's score (unclipped); None when it failed.
    pub score: Option<ExampleScore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The HealthBench part of a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthBenchSummary {
    pub examples: usize,
    pub failed: usize,
    pub judge: String,
    pub scores: HealthBenchScores,
}

/// The judge's view of a criterion: HealthBench points are integers in the published files; a fractional value
/// is rounded for the prompt only (scoring uses the exact value). The sign survives rounding: the judge asks a
/// negative criterion the other way round ("is the undesirable behaviour present?"), so -0.4 must not become 0
/// and be asked as a desirable one.
fn as_rubric_item(criterion: &str, points: f64, tags: &[String]) -> RubricItem {
    let rounded = points.round() as i32;
    let points = match rounded {
        0 if points < 0.0 => -1,
        0 if points > 0.0 => 1,
        p => p,
    };
    RubricItem {
        criterion: criterion.to_string(),
        points,
        tags: tags.to_vec(),
        rule: None,
    }
}

async fn run_example(
    policy: &dyn ChatBackend,
    judge: &dyn Judge,
    ex: &HbExample,
    sampling: &SamplingParams,
) -> ExampleResult {
    let conversation = ex.conversation();
    let mut result = ExampleResult {
        prompt_id: ex.prompt_id.clone(),
        example_tags: ex.example_tags.clone(),
        response: String::new(),
        criteria: ex
            .rubrics
            .iter()
            .map(|r| CriterionResult {
                criterion: r.criterion.clone(),
                points: r.points,
                tags: r.tags.clone(),
                met: None,
                explanation: String::new(),
            })
            .collect(),
        score: None,
        error: None,
    };
    match policy.chat(&conversation, sampling).await {
        Ok(r) => result.response = spar_core::grammar::strip_think(&r.text).trim().to_string(),
        Err(e) => {
            result.error = Some(format!("policy: {e}"));
            return result;
        }
    }
    let grades = futures::future::join_all(ex.rubrics.iter().map(|r| {
        let req = JudgeRequest {
            conversation: conversation.clone(),
            response: result.response.clone(),
            item: as_rubric_item(&r.criterion, r.points, &r.tags),
        };
        async move { judge.judge(&req).await }
    }))
    .await;
    let mut errors = Vec::new();
    for (c, g) in result.criteria.iter_mut().zip(grades) {
        match g {
            Ok(v) => {
                c.met = Some(v.met);
                c.explanation = v.explanation;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        result.error = Some(format!(
            "judge failed on {} of {} criteria: {}",
            errors.len(),
            result.criteria.len(),
            errors[0]
        ));
        return result;
    }
    let graded: Vec<GradedCriterion> = result
        .criteria
        .iter()
        .map(|c| GradedCriterion {
            points: c.points,
            tags: c.tags.clone(),
            met: c.met == Some(true),
        })
        .collect();
    result.score = score_example(&result.example_tags, &graded);
    if result.score.is_none() {
        result.error = Some("no criterion with positive points".into());
    }
    result
}

/// Answers and grades every example, then aggregates. Results come back in file order.
pub async fn run_healthbench(
    policy: &dyn ChatBackend,
    judge: &dyn Judge,
    examples: &[HbExample],
    cfg: &HealthBenchConfig,
) -> (HealthBenchSummary, Vec<ExampleResult>) {
    let bar = crate::progress::bar(examples.len() as u64, "healthbench");
    let mut results: Vec<(usize, ExampleResult)> =
        futures::stream::iter(examples.iter().enumerate())
            .map(|(i, ex)| {
                let bar = bar.clone();
                async move {
                    let r = run_example(policy, judge, ex, &cfg.sampling).await;
                    bar.inc(1);
                    (i, r)
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect()
            .await;
    bar.finish_and_clear();
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<ExampleResult> = results.into_iter().map(|(_, r)| r).collect();
    let scores: Vec<ExampleScore> = results.iter().filter_map(|r| r.score.clone()).collect();
    let summary = HealthBenchSummary {
        examples: results.len(),
        failed: results.iter().filter(|r| r.score.is_none()).count(),
        judge: judge.id(),
        scores: aggregate(&scores, &cfg.aggregate),
    };
    (summary, results)
}

#[cfg(test)]
mod tests {
    #[test]
    fn judge_points_keep_their_sign() {
        let p = |x: f64| super::as_rubric_item("c", x, &[]).points;
        assert_eq!(
            (p(-0.4), p(0.4), p(-7.0), p(2.6), p(0.0)),
            (-1, 1, -7, 3, 0)
        );
    }
}
