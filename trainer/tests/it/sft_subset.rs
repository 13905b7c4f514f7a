//! `trainer.sft_fraction`: SFT sees a per-diagnosis share of the training cases, RL all of them.
use spar_core::recipe::DataSection;
use spar_trainer::sft_phase::sft_subset;
use std::collections::HashMap;

#[test]
fn every_diagnosis_is_taught_and_the_rest_are_left_to_rl() {
    let data = DataSection {
        departments: vec!["cardiology".into(), "respiratory".into()],
        ..DataSection::default()
    };
    let train = spar_data::recipe::train_cases(&data, None).unwrap();
    let count = |cs: &[spar_core::Case]| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for c in cs {
            *m.entry(c.diagnosis.icd10.clone()).or_default() += 1;
        }
        m
    };
    let all = count(&train);
    // 10 shipped patients per diagnosis, 7 of them in the training split.
    assert!(all.values().all(|&n| n == 7), "{all:?}");
    let two_thirds = sft_subset(&train, 0.67);
    let got = count(&two_thirds);
    assert_eq!(got.len(), all.len());
    // round(7 x 0.67) = 5 taught by SFT, 2 left to RL.
    assert!(got.values().all(|&n| n == 5), "{got:?}");
    // File order is kept, and the first cases of each diagnosis are the ones taught.
    let first: Vec<&str> = two_thirds.iter().map(|c| c.id.as_str()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let expected: Vec<&str> = train
        .iter()
        .filter(|c| {
            let n = seen.entry(c.diagnosis.icd10.as_str()).or_default();
            *n += 1;
            *n <= 5
        })
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(first, expected);
    assert_eq!(sft_subset(&train, 1.0).len(), train.len());
    // A tiny fraction still teaches each diagnosis once.
    assert!(count(&sft_subset(&train, 0.01)).values().all(|&n| n == 1));
}
