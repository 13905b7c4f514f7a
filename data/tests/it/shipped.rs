//! The shipped cases in `data/cases/`: valid, large and varied enough, split correctly, codes real, and exactly
//! what the generator makes from the disease table (so table and data cannot drift apart).
use super::common::source_cases_dir as shipped_dir;
use spar_data::generate;
use spar_data::splits::{Split, Splits};
use std::collections::{BTreeMap, BTreeSet};

fn shipped() -> (Vec<spar_core::Case>, Splits) {
    let cases = spar_data::load_cases(&shipped_dir()).expect("shipped cases load and validate");
    let splits = Splits::load(&shipped_dir().join("splits.json")).expect("shipped splits.json");
    (cases, splits)
}

#[test]
fn shipped_cases_are_valid_large_and_varied() {
    let (cases, _) = shipped();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    for c in &cases {
        assert!(c.validate().is_empty(), "{}: {:?}", c.id, c.validate());
    }
    let depts: BTreeSet<&str> = cases.iter().map(|c| c.department.as_str()).collect();
    assert!(depts.len() >= 12, "{depts:?}");
    let dx: BTreeSet<&str> = cases.iter().map(|c| c.diagnosis.icd10.as_str()).collect();
    assert!(dx.len() >= 48, "{} diagnoses", dx.len());
}

#[test]
fn shipped_cases_are_what_the_generator_makes() {
    let (cases, _) = shipped();
    let again = generate::generate(cases.len(), generate::SHIPPED_SEED).unwrap();
    assert!(
        again == cases,
        "data/cases/cases.jsonl is stale: run `spar data generate --out data/cases`"
    );
}

/// The coded items a doctor copies from a case into `<ddx>` / `<diagnosis>` are fact-checked in the reward loop
/// ("J18.9 is the ICD-10 code for Community-acquired pneumonia"): every name and code pair of the table must be one
/// the knowledge base supports, or the scripted expert and a policy that imitates it are penalised for being right.
#[test]
fn every_coded_name_of_the_cases_is_supported_by_the_knowledge_base() {
    let (cases, _) = shipped();
    let kb = spar_data::kb::KnowledgeBase::load_default().unwrap();
    let pairs: BTreeSet<(String, String)> = cases
        .iter()
        .flat_map(|c| std::iter::once(&c.diagnosis).chain(&c.differential))
        .map(|d| (d.icd10.clone(), d.name.clone()))
        .collect();
    let wrong: Vec<String> = pairs
        .iter()
        .filter_map(|(code, name)| {
            let v = kb.verify_claim(&format!("{code} is the ICD-10 code for {name}"));
            (v.label != spar_core::sample::ClaimLabel::Supported)
                .then(|| format!("{code} {name:?}: {:?} ({})", v.label, v.evidence))
        })
        .collect();
    assert!(pairs.len() > 100, "{} pairs", pairs.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn splits_are_disjoint_and_test_is_held_out_by_diagnosis() {
    let (cases, splits) = shipped();
    splits.check("splits.json", &cases).unwrap();
    let by_id: BTreeMap<&str, &spar_core::Case> =
        cases.iter().map(|c| (c.id.as_str(), c)).collect();
    let dx = |s: Split| -> BTreeSet<&str> {
        splits
            .ids(s)
            .iter()
            .map(|id| by_id[id.as_str()].diagnosis.icd10.as_str())
            .collect()
    };
    let (train, val, test) = (dx(Split::Train), dx(Split::Validation), dx(Split::Test));
    assert!(
        train.is_disjoint(&test) && val.is_disjoint(&test),
        "a test diagnosis leaks into train/validation"
    );
    assert!(
        val.is_subset(&train),
        "validation is split by case: its diagnoses are trained on"
    );
    assert!(train.len() >= 40, "{} train diagnoses", train.len());
    assert!(!test.is_empty() && !splits.validation.is_empty());
    let total = splits.train.len() + splits.validation.len() + splits.test.len();
    assert_eq!(total, cases.len(), "every case is in exactly one split");
    assert_eq!(
        spar_data::load_split(&shipped_dir(), None, Split::Test)
            .unwrap()
            .len(),
        splits.test.len()
    );
}

#[test]
fn split_check_catches_leaks() {
    let (cases, mut splits) = shipped();
    let moved = splits.test.pop().unwrap();
    splits.train.push(moved.clone());
    let e = splits.check("s.json", &cases).unwrap_err().to_string();
    assert!(e.contains(&moved) && e.contains("held-out"), "{e}");
    splits.train.pop();
    splits.validation.push(splits.train[0].clone());
    let e = splits.check("s.json", &cases).unwrap_err().to_string();
    assert!(e.contains("both train and validation"), "{e}");
}

fn code_list() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(shipped_dir().join("icd10cm-codes.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (c, t) = l.split_once('\t').expect("code<TAB>title");
            (c.to_string(), t.to_string())
        })
        .collect()
}

#[test]
fn every_icd10_code_is_in_the_extracted_code_list() {
    let codes = code_list();
    for d in generate::diseases() {
        assert!(
            codes.contains_key(&d.icd10),
            "{}: {} not in icd10cm-codes.tsv",
            d.key,
            d.icd10
        );
    }
    let (cases, _) = shipped();
    for c in &cases {
        for dx in std::iter::once(&c.diagnosis).chain(&c.differential) {
            assert!(
                codes.contains_key(&dx.icd10),
                "{}: {} ({}) not in icd10cm-codes.tsv",
                c.id,
                dx.icd10,
                dx.name
            );
        }
    }
}

#[test]
fn extracted_code_list_matches_simple_icd_10_cm() {
    let Some(py) = super::common::python() else {
        return;
    };
    let tsv = shipped_dir().join("icd10cm-codes.tsv");
    let out = super::common::run_python(
        &py,
        "import sys, simple_icd_10_cm as cm\n\
         bad = []\n\
         for line in open(sys.argv[1]):\n\
         \x20   if line.startswith('#') or not line.strip(): continue\n\
         \x20   code, title = line.rstrip('\\n').split('\\t')\n\
         \x20   if not cm.is_valid_item(code) or not cm.is_leaf(code) or cm.get_description(code) != title: bad.append(code)\n\
         print('BAD', bad) if bad else print('OK')",
        &[tsv.to_str().unwrap()],
    );
    assert_eq!(
        out.trim(),
        "OK",
        "codes not billable in simple-icd-10-cm 1.5.0 or with another title: {out}"
    );
}

#[test]
fn cases_hold_no_identifiers() {
    let (cases, _) = shipped();
    let re = regex::Regex::new(
        r"\b(Mr|Mrs|Ms|Miss)\.? [A-Z]|\b\d{3}-\d{2}-\d{4}\b|\b\d{3}[ -]\d{3}[ -]\d{4}\b|@|\bMRN\b",
    )
    .unwrap();
    for c in &cases {
        let text = serde_json::to_string(c).unwrap();
        assert!(
            !re.is_match(&text),
            "{} looks like it holds an identifier: {:?}",
            c.id,
            re.find(&text)
        );
    }
}

/// Every file of `data/cases/`, `data/kb/` and `recipes/` in the source tree, as (path under the repository
/// root, bytes).
fn source_data_files() -> BTreeMap<String, Vec<u8>> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = BTreeMap::new();
    for dir in [
        spar_data::shipped::CASES_DIR,
        spar_data::shipped::KB_DIR,
        spar_data::shipped::RECIPES_DIR,
    ] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let name = format!("{dir}/{}", path.file_name().unwrap().to_str().unwrap());
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn the_binary_embeds_exactly_the_shipped_files() {
    let embedded: BTreeMap<String, Vec<u8>> = spar_data::shipped::embedded_files()
        .map(|(p, b)| (p.to_string(), b.to_vec()))
        .collect();
    let source = source_data_files();
    assert_eq!(
        embedded.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>(),
        "shipped.rs's FILES must list every file of data/cases, data/kb and recipes"
    );
    for (name, bytes) in &source {
        assert!(
            embedded[name] == *bytes,
            "{name} differs from its embedded copy"
        );
    }
}

#[test]
fn the_written_out_copy_loads_like_the_source() {
    let cases = spar_data::load_cases(&spar_data::shipped::cases_dir().unwrap()).unwrap();
    assert_eq!(cases, shipped().0);
    let kb = spar_data::kb::KnowledgeBase::load(&spar_data::shipped::kb_dir().unwrap()).unwrap();
    let source_kb = spar_data::kb::KnowledgeBase::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kb"),
    )
    .unwrap();
    assert_eq!(kb.version(), source_kb.version());
    let names = spar_data::shipped::recipe_names().unwrap();
    assert!(names.iter().any(|n| n == "tiny-cpu"), "{names:?}");
    let tiny = spar_data::shipped::recipe_path("tiny-cpu.toml")
        .unwrap()
        .unwrap();
    assert!(tiny.ends_with("recipes/tiny-cpu.toml"));
    for bad in ["no-such-recipe", "../data/cases/splits", "", ".hidden"] {
        assert!(
            spar_data::shipped::recipe_path(bad).unwrap().is_none(),
            "{bad}"
        );
    }
}
