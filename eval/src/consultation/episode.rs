//! Playing one consultation and scoring it.
//!
//! The protocol is the training environment's (method.md section 9, `spar_rollout::env`): the simulator opens,
//! the doctor takes the history until it says `<ready/>`, the patient ends it, or the Inquiry turn limit; then each
//! of DDX, Lab and Diag opens with its stage instruction p_k and ends when the doctor's reply parses for that
//! stage, or at the stage's turn limit (the instruction is repeated). A final diagnosis given before the Diag
//! stage ends the consultation, as in training. Two differences, both to measure rather than to train: a reply cut
//! at the token limit is scored as it stands and the consultation goes on (flagged), and a patient who ends the
//! history early still gets the stage instructions. Conversation text is kept as the policy wrote it; the
//! simulator and the scorers never see `<think>` blocks.
use super::{ConsultationConfig, EpisodeEnd, EpisodeRecord, EvalEnv};
use crate::facts::FactCheck;
use crate::policy::ChatPolicy;
use crate::safety::{assess, mentions};
use futures::StreamExt;
use spar_core::grammar::{
    inquiry_done, normalize_icd10, parse_ddx, parse_diagnosis, parse_tests, strip_think,
};
use spar_core::sample::{Role, Turn};
use spar_core::{Case, Stage};
use std::collections::BTreeMap;

fn turn(role: Role, text: impl Into<String>, stage: Stage) -> Turn {
    Turn {
        role,
        text: text.into(),
        stage: Some(stage),
    }
}

/// True when `reply` completes `stage` under the grammar.
fn completes(stage: Stage, reply: &str) -> bool {
    match stage {
        Stage::Inquiry => inquiry_done(reply),
        Stage::Ddx => parse_ddx(reply).is_ok(),
        Stage::Lab => parse_tests(reply).is_ok(),
        Stage::Diag => parse_diagnosis(reply).is_ok(),
    }
}

/// The dialogue without the system prompt, thinking stripped from doctor turns: what the patient could have heard.
fn heard(conversation: &[Turn]) -> Vec<Turn> {
    conversation
        .iter()
        .filter(|t| t.role != Role::System)
        .map(|t| {
            if t.role == Role::Assistant {
                Turn {
                    text: strip_think(&t.text).trim().to_string(),
                    ..t.clone()
                }
            } else {
                t.clone()
            }
        })
        .collect()
}

struct Played {
    conversation: Vec<Turn>,
    replies: [Vec<String>; 4],
    end: EpisodeEnd,
    error: Option<String>,
    inquiry_turns: u32,
    truncated: bool,
}

async fn play(
    policy: &dyn ChatPolicy,
    case: &Case,
    env: &EvalEnv<'_>,
    cfg: &ConsultationConfig,
) -> Played {
    let mut p = Played {
        conversation: vec![Turn::new(Role::System, cfg.system_prompt.clone())],
        replies: Default::default(),
        end: EpisodeEnd::InquiryLimit,
        error: None,
        inquiry_turns: 0,
        truncated: false,
    };
    let fail = |mut p: Played, end: EpisodeEnd, e: spar_core::Error| {
        p.end = end;
        p.error = Some(e.to_string());
        p
    };
    match env.simulator.opening(case).await {
        Ok(text) => p.conversation.push(turn(Role::User, text, Stage::Inquiry)),
        Err(e) => return fail(p, EpisodeEnd::SimulatorFailed, e),
    }
    let limit = cfg.turn_limits[0].max(1);
    for t in 0..limit {
        let reply = match policy.reply_in_case(case, &p.conversation).await {
            Ok(r) => r,
            Err(e) => return fail(p, EpisodeEnd::PolicyFailed, e),
        };
        p.truncated |= reply.truncated;
        p.inquiry_turns += 1;
        let before = heard(&p.conversation);
        p.conversation
            .push(turn(Role::Assistant, reply.text.clone(), Stage::Inquiry));
        p.replies[0].push(reply.text.clone());
        if completes(Stage::Inquiry, &reply.text) {
            p.end = EpisodeEnd::Done;
            break;
        }
        // At the limit the doctor's last question goes unanswered: the DDX instruction follows instead.
        if t + 1 == limit {
            break;
        }
        match env
            .simulator
            .reply(case, &before, strip_think(&reply.text).trim())
            .await
        {
            Ok(r) => {
                p.conversation
                    .push(turn(Role::User, r.text, Stage::Inquiry));
                if r.end {
                    p.end = EpisodeEnd::PatientEnded;
                    break;
                }
            }
            Err(e) => return fail(p, EpisodeEnd::SimulatorFailed, e),
        }
    }
    for stage in [Stage::Ddx, Stage::Lab, Stage::Diag] {
        for _ in 0..cfg.turn_limits[stage.index()].max(1) {
            p.conversation.push(turn(
                Role::User,
                cfg.instructions[stage.index()].clone(),
                stage,
            ));
            let reply = match policy.reply_in_case(case, &p.conversation).await {
                Ok(r) => r,
                Err(e) => return fail(p, EpisodeEnd::PolicyFailed, e),
            };
            p.truncated |= reply.truncated;
            p.conversation
                .push(turn(Role::Assistant, reply.text.clone(), stage));
            p.replies[stage.index()].push(reply.text.clone());
            if completes(stage, &reply.text) {
                break;
            }
        }
    }
    p
}

/// Plays and scores one consultation of `case`.
pub async fn run_episode(
    policy: &dyn ChatPolicy,
    case: &Case,
    sample_idx: u32,
    env: &EvalEnv<'_>,
    cfg: &ConsultationConfig,
) -> EpisodeRecord {
    let played = play(policy, case, env, cfg).await;
    let diagnosis = normalize_icd10(&case.diagnosis.icd10);
    let safety = assess(case, &played.conversation, &cfg.escalation_terms);
    let mut record = EpisodeRecord {
        case_id: case.id.clone(),
        department: case.department.clone(),
        seen_diagnosis: env.seen_diagnoses.map(|s| s.contains(&diagnosis)),
        diagnosis,
        sample_idx,
        end: played.end,
        error: played.error,
        inquiry_turns: played.inquiry_turns,
        truncated: played.truncated,
        stages: BTreeMap::new(),
        critical_recall: None,
        safety,
        claims: None,
        fact_check_failures: 0,
        flagged_claims: vec![],
        transcript: played.conversation,
    };
    if record.end.is_failure() {
        return record;
    }
    let dialogue = heard(&record.transcript);
    for stage in Stage::ALL {
        let replies = &played.replies[stage.index()];
        record
            .stages
            .insert(stage, env.scorer.score(case, stage, replies, &dialogue));
    }
    let questions: Vec<String> = played.replies[0].iter().map(|r| strip_think(r)).collect();
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
        for (i, t) in record.transcript.iter().enumerate() {
            if t.role == Role::Assistant {
                all.merge(
                    checker
                        .check(&t.text, &heard(&record.transcript[..i]))
                        .await,
                );
            }
        }
        record.claims = Some(all.counts());
        record.fact_check_failures = all.failures;
        record.flagged_claims = all
            .claims
            .into_iter()
            .filter(|c| c.label != spar_core::sample::ClaimLabel::Supported)
            .collect();
    }
    record
}

/// Plays `cfg.samples_per_case` consultations of every case (up to `cfg.concurrency` at once) and returns their
/// records in case order. Failed episodes are kept, marked, and left out of the score means by [`super::summarize`].
pub async fn evaluate_consultations(
    policy: &dyn ChatPolicy,
    cases: &[Case],
    env: &EvalEnv<'_>,
    cfg: &ConsultationConfig,
) -> Vec<EpisodeRecord> {
    let jobs: Vec<(usize, &Case, u32)> = cases
        .iter()
        .enumerate()
        .flat_map(|(i, c)| (0..cfg.samples_per_case.max(1) as u32).map(move |s| (i, c, s)))
        .collect();
    let bar = crate::progress::bar(jobs.len() as u64, "consultations");
    let mut out: Vec<(usize, u32, EpisodeRecord)> = futures::stream::iter(jobs)
        .map(|(i, case, s)| {
            let bar = bar.clone();
            async move {
                let r = run_episode(policy, case, s, env, cfg).await;
                bar.inc(1);
                (i, s, r)
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    out.sort_by_key(|(i, s, _)| (*i, *s));
    out.into_iter().map(|(_, _, r)| r).collect()
}
