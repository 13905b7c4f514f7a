//! The step verifier of SPAR (method.md section 3): for each step of a sample, the set V_j of violation types,
//! from the built-in detectors the recipe enables and, optionally, a judge asked about the step.
pub mod detectors;

use crate::dialogue::Dialogue;
use detectors::EarlierReplies;
use spar_core::Case;
use spar_core::case::RubricItem;
use spar_core::recipe::{SparConfig, StepDetector};
use spar_core::sample::Turn;
use spar_core::traits::{Judge, JudgeRequest};
use std::sync::Arc;

/// Violations of every step of one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepViolations {
    /// `per_step[j]`: the violation types of step j (sorted, without duplicates).
    pub per_step: Vec<Vec<String>>,
    /// Judge-detector calls that failed (the step is then judged by the built-in detectors only).
    pub judge_failures: usize,
}

/// Runs the enabled detectors over a sample's steps.
#[derive(Clone)]
pub struct StepVerifier {
    cfg: SparConfig,
    judge: Option<Arc<dyn Judge>>,
}

impl StepVerifier {
    /// `judge` serves the "judge" detector; without one, that detector is an error at construction.
    pub fn new(cfg: &SparConfig, judge: Option<Arc<dyn Judge>>) -> Result<Self, String> {
        if cfg.detectors.contains(&StepDetector::Judge) && judge.is_none() {
            return Err("the judge step detector is enabled but no step judge is configured (rewards.spar.judge_endpoint)".into());
        }
        Ok(StepVerifier {
            cfg: cfg.clone(),
            judge,
        })
    }

    fn on(&self, detector: StepDetector) -> bool {
        self.cfg.detectors.contains(&detector)
    }

    /// The violation types of each step of `dialogue`.
    pub async fn verify(&self, case: &Case, dialogue: &Dialogue) -> StepViolations {
        let replies: Vec<String> = dialogue.exchanges.iter().map(|e| e.reply.clone()).collect();
        let users: Vec<String> = dialogue.exchanges.iter().map(|e| e.user.clone()).collect();
        let mut per_step = Vec::new();
        // The earlier replies' features, grown one reply a step (not rebuilt at each: quadratic in the steps);
        // the questions' topics only for the detector that reads them.
        let topics_of = self.on(StepDetector::RedundantQuestion).then_some(case);
        let mut earlier = EarlierReplies::of(&replies[..dialogue.first_step], topics_of);
        let red_flags_on = self.on(StepDetector::RedFlag);
        let mut revealed = red_flags_on
            && users[..dialogue.first_step]
                .iter()
                .any(|u| detectors::reveals(case, u));
        for i in dialogue.first_step..dialogue.exchanges.len() {
            let reply = replies[i].as_str();
            let mut found = Vec::new();
            if self.on(StepDetector::Repetition)
                && detectors::repetition_after(reply, &earlier, self.cfg.repetition_threshold)
            {
                found.push(detectors::REPETITION.to_string());
            }
            if self.on(StepDetector::RedundantQuestion)
                && detectors::redundant_question_after(reply, &earlier, case)
            {
                found.push(detectors::REDUNDANT_QUESTION.to_string());
            }
            let reveals_now = red_flags_on && detectors::reveals(case, &users[i]);
            if red_flags_on && detectors::red_flag_after(reply, reveals_now, revealed) {
                found.push(detectors::RED_FLAG.to_string());
            }
            if self.on(StepDetector::RigidPhrasing)
                && detectors::rigid_phrasing_after(reply, &earlier, &self.cfg.rigid_phrases)
            {
                found.push(detectors::RIGID_PHRASING.to_string());
            }
            per_step.push(found);
            earlier.push(&replies[i], topics_of);
            revealed = revealed || reveals_now;
        }
        let mut judge_failures = 0;
        if let (true, Some(judge)) = (self.on(StepDetector::Judge), &self.judge) {
            let item = RubricItem {
                criterion: self.cfg.judge_criterion.clone(),
                points: -1,
                tags: vec!["step".into()],
                rule: None,
            };
            let calls = (dialogue.first_step..dialogue.exchanges.len()).map(|i| {
                let conversation: Vec<Turn> = dialogue
                    .turns
                    .iter()
                    .take(turn_index_of_exchange(dialogue, i))
                    .cloned()
                    .collect();
                let req = JudgeRequest {
                    conversation,
                    response: replies[i].clone(),
                    item: item.clone(),
                };
                let judge = judge.clone();
                async move { judge.judge(&req).await }
            });
            for (j, r) in futures::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                match r {
                    Ok(v) if v.met => per_step[j].push(detectors::JUDGE.to_string()),
                    Ok(_) => {}
                    Err(e) => {
                        judge_failures += 1;
                        tracing::warn!("step judge failed: {e}");
                    }
                }
            }
        }
        for v in &mut per_step {
            v.sort();
            v.dedup();
        }
        StepViolations {
            per_step,
            judge_failures,
        }
    }
}

/// Index in `dialogue.turns` of the assistant turn of exchange `i` (the judge sees the dialogue before it).
fn turn_index_of_exchange(d: &Dialogue, i: usize) -> usize {
    d.turns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.role == spar_core::sample::Role::Assistant)
        .nth(i)
        .map_or(d.turns.len(), |(k, _)| k)
}
