//! "J18.9 is the ICD-10 code for pneumonia": the code must exist and its title must cover the words.
use super::{Claim, uncertain, verdict};
use crate::kb::{KnowledgeBase, icd10};
use regex::Regex;
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;
use std::sync::LazyLock;

static ICD_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b([A-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?)\b").unwrap());

/// "Codes starting with J", "J codes", "S and T codes".
static LETTER_CODES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[Cc]odes?\s+(?:starting|beginning)\s+with\s+(?:the\s+letter\s+|an?\s+)?([A-Z])\b|\b([A-Z])(?:\s+|-)codes\b")
        .unwrap()
});
static CHAPTER_NUM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bchapter\s+(\d{1,2})\b").unwrap());

/// Words of chapter titles that say nothing about which chapter it is.
const CHAPTER_STOP: &[&str] = &[
    "disease",
    "diseases",
    "certain",
    "chapter",
    "system",
    "disorder",
    "disorders",
    "condition",
    "conditions",
    "belong",
    "found",
    "starting",
    "beginning",
    "letter",
    "other",
    "consequence",
];

fn chapter_words(s: &str) -> Vec<String> {
    icd10::title_words(s)
        .into_iter()
        .filter(|w| !CHAPTER_STOP.contains(&w.as_str()) && !w.chars().any(|c| c.is_ascii_digit()))
        .collect()
}

/// The chapter whose title shares the most content words with `words` (ties: none).
fn chapter_named<'k>(kb: &'k KnowledgeBase, words: &[String]) -> Option<&'k icd10::Icd10Node> {
    let mut best: Option<(&icd10::Icd10Node, usize)> = None;
    let mut tie = false;
    for ch in kb.icd.chapters() {
        let title = chapter_words(ch.title.rsplit_once('(').map_or(ch.title.as_str(), |t| t.0));
        let n = words.iter().filter(|w| title.contains(w)).count();
        if n == 0 {
            continue;
        }
        match best {
            Some((_, b)) if n < b => {}
            Some((_, b)) if n == b => tie = true,
            _ => {
                best = Some((ch, n));
                tie = false;
            }
        }
    }
    if tie { None } else { best.map(|b| b.0) }
}

/// Claims about ICD-10-CM chapters: "codes starting with J belong to the chapter on diseases of the
/// respiratory system", "I10 falls in chapter 9", "chapter 2 covers neoplasms", "pneumonia codes are in
/// chapter 10". The subject (a code, a code letter, a disease, or a chapter) is placed by the tabular list;
/// the claimed chapter is the number and/or the title the claim names.
fn chapter_claim(kb: &KnowledgeBase, original: &str, c: &Claim) -> Option<ClaimVerdict> {
    let letters = LETTER_CODES.captures_iter(original).filter_map(|x| {
        x.get(1)
            .or(x.get(2))
            .and_then(|m| m.as_str().chars().next())
    });
    let letters: Vec<char> = letters.collect();
    let num = CHAPTER_NUM.captures(original);
    if letters.is_empty() && num.is_none() && !c.has("chapter") {
        return None;
    }
    // What the claim says about: letters, a code, or a disease named before "codes".
    let code = ICD_CODE
        .captures_iter(original)
        .map(|x| x.get(1).unwrap())
        .find(|m| kb.icd.node(m.as_str()).is_some_and(|n| !n.is_chapter()));
    let mut subject: Vec<&icd10::Icd10Node> = Vec::new();
    let mut subject_text = String::new();
    for l in &letters {
        subject.extend(kb.icd.chapters_of_letter(*l));
    }
    if let Some(m) = code {
        subject.extend(kb.icd.chapter(m.as_str()));
        subject_text = m.as_str().to_string();
    }
    // The claimed chapter: its number, and the title words outside the subject.
    let mut rest = original.to_string();
    for x in LETTER_CODES.find_iter(original) {
        rest = rest.replace(x.as_str(), " ");
    }
    if !subject_text.is_empty() {
        rest = rest.replace(&subject_text, " ");
    }
    let num_chapter = num
        .as_ref()
        .and_then(|n| kb.icd.node(&n[1]).filter(|x| x.is_chapter()));
    if let (Some(num), None) = (&num, num_chapter) {
        let n = &num[1];
        return Some(verdict(
            flip(c.negated(), ClaimLabel::Refuted),
            format!("ICD-10-CM has no chapter {n} (chapters 1-22)"),
            None,
            Some(SRC),
        ));
    }
    if let Some(n) = &num {
        rest = rest.replace(n.get(0).unwrap().as_str(), " ");
    }
    if subject.is_empty() {
        // "Pneumonia codes are found in chapter 10": the disease before "codes".
        static BEFORE_CODES: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"(?i)^\s*(?:the\s+)?(.+?)\s+codes\b").unwrap());
        if let Some(x) = BEFORE_CODES.captures(original) {
            let words = icd10::title_words(&x[1]);
            // The chapter most of the disease's codes are in (pneumonia: chapter 10, though varicella
            // pneumonia is in chapter 1); a tie names none.
            let mut votes: std::collections::BTreeMap<String, usize> = Default::default();
            for n in kb.icd.titles_with_all(&words) {
                if !n.is_chapter()
                    && !n.is_block()
                    && let Some(ch) = kb.icd.chapter(&n.code)
                {
                    *votes.entry(ch.code.clone()).or_default() += 1;
                }
            }
            let mut ranked: Vec<(String, usize)> = votes.into_iter().collect();
            ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
            let top = match ranked.as_slice() {
                [only] => Some(&only.0),
                [a, b, ..] if a.1 > b.1 => Some(&a.0),
                _ => None,
            };
            if let Some(ch) = top {
                subject.extend(kb.icd.node(ch));
                rest = rest.replace(&x[1], " ");
            }
        }
    }
    let claimed_title = chapter_named(kb, &chapter_words(&rest));
    let mut claimed: Vec<&icd10::Icd10Node> = Vec::new();
    claimed.extend(num_chapter);
    claimed.extend(claimed_title);
    claimed.dedup_by(|a, b| a.code == b.code);
    if subject.is_empty() {
        // "Chapter 2 covers neoplasms": the number is the subject, the title the claim.
        let (Some(n), Some(t)) = (num_chapter, claimed_title) else {
            return None;
        };
        let label = if n.code == t.code {
            ClaimLabel::Supported
        } else {
            ClaimLabel::Refuted
        };
        return Some(verdict(
            flip(c.negated(), label),
            format!("chapter {} is \"{}\"", n.code, n.title),
            Some(&format!("icd10:{}", n.code)),
            Some(SRC),
        ));
    }
    if claimed.is_empty() {
        return None;
    }
    let inside = claimed
        .iter()
        .filter(|x| subject.iter().any(|s| s.code == x.code))
        .count();
    let label = if inside == claimed.len() {
        ClaimLabel::Supported
    } else if inside == 0 {
        ClaimLabel::Refuted
    } else {
        ClaimLabel::Uncertain
    };
    let what = subject
        .iter()
        .map(|s| format!("chapter {} \"{}\"", s.code, s.title))
        .collect::<Vec<_>>()
        .join(" and ");
    let subj = if !letters.is_empty() {
        let l: Vec<String> = letters.iter().map(char::to_string).collect();
        format!("codes starting with {} are", l.join(" or "))
    } else if !subject_text.is_empty() {
        format!("{subject_text} is")
    } else {
        "the codes named are".to_string()
    };
    Some(verdict(
        flip(c.negated(), label),
        format!("{subj} in {what}"),
        Some(&format!("icd10:{}", subject[0].code)),
        Some(SRC),
    ))
}

const SRC: &str = "CMS ICD-10-CM FY2026 tabular list";

fn flip(negated: bool, label: ClaimLabel) -> ClaimLabel {
    match (negated, label) {
        (true, ClaimLabel::Supported) => ClaimLabel::Refuted,
        (true, ClaimLabel::Refuted) => ClaimLabel::Supported,
        (_, l) => l,
    }
}

pub(super) fn icd_claim(kb: &KnowledgeBase, original: &str, c: &Claim) -> Option<ClaimVerdict> {
    if let Some(v) = chapter_claim(kb, original, c) {
        return Some(v);
    }
    let trimmed = original.trim_start();
    let lead = original.len() - trimmed.len();
    let m = ICD_CODE
        .captures_iter(original)
        .map(|x| x.get(1).unwrap())
        .find(|m| {
            // "B12" in "vitamin B12" is not a code: demand a dot, the word code / ICD, or the code opening the
            // claim ("K35 is acute appendicitis").
            m.as_str().contains('.')
                || c.has_any(&[
                    "code",
                    "icd",
                    "icd-10",
                    "icd10",
                    "icd-10-cm",
                    "coded",
                    "category",
                ])
                || (m.start() == lead && kb.icd.node(m.as_str()).is_some())
        })?;
    let code = m.as_str();
    // A negator the code's title itself holds ("site not specified", "not elsewhere classified") does not
    // negate the claim.
    let title_toks: Vec<String> = kb
        .icd
        .node(code)
        .into_iter()
        .chain(kb.icd.ancestors(code))
        .flat_map(|n| {
            crate::kb::text::tokens(&crate::kb::text::fold(&n.title))
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let negated = c
        .toks
        .iter()
        .any(|t| crate::kb::text::is_negator(t) && !title_toks.iter().any(|x| x == t));
    let flip = |label: ClaimLabel| match (negated, label) {
        (true, ClaimLabel::Supported) => ClaimLabel::Refuted,
        (true, ClaimLabel::Refuted) => ClaimLabel::Supported,
        (_, l) => l,
    };
    let rest = format!("{} {}", &original[..m.start()], &original[m.end()..]);
    let described: Vec<String> = icd10::title_words(&rest);
    let Some(node) = kb.icd.node(code).filter(|n| !n.is_chapter()) else {
        let cat: String = icd10::key(code).chars().take(3).collect();
        return Some(match kb.icd.node(&cat) {
            Some(cat_node) => uncertain(format!(
                "{code} is not in ICD-10-CM FY2026 (its category {} is \"{}\"); it may be a WHO ICD-10 code",
                cat_node.code, cat_node.title
            )),
            None => verdict(
                flip(ClaimLabel::Refuted),
                format!("{code} is not an ICD-10-CM code (no category {cat})"),
                None,
                Some("CMS ICD-10-CM FY2026"),
            ),
        });
    };
    let fact_id = format!("icd10:{}", node.code);
    let src = "CMS ICD-10-CM FY2026 tabular list";
    if described.is_empty() {
        return Some(verdict(
            flip(ClaimLabel::Supported),
            format!(
                "{} is a valid ICD-10-CM code: \"{}\"",
                node.code, node.title
            ),
            Some(&fact_id),
            Some(src),
        ));
    }
    let ancestors = kb.icd.ancestors(&node.code);
    // The words of the code's title, its category's and block's titles, and the inclusion terms of the code and
    // its category (which apply to every code under it): "C34.90 is lung cancer" is the inclusion term "Lung
    // cancer NOS".
    let covered: std::collections::HashSet<String> = std::iter::once(node)
        .chain(ancestors.iter().copied().filter(|a| !a.is_chapter()))
        .flat_map(|n| std::iter::once(&n.title).chain(&n.inclusions))
        .flat_map(|text| icd10::title_words(text))
        .collect();
    let missing: Vec<&String> = described.iter().filter(|w| !covered.contains(*w)).collect();
    if missing.is_empty() {
        return Some(verdict(
            flip(ClaimLabel::Supported),
            format!("{} is \"{}\"", node.code, node.title),
            Some(&fact_id),
            Some(src),
        ));
    }
    // A category claimed by the name of its unspecified code: "F32 is major depressive disorder, single episode"
    // (F32 is "Depressive episode" since FY2023; its codes F32.0-F32.9 are "Major depressive disorder, single
    // episode, <severity>", F32.9 the unspecified one). The ".9" child whose title says "unspecified" names
    // what the category holds by default.
    if !node.code.contains('.')
        && let Some(unspecified) = kb.icd.node(&format!("{}.9", node.code))
        && unspecified.title.to_lowercase().contains("unspecified")
    {
        let words: std::collections::HashSet<String> =
            icd10::title_words(&unspecified.title).into_iter().collect();
        if described.iter().all(|w| words.contains(w)) {
            return Some(verdict(
                flip(ClaimLabel::Supported),
                format!(
                    "{} is \"{}\"; its unspecified code {} is \"{}\"",
                    node.code, node.title, unspecified.code, unspecified.title
                ),
                Some(&fact_id),
                Some(src),
            ));
        }
    }
    // Does the description name some other code? Then this one is the wrong code.
    let related = |other: &icd10::Icd10Node| {
        other.code == node.code
            || ancestors.iter().any(|a| a.code == other.code)
            || kb
                .icd
                .ancestors(&other.code)
                .iter()
                .any(|a| a.code == node.code)
    };
    // The other code's title must hold the claim's words in the claim's order: "panic disorder without
    // agoraphobia" (F41.0) does not name F40.02 "Agoraphobia without panic disorder".
    let in_order = |n: &icd10::Icd10Node| {
        let mut title = icd10::title_words(&n.title).into_iter();
        described.iter().all(|w| title.any(|t| &t == w))
    };
    let alternative = kb
        .icd
        .titles_with_all(&described)
        .into_iter()
        .filter(|n| !n.is_block() && !n.is_chapter())
        .find(|n| !related(n) && in_order(n));
    Some(match alternative {
        Some(alt) => verdict(
            flip(ClaimLabel::Refuted),
            format!(
                "{} is \"{}\"; the description matches {} \"{}\"",
                node.code, node.title, alt.code, alt.title
            ),
            Some(&fact_id),
            Some(src),
        ),
        None => verdict(
            ClaimLabel::Uncertain,
            format!(
                "{} is \"{}\"; the claim's words {:?} are not in its title",
                node.code, node.title, missing
            ),
            Some(&fact_id),
            Some(src),
        ),
    })
}
