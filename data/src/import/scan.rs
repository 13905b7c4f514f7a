//! SCAN-bench-style structured consultation cases (a JSON array of objects, or JSONL), the layout of
//! history-checklist benchmarks: who the patient is, a history checklist whose items carry a level, the
//! examination findings, tests with results, the reference top-3 differential and the final diagnosis.
//!
//! ```json
//! {"id": "scan-001", "age": 58, "sex": "male", "chief_complaint": "chest pain for 2 hours",
//!  "history": "Pressure in the chest since this morning ...",
//!  "history_checklist": [{"item": "radiation of the pain", "answer": "It goes to my left arm.",
//!                         "level": "critical", "keywords": ["radiat", "arm"]}],
//!  "exam": ["BP 150/90 mmHg", "sweaty"],
//!  "tests": [{"name": "ECG", "result": "ST depression V4-V6", "essential": true, "aliases": ["ekg"]}],
//!  "differential_top3": ["Unstable angina", {"name": "Aortic dissection", "icd10": "I71.00"}, "Pericarditis"],
//!  "final_diagnosis": {"name": "NSTEMI", "icd10": "I21.4"}}
//! ```
//! `level` is `critical` (weight 3, critical), `important` (2) or `routine` (1); `keywords` are optional (else
//! taken from the item's words); a diagnosis is a name (coded through the knowledge base) or `{name, icd10}`
//! (the code checked against it); `department`, `essential` (default true) and `aliases` are optional.
use super::map::{self, Unmapped};
use crate::kb::KnowledgeBase;
use serde_json::Value;
use spar_core::Case;
use spar_core::case::{Demographics, Diagnosis, InquiryItem, Sex, Tests};
use std::collections::HashSet;

fn str_at<'a>(v: &'a Value, field: &str) -> Result<&'a str, Unmapped> {
    match &v[field] {
        Value::String(s) if !s.trim().is_empty() => Ok(s),
        Value::Null => Err((field.to_string(), "missing".into())),
        other => Err((
            field.to_string(),
            format!("must be a non-empty string, got {other}"),
        )),
    }
}

/// A diagnosis given as a name or `{name, icd10}`.
fn diagnosis(v: &Value, field: &str, kb: &KnowledgeBase) -> Result<Diagnosis, Unmapped> {
    let (name, code) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(_) => (
            str_at(v, "name").map_err(|(f, m)| (format!("{field}.{f}"), m))?,
            v["icd10"].as_str(),
        ),
        Value::Null => return Err((field.to_string(), "missing".into())),
        other => {
            return Err((
                field.to_string(),
                format!("must be a name or {{name, icd10}}, got {other}"),
            ));
        }
    };
    match code {
        Some(c) => match kb.icd10_canonical(c) {
            Some(canon) => Ok(Diagnosis {
                name: name.trim().to_string(),
                icd10: canon.to_string(),
            }),
            None => Err((
                format!("{field}.icd10"),
                format!("{c:?} is not an ICD-10-CM code of the knowledge base"),
            )),
        },
        None => map::code_diagnosis(kb, name).ok_or_else(|| {
            (
                field.to_string(),
                format!("no ICD-10-CM title in the knowledge base matches {name:?}; give {{name, icd10}}"),
            )
        }),
    }
}

/// Maps one case object; Err names the field that could not be mapped.
pub fn map_row(row: &Value, id: &str, kb: &KnowledgeBase) -> Result<Case, Unmapped> {
    if !row.is_object() {
        return Err(("(row)".into(), format!("must be an object, got {row}")));
    }
    let id = row["id"].as_str().unwrap_or(id).to_string();
    let age = row["age"].as_u64().filter(|a| *a <= 120).ok_or_else(|| {
        (
            "age".to_string(),
            format!("must be a whole number of years <= 120, got {}", row["age"]),
        )
    })?;
    let sex = match row["sex"].as_str().map(|s| s.to_lowercase()).as_deref() {
        Some("female" | "f" | "woman") => Sex::Female,
        Some("male" | "m" | "man") => Sex::Male,
        _ => {
            return Err((
                "sex".into(),
                format!("must be female or male, got {}", row["sex"]),
            ));
        }
    };
    let complaint = str_at(row, "chief_complaint")?;
    let history = row["history"].as_str().unwrap_or("");
    let final_dx = diagnosis(&row["final_diagnosis"], "final_diagnosis", kb)?;
    let ddx_list = match &row["differential_top3"] {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        other => {
            return Err((
                "differential_top3".into(),
                format!("must be a list, got {other}"),
            ));
        }
    };
    if ddx_list.len() > 3 {
        return Err((
            "differential_top3".into(),
            format!("holds {} diagnoses, at most 3", ddx_list.len()),
        ));
    }
    let mut differential = Vec::new();
    for (i, d) in ddx_list.iter().enumerate() {
        let d = diagnosis(d, &format!("differential_top3[{i}]"), kb)?;
        if d.icd10 != final_dx.icd10 {
            differential.push(d);
        }
    }
    let checklist = row["history_checklist"].as_array().ok_or_else(|| {
        (
            "history_checklist".to_string(),
            "must be a list of {item, answer, level}".to_string(),
        )
    })?;
    let mut taken = HashSet::new();
    let mut items: Vec<InquiryItem> = Vec::new();
    for (i, it) in checklist.iter().enumerate() {
        let at = |f: &str| format!("history_checklist[{i}].{f}");
        let topic = str_at(it, "item").map_err(|e| (at(&e.0), e.1))?;
        let answer = str_at(it, "answer").map_err(|e| (at(&e.0), e.1))?;
        let weight = match it["level"].as_str() {
            Some("critical") => 3.0,
            Some("important") => 2.0,
            Some("routine") | None => 1.0,
            Some(other) => {
                return Err((
                    at("level"),
                    format!("{other:?} is not critical, important or routine"),
                ));
            }
        };
        let given: Vec<&str> = match &it["keywords"] {
            Value::Array(k) => k.iter().filter_map(|x| x.as_str()).collect(),
            Value::Null => Vec::new(),
            other => {
                return Err((
                    at("keywords"),
                    format!("must be a list of strings, got {other}"),
                ));
            }
        };
        let lower: Vec<String> = given.iter().map(|k| k.to_lowercase()).collect();
        let refs: Vec<&str> = lower.iter().map(|s| s.as_str()).collect();
        let item =
            map::inquiry_item(&mut taken, topic, &refs, answer, weight).ok_or_else(|| {
                (
                    at("item"),
                    "gives no word a question could be matched by; add keywords".to_string(),
                )
            })?;
        items.push(item);
    }
    let exam: Vec<String> = match &row["exam"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .map(String::from)
            .collect(),
        Value::Null => Vec::new(),
        other => {
            return Err((
                "exam".into(),
                format!("must be a list of findings, got {other}"),
            ));
        }
    };
    let mut tests = Tests {
        essential: Vec::new(),
        optional: Vec::new(),
    };
    for (i, t) in row["tests"].as_array().into_iter().flatten().enumerate() {
        let name = str_at(t, "name").map_err(|e| (format!("tests[{i}].{}", e.0), e.1))?;
        let aliases: Vec<&str> = t["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let item = map::test_item(name, &aliases, t["result"].as_str().unwrap_or(""));
        match t["essential"].as_bool().unwrap_or(true) {
            true => tests.essential.push(item),
            false => tests.optional.push(item),
        }
    }
    let department = match row["department"].as_str() {
        Some(d) if !d.trim().is_empty() => d.trim().to_lowercase(),
        _ => map::department(&final_dx.icd10).to_string(),
    };
    let case = Case {
        id,
        department,
        demographics: Demographics {
            age: age as u32,
            sex,
        },
        chief_complaint: complaint.trim().to_string(),
        hpi: history.trim().to_string(),
        past_history: Vec::new(),
        medications: Vec::new(),
        allergies: Vec::new(),
        family_history: Vec::new(),
        social_history: Vec::new(),
        exam_findings: exam,
        rubric: map::rubric(&final_dx, &tests.essential, &items),
        inquiry_items: items,
        red_flags: Vec::new(),
        diagnosis: final_dx,
        differential,
        tests,
        source: "scan-style import".into(),
    };
    map::checked(case)
}
