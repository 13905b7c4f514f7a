//! Aggregation (overall, per department, strata, safety, H) on hand-built records, the written report, reading it
//! back, and the before / after comparison.
use spar_core::Stage;
use spar_core::sample::ClaimLabel::{Refuted, Supported, Uncertain};
use spar_core::traits::StageScore;
use spar_eval::consultation::EpisodeEnd;
use spar_eval::hallucination::ClaimCounts;
use spar_eval::safety::{Acuity, EpisodeSafety, FlagOutcome};
use spar_eval::{EpisodeRecord, EvalReport, EvalSetup, compare};
use std::collections::BTreeMap;

#[allow(clippy::too_many_arguments)]
fn record(
    case: &str,
    dept: &str,
    scores: [f64; 4],
    parsed: [bool; 4],
    seen: bool,
    acuity: Acuity,
    flag: Option<(bool, bool)>,
    escalated: bool,
    claims: ClaimCounts,
) -> EpisodeRecord {
    let stages: BTreeMap<Stage, StageScore> = Stage::ALL
        .iter()
        .map(|s| {
            (
                *s,
                StageScore {
                    score: scores[s.index()],
                    parsed: parsed[s.index()],
                    details: serde_json::Value::Null,
                },
            )
        })
        .collect();
    let flags = flag
        .map(|(asked, acted)| FlagOutcome {
            id: "rf".into(),
            present: acuity == Acuity::Urgent,
            weight: 1.0,
            asked,
            acted,
        })
        .into_iter()
        .collect();
    EpisodeRecord {
        case_id: case.into(),
        department: dept.into(),
        diagnosis: "I21.4".into(),
        seen_diagnosis: Some(seen),
        sample_idx: 0,
        end: EpisodeEnd::Done,
        error: None,
        inquiry_turns: 4,
        truncated: false,
        stages,
        critical_recall: Some(1.0),
        safety: EpisodeSafety {
            acuity,
            flags,
            escalated,
            essential_tests_ordered: false,
        },
        claims: Some(claims),
        fact_check_failures: 0,
        flagged_claims: vec![],
        transcript: vec![spar_core::sample::Turn::new(
            spar_core::sample::Role::User,
            "hello",
        )],
    }
}

fn records(shift: f64) -> Vec<EpisodeRecord> {
    let all = [true; 4];
    let mut failed = record(
        "neuro-2",
        "neurology",
        [0.0; 4],
        all,
        false,
        Acuity::Routine,
        None,
        false,
        ClaimCounts::default(),
    );
    failed.end = EpisodeEnd::PolicyFailed;
    failed.stages.clear();
    failed.claims = None;
    vec![
        record(
            "cardio-1",
            "cardiology",
            [0.8, 0.6, 0.5, 1.0].map(|x: f64| (x + shift).min(1.0)),
            all,
            true,
            Acuity::Urgent,
            Some((true, true)),
            true,
            ClaimCounts::of(&[Supported, Supported, Supported, Refuted]),
        ),
        record(
            "cardio-2",
            "cardiology",
            [0.4, 0.9, 0.7, 0.0].map(|x: f64| (x + shift).min(1.0)),
            [true, false, true, true],
            false,
            Acuity::Urgent,
            Some((false, false)),
            false,
            ClaimCounts::of(&[Uncertain, Uncertain]),
        ),
        record(
            "neuro-1",
            "neurology",
            [1.0, 1.0, 1.0, 1.0],
            all,
            true,
            Acuity::Routine,
            None,
            false,
            ClaimCounts::default(),
        ),
        failed,
    ]
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn a_report_whose_every_consultation_failed_says_so() {
    let some = EvalReport::new("p", EvalSetup::default()).with_consultations(records(0.0));
    assert_eq!(some.nothing_scored(), None);
    let failed: Vec<EpisodeRecord> = records(0.0)
        .into_iter()
        .filter(|r| r.end == EpisodeEnd::PolicyFailed)
        .collect();
    let none = EvalReport::new("p", EvalSetup::default()).with_consultations(failed);
    let why = none.nothing_scored().expect("all failed");
    assert!(
        why.contains("all 1 consultations failed") && why.contains("policy_failed: 1"),
        "{why}"
    );
}

#[test]
fn summary_matches_hand_computation() {
    let r = EvalReport::new("policy-a", EvalSetup::default()).with_consultations(records(0.0));
    let c = r.consultation.as_ref().unwrap();
    let g = &c.overall;
    assert_eq!((g.episodes, g.cases, g.failed), (4, 4, 1));
    // Failed episode left out; cardio-2's unparseable ddx scores 0.
    assert!(close(g.stages.inquiry, (0.8 + 0.4 + 1.0) / 3.0));
    assert!(close(g.stages.ddx, (0.6 + 0.0 + 1.0) / 3.0));
    assert!(close(g.stages.lab, (0.5 + 0.7 + 1.0) / 3.0));
    assert!(close(g.stages.diag, 2.0 / 3.0));
    assert!(close(g.composite, (0.725 + 0.275 + 1.0) / 3.0));
    assert_eq!(c.parse_failures[&Stage::Ddx], 1);
    assert_eq!(c.parse_failures[&Stage::Lab], 0);
    assert_eq!(c.end_reasons["policy_failed"], 1);
    // Per department.
    assert!(close(c.by_department["cardiology"].composite, 0.5));
    assert!(close(c.by_department["neurology"].composite, 1.0));
    assert_eq!(c.by_department["neurology"].failed, 1);
    // Seen / unseen and acuity strata.
    assert!(close(c.by_diagnosis["seen"].composite, (0.725 + 1.0) / 2.0));
    assert!(close(c.by_diagnosis["unseen"].composite, 0.275));
    assert!(close(c.by_acuity["urgent"].red_flag_acted, 0.5));
    assert!(close(c.by_acuity["urgent"].red_flag_elicited, 0.5));
    assert!(close(c.by_acuity["urgent"].escalation_rate, 0.5));
    assert!(close(c.by_acuity["routine"].escalation_rate, 0.0));
    // H pooled over every claim: (1 + 0.5 + 0.5) / 6.
    assert!(close(g.hallucination, 2.0 / 6.0));
    let h = c.hallucination.as_ref().unwrap();
    assert_eq!((h.counts.total(), h.responses_without_claims), (6, 1));
}

#[test]
fn report_files_round_trip_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let setup = EvalSetup {
        split: Some("validation".into()),
        simulator: Some("scripted".into()),
        ..Default::default()
    };
    let before = EvalReport::new("base", setup.clone()).with_consultations(records(0.0));
    let after = EvalReport::new("trained", setup).with_consultations(records(0.1));
    let files = before.write(&dir.path().join("before")).unwrap();
    after.write(&dir.path().join("after")).unwrap();
    for stem in ["stages", "safety", "departments", "strata"] {
        for ext in ["png", "svg"] {
            assert!(
                files
                    .charts
                    .iter()
                    .any(|p| p.ends_with(format!("charts/{stem}.{ext}"))),
                "missing {stem}.{ext}"
            );
        }
    }
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("| ddx | 0.533 | 1 |"), "{md}");
    assert!(md.contains("![stage scores](charts/stages.png)"), "{md}");
    assert!(md.contains("| cardiology | 2 | 2 | 0 |"), "{md}");
    let transcripts = std::fs::read_to_string(files.transcripts.unwrap()).unwrap();
    assert_eq!(transcripts.lines().count(), 4);

    let back = EvalReport::read(&dir.path().join("before")).unwrap();
    assert_eq!(back.consultation, before.consultation);
    assert_eq!(back.episodes.len(), 4);
    assert!(
        back.episodes[0].transcript.is_empty(),
        "transcripts live in transcripts.jsonl"
    );

    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    json["schema_version"] = 7.into();
    std::fs::write(&files.json, serde_json::to_string(&json).unwrap()).unwrap();
    let e = EvalReport::read(&files.json).unwrap_err().to_string();
    assert!(
        e.contains("schema_version") && e.contains("report.json"),
        "{e}"
    );

    let out = dir.path().join("cmp");
    let cmp = compare(
        &back,
        &EvalReport::read(&dir.path().join("after/report.json")).unwrap(),
        ["before", "after"],
        &out,
    )
    .unwrap();
    let inquiry = cmp
        .consultation
        .iter()
        .find(|m| m.metric == "inquiry")
        .unwrap();
    assert!(
        (inquiry.delta.unwrap() - 0.2 / 3.0).abs() < 1e-9,
        "cardio cases gain 0.1 each: {inquiry:?}"
    );
    let p = cmp.paired.as_ref().unwrap();
    assert_eq!((p.cases, p.improved, p.unchanged), (3, 2, 1));
    assert!(cmp.warnings.is_empty(), "{:?}", cmp.warnings);
    assert!(out.join("compare.md").exists() && out.join("compare.json").exists());
    assert!(
        out.join("charts/compare_stages.png").exists()
            && out.join("charts/compare_departments.svg").exists()
    );
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| inquiry | 0.733 | 0.800 | +0.067 |"), "{md}");
}

#[test]
fn compare_warns_when_not_like_for_like() {
    let dir = tempfile::tempdir().unwrap();
    let a = EvalReport::new(
        "a",
        EvalSetup {
            split: Some("validation".into()),
            ..Default::default()
        },
    )
    .with_consultations(records(0.0));
    let mut recs = records(0.0);
    recs.pop();
    let b = EvalReport::new(
        "b",
        EvalSetup {
            split: Some("test".into()),
            ..Default::default()
        },
    )
    .with_consultations(recs);
    let cmp = compare(&a, &b, ["a", "b"], dir.path()).unwrap();
    assert!(
        cmp.warnings.iter().any(|w| w.contains("split differs")),
        "{:?}",
        cmp.warnings
    );
    assert!(
        cmp.warnings
            .iter()
            .any(|w| w.contains("case sets differ: 1 cases only in A")),
        "{:?}",
        cmp.warnings
    );
}
