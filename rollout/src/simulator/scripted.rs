//! The case-grounded scripted patient: answers only from the case record by matching what the doctor asked,
//! says "I don't know" otherwise and never names its diagnosis. Deterministic; used in tests and the CPU demo.
use async_trait::async_trait;
use spar_core::case::Case;
use spar_core::grammar;
use spar_core::sample::Turn;
use spar_core::traits::{PatientReply, PatientSimulator};

/// What the patient says when nothing in the record answers the question.
pub const DONT_KNOW: &str = "I don't know.";
/// The patient's last words once the doctor has given a diagnosis.
pub const GOODBYE: &str = "Thank you, doctor.";

/// Topics every record has, with the words that ask about them.
const TOPICS: &[(Topic, &[&str])] = &[
    (
        Topic::Complaint,
        &[
            "what brings you",
            "how can i help",
            "what seems to be",
            "what is wrong",
            "what's wrong",
            "what's the problem",
            "what is the problem",
            "tell me more",
            "describe",
            "symptom",
            "how long",
            "when did",
        ],
    ),
    (
        Topic::Medications,
        &[
            "medication",
            "medicine",
            "taking any",
            "drug",
            "pill",
            "prescri",
            "supplement",
        ],
    ),
    (Topic::Allergies, &["allerg"]),
    (
        Topic::Past,
        &[
            "past medical",
            "medical history",
            "previous",
            "conditions",
            "illness",
            "surger",
            "chronic",
            "been diagnosed",
            "hospital",
        ],
    ),
    (
        Topic::Family,
        &[
            "family",
            "parents",
            "mother",
            "father",
            "sibling",
            "relatives",
        ],
    ),
    (
        Topic::Social,
        &[
            "smok",
            "alcohol",
            "drink",
            "occupation",
            "work",
            "job",
            "live with",
            "exercise",
            "recreational",
        ],
    ),
    (
        Topic::Exam,
        &[
            "examine",
            "examination",
            "exam ",
            "listen to",
            "check your",
            "vital",
            "blood pressure",
            "look at",
        ],
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    Complaint,
    Medications,
    Allergies,
    Past,
    Family,
    Social,
    Exam,
}

/// The scripted simulator. Stateless: everything it says follows from the case and the doctor's last reply.
#[derive(Clone, Debug, Default)]
pub struct ScriptedPatient;

impl ScriptedPatient {
    pub fn new() -> Self {
        ScriptedPatient
    }

    /// The patient's opening line.
    pub fn opening_line(case: &Case) -> String {
        format!(
            "Hello doctor. I've come because of {}.",
            lowercase_first(case.chief_complaint.trim().trim_end_matches('.'))
        )
    }

    /// The patient's answer to a doctor reply (thinking and tags ignored).
    pub fn answer(case: &Case, doctor: &str) -> PatientReply {
        let said = grammar::strip_think(doctor);
        if grammar::ends_consultation(&said) {
            return PatientReply {
                text: GOODBYE.to_string(),
                end: true,
            };
        }
        let q = said.to_lowercase();
        let mut parts: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            let s = s.trim();
            if !s.is_empty() && !parts.iter().any(|p| p == s) {
                parts.push(s.to_string());
            }
        };
        for item in &case.inquiry_items {
            if item.keywords.iter().any(|k| mentions(&q, k)) {
                add(&item.answer);
            }
        }
        for flag in &case.red_flags {
            if flag.keywords.iter().any(|k| mentions(&q, k)) {
                add(&flag.answer);
            }
        }
        for (topic, words) in TOPICS {
            if words.iter().any(|w| q.contains(w)) {
                add(&topic_answer(case, *topic));
            }
        }
        let text = if parts.is_empty() {
            DONT_KNOW.to_string()
        } else {
            parts.join(" ")
        };
        PatientReply {
            text: without_diagnosis(case, text),
            end: false,
        }
    }
}

fn topic_answer(case: &Case, topic: Topic) -> String {
    let list = |items: &[String], none: &str| {
        if items.is_empty() {
            none.to_string()
        } else {
            format!("{}.", items.join("; "))
        }
    };
    match topic {
        Topic::Complaint => format!(
            "{}. {}",
            capitalise(case.chief_complaint.trim().trim_end_matches('.')),
            case.hpi.trim()
        ),
        Topic::Medications => list(&case.medications, "I'm not taking any medications."),
        Topic::Allergies => {
            if case.allergies.is_empty() {
                "I have no known allergies.".into()
            } else {
                format!("I'm allergic to {}.", case.allergies.join(" and "))
            }
        }
        Topic::Past => list(
            &case.past_history,
            "Nothing significant in my past medical history.",
        ),
        Topic::Family => list(&case.family_history, "Nothing that I know of in my family."),
        Topic::Social => list(&case.social_history, "Nothing special about my habits."),
        Topic::Exam => {
            if case.exam_findings.is_empty() {
                "Go ahead, doctor.".into()
            } else {
                format!("(On examination: {}.)", case.exam_findings.join("; "))
            }
        }
    }
}

/// True when `keyword` occurs in `text` starting at a word boundary (so "ear" does not match "year").
fn mentions(text: &str, keyword: &str) -> bool {
    let k = keyword.trim().to_lowercase();
    if k.is_empty() {
        return false;
    }
    text.match_indices(&k).any(|(i, _)| {
        i == 0
            || !text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric())
    })
}

/// The patient does not know its diagnosis: any answer that would name it is replaced.
fn without_diagnosis(case: &Case, text: String) -> String {
    let lower = text.to_lowercase();
    let name = case.diagnosis.name.to_lowercase();
    let code = case.diagnosis.icd10.to_lowercase();
    if (!name.is_empty() && lower.contains(&name)) || (!code.is_empty() && lower.contains(&code)) {
        "I'm not sure what it is; that's why I came to see you.".to_string()
    } else {
        text
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) if c.clone().next().is_some_and(|n| n.is_lowercase()) => {
            f.to_lowercase().chain(c).collect()
        }
        Some(f) => std::iter::once(f).chain(c).collect(),
        None => String::new(),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[async_trait]
impl PatientSimulator for ScriptedPatient {
    fn id(&self) -> String {
        "scripted-patient-v1".into()
    }

    async fn opening(&self, case: &Case) -> spar_core::Result<String> {
        Ok(Self::opening_line(case))
    }

    async fn reply(
        &self,
        case: &Case,
        _dialogue: &[Turn],
        doctor: &str,
    ) -> spar_core::Result<PatientReply> {
        Ok(Self::answer(case, doctor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_case;

    #[test]
    fn answers_from_the_record_only() {
        let c = tiny_case();
        let r = ScriptedPatient::answer(&c, "Do you have a fever? Any allergies?");
        assert!(
            r.text.contains("39") && r.text.contains("penicillin"),
            "{}",
            r.text
        );
        assert!(!r.end);
        assert_eq!(
            ScriptedPatient::answer(&c, "What's your favourite colour?").text,
            DONT_KNOW
        );
        // "ear" must not match inside "year".
        assert_eq!(
            ScriptedPatient::answer(&c, "Which year were you born in?").text,
            DONT_KNOW
        );
        // Asking about thinking text is ignored.
        assert_eq!(
            ScriptedPatient::answer(&c, "<think>fever?</think>Hello.").text,
            DONT_KNOW
        );
    }

    #[test]
    fn never_names_the_diagnosis_and_ends_on_one() {
        let mut c = tiny_case();
        c.inquiry_items[0].answer = format!("The other doctor said {}.", c.diagnosis.name);
        let r = ScriptedPatient::answer(&c, "Any fever?");
        assert!(
            !r.text
                .to_lowercase()
                .contains(&c.diagnosis.name.to_lowercase()),
            "{}",
            r.text
        );
        let r = ScriptedPatient::answer(&c, "<diagnosis>Pneumonia (J18.9)</diagnosis>");
        assert!(r.end && r.text == GOODBYE);
        assert!(ScriptedPatient::opening_line(&c).contains("cough and fever"));
    }
}
