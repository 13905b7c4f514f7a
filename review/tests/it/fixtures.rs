//! A small run folder written with spar's own writers: `n` consultations of two departments, odd ones with a
//! refuted claim and a step violation.
use spar_core::sample::{
    ClaimLabel, ClaimRecord, EndReason, EpisodeMode, ItemVerdict, Role, SCHEMA_VERSION, Scored,
    StepScore, StepSpan, Turn,
};
use spar_core::{Sample, Stage};
use std::collections::HashMap;
use std::path::Path;

pub fn turn(role: Role, stage: Stage, text: &str) -> Turn {
    Turn {
        role,
        text: text.into(),
        stage: Some(stage),
    }
}

pub fn sample(i: usize) -> Sample {
    let case = format!("case-{}", i % 4);
    let turns = vec![
        turn(
            Role::User,
            Stage::Inquiry,
            "I have had a cough for three days.",
        ),
        turn(Role::Assistant, Stage::Inquiry, "Do you have a fever?"),
        turn(Role::User, Stage::Inquiry, "Yes, 39 degrees."),
        turn(Role::Assistant, Stage::Inquiry, "Any chest pain? <ready/>"),
        turn(Role::User, Stage::Diag, "Give your final diagnosis."),
        turn(
            Role::Assistant,
            Stage::Diag,
            &format!(
                "<diagnosis>Pneumonia (J18.9)</diagnosis> Amoxicillin treats pneumonia.{}",
                if i % 2 == 1 {
                    " Garlic cures pneumonia."
                } else {
                    ""
                }
            ),
        ),
    ];
    let steps = vec![
        StepSpan {
            stage: Stage::Inquiry,
            start: 0,
            end: 4,
        },
        StepSpan {
            stage: Stage::Inquiry,
            start: 4,
            end: 8,
        },
        StepSpan {
            stage: Stage::Diag,
            start: 8,
            end: 12,
        },
    ];
    Sample {
        schema_version: SCHEMA_VERSION,
        run_id: "t".into(),
        case_id: case.clone(),
        group_id: format!("t/g{}/{case}/episode", i / 2),
        sample_idx: (i % 2) as u32,
        stages: vec![Stage::Inquiry, Stage::Diag],
        mode: EpisodeMode::Fresh,
        policy_version: 0,
        end_reason: EndReason::Done,
        token_ids: vec![0; 12],
        loss_mask: vec![1; 12],
        rollout_logprobs: vec![0.0; 12],
        routed_experts: None,
        steps,
        turns,
    }
}

pub fn scored(s: &Sample, i: usize) -> Scored {
    let mut claims = vec![ClaimRecord {
        text: "Amoxicillin treats pneumonia".into(),
        label: ClaimLabel::Supported,
        saliency: 1.0,
        source: Some("kb:amoxicillin".into()),
    }];
    if i % 2 == 1 {
        claims.push(ClaimRecord {
            text: "Garlic cures pneumonia".into(),
            label: ClaimLabel::Refuted,
            saliency: 1.0,
            source: Some("kb:pneumonia".into()),
        });
    }
    let violation = |v: bool| {
        if v {
            vec!["repeated_question: asked twice".to_string()]
        } else {
            vec![]
        }
    };
    Scored {
        schema_version: SCHEMA_VERSION,
        run_id: "t".into(),
        case_id: s.case_id.clone(),
        group_id: s.group_id.clone(),
        sample_idx: s.sample_idx,
        r_task: 0.5,
        rubric: vec![ItemVerdict {
            criterion: "Asks about fever".into(),
            points: 5,
            met: Some(true),
            explanation: String::new(),
        }],
        stage_score: None,
        claims,
        r_fact: if i % 2 == 1 { -0.5 } else { 0.0 },
        lambda: 1.0,
        reward: i as f64 / 10.0,
        steps: (0..3)
            .map(|k| StepScore {
                violations: violation(i % 2 == 1 && k == 1),
                gamma: if i % 2 == 1 && k == 1 { 0.8 } else { 1.0 },
                advantage: 0.25,
            })
            .collect(),
        drop_reason: None,
        components: Default::default(),
    }
}

/// Writes `n` consultations into `dir` (samples.jsonl + scored.jsonl); returns the departments map.
pub fn write_run(dir: &Path, n: usize) -> HashMap<String, String> {
    let samples: Vec<Sample> = (0..n).map(sample).collect();
    let scored: Vec<Scored> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| scored(s, i))
        .collect();
    spar_data::wire::write_samples(&dir.join("samples.jsonl"), &samples).unwrap();
    spar_data::wire::write_scored(&dir.join("scored.jsonl"), &scored).unwrap();
    (0..4)
        .map(|c| {
            (
                format!("case-{c}"),
                if c < 2 { "respiratory" } else { "cardiology" }.to_string(),
            )
        })
        .collect()
}
