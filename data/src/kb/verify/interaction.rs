//! "X interacts with Y" / "X and Y can be taken together" against the ANSM thesaurus.
use super::{Claim, uncertain, verdict};
use crate::kb::text::{self, Mention};
use crate::kb::{DrugRef, KnowledgeBase, Severity};
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DdiAssertion {
    /// "X interacts with Y", "X should not be combined with Y"; with the severity the claim names, if any.
    Interacts(Option<Severity>),
    /// "X does not interact with Y", "no interaction between X and Y".
    NoInteraction,
    /// "X and Y can be taken together".
    Together,
}

fn ddi_assertion(c: &Claim) -> Option<DdiAssertion> {
    const NONE: &[&str] = &[
        "no interaction",
        "no interactions",
        "no known interaction",
        "no known interactions",
        "not interact",
        "no significant interaction",
        "no drug interaction",
        "no drug-drug interaction",
    ];
    if c.has_any(NONE)
        || c.toks
            .windows(2)
            .any(|w| text::is_negator(w[0]) && w[1].starts_with("interact"))
    {
        return Some(DdiAssertion::NoInteraction);
    }
    let interact_at = c.toks.iter().position(|t| t.starts_with("interact"));
    if let Some(i) = interact_at {
        if text::negated_before(&c.toks, i, 3) {
            return Some(DdiAssertion::NoInteraction);
        }
        return Some(DdiAssertion::Interacts(None));
    }
    if c.has_any(&["contraindicated", "contra-indicated", "contraindication"]) {
        let neg = c
            .find("contraindicated")
            .is_some_and(|i| text::negated_before(&c.toks, i, 3));
        return Some(if neg {
            DdiAssertion::Together
        } else {
            DdiAssertion::Interacts(Some(Severity::Contraindicated))
        });
    }
    if c.has("not recommended") {
        return Some(DdiAssertion::Interacts(Some(Severity::NotRecommended)));
    }
    let together = c.has_any(&[
        "together",
        "combined",
        "combine",
        "co-administered",
        "coadministered",
        "co-prescribed",
        "concomitantly",
        "alongside",
        "with",
    ]);
    let risky = c.has_any(&[
        "avoid",
        "avoided",
        "dangerous",
        "unsafe",
        "risk",
        "increases",
        "potentiates",
        "potentiate",
        "toxicity",
    ]);
    if risky && !c.has("safe") {
        return Some(DdiAssertion::Interacts(None));
    }
    if together {
        return Some(if c.negated() {
            DdiAssertion::Interacts(None)
        } else {
            DdiAssertion::Together
        });
    }
    None
}

pub(super) fn interaction_claim(
    kb: &KnowledgeBase,
    c: &Claim,
    drugs: &[Mention<DrugRef>],
) -> Option<ClaimVerdict> {
    let a = drugs[0];
    let b = drugs[1..].iter().find(|m| m.value != a.value)?;
    let name = |m: &Mention<DrugRef>| c.toks[m.start..m.end].join(" ");
    let (na, nb) = (name(&a), name(b));
    let ka = kb.ddi_keys(a.value);
    let kbk = kb.ddi_keys(b.value);
    let assertion = ddi_assertion(c)?;
    if ka.is_empty() || kbk.is_empty() {
        let unknown = if ka.is_empty() { &na } else { &nb };
        return Some(uncertain(format!(
            "{unknown} is not in the ANSM interaction thesaurus"
        )));
    }
    let found = kb.ddi.between_keys(&ka, &kbk);
    let Some(i) = found else {
        return Some(uncertain(format!(
            "the ANSM thesaurus lists no interaction between {na} and {nb} (absence is not proof of safety)"
        )));
    };
    let ev = format!(
        "ANSM: {na} + {nb} ({} + {}): {}. {}",
        i.rule_a,
        i.rule_b,
        i.severity.as_str(),
        i.mechanism_fr
    );
    let label = match assertion {
        DdiAssertion::Interacts(None) => ClaimLabel::Supported,
        DdiAssertion::Interacts(Some(claimed)) => {
            if claimed == i.severity {
                ClaimLabel::Supported
            } else if i.severity < claimed
                || (claimed == Severity::Contraindicated && i.severity == Severity::NotRecommended)
            {
                ClaimLabel::Uncertain
            } else {
                ClaimLabel::Refuted
            }
        }
        DdiAssertion::NoInteraction => ClaimLabel::Refuted,
        DdiAssertion::Together => {
            if i.severity <= Severity::NotRecommended {
                ClaimLabel::Refuted
            } else {
                ClaimLabel::Uncertain
            }
        }
    };
    Some(verdict(label, ev, Some(&i.fact_id), Some(&i.source)))
}
