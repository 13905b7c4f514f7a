//! Conventional adult reference ranges keyed by LOINC (`labs.json`, from Synthea) and the unit conversions
//! a claim may need to be compared with them.
use serde::Deserialize;
use spar_core::{Error, Result};
use std::path::Path;

/// One reference interval; the first variant whose selectors match the patient applies.
#[derive(Clone, Debug, Deserialize)]
pub struct RangeVariant {
    /// "M" | "F"; absent: anyone.
    #[serde(default)]
    pub sex: Option<String>,
    #[serde(default)]
    pub min_age: Option<u32>,
    pub low: f64,
    pub high: f64,
    /// UCUM as Synthea writes it (`"mmol/L"`, `"10*3/uL"`, `"mm[Hg]"`, `"Cel"`).
    pub unit: String,
}

/// An analyte (or vital sign) with its reference intervals.
#[derive(Clone, Debug, Deserialize)]
pub struct Lab {
    pub loinc: String,
    /// Short name ("potassium").
    pub name: String,
    pub loinc_name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub ranges: Vec<RangeVariant>,
}

#[derive(Debug, Deserialize)]
struct File {
    source: String,
    labs: Vec<Lab>,
}

/// The loaded `labs.json`.
#[derive(Debug, Default)]
pub struct Labs {
    pub source: String,
    pub labs: Vec<Lab>,
}

impl Labs {
    /// Reads `labs.json`; returns the raw bytes too (they enter the version hash).
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>)> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let f: File = serde_json::from_slice(&raw)
            .map_err(|e| Error::invalid(path.display(), e.to_string()))?;
        for l in &f.labs {
            if l.ranges.is_empty()
                || l.ranges
                    .iter()
                    .any(|r| r.low.is_nan() || r.high.is_nan() || r.low > r.high)
            {
                return Err(Error::Field {
                    file: path.display().to_string(),
                    line: 0,
                    field: format!("labs.{}.ranges", l.loinc),
                    msg: "needs at least one range with low <= high".into(),
                });
            }
        }
        Ok((
            Labs {
                source: f.source,
                labs: f.labs,
            },
            raw,
        ))
    }
}

/// Canonical spelling of a unit as claims write it, for comparison with the table's UCUM unit.
pub fn canonical_unit(u: &str) -> String {
    let u = u.to_ascii_lowercase().replace(' ', "");
    match u.as_str() {
        "meq/l" | "mmol/l" => "mmol/l".into(),
        "mm[hg]" | "mmhg" => "mmhg".into(),
        "cel" | "°c" | "c" | "degc" | "degreesc" | "celsius" => "cel".into(),
        "°f" | "f" | "degf" | "fahrenheit" => "degf".into(),
        // "beats per minute" leaves "beats" as the unit word.
        "/min" | "bpm" | "beats/min" | "breaths/min" | "/minute" | "perminute" | "beats"
        | "breaths" | "min" => "/min".into(),
        "10*3/ul" | "x10^9/l" | "10^9/l" | "x109/l" | "109/l" | "k/ul" | "/nl" | "thousand/ul" => {
            "10*3/ul".into()
        }
        "10*6/ul" | "x10^12/l" | "10^12/l" | "m/ul" | "million/ul" => "10*6/ul".into(),
        "u[iu]/ml" | "uiu/ml" | "miu/l" | "mu/l" | "mlu/l" | "uu/ml" => "uiu/ml".into(),
        "ml/min/{1.73_m2}" | "ml/min/1.73m2" | "ml/min/1.73m^2" | "ml/min" => {
            "ml/min/1.73m2".into()
        }
        "iu/l" | "u/l" | "units/l" => "u/l".into(),
        "percent" | "%" => "%".into(),
        "kg/m2" | "kg/m^2" => "kg/m2".into(),
        other => other.to_string(),
    }
}

/// Converts `value` in `from` to the table unit `to` for the analyte `loinc`; `None` when the conversion is
/// not known (the verifier then says Uncertain rather than guess).
pub fn convert(loinc: &str, value: f64, from: &str, to: &str) -> Option<f64> {
    let (from, to) = (canonical_unit(from), canonical_unit(to));
    if from == to {
        return Some(value);
    }
    // Molar mass based factors: mg/dL -> mmol/L (or umol/L).
    let mgdl_to = |f: f64| match (from.as_str(), to.as_str()) {
        ("mmol/l", "mg/dl") => Some(value / f),
        _ => None,
    };
    match (loinc, from.as_str(), to.as_str()) {
        (_, "g/l", "g/dl") => Some(value / 10.0),
        (_, "degf", "cel") => Some((value - 32.0) * 5.0 / 9.0),
        ("2345-7", ..) => mgdl_to(0.0555), // glucose: 1 mg/dL = 0.0555 mmol/L
        ("2093-3" | "18262-6" | "2085-9", ..) => mgdl_to(0.02586), // cholesterol
        ("2571-8", ..) => mgdl_to(0.01129), // triglycerides
        ("3094-0", ..) => mgdl_to(0.357),  // urea nitrogen
        ("17861-6", ..) => mgdl_to(0.2495), // calcium
        ("19123-9", ..) => mgdl_to(0.4114), // magnesium
        ("2777-1", ..) => mgdl_to(0.3229), // phosphate
        ("2160-0", "umol/l", "mg/dl") => Some(value / 88.42), // creatinine
        ("1975-2", "umol/l", "mg/dl") => Some(value / 17.1), // bilirubin
        ("4548-4", "mmol/mol", "%") => Some(value / 10.929 + 2.15), // HbA1c IFCC -> DCCT
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(convert("2823-3", 4.0, "mEq/L", "mmol/L"), Some(4.0));
        assert!((convert("2345-7", 5.5, "mmol/L", "mg/dL").unwrap() - 99.1).abs() < 0.1);
        assert!((convert("8310-5", 98.6, "°f", "Cel").unwrap() - 37.0).abs() < 1e-9);
        assert!((convert("718-7", 135.0, "g/L", "g/dL").unwrap() - 13.5).abs() < 1e-9);
        assert_eq!(convert("2823-3", 4.0, "mg/dL", "mmol/L"), None);
    }
}
