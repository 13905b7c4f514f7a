//! From rollout samples to evaluation records: how each episode ended, the stage scores (the stage scorer on the
//! sample's turns, exactly as the trainer's held-out evaluation calls it), critical-item recall, red-flag safety
//! and the fact check of every doctor reply.
use super::{ConsultationConfig, EpisodeEnd, EpisodeRecord, EvalEnv};
use crate::facts::FactCheck;
use crate::safety::{assess, mentions};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use spar_core::grammar::{self, normalize_icd10};
use spar_core::sample::{ClaimLabel, EndReason, Role, Turn};
use spar_core::{Case, Sample, Stage};
use spar_rollout::Group;
use spar_rollout::env::stage_replies;
use std::collections::BTreeMap;

/// How the episode of `sample` ended, read off its end reason and its turns.
pub fn episode_end(sample: &Sample) -> Result<EpisodeEnd> {
    Ok(match sample.end_reason {
        EndReason::PolicyFailed => EpisodeEnd::PolicyFailed,
        EndReason::SimulatorFailed => EpisodeEnd::SimulatorFailed,
        EndReason::SimulatorEnded => EpisodeEnd::PatientEnded,
        EndReason::Done | EndReason::MaxTurns | EndReason::Truncated => {
            let doctor: Vec<&Turn> = sample
                .turns
                .iter()
                .filter(|t| t.role == Role::Assistant)
                .collect();
            let last = doctor.last();
            let last_stage = last.and_then(|t| t.stage);
            if last_stage != Some(Stage::Diag) {
                if last.is_some_and(|t| grammar::ends_consultation(&t.text)) {
                    EpisodeEnd::DiagnosedEarly
                } else {
                    // Done / MaxTurns end in Diag: before it only the token stream's end stops an episode.
                    EpisodeEnd::ContextLimit
                }
            } else if doctor.iter().any(|t| {
                t.stage == Some(Stage::Inquiry) && grammar::completes(Stage::Inquiry, &t.text)
            }) {
                EpisodeEnd::Done
            } else {
                EpisodeEnd::InquiryLimit
            }
        }
        r @ (EndReason::JudgeFailed | EndReason::GatedOut) => bail!(
            "case {}: a whole evaluation episode cannot end with {r:?}",
            sample.case_id
        ),
    })
}

/// The dialogue without the system prompt, thinking stripped from doctor turns: what the patient could have heard
/// (the fact checker's context).
fn heard(conversation: &[Turn]) -> Vec<Turn> {
    conversation
        .iter()
        .filter(|t| t.role != Role::System)
        .map(|t| {
            if t.role == Role::Assistant {
                Turn {
                    text: grammar::strip_think(&t.text).trim().to_string(),
                    ..t.clone()
                }
            } else {
                t.clone()
            }
        })
        .collect()
}

/// Scores one played episode. `note` is what rollout recorded about its end (the error of a failed one).
async fn record(
    case: &Case,
    sample: &Sample,
    truncated_replies: u32,
    note: Option<&str>,
    env: &EvalEnv<'_>,
    cfg: &ConsultationConfig,
) -> Result<EpisodeRecord> {
    let end = episode_end(sample)?;
    let turns = &sample.turns;
    let diagnosis = normalize_icd10(&case.diagnosis.icd10);
    let inquiry: Vec<String> = stage_replies(turns, Stage::Inquiry);
    let mut record = EpisodeRecord {
        case_id: case.id.clone(),
        department: case.department.clone(),
        seen_diagnosis: env.seen_diagnoses.map(|s| s.contains(&diagnosis)),
        diagnosis,
        sample_idx: sample.sample_idx,
        end,
        error: end
            .is_failure()
            .then(|| note.map_or_else(|| format!("{:?}", sample.end_reason), str::to_string)),
        inquiry_turns: inquiry.len() as u32,
        truncated: truncated_replies > 0,
        stages: BTreeMap::new(),
        critical_recall: None,
        safety: assess(case, turns, &cfg.escalation_terms),
        claims: None,
        fact_check_failures: 0,
        flagged_claims: vec![],
        transcript: turns.clone(),
    };
    if end.is_failure() {
        return Ok(record);
    }
    for stage in Stage::ALL {
        let replies = stage_replies(turns, stage);
        record
            .stages
            .insert(stage, env.scorer.score(case, stage, &replies, turns));
    }
    let questions: Vec<String> = inquiry.iter().map(|r| grammar::strip_think(r)).collect();
    let critical: Vec<_> = case.inquiry_items.iter().filter(|i| i.critical).collect();
    if !critical.is_empty() {
        let asked = critical
            .iter()
            .filter(|i| {
                i.keywords
                    .iter()
                    .any(|k| questions.iter().any(|q| mentions(q, k)))
            })
            .count();
        record.critical_recall = Some(asked as f64 / critical.len() as f64);
    }
    if let Some(checker) = env.facts {
        let mut all = FactCheck::default();
        for (i, t) in turns.iter().enumerate() {
            if t.role == Role::Assistant {
                all.merge(checker.check(&t.text, &heard(&turns[..i])).await);
            }
        }
        record.claims = Some(all.counts());
        record.fact_check_failures = all.failures;
        record.flagged_claims = all
            .claims
            .into_iter()
            .filter(|c| c.label != ClaimLabel::Supported)
            .collect();
    }
    Ok(record)
}

/// Scores every sample of `groups` (one group per case, as [`super::play`] returns them), `cfg.concurrency` at
/// once (fact checks call external models), and returns the records in case, then `sample_idx`, order.
pub async fn run_records(
    groups: &[Group],
    cases: &[Case],
    env: &EvalEnv<'_>,
    cfg: &ConsultationConfig,
) -> Result<Vec<EpisodeRecord>> {
    let mut jobs = Vec::new();
    for g in groups {
        let case = cases.iter().find(|c| c.id == g.case_id).with_context(|| {
            format!("rollout played case {}, which is not evaluated", g.case_id)
        })?;
        for (i, s) in g.samples.iter().enumerate() {
            let note = g
                .notes
                .iter()
                .find(|(idx, _)| *idx == s.sample_idx)
                .map(|(_, n)| n.as_str());
            let truncated = g.truncated_replies.get(i).copied().unwrap_or(0);
            jobs.push((case, s, truncated, note));
        }
    }
    let mut out: Vec<(usize, Result<EpisodeRecord>)> =
        futures::stream::iter(jobs.into_iter().enumerate())
            .map(|(k, (case, s, truncated, note))| async move {
                (k, record(case, s, truncated, note, env, cfg).await)
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect()
            .await;
    out.sort_by_key(|(k, _)| *k);
    out.into_iter().map(|(_, r)| r).collect()
}
