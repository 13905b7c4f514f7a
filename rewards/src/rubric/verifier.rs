//! Runs a [`Judge`] over a rubric (all items concurrently, within the pipeline's limit) and applies the recipe's
//! failure policy, so that a judge outage is counted and handled, never silently scored.
use super::score::rubric_score;
use futures::StreamExt;
use spar_core::case::RubricItem;
use spar_core::sample::{ItemVerdict, Turn};
use spar_core::traits::{Judge, JudgeRequest};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What to do with an item whose judge call failed after the client's retries (`[rewards.judge] on_failure`).
pub use spar_core::recipe::OnFailure;

/// The rubric part of a sample's score.
#[derive(Clone, Debug, PartialEq)]
pub struct RubricOutcome {
    /// One verdict per item, in rubric order (`met: None` where the judge failed).
    pub verdicts: Vec<ItemVerdict>,
    /// Eq. 1 after the failure policy; None when nothing is left to score.
    pub score: Option<f64>,
    /// Items whose judge call failed.
    pub failures: usize,
    /// Set when the policy is `fail_sample` and an item failed: the first failure's message.
    pub failed: Option<String>,
}

/// Judges rubric items with one judge and one failure policy.
#[derive(Clone)]
pub struct RubricVerifier {
    judge: Arc<dyn Judge>,
    on_failure: OnFailure,
    limit: Arc<Semaphore>,
}

impl RubricVerifier {
    /// `limit` bounds the judge calls in flight across everything sharing it.
    pub fn new(judge: Arc<dyn Judge>, on_failure: OnFailure, limit: Arc<Semaphore>) -> Self {
        RubricVerifier {
            judge,
            on_failure,
            limit,
        }
    }

    pub fn judge_id(&self) -> String {
        self.judge.id()
    }

    /// Judges every item against `response` (the doctor's text, thinking removed) within `conversation`.
    pub async fn verify(
        &self,
        conversation: &[Turn],
        response: &str,
        items: &[RubricItem],
    ) -> RubricOutcome {
        let calls = items.iter().map(|item| {
            let req = JudgeRequest {
                conversation: conversation.to_vec(),
                response: response.to_string(),
                item: item.clone(),
            };
            let judge = self.judge.clone();
            let limit = self.limit.clone();
            async move {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .expect("judge semaphore is never closed");
                judge.judge(&req).await
            }
        });
        // `buffered` keeps rubric order; the semaphore is the real bound.
        let results: Vec<_> = futures::stream::iter(calls)
            .buffered(items.len().max(1))
            .collect()
            .await;
        let mut verdicts = Vec::with_capacity(items.len());
        let mut scored = Vec::with_capacity(items.len());
        let mut failures = 0;
        let mut failed = None;
        for (item, res) in items.iter().zip(results) {
            match res {
                Ok(v) => {
                    scored.push((item.points, v.met));
                    verdicts.push(ItemVerdict {
                        criterion: item.criterion.clone(),
                        points: item.points,
                        met: Some(v.met),
                        explanation: v.explanation,
                    });
                }
                Err(e) => {
                    failures += 1;
                    let msg = e.to_string();
                    match self.on_failure {
                        OnFailure::FailSample => {
                            failed.get_or_insert_with(|| {
                                format!("judge failed on `{}`: {msg}", item.criterion)
                            });
                        }
                        OnFailure::Unmet => scored.push((item.points, false)),
                        OnFailure::Met => scored.push((item.points, true)),
                        OnFailure::SkipItem => {}
                    }
                    verdicts.push(ItemVerdict {
                        criterion: item.criterion.clone(),
                        points: item.points,
                        met: None,
                        explanation: format!("judge failed: {msg}"),
                    });
                }
            }
        }
        RubricOutcome {
            verdicts,
            score: rubric_score(scored),
            failures,
            failed,
        }
    }
}
