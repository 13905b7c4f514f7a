//! "X is contraindicated in Y" / "X is safe in Y" / "use X with caution in Y".
use super::{Claim, uncertain, verdict};
use crate::kb::drugs::{ConditionFinding, ConditionStatus, Drug};
use crate::kb::text::{self, Mention};
use crate::kb::{DrugRef, KnowledgeBase};
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Assertion {
    Contraindicated,
    Safe,
    Caution,
}

const CONTRA_NEGATIVE_BUILTIN: &[&str] = &[
    "should not be",
    "must not be",
    "must not",
    "should never",
    "never be",
    "cannot be used",
    "can't be used",
    "cannot be given",
    "cannot be taken",
    "can not be used",
    "not be used",
    "not be given",
    "not be taken",
];
const CONTRA: &[&str] = &[
    "contraindicated",
    "contra-indicated",
    "contraindication",
    "contra-indication",
    "avoid",
    "avoided",
    "unsafe",
    "dangerous",
    "harmful",
    "prohibited",
    "not recommended",
];
const SAFE: &[&str] = &[
    "safe",
    "safely",
    "can be used",
    "may be used",
    "can be given",
    "may be given",
    "can be taken",
    "may be taken",
    "can take",
    "can use",
    "compatible",
    "acceptable",
    "is fine",
    "fine",
    "recommended",
    "is ok",
    "okay",
    "first-line",
    "first choice",
    "first-choice",
    "preferred",
    "appropriate",
];
const CAUTION: &[&str] = &[
    "caution",
    "cautiously",
    "with care",
    "carefully",
    "relatively contraindicated",
    "relative contraindication",
    "monitor",
    "monitoring",
    "dose adjustment",
    "dose reduction",
    "reduced dose",
];

/// What the claim asserts about a drug in a condition; `None` when it mixes opposite cues or has none.
fn condition_assertion(c: &Claim) -> Option<Assertion> {
    if c.has_any(CAUTION) && !c.has("contraindicated") {
        return Some(Assertion::Caution);
    }
    let mut votes = Vec::new();
    for p in CONTRA_NEGATIVE_BUILTIN {
        if c.has(p) {
            votes.push(Assertion::Contraindicated);
        }
    }
    if votes.is_empty() {
        for p in CONTRA {
            if let Some(i) = c.find(p) {
                let neg = text::negated_before(&c.toks, i, 3);
                votes.push(if neg {
                    Assertion::Safe
                } else {
                    Assertion::Contraindicated
                });
            }
        }
        for p in SAFE {
            if let Some(i) = c.find(p) {
                let neg = text::negated_before(&c.toks, i, 3);
                votes.push(if neg {
                    Assertion::Contraindicated
                } else {
                    Assertion::Safe
                });
            }
        }
    }
    let first = *votes.first()?;
    votes.iter().all(|v| *v == first).then_some(first)
}

pub(super) fn subject_drug(kb: &KnowledgeBase, r: DrugRef) -> Option<Drug> {
    if let Some(i) = r.drug {
        return Some(kb.drugs.drugs[i].clone());
    }
    let cls = &kb.drugs.classes[r.class?];
    Some(Drug {
        name: cls.id.clone(),
        classes: vec![cls.id.clone()],
        ..Default::default()
    })
}

pub(super) fn condition_claim(
    kb: &KnowledgeBase,
    c: &Claim,
    drugs: &[Mention<DrugRef>],
    conds: &[Mention<usize>],
) -> Option<ClaimVerdict> {
    let cond_m = conds[0];
    // "children over 3 months", "adults over 65": the age named is outside the condition, not inside it.
    if c.toks
        .get(cond_m.end)
        .is_some_and(|t| matches!(*t, "over" | "older" | "above" | "aged" | "from"))
    {
        return None;
    }
    let condition = &kb.drugs.conditions[cond_m.value];
    // The subject: the first drug mention that is not the condition itself ("nitroglycerin" is both).
    let subject = drugs
        .iter()
        .find(|d| d.end <= cond_m.start || d.start >= cond_m.end)?;
    let drug = subject_drug(kb, subject.value)?;
    let assertion = condition_assertion(c)?;
    let findings = kb.drugs.findings(&drug, &condition.id);
    let wide = |f: &&ConditionFinding| kb.drugs.is_within(&condition.id, &f.condition);
    let narrow = |f: &&ConditionFinding| !kb.drugs.is_within(&condition.id, &f.condition);
    let pick = |st: ConditionStatus,
                scope: &dyn Fn(&&ConditionFinding) -> bool|
     -> Option<&ConditionFinding> {
        findings
            .iter()
            .filter(|f| f.status == st)
            .find(|f| scope(f))
    };
    let say = |f: &ConditionFinding| {
        let what = match f.status {
            ConditionStatus::Contraindicated => "contraindicated",
            ConditionStatus::Avoid => "to be avoided",
            ConditionStatus::Caution => "to be used with caution",
            ConditionStatus::Safe => "considered acceptable",
        };
        let via = f
            .via_class
            .as_ref()
            .map(|c| format!(" (as a member of {c})"))
            .unwrap_or_default();
        format!(
            "{} is {what} in {}{via}: {}",
            drug.name, f.condition, f.source
        )
    };
    let out = |label: ClaimLabel, f: &ConditionFinding| {
        verdict(label, say(f), Some(&f.fact_id), Some(&f.source))
    };
    let ci_wide = pick(ConditionStatus::Contraindicated, &wide);
    let ci_narrow = pick(ConditionStatus::Contraindicated, &narrow);
    let safe_wide = pick(ConditionStatus::Safe, &wide);
    // A guideline's "avoid" (Beers) supports "should be avoided" and refutes "safe", but a claim that says
    // "contraindicated" overstates it.
    let avoid_wide = pick(ConditionStatus::Avoid, &wide);
    let avoid_any = findings.iter().find(|f| f.status == ConditionStatus::Avoid);
    let strong = c.has_any(&[
        "contraindicated",
        "contra-indicated",
        "contraindication",
        "contra-indication",
    ]);
    let caution_any = findings
        .iter()
        .find(|f| f.status == ConditionStatus::Caution);
    let v = match assertion {
        Assertion::Contraindicated => {
            if let Some(f) = ci_wide {
                out(ClaimLabel::Supported, f)
            } else if let Some(f) = safe_wide {
                out(ClaimLabel::Refuted, f)
            } else if let Some(f) = avoid_wide.filter(|_| !strong) {
                out(ClaimLabel::Supported, f)
            } else if let Some(f) = ci_narrow.or(avoid_any).or(caution_any) {
                verdict(
                    ClaimLabel::Uncertain,
                    format!(
                        "not listed as contraindicated in {}; {}",
                        condition.id,
                        say(f)
                    ),
                    Some(&f.fact_id),
                    Some(&f.source),
                )
            } else {
                uncertain(format!(
                    "no knowledge-base statement on {} in {}",
                    drug.name, condition.id
                ))
            }
        }
        Assertion::Safe => {
            if let Some(f) = ci_wide.or(ci_narrow).or(avoid_any) {
                out(ClaimLabel::Refuted, f)
            } else if let Some(f) = safe_wide {
                out(ClaimLabel::Supported, f)
            } else if let Some(f) = caution_any {
                verdict(
                    ClaimLabel::Uncertain,
                    say(f),
                    Some(&f.fact_id),
                    Some(&f.source),
                )
            } else {
                uncertain(format!(
                    "no knowledge-base statement on {} in {}",
                    drug.name, condition.id
                ))
            }
        }
        Assertion::Caution => {
            if let Some(f) = ci_wide.or(avoid_wide).or(caution_any.filter(|f| wide(f))) {
                out(ClaimLabel::Supported, f)
            } else {
                uncertain(format!(
                    "no caution or contraindication listed for {} in {}",
                    drug.name, condition.id
                ))
            }
        }
    };
    Some(v)
}
