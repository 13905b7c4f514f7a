//! End to end on shipped validation cases, played through rollout's environment: the scripted patient, the
//! clinical stage scorers and the knowledge-base fact checker; the scripted expert as the policy scores high, a
//! policy that never follows the protocol low, and a diagnosis given early ends the consultation as in training.
use super::common::FixedPolicy;
use spar_core::Stage;
use spar_core::grammar::{self, normalize_icd10};
use spar_core::sample::{Role, Turn};
use spar_data::splits::Split;
use spar_eval::consultation::{EpisodeEnd, summarize};
use spar_eval::{
    ConsultationConfig, EpisodeRecord, EvalEnv, EvalPolicy, FactChecker, evaluate_consultations,
};
use spar_rewards::ClinicalStageScorer;
use spar_rewards::fact::RuleClaimExtractor;
use spar_rollout::env::ScriptedDoctor;
use spar_rollout::simulator::ScriptedPatient;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Six validation cases from six departments (at least one with a present red flag) and the training diagnoses.
pub fn validation_cases() -> (Vec<spar_core::Case>, BTreeSet<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/cases");
    let val = spar_data::load_split(&dir, None, Split::Validation).unwrap();
    let train = spar_data::load_split(&dir, None, Split::Train).unwrap();
    let mut picked: Vec<spar_core::Case> = Vec::new();
    if let Some(c) = val.iter().find(|c| c.red_flags.iter().any(|r| r.present)) {
        picked.push(c.clone());
    }
    for c in &val {
        if picked.len() < 6 && !picked.iter().any(|p| p.department == c.department) {
            picked.push(c.clone());
        }
    }
    let seen = train
        .iter()
        .map(|c| normalize_icd10(&c.diagnosis.icd10))
        .collect();
    (picked, seen)
}

fn run(
    policy: &EvalPolicy<'_>,
    cases: &[spar_core::Case],
    seen: &BTreeSet<String>,
) -> Vec<EpisodeRecord> {
    let verifier = spar_rewards::kb::shipped_verifier().unwrap();
    let extractor = RuleClaimExtractor;
    let facts = FactChecker::new(&extractor, verifier.as_ref());
    let env = EvalEnv {
        simulator: Arc::new(ScriptedPatient),
        scorer: Arc::new(ClinicalStageScorer::default()),
        scorer_id: "clinical".into(),
        facts: Some(&facts),
        seen_diagnoses: Some(seen),
    };
    evaluate_consultations(policy, cases, &env, &ConsultationConfig::default()).unwrap()
}

#[test]
fn scripted_expert_scores_high_and_a_bad_policy_low() {
    let (cases, seen) = validation_cases();
    assert!(
        cases.len() >= 4,
        "need shipped validation cases from several departments"
    );
    let expert = run(&EvalPolicy::expert(12), &cases, &seen);
    let s = summarize(&expert, "rule", "kb");
    let g = &s.overall;
    assert_eq!((g.episodes, g.failed), (cases.len(), 0));
    assert!(
        expert.iter().all(|r| r.end == EpisodeEnd::Done),
        "{:?}",
        expert
            .iter()
            .map(|r| (&r.case_id, r.end))
            .collect::<Vec<_>>()
    );
    assert!(expert.iter().all(|r| r.stages.values().all(|s| s.parsed)));
    assert!(
        g.stages.inquiry.unwrap() > 0.8,
        "expert inquiry coverage {:?}",
        g.stages.inquiry
    );
    assert!(
        (g.stages.ddx.unwrap() - 1.0).abs() < 1e-9,
        "the expert lists the diagnosis first: {:?}",
        g.stages.ddx
    );
    assert!(
        g.stages.lab.unwrap() > 0.8,
        "expert lab F1 {:?}",
        g.stages.lab
    );
    assert!((g.stages.diag.unwrap() - 1.0).abs() < 1e-9);
    assert!(g.composite.unwrap() > 0.9);
    assert!(g.critical_recall.unwrap() > 0.9, "{:?}", g.critical_recall);
    assert!(
        g.red_flag_screening.unwrap() > 0.9,
        "{:?}",
        g.red_flag_screening
    );
    assert_eq!(
        g.red_flag_acted,
        Some(1.0),
        "the expert orders the full work-up in urgent cases"
    );
    assert_eq!(
        s.by_diagnosis.get("seen").map(|x| x.episodes),
        Some(cases.len()),
        "validation diagnoses are all seen in train"
    );
    assert!(s.by_acuity.contains_key("urgent"));
    assert!(s.by_department.len() >= 4);
    // Every turn is kept, in order, with its stage.
    let t = &expert[0].transcript;
    assert_eq!(t[0].role, spar_core::sample::Role::System);
    assert!(t.iter().any(|x| x.stage == Some(Stage::Diag)));

    let bad = run(
        &EvalPolicy::chat(Arc::new(FixedPolicy::new(
            "Hmm, I am not sure. Take some rest.",
        ))),
        &cases,
        &seen,
    );
    let b = summarize(&bad, "rule", "kb");
    let bg = &b.overall;
    assert_eq!(bg.failed, 0);
    assert!(
        bad.iter()
            .all(|r| r.end == EpisodeEnd::InquiryLimit && r.inquiry_turns == 12)
    );
    assert_eq!(bg.stages.inquiry, Some(0.0));
    assert_eq!(
        (bg.stages.ddx, bg.stages.lab, bg.stages.diag),
        (Some(0.0), Some(0.0), Some(0.0))
    );
    assert_eq!(b.parse_failures[&Stage::Diag], cases.len());
    assert_eq!(bg.red_flag_acted, Some(0.0));
    assert!(bg.composite.unwrap() < 0.05);
}

/// Says it is ready at once, then gives its final diagnosis when asked for the differential.
struct HastyDoctor;

impl ScriptedDoctor for HastyDoctor {
    fn id(&self) -> String {
        "hasty".into()
    }
    fn reply(&self, case: &spar_core::Case, dialogue: &[Turn]) -> String {
        match dialogue
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .and_then(|t| t.stage)
        {
            Some(Stage::Inquiry) | None => "I see. <ready/>".into(),
            _ => grammar::render_diagnosis(&grammar::NamedDx {
                name: case.diagnosis.name.clone(),
                icd10: Some(case.diagnosis.icd10.clone()),
            }),
        }
    }
}

/// The early-diagnosis rule is training's (it is the same environment): a final diagnosis during DDX ends the
/// consultation, Lab and Diag are not played and score 0 there, the diagnosis itself is scored.
#[test]
fn a_diagnosis_during_ddx_ends_the_consultation_as_in_training() {
    let (cases, seen) = validation_cases();
    let cases = &cases[..2];
    let policy = EvalPolicy::scripted("hasty", Arc::new(HastyDoctor));
    let records = run(&policy, cases, &seen);
    for r in &records {
        assert_eq!(
            r.end,
            EpisodeEnd::DiagnosedEarly,
            "{}: {:?}",
            r.case_id,
            r.error
        );
        assert!(!r.transcript.iter().any(|t| t.stage == Some(Stage::Lab)));
        let last = r.transcript.last().unwrap();
        assert_eq!((last.role, last.stage), (Role::Assistant, Some(Stage::Ddx)));
        assert_eq!(r.stage(Stage::Lab), Some(0.0));
        assert_eq!(r.inquiry_turns, 1);
    }
    let s = summarize(&records, "rule", "kb");
    assert_eq!(s.end_reasons["diagnosed_early"], cases.len());
}
