//! Train / validation / test splits (method.md section 9): train and validation are split by case (the same
//! diagnoses, different patients); test is split by diagnosis, so no test diagnosis appears in train or validation.
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use spar_core::fsio::write_atomic;
use spar_core::{Case, Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

/// Which split a case belongs to: the recipe's split type (`data.train_split`, `eval.split`), also the lists of
/// `splits.json`.
pub use spar_core::recipe::Split;

/// The split file (`splits.json`): case ids per split and the held-out diagnoses that define the test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    /// How the split was made (free text, for humans).
    pub method: String,
    pub seed: u64,
    /// ICD-10-CM codes whose cases form the test split.
    pub test_diagnoses: Vec<String>,
    pub train: Vec<String>,
    pub validation: Vec<String>,
    pub test: Vec<String>,
}

impl Splits {
    /// Splits `cases`: every case whose diagnosis code is in `test_diagnoses` goes to test; of the rest, each
    /// diagnosis sends `round(val_fraction * n)` of its n cases (at least one when n >= 2) to validation, chosen by
    /// a seeded shuffle, and the others to train.
    pub fn build(
        cases: &[Case],
        test_diagnoses: &[String],
        val_fraction: f64,
        seed: u64,
    ) -> Splits {
        let test_set: HashSet<&str> = test_diagnoses.iter().map(String::as_str).collect();
        let mut by_dx: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut test = Vec::new();
        for c in cases {
            if test_set.contains(c.diagnosis.icd10.as_str()) {
                test.push(c.id.clone());
            } else {
                by_dx
                    .entry(c.diagnosis.icd10.as_str())
                    .or_default()
                    .push(c.id.as_str());
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for ids in by_dx.values_mut() {
            ids.shuffle(&mut rng);
            let n = ids.len();
            let mut v = (val_fraction * n as f64).round() as usize;
            if n >= 2 && val_fraction > 0.0 {
                v = v.clamp(1, n - 1);
            }
            for (i, id) in ids.iter().enumerate() {
                if i < v {
                    validation.push(id.to_string())
                } else {
                    train.push(id.to_string())
                }
            }
        }
        train.sort();
        validation.sort();
        test.sort();
        let mut codes: Vec<String> = test_set.iter().map(|s| s.to_string()).collect();
        codes.sort();
        Splits {
            method: format!(
                "test: every case of the held-out diagnoses; validation: {val_fraction} of each other diagnosis's cases (seeded shuffle); train: the rest"
            ),
            seed,
            test_diagnoses: codes,
            train,
            validation,
            test,
        }
    }

    /// The case ids of one split.
    pub fn ids(&self, split: Split) -> &[String] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    /// The split a case id belongs to, if any.
    pub fn split_of(&self, id: &str) -> Option<Split> {
        Split::ALL
            .into_iter()
            .find(|s| self.ids(*s).iter().any(|x| x == id))
    }

    /// Keeps the cases of one split, in the order of `cases`.
    pub fn select(&self, cases: &[Case], split: Split) -> Vec<Case> {
        let ids: HashSet<&str> = self.ids(split).iter().map(String::as_str).collect();
        cases
            .iter()
            .filter(|c| ids.contains(c.id.as_str()))
            .cloned()
            .collect()
    }

    /// Checks the split against its cases: splits disjoint, every id known, no test diagnosis in train or
    /// validation. `file` names the split file in errors.
    pub fn check(&self, file: &str, cases: &[Case]) -> Result<()> {
        let known: BTreeMap<&str, &Case> = cases.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut seen: BTreeMap<&str, Split> = BTreeMap::new();
        let test_dx: BTreeSet<&str> = self.test_diagnoses.iter().map(String::as_str).collect();
        for split in Split::ALL {
            for id in self.ids(split) {
                if let Some(prev) = seen.insert(id, split) {
                    return Err(Error::invalid(
                        file,
                        format!(
                            "case `{id}` is in both {} and {}",
                            prev.name(),
                            split.name()
                        ),
                    ));
                }
                let Some(case) = known.get(id.as_str()) else {
                    return Err(Error::invalid(
                        file,
                        format!("{}: case `{id}` is not among the cases", split.name()),
                    ));
                };
                let held_out = test_dx.contains(case.diagnosis.icd10.as_str());
                if held_out != (split == Split::Test) {
                    return Err(Error::invalid(
                        file,
                        format!(
                            "{}: case `{id}` has diagnosis {} which is {}a held-out test diagnosis",
                            split.name(),
                            case.diagnosis.icd10,
                            if held_out { "" } else { "not " }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads a split file.
    pub fn load(path: &Path) -> Result<Splits> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| Error::Field {
            file: path.display().to_string(),
            line: e.inner().line(),
            field: crate::parquet_io::field_of(&e.path().to_string(), &e.inner().to_string()),
            msg: e.inner().to_string(),
        })
    }

    /// Writes the split file atomically (pretty JSON, one id per line, so diffs stay readable).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(path, format!("{text}\n").as_bytes())
    }
}

/// Loads the cases of one split: `cases` is a file or folder; the split file is `splits` if given, else
/// `splits.json` next to the cases. Without a split file every case counts as train, and asking for validation
/// or test is an error (there is nothing to hold out).
pub fn load_split(cases: &Path, splits: Option<&Path>, split: Split) -> Result<Vec<Case>> {
    let all = crate::cases::load_cases(cases)?;
    let default = if cases.is_dir() {
        cases.join("splits.json")
    } else {
        cases.with_file_name("splits.json")
    };
    let file = splits.map(Path::to_path_buf).unwrap_or(default);
    if !file.exists() {
        if splits.is_some() {
            return Err(Error::invalid(file.display(), "split file not found"));
        }
        if split == Split::Train {
            return Ok(all);
        }
        return Err(Error::invalid(
            file.display(),
            format!("no split file, so there is no {} split", split.name()),
        ));
    }
    let s = Splits::load(&file)?;
    s.check(&file.display().to_string(), &all)?;
    Ok(s.select(&all, split))
}
