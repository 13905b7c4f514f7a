//! Claim verification against the knowledge base. Each claim form has its own checker; the first checker
//! that recognises the claim and reaches a decision wins, and a claim no checker can decide is Uncertain.
//!
//! Negations and numbers with units are read, never ignored: "X is not contraindicated in Y" gets the
//! opposite verdict of "X is contraindicated in Y", and "5 mg" is compared as 5 mg, not as "a dose".
mod antidote;
mod condition;
mod dose;
mod icd;
mod interaction;
mod lab;

use super::drugs::{ConditionStatus, Drug};
use super::text::{self, Mention};
use super::{DrugRef, Fact, KnowledgeBase};
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;

pub(super) fn verdict(
    label: ClaimLabel,
    evidence: impl Into<String>,
    fact_id: Option<&str>,
    source: Option<&str>,
) -> ClaimVerdict {
    let source = match (fact_id, source) {
        (Some(id), Some(src)) => Some(format!("{id} ({src})")),
        (Some(id), None) => Some(id.to_string()),
        (None, Some(src)) => Some(src.to_string()),
        (None, None) => None,
    };
    ClaimVerdict {
        label,
        evidence: evidence.into(),
        source,
    }
}

pub(super) fn uncertain(evidence: impl Into<String>) -> ClaimVerdict {
    verdict(ClaimLabel::Uncertain, evidence, None, None)
}

/// The claim after folding, with its tokens and their byte offsets.
pub(super) struct Claim<'a> {
    pub(super) folded: &'a str,
    pub(super) toks: Vec<&'a str>,
    pub(super) offsets: Vec<usize>,
    /// Tokens joined by single spaces, padded with a space at both ends, for phrase tests.
    pub(super) joined: String,
}

impl<'a> Claim<'a> {
    fn new(folded: &'a str) -> Self {
        let toks = text::tokens(folded);
        let offsets = toks
            .iter()
            .map(|t| t.as_ptr() as usize - folded.as_ptr() as usize)
            .collect();
        let joined = format!(" {} ", toks.join(" "));
        Claim {
            folded,
            toks,
            offsets,
            joined,
        }
    }

    pub(super) fn has(&self, phrase: &str) -> bool {
        self.joined.contains(&format!(" {phrase} "))
    }

    pub(super) fn has_any(&self, phrases: &[&str]) -> bool {
        phrases.iter().any(|p| self.has(p))
    }

    /// Token index where `phrase` first starts.
    pub(super) fn find(&self, phrase: &str) -> Option<usize> {
        let at = self.joined.find(&format!(" {phrase} "))?;
        Some(self.joined[..at + 1].matches(' ').count() - 1)
    }

    pub(super) fn negated(&self) -> bool {
        self.toks.iter().any(|t| text::is_negator(t))
    }

    pub(super) fn byte_of(&self, tok: usize) -> usize {
        self.offsets.get(tok).copied().unwrap_or(self.folded.len())
    }
}

pub(super) fn verify(kb: &KnowledgeBase, claim: &str) -> ClaimVerdict {
    let folded = text::fold(claim);
    let c = Claim::new(&folded);
    if c.toks.is_empty() {
        return uncertain("empty claim");
    }
    if let Some(v) = icd::icd_claim(kb, claim, &c) {
        return v;
    }
    // Before interactions: "vitamin K reverses warfarin" names two drugs but is about an antidote.
    if let Some(v) = antidote::antidote_claim(kb, &c) {
        return v;
    }
    let drugs: Vec<Mention<DrugRef>> = kb.drug_lex.find(&c.toks);
    let mut best: Option<ClaimVerdict> = None;
    let mut keep = |v: Option<ClaimVerdict>| -> bool {
        match v {
            Some(v) if v.label != ClaimLabel::Uncertain => {
                best = Some(v);
                true
            }
            Some(v) => {
                best.get_or_insert(v);
                false
            }
            None => false,
        }
    };
    if !drugs.is_empty() {
        // Two different drugs: an interaction claim first ("warfarin should not be combined with NSAIDs due to
        // bleeding risk" is about the pair, not about bleeding).
        let two_drugs = drugs.iter().any(|m| m.value != drugs[0].value);
        if two_drugs && keep(interaction::interaction_claim(kb, &c, &drugs)) {
            return best.unwrap();
        }
        let conds = kb.cond_lex.find(&c.toks);
        if !conds.is_empty() && keep(condition::condition_claim(kb, &c, &drugs, &conds)) {
            return best.unwrap();
        }
        if keep(dose::dose_claim(kb, &c, &drugs)) {
            return best.unwrap();
        }
    }
    if keep(lab::lab_claim(kb, &c)) {
        return best.unwrap();
    }
    best.unwrap_or_else(|| uncertain("no knowledge-base fact covers this claim"))
}

/// `drug:<name>:dose:<route>` and `drug:<name>:ci|caution|safe:<condition>` as facts.
pub(super) fn drug_fact(kb: &KnowledgeBase, id: &str, rest: &str) -> Option<Fact> {
    let mut parts = rest.splitn(3, ':');
    let (name, kind, what) = (parts.next()?, parts.next()?, parts.next()?);
    if kind == "dose" {
        let drug = kb.drugs.drug(name)?;
        let d = drug.doses.iter().find(|d| d.route == what)?;
        let lim = |label: &str, v: Option<f64>| {
            v.map(|v| format!("{label} {} {}", dose::fmt_num(v), d.unit))
        };
        let parts: Vec<String> = [
            lim("max single", d.max_single),
            lim("max daily", d.max_daily),
            lim("max weekly", d.max_weekly),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Some(Fact {
            id: id.into(),
            statement: format!("{name} ({}, adult): {}", d.route, parts.join(", ")),
            source: d.source.clone(),
        });
    }
    let condition = what.replace('_', " ");
    let subject = kb.drugs.drug(name).cloned().or_else(|| {
        kb.drugs
            .classes
            .iter()
            .find(|c| c.id == name)
            .map(|c| Drug {
                name: c.id.clone(),
                classes: vec![c.id.clone()],
                ..Default::default()
            })
    })?;
    let f = kb
        .drugs
        .findings(&subject, &condition)
        .into_iter()
        .find(|f| f.fact_id == id)?;
    let what = match f.status {
        ConditionStatus::Contraindicated => "is contraindicated in",
        ConditionStatus::Avoid => "is to be avoided in",
        ConditionStatus::Caution => "needs caution in",
        ConditionStatus::Safe => "is considered acceptable in",
    };
    Some(Fact {
        id: id.into(),
        statement: format!("{name} {what} {condition}"),
        source: f.source,
    })
}
