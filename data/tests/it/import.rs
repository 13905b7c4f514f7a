//! `spar data import` (issue 18): AgentClinic's OSCE and NEJM layouts and SCAN-bench-style cases mapped to
//! spar's case; each row that cannot be mapped is an error naming the file, the line and the field, and the
//! other rows import. Fixtures (`tests/fixtures/import/`) are rows written for these tests in the real field
//! names, not copied data.
use spar_core::Error;
use spar_data::import::{ImportFormat, import};
use spar_data::kb::KnowledgeBase;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

/// (line, field, message) of each row error, checking that it names the file.
fn errors(errs: &[Error], file: &str) -> Vec<(usize, String, String)> {
    errs.iter()
        .map(|e| match e {
            Error::Field {
                file: f,
                line,
                field,
                msg,
            } => {
                assert!(f.ends_with(file), "{e}");
                (*line, field.clone(), msg.clone())
            }
            other => panic!("not a row error: {other}"),
        })
        .collect()
}

#[test]
fn agentclinic_osce_rows_map_and_the_unmappable_ones_are_named() {
    let kb = KnowledgeBase::load_default().unwrap();
    let got = import(
        &fixture("agentclinic_medqa.jsonl"),
        ImportFormat::AgentClinic,
        &kb,
    )
    .unwrap();
    assert_eq!(got.rows, 8);
    let ids: Vec<&str> = got.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "agentclinic_medqa-0001",
            "agentclinic_medqa-0002",
            "agentclinic_medqa-0003",
            "agentclinic_medqa-0004"
        ]
    );
    let errs = errors(&got.errors, "agentclinic_medqa.jsonl");
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert_eq!(
        (errs[0].0, errs[0].1.as_str(), errs[0].2.as_str()),
        (5, "OSCE_Examination.Correct_Diagnosis", "missing")
    );
    assert_eq!((errs[1].0, errs[1].1.as_str()), (6, "(line)"));
    assert!(errs[1].2.starts_with("not JSON"), "{errs:?}");
    assert_eq!(
        (errs[2].0, errs[2].1.as_str()),
        (7, "OSCE_Examination.Correct_Diagnosis")
    );
    assert!(errs[2].2.contains("Zorblatt"), "{errs:?}");
    assert_eq!(
        (errs[3].0, errs[3].1.as_str()),
        (8, "OSCE_Examination.Patient_Actor.Demographics")
    );
    assert!(errs[3].2.contains("no sex"), "{errs:?}");

    let mg = &got.cases[0];
    assert_eq!(
        (mg.diagnosis.icd10.as_str(), mg.department.as_str()),
        ("G70.0", "neurology")
    );
    assert_eq!(
        (mg.demographics.age, mg.chief_complaint.as_str()),
        (41, "Drooping eyelids")
    );
    // History, the three secondary symptoms, past and social history, review of systems.
    assert_eq!(mg.inquiry_items.len(), 7, "{:?}", mg.inquiry_items);
    assert!(
        mg.inquiry_items[0].critical
            && mg.inquiry_items[0]
                .answer
                .starts_with("Over the past 6 weeks")
    );
    assert!(
        mg.exam_findings
            .contains(&"Vital Signs / Blood Pressure: 118/76 mmHg".to_string())
    );
    let tests: Vec<(&str, Option<&str>)> = mg
        .tests
        .essential
        .iter()
        .map(|t| (t.name.as_str(), t.result.as_deref()))
        .collect();
    assert_eq!(
        tests,
        [
            (
                "Blood Tests",
                Some("Acetylcholine Receptor Antibodies: Positive")
            ),
            (
                "Electromyography",
                Some("Decrement on repetitive nerve stimulation")
            ),
            ("Chest CT", Some("No thymoma."))
        ]
    );
    assert!(
        mg.tests.essential[0]
            .aliases
            .contains(&"acetylcholine receptor antibodies".to_string())
    );
    assert!(
        mg.tests.essential[2]
            .aliases
            .contains(&"imaging".to_string())
    );
    // The rubric: the diagnosis, each test, each critical history item; rules scoped to their stage.
    assert_eq!(mg.rubric.len(), 1 + 3 + 1);
    assert_eq!(mg.rubric[0].points, 10);
    assert!(
        mg.rubric[0]
            .rule
            .as_ref()
            .unwrap()
            .any
            .contains(&"g70.0".to_string())
    );
    assert_eq!(got.cases[1].demographics.age, 0);
    assert_eq!(got.cases[1].diagnosis.icd10, "Q43.1");
    assert_eq!(got.cases[2].diagnosis.icd10, "E03.9");
    // "Information not provided" is no answer.
    assert!(got.cases[2].past_history.is_empty());
    assert_eq!(got.cases[3].diagnosis.icd10, "A81.2");
    for c in &got.cases {
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }
}

#[test]
fn imported_text_is_redacted_like_every_importers() {
    let kb = KnowledgeBase::load_default().unwrap();
    let mut got = import(
        &fixture("agentclinic_medqa.jsonl"),
        ImportFormat::AgentClinic,
        &kb,
    )
    .unwrap();
    let raw = serde_json::to_string(&got.cases).unwrap();
    assert!(raw.contains("John Carter") && raw.contains("A-7782341"));
    spar_data::redact::redact_cases(&mut got.cases);
    let red = serde_json::to_string(&got.cases).unwrap();
    assert!(
        !red.contains("John Carter") && !red.contains("A-7782341"),
        "{red}"
    );
}

#[test]
fn agentclinic_nejm_rows_map_with_the_wrong_answers_as_differential() {
    let kb = KnowledgeBase::load_default().unwrap();
    let got = import(
        &fixture("agentclinic_nejm.jsonl"),
        ImportFormat::AgentClinic,
        &kb,
    )
    .unwrap();
    assert_eq!((got.rows, got.cases.len()), (2, 1));
    let c = &got.cases[0];
    assert!(c.diagnosis.icd10.starts_with("A51"), "{:?}", c.diagnosis);
    assert_eq!(
        (c.demographics.age, c.department.as_str()),
        (47, "infectious disease")
    );
    assert_eq!(
        c.chief_complaint,
        "2-month history of a painless rash on his palms"
    );
    // The history part of the vignette only: no examination, no test result.
    assert!(
        !c.hpi.contains("copper") && !c.hpi.contains("Serologic"),
        "{}",
        c.hpi
    );
    let names: Vec<&str> = c.tests.essential.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["Rapid plasma reagin", "Treponemal antibody test"]);
    assert_eq!(
        c.tests.essential[0].result.as_deref(),
        Some("Reactive (1:64)")
    );
    assert!(!c.differential.is_empty());
    let errs = errors(&got.errors, "agentclinic_nejm.jsonl");
    assert_eq!(
        errs,
        [(
            2,
            "answers".into(),
            "needs exactly one correct answer, has 2".into()
        )]
    );
}

#[test]
fn scan_cases_map_levels_differential_and_tests() {
    let kb = KnowledgeBase::load_default().unwrap();
    let got = import(&fixture("scan_cases.json"), ImportFormat::Scan, &kb).unwrap();
    assert_eq!((got.rows, got.cases.len()), (2, 1));
    let c = &got.cases[0];
    assert_eq!(
        (c.id.as_str(), c.diagnosis.icd10.as_str()),
        ("scan-chest-001", "I21.4")
    );
    assert_eq!(c.department, "cardiology");
    let weights: Vec<(f32, bool)> = c
        .inquiry_items
        .iter()
        .map(|i| (i.weight, i.critical))
        .collect();
    assert_eq!(weights, [(3.0, true), (2.0, false), (1.0, false)]);
    assert_eq!(
        c.inquiry_items[0].keywords[..3],
        ["radiat", "arm", "spread"]
    );
    assert_eq!(c.differential.len(), 3, "{:?}", c.differential);
    assert_eq!(c.differential[1].icd10, "I71.00");
    assert_eq!((c.tests.essential.len(), c.tests.optional.len()), (2, 1));
    assert_eq!(
        c.tests.essential[0].result.as_deref(),
        Some("ST depression in V4-V6")
    );
    let errs = errors(&got.errors, "scan_cases.json");
    assert_eq!(errs.len(), 1);
    assert_eq!(
        (errs[0].0, errs[0].1.as_str()),
        (2, "history_checklist[0].level")
    );
}

#[test]
fn a_missing_file_is_not_found_and_an_unknown_format_is_named() {
    let kb = KnowledgeBase::load_default().unwrap();
    let e = import(&fixture("nope.jsonl"), ImportFormat::Scan, &kb).unwrap_err();
    assert!(e.to_string().starts_with("not found:"), "{e}");
    assert!(
        ImportFormat::parse("osce")
            .unwrap_err()
            .to_string()
            .contains("agentclinic, scan")
    );
}
