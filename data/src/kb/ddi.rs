//! Drug-drug interactions from the ANSM thesaurus (`interactions.json.gz`): rules between substances or
//! classes, with ANSM's four severity levels, and the substance index that puts substances in classes.
use serde::{Deserialize, Serialize};
use spar_core::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// ANSM severity, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// "Contre-indication".
    Contraindicated,
    /// "Association déconseillée".
    NotRecommended,
    /// "Précaution d'emploi".
    Precaution,
    /// "A prendre en compte".
    TakeIntoAccount,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Contraindicated => "contraindicated",
            Severity::NotRecommended => "not recommended",
            Severity::Precaution => "precaution for use",
            Severity::TakeIntoAccount => "to be taken into account",
        }
    }
}

/// A substance of the thesaurus index.
#[derive(Clone, Debug, Deserialize)]
pub struct Substance {
    /// Folded French name (the thesaurus key).
    pub fr: String,
    /// English INN (or the French name where no translation was made).
    pub en: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub rxnorm: Option<String>,
}

/// A thesaurus class (French name) and the English names claims use for it.
#[derive(Clone, Debug, Deserialize)]
pub struct ClassEntry {
    pub fr: String,
    #[serde(default)]
    pub en_aliases: Vec<String>,
}

/// One thesaurus entry: `a` + `b` (substances or classes) and what ANSM says about the pair.
#[derive(Clone, Debug, Deserialize)]
pub struct Rule {
    /// Substance or class (folded French).
    pub a: String,
    pub b: String,
    pub severity: Severity,
    #[serde(default)]
    pub levels: Vec<Severity>,
    /// ANSM's mechanism text (French).
    pub mechanism_fr: String,
}

#[derive(Debug, Deserialize)]
struct File {
    source: String,
    substances: Vec<Substance>,
    classes: Vec<ClassEntry>,
    rules: Vec<Rule>,
}

/// An interaction found between two named drugs.
#[derive(Clone, Debug)]
pub struct Interaction {
    pub severity: Severity,
    /// `"ddi:<a>|<b>"` (the thesaurus entries that matched, French).
    pub fact_id: String,
    pub rule_a: String,
    pub rule_b: String,
    pub mechanism_fr: String,
    pub source: String,
}

/// The loaded thesaurus with an index by (a, b).
#[derive(Debug, Default)]
pub struct Interactions {
    pub source: String,
    pub substances: Vec<Substance>,
    pub classes: Vec<ClassEntry>,
    rules: Vec<Rule>,
    /// (a, b) -> rule indices.
    index: HashMap<(String, String), Vec<usize>>,
    by_fr: HashMap<String, usize>,
}

impl Interactions {
    /// Reads `interactions.json.gz`; returns the raw bytes too (they enter the version hash).
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>)> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .map_err(|e| {
                Error::invalid(
                    path.display(),
                    format!("not gzip-compressed UTF-8 JSON: {e}"),
                )
            })?;
        let f: File = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(path.display(), e.to_string()))?;
        let mut out = Interactions {
            source: f.source,
            substances: f.substances,
            classes: f.classes,
            rules: f.rules,
            ..Default::default()
        };
        for (i, r) in out.rules.iter().enumerate() {
            out.index
                .entry((r.a.clone(), r.b.clone()))
                .or_default()
                .push(i);
        }
        for (i, s) in out.substances.iter().enumerate() {
            out.by_fr.insert(s.fr.clone(), i);
        }
        Ok((out, raw))
    }

    /// Number of thesaurus entries.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// A substance by folded French name.
    pub fn substance(&self, fr: &str) -> Option<&Substance> {
        self.by_fr.get(fr).map(|&i| &self.substances[i])
    }

    /// The thesaurus keys a substance answers to: itself and its classes.
    fn keys_of_substance(&self, fr: &str) -> HashSet<String> {
        let mut keys = HashSet::from([fr.to_string()]);
        if let Some(s) = self.substance(fr) {
            keys.extend(s.classes.iter().cloned());
        }
        keys
    }

    /// The strongest interaction between two sets of thesaurus keys (substance names and classes).
    pub fn between_keys(&self, a: &HashSet<String>, b: &HashSet<String>) -> Option<Interaction> {
        let mut best: Option<Interaction> = None;
        for ka in a {
            for kb in b {
                for (x, y) in [(ka, kb), (kb, ka)] {
                    for &i in self
                        .index
                        .get(&(x.clone(), y.clone()))
                        .into_iter()
                        .flatten()
                    {
                        let r = &self.rules[i];
                        if best.as_ref().is_none_or(|bst| r.severity < bst.severity) {
                            best = Some(Interaction {
                                severity: r.severity,
                                fact_id: format!("ddi:{}|{}", r.a, r.b),
                                rule_a: r.a.clone(),
                                rule_b: r.b.clone(),
                                mechanism_fr: r.mechanism_fr.clone(),
                                source: self.source.clone(),
                            });
                        }
                    }
                }
            }
        }
        best
    }

    /// The classes every member of `class` also belongs to (ANSM's classes nest: every vitamin K antagonist is an
    /// oral anticoagulant), so a rule written for the wider class reaches a claim about the narrower one. Only
    /// for classes of two members or more: one member says nothing about the class.
    pub fn enclosing_classes(&self, class: &str) -> HashSet<String> {
        let mut members = self
            .substances
            .iter()
            .filter(|s| s.classes.iter().any(|c| c == class));
        let (Some(first), Some(_)) = (members.next(), members.clone().next()) else {
            return HashSet::new();
        };
        let mut common: HashSet<String> = first.classes.iter().cloned().collect();
        for s in members {
            common.retain(|c| s.classes.contains(c));
        }
        common.remove(class);
        common
    }

    /// Every rule between two sets of thesaurus keys, strongest first (a pair may have several: a class rule and
    /// a substance rule with different mechanisms).
    pub fn all_between_keys(&self, a: &HashSet<String>, b: &HashSet<String>) -> Vec<Interaction> {
        let mut out: Vec<Interaction> = Vec::new();
        for ka in a {
            for kb in b {
                for (x, y) in [(ka, kb), (kb, ka)] {
                    for &i in self
                        .index
                        .get(&(x.clone(), y.clone()))
                        .into_iter()
                        .flatten()
                    {
                        let r = &self.rules[i];
                        out.push(Interaction {
                            severity: r.severity,
                            fact_id: format!("ddi:{}|{}", r.a, r.b),
                            rule_a: r.a.clone(),
                            rule_b: r.b.clone(),
                            mechanism_fr: r.mechanism_fr.clone(),
                            source: self.source.clone(),
                        });
                    }
                }
            }
        }
        out.sort_by(|p, q| p.severity.cmp(&q.severity).then(p.fact_id.cmp(&q.fact_id)));
        out.dedup_by(|p, q| p.fact_id == q.fact_id);
        out
    }

    /// Keys for a substance given by folded French name, or a class name.
    pub fn keys(&self, fr_or_class: &str) -> HashSet<String> {
        if self.by_fr.contains_key(fr_or_class) {
            self.keys_of_substance(fr_or_class)
        } else {
            HashSet::from([fr_or_class.to_string()])
        }
    }
}
