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
    let bad = DataSection {
        eval_split: "holdout".into(),
        ..DataSection::default()
    };
    let e = eval_cases(&bad, None).unwrap_err().to_string();
    assert!(e.contains("data.eval_split"), "{e}");
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
