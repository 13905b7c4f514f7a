//! AgentClinic's case files (github.com/SamuelSchmidgall/AgentClinic, MIT licence), one JSON object per line,
//! in either of its two layouts:
//!
//! - OSCE (`agentclinic_medqa.jsonl`, `..._extended`): `OSCE_Examination` with `Objective_for_Doctor`,
//!   `Patient_Actor` (`Demographics`, `History`, `Symptoms.Primary_Symptom`, `Symptoms.Secondary_Symptoms`,
//!   `Past_Medical_History`, `Social_History`, `Review_of_Systems`), `Physical_Examination_Findings` (nested
//!   objects of findings), `Test_Results` (nested objects of results) and `Correct_Diagnosis`;
//! - NEJM image challenge (`agentclinic_nejm.jsonl`, `..._extended`): `question` (the vignette), `patient_info`
//!   (the patient actor's brief), `physical_exams` (the test results, as text) and `answers`
//!   (`[{text, correct}]`, one correct).
//!
//! Mapped to spar's case: the demographics phrase read for age and sex; the primary symptom (OSCE) or the
//! vignette's presentation (NEJM) as the chief complaint; history, each secondary symptom, past medical and
//! social history and the review of systems as inquiry items with the patient's answers; examination findings
//! flattened to "Vital signs / Blood pressure: 125/80 mmHg"; each leaf object of `Test_Results` (or each
//! "name: result" of `physical_exams`) an essential test with its result; the diagnosis (and NEJM's wrong
//! answers, as the differential) coded through the knowledge base's ICD-10-CM tree; the department from the
//! code's chapter; a rubric derived from these (`map::rubric`).
use super::map::{self, Unmapped};
use crate::kb::KnowledgeBase;
use serde_json::Value;
use spar_core::Case;
use spar_core::case::{Demographics, Diagnosis, InquiryItem, TestItem, Tests};
use std::collections::HashSet;

/// Maps one row; Err names the field (its path in the row) that could not be mapped.
pub fn map_row(row: &Value, id: &str, kb: &KnowledgeBase) -> Result<Case, Unmapped> {
    if row.get("OSCE_Examination").is_some() {
        osce(row, id, kb)
    } else if row.get("question").is_some() || row.get("answers").is_some() {
        nejm(row, id, kb)
    } else {
        Err((
            "OSCE_Examination".into(),
            "missing (neither AgentClinic's OSCE layout nor its NEJM layout with `question` and `answers`)"
                .into(),
        ))
    }
}

/// The string at `path` (dotted, under `root`), or the error naming it.
fn text<'a>(root: &'a Value, path: &str) -> Result<&'a str, Unmapped> {
    let mut v = root;
    for key in path.split('.') {
        v = v
            .get(key)
            .ok_or_else(|| (path.to_string(), "missing".to_string()))?;
    }
    v.as_str()
        .ok_or_else(|| (path.to_string(), format!("must be a string, got {v}")))
}

/// An optional string at `path`: absent or null is empty; another type is an error naming it.
fn opt_text<'a>(root: &'a Value, path: &str) -> Result<&'a str, Unmapped> {
    match text(root, path) {
        Ok(s) => Ok(s),
        Err((_, m)) if m == "missing" => Ok(""),
        Err(e) => {
            let mut v = root;
            for key in path.split('.') {
                v = &v[key];
            }
            if v.is_null() { Ok("") } else { Err(e) }
        }
    }
}

/// "Not provided" and the like carry nothing a patient could answer with.
fn informative(s: &str) -> bool {
    let l = s.trim().to_lowercase();
    !(l.is_empty()
        || l.starts_with("information not provided")
        || l.starts_with("not provided")
        || l.starts_with("no additional")
        || l == "n/a"
        || l == "none")
}

fn label(key: &str) -> String {
    key.replace('_', " ")
}

/// Every string leaf under `v` as "Outer / Inner: value".
fn flatten(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    label(k)
                } else {
                    format!("{prefix} / {}", label(k))
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| flatten(prefix, x, out)),
        Value::String(s) if !s.trim().is_empty() => out.push(if prefix.is_empty() {
            s.trim().to_string()
        } else {
            format!("{prefix}: {}", s.trim())
        }),
        Value::Number(n) => out.push(format!("{prefix}: {n}")),
        _ => {}
    }
}

/// The tests of `Test_Results`: an object whose values are all strings is one test (named by its key, its
/// leaves the result, its container keys aliases); a string under a key is a test of that name.
fn tests_of<'a>(name: &'a str, parents: &[&'a str], v: &'a Value, out: &mut Vec<TestItem>) {
    match v {
        Value::String(s) => out.push(map::test_item(name, parents, s)),
        Value::Object(m) if m.values().all(|x| x.is_string()) => {
            let mut result = Vec::new();
            flatten("", v, &mut result);
            // A single "Findings" leaf reads better without its label.
            let result = match m.len() {
                1 if m.contains_key("Findings") => m["Findings"].as_str().unwrap_or("").to_string(),
                _ => result.join("; "),
            };
            let mut aliases: Vec<&str> = parents.to_vec();
            aliases.extend(m.keys().map(|k| k.as_str()).filter(|k| *k != "Findings"));
            out.push(map::test_item(name, &aliases, &result));
        }
        Value::Object(m) => {
            let mut p = parents.to_vec();
            if !name.is_empty() {
                p.push(name);
            }
            for (k, x) in m {
                tests_of(k, &p, x, out);
            }
        }
        _ => {}
    }
}

fn osce(row: &Value, id: &str, kb: &KnowledgeBase) -> Result<Case, Unmapped> {
    let osce = &row["OSCE_Examination"];
    let at = |p: &str| format!("OSCE_Examination.{p}");
    let field = |e: Unmapped| (at(&e.0), e.1);
    let demo = text(osce, "Patient_Actor.Demographics").map_err(field)?;
    let (age, sex) = map::demographics(demo).map_err(|m| (at("Patient_Actor.Demographics"), m))?;
    let primary = text(osce, "Patient_Actor.Symptoms.Primary_Symptom").map_err(field)?;
    let history = text(osce, "Patient_Actor.History").map_err(field)?;
    let dx_name = text(osce, "Correct_Diagnosis").map_err(field)?;
    let diagnosis = map::code_diagnosis(kb, dx_name).ok_or_else(|| {
        (
            at("Correct_Diagnosis"),
            format!("no ICD-10-CM title in the knowledge base matches {dx_name:?}"),
        )
    })?;
    let secondary: Vec<&str> = match &osce["Patient_Actor"]["Symptoms"]["Secondary_Symptoms"] {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().ok_or_else(|| {
                    (
                        at(&format!("Patient_Actor.Symptoms.Secondary_Symptoms[{i}]")),
                        "must be a string".to_string(),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        v => {
            return Err((
                at("Patient_Actor.Symptoms.Secondary_Symptoms"),
                format!("must be a list of strings, got {v}"),
            ));
        }
    };
    let pmh = opt_text(osce, "Patient_Actor.Past_Medical_History").map_err(field)?;
    let social = opt_text(osce, "Patient_Actor.Social_History").map_err(field)?;
    let ros = opt_text(osce, "Patient_Actor.Review_of_Systems").map_err(field)?;

    let mut taken = HashSet::new();
    let mut items: Vec<InquiryItem> = Vec::new();
    items.extend(map::inquiry_item(
        &mut taken,
        "onset and course",
        &["when", "start", "began", "how long", "since"],
        history,
        3.0,
    ));
    for s in &secondary {
        items.extend(map::inquiry_item(&mut taken, s, &[], &format!("{s}."), 2.0));
    }
    if informative(pmh) {
        items.extend(map::inquiry_item(
            &mut taken,
            "past medical history",
            &["medical history", "illness", "conditions", "health problem"],
            pmh,
            1.0,
        ));
    }
    if informative(social) {
        items.extend(map::inquiry_item(
            &mut taken,
            "social history",
            &["smok", "alcohol", "drink", "work", "job"],
            social,
            1.0,
        ));
    }
    if informative(ros) {
        items.extend(map::inquiry_item(
            &mut taken,
            "other symptoms",
            &["other symptom", "anything else", "any other"],
            ros,
            1.0,
        ));
    }
    let mut exam = Vec::new();
    flatten("", &osce["Physical_Examination_Findings"], &mut exam);
    let mut tests = Vec::new();
    match &osce["Test_Results"] {
        v @ Value::Object(_) => tests_of("", &[], v, &mut tests),
        Value::Null => {}
        v => {
            return Err((
                at("Test_Results"),
                format!("must be an object of test results, got {v}"),
            ));
        }
    }
    if tests.is_empty() {
        return Err((at("Test_Results"), "holds no test with a result".into()));
    }
    let case = Case {
        id: id.to_string(),
        department: map::department(&diagnosis.icd10).into(),
        demographics: Demographics { age, sex },
        chief_complaint: primary.trim().to_string(),
        hpi: history.trim().to_string(),
        past_history: [pmh]
            .into_iter()
            .filter(|s| informative(s))
            .map(String::from)
            .collect(),
        medications: Vec::new(),
        allergies: Vec::new(),
        family_history: Vec::new(),
        social_history: [social]
            .into_iter()
            .filter(|s| informative(s))
            .map(String::from)
            .collect(),
        exam_findings: exam,
        rubric: map::rubric(&diagnosis, &tests, &items),
        inquiry_items: items,
        red_flags: Vec::new(),
        diagnosis,
        differential: Vec::new(),
        tests: Tests {
            essential: tests,
            optional: Vec::new(),
        },
        source: "agentclinic:osce (MIT licence)".into(),
    };
    map::checked(case)
}

/// The presenting problem of a NEJM vignette: what follows "with" in its first sentence ("... presented to the
/// clinic with a 1-year history of skin darkening on her face."), else that sentence.
fn presentation(question: &str) -> String {
    let first = question
        .split(". ")
        .next()
        .unwrap_or(question)
        .trim_end_matches('.');
    match first.split_once(" with ") {
        Some((_, rest)) => rest
            .trim_start_matches("a ")
            .trim_start_matches("an ")
            .to_string(),
        None => first.to_string(),
    }
}

/// "name: result" items of a NEJM `physical_exams` text ("1. Dermoscopy findings: ... 2. Skin biopsy results:
/// ..." or "- CT scan of the neck: ...").
fn nejm_tests(text: &str) -> Vec<TestItem> {
    let mut out = Vec::new();
    let mut cleaned = text.to_string();
    for n in 1..=20 {
        cleaned = cleaned.replace(&format!(" {n}. "), " - ");
    }
    for part in cleaned.split(" - ") {
        let part = part
            .trim()
            .trim_start_matches("- ")
            .trim_start_matches("1. ");
        if let Some((name, result)) = part.split_once(": ") {
            // "The information extracted ... includes: 1. X: Y": the name is the text after the last colon-less
            // lead-in sentence.
            let name = name.rsplit(". ").next().unwrap_or(name).trim();
            if !name.is_empty() && name.len() <= 80 && !result.trim().is_empty() {
                out.push(map::test_item(name, &[], result));
            }
        }
    }
    out
}

/// The history part of a NEJM vignette: its sentences before the examination, the tests and the question (the
/// patient tells the history; the rest is for the doctor to find).
fn history_part(question: &str) -> String {
    const FOUND: [&str; 9] = [
        "examination",
        "biopsy",
        "showed",
        "revealed",
        "laboratory",
        "imaging",
        "ct ",
        "radiograph",
        "?",
    ];
    let mut out = Vec::new();
    for sentence in question.split_inclusive(". ") {
        let l = sentence.to_lowercase();
        if !out.is_empty() && FOUND.iter().any(|w| l.contains(w)) {
            break;
        }
        out.push(sentence.trim());
    }
    out.join(" ")
}

fn nejm(row: &Value, id: &str, kb: &KnowledgeBase) -> Result<Case, Unmapped> {
    let question = text(row, "question")?;
    let info = text(row, "patient_info")?;
    let exams = text(row, "physical_exams")?;
    let answers = row["answers"].as_array().ok_or_else(|| {
        (
            "answers".to_string(),
            "must be a list of {text, correct}".to_string(),
        )
    })?;
    let mut correct = Vec::new();
    let mut others = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let t = a["text"]
            .as_str()
            .ok_or_else(|| (format!("answers[{i}].text"), "must be a string".to_string()))?;
        match a["correct"].as_bool() {
            Some(true) => correct.push(t),
            Some(false) => others.push(t),
            None => {
                return Err((
                    format!("answers[{i}].correct"),
                    "must be true or false".into(),
                ));
            }
        }
    }
    let &[dx_name] = correct.as_slice() else {
        return Err((
            "answers".into(),
            format!("needs exactly one correct answer, has {}", correct.len()),
        ));
    };
    let diagnosis = map::code_diagnosis(kb, dx_name).ok_or_else(|| {
        (
            "answers".to_string(),
            format!(
                "no ICD-10-CM title in the knowledge base matches the correct answer {dx_name:?}"
            ),
        )
    })?;
    let (age, sex) = map::demographics(question).map_err(|m| ("question".to_string(), m))?;
    let differential: Vec<Diagnosis> = others
        .iter()
        .filter_map(|o| map::code_diagnosis(kb, o))
        .filter(|d| d.icd10 != diagnosis.icd10)
        .collect();
    let complaint = presentation(question);
    let mut taken = HashSet::new();
    let mut items: Vec<InquiryItem> = Vec::new();
    items.extend(map::inquiry_item(
        &mut taken,
        &complaint,
        &["when", "start", "how long", "symptom"],
        info,
        3.0,
    ));
    let tests = nejm_tests(exams);
    if tests.is_empty() {
        return Err((
            "physical_exams".into(),
            "holds no \"test: result\" item".into(),
        ));
    }
    let case = Case {
        id: id.to_string(),
        department: map::department(&diagnosis.icd10).into(),
        demographics: Demographics { age, sex },
        chief_complaint: complaint,
        hpi: history_part(question),
        past_history: Vec::new(),
        medications: Vec::new(),
        allergies: Vec::new(),
        family_history: Vec::new(),
        social_history: Vec::new(),
        exam_findings: Vec::new(),
        rubric: map::rubric(&diagnosis, &tests, &items),
        inquiry_items: items,
        red_flags: Vec::new(),
        diagnosis,
        differential,
        tests: Tests {
            essential: tests,
            optional: Vec::new(),
        },
        source: "agentclinic:nejm (MIT licence)".into(),
    };
    map::checked(case)
}
