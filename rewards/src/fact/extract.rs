//! The built-in claim extractor: sentence and clause splitting with medical-claim heuristics. Offline and
//! deterministic (tests, CPU runs); the LLM extractor of `spar-clients` is the one for real training.
use crate::text::{is_question, normalize, sentences, words};
use async_trait::async_trait;
use regex::Regex;
use spar_core::Result;
use spar_core::grammar::{self, strip_think};
use spar_core::sample::Turn;
use spar_core::traits::ClaimExtractor;
use std::collections::HashSet;
use std::sync::LazyLock;

/// Keeps declarative, general medical statements; drops questions, greetings, stage-output list lines,
/// statements addressed to or about the speakers ("you", "I", "we"), and fragments that lean on context they
/// do not carry. A leading "It"/"This" is resolved to the subject of the previous kept claim (coreference);
/// without one the clause is dropped. Claims are deduplicated in order.
#[derive(Clone, Debug, Default)]
pub struct RuleClaimExtractor;

const PERSONAL: &[&str] = &[
    "i", "i'm", "i'd", "i'll", "we", "we'll", "let's", "you", "you're", "your", "you'll", "please",
    "thank", "thanks",
];
const PRONOUN_SUBJECTS: &[&str] = &["it", "this", "these", "they", "that", "those"];
const CLAIM_VERBS: &[&str] = &[
    "cure",
    "cures",
    "is",
    "are",
    "was",
    "were",
    "cause",
    "causes",
    "caused",
    "treat",
    "treats",
    "treated",
    "reduce",
    "reduces",
    "increase",
    "increases",
    "indicated",
    "contraindicated",
    "recommended",
    "associated",
    "can",
    "may",
    "should",
    "requires",
    "require",
    "lowers",
    "lower",
    "raises",
    "prevents",
    "prevent",
    "leads",
    "lead",
    "results",
    "presents",
    "affects",
    "interacts",
];
const MEDICAL_WORDS: &[&str] = &[
    "pneumonia",
    "asthma",
    "diabetes",
    "hypertension",
    "stroke",
    "infarction",
    "sepsis",
    "disease",
    "infection",
    "syndrome",
    "symptom",
    "symptoms",
    "diagnosis",
    "treatment",
    "therapy",
    "drug",
    "dose",
    "medication",
    "antibiotic",
    "antibiotics",
    "vaccine",
    "virus",
    "bacteria",
    "bacterial",
    "viral",
    "blood",
    "pressure",
    "heart",
    "lung",
    "liver",
    "kidney",
    "brain",
    "cancer",
    "tumor",
    "tumour",
    "pain",
    "fever",
    "cough",
    "pregnancy",
    "patients",
    "risk",
    "insulin",
    "glucose",
    "cholesterol",
    "surgery",
    "chronic",
    "acute",
    "mg",
    "first-line",
    "clinical",
    "test",
    "x-ray",
    "ecg",
    "mri",
    "ct",
];
const MEDICAL_SUFFIXES: &[&str] = &[
    "itis", "osis", "emia", "aemia", "pathy", "ectomy", "cillin", "mycin", "pril", "olol",
    "sartan", "statin", "prazole", "oma", "algia", "ine", "azole", "mab",
];

/// The stage-output blocks of `spar_core::grammar` (an unclosed one runs to the end) and its end-of-inquiry marker.
static TAGGED: LazyLock<Regex> = LazyLock::new(|| {
    let tags = grammar::BLOCK_TAGS.join("|");
    Regex::new(&format!(
        r"(?is)<({tags})>.*?(</({tags})>|$)|{}",
        regex::escape(grammar::INQUIRY_DONE)
    ))
    .unwrap()
});
static CLAUSE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r",\s+(?:and|but|while|whereas|so)\s+").unwrap());

fn is_medical(ws: &[String], raw: &str) -> bool {
    ws.iter().any(|w| {
        MEDICAL_WORDS.contains(&w.as_str())
            || MEDICAL_SUFFIXES
                .iter()
                .any(|s| w.len() > s.len() + 2 && w.ends_with(s))
    }) || raw.chars().any(|c| c.is_ascii_digit())
}

/// Subject of a claim: the words before its first claim verb (None if it starts with the verb).
fn subject(claim: &str) -> Option<String> {
    let ws: Vec<&str> = claim.split_whitespace().collect();
    let k = ws.iter().position(|w| {
        CLAIM_VERBS.contains(
            &w.to_lowercase()
                .trim_matches(|c: char| !c.is_alphanumeric()),
        )
    })?;
    (k > 0).then(|| ws[..k].join(" "))
}

/// The prose of a reply: thinking and stage-output blocks (`<ddx>`, `<tests>`, `<diagnosis>`, `<ready/>`)
/// removed. Claims are extracted from it and its sentences weigh claims (Eq. 11).
pub fn prose(response: &str) -> String {
    TAGGED
        .replace_all(&strip_think(response), "\n")
        .into_owned()
}

/// The synchronous core of [`RuleClaimExtractor`].
pub fn extract_claims(response: &str) -> Vec<String> {
    let text = prose(response);
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut last_subject: Option<String> = None;
    for sentence in sentences(&text) {
        if is_question(&sentence) {
            continue;
        }
        for clause in CLAUSE.split(&sentence) {
            let clause = clause.trim().trim_end_matches(['.', '!', ';', ',']).trim();
            let ws = words(clause);
            if ws.len() < 3
                || ws.iter().any(|w| PERSONAL.contains(&w.as_str()))
                || !ws.iter().any(|w| CLAIM_VERBS.contains(&w.as_str()))
            {
                continue;
            }
            let mut claim = clause.to_string();
            if PRONOUN_SUBJECTS.contains(&ws[0].as_str()) {
                let Some(subj) = &last_subject else { continue };
                let first_len = clause.split_whitespace().next().map_or(0, str::len);
                claim = format!("{subj}{}", &clause[first_len..]);
            }
            if !is_medical(&words(&claim), &claim) {
                continue;
            }
            if let Some(s) = subject(&claim) {
                last_subject = Some(s);
            }
            if seen.insert(normalize(&claim)) {
                out.push(claim);
            }
        }
    }
    out
}

#[async_trait]
impl ClaimExtractor for RuleClaimExtractor {
    fn id(&self) -> String {
        "rule-extractor/v1".into()
    }

    async fn extract(&self, response: &str, _context: &[Turn]) -> Result<Vec<String>> {
        Ok(extract_claims(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_general_claims_resolves_it_and_dedups() {
        let r = "<think>Amoxicillin is useless.</think>Thank you for telling me. Do you have a fever? \
                 Amoxicillin is a first-line treatment for community-acquired pneumonia. It is contraindicated in penicillin allergy. \
                 You should rest. Amoxicillin is a first-line treatment for community-acquired pneumonia! \
                 Pneumonia causes fever, and smoking increases the risk of pneumonia.\n<ddx>\n1. Pneumonia (J18.9)\n</ddx>";
        let c = extract_claims(r);
        assert_eq!(
            c,
            vec![
                "Amoxicillin is a first-line treatment for community-acquired pneumonia",
                "Amoxicillin is contraindicated in penicillin allergy",
                "Pneumonia causes fever",
                "smoking increases the risk of pneumonia",
            ]
        );
        assert!(
            extract_claims("It is contraindicated in pregnancy.").is_empty(),
            "unresolvable pronoun is dropped"
        );
    }
}
