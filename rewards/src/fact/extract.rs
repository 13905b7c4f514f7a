//! The built-in claim extractor: sentence and clause splitting with medical-claim heuristics. Offline and
//! deterministic (tests, CPU runs); the LLM extractor of `spar-clients` is the one for real training.
use crate::text::{is_question, normalize, words};
use async_trait::async_trait;
use regex::Regex;
use spar_core::Result;
use spar_core::grammar::{self, strip_think};
use spar_core::sample::Turn;
use spar_core::traits::ClaimExtractor;
use std::collections::HashSet;
use std::sync::LazyLock;

/// Keeps general medical statements, declarative or hedged, and the premise of a question that asserts one
/// ("Since metformin is contraindicated in ..., have you ...?"); drops plain questions, greetings, statements
/// about the speakers ("I", "we", "your cough") unless they carry a dose, a code or a drug name, and fragments
/// that lean on context they do not carry. A leading "It"/"This" is resolved to the subject of the previous
/// kept claim (coreference); without one the clause is dropped. The items of the stage-output blocks
/// (`<ddx>`, `<diagnosis>`) that name an ICD-10 code become "CODE is the ICD-10 code for NAME". Claims are
/// deduplicated in order.
#[derive(Clone, Debug, Default)]
pub struct RuleClaimExtractor;

/// Where in a reply a claim was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOrigin {
    /// A declarative (or hedged) sentence of the prose.
    Prose,
    /// The premise of a question ("Since X is contraindicated in Y, have you ...?").
    Premise,
    /// An item of a stage-output block that names an ICD-10 code.
    StageBlock,
}

/// One extracted claim and the byte range of the reply it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractedClaim {
    /// The claim as verified (coreference resolved, a stage item rewritten as a sentence).
    pub text: String,
    /// Byte range in the reply (`reply[start..end]` is the clause or block line it was read from).
    pub start: usize,
    pub end: usize,
    pub origin: ClaimOrigin,
}

/// Words the speakers use of themselves or of the patient: a clause with one is personal unless it carries a
/// strong medical anchor (a dose, a code, a drug name).
const PERSONAL: &[&str] = &[
    "i", "i'm", "i'd", "i'll", "i've", "me", "my", "we", "we'll", "we're", "let's", "you",
    "you're", "your", "you'll", "you've", "please", "thank", "thanks", "sorry",
];
const PRONOUN_SUBJECTS: &[&str] = &["it", "this", "these", "they", "that", "those"];
const CLAIM_VERBS: &[&str] = &[
    "cure",
    "cures",
    "is",
    "are",
    "was",
    "were",
    "be",
    "cause",
    "causes",
    "caused",
    "treat",
    "treats",
    "treated",
    "reduce",
    "reduces",
    "reducing",
    "increase",
    "increases",
    "increasing",
    "raise",
    "raises",
    "raising",
    "indicated",
    "contraindicated",
    "recommended",
    "associated",
    "can",
    "may",
    "might",
    "should",
    "must",
    "could",
    "would",
    "will",
    "requires",
    "require",
    "lowers",
    "lower",
    "prevents",
    "prevent",
    "leads",
    "lead",
    "results",
    "presents",
    "affects",
    "affect",
    "interacts",
    "interact",
    "reverses",
    "reverse",
    "reversed",
    "covers",
    "cover",
    "belong",
    "belongs",
    "falls",
    "fall",
    "describe",
    "describes",
    "coded",
    "means",
    "mean",
    "stain",
    "stains",
    "taken",
    "given",
    "used",
    "avoided",
    "carries",
    "has",
    "have",
    "does",
    "do",
    "needs",
    "need",
    "indicates",
    "indicate",
    "found",
    "include",
    "includes",
    "potentiates",
    "inhibits",
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
    "drugs",
    "dose",
    "doses",
    "medication",
    "medicines",
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
    "renal",
    "hepatic",
    "brain",
    "cancer",
    "tumor",
    "tumour",
    "pain",
    "fever",
    "cough",
    "pregnancy",
    "pregnant",
    "breastfeeding",
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
    "antidote",
    "overdose",
    "poisoning",
    "toxicity",
    "reversal",
    "contraindicated",
    "contraindication",
    "interaction",
    "interactions",
    "children",
    "infants",
    "neonates",
    "babies",
    "elderly",
    "adults",
    "teenagers",
    "code",
    "codes",
    "icd-10",
    "icd-10-cm",
    "chapter",
    "juice",
    "levels",
    "potassium",
    "sodium",
    "calcium",
    "magnesium",
    "haemoglobin",
    "hemoglobin",
    "platelet",
    "saturation",
    "temperature",
    "diuretics",
    "inhibitors",
    "blockers",
    "statins",
    "nsaids",
    "ssris",
    "opioids",
    "opioid",
    "benzodiazepines",
    "benzodiazepine",
    "penicillins",
    "tetracyclines",
    "fluoroquinolones",
    "triptans",
    "macrolides",
    "nitrates",
    "warfarin",
    "aspirin",
    "heparin",
    "naloxone",
    "lithium",
    "vitamin",
    "honey",
    "botulism",
    "neoplasm",
    "neoplasms",
    "disorder",
    "disorders",
    "ulcer",
    "bleeding",
    "contraceptives",
    "contraceptive",
    "supplements",
];
const MEDICAL_SUFFIXES: &[&str] = &[
    "itis",
    "osis",
    "emia",
    "aemia",
    "pathy",
    "ectomy",
    "cillin",
    "mycin",
    "pril",
    "olol",
    "sartan",
    "statin",
    "prazole",
    "oma",
    "algia",
    "ine",
    "azole",
    "mab",
    "arin",
    "oxone",
    "pam",
    "lam",
    "one",
    "ide",
    "mide",
    "zide",
    "tide",
    "afil",
    "triptan",
    "floxacin",
    "cycline",
    "vir",
    "parin",
    "xaban",
    "gatran",
    "dipine",
    "glitin",
    "gliflozin",
    "tidine",
    "onium",
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
static THINK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)<think>.*?(</think>|$)").unwrap());
/// The blocks whose items name diagnoses (the tests block names tests, not facts).
static DX_BLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?is)<({}|{})>(.*?)(?:</(?:{}|{})>|$)",
        grammar::DDX_TAG,
        grammar::DIAGNOSIS_TAG,
        grammar::DDX_TAG,
        grammar::DIAGNOSIS_TAG
    ))
    .unwrap()
});
/// One diagnosis with its code in a block line: "1. Community-acquired pneumonia (J18.9)".
static DX_ITEM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?im)(?:^|;)\s*(?:\d+\s*[.)]|[-*•])?\s*([^;\n()\[\]]+?)\s*[\(\[]\s*(?:ICD-?10(?:-CM)?\s*:?\s*)?([A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?)\s*[\)\]]",
    )
    .unwrap()
});
static CLAUSE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r",\s+(?:and|but|while|whereas|so)\s+").unwrap());
/// The premise of a question: "Since X, ...?", "As X, ...", "Given that X, ...", "..., because X?".
static PREMISE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:^|,\s*)(?:since|as|because|given that|considering that|now that|knowing that)\s+([^,?]+)",
    )
    .unwrap()
});
/// A strong anchor: a number with a unit, or an ICD-10 code.
static ANCHOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b\d+(?:[.,]\d+)?\s*(?:mg|g|mcg|µg|ug|mmol|mg/dl|g/dl|%|iu|units?)\b|\b[A-Z]\d{2}(?:\.[0-9A-Z]{1,4})?\b")
        .unwrap()
});

fn is_medical(ws: &[String], raw: &str) -> bool {
    ws.iter()
        .any(|w| MEDICAL_WORDS.contains(&w.as_str()) || drug_like(w))
        || raw.chars().any(|c| c.is_ascii_digit())
}

fn drug_like(w: &str) -> bool {
    MEDICAL_SUFFIXES
        .iter()
        .any(|s| w.len() > s.len() + 2 && w.ends_with(s))
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

/// `text` with the byte ranges matched by `re` blanked (each byte a space), so offsets stay those of `text`.
fn blank(text: &str, re: &Regex) -> String {
    let mut out = text.to_string();
    for m in re.find_iter(text) {
        // Whole matches are replaced, so the result stays UTF-8.
        out.replace_range(m.range(), &" ".repeat(m.len()));
    }
    out
}

/// The prose of a reply: thinking and stage-output blocks (`<ddx>`, `<tests>`, `<diagnosis>`, `<ready/>`)
/// removed. Claims are extracted from it and its sentences weigh claims (Eq. 11).
pub fn prose(response: &str) -> String {
    TAGGED
        .replace_all(&strip_think(response), "\n")
        .into_owned()
}

/// Sentences of `text` as byte ranges, split like [`crate::text::sentences`] (at `.`, `!`, `?`, `;` followed by
/// white space, and at line breaks; a decimal point does not split).
fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut push = |s: usize, e: usize| {
        let t = &text[s..e];
        if t.chars().any(char::is_alphanumeric) {
            let lead = t.len() - t.trim_start().len();
            let trail = t.len() - t.trim_end().len();
            out.push((s + lead, e - trail));
        }
    };
    for (k, &(i, c)) in chars.iter().enumerate() {
        if c == '\n' {
            push(start, i);
            start = i + 1;
            continue;
        }
        let next = chars.get(k + 1).map(|x| x.1);
        let decimal = c == '.'
            && k > 0
            && chars[k - 1].1.is_ascii_digit()
            && next.is_some_and(|n| n.is_ascii_digit());
        if matches!(c, '.' | '!' | '?' | ';') && !decimal && next.is_none_or(char::is_whitespace) {
            push(start, i + c.len_utf8());
            start = i + c.len_utf8();
        }
    }
    push(start, text.len());
    out
}

/// Clauses of one sentence (`text[s..e]`) as byte ranges, trailing punctuation trimmed.
fn clause_spans(text: &str, s: usize, e: usize) -> Vec<(usize, usize)> {
    let sentence = &text[s..e];
    let mut out = Vec::new();
    let mut from = 0;
    let mut cut = |a: usize, b: usize| {
        let t = &sentence[a..b];
        let trimmed = t
            .trim_end()
            .trim_end_matches(['.', '!', ';', ',', '?'])
            .trim_end();
        // Markdown list markers, headings and quotes (a mark and a space) are not part of the claim; emphasis
        // ("**Aspirin**") is.
        let mut rest = trimmed.trim_start();
        loop {
            let mark = rest.trim_start_matches(['-', '*', '•', '#', '>']);
            if mark.len() < rest.len() && mark.starts_with(char::is_whitespace) {
                rest = mark.trim_start();
            } else {
                break;
            }
        }
        let lead = trimmed.len() - rest.len();
        if trimmed.len() > lead {
            out.push((s + a + lead, s + a + trimmed.len()));
        }
    };
    for m in CLAUSE.find_iter(sentence) {
        cut(from, m.start());
        from = m.end();
    }
    cut(from, sentence.len());
    out
}

/// The claim a clause states, or None. `your` statements are personal unless they carry a checkable value
/// ("your potassium of 6.2 mmol/L is high" is the claim "potassium of 6.2 mmol/L is high").
fn clause_claim(clause: &str, last_subject: &Option<String>) -> Option<String> {
    let ws = words(clause);
    if ws.len() < 3 || !ws.iter().any(|w| CLAIM_VERBS.contains(&w.as_str())) {
        return None;
    }
    let mut claim = clause.to_string();
    if ws.iter().any(|w| PERSONAL.contains(&w.as_str())) {
        let anchored = ANCHOR.is_match(clause) || ws.iter().any(|w| drug_like(w));
        if !anchored {
            return None;
        }
        // A value of the patient's judged against a range is a checkable claim without the possessive.
        static YOUR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\byour\s+").unwrap());
        claim = YOUR.replace_all(&claim, "").into_owned();
        let rest = words(&claim);
        if rest.iter().any(|w| {
            matches!(
                w.as_str(),
                "i" | "i'm" | "me" | "my" | "we" | "let's" | "thank" | "sorry"
            )
        }) {
            return None;
        }
    }
    let ws = words(&claim);
    if PRONOUN_SUBJECTS.contains(&ws[0].as_str()) {
        let subj = last_subject.as_ref()?;
        let first_len = claim.split_whitespace().next().map_or(0, str::len);
        claim = format!("{subj}{}", &claim[first_len..]);
    }
    is_medical(&words(&claim), &claim).then_some(claim)
}

/// Every claim of a reply with its byte range, in reply order: prose sentences and question premises, then
/// the coded items of the stage-output blocks.
pub fn extract_claim_spans(response: &str) -> Vec<ExtractedClaim> {
    let no_think = blank(response, &THINK);
    let text = blank(&no_think, &TAGGED);
    let mut out: Vec<ExtractedClaim> = Vec::new();
    let mut seen = HashSet::new();
    let mut last_subject: Option<String> = None;
    let mut keep = |out: &mut Vec<ExtractedClaim>, c: ExtractedClaim| {
        if seen.insert(normalize(&c.text)) {
            out.push(c);
        }
    };
    for (s, e) in sentence_spans(&text) {
        let sentence = &text[s..e];
        if is_question(sentence) {
            // Only the premise of a question asserts anything.
            for cap in PREMISE.captures_iter(sentence) {
                let g = cap.get(1).unwrap();
                let (a, b) = (s + g.start(), s + g.end());
                let raw = text[a..b].trim_end_matches(['?', '.', ' ']);
                if let Some(claim) = clause_claim(raw, &last_subject) {
                    keep(
                        &mut out,
                        ExtractedClaim {
                            text: claim,
                            start: a,
                            end: a + raw.len(),
                            origin: ClaimOrigin::Premise,
                        },
                    );
                }
            }
            continue;
        }
        for (a, b) in clause_spans(&text, s, e) {
            let Some(claim) = clause_claim(&text[a..b], &last_subject) else {
                continue;
            };
            if let Some(subj) = subject(&claim) {
                last_subject = Some(subj);
            }
            keep(
                &mut out,
                ExtractedClaim {
                    text: claim,
                    start: a,
                    end: b,
                    origin: ClaimOrigin::Prose,
                },
            );
        }
    }
    for block in DX_BLOCK.captures_iter(&no_think) {
        let body = block.get(2).unwrap();
        for item in DX_ITEM.captures_iter(body.as_str()) {
            let (name, code) = (item.get(1).unwrap(), item.get(2).unwrap());
            let name_text = name.as_str().trim();
            if name_text.is_empty() {
                continue;
            }
            keep(
                &mut out,
                ExtractedClaim {
                    text: format!(
                        "{} is the ICD-10 code for {name_text}",
                        grammar::normalize_icd10(code.as_str())
                    ),
                    start: body.start() + name.start(),
                    end: body.start() + item.get(0).unwrap().end(),
                    origin: ClaimOrigin::StageBlock,
                },
            );
        }
    }
    out
}

/// The claims of a reply (the texts of [`extract_claim_spans`]).
pub fn extract_claims(response: &str) -> Vec<String> {
    extract_claim_spans(response)
        .into_iter()
        .map(|c| c.text)
        .collect()
}

#[async_trait]
impl ClaimExtractor for RuleClaimExtractor {
    fn id(&self) -> String {
        "rule-extractor/v2".into()
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
                "J18.9 is the ICD-10 code for Pneumonia",
            ]
        );
        let spans = extract_claim_spans(r);
        let last = spans.last().unwrap();
        assert_eq!(last.origin, ClaimOrigin::StageBlock);
        assert_eq!(&r[last.start..last.end], "Pneumonia (J18.9)");
        assert_eq!(
            &r[spans[0].start..spans[0].end],
            "Amoxicillin is a first-line treatment for community-acquired pneumonia"
        );
        assert!(
            extract_claims("It is contraindicated in pregnancy.").is_empty(),
            "unresolvable pronoun is dropped"
        );
    }

    #[test]
    fn premises_of_questions_personal_values_and_hedges() {
        let r = "Since metformin is contraindicated in severe renal impairment, have you had your kidneys checked? \
                 Since your potassium of 6.2 mmol/L is high, have you taken supplements? \
                 Do you take aspirin? You should rest. Paracetamol may be taken at up to 4 g a day.";
        assert_eq!(
            extract_claims(r),
            vec![
                "metformin is contraindicated in severe renal impairment",
                "potassium of 6.2 mmol/L is high",
                "Paracetamol may be taken at up to 4 g a day",
            ]
        );
        let spans = extract_claim_spans(r);
        assert_eq!(spans[0].origin, ClaimOrigin::Premise);
        assert_eq!(
            &r[spans[1].start..spans[1].end],
            "your potassium of 6.2 mmol/L is high"
        );
        let md = "## Advice\n- Paracetamol may be taken at up to 4 g a day.\n> **Aspirin** is contraindicated in children.";
        let spans = extract_claim_spans(md);
        assert_eq!(
            &md[spans[0].start..spans[0].end],
            "Paracetamol may be taken at up to 4 g a day"
        );
        assert_eq!(
            &md[spans[1].start..spans[1].end],
            "**Aspirin** is contraindicated in children"
        );
    }
}
