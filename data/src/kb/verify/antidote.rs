//! "Naloxone is the antidote for opioid overdose" / "vitamin K reverses warfarin" against `antidotes.toml`.
use super::{Claim, verdict};
use crate::kb::KnowledgeBase;
use crate::kb::text::{self, Mention};
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;

/// Words that make a claim about an agent treating a poisoning (not about a drug causing toxicity).
fn asserts_antidote(c: &Claim) -> bool {
    const DIRECT: &[&str] = &[
        "antidote",
        "antidotes",
        "reversal",
        "counteracts",
        "counteract",
    ];
    const STATE: &[&str] = &[
        "overdose",
        "overdoses",
        "poisoning",
        "toxicity",
        "intoxication",
        "methaemoglobinaemia",
        "methemoglobinemia",
        "methaemoglobinemia",
        "hypoglycaemia",
        "hypoglycemia",
        "hyperthermia",
    ];
    const TREAT: &[&str] = &[
        "used",
        "use",
        "given",
        "give",
        "treat",
        "treats",
        "treated",
        "treatment",
        "treating",
        "manage",
        "managed",
        "management",
        "first-line",
    ];
    c.has_any(DIRECT)
        || c.toks.iter().any(|t| t.starts_with("revers"))
        || (c.has_any(TREAT) && (c.has_any(STATE) || c.has("in") || c.has("for")))
}

pub(super) fn antidote_claim(kb: &KnowledgeBase, c: &Claim) -> Option<ClaimVerdict> {
    if !asserts_antidote(c) {
        return None;
    }
    let poisons: Vec<Mention<usize>> = kb.poison_lex.find(&c.toks);
    let overlaps = |m: &Mention<usize>| {
        poisons
            .iter()
            .any(|p| m.start < p.end && p.start < m.end && (p.end - p.start) >= (m.end - m.start))
    };
    // An agent named inside a poison's name ("vitamin K" in "vitamin K antagonists") is the poison.
    let agents: Vec<Mention<usize>> = kb
        .agent_lex
        .find(&c.toks)
        .into_iter()
        .filter(|m| !overlaps(m))
        .collect();
    let agent = *agents.first()?;
    let poisons: Vec<&Mention<usize>> = poisons
        .iter()
        .filter(|p| p.end <= agent.start || p.start >= agent.end)
        .filter(|p| kb.antidotes.poisons[p.value].id != kb.antidotes.agents[agent.value].id)
        .collect();
    let poison = poisons
        .iter()
        .find(|p| kb.antidotes.pairing(agent.value, p.value).is_some())
        .or(poisons.first())?;
    let a = &kb.antidotes.agents[agent.value];
    let p = &kb.antidotes.poisons[poison.value];
    // "X is not the antidote for Y", "X does not reverse Y".
    let negated = c
        .toks
        .iter()
        .enumerate()
        .any(|(i, t)| text::is_negator(t) && i > agent.start.min(poison.start));
    let flip = |l: ClaimLabel| match (negated, l) {
        (true, ClaimLabel::Supported) => ClaimLabel::Refuted,
        (true, ClaimLabel::Refuted) => ClaimLabel::Supported,
        (_, l) => l,
    };
    Some(match kb.antidotes.pairing(agent.value, poison.value) {
        Some(r) => verdict(
            flip(ClaimLabel::Supported),
            format!("{} is listed for {}: {}", a.id, p.id, r.source),
            Some(&format!("antidote:{}:{}", p.id, a.id)),
            Some(&r.source),
        ),
        None => {
            let listed: Vec<&str> = p.antidotes.iter().map(|r| r.agent.as_str()).collect();
            let first = &p.antidotes[0];
            verdict(
                flip(ClaimLabel::Refuted),
                format!(
                    "{} is not an antidote for {}; the sources name {}",
                    a.id,
                    p.id,
                    listed.join(", ")
                ),
                Some(&format!("antidote:{}:{}", p.id, first.agent)),
                Some(&first.source),
            )
        }
    })
}
