//! The synthetic case generator: the disease table ([`table`]) times seeded variation of the patient (age, sex,
//! duration, comorbidities and their medicines, allergies, social and family history). No real patient data:
//! cases carry no names or identifiers at all.
pub mod table;

use crate::splits::Splits;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spar_core::case::{
    Demographics, Diagnosis, InquiryItem, RedFlag, RubricItem, RuleCheck, Sex, TestItem, Tests,
};
use spar_core::{Case, Error, Result, Stage};
use std::path::Path;
pub use table::{Disease, diseases};

/// Version of the generator; part of every generated case's `source`.
pub const GENERATOR_VERSION: &str = "1";
/// Seed of the shipped cases in `data/cases/`.
pub const SHIPPED_SEED: u64 = 7;
/// Cases per diagnosis in the shipped set.
pub const SHIPPED_PER_DISEASE: usize = 10;
/// Fraction of each non-test diagnosis's cases that goes to validation.
pub const VALIDATION_FRACTION: f64 = 0.25;

/// Long-term conditions and the medicine a patient with each would plausibly take.
const COMORBIDITY_MEDS: &[(&str, &str)] = &[
    ("hypertension", "amlodipine 5 mg daily"),
    ("high cholesterol", "atorvastatin 20 mg at night"),
    ("type 2 diabetes", "metformin 500 mg twice daily"),
    ("hypothyroidism", "levothyroxine 75 micrograms daily"),
    ("asthma", "salbutamol inhaler as needed"),
    ("atrial fibrillation", "apixaban 5 mg twice daily"),
    ("gastro-oesophageal reflux", "omeprazole 20 mg daily"),
    ("depression", "sertraline 50 mg daily"),
    ("osteoarthritis", "paracetamol 1 g as needed"),
    ("heart failure", "furosemide 40 mg daily"),
    ("chronic kidney disease", "ramipril 2.5 mg daily"),
    ("COPD", "tiotropium inhaler daily"),
    ("migraine", "sumatriptan 50 mg as needed"),
    ("eczema", "emollient cream daily"),
    ("coronary artery disease", "aspirin 75 mg daily"),
];

/// Drug allergies: the allergen, what an adult patient says, what a parent says (`{them}` = him / her).
const ALLERGIES: &[(&str, &str, &str)] = &[
    (
        "penicillin",
        "I'm allergic to penicillin; it gives me a rash.",
        "Yes, penicillin gave {them} a rash.",
    ),
    (
        "sulfonamides",
        "Sulfa drugs give me hives.",
        "Yes, sulfa drugs gave {them} hives.",
    ),
    (
        "ibuprofen",
        "Ibuprofen makes my lips swell.",
        "Yes, ibuprofen made {them} swell up.",
    ),
    (
        "codeine",
        "Codeine makes me vomit badly.",
        "Yes, codeine made {them} vomit badly.",
    ),
];

const SMOKING: &[&str] = &[
    "never smoked",
    "ex-smoker, quit 10 years ago",
    "smokes 10 cigarettes a day",
];
const ALCOHOL: &[&str] = &[
    "drinks alcohol rarely",
    "drinks about 6 units of alcohol a week",
    "does not drink alcohol",
];
const WORK: &[&str] = &[
    "works as a teacher",
    "works in an office",
    "retired",
    "works in construction",
    "works as a nurse",
    "drives a delivery van",
];

/// The phrasing of the generator's own checklist items (not in the table).
const COMMON_QUESTIONS: &[(&str, &str)] = &[
    ("allergies", "Do you have any drug allergies?"),
    ("medications", "Which medicines do you take regularly?"),
    ("past_history", "Do you have any other medical conditions?"),
    ("social", "Do you smoke or drink alcohol?"),
    ("family", "Does any illness run in your family?"),
    ("vaccinations", "Are the vaccinations up to date?"),
    ("exposure", "Is anyone at home sick, or does anyone smoke?"),
];

/// The same, asked of a parent.
const CHILD_QUESTIONS: &[(&str, &str)] = &[
    ("allergies", "Does your child have any drug allergies?"),
    ("medications", "Does your child take any regular medicines?"),
];

/// The question the generator wrote for checklist item `item_id` of `case`, if the case came from the table.
pub fn question_for(case: &Case, item_id: &str) -> Option<String> {
    let disease = diseases().iter().find(|d| d.icd10 == case.diagnosis.icd10);
    let asked_of_parent = if disease.is_some_and(|d| d.child) {
        CHILD_QUESTIONS
    } else {
        &[]
    };
    if let Some((_, q)) = asked_of_parent
        .iter()
        .chain(COMMON_QUESTIONS)
        .find(|(id, _)| *id == item_id)
    {
        return Some(q.to_string());
    }
    let d = disease?;
    d.history.iter().chain(d.red_flags.iter()).find_map(|row| {
        let f: Vec<&str> = row.split('|').map(str::trim).collect();
        (f.len() == 5 && slug(f[0]) == item_id).then(|| f[1].to_string())
    })
}

/// `"Onset of pain"` -> `"onset_of_pain"`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// The patient variables one case draws.
struct Patient {
    age: u32,
    sex: Sex,
    dur: String,
    side: &'static str,
}

impl Patient {
    fn fill(&self, d: &Disease, s: &str) -> String {
        let child = d.child;
        let person = match (&self.sex, child) {
            (Sex::Female, false) => "woman",
            (Sex::Male, false) => "man",
            (Sex::Female, true) => "girl",
            (Sex::Male, true) => "boy",
        };
        let (kid, them) = if self.sex == Sex::Female {
            ("daughter", "her")
        } else {
            ("son", "him")
        };
        s.replace("{dur}", &self.dur)
            .replace("{age}", &self.age.to_string())
            .replace("{side}", self.side)
            .replace("{person}", person)
            .replace("{child}", kid)
            .replace("{them}", them)
    }
}

fn join_answer(items: &[String], none: &str, lead: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        format!("{lead}{}.", items.join(", "))
    }
}

/// Builds one case of disease `d`; `id` must be unique; everything random comes from `rng`.
pub fn case_from(
    d: &Disease,
    id: String,
    rng: &mut impl Rng,
    source: &str,
) -> std::result::Result<Case, String> {
    let sex = match d.sex.as_deref() {
        Some("female") => Sex::Female,
        Some("male") => Sex::Male,
        None => {
            if rng.random_bool(0.5) {
                Sex::Female
            } else {
                Sex::Male
            }
        }
        Some(other) => return Err(format!("{}: sex `{other}` is not female or male", d.key)),
    };
    let p = Patient {
        age: rng.random_range(d.age[0]..=d.age[1]),
        sex,
        dur: d
            .durations
            .choose(rng)
            .cloned()
            .ok_or_else(|| format!("{}: no durations", d.key))?,
        side: if rng.random_bool(0.5) {
            "left"
        } else {
            "right"
        },
    };
    let fill = |s: &str| p.fill(d, s);

    let past: Vec<String> = d
        .pmh
        .iter()
        .filter(|_| rng.random_bool(0.5))
        .cloned()
        .collect();
    let meds: Vec<String> = past
        .iter()
        .filter_map(|c| {
            COMORBIDITY_MEDS
                .iter()
                .find(|(k, _)| k == c)
                .map(|(_, m)| m.to_string())
        })
        .collect();
    let allergy = if rng.random_bool(0.35) {
        ALLERGIES.choose(rng).copied()
    } else {
        None
    };
    let family: Vec<String> = d
        .family
        .iter()
        .filter(|_| rng.random_bool(0.6))
        .map(|s| fill(s))
        .collect();
    let mut social: Vec<String> = d.social.iter().map(|s| fill(s)).collect();
    if !d.child {
        if !social.iter().any(|s| s.contains("smok")) {
            social.push(SMOKING.choose(rng).unwrap().to_string());
        }
        social.push(ALCOHOL.choose(rng).unwrap().to_string());
        if p.age >= 67 {
            social.push("retired".into());
        } else if p.age >= 18 {
            social.push(
                WORK.iter()
                    .filter(|w| **w != "retired")
                    .copied()
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .unwrap()
                    .to_string(),
            );
        }
    }

    let mut items = Vec::new();
    for row in &d.history {
        let f = table::fields(row, 5, "history")?;
        let (w, critical) = match f[4].strip_suffix('!') {
            Some(w) => (w, true),
            None => (f[4].as_str(), false),
        };
        let weight: f32 = w
            .parse()
            .map_err(|_| format!("{}: weight `{}` in `{row}` is not a number", d.key, f[4]))?;
        items.push(InquiryItem {
            id: slug(&f[0]),
            topic: f[0].clone(),
            keywords: table::keywords(&f[2]),
            answer: capitalize(&fill(&f[3])),
            weight,
            critical,
        });
    }
    let common = |id: &str, topic: &str, kw: &[&str], answer: String, weight: f32| InquiryItem {
        id: id.into(),
        topic: topic.into(),
        keywords: kw.iter().map(|s| s.to_string()).collect(),
        answer,
        weight,
        critical: false,
    };
    items.push(common(
        "allergies",
        "drug allergies",
        &["allerg"],
        allergy
            .map(|a| if d.child { fill(a.2) } else { a.1.to_string() })
            .unwrap_or_else(|| "No, no allergies that I know of.".into()),
        2.0,
    ));
    items.push(common(
        "medications",
        "regular medicines",
        &["medicine", "medication", "tablets", "pills"],
        join_answer(
            &meds,
            if d.child {
                "No regular medicines."
            } else {
                "I don't take any regular medicines."
            },
            "I take ",
        ),
        1.0,
    ));
    if !d.child {
        items.push(common(
            "past_history",
            "past medical history",
            &["medical condition", "health problem", "illnesses"],
            join_answer(&past, "No, I'm usually healthy.", "I have "),
            1.0,
        ));
        items.push(common(
            "social",
            "smoking and alcohol",
            &["smoke", "alcohol", "drink"],
            format!(
                "{}.",
                capitalize(
                    &social
                        .iter()
                        .map(|s| first_person(s))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            ),
            1.0,
        ));
    } else {
        items.push(common(
            "vaccinations",
            "immunisations",
            &["vaccin", "immuni"],
            "Yes, all the vaccinations are up to date.".into(),
            1.0,
        ));
        items.push(common(
            "exposure",
            "sick contacts and smoke exposure",
            &["sick", "smoke", "daycare"],
            "Some children at daycare have colds; nobody smokes at home.".into(),
            1.0,
        ));
    }
    if !d.family.is_empty() {
        items.push(common(
            "family",
            "family history",
            &["family", "relatives"],
            join_answer(
                &family.iter().map(|f| format!("my {f}")).collect::<Vec<_>>(),
                "Nothing runs in the family that I know of.",
                "Yes, ",
            ),
            1.0,
        ));
    }

    let mut red_flags = Vec::new();
    for row in &d.red_flags {
        let f = table::fields(row, 5, "red_flags")?;
        let present = match f[4].as_str() {
            "present" => true,
            "absent" => false,
            o => {
                return Err(format!(
                    "{}: red flag `{row}`: `{o}` is not present|absent",
                    d.key
                ));
            }
        };
        red_flags.push(RedFlag {
            id: slug(&f[0]),
            description: f[0].clone(),
            keywords: table::keywords(&f[2]),
            present,
            answer: capitalize(&fill(&f[3])),
            weight: 2.0,
        });
    }

    let dx = |row: &str| -> std::result::Result<Diagnosis, String> {
        let f = table::fields(row, 2, "differential")?;
        Ok(Diagnosis {
            name: f[0].clone(),
            icd10: f[1].clone(),
        })
    };
    let test = |row: &str| -> std::result::Result<TestItem, String> {
        let f = table::fields(row, 3, "test")?;
        Ok(TestItem {
            name: f[0].clone(),
            aliases: table::keywords(&f[1]),
            loinc: (!f[2].is_empty()).then(|| f[2].clone()),
            result: None,
        })
    };
    let essential = d
        .essential
        .iter()
        .map(|r| test(r))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let optional = d
        .optional
        .iter()
        .map(|r| test(r))
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let mut rubric = vec![
        rule_item(
            10,
            &format!(
                "Gives the correct final diagnosis: {} ({})",
                d.name, d.icd10
            ),
            vec![d.name.to_lowercase(), d.icd10.to_lowercase()],
            Some(Stage::Diag),
            "axis:accuracy",
        ),
        rule_item(
            5,
            &format!("Recommends {}", essential[0].name),
            std::iter::once(essential[0].name.to_lowercase())
                .chain(essential[0].aliases.iter().cloned())
                .collect(),
            Some(Stage::Lab),
            "axis:completeness",
        ),
        rule_item(
            3,
            "Asks about medicine allergies",
            vec!["allerg".into()],
            Some(Stage::Inquiry),
            "axis:completeness",
        ),
    ];
    for row in &d.rubric {
        let f = table::fields(row, 4, "rubric")?;
        let points: i32 = f[0]
            .parse()
            .map_err(|_| format!("{}: rubric points `{}` is not an integer", d.key, f[0]))?;
        let stage = if f[3].is_empty() {
            None
        } else {
            Some(
                Stage::parse(&f[3])
                    .ok_or_else(|| format!("{}: `{}` is not a stage", d.key, f[3]))?,
            )
        };
        let tag = if points < 0 {
            "axis:safety"
        } else {
            "axis:accuracy"
        };
        rubric.push(rule_item(points, &f[1], table::keywords(&f[2]), stage, tag));
    }

    Ok(Case {
        id,
        department: d.department.clone(),
        demographics: Demographics {
            age: p.age,
            sex: p.sex.clone(),
        },
        chief_complaint: fill(&d.complaint),
        hpi: capitalize(&fill(&d.hpi)),
        past_history: past,
        medications: meds,
        allergies: allergy.map(|a| vec![a.0.to_string()]).unwrap_or_default(),
        family_history: family,
        social_history: social,
        exam_findings: d.exam.iter().map(|s| fill(s)).collect(),
        inquiry_items: items,
        red_flags,
        diagnosis: Diagnosis {
            name: d.name.clone(),
            icd10: d.icd10.clone(),
        },
        differential: d
            .differential
            .iter()
            .map(|r| dx(r))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        tests: Tests {
            essential,
            optional,
        },
        rubric,
        source: source.to_string(),
    })
}

/// The patient's own words for a social-history entry ("smokes 10 a day" -> "I smoke 10 a day").
fn first_person(s: &str) -> String {
    const SUBJECT: &[(&str, &str)] = &[
        ("never smoked", "I've never smoked"),
        ("ex-smoker", "I'm an ex-smoker"),
        ("smokes", "I smoke"),
        ("smoked", "I smoked"),
        ("drinks", "I drink"),
        ("does not", "I don't"),
        ("works", "I work"),
        ("drives", "I drive"),
        ("retired", "I'm retired"),
    ];
    SUBJECT
        .iter()
        .find_map(|(third, first)| s.strip_prefix(third).map(|rest| format!("{first}{rest}")))
        .unwrap_or_else(|| s.to_string())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// A rubric item; without keywords it has no rule (only an LLM judge can score it).
fn rule_item(
    points: i32,
    criterion: &str,
    any: Vec<String>,
    stage: Option<Stage>,
    tag: &str,
) -> RubricItem {
    let rule = (!any.is_empty()).then_some(RuleCheck {
        any,
        all: vec![],
        regex: None,
        stage,
    });
    RubricItem {
        criterion: criterion.into(),
        points,
        tags: vec![tag.into()],
        rule,
    }
}

/// Generates `n` cases, cycling through the disease table (case i has disease `i % D`), each drawn from its own
/// RNG stream of `seed`, so a case does not change when `n` grows. Ids are `<disease key>-<seed>-<i>`.
pub fn generate(n: usize, seed: u64) -> Result<Vec<Case>> {
    let table = diseases();
    let source = format!(
        "spar-data generator v{GENERATOR_VERSION} (seed {seed}); ICD-10-CM codes checked against simple-icd-10-cm 1.5.0; synthetic, no real patient data"
    );
    (0..n)
        .map(|i| {
            let d = &table[i % table.len()];
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            case_from(d, format!("{}-{seed}-{:04}", d.key, i), &mut rng, &source)
                .map_err(|m| Error::invalid("data/src/generate/diseases.toml", m))
        })
        .collect()
}

/// The test split's diagnoses: the table's held-out diseases.
pub fn holdout_diagnoses() -> Vec<String> {
    diseases()
        .iter()
        .filter(|d| d.holdout)
        .map(|d| d.icd10.clone())
        .collect()
}

/// Generates `n` cases with `seed` into `dir`: `cases.jsonl` and `splits.json` (the held-out diseases form test).
pub fn write_dataset(dir: &Path, n: usize, seed: u64) -> Result<(Vec<Case>, Splits)> {
    let cases = generate(n, seed)?;
    let splits = Splits::build(&cases, &holdout_diagnoses(), VALIDATION_FRACTION, seed);
    crate::cases::write_cases_jsonl(&dir.join("cases.jsonl"), &cases)?;
    splits.save(&dir.join("splits.json"))?;
    Ok((cases, splits))
}
