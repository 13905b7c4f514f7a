//! Hand-written adult dose limits, contraindications, cautions and explicit "safe in" statements
//! (`drugs.toml`; every entry names its source).
use serde::Deserialize;
use spar_core::{Error, Result};
use std::path::Path;

/// A patient condition a contraindication refers to (pregnancy, severe renal impairment ...).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A wider condition that contains this one (third trimester -> pregnancy).
    #[serde(default)]
    pub parent: Option<String>,
}

/// A condition statement about a drug or class, with its source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionRef {
    pub condition: String,
    pub source: String,
}

/// A drug class whose statements every member inherits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrugClass {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub contraindications: Vec<ConditionRef>,
    #[serde(default)]
    pub cautions: Vec<ConditionRef>,
    #[serde(default)]
    pub safe_in: Vec<ConditionRef>,
    /// To be avoided in a named guideline without being contraindicated (AGS Beers criteria for older adults).
    #[serde(default)]
    pub avoid_in: Vec<ConditionRef>,
}

/// Adult dose limits for one route, in `unit` (mg, g or mcg).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoseLimit {
    /// oral | iv | im | inhaled | sublingual
    pub route: String,
    pub unit: String,
    pub max_single: Option<f64>,
    pub max_daily: Option<f64>,
    pub max_weekly: Option<f64>,
    pub source: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// A hand-written drug entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drug {
    /// English INN, lower case.
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub classes: Vec<String>,
    /// "weekly" for drugs given once a week (methotrexate): any daily regimen is wrong.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub doses: Vec<DoseLimit>,
    #[serde(default)]
    pub contraindications: Vec<ConditionRef>,
    #[serde(default)]
    pub cautions: Vec<ConditionRef>,
    #[serde(default)]
    pub safe_in: Vec<ConditionRef>,
    /// To be avoided in a named guideline without being contraindicated (AGS Beers criteria for older adults).
    #[serde(default)]
    pub avoid_in: Vec<ConditionRef>,
}

impl Drug {
    /// Given once a week (methotrexate).
    pub fn is_weekly(&self) -> bool {
        self.schedule.as_deref() == Some("weekly")
    }
}

/// (inherited from class, contraindications, cautions, safe_in, avoid_in) of one drug or class.
type StatementLists<'a> = (
    Option<&'a str>,
    &'a [ConditionRef],
    &'a [ConditionRef],
    &'a [ConditionRef],
    &'a [ConditionRef],
);

/// The parsed `drugs.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrugTable {
    #[serde(default, rename = "condition")]
    pub conditions: Vec<Condition>,
    #[serde(default, rename = "class")]
    pub classes: Vec<DrugClass>,
    #[serde(default, rename = "drug")]
    pub drugs: Vec<Drug>,
}

/// What the table says about a drug and a condition, strongest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    Contraindicated,
    /// "Avoid" in a guideline (potentially inappropriate), weaker than a contraindication.
    Avoid,
    Caution,
    Safe,
}

/// One statement found for (drug, condition): its status, fact id and source.
#[derive(Clone, Debug)]
pub struct ConditionFinding {
    pub status: ConditionStatus,
    /// The condition the statement names (may be narrower or wider than the one asked about).
    pub condition: String,
    pub fact_id: String,
    pub source: String,
    /// Inherited from this class ("nsaid"), if not the drug's own statement.
    pub via_class: Option<String>,
}

impl DrugTable {
    /// Reads and checks `drugs.toml`; returns the raw bytes too (they enter the version hash).
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>)> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&raw)
            .map_err(|e| Error::invalid(path.display(), format!("not UTF-8: {e}")))?;
        let table: DrugTable =
            toml::from_str(text).map_err(|e| Error::invalid(path.display(), e.to_string()))?;
        table.check(path)?;
        Ok((table, raw))
    }

    /// Every reference resolves and every number is usable; errors name the drug and field.
    fn check(&self, path: &Path) -> Result<()> {
        let file = path.display().to_string();
        let bad = |field: String, msg: String| Error::Field {
            file: file.clone(),
            line: 0,
            field,
            msg,
        };
        let cond_known = |c: &str| self.conditions.iter().any(|x| x.id == c);
        for c in &self.conditions {
            if let Some(p) = &c.parent
                && !cond_known(p)
            {
                return Err(bad(
                    format!("condition.{}.parent", c.id),
                    format!("unknown condition `{p}`"),
                ));
            }
        }
        let refs = |owner: &str, kind: &str, list: &[ConditionRef]| -> Result<()> {
            for r in list {
                if !cond_known(&r.condition) {
                    return Err(bad(
                        format!("{owner}.{kind}"),
                        format!("unknown condition `{}`", r.condition),
                    ));
                }
            }
            Ok(())
        };
        for c in &self.classes {
            let owner = format!("class.{}", c.id);
            refs(&owner, "contraindications", &c.contraindications)?;
            refs(&owner, "cautions", &c.cautions)?;
            refs(&owner, "safe_in", &c.safe_in)?;
            refs(&owner, "avoid_in", &c.avoid_in)?;
        }
        for d in &self.drugs {
            let owner = format!("drug.{}", d.name);
            refs(&owner, "contraindications", &d.contraindications)?;
            refs(&owner, "cautions", &d.cautions)?;
            refs(&owner, "safe_in", &d.safe_in)?;
            refs(&owner, "avoid_in", &d.avoid_in)?;
            for c in &d.classes {
                if !self.classes.iter().any(|x| &x.id == c) {
                    return Err(bad(
                        format!("{owner}.classes"),
                        format!("unknown class `{c}`"),
                    ));
                }
            }
            for dose in &d.doses {
                if super::text::to_mg(1.0, &dose.unit).is_none() {
                    return Err(bad(
                        format!("{owner}.doses.unit"),
                        format!("`{}` is not mg, g or mcg", dose.unit),
                    ));
                }
                let limits = [dose.max_single, dose.max_daily, dose.max_weekly];
                if limits.iter().all(Option::is_none)
                    || limits.iter().flatten().any(|v| v.is_nan() || *v <= 0.0)
                {
                    return Err(bad(
                        format!("{owner}.doses"),
                        "needs a positive max_single, max_daily or max_weekly".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A drug by its INN (`name`), not by alias.
    pub fn drug(&self, name: &str) -> Option<&Drug> {
        self.drugs.iter().find(|d| d.name == name)
    }

    /// A condition by id.
    pub fn condition(&self, id: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.id == id)
    }

    /// Statements about `drug` for `condition`, its wider conditions (a contraindication in pregnancy covers
    /// the third trimester) and its narrower ones (reported with their own condition name).
    pub fn findings(&self, drug: &Drug, condition: &str) -> Vec<ConditionFinding> {
        let mut sources: Vec<StatementLists> = vec![(
            None,
            &drug.contraindications,
            &drug.cautions,
            &drug.safe_in,
            &drug.avoid_in,
        )];
        for c in &drug.classes {
            if let Some(cls) = self.classes.iter().find(|x| &x.id == c) {
                sources.push((
                    Some(cls.id.as_str()),
                    &cls.contraindications,
                    &cls.cautions,
                    &cls.safe_in,
                    &cls.avoid_in,
                ));
            }
        }
        let related = |c: &str| {
            c == condition || self.is_within(condition, c) || self.is_within(c, condition)
        };
        let mut out = Vec::new();
        for (via, ci, caution, safe, avoid) in sources {
            for (status, list, tag) in [
                (ConditionStatus::Contraindicated, ci, "ci"),
                (ConditionStatus::Avoid, avoid, "avoid"),
                (ConditionStatus::Caution, caution, "caution"),
                (ConditionStatus::Safe, safe, "safe"),
            ] {
                for r in list.iter().filter(|r| related(&r.condition)) {
                    out.push(ConditionFinding {
                        status: status.clone(),
                        condition: r.condition.clone(),
                        fact_id: format!(
                            "drug:{}:{tag}:{}",
                            drug.name,
                            r.condition.replace(' ', "_")
                        ),
                        source: r.source.clone(),
                        via_class: via.map(str::to_string),
                    });
                }
            }
        }
        out
    }

    /// True when `narrow` is `wide` or lies inside it through `parent` links.
    pub fn is_within(&self, narrow: &str, wide: &str) -> bool {
        let mut cur = Some(narrow);
        let mut hops = 0;
        while let Some(c) = cur {
            if c == wide {
                return true;
            }
            hops += 1;
            if hops > 16 {
                return false;
            }
            cur = self.condition(c).and_then(|x| x.parent.as_deref());
        }
        false
    }
}
