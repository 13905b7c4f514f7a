//! Doses (drug + number + mass unit, frequency, route) against the hand-written adult limits.
use super::{Claim, uncertain, verdict};
use crate::kb::text::{self, Mention, Quantity};
use crate::kb::{DrugRef, KnowledgeBase};
use regex::Regex;
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;
use std::sync::LazyLock;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Frequency {
    /// A single dose (no frequency given).
    Single,
    /// n doses a day of the amount.
    PerDay(f64),
    /// The amount is a daily total ("4 g per day").
    DailyTotal,
    Weekly,
}

static TIMES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:(once|twice|one|two|three|four|five|six|\d)\s*(?:times|x)?\s*(?:a|per|each|every)?\s*(?:day|daily)|(?:(once|twice|three times|four times)\s+(?:a|per)?\s*day)|\b(od|qd|bd|bid|tid|tds|qid|qds)\b)").unwrap()
});
static EVERY_HOURS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:every|q)\s*(\d+)(?:\s*-\s*\d+)?\s*(?:h|hr|hrs|hours?)\b").unwrap()
});
static PER_DAY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\b(?:per|a|each|every|/)\s*day\b|/\s*day\b|\bdaily\b|\bper\s*24\s*h|\bin\s*24\s*h|\bin\s+(?:a|one)\s+day\b|/24\s*h|\bday\b)").unwrap()
});
static WEEKLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:weekly|(?:per|a|each|every|once a|once per)\s*week)\b|/\s*week").unwrap()
});

fn frequency(after: &str) -> Frequency {
    if WEEKLY.is_match(after) {
        return Frequency::Weekly;
    }
    if let Some(m) = TIMES.captures(after) {
        let word = m
            .get(1)
            .or(m.get(2))
            .or(m.get(3))
            .map(|x| x.as_str())
            .unwrap_or("");
        let n = match word {
            "once" | "one" | "1" | "od" | "qd" => 1.0,
            "twice" | "two" | "2" | "bd" | "bid" => 2.0,
            "three" | "three times" | "3" | "tid" | "tds" => 3.0,
            "four" | "four times" | "4" | "qid" | "qds" => 4.0,
            "five" | "5" => 5.0,
            "six" | "6" => 6.0,
            w => w.parse().unwrap_or(1.0),
        };
        return Frequency::PerDay(n);
    }
    if let Some(m) = EVERY_HOURS.captures(after) {
        let h: f64 = m[1].parse().unwrap_or(24.0);
        if h > 0.0 {
            return Frequency::PerDay((24.0 / h).floor().max(1.0));
        }
    }
    if PER_DAY.is_match(after) {
        return Frequency::DailyTotal;
    }
    Frequency::Single
}

fn route_of(c: &Claim) -> Option<&'static str> {
    if c.has_any(&["iv", "intravenous", "intravenously", "infusion"]) {
        Some("iv")
    } else if c.has_any(&["im", "intramuscular", "intramuscularly"]) {
        Some("im")
    } else if c.has_any(&[
        "inhaled",
        "inhaler",
        "puff",
        "puffs",
        "nebulised",
        "nebulized",
        "inhalation",
    ]) {
        Some("inhaled")
    } else if c.has_any(&["sublingual", "sublingually", "under the tongue"]) {
        Some("sublingual")
    } else if c.has_any(&[
        "oral", "orally", "po", "by mouth", "tablet", "tablets", "capsule", "capsules",
    ]) {
        Some("oral")
    } else {
        None
    }
}

const LIMIT_CUES: &[&str] = &[
    "maximum",
    "max",
    "not exceed",
    "not to exceed",
    "no more than",
    "upper limit",
    "at most",
    "highest",
    "ceiling",
    "limit",
    "should not exceed",
    "must not exceed",
    "never exceed",
];

pub(super) fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub(super) fn dose_claim(
    kb: &KnowledgeBase,
    c: &Claim,
    drugs: &[Mention<DrugRef>],
) -> Option<ClaimVerdict> {
    let qs: Vec<Quantity> = text::quantities(c.folded)
        .into_iter()
        .filter(|q| text::to_mg(1.0, &q.unit).is_some())
        .collect();
    if qs.is_empty() {
        return None;
    }
    let dosed: Vec<&Mention<DrugRef>> = drugs.iter().filter(|d| d.value.drug.is_some()).collect();
    let first = &kb.drugs.drugs[dosed.first()?.value.drug?].name;
    if c.folded.contains("/kg") || c.has_any(&["per kg", "per kilogram", "mg/kg"]) {
        return Some(uncertain(format!(
            "{first}: weight-based doses are not in the knowledge base"
        )));
    }
    const PAEDIATRIC: &[&str] = &[
        "child",
        "children",
        "infant",
        "infants",
        "paediatric",
        "pediatric",
        "neonate",
        "neonates",
        "baby",
    ];
    if c.has_any(PAEDIATRIC) {
        return Some(uncertain(format!(
            "{first}: the knowledge base holds adult doses only"
        )));
    }
    let route = route_of(c);
    let limit_claim = c.has_any(LIMIT_CUES);
    // Negation outside the limit phrases ("should not take 8 g a day") turns a regimen into a warning.
    let negated = !limit_claim && c.negated();
    let mut labels = Vec::new();
    let mut evidence = Vec::new();
    let mut fact = None;
    for (qi, q) in qs.iter().enumerate() {
        // A quantity belongs to the nearest drug name, before or after it ("500 mg of ibuprofen and 1 g of
        // paracetamol").
        let owner = nearest_drug(c, &dosed, q);
        let drug = &kb.drugs.drugs[owner.value.drug.expect("dosed mentions name a drug")];
        let name = &drug.name;
        if drug.doses.is_empty() {
            labels.push(ClaimLabel::Uncertain);
            evidence.push(format!(
                "{name}: no dose limit in the knowledge base (no fixed adult maximum)"
            ));
            continue;
        }
        let limits: Vec<&crate::kb::DoseLimit> = match route {
            Some(r) => drug.doses.iter().filter(|d| d.route == r).collect(),
            None => drug.doses.iter().collect(),
        };
        if limits.is_empty() {
            labels.push(ClaimLabel::Uncertain);
            evidence.push(format!(
                "{name}: no {} dose limit in the knowledge base",
                route.unwrap_or("?")
            ));
            continue;
        }
        let next = qs.get(qi + 1).map(|n| n.start).unwrap_or(c.folded.len());
        let after = &c.folded[q.end..char_floor(c.folded, next.min(q.end + 60)).max(q.end)];
        let before =
            &c.folded[char_ceil(c.folded, q.start.saturating_sub(40)).min(q.start)..q.start];
        let mut freq = frequency(after);
        if freq == Frequency::Single && (PER_DAY.is_match(before) || before.contains("daily")) {
            freq = Frequency::DailyTotal;
        }
        if freq == Frequency::Single && WEEKLY.is_match(before) {
            freq = Frequency::Weekly;
        }
        let mg = text::to_mg(q.value, &q.unit).unwrap();
        let mut per_route = Vec::new();
        for lim in &limits {
            let unit_mg = text::to_mg(1.0, &lim.unit).unwrap();
            let fact_id = format!("drug:{name}:dose:{}", lim.route);
            let as_unit = |v: f64| format!("{} {}", fmt_num(v / unit_mg), lim.unit);
            let check =
                |amount_mg: f64, max: Option<f64>, what: &str| -> Option<(ClaimLabel, String)> {
                    let max_mg = max? * unit_mg;
                    let ok = amount_mg <= max_mg * (1.0 + 1e-9);
                    let label = if limit_claim {
                        if (amount_mg - max_mg).abs() <= 0.1 * max_mg {
                            ClaimLabel::Supported
                        } else if amount_mg > max_mg {
                            ClaimLabel::Refuted
                        } else {
                            // A lower ceiling may be right for a narrower use (OTC, elderly); the KB holds the highest.
                            ClaimLabel::Uncertain
                        }
                    } else if negated {
                        if ok {
                            ClaimLabel::Uncertain
                        } else {
                            ClaimLabel::Supported
                        }
                    } else if ok {
                        ClaimLabel::Supported
                    } else {
                        ClaimLabel::Refuted
                    };
                    Some((
                        label,
                        format!(
                            "{name} {} {what}: {} claimed vs maximum {}",
                            lim.route,
                            as_unit(amount_mg),
                            as_unit(max_mg)
                        ),
                    ))
                };
            let judged = if drug.is_weekly() {
                match freq {
                    Frequency::PerDay(_) | Frequency::DailyTotal if !negated => Some((
                        ClaimLabel::Refuted,
                        format!("{name} is taken once weekly, never daily"),
                    )),
                    Frequency::PerDay(_) | Frequency::DailyTotal => Some((
                        ClaimLabel::Supported,
                        format!("{name} is taken once weekly, never daily"),
                    )),
                    _ => check(mg, lim.max_weekly, "weekly dose"),
                }
            } else {
                match freq {
                    Frequency::Single if limit_claim && lim.max_single.is_none() => {
                        check(mg, lim.max_daily, "daily dose")
                    }
                    Frequency::Single if limit_claim => {
                        // "The maximum dose is 4 g" may mean the daily maximum.
                        let single = check(mg, lim.max_single, "single dose");
                        let daily = check(mg, lim.max_daily, "daily dose");
                        match (single, daily) {
                            (Some(s), _) if s.0 == ClaimLabel::Supported => Some(s),
                            (_, Some(d)) if d.0 == ClaimLabel::Supported => Some(d),
                            (s, d) => s.or(d),
                        }
                    }
                    Frequency::Single => check(mg, lim.max_single.or(lim.max_daily), "single dose"),
                    Frequency::PerDay(n) => {
                        let single = check(mg, lim.max_single, "single dose");
                        let daily = check(mg * n, lim.max_daily, "daily total");
                        worst(single, daily)
                    }
                    Frequency::DailyTotal => check(mg, lim.max_daily, "daily dose"),
                    Frequency::Weekly => check(
                        mg,
                        lim.max_weekly.or(lim.max_daily.map(|d| d * 7.0)),
                        "weekly dose",
                    ),
                }
            };
            if let Some((label, ev)) = judged {
                per_route.push((label, ev, fact_id, lim.source.clone()));
            }
        }
        if per_route.is_empty() {
            continue;
        }
        // Without a route, a dose is wrong only if it is wrong for every route the drug has.
        let label = if per_route.iter().all(|r| r.0 == per_route[0].0) {
            per_route[0].0
        } else if per_route.iter().any(|r| r.0 == ClaimLabel::Supported) && !limit_claim {
            if per_route.iter().any(|r| r.0 == ClaimLabel::Refuted) {
                ClaimLabel::Uncertain
            } else {
                ClaimLabel::Supported
            }
        } else {
            ClaimLabel::Uncertain
        };
        let chosen = per_route
            .iter()
            .find(|r| r.0 == label)
            .unwrap_or(&per_route[0]);
        fact.get_or_insert((chosen.2.clone(), chosen.3.clone()));
        evidence.push(chosen.1.clone());
        labels.push(label);
    }
    if labels.is_empty() {
        return None;
    }
    let label = if labels.contains(&ClaimLabel::Refuted) {
        ClaimLabel::Refuted
    } else if labels.iter().all(|l| *l == ClaimLabel::Supported) {
        ClaimLabel::Supported
    } else {
        ClaimLabel::Uncertain
    };
    let (fid, src) = fact.unzip();
    Some(verdict(
        label,
        evidence.join("; "),
        fid.as_deref(),
        src.as_deref(),
    ))
}

/// The drug mention closest to a quantity, measured in bytes to the nearer edge of each.
fn nearest_drug<'m>(
    c: &Claim,
    dosed: &[&'m Mention<DrugRef>],
    q: &Quantity,
) -> &'m Mention<DrugRef> {
    let distance = |m: &Mention<DrugRef>| {
        let start = c.byte_of(m.start);
        let end = c.byte_of(m.end - 1) + c.toks[m.end - 1].len();
        if end <= q.start {
            q.start - end
        } else if start >= q.end {
            // "1 g of paracetamol" binds to the drug after; otherwise the drug before wins a tie
            // ("paracetamol 1 g, ibuprofen 400 mg").
            if c.folded[q.end..start].trim() == "of" {
                0
            } else {
                start - q.end + 1
            }
        } else {
            0
        }
    };
    dosed
        .iter()
        .copied()
        .min_by_key(|m| distance(m))
        .expect("at least one dosed drug")
}

/// The largest char boundary at or before `i` (claims may hold non-ASCII text next to a dose).
fn char_floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest char boundary at or after `i`.
fn char_ceil(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn worst(
    a: Option<(ClaimLabel, String)>,
    b: Option<(ClaimLabel, String)>,
) -> Option<(ClaimLabel, String)> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let rank = |l: ClaimLabel| match l {
                ClaimLabel::Refuted => 0,
                ClaimLabel::Uncertain => 1,
                ClaimLabel::Supported => 2,
            };
            Some(if rank(a.0) <= rank(b.0) { a } else { b })
        }
        (a, b) => a.or(b),
    }
}
