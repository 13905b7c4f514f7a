//! Redaction on ingest (`[data] redact_on_ingest`, default on): the free text of imported cases and RL prompts
//! goes through `spar_core::phi` before anything else sees it, so no patient identifier reaches a model, a
//! tokenizer, a reward cache or a run folder. See `docs/privacy.md`.
//!
//! Which fields: everything a patient could be identified by, i.e. every piece of prose (chief complaint, history
//! of present illness, the history lists, examination findings, the patient's answers, red-flag descriptions,
//! rubric criteria, test results). Fields that are codes or matchers stay as they are on purpose: ids, department, keywords,
//! diagnosis names and ICD-10 codes, test names and LOINC codes, and rubric rules (a rule's phrases are matched
//! against the doctor's text; redacting them would silently change what scores). A case whose id or keyword holds
//! an identifier is a data error the redactor cannot fix without changing the case's meaning.
use crate::verl::RlPrompt;
use serde_json::Value;
use spar_core::Case;
use spar_core::phi::redact;

/// Redacts the free text of `case` in place.
pub fn redact_case(case: &mut Case) {
    let one = |s: &mut String| *s = redact(s);
    let all = |v: &mut Vec<String>| v.iter_mut().for_each(one);
    one(&mut case.chief_complaint);
    one(&mut case.hpi);
    all(&mut case.past_history);
    all(&mut case.medications);
    all(&mut case.allergies);
    all(&mut case.family_history);
    all(&mut case.social_history);
    all(&mut case.exam_findings);
    for it in &mut case.inquiry_items {
        one(&mut it.answer);
    }
    for rf in &mut case.red_flags {
        one(&mut rf.description);
        one(&mut rf.answer);
    }
    for r in &mut case.rubric {
        one(&mut r.criterion);
    }
    for t in case
        .tests
        .essential
        .iter_mut()
        .chain(&mut case.tests.optional)
    {
        if let Some(r) = &mut t.result {
            one(r);
        }
    }
}

/// Redacts every case of `cases` in place.
pub fn redact_cases(cases: &mut [Case]) {
    cases.iter_mut().for_each(redact_case);
}

/// Redacts an RL prompt record in place: every message, and every string inside the reference answer and
/// `extra_info` (a verl row's free-form fields can hold anything).
pub fn redact_prompt(p: &mut RlPrompt) {
    for m in &mut p.prompt {
        m.content = redact(&m.content);
    }
    redact_json(&mut p.ground_truth);
    redact_json(&mut p.extra_info);
}

/// Redacts every string of a JSON value (object keys are field names and stay).
pub fn redact_json(v: &mut Value) {
    match v {
        Value::String(s) => *s = redact(s),
        Value::Array(a) => a.iter_mut().for_each(redact_json),
        Value::Object(o) => o.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prose field loses its identifiers; codes, keywords and rules stay untouched.
    #[test]
    fn prose_is_redacted_codes_are_kept() {
        let mut c = crate::generate::generate(1, 7).unwrap().remove(0);
        let ident = "My name is Jane Roe, MRN: A-7782341, jane.roe@example.org, call (617) 555-0142, DOB 03/14/1962";
        let keep = c.clone();
        c.chief_complaint = format!("chest pain. {ident}");
        c.hpi = ident.into();
        c.social_history.push(ident.into());
        c.inquiry_items[0].answer = ident.into();
        c.rubric.push(spar_core::case::RubricItem {
            criterion: ident.into(),
            points: 1,
            tags: vec![],
            rule: None,
        });
        redact_case(&mut c);
        let json = serde_json::to_string(&c).unwrap();
        for id in [
            "Jane",
            "Roe",
            "7782341",
            "jane.roe@example.org",
            "555-0142",
            "03/14/1962",
        ] {
            assert!(!json.contains(id), "{id} survived: {json}");
        }
        assert!(c.chief_complaint.starts_with("chest pain."));
        assert_eq!(c.id, keep.id);
        assert_eq!(c.diagnosis, keep.diagnosis);
        assert_eq!(c.inquiry_items[0].keywords, keep.inquiry_items[0].keywords);
        assert_eq!(c.tests, keep.tests);
    }

    /// Strings at any depth of a JSON value are redacted, keys are not.
    #[test]
    fn json_strings_are_redacted_at_any_depth() {
        let mut v =
            serde_json::json!({"a": ["call (617) 555-0142", {"mail": "x.y@example.org"}], "n": 3});
        redact_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": ["call [PHONE]", {"mail": "[EMAIL]"}], "n": 3})
        );
    }
}
