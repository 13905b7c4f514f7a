//! `[data]`: cases, splits, the knowledge base. Owner: data.
use super::check;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Cases file or folder (JSONL or parquet). Default: the shipped cases.
    pub cases: Option<PathBuf>,
    /// Split file (`splits.json`: case ids per split). Default: `splits.json` next to the cases.
    pub splits: Option<PathBuf>,
    /// Which split trains: "train" | "validation" | "test".
    pub train_split: String,
    pub eval_split: String,
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
            train_split: "train".into(),
            eval_split: "validation".into(),
            max_cases: 0,
            departments: Vec::new(),
            rl_extra_per_diagnosis: 0,
            knowledge_base: None,
            redact_on_ingest: true,
        }
    }
}

impl DataSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let ok = |s: &str| ["train", "validation", "test"].contains(&s);
        check(
            ok(&self.train_split),
            "train_split",
            "must be train, validation or test",
        )?;
        check(
            ok(&self.eval_split),
            "eval_split",
            "must be train, validation or test",
        )
    }
}
