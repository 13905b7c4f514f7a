//! What every importer of a foreign case format shares: diagnoses coded through the knowledge base's ICD-10-CM
//! tree, the department from the code's chapter, demographics read from "35-year-old female", keywords for the
//! scripted patient, and a rubric derived from the case (the diagnosis, the tests and the critical history items,
//! each with an offline rule, as the shipped cases have).
use crate::kb::KnowledgeBase;
use crate::kb::icd10::title_words;
use crate::kb::text;
use spar_core::case::{Diagnosis, InquiryItem, RubricItem, RuleCheck, Sex, TestItem};
use spar_core::{Case, Stage};
use std::collections::HashSet;

/// A row that cannot be mapped: the field (as the source format spells its path) and why.
pub type Unmapped = (String, String);

/// The ICD-10-CM code of a diagnosis name, from the knowledge base: the code whose title holds every content
/// word of the name (parenthesised abbreviations such as "(PML)" left out), preferring a title equal to the
/// name, then the shortest title, then an "unspecified" code over an "other" one (a bare name means the
/// unspecified form), then the shortest code. None when no title holds them all: the importer says so rather
/// than guess a code from some of the words.
pub fn code_diagnosis(kb: &KnowledgeBase, name: &str) -> Option<Diagnosis> {
    let plain = without_parentheses(name);
    let words = title_words(&plain);
    if words.is_empty() {
        return None;
    }
    let want = text::phrase_key(&plain);
    let mut nodes: Vec<_> = kb
        .icd
        .titles_with_all(&words)
        .into_iter()
        .filter(|n| !n.is_chapter() && !n.is_block())
        .collect();
    nodes.sort_by_key(|n| {
        let title = text::fold(&n.title);
        (
            text::phrase_key(&n.title) != want,
            title_words(&n.title).len(),
            !title.contains("unspecified"),
            title.starts_with("other"),
            n.code.len(),
            n.code.clone(),
        )
    });
    let n = nodes.first()?;
    Some(Diagnosis {
        name: name.trim().to_string(),
        icd10: n.code.clone(),
    })
}

fn without_parentheses(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The clinical department of an ICD-10-CM code, from its chapter (the shipped cases' department names where
/// they overlap).
pub fn department(icd10: &str) -> &'static str {
    let mut c = icd10.chars();
    let letter = c.next().unwrap_or('R').to_ascii_uppercase();
    let num: u32 = c.take(2).collect::<String>().parse().unwrap_or(0);
    match letter {
        'A' | 'B' => "infectious disease",
        'C' => "oncology",
        'D' if num < 50 => "oncology",
        'D' => "hematology",
        'E' => "endocrinology",
        'F' => "psychiatry",
        'G' => "neurology",
        'H' if num < 60 => "ophthalmology",
        'H' => "otolaryngology",
        'I' => "cardiology",
        'J' => "respiratory",
        'K' => "gastroenterology",
        'L' => "dermatology",
        'M' => "rheumatology",
        'N' if num < 40 => "nephrology",
        'N' if num < 60 => "urology",
        'N' => "gynecology",
        'O' => "obstetrics",
        'P' => "neonatology",
        'Q' => "pediatrics",
        'S' | 'T' | 'V' | 'W' | 'X' | 'Y' => "emergency medicine",
        _ => "general medicine",
    }
}

/// Age and sex from a phrase such as "35-year-old female", "8-month-old boy", "Newborn, female" or "62 year
/// old man". An age in months, weeks or days (or a newborn) is 0 years.
pub fn demographics(s: &str) -> Result<(u32, Sex), String> {
    let lower = s.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let sex = words.iter().find_map(|w| match *w {
        "female" | "woman" | "girl" | "lady" | "she" | "her" => Some(Sex::Female),
        "male" | "man" | "boy" | "gentleman" | "he" | "his" => Some(Sex::Male),
        _ => None,
    });
    let age = words.windows(2).find_map(|w| {
        let n: u32 = w[0].parse().ok()?;
        match w[1] {
            "year" | "years" | "yo" => Some(n),
            "month" | "months" | "week" | "weeks" | "day" | "days" => Some(0),
            _ => None,
        }
    });
    let age = age.or_else(|| {
        words
            .iter()
            .any(|w| matches!(*w, "newborn" | "neonate" | "infant"))
            .then_some(0)
    });
    match (age, sex) {
        (Some(a), Some(s)) if a <= 120 => Ok((a, s)),
        (Some(a), Some(_)) => Err(format!("age {a} is over 120 in {s:?}")),
        (None, _) => Err(format!(
            "no age (\"35-year-old\", \"8-month-old\", \"newborn\") in {s:?}"
        )),
        (_, None) => Err(format!(
            "no sex (female / male / woman / man / girl / boy) in {s:?}"
        )),
    }
}

/// Words a doctor's question would use for `topic`: its content words of four letters or more, longer ones cut
/// to their first five letters so that other forms of the word match too (the scripted patient matches a
/// keyword at the start of a word: "climb" answers "climbing" and "climb"); at most four.
pub fn keywords(topic: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "with", "without", "after", "before", "from", "that", "this", "have", "been", "when",
        "your", "also", "some", "into", "over", "than", "then", "very", "about", "noted",
        "present", "recent", "history", "symptoms", "symptom", "patient", "reports", "other",
        "better", "worse",
    ];
    let mut out: Vec<String> = Vec::new();
    for w in text::tokens(&text::fold(topic)) {
        if w.len() < 4 || STOP.contains(&w) || w.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        let k: String = w.chars().take(5).collect();
        if !out.contains(&k) {
            out.push(k);
        }
        if out.len() == 4 {
            break;
        }
    }
    out
}

/// A unique snake-case id for `topic` among `taken`.
pub fn item_id(topic: &str, taken: &mut HashSet<String>) -> String {
    let base: String = text::tokens(&text::fold(topic))
        .into_iter()
        .take(6)
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let base = if base.is_empty() { "item".into() } else { base };
    let mut id = base.clone();
    let mut n = 2;
    while !taken.insert(id.clone()) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

/// An inquiry item; None when the topic yields no keyword (the scripted patient could never be asked it).
pub fn inquiry_item(
    taken: &mut HashSet<String>,
    topic: &str,
    extra_keywords: &[&str],
    answer: &str,
    weight: f32,
) -> Option<InquiryItem> {
    let mut kw: Vec<String> = extra_keywords.iter().map(|s| s.to_string()).collect();
    for k in keywords(topic) {
        if !kw.contains(&k) {
            kw.push(k);
        }
    }
    if kw.is_empty() || answer.trim().is_empty() {
        return None;
    }
    Some(InquiryItem {
        id: item_id(topic, taken),
        topic: topic.trim().to_string(),
        keywords: kw,
        answer: answer.trim().to_string(),
        weight,
        critical: weight >= 3.0,
    })
}

/// A test named `name` (underscores read as spaces) with its result and the lower-case aliases a doctor may
/// use (the name itself and, e.g., its container "Imaging").
pub fn test_item(name: &str, aliases: &[&str], result: &str) -> TestItem {
    let name = name.replace('_', " ").trim().to_string();
    let mut al: Vec<String> = Vec::new();
    for a in std::iter::once(name.as_str()).chain(aliases.iter().copied()) {
        let a = a.replace('_', " ").trim().to_lowercase();
        if !a.is_empty() && !al.contains(&a) {
            al.push(a);
        }
    }
    TestItem {
        name,
        aliases: al,
        loinc: None,
        result: (!result.trim().is_empty()).then(|| result.trim().to_string()),
    }
}

/// The rubric of an imported case: the right final diagnosis (10 points), each essential test recommended (5),
/// each critical history item asked (3), each with an offline rule scoped to its stage, as the shipped cases'
/// rubrics are.
pub fn rubric(diagnosis: &Diagnosis, tests: &[TestItem], items: &[InquiryItem]) -> Vec<RubricItem> {
    let mut r = vec![RubricItem {
        criterion: format!(
            "Gives the correct final diagnosis: {} ({})",
            diagnosis.name, diagnosis.icd10
        ),
        points: 10,
        tags: vec!["axis:accuracy".into()],
        rule: Some(RuleCheck {
            any: vec![
                diagnosis.name.to_lowercase(),
                diagnosis.icd10.to_lowercase(),
            ],
            stage: Some(Stage::Diag),
            ..Default::default()
        }),
    }];
    for t in tests {
        r.push(RubricItem {
            criterion: format!("Recommends {}", t.name),
            points: 5,
            tags: vec!["axis:completeness".into()],
            rule: Some(RuleCheck {
                any: t.aliases.clone(),
                stage: Some(Stage::Lab),
                ..Default::default()
            }),
        });
    }
    for it in items.iter().filter(|i| i.critical) {
        r.push(RubricItem {
            criterion: format!("Asks about {}", it.topic),
            points: 3,
            tags: vec!["axis:completeness".into()],
            rule: Some(RuleCheck {
                any: it.keywords.clone(),
                stage: Some(Stage::Inquiry),
                ..Default::default()
            }),
        });
    }
    r
}

/// Checks a mapped case with [`Case::validate`]; the first problem becomes the row's error, its field under
/// `spar:` (the field of spar's case the row could not fill, e.g. `spar:tests.essential`).
pub fn checked(case: Case) -> Result<Case, Unmapped> {
    match case.validate().into_iter().next() {
        None => Ok(case),
        Some(p) => Err((format!("spar:{}", p.field), p.msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demographics_read_the_common_phrasings() {
        assert_eq!(demographics("35-year-old female"), Ok((35, Sex::Female)));
        assert_eq!(demographics("8-month-old boy"), Ok((0, Sex::Male)));
        assert_eq!(demographics("Newborn, female"), Ok((0, Sex::Female)));
        assert_eq!(demographics("62 year old man"), Ok((62, Sex::Male)));
        assert!(demographics("adult").unwrap_err().contains("no age"));
        assert!(demographics("40-year-old").unwrap_err().contains("no sex"));
    }

    #[test]
    fn diagnoses_are_coded_through_the_knowledge_base() {
        let kb = KnowledgeBase::load_default().unwrap();
        let code = |n: &str| code_diagnosis(&kb, n).map(|d| d.icd10);
        assert_eq!(code("Myasthenia gravis").as_deref(), Some("G70.0"));
        assert_eq!(code("Hirschsprung disease").as_deref(), Some("Q43.1"));
        assert_eq!(code("Hypothyroidism").as_deref(), Some("E03.9"));
        assert_eq!(
            code("Progressive multifocal leukoencephalopathy (PML)").as_deref(),
            Some("A81.2")
        );
        assert_eq!(code("Xyzzy syndrome of nowhere"), None);
        assert_eq!(department("G70.0"), "neurology");
        assert_eq!(department("I21.4"), "cardiology");
    }

    #[test]
    fn keywords_are_word_stems_a_question_would_contain() {
        assert_eq!(
            keywords("Difficulty climbing stairs"),
            vec!["diffi", "climb", "stair"]
        );
        assert!(keywords("of it").is_empty());
    }
}
