//! The disease table (`diseases.toml`, compiled in): one entry per diagnosis with its presentation, checklist,
//! differential, tests and rubric, written by hand from standard clinical knowledge. ICD-10-CM codes are checked
//! against `data/cases/icd10cm-codes.tsv` (extracted from PyPI `simple-icd-10-cm` 1.5.0) by the tests.
//!
//! List entries are `|`-separated rows to keep the table readable:
//! - `history`:      `topic | question | keyword, keyword | answer | weight` (weight ending in `!` = critical)
//! - `red_flags`:    `description | question | keyword, keyword | answer | present|absent`
//! - `differential`: `name | ICD-10-CM code`
//! - `essential`, `optional`: `name | alias, alias | LOINC` (aliases and LOINC may be empty)
//! - `rubric`:       `points | criterion | keyword, keyword | stage` (stage may be empty = whole dialogue)
//!
//! Text may use `{dur}` (a duration from `durations`), `{age}`, `{side}` (left/right), `{person}` (man / woman,
//! boy / girl) and `{child}` (son / daughter).
use serde::Deserialize;
use std::sync::LazyLock;

/// One disease of the table, as written in `diseases.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disease {
    /// Short slug used in case ids (`nstemi`).
    pub key: String,
    pub name: String,
    pub icd10: String,
    pub department: String,
    /// Inclusive age range in years.
    pub age: [u32; 2],
    /// `female` / `male`; absent = either.
    #[serde(default)]
    pub sex: Option<String>,
    /// Cases of this diagnosis form the test split (never in train or validation).
    #[serde(default)]
    pub holdout: bool,
    /// The patient is a child; a parent speaks for them.
    #[serde(default)]
    pub child: bool,
    pub durations: Vec<String>,
    pub complaint: String,
    pub hpi: String,
    /// Risk factors / comorbidities; each case takes a random subset.
    #[serde(default)]
    pub pmh: Vec<String>,
    #[serde(default)]
    pub family: Vec<String>,
    /// Social history every case of this disease has (e.g. heavy smoking for COPD), before the random part.
    #[serde(default)]
    pub social: Vec<String>,
    pub exam: Vec<String>,
    pub history: Vec<String>,
    #[serde(default)]
    pub red_flags: Vec<String>,
    pub differential: Vec<String>,
    pub essential: Vec<String>,
    #[serde(default)]
    pub optional: Vec<String>,
    #[serde(default)]
    pub rubric: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    disease: Vec<Disease>,
}

const TABLE: &str = include_str!("diseases.toml");

static DISEASES: LazyLock<Vec<Disease>> = LazyLock::new(|| {
    // The table is compiled in and checked by the tests, so a parse failure is a build defect, not bad input.
    let t: Table =
        toml::from_str(TABLE).unwrap_or_else(|e| panic!("data/src/generate/diseases.toml: {e}"));
    t.disease
});

/// The disease table.
pub fn diseases() -> &'static [Disease] {
    &DISEASES
}

/// Splits a table row into `n` trimmed fields; the error names the row.
pub fn fields(row: &str, n: usize, what: &str) -> Result<Vec<String>, String> {
    let f: Vec<String> = row.split('|').map(|s| s.trim().to_string()).collect();
    if f.len() != n {
        return Err(format!(
            "{what} row `{row}` has {} fields, expected {n}",
            f.len()
        ));
    }
    Ok(f)
}

/// A comma-separated list, lower-cased, empty entries dropped.
pub fn keywords(s: &str) -> Vec<String> {
    s.split(',')
        .map(|k| k.trim().to_lowercase())
        .filter(|k| !k.is_empty())
        .collect()
}
