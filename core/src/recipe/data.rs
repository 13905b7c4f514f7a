//! `[data]`: cases, splits, the knowledge base. Owner: data.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

recipe_enum! {
    /// Which split a case belongs to (`data.train_split`, `data.eval_split`, `eval.split`; the lists of
    /// `splits.json`).
    pub enum Split {
        /// Training cases (the same diagnoses as validation, other patients).
        Train = "train",
        /// Held-out patients of the training diagnoses.
        Validation = "validation",
        /// Held-out diagnoses: no test diagnosis appears in train or validation.
        Test = "test",
    }
}

impl Split {
    /// Parses a command-line split name: `train`, `validation` (or `val`, `valid`) and `test`, any case.
    /// Recipes accept only the exact spellings.
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "validation" | "val" | "valid" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Cases file or folder (JSONL or parquet). Default: the shipped cases.
    pub cases: Option<PathBuf>,
    /// Split file (`splits.json`: case ids per split). Default: `splits.json` next to the cases.
    pub splits: Option<PathBuf>,
    /// Which split trains.
    pub train_split: Split,
    /// Which split `spar eval` and the held-out evaluations of `spar train` use when `[eval] split` is absent.
    pub eval_split: Split,
    /// Use at most this many cases (0 = all).
    pub max_cases: usize,
    /// Keep only the cases of these departments (`Case::department`; empty = every department). A small run
    /// learns a few departments well instead of every one badly (the CPU demo).
    pub departments: Vec<String>,
    /// RL also plays this many fresh synthetic patients per training diagnosis (0 = none): new patients from the
    /// case generator's disease table under their own seed, never in SFT, evaluation or the shipped splits. RL then
    /// meets patients its SFT model has not memorised, as held-out patients are.
    pub rl_extra_per_diagnosis: usize,
    /// Knowledge-base file; default: the shipped one.
    pub knowledge_base: Option<PathBuf>,
    /// Redact PHI when cases are ingested.
    pub redact_on_ingest: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            cases: None,
            splits: None,
            train_split: Split::Train,
            eval_split: Split::Validation,
            max_cases: 0,
            departments: Vec::new(),
            rl_extra_per_diagnosis: 0,
            knowledge_base: None,
            redact_on_ingest: true,
        }
    }
}

impl DataSection {
    /// Every value is checked by its type; kept so that each section has a validator.
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}
