//! The generator: deterministic, prefix-stable, every table row well formed.
use spar_data::generate::{self, diseases, question_for};

#[test]
fn generation_is_seeded_and_prefix_stable() {
    let a = generate::generate(30, 5).unwrap();
    assert_eq!(a, generate::generate(30, 5).unwrap());
    assert_eq!(a[..10], generate::generate(10, 5).unwrap()[..]);
    let b = generate::generate(30, 6).unwrap();
    assert_ne!(
        a.iter().map(|c| c.demographics.age).collect::<Vec<_>>(),
        b.iter().map(|c| c.demographics.age).collect::<Vec<_>>()
    );
    let ids: std::collections::BTreeSet<_> = a.iter().map(|c| &c.id).collect();
    assert_eq!(ids.len(), a.len());
}

#[test]
fn every_disease_is_well_formed() {
    let n = diseases().len();
    assert!(n >= 40, "{n} diseases");
    for d in diseases() {
        // Templates say "for {dur}" and "{dur} ago": a duration must be a length of time, not "since ...".
        assert!(
            d.durations.iter().all(|x| !x.starts_with("since")),
            "{}: {:?}",
            d.key,
            d.durations
        );
    }
    let cases = generate::generate(n * 3, 1).unwrap();
    for c in &cases {
        assert!(c.validate().is_empty(), "{}: {:?}", c.id, c.validate());
        assert!(
            c.inquiry_items.iter().any(|i| i.critical),
            "{}: no critical inquiry item",
            c.id
        );
        assert!(
            !c.differential.is_empty()
                && c.differential.iter().all(|d| d.icd10 != c.diagnosis.icd10),
            "{}",
            c.id
        );
        assert!(
            !c.chief_complaint.contains('{') && !c.hpi.contains('{'),
            "{}: unfilled template",
            c.id
        );
        // The stage grammar splits list items on ';' and newlines: names must hold neither.
        let names = c
            .tests
            .essential
            .iter()
            .chain(&c.tests.optional)
            .map(|t| &t.name)
            .chain(std::iter::once(&c.diagnosis.name))
            .chain(c.differential.iter().map(|d| &d.name));
        for n in names {
            assert!(!n.contains(';') && !n.contains('\n'), "{}: `{n}`", c.id);
        }
        for it in &c.inquiry_items {
            let q = question_for(c, &it.id)
                .unwrap_or_else(|| panic!("{}: no question for {}", c.id, it.id));
            let lower = q.to_lowercase();
            assert!(
                it.keywords.iter().any(|k| lower.contains(k.as_str())),
                "{}: `{q}` has none of {:?}",
                c.id,
                it.keywords
            );
            assert!(
                q.split_whitespace().count() <= 15,
                "{}: `{q}` is long",
                c.id
            );
            assert!(!it.answer.contains('{'), "{}: {}", c.id, it.answer);
        }
        for rf in &c.red_flags {
            let q = question_for(c, &rf.id).unwrap();
            assert!(
                rf.keywords
                    .iter()
                    .any(|k| q.to_lowercase().contains(k.as_str())),
                "{}: `{q}`",
                c.id
            );
        }
        let ages = generate::diseases()
            .iter()
            .find(|d| d.icd10 == c.diagnosis.icd10)
            .unwrap()
            .age;
        assert!((ages[0]..=ages[1]).contains(&c.demographics.age));
    }
}

#[test]
fn write_dataset_and_load_split() {
    let d = tempfile::tempdir().unwrap();
    let (cases, splits) = generate::write_dataset(d.path(), 96, 3).unwrap();
    assert_eq!(spar_data::load_cases(d.path()).unwrap(), cases);
    let train = spar_data::load_split(d.path(), None, spar_data::Split::Train).unwrap();
    let val = spar_data::load_split(
        &d.path().join("cases.jsonl"),
        None,
        spar_data::Split::Validation,
    )
    .unwrap();
    assert_eq!(train.len(), splits.train.len());
    assert_eq!(val.len(), splits.validation.len());
    assert_eq!(train.len() + val.len() + splits.test.len(), 96);
}

/// Regenerates `data/cases/` (same as `spar data generate --out data/cases`) without building the `spar` binary:
/// `cargo test -p spar-data -- --ignored write_shipped_cases`.
#[test]
#[ignore = "writes data/cases; run explicitly after editing the disease table"]
fn write_shipped_cases() {
    let n = generate::SHIPPED_PER_DISEASE * diseases().len();
    generate::write_dataset(
        &super::common::source_cases_dir(),
        n,
        generate::SHIPPED_SEED,
    )
    .unwrap();
}
