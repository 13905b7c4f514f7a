//! Claim verification against the knowledge base. Each claim form has its own checker; the first checker
//! that recognises the claim and reaches a decision wins, and a claim no checker can decide is Uncertain.
//!
//! Negations and numbers with units are read, never ignored: "X is not contraindicated in Y" gets the
//! opposite verdict of "X is contraindicated in Y", and "5 mg" is compared as 5 mg, not as "a dose".
use super::drugs::{ConditionFinding, ConditionStatus, Drug};
use super::text::{self, Mention, Quantity};
use super::{DrugRef, Fact, KnowledgeBase, Severity, icd10};
use regex::Regex;
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;
use std::sync::LazyLock;

fn verdict(
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

fn uncertain(evidence: impl Into<String>) -> ClaimVerdict {
    verdict(ClaimLabel::Uncertain, evidence, None, None)
}

/// The claim after folding, with its tokens and their byte offsets.
struct Claim<'a> {
    folded: &'a str,
    toks: Vec<&'a str>,
    offsets: Vec<usize>,
    /// Tokens joined by single spaces, padded with a space at both ends, for phrase tests.
    joined: String,
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

    fn has(&self, phrase: &str) -> bool {
        self.joined.contains(&format!(" {phrase} "))
    }

    fn has_any(&self, phrases: &[&str]) -> bool {
        phrases.iter().any(|p| self.has(p))
    }

    /// Token index where `phrase` first starts.
    fn find(&self, phrase: &str) -> Option<usize> {
        let at = self.joined.find(&format!(" {phrase} "))?;
        Some(self.joined[..at + 1].matches(' ').count() - 1)
    }

    fn negated(&self) -> bool {
        self.toks.iter().any(|t| text::is_negator(t))
    }

    fn byte_of(&self, tok: usize) -> usize {
        self.offsets.get(tok).copied().unwrap_or(self.folded.len())
    }
}

pub(super) fn verify(kb: &KnowledgeBase, claim: &str) -> ClaimVerdict {
    let folded = text::fold(claim);
    let c = Claim::new(&folded);
    if c.toks.is_empty() {
        return uncertain("empty claim");
    }
    if let Some(v) = icd_claim(kb, claim, &c) {
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
        if two_drugs && keep(interaction_claim(kb, &c, &drugs)) {
            return best.unwrap();
        }
        let conds = kb.cond_lex.find(&c.toks);
        if !conds.is_empty() && keep(condition_claim(kb, &c, &drugs, &conds)) {
            return best.unwrap();
        }
        if keep(dose_claim(kb, &c, &drugs)) {
            return best.unwrap();
        }
    }
    if keep(lab_claim(kb, &c)) {
        return best.unwrap();
    }
    best.unwrap_or_else(|| uncertain("no knowledge-base fact covers this claim"))
}

// ====================================================================== ICD-10
static ICD_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b([A-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?)\b").unwrap());

fn icd_claim(kb: &KnowledgeBase, original: &str, c: &Claim) -> Option<ClaimVerdict> {
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

// ====================================================================== contraindications
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

fn subject_drug(kb: &KnowledgeBase, r: DrugRef) -> Option<Drug> {
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

fn condition_claim(
    kb: &KnowledgeBase,
    c: &Claim,
    drugs: &[Mention<DrugRef>],
    conds: &[Mention<usize>],
) -> Option<ClaimVerdict> {
    let cond_m = conds[0];
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
    let caution_any = findings
        .iter()
        .find(|f| f.status == ConditionStatus::Caution);
    let v = match assertion {
        Assertion::Contraindicated => {
            if let Some(f) = ci_wide {
                out(ClaimLabel::Supported, f)
            } else if let Some(f) = safe_wide {
                out(ClaimLabel::Refuted, f)
            } else if let Some(f) = ci_narrow.or(caution_any) {
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
            if let Some(f) = ci_wide.or(ci_narrow) {
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
            if let Some(f) = ci_wide.or(caution_any.filter(|f| wide(f))) {
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

// ====================================================================== interactions
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

fn interaction_claim(
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

// ====================================================================== doses
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

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn dose_claim(kb: &KnowledgeBase, c: &Claim, drugs: &[Mention<DrugRef>]) -> Option<ClaimVerdict> {
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
        let limits: Vec<&super::DoseLimit> = match route {
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

// ====================================================================== labs
fn lab_claim(kb: &KnowledgeBase, c: &Claim) -> Option<ClaimVerdict> {
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
            super::labs::convert(&lab.loinc, v, &q.unit, to)
        }
    };
    let describe = |r: &super::labs::RangeVariant| {
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
    let tol = |r: &super::labs::RangeVariant| {
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

// ====================================================================== facts
/// `drug:<name>:dose:<route>` and `drug:<name>:ci|caution|safe:<condition>` as facts.
pub(super) fn drug_fact(kb: &KnowledgeBase, id: &str, rest: &str) -> Option<Fact> {
    let mut parts = rest.splitn(3, ':');
    let (name, kind, what) = (parts.next()?, parts.next()?, parts.next()?);
    if kind == "dose" {
        let drug = kb.drugs.drug(name)?;
        let d = drug.doses.iter().find(|d| d.route == what)?;
        let lim =
            |label: &str, v: Option<f64>| v.map(|v| format!("{label} {} {}", fmt_num(v), d.unit));
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
        ConditionStatus::Caution => "needs caution in",
        ConditionStatus::Safe => "is considered acceptable in",
    };
    Some(Fact {
        id: id.into(),
        statement: format!("{name} {what} {condition}"),
        source: f.source,
    })
}
