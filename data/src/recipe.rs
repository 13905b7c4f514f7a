//! Cases as a recipe's `[data]` section asks for them: the training split and the evaluation split.
use crate::splits::{Split, load_split};
use spar_core::recipe::DataSection;
use spar_core::{Case, Error, Result};
use std::path::{Path, PathBuf};

/// The case file or folder the section names (relative paths resolve against `base`, the recipe's folder),
/// or the shipped cases ([`crate::shipped::cases_dir`]; an error only when those cannot be provided).
pub fn cases_path(section: &DataSection, base: Option<&Path>) -> Result<PathBuf> {
    match &section.cases {
        Some(p) => Ok(resolve(p, base)),
        None => crate::shipped::cases_dir(),
    }
}

fn resolve(p: &Path, base: Option<&Path>) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

/// The cases of `split`, at most `max_cases` of them (0 = all), in file order. With `redact_on_ingest` (the
/// default) their free text is redacted here, the one place every command's cases come through
/// ([`crate::redact::redact_case`]); off keeps the text as the file has it, on the user's word.
pub fn split_cases(section: &DataSection, base: Option<&Path>, split: Split) -> Result<Vec<Case>> {
    let splits = section.splits.as_deref().map(|p| resolve(p, base));
    let path = cases_path(section, base)?;
    let mut cases = load_split(&path, splits.as_deref(), split)?;
    if section.redact_on_ingest {
        crate::redact::redact_cases(&mut cases);
    }
    if !section.departments.is_empty() {
        for d in &section.departments {
            if !cases.iter().any(|c| &c.department == d) {
                let mut known: Vec<&str> = cases.iter().map(|c| c.department.as_str()).collect();
                known.sort_unstable();
                known.dedup();
                return Err(Error::Recipe {
                    file: path.display().to_string(),
                    key: "data.departments".into(),
                    msg: format!(
                        "no {split:?} case of department `{d}` (departments there: {})",
                        known.join(", ")
                    ),
                });
            }
        }
        cases.retain(|c| section.departments.contains(&c.department));
    }
    if section.max_cases > 0 {
        cases.truncate(section.max_cases);
    }
    Ok(cases)
}

/// The cases to train on (`data.train_split`).
pub fn train_cases(section: &DataSection, base: Option<&Path>) -> Result<Vec<Case>> {
    split_cases(section, base, section.train_split)
}

/// Seed of the fresh RL-only patients (`data.rl_extra_per_diagnosis`): not the shipped cases' seed, so no
/// patient repeats a shipped one.
pub const RL_EXTRA_SEED: u64 = crate::generate::SHIPPED_SEED + 1000;

/// `data.rl_extra_per_diagnosis` fresh synthetic patients for each diagnosis of `train` that the generator's
/// disease table has (ids `<disease>-1007-<n>`). Empty when the key is 0; an error naming the key when none of the
/// training diagnoses is in the table (cases from elsewhere).
pub fn rl_extra_cases(section: &DataSection, train: &[Case]) -> Result<Vec<Case>> {
    let k = section.rl_extra_per_diagnosis;
    if k == 0 {
        return Ok(Vec::new());
    }
    let wanted: std::collections::HashSet<&str> =
        train.iter().map(|c| c.diagnosis.icd10.as_str()).collect();
    let table = crate::generate::diseases().len();
    let extra: Vec<Case> = crate::generate::generate(k * table, RL_EXTRA_SEED)?
        .into_iter()
        .filter(|c| wanted.contains(c.diagnosis.icd10.as_str()))
        .collect();
    if extra.is_empty() {
        return Err(Error::Recipe {
            file: "-".into(),
            key: "data.rl_extra_per_diagnosis".into(),
            msg: "the case generator's disease table has none of the training diagnoses".into(),
        });
    }
    Ok(extra)
}

/// The cases to evaluate on (`data.eval_split`).
pub fn eval_cases(section: &DataSection, base: Option<&Path>) -> Result<Vec<Case>> {
    split_cases(section, base, section.eval_split)
}
