//! Rule checks of a simulated patient's reply against its case (M2's "factual unit", method.md section 6): the
//! reply must not reveal the diagnosis and must not contradict the case's plain facts.
//!
//! A diagnosis term is a leak only when the patient could not have it from elsewhere: a term the doctor already
//! said, or one the patient's own file uses (a known migraine sufferer may say "migraine"), is allowed.
use regex::Regex;
use spar_core::case::{Case, Sex};
use std::sync::LazyLock;

static YEARS_OLD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(\d{1,3})[- ]?(?:years?|yrs?)[- ]old\b").expect("valid regex")
});
static SELF_SEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bI(?:'m| am) an? (woman|man|female|male|girl|boy)\b").expect("valid regex")
});
static NO_ALLERGIES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:no (?:known )?(?:drug |medication )?allergies|not allergic to anything|(?:don't|do not|dont) have any allergies)\b").expect("valid regex")
});
static NO_MEDICATIONS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:(?:don't|do not|dont|not) (?:take|taking|on) any (?:medications?|medicines?|pills|drugs|meds)|no (?:regular )?(?:medications|medicines|meds))\b").expect("valid regex")
});

/// Words that qualify a diagnosis name; the name without them is what a patient would say.
const QUALIFIERS: &[&str] = &[
    "acute",
    "chronic",
    "primary",
    "secondary",
    "recurrent",
    "severe",
    "mild",
    "unspecified",
    "essential",
    "simple",
];

/// The terms that would reveal `case`'s diagnosis: its full name, the name before any comma or parenthesis,
/// that without leading qualifiers ("Acute appendicitis" -> "appendicitis"), and the ICD-10 code (dotted and
/// not).
pub fn diagnosis_terms(case: &Case) -> Vec<String> {
    let name = case.diagnosis.name.trim().to_lowercase();
    let head = name
        .split([',', '(', ';'])
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let mut words: Vec<&str> = head.split_whitespace().collect();
    while words.len() > 1 && QUALIFIERS.contains(&words[0]) {
        words.remove(0);
    }
    let bare = words.join(" ");
    let code = case.diagnosis.icd10.trim().to_lowercase();
    let mut terms = vec![name, head, bare, code.clone(), code.replace('.', "")];
    terms.retain(|t| t.chars().filter(|c| c.is_alphanumeric()).count() >= 3);
    terms.sort();
    terms.dedup();
    terms
}

fn contains_term(text: &str, term: &str) -> bool {
    Regex::new(&format!(r"(?i)(?:^|\W){}(?:\W|$)", regex::escape(term)))
        .is_ok_and(|re| re.is_match(text))
}

/// The patient-facing facts of a case, as one text (what the simulator's persona is built from).
pub fn patient_facts(case: &Case) -> String {
    let mut parts: Vec<&str> = vec![&case.chief_complaint, &case.hpi];
    for list in [
        &case.past_history,
        &case.medications,
        &case.allergies,
        &case.family_history,
        &case.social_history,
        &case.exam_findings,
    ] {
        parts.extend(list.iter().map(String::as_str));
    }
    parts.extend(case.inquiry_items.iter().map(|i| i.answer.as_str()));
    parts.extend(case.red_flags.iter().map(|r| r.answer.as_str()));
    parts.join("\n")
}

/// Why `reply` fails the rule check, or None. `doctor_text` is everything the doctor has said so far.
pub fn rule_violation(case: &Case, reply: &str, doctor_text: &str) -> Option<String> {
    let facts = patient_facts(case);
    for term in diagnosis_terms(case) {
        if contains_term(reply, &term)
            && !contains_term(doctor_text, &term)
            && !contains_term(&facts, &term)
        {
            return Some(
                "the reply names the case's diagnosis, which the doctor has not said".into(),
            );
        }
    }
    for c in YEARS_OLD.captures_iter(reply) {
        if c[1]
            .parse::<u32>()
            .is_ok_and(|age| age != case.demographics.age)
        {
            return Some(format!(
                "the reply gives an age other than the case's {}",
                case.demographics.age
            ));
        }
    }
    if let Some(c) = SELF_SEX.captures(reply) {
        let said_female = matches!(c[1].to_lowercase().as_str(), "woman" | "female" | "girl");
        if said_female != (case.demographics.sex == Sex::Female) {
            return Some("the reply contradicts the case's sex".into());
        }
    }
    if !case.allergies.is_empty() && NO_ALLERGIES.is_match(reply) {
        return Some("the reply denies allergies the case lists".into());
    }
    if !case.medications.is_empty() && NO_MEDICATIONS.is_match(reply) {
        return Some("the reply denies medications the case lists".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use spar_core::case::{Demographics, Diagnosis, InquiryItem, Tests};

    fn case() -> Case {
        Case {
            id: "c1".into(),
            department: "gi".into(),
            demographics: Demographics {
                age: 34,
                sex: Sex::Female,
            },
            chief_complaint: "pain in my lower right belly".into(),
            hpi: "Started around the navel yesterday, moved to the right.".into(),
            past_history: vec!["migraine".into()],
            medications: vec!["ibuprofen as needed".into()],
            allergies: vec!["penicillin".into()],
            family_history: vec![],
            social_history: vec![],
            exam_findings: vec![],
            inquiry_items: vec![InquiryItem {
                id: "f".into(),
                topic: "fever".into(),
                keywords: vec!["fever".into()],
                answer: "A little, 38.".into(),
                weight: 1.0,
                critical: false,
            }],
            red_flags: vec![],
            diagnosis: Diagnosis {
                name: "Acute appendicitis, unspecified".into(),
                icd10: "K35.80".into(),
            },
            differential: vec![],
            tests: Tests {
                essential: vec![],
                optional: vec![],
            },
            rubric: vec![],
            source: "test".into(),
        }
    }

    #[test]
    fn terms_cover_what_a_patient_would_say() {
        let t = diagnosis_terms(&case());
        for want in ["appendicitis", "acute appendicitis", "k35.80", "k3580"] {
            assert!(t.contains(&want.to_string()), "{want} in {t:?}");
        }
    }

    #[test]
    fn leaks_unless_the_doctor_said_it() {
        let c = case();
        assert!(
            rule_violation(
                &c,
                "I think it's appendicitis, my friend had it.",
                "Where does it hurt?"
            )
            .is_some()
        );
        assert!(rule_violation(&c, "The code was K35.80.", "").is_some());
        assert!(
            rule_violation(
                &c,
                "Appendicitis? Is that serious?",
                "I suspect appendicitis."
            )
            .is_none()
        );
        assert!(rule_violation(&c, "It hurts on the right side.", "").is_none());
        assert!(
            rule_violation(&c, "I'm a bit disappendicitised", "").is_none(),
            "word boundaries"
        );
    }

    #[test]
    fn contradictions_of_plain_facts() {
        let c = case();
        assert!(rule_violation(&c, "I'm 52 years old.", "").is_some());
        assert!(rule_violation(&c, "I'm 34 years old.", "").is_none());
        assert!(rule_violation(&c, "I am a man.", "").is_some());
        assert!(rule_violation(&c, "No allergies that I know of.", "").is_some());
        assert!(rule_violation(&c, "I don't take any medications.", "").is_some());
        assert!(rule_violation(&c, "I had it for 3 years.", "").is_none());
    }
}
