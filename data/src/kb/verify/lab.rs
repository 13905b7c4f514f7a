//! Lab reference ranges: "normal potassium is 3.5-5.0 mmol/L", "a potassium of 6.5 mmol/L is high".
use super::{Claim, uncertain, verdict};
use crate::kb::KnowledgeBase;
use crate::kb::text::{self, Quantity};
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;

pub(super) fn lab_claim(kb: &KnowledgeBase, c: &Claim) -> Option<ClaimVerdict> {
    let m = *kb.lab_lex.find(&c.toks).first()?;
    let lab = &kb.labs.labs[m.value];
    let after_lab = c.byte_of(m.end);
    let qs: Vec<Quantity> = text::quantities(c.folded)
        .into_iter()
        .filter(|q| q.start >= after_lab || q.end <= c.byte_of(m.start))
        .collect();
    let q = qs
        .into_iter()
        .find(|q| !q.unit.is_empty() || q.value != 0.0)?;
    let sex = if c.has_any(&["men", "male", "males", "man"]) {
        Some("M")
    } else if c.has_any(&["women", "female", "females", "woman"]) {
        Some("F")
    } else {
        None
    };
    let variants: Vec<_> = lab
        .ranges
        .iter()
        .filter(|r| sex.is_none() || r.sex.is_none() || r.sex.as_deref() == sex)
        .collect();
    let fact_id = format!("lab:{}", lab.loinc);
    let src = kb.labs.source.as_str();
    let negated = c.negated();
    let flip = |l: ClaimLabel| match (negated, l) {
        (true, ClaimLabel::Supported) => ClaimLabel::Refuted,
        (true, ClaimLabel::Refuted) => ClaimLabel::Supported,
        (_, l) => l,
    };
    let conv = |v: f64, to: &str| -> Option<f64> {
        if q.unit.is_empty() {
            Some(v)
        } else {
            crate::kb::labs::convert(&lab.loinc, v, &q.unit, to)
        }
    };
    let describe = |r: &crate::kb::labs::RangeVariant| {
        format!(
            "{}{} reference range {}-{} {}",
            r.sex
                .as_deref()
                .map(|s| format!("{s} "))
                .unwrap_or_default(),
            lab.name,
            r.low,
            r.high,
            r.unit
        )
    };
    let tol = |r: &crate::kb::labs::RangeVariant| {
        (0.1 * (r.high - r.low))
            .max(0.02 * r.high.abs().max(r.low.abs()))
            .max(1e-9)
    };
    let mut results: Vec<(ClaimLabel, String)> = Vec::new();
    let before_q = &c.folded[..q.start];
    let upper_bound = [
        "below",
        "less than",
        "under",
        "<",
        "up to",
        "lower than",
        "at most",
        "no more than",
        "no higher than",
    ]
    .iter()
    .any(|w| before_q.trim_end().ends_with(w));
    let lower_bound = [
        "above",
        "greater than",
        "over",
        ">",
        "more than",
        "at least",
        "higher than",
    ]
    .iter()
    .any(|w| before_q.trim_end().ends_with(w));
    let normal_cue = c.has_any(&[
        "normal",
        "reference",
        "range",
        "healthy",
        "typical",
        "usual",
    ]);
    let high_cue = c.has_any(&["high", "elevated", "raised", "increased", "above normal"])
        || c.toks.iter().any(|t| t.starts_with("hyper"));
    let low_cue = c.has_any(&["low", "decreased", "reduced", "below normal"])
        || c.toks.iter().any(|t| t.starts_with("hypo"));
    let abnormal_cue = c.has("abnormal");
    for r in &variants {
        let (Some(lo), Some(hi)) = (conv(q.low, &r.unit), conv(q.value, &r.unit)) else {
            return Some(uncertain(format!(
                "cannot convert {} to {} for {}",
                q.unit, r.unit, lab.name
            )));
        };
        let t = tol(r);
        let band = |d: f64| {
            if d <= t {
                ClaimLabel::Supported
            } else if d > 3.0 * t {
                ClaimLabel::Refuted
            } else {
                ClaimLabel::Uncertain
            }
        };
        let label = if q.is_range {
            band((lo - r.low).abs().max((hi - r.high).abs()))
        } else if upper_bound && normal_cue {
            band((hi - r.high).abs())
        } else if lower_bound && normal_cue {
            band((hi - r.low).abs())
        } else {
            // A single value and what the claim calls it.
            let v = hi;
            let position = if v < r.low - t {
                "low"
            } else if v > r.high + t {
                "high"
            } else if (r.low..=r.high).contains(&v) {
                "normal"
            } else {
                "borderline"
            };
            let claimed = if abnormal_cue {
                "abnormal"
            } else if high_cue {
                "high"
            } else if low_cue {
                "low"
            } else if normal_cue {
                "normal"
            } else {
                return None;
            };
            match (claimed, position) {
                (_, "borderline") => ClaimLabel::Uncertain,
                ("abnormal", p) => {
                    if p == "normal" {
                        ClaimLabel::Refuted
                    } else {
                        ClaimLabel::Supported
                    }
                }
                (a, p) if a == p => ClaimLabel::Supported,
                _ => ClaimLabel::Refuted,
            }
        };
        results.push((flip(label), describe(r)));
    }
    let (label, ev) =
        if results.iter().any(|r| r.0 == ClaimLabel::Supported) && sex.is_none() && !q.is_range {
            // With sex-specific ranges and no sex named, a single value is judged against each; agreeing is needed.
            if results.iter().all(|r| r.0 == ClaimLabel::Supported) {
                results.swap_remove(0)
            } else {
                (
                    ClaimLabel::Uncertain,
                    results
                        .iter()
                        .map(|r| r.1.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            }
        } else if let Some(s) = results.iter().find(|r| r.0 == ClaimLabel::Supported) {
            s.clone()
        } else if results.iter().all(|r| r.0 == ClaimLabel::Refuted) {
            (
                ClaimLabel::Refuted,
                results
                    .iter()
                    .map(|r| r.1.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        } else {
            (
                ClaimLabel::Uncertain,
                results
                    .iter()
                    .map(|r| r.1.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
    Some(verdict(label, ev, Some(&fact_id), Some(src)))
}
