//! Case IO: JSONL (one `Case` per line) and parquet (nested arrow columns; schema in `docs/data.md`), either way,
//! with atomic writes and validation whose errors name the file, the line or row, and the field path.
use crate::parquet_io::{ParquetRows, from_row, list, strukt, utf8, write_parquet};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use spar_core::fsio::write_jsonl;
use spar_core::{Case, Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the case parquet layout, stored in the parquet key-value metadata under [`CASE_SCHEMA_KEY`].
pub const CASE_SCHEMA_VERSION: u32 = 1;
/// Parquet key-value metadata key holding [`CASE_SCHEMA_VERSION`].
pub const CASE_SCHEMA_KEY: &str = "spar.case_schema_version";

/// File formats spar reads and writes, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Parquet,
}

impl Format {
    /// `.jsonl` / `.json` / `.ndjson` -> JSONL, `.parquet` / `.pq` -> parquet; anything else is an error.
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl" | "json" | "ndjson") => Ok(Format::Jsonl),
            Some("parquet" | "pq") => Ok(Format::Parquet),
            _ => Err(Error::invalid(
                path.display(),
                "unknown extension: expected .jsonl or .parquet",
            )),
        }
    }
}

fn test_item() -> DataType {
    strukt(vec![
        utf8("name"),
        list("aliases", DataType::Utf8),
        Field::new("loinc", DataType::Utf8, true),
        Field::new("result", DataType::Utf8, true),
    ])
}

fn diagnosis() -> DataType {
    strukt(vec![utf8("name"), utf8("icd10")])
}

/// The arrow schema of a case table: one column per `Case` field, nested lists and structs throughout.
pub fn case_schema() -> SchemaRef {
    let inquiry = strukt(vec![
        utf8("id"),
        utf8("topic"),
        list("keywords", DataType::Utf8),
        utf8("answer"),
        Field::new("weight", DataType::Float32, false),
        Field::new("critical", DataType::Boolean, false),
    ]);
    let red_flag = strukt(vec![
        utf8("id"),
        utf8("description"),
        list("keywords", DataType::Utf8),
        Field::new("present", DataType::Boolean, false),
        utf8("answer"),
        Field::new("weight", DataType::Float32, false),
    ]);
    let rule = strukt(vec![
        list("any", DataType::Utf8),
        list("all", DataType::Utf8),
        Field::new("regex", DataType::Utf8, true),
        Field::new("stage", DataType::Utf8, true),
    ]);
    let rubric = strukt(vec![
        utf8("criterion"),
        Field::new("points", DataType::Int32, false),
        list("tags", DataType::Utf8),
        Field::new("rule", rule, true),
    ]);
    Arc::new(Schema::new(vec![
        utf8("id"),
        utf8("department"),
        Field::new(
            "demographics",
            strukt(vec![
                Field::new("age", DataType::UInt32, false),
                utf8("sex"),
            ]),
            false,
        ),
        utf8("chief_complaint"),
        utf8("hpi"),
        list("past_history", DataType::Utf8),
        list("medications", DataType::Utf8),
        list("allergies", DataType::Utf8),
        list("family_history", DataType::Utf8),
        list("social_history", DataType::Utf8),
        list("exam_findings", DataType::Utf8),
        list("inquiry_items", inquiry),
        list("red_flags", red_flag),
        Field::new("diagnosis", diagnosis(), false),
        list("differential", diagnosis()),
        Field::new(
            "tests",
            strukt(vec![
                list("essential", test_item()),
                list("optional", test_item()),
            ]),
            false,
        ),
        list("rubric", rubric),
        utf8("source"),
    ]))
}

/// Checks every case with `Case::validate`; the error names the file, the 1-based record and the field.
pub fn validate_cases(file: &str, cases: &[Case]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in cases.iter().enumerate() {
        if let Some(p) = c.validate().into_iter().next() {
            return Err(Error::Field {
                file: file.into(),
                line: i + 1,
                field: p.field,
                msg: p.msg,
            });
        }
        if !seen.insert(c.id.as_str()) {
            return Err(Error::Field {
                file: file.into(),
                line: i + 1,
                field: "id".into(),
                msg: format!("duplicate case id `{}`", c.id),
            });
        }
    }
    Ok(())
}

/// Every problem in every case (file, record, field), for `spar data validate`: does not stop at the first.
pub fn case_problems(file: &str, cases: &[Case]) -> Vec<Error> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        for p in c.validate() {
            out.push(Error::Field {
                file: file.into(),
                line: i + 1,
                field: p.field,
                msg: p.msg,
            });
        }
        if !seen.insert(c.id.as_str()) {
            out.push(Error::Field {
                file: file.into(),
                line: i + 1,
                field: "id".into(),
                msg: format!("duplicate case id `{}`", c.id),
            });
        }
    }
    out
}

/// Writes cases as JSONL (one per line), atomically, after validating them.
pub fn write_cases_jsonl(path: &Path, cases: &[Case]) -> Result<()> {
    validate_cases(&path.display().to_string(), cases)?;
    write_jsonl(path, cases)
}

/// Writes cases as parquet with [`case_schema`], atomically, after validating them.
pub fn write_cases_parquet(path: &Path, cases: &[Case]) -> Result<()> {
    validate_cases(&path.display().to_string(), cases)?;
    write_parquet(
        path,
        case_schema(),
        cases,
        &[
            (CASE_SCHEMA_KEY, CASE_SCHEMA_VERSION.to_string()),
            ("spar.format", "case".into()),
        ],
    )
}

/// Writes cases in the format the extension names (`.jsonl` or `.parquet`).
pub fn write_cases(path: &Path, cases: &[Case]) -> Result<()> {
    match Format::of(path)? {
        Format::Jsonl => write_cases_jsonl(path, cases),
        Format::Parquet => write_cases_parquet(path, cases),
    }
}

/// Reads a JSONL case file without validating values; the first unreadable line fails with its line number
/// and the dotted field path (`inquiry_items[2].weight`).
pub fn read_cases_jsonl(path: &Path) -> Result<Vec<Case>> {
    read_jsonl_records(path, None)
}

/// Reads JSONL records of `T`, each line through serde with path tracking so errors name the nested field.
/// With `expect_version`, each line's `schema_version` is checked first, so a future format is reported as an
/// unknown version rather than as a confusing field error.
pub(crate) fn read_jsonl_records<T: serde::de::DeserializeOwned>(
    path: &Path,
    expect_version: Option<u32>,
) -> Result<Vec<T>> {
    use std::io::BufRead;
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::Field {
            file: file.clone(),
            line: i + 1,
            field: "-".into(),
            msg: format!("not JSON: {e}"),
        })?;
        if let Some(v) = expect_version {
            let bad = |msg: String| Error::Field {
                file: file.clone(),
                line: i + 1,
                field: "schema_version".into(),
                msg,
            };
            match value.get("schema_version").and_then(|x| x.as_u64()) {
                Some(got) if got == v as u64 => {}
                Some(got) => return Err(bad(format!("{got} is not the supported version {v}"))),
                None => return Err(bad("missing".into())),
            }
        }
        out.push(from_row(&file, i + 1, value)?);
    }
    Ok(out)
}

/// Every problem of a JSONL case file, with the cases that read: a line that is not JSON or not a case is
/// reported and the lines after it are still read, then every case is validated (and ids checked for
/// duplicates), each problem on its own line number. `spar data validate` uses it to report a whole file at once.
pub fn check_cases_jsonl(path: &Path) -> Result<(Vec<Case>, Vec<Error>)> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (mut cases, mut problems) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Error::Field {
                    file: file.clone(),
                    line: n,
                    field: "-".into(),
                    msg: format!("not JSON: {e}"),
                });
                continue;
            }
        };
        let case: Case = match from_row(&file, n, value) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for p in case.validate() {
            problems.push(Error::Field {
                file: file.clone(),
                line: n,
                field: p.field,
                msg: p.msg,
            });
        }
        if let Some(first) = seen.insert(case.id.clone(), n) {
            problems.push(Error::Field {
                file: file.clone(),
                line: n,
                field: "id".into(),
                msg: format!("duplicate case id `{}` (first on line {first})", case.id),
            });
        }
        cases.push(case);
    }
    Ok((cases, problems))
}

/// Reads a parquet case file without validating values; errors name the 1-based row and the field path.
pub fn read_cases_parquet(path: &Path) -> Result<Vec<Case>> {
    let pq = ParquetRows::open(path)?;
    if let Some(v) = pq.metadata.get(CASE_SCHEMA_KEY)
        && v.trim() != CASE_SCHEMA_VERSION.to_string()
    {
        return Err(Error::invalid(
            &pq.file,
            format!("{CASE_SCHEMA_KEY} {v} is not the supported version {CASE_SCHEMA_VERSION}"),
        ));
    }
    pq.require_columns(&case_schema())?;
    pq.json_rows()?
        .into_iter()
        .enumerate()
        .map(|(i, row)| from_row(&pq.file, i + 1, row.into()))
        .collect()
}

/// Reads one case file (by extension) and validates every case.
pub fn read_cases(path: &Path) -> Result<Vec<Case>> {
    Error::must_exist(path)?;
    let cases = match Format::of(path)? {
        Format::Jsonl => read_cases_jsonl(path)?,
        Format::Parquet => read_cases_parquet(path)?,
    };
    validate_cases(&path.display().to_string(), &cases)?;
    Ok(cases)
}

/// The case files of a folder: `*.jsonl` and `*.parquet`, sorted by name (split files and dotfiles skipped).
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.')
            || !p.is_file()
            || Format::of(&p).is_err()
            || name.ends_with(".json")
        {
            continue;
        }
        files.push(p);
    }
    files.sort();
    Ok(files)
}

/// Loads cases from a file or from every case file of a folder, validated, ids unique across files.
pub fn load_cases(path: &Path) -> Result<Vec<Case>> {
    Error::must_exist(path)?;
    if !path.is_dir() {
        return read_cases(path);
    }
    let files = case_files(path)?;
    if files.is_empty() {
        return Err(Error::invalid(
            path.display(),
            "folder holds no .jsonl or .parquet case file",
        ));
    }
    let mut all = Vec::new();
    let mut origin = std::collections::HashMap::new();
    for f in files {
        for c in read_cases(&f)? {
            if let Some(prev) = origin.insert(c.id.clone(), f.clone()) {
                return Err(Error::invalid(
                    f.display(),
                    format!("case id `{}` also appears in {}", c.id, prev.display()),
                ));
            }
            all.push(c);
        }
    }
    Ok(all)
}
