//! The shipped knowledge base: loading, version, ICD-10-CM hierarchy, interactions, and claim verdicts on
//! hand-written claims (supported, refuted, uncertain, negations, unit traps).
use spar_core::sample::ClaimLabel;
use spar_data::kb::{KnowledgeBase, Severity};
use std::sync::LazyLock;

static KB: LazyLock<KnowledgeBase> =
    LazyLock::new(|| KnowledgeBase::load_default().expect("shipped knowledge base loads"));

fn label(claim: &str) -> ClaimLabel {
    KB.verify_claim(claim).label
}

#[track_caller]
fn check(cases: &[(&str, ClaimLabel)]) {
    let mut wrong = Vec::new();
    for (claim, want) in cases {
        let v = KB.verify_claim(claim);
        if v.label != *want {
            wrong.push(format!(
                "{claim:?}: want {want:?}, got {:?} ({}; {:?})",
                v.label, v.evidence, v.source
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

use ClaimLabel::{Refuted as R, Supported as S, Uncertain as U};

#[test]
fn loads_with_a_content_version() {
    assert!(
        KB.version().starts_with("kb-") && KB.version().len() == 19,
        "{}",
        KB.version()
    );
    assert!(KB.icd10_len() > 90_000, "whole ICD-10-CM tabular list");
    assert!(KB.interaction_rule_count() > 3000);
    assert!(
        KB.drugs().len() >= 60,
        "hand-written drugs: {}",
        KB.drugs().len()
    );
    assert!(KB.labs().len() >= 40);
    // Every hand-written dose names its source.
    for d in KB.drugs() {
        for dose in &d.doses {
            assert!(dose.source.len() > 10, "{} has no real source", d.name);
        }
    }
}

#[test]
fn version_changes_with_any_file_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in spar_data::kb::KB_FILES {
        std::fs::copy(KB.dir().join(f), dir.path().join(f)).unwrap();
    }
    let copy = KnowledgeBase::load(dir.path()).unwrap();
    assert_eq!(copy.version(), KB.version(), "same bytes, same version");
    let drugs = dir.path().join("drugs.toml");
    let mut text = std::fs::read_to_string(&drugs).unwrap();
    text.push_str("\n# edited\n");
    std::fs::write(&drugs, &text).unwrap();
    assert_ne!(
        KnowledgeBase::load(dir.path()).unwrap().version(),
        KB.version()
    );
    std::fs::write(
        &drugs,
        text.replace("condition = \"pregnancy\"", "condition = \"pregnancyy\""),
    )
    .unwrap();
    let err = KnowledgeBase::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("drugs.toml") && err.contains("pregnancyy"),
        "{err}"
    );
    std::fs::write(dir.path().join("labs.json"), "{").unwrap();
    let err = KnowledgeBase::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("labs.json"), "{err}");
    assert!(KnowledgeBase::load(&dir.path().join("missing")).is_err());
}

#[test]
fn icd10_hierarchy() {
    assert_eq!(
        KB.icd10_title("J18.9"),
        Some("Pneumonia, unspecified organism")
    );
    assert_eq!(
        KB.icd10_title("j189"),
        Some("Pneumonia, unspecified organism")
    );
    assert_eq!(KB.icd10_parent("J18.9"), Some("J18"));
    assert_eq!(KB.icd10_parent("J18"), Some("J09-J18"));
    assert_eq!(KB.icd10_chapter("J18.9"), Some("10"));
    assert_eq!(KB.icd10_chapter("E11.9"), Some("4"));
    assert_eq!(KB.icd10_chapter("I21.4"), KB.icd10_chapter("I10"));
    assert_ne!(KB.icd10_chapter("I10"), KB.icd10_chapter("J18.9"));
    assert_eq!(KB.icd10_ancestors("E11.9"), vec!["E11", "E08-E13", "4"]);
    assert_eq!(KB.icd10_canonical("e119"), Some("E11.9"));
    assert!(
        KB.is_valid_icd10("I10") && KB.is_valid_icd10("S72.001A") && KB.is_valid_icd10("E11.65")
    );
    assert!(
        !KB.is_valid_icd10("J18.99")
            && !KB.is_valid_icd10("Q99.99")
            && !KB.is_valid_icd10("10")
            && !KB.is_valid_icd10("")
    );
    assert_eq!(
        KB.fact("icd10:I10").unwrap().statement,
        "I10 is \"Essential (primary) hypertension\""
    );
}

#[test]
fn interaction_lookups() {
    let i = KB
        .interaction("warfarin", "aspirin")
        .expect("warfarin + aspirin is in the thesaurus");
    assert!(i.severity <= Severity::NotRecommended, "{:?}", i.severity);
    assert_eq!(
        KB.interaction("simvastatin", "clarithromycin")
            .unwrap()
            .severity,
        Severity::Contraindicated
    );
    assert!(KB.interaction("ibuprofen", "lithium").is_some());
    // Class names in English reach the thesaurus classes.
    assert!(KB.interaction("NSAIDs", "methotrexate").is_some());
    // The mapping is symmetric.
    assert_eq!(
        KB.interaction("aspirin", "warfarin").map(|i| i.severity),
        Some(i.severity)
    );
    assert!(KB.interaction("amoxicillin", "paracetamol").is_none());
    assert!(KB.interaction("not-a-drug", "warfarin").is_none());
    assert!(KB.fact(&i.fact_id).is_some(), "{}", i.fact_id);
}

#[test]
fn dose_claims_with_units() {
    check(&[
        (
            "Paracetamol 1 g every 6 hours is an appropriate adult dose.",
            S,
        ),
        ("The maximum daily dose of paracetamol is 4 g.", S),
        ("The maximum daily dose of acetaminophen is 4000 mg.", S),
        ("Paracetamol can be taken at 8 g per day.", R),
        ("Adults may take paracetamol 2 g four times a day.", R),
        ("Ibuprofen 400 mg three times daily is a usual dose.", S),
        ("Ibuprofen 4 g per day is safe.", R),
        ("Amoxicillin 500 mg three times a day for 5 days.", S),
        ("Amoxicillin 5 g three times a day.", R),
        ("Metformin 500 mg twice daily with meals.", S),
        ("Metformin 5000 mg daily.", R),
        ("Lisinopril 10 mg once daily for hypertension.", S),
        ("Levofloxacin 750 mg twice daily.", R),
        ("Amlodipine 50 mg once daily.", R),
        ("Amlodipine 5 mg once daily.", S),
        ("Colchicine 500 mcg twice daily.", S),
        ("Digoxin 125 micrograms once daily.", S),
        ("Digoxin 2 mg daily.", R),
        ("Sertraline 50 mg daily.", S),
        ("Citalopram 60 mg daily.", R),
        (
            "Methotrexate 15 mg once weekly for rheumatoid arthritis.",
            S,
        ),
        ("Methotrexate 10 mg daily for rheumatoid arthritis.", R),
        ("Ketorolac 30 mg IV every 6 hours.", S),
        ("Ketorolac 30 mg orally every 6 hours.", R),
        ("Epinephrine 0.5 mg IM for anaphylaxis.", S),
        ("Salbutamol 100 micrograms inhaled as needed.", S),
    ]);
}

#[test]
fn unit_and_number_traps() {
    // 5 mg vs 50 mg; mg vs g vs mcg.
    check(&[
        ("Amlodipine 5 mg daily.", S),
        ("Amlodipine 50 mg daily.", R),
        ("Colchicine 0.5 mg twice daily.", S),
        ("Colchicine 0.5 g twice daily.", R),
        ("Levothyroxine 100 mcg daily.", U),
        ("Tamsulosin 400 micrograms daily.", S),
        ("Tamsulosin 400 mg daily.", R),
        ("Paracetamol 1,000 mg every 6 hours.", S),
        // Each amount belongs to the drug it is written next to.
        ("Take 400 mg of ibuprofen and 1 g of paracetamol.", S),
        (
            "Take 400 mg of ibuprofen and 8 g of paracetamol per day.",
            R,
        ),
    ]);
    assert_ne!(
        label("Citalopram 20 mg daily."),
        label("Citalopram 200 mg daily.")
    );
}

#[test]
fn dose_negations_and_limits() {
    check(&[
        ("Do not exceed 4 g of paracetamol per day.", S),
        // Warning against an overdose is right.
        ("Patients should not take 8 g of paracetamol per day.", S),
        ("The maximum daily dose of ibuprofen is 10 g.", R),
        // A lower ceiling can be right for a narrower use (OTC ibuprofen 1200 mg): not decidable here.
        ("The maximum daily dose of ibuprofen is 1200 mg.", U),
        ("Ibuprofen 10 mg/kg every 8 hours.", U),
        ("Paracetamol 15 mg/kg for children.", U),
        ("Warfarin 5 mg daily.", U),
    ]);
}

#[test]
fn contraindication_claims_and_negation() {
    check(&[
        ("Lisinopril is contraindicated in pregnancy.", S),
        ("Lisinopril is not contraindicated in pregnancy.", R),
        ("Lisinopril is safe in pregnancy.", R),
        ("ACE inhibitors should not be used during pregnancy.", S),
        ("Isotretinoin is contraindicated in pregnant women.", S),
        ("Paracetamol is safe in pregnancy.", S),
        ("Paracetamol is contraindicated in pregnancy.", R),
        ("Ibuprofen is safe in pregnancy.", R),
        ("Ibuprofen is contraindicated in the third trimester.", S),
        (
            "Ibuprofen should be avoided in patients with peptic ulcer disease.",
            S,
        ),
        (
            "Metformin is contraindicated in severe renal impairment.",
            S,
        ),
        ("Metformin is safe in diabetic ketoacidosis.", R),
        ("Propranolol is contraindicated in asthma.", S),
        (
            "Sildenafil is contraindicated in patients taking nitrates.",
            S,
        ),
        ("Aspirin should not be given to children under 16.", S),
        ("Amoxicillin is contraindicated in penicillin allergy.", S),
        ("Amoxicillin is safe during pregnancy.", S),
        ("Warfarin is contraindicated in pregnancy.", S),
        ("Warfarin is not safe in pregnancy.", S),
        ("Codeine is contraindicated in breastfeeding mothers.", S),
        // No statement either way.
        ("Amlodipine is contraindicated in gout.", U),
        ("Sertraline is safe in epilepsy.", U),
    ]);
    assert_ne!(
        label("Lisinopril is contraindicated in pregnancy."),
        label("Lisinopril is not contraindicated in pregnancy.")
    );
    let v = KB.verify_claim("Lisinopril is contraindicated in pregnancy.");
    let src = v.source.unwrap();
    assert!(
        src.starts_with("drug:lisinopril:ci:pregnancy") && src.contains("FDA"),
        "{src}"
    );
    assert!(KB.fact("drug:lisinopril:ci:pregnancy").is_some());
}

#[test]
fn interaction_claims() {
    check(&[
        ("Warfarin interacts with aspirin.", S),
        ("Warfarin and aspirin can be taken together safely.", R),
        ("There is no interaction between warfarin and aspirin.", R),
        ("Simvastatin is contraindicated with clarithromycin.", S),
        ("Simvastatin does not interact with clarithromycin.", R),
        ("Ibuprofen interacts with lithium.", S),
        ("NSAIDs interact with methotrexate.", S),
        // About the pair, not about bleeding as a condition.
        (
            "Warfarin should not be combined with NSAIDs due to bleeding risk.",
            S,
        ),
        ("Sildenafil should not be combined with nitroglycerin.", S),
        // The thesaurus lists nothing: absence is not proof.
        ("Amoxicillin and paracetamol can be taken together.", U),
        // Foods and drinks the thesaurus pairs with drugs, under their English names.
        (
            "Grapefruit juice increases simvastatin levels and the risk of myopathy.",
            S,
        ),
        ("Grapefruit is safe to eat while taking simvastatin.", R),
        ("Alcohol should be avoided with metformin.", S),
        ("Ethanol and metformin can be combined safely.", R),
        ("Grapefruit juice interacts with amoxicillin.", U),
    ]);
}

#[test]
fn icd10_code_claims() {
    check(&[
        ("J18.9 is the ICD-10 code for pneumonia.", S),
        ("I10 is the ICD-10 code for essential hypertension.", S),
        (
            "E11.9 is the code for type 2 diabetes mellitus without complications.",
            S,
        ),
        ("J18.9 is the ICD-10 code for asthma.", R),
        ("J18.9 is not the ICD-10 code for pneumonia.", R),
        ("I10 is the code for type 2 diabetes.", R),
        ("K99.9 is the ICD-10 code for pneumonia.", R),
        // The category exists, the code does not: possibly a WHO ICD-10 code, so not decidable.
        ("Q99.99 is the ICD-10 code for pneumonia.", U),
        ("J45.909 is the code for asthma.", S),
        // The tabular list's inclusion terms name the code too ("Lung cancer NOS", "Chronic fatigue syndrome"),
        // and a slash in a title ("Myalgic encephalomyelitis/chronic fatigue syndrome") separates words.
        ("C34.90 is the ICD-10 code for lung cancer.", S),
        ("G93.32 is the ICD-10 code for chronic fatigue syndrome.", S),
        ("R55 is the ICD-10 code for vasovagal syncope.", S),
        // Another code refutes only when its title holds the claim's words in order: F40.02 is "Agoraphobia
        // without panic disorder", not "panic disorder without agoraphobia" (which is F41.0, whose title lacks
        // the words).
        (
            "F41.0 is the ICD-10 code for panic disorder without agoraphobia.",
            U,
        ),
        (
            "F41.0 is the ICD-10 code for agoraphobia without panic disorder.",
            R,
        ),
        // A category by the name of its unspecified code (F32.9 "Major depressive disorder, single episode,
        // unspecified"); not a name the unspecified code lacks words of.
        ("F32 is major depressive disorder, single episode.", S),
        ("F32 is major depressive disorder, recurrent.", R),
        ("F32 is not major depressive disorder, single episode.", R),
    ]);
}

#[test]
fn lab_reference_range_claims() {
    check(&[
        ("Normal potassium is 3.5-5.0 mmol/L.", S),
        ("Normal serum potassium is 3.5 to 5.1 mEq/L.", S),
        ("Normal potassium is 5.5-7.0 mmol/L.", R),
        ("Normal sodium is 135-145 mmol/L.", S),
        ("The normal range for sodium is 120-130 mmol/L.", R),
        ("A potassium of 6.5 mmol/L is high.", S),
        ("A potassium of 6.5 mmol/L is normal.", R),
        ("A potassium of 4.2 mmol/L is normal.", S),
        ("A potassium of 4.2 mmol/L is not normal.", R),
        ("Normal fasting glucose is 3.9-5.5 mmol/L.", S),
        ("Normal fasting glucose is below 100 mg/dL.", S),
        ("Normal hemoglobin in women is 12.0-15.5 g/dL.", S),
        ("Normal hemoglobin in men is 8-10 g/dL.", R),
        ("Normal TSH is 0.4-4.5 mIU/L.", S),
        ("Normal heart rate is 60-100 bpm.", S),
        (
            "Normal adult resting heart rate is between 60 and 100 beats per minute.",
            S,
        ),
        // A unit the table cannot convert is not guessed.
        ("Normal potassium is 3.5-5.0 mg/dL.", U),
    ]);
}

#[test]
fn one_category_blocks_do_not_loop() {
    // B10, B20, C50 ... are blocks of one category; they hang from their chapter.
    assert_eq!(KB.icd10_ancestors("B10.01"), vec!["B10.0", "B10", "1"]);
    assert_eq!(KB.icd10_chapter("C50.911"), Some("2"));
    check(&[("B20 is human immunodeficiency virus [HIV] disease.", S)]);
}

#[test]
fn icd10_chapter_claims() {
    check(&[
        (
            "Codes starting with J belong to the chapter on diseases of the respiratory system.",
            S,
        ),
        (
            "Codes starting with J belong to the chapter on diseases of the circulatory system.",
            R,
        ),
        (
            "I10 falls in Chapter 9, diseases of the circulatory system.",
            S,
        ),
        ("I10 falls in Chapter 4.", R),
        ("Chapter 2 of ICD-10 covers neoplasms.", S),
        ("Chapter 2 of ICD-10 covers diseases of the skin.", R),
        ("O codes cover diseases of the eye.", R),
        ("Pneumonia codes are found in Chapter 10.", S),
        (
            "E11.9 is not in the chapter of endocrine, nutritional and metabolic diseases.",
            R,
        ),
        ("K35 is acute appendicitis.", S),
        ("E10 is the code for type 2 diabetes mellitus.", R),
    ]);
}

#[test]
fn antidote_claims() {
    check(&[
        ("Naloxone is the antidote for opioid overdose.", S),
        ("Flumazenil is the antidote for opioid overdose.", R),
        ("Vitamin K reverses the effect of warfarin.", S),
        ("Protamine reverses warfarin.", R),
        ("Naloxone does not reverse benzodiazepine overdose.", S),
        ("Glucagon is used for beta-blocker overdose.", S),
        // Not about treating a poisoning: an interaction.
        ("Vitamin K antagonists interact with aspirin.", S),
        // An agent the table does not know.
        ("Honey is the antidote for paracetamol poisoning.", U),
    ]);
    let listed = KB.antidotes_for("acetaminophen").unwrap();
    assert!(
        listed
            .iter()
            .any(|(a, src)| *a == "acetylcysteine" && src.contains("WHO"))
    );
    assert_eq!(
        KB.fact("antidote:opioids:naloxone").unwrap().source,
        "WHO EML 2023 4.2; BNF naloxone hydrochloride"
    );
}

#[test]
fn age_and_class_level_claims() {
    check(&[
        ("Aspirin is safe for children with a fever.", R),
        ("Aspirin should be avoided in children under 16.", S),
        ("Codeine is safe for children under 12.", R),
        ("Loperamide is safe in children under 2.", R),
        ("Metoclopramide is first-line for vomiting in infants.", R),
        ("Tetracyclines are safe in young children.", R),
        // Beers "avoid" in older adults: supports "avoid", refutes "safe", does not make a contraindication.
        ("Diphenhydramine should be avoided in older adults.", S),
        ("Zolpidem is safe for elderly patients.", R),
        ("Amitriptyline is contraindicated in the elderly.", U),
        // Over an age is not under it.
        ("Ibuprofen can be given to children over 3 months old.", U),
        // Class level, effects of the pair, direction of a level change.
        (
            "Potassium-sparing diuretics combined with ACE inhibitors can cause hyperkalemia.",
            S,
        ),
        (
            "Combining an ACE inhibitor with an ARB carries no additional risk.",
            R,
        ),
        (
            "Macrolides such as erythromycin increase the risk of colchicine toxicity.",
            S,
        ),
        ("Amiodarone increases digoxin levels.", S),
        ("Digoxin increases amiodarone levels.", R),
        ("Amiodarone has no effect on digoxin levels.", R),
    ]);
}

#[test]
fn undecidable_claims_are_uncertain() {
    check(&[
        ("Pneumonia is a lung infection.", U),
        ("Smoking cessation reduces cardiovascular risk.", U),
        ("", U),
        ("Vitamin B12 deficiency causes anaemia.", U),
    ]);
}

#[test]
fn odd_input_never_panics() {
    let long = "paracetamol 1 g ".repeat(200);
    for claim in [
        "对乙酰氨基酚 paracetamol 1 g 每天四次，最大剂量每日4 g，患者说明书说明书说明书说明书",
        "paracetamol 1 g — ñandú été 😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀 per day",
        "ibuprofen 99999999999999999999999 mg",
        "ibuprofen 0 mg",
        "normal potassium is 3.5-",
        "J18. is the code",
        ".......",
        long.as_str(),
    ] {
        let v = KB.verify_claim(claim);
        assert!(!v.evidence.is_empty(), "{claim:?}");
    }
}
