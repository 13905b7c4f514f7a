//! "J18.9 is the ICD-10 code for pneumonia": the code must exist and its title must cover the words.
use super::{Claim, uncertain, verdict};
use crate::kb::{KnowledgeBase, icd10};
use regex::Regex;
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;
use std::sync::LazyLock;

static ICD_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b([A-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?)\b").unwrap());

pub(super) fn icd_claim(kb: &KnowledgeBase, original: &str, c: &Claim) -> Option<ClaimVerdict> {
    let m = ICD_CODE
        .captures_iter(original)
        .map(|x| x.get(1).unwrap())
        .find(|m| {
            // "B12" in "vitamin B12" is not a code: demand a dot or the word code / ICD.
            m.as_str().contains('.')
                || c.has_any(&["code", "icd", "icd-10", "icd10", "icd-10-cm", "coded"])
        })?;
    let code = m.as_str();
    let negated = c.negated();
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
    let mut covered: std::collections::HashSet<String> =
        icd10::title_words(&node.title).into_iter().collect();
    for a in ancestors.iter().filter(|a| !a.is_chapter()) {
        covered.extend(icd10::title_words(&a.title));
    }
    let missing: Vec<&String> = described.iter().filter(|w| !covered.contains(*w)).collect();
    if missing.is_empty() {
        return Some(verdict(
            flip(ClaimLabel::Supported),
            format!("{} is \"{}\"", node.code, node.title),
            Some(&fact_id),
            Some(src),
        ));
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
    let alternative = kb
        .icd
        .titles_with_all(&described)
        .into_iter()
        .filter(|n| !n.is_block() && !n.is_chapter())
        .find(|n| !related(n));
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
