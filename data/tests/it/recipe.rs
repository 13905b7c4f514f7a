//! The `[data]` recipe section selects the shipped train and validation cases by default.
use spar_core::recipe::DataSection;
use spar_data::recipe::{eval_cases, train_cases};

#[test]
fn default_section_gives_shipped_train_and_validation() {
    let s = DataSection::default();
    let train = train_cases(&s, None).unwrap();
    let val = eval_cases(&s, None).unwrap();
    assert_eq!((train.len(), val.len()), (280, 120));
    let capped = DataSection {
        max_cases: 5,
        ..DataSection::default()
    };
    assert_eq!(train_cases(&capped, None).unwrap(), train[..5]);
}

#[test]
fn relative_paths_resolve_against_the_recipe_folder() {
    let d = tempfile::tempdir().unwrap();
    spar_data::generate::write_dataset(&d.path().join("mycases"), 48, 1).unwrap();
    let s = DataSection {
        cases: Some("mycases".into()),
        ..DataSection::default()
    };
    let train = train_cases(&s, Some(d.path())).unwrap();
    assert!(!train.is_empty() && train.iter().all(|c| c.id.contains("-1-")));
    let e = train_cases(
        &DataSection {
            splits: Some("nope.json".into()),
            ..s
        },
        Some(d.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope.json"), "{e}");
}

#[test]
fn departments_keep_only_their_cases_and_a_wrong_name_is_named() {
    let s = DataSection {
        departments: vec!["cardiology".into(), "respiratory".into()],
        ..DataSection::default()
    };
    let train = train_cases(&s, None).unwrap();
    let val = eval_cases(&s, None).unwrap();
    assert_eq!((train.len(), val.len()), (42, 18));
    assert!(
        train
            .iter()
            .chain(&val)
            .all(|c| c.department == "cardiology" || c.department == "respiratory")
    );
    let e = train_cases(
        &DataSection {
            departments: vec!["cardiolgy".into()],
            ..DataSection::default()
        },
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("data.departments") && e.contains("cardiolgy") && e.contains("cardiology"),
        "{e}"
    );
}

#[test]
fn rl_extra_patients_are_fresh_and_of_the_training_diagnoses() {
    use spar_data::recipe::rl_extra_cases;
    let s = DataSection {
        departments: vec!["cardiology".into(), "respiratory".into()],
        ..DataSection::default()
    };
    let train = train_cases(&s, None).unwrap();
    assert!(rl_extra_cases(&s, &train).unwrap().is_empty());
    let with = DataSection {
        rl_extra_per_diagnosis: 3,
        ..s.clone()
    };
    let extra = rl_extra_cases(&with, &train).unwrap();
    let mut per: std::collections::HashMap<&str, usize> = Default::default();
    for c in &extra {
        *per.entry(c.diagnosis.icd10.as_str()).or_default() += 1;
    }
    let train_dx: std::collections::HashSet<&str> =
        train.iter().map(|c| c.diagnosis.icd10.as_str()).collect();
    assert_eq!(per.len(), train_dx.len(), "{per:?}");
    assert!(per.values().all(|&n| n == 3), "{per:?}");
    // New patients: no id of the shipped set, none equal to a shipped patient.
    let shipped = spar_data::load_cases(&super::common::source_cases_dir()).unwrap();
    let ids: std::collections::HashSet<&str> = shipped.iter().map(|c| c.id.as_str()).collect();
    assert!(extra.iter().all(|c| !ids.contains(c.id.as_str())));
    assert!(extra.iter().all(|c| {
        !shipped.iter().any(|s| {
            s.demographics == c.demographics
                && s.past_history == c.past_history
                && s.social_history == c.social_history
        })
    }));
    // Cases from elsewhere: no diagnosis of the table, a clear error naming the key.
    let mut foreign = train[0].clone();
    foreign.diagnosis.icd10 = "Z99.89".into();
    let e = rl_extra_cases(&with, &[foreign]).unwrap_err().to_string();
    assert!(e.contains("data.rl_extra_per_diagnosis"), "{e}");
}

/// A fake patient's identifiers, in the places a real record would carry them.
const PLANTED: &str = "My name is Margaret Okonkwo, MRN: A-7782341, e-mail margaret.okonkwo@example.org, \
                       phone (617) 555-0142, DOB 03/14/1962.";

/// `redact_on_ingest` (default on) redacts the cases a recipe reads; off keeps them as the file has them.
#[test]
fn redact_on_ingest_redacts_the_cases_and_off_keeps_them_raw() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cases");
    let (mut cases, splits) = spar_data::generate::write_dataset(&dir, 48, 1).unwrap();
    let planted = cases
        .iter_mut()
        .find(|c| splits.train.contains(&c.id))
        .unwrap();
    planted.hpi = format!("{} {PLANTED}", planted.hpi);
    planted.inquiry_items[0].answer = PLANTED.into();
    let id = planted.id.clone();
    spar_data::write_cases(&dir.join("cases.jsonl"), &cases).unwrap();
    let on = DataSection {
        cases: Some(dir.clone()),
        ..DataSection::default()
    };
    assert!(on.redact_on_ingest, "on by default");
    let got = train_cases(&on, None).unwrap();
    let text = serde_json::to_string(&got).unwrap();
    for ident in [
        "Margaret",
        "Okonkwo",
        "7782341",
        "example.org",
        "555-0142",
        "03/14/1962",
    ] {
        assert!(!text.contains(ident), "{ident} survived ingest");
    }
    let c = got.iter().find(|c| c.id == id).unwrap();
    assert!(
        c.hpi.contains("[NAME]") && c.hpi.contains("[MRN]"),
        "{}",
        c.hpi
    );
    let off = DataSection {
        redact_on_ingest: false,
        ..on
    };
    let raw = train_cases(&off, None).unwrap();
    assert!(raw.iter().any(|c| c.hpi.contains(PLANTED)));
}

/// The shipped cases are synthetic and hold no identifier: redaction on ingest leaves them exactly as they are
/// (a pattern that fired on clinical text would change what the demo trains on).
#[test]
fn redaction_leaves_the_shipped_cases_unchanged() {
    let raw = DataSection {
        redact_on_ingest: false,
        ..DataSection::default()
    };
    for split in [
        spar_core::recipe::Split::Train,
        spar_core::recipe::Split::Validation,
        spar_core::recipe::Split::Test,
    ] {
        let a = spar_data::recipe::split_cases(&raw, None, split).unwrap();
        let b = spar_data::recipe::split_cases(&DataSection::default(), None, split).unwrap();
        let changed: Vec<String> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x != y)
            .map(|(x, y)| {
                format!(
                    "{}: {} -> {}",
                    x.id,
                    serde_json::to_string(x).unwrap(),
                    serde_json::to_string(y).unwrap()
                )
            })
            .collect();
        assert!(
            changed.is_empty(),
            "{} changed:\n{}",
            changed.len(),
            changed[..changed.len().min(3)].join("\n")
        );
    }
}
