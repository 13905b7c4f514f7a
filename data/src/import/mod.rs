//! `spar data import`: cases in the field's formats mapped to spar's [`Case`], one file per format
//! (`agentclinic.rs`, `scan.rs`), the shared mapping in `map.rs`. A row that cannot be mapped is reported with
//! the file, its line (or element) number and the field, in the source format's own path; the other rows
//! import. Redaction (`--no-redact` aside) is the caller's, as for every importer.
pub mod agentclinic;
mod map;
pub mod scan;

use crate::kb::KnowledgeBase;
use serde_json::Value;
use spar_core::{Case, Error, Result};
use std::path::Path;

/// The formats `spar data import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// AgentClinic's JSONL (OSCE layout of its MedQA files, or its NEJM layout).
    AgentClinic,
    /// SCAN-bench-style case objects (a JSON array, or JSONL).
    Scan,
}

impl ImportFormat {
    /// The names `--format` takes.
    pub const NAMES: [&str; 2] = ["agentclinic", "scan"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "agentclinic" => Ok(ImportFormat::AgentClinic),
            "scan" => Ok(ImportFormat::Scan),
            other => Err(Error::Other(format!(
                "--format {other:?}: expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// What an import gave: the cases mapped and one error per row that could not be.
#[derive(Debug, Default)]
pub struct Imported {
    pub cases: Vec<Case>,
    pub errors: Vec<Error>,
    /// Rows read (mapped or not).
    pub rows: usize,
}

/// A file's rows with their 1-based line (JSONL) or element (JSON array) numbers.
type Rows = Vec<(usize, Value)>;

/// The rows of a file: a JSON array's elements, or one JSON value per non-blank line. A line that is not JSON
/// is a row error (the other lines still import); a file that cannot be read at all is an error.
fn rows(path: &Path) -> Result<(Rows, Vec<Error>)> {
    Error::must_exist(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file = path.display().to_string();
    if text.trim_start().starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(&file, format!("not a JSON array of cases: {e}")))?;
        return Ok((
            all.into_iter()
                .enumerate()
                .map(|(i, v)| (i + 1, v))
                .collect(),
            Vec::new(),
        ));
    }
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => ok.push((i + 1, v)),
            Err(e) => bad.push(Error::Field {
                file: file.clone(),
                line: i + 1,
                field: "(line)".into(),
                msg: format!("not JSON: {e}"),
            }),
        }
    }
    Ok((ok, bad))
}

/// Imports `path` in `format`, coding diagnoses with `kb`. Case ids are `<file stem>-<line>` unless the row
/// gives one (SCAN `id`); ids are unique in the result.
pub fn import(path: &Path, format: ImportFormat, kb: &KnowledgeBase) -> Result<Imported> {
    let (rows, mut errors) = rows(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "case".into());
    let file = path.display().to_string();
    let mut out = Imported {
        rows: rows.len() + errors.len(),
        ..Default::default()
    };
    let mut ids = std::collections::HashSet::new();
    for (line, row) in rows {
        let id = format!("{stem}-{line:04}");
        let mapped = match format {
            ImportFormat::AgentClinic => agentclinic::map_row(&row, &id, kb),
            ImportFormat::Scan => scan::map_row(&row, &id, kb),
        };
        match mapped {
            Ok(case) if !ids.insert(case.id.clone()) => errors.push(Error::Field {
                file: file.clone(),
                line,
                field: "id".into(),
                msg: format!("duplicate id {:?}", case.id),
            }),
            Ok(case) => out.cases.push(case),
            Err((field, msg)) => errors.push(Error::Field {
                file: file.clone(),
                line,
                field,
                msg,
            }),
        }
    }
    errors.sort_by_key(|e| match e {
        Error::Field { line, .. } => *line,
        _ => 0,
    });
    out.errors = errors;
    Ok(out)
}
