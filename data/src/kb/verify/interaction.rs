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
    // Statements that the pair is harmless: no interaction, no effect, no added risk.
    const NONE: &[&str] = &[
        "no interaction",
        "no interactions",
        "no known interaction",
        "no known interactions",
        "not interact",
        "no significant interaction",
        "no drug interaction",
        "no drug-drug interaction",
        "no effect",
        "no effect on",
        "not affect",
        "doesn't affect",
        "no additional risk",
        "no added risk",
        "no extra risk",
        "no increased risk",
        "no risk",
        "without any increased risk",
        "without increased risk",
        "without any risk",
        "without risk",
        "without any problem",
        "without any problems",
        "without problems",
        "no problem",
        "no problems",
        "without any interaction",
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
    let safe = c.has_any(&["safe", "safely", "fine", "okay", "ok", "harmless"])
        && !c.has_any(&["not safe", "unsafe", "never safe"]);
    let together = c.has_any(&[
        "together",
        "combined",
        "combine",
        "combining",
        "combination",
        "co-administered",
        "coadministered",
        "co-prescribed",
        "concomitantly",
        "alongside",
        "with",
    ]);
    // An effect of the pair (a risk, a level that changes, a toxicity) or a warning against it.
    let effect = c.has_any(&[
        "avoid",
        "avoided",
        "dangerous",
        "unsafe",
        "risk",
        "risks",
        "toxicity",
        "toxic",
        "syndrome",
        "bleeding",
        "levels",
        "level",
        "concentrations",
        "effect",
        "effects",
        "effectiveness",
        "efficacy",
    ]) || c.toks.iter().any(|t| {
        [
            "increas",
            "rais",
            "reduc",
            "decreas",
            "lower",
            "caus",
            "potentiat",
            "inhibit",
            "prolong",
            "hyperkal",
            "hypotens",
            "myopath",
            "enhanc",
            "boost",
            "diminish",
            "weaken",
        ]
        .iter()
        .any(|p| t.starts_with(p))
    });
    if effect && !safe {
        return Some(DdiAssertion::Interacts(None));
    }
    if together || safe {
        return Some(if c.negated() && !safe {
            DdiAssertion::Interacts(None)
        } else if c.negated() {
            // "not safe to combine".
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
    let assertion = ddi_assertion(c)?;
    // The pair the claim is about: the first two different drugs, passing over a member named as an example of
    // a class before it ("macrolides such as erythromycin increase colchicine toxicity"), and preferring a pair
    // the thesaurus pairs.
    let mut pairs = Vec::new();
    for (i, x) in drugs.iter().enumerate() {
        for y in &drugs[i + 1..] {
            if x.value == y.value {
                continue;
            }
            let (kx, ky) = (kb.ddi_keys(x.value), kb.ddi_keys(y.value));
            // A class and a member of it named as its example are one subject, not a pair.
            if (!kx.is_empty() && kx.is_subset(&ky)) || (!ky.is_empty() && ky.is_subset(&kx)) {
                continue;
            }
            pairs.push((*x, *y, kx, ky));
        }
    }
    let chosen = pairs
        .iter()
        .position(|(_, _, kx, ky)| {
            !kx.is_empty() && !ky.is_empty() && kb.ddi.between_keys(kx, ky).is_some()
        })
        .unwrap_or(0);
    let (a, b, ka, kbk) = pairs.into_iter().nth(chosen)?;
    let b = &b;
    let name = |m: &Mention<DrugRef>| c.toks[m.start..m.end].join(" ");
    let (na, nb) = (name(&a), name(b));
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
        DdiAssertion::Interacts(None) => {
            match direction(kb, c, &a, b, &kb.ddi.all_between_keys(&ka, &kbk)) {
                Some(Direction::Reversed(raised)) => {
                    return Some(verdict(
                        ClaimLabel::Refuted,
                        format!(
                            "{ev} (the level that rises is that of {raised}, not the other way round)"
                        ),
                        Some(&i.fact_id),
                        Some(&i.source),
                    ));
                }
                _ => ClaimLabel::Supported,
            }
        }
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

/// What a claim of a rising level ("amiodarone increases digoxin levels") says against the thesaurus' mechanism.
enum Direction {
    /// The level the claim says rises is the one the mechanism names.
    Agrees,
    /// The mechanism names the other drug's level (its name).
    Reversed(String),
}

/// The thesaurus' French substance name behind a drug mention (None for a class).
fn substance_fr(kb: &KnowledgeBase, r: DrugRef) -> Option<String> {
    if let Some(i) = r.substance {
        return Some(kb.ddi.substances[i].fr.clone());
    }
    let d = &kb.drugs.drugs[r.drug?];
    kb.ddi
        .substances
        .iter()
        .find(|s| s.en == d.name || s.aliases.contains(&d.name))
        .map(|s| s.fr.clone())
}

/// Checks the direction of a "A raises B's level" claim when the mechanism says whose level rises
/// ("augmentation de la digoxinemie"); None when the claim or the mechanism does not say.
fn direction(
    kb: &KnowledgeBase,
    c: &Claim,
    a: &Mention<DrugRef>,
    b: &Mention<DrugRef>,
    rules: &[crate::kb::Interaction],
) -> Option<Direction> {
    let rises = c.toks.iter().any(|t| {
        ["increas", "rais", "boost", "elevat"]
            .iter()
            .any(|p| t.starts_with(p))
    });
    if !rises {
        return None;
    }
    const LEVEL: &[&str] = &[
        "level",
        "levels",
        "concentration",
        "concentrations",
        "toxicity",
    ];
    let object = |m: &Mention<DrugRef>| {
        c.toks.get(m.end).is_some_and(|t| LEVEL.contains(t))
            || (m.start >= 2 && c.toks[m.start - 1] == "of" && LEVEL.contains(&c.toks[m.start - 2]))
    };
    let (obj_a, obj_b) = (object(a), object(b));
    if obj_a == obj_b {
        return None;
    }
    let mech = rules
        .iter()
        .map(|r| text::fold(&r.mechanism_fr))
        .collect::<Vec<_>>()
        .join(" | ");
    // "digoxine" -> "digoxin" (digoxinemie), "lithium" -> "lith" (lithemie), "theophylline" -> "theophyllin".
    let raised = |m: &Mention<DrugRef>| -> bool {
        let Some(fr) = substance_fr(kb, m.value) else {
            return false;
        };
        let word = fr.split([' ', '(']).next().unwrap_or("");
        let stem = word
            .strip_suffix("ium")
            .or_else(|| word.strip_suffix('e'))
            .unwrap_or(word);
        if stem.len() < 4 {
            return false;
        }
        // The phrase that says whose level rises runs to the first punctuation ("augmentation de la
        // digoxinemie par diminution de la clairance de la digoxine." names digoxin only).
        mech.match_indices("augmentation d").any(|(at, _)| {
            let tail = &mech[at..];
            let end = tail.find(['.', ',', ';', '(']).unwrap_or(tail.len());
            tail[..end].contains(stem)
        })
    };
    let (up_a, up_b) = (raised(a), raised(b));
    if up_a == up_b {
        return None;
    }
    let name = |m: &Mention<DrugRef>| c.toks[m.start..m.end].join(" ");
    Some(if (obj_a && up_a) || (obj_b && up_b) {
        Direction::Agrees
    } else if up_a {
        Direction::Reversed(name(a))
    } else {
        Direction::Reversed(name(b))
    })
}
