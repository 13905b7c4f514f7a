//! Parquet and JSONL IO of the wire formats `Sample` (rollout -> rewards, trainer) and `Scored` (rewards ->
//! trainer). The version lives twice in parquet: in the key-value metadata ([`SCHEMA_VERSION_KEY`]) and in the
//! `schema_version` column; readers reject any other version and any missing field, naming file, row and field.
use crate::cases::Format;
use crate::parquet_io::{ParquetRows, from_row, list, strukt, utf8, write_parquet};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spar_core::fsio::write_jsonl;
use spar_core::sample::SCHEMA_VERSION;
use spar_core::{Error, Result, Sample, Scored};
use std::path::Path;
use std::sync::Arc;

/// Parquet key-value metadata key holding the wire `schema_version`.
pub const SCHEMA_VERSION_KEY: &str = "spar.schema_version";

fn u32f(name: &str) -> Field {
    Field::new(name, DataType::UInt32, false)
}

fn f64f(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
}

fn opt_utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn head() -> Vec<Field> {
    vec![
        u32f("schema_version"),
        utf8("run_id"),
        utf8("case_id"),
        utf8("group_id"),
        u32f("sample_idx"),
    ]
}

/// The arrow schema of a `Sample` table (see `docs/data.md`).
pub fn sample_schema() -> SchemaRef {
    let routed = strukt(vec![
        Field::new("layers", DataType::UInt64, false),
        Field::new("k", DataType::UInt64, false),
        list("ids", DataType::UInt16),
    ]);
    let step = strukt(vec![
        utf8("stage"),
        Field::new("start", DataType::UInt64, false),
        Field::new("end", DataType::UInt64, false),
    ]);
    let turn = strukt(vec![utf8("role"), utf8("text"), opt_utf8("stage")]);
    let mut f = head();
    f.extend([
        list("stages", DataType::Utf8),
        utf8("mode"),
        Field::new("policy_version", DataType::UInt64, false),
        utf8("end_reason"),
        list("token_ids", DataType::UInt32),
        list("loss_mask", DataType::UInt8),
        list("rollout_logprobs", DataType::Float32),
        Field::new("routed_experts", routed, true),
        list("steps", step),
        list("turns", turn),
    ]);
    Arc::new(Schema::new(f))
}

/// The arrow schema of a `Scored` table (see `docs/data.md`).
pub fn scored_schema() -> SchemaRef {
    let verdict = strukt(vec![
        utf8("criterion"),
        Field::new("points", DataType::Int32, false),
        Field::new("met", DataType::Boolean, true),
        opt_utf8("explanation"),
    ]);
    let claim = strukt(vec![
        utf8("text"),
        utf8("label"),
        f64f("saliency"),
        opt_utf8("source"),
    ]);
    let step = strukt(vec![
        list("violations", DataType::Utf8),
        f64f("gamma"),
        f64f("advantage"),
    ]);
    let mut f = head();
    f.extend([
        f64f("R_task"),
        list("rubric", verdict),
        Field::new("G_k", DataType::Float64, true),
        list("claims", claim),
        f64f("R_fact"),
        f64f("lambda"),
        f64f("R"),
        list("steps", step),
        opt_utf8("drop_reason"),
        // Null when there are no components (the writer omits an empty map); read back as an empty map.
        Field::new(
            "components",
            DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    strukt(vec![
                        utf8("keys"),
                        Field::new("values", DataType::Float64, true),
                    ]),
                    false,
                )),
                false,
            ),
            true,
        ),
    ]);
    Arc::new(Schema::new(f))
}

fn version_meta() -> [(&'static str, String); 1] {
    [(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string())]
}

fn check_versions(file: &str, records: &[(u32, usize)]) -> Result<()> {
    for &(v, row) in records {
        if v != SCHEMA_VERSION {
            return Err(Error::Field {
                file: file.into(),
                line: row,
                field: "schema_version".into(),
                msg: format!("{v} is not the supported version {SCHEMA_VERSION}"),
            });
        }
    }
    Ok(())
}

/// Reads a wire-format parquet file: version in metadata (when present) and in every row, required columns.
fn read_wire_parquet<T: DeserializeOwned>(path: &Path, schema: &Schema) -> Result<Vec<T>> {
    let pq = ParquetRows::open(path)?;
    if let Some(v) = pq.metadata.get(SCHEMA_VERSION_KEY)
        && v.trim() != SCHEMA_VERSION.to_string()
    {
        return Err(Error::invalid(
            &pq.file,
            format!("{SCHEMA_VERSION_KEY} {v} is not the supported version {SCHEMA_VERSION}"),
        ));
    }
    pq.require_columns(schema)?;
    let mut out = Vec::new();
    for (i, row) in pq.json_rows()?.into_iter().enumerate() {
        // The version is checked before the record so a future format fails as "unknown version", not as a
        // confusing missing or unknown field.
        match row.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) => {
                return Err(Error::Field {
                    file: pq.file.clone(),
                    line: i + 1,
                    field: "schema_version".into(),
                    msg: format!("{v} is not the supported version {SCHEMA_VERSION}"),
                });
            }
            None => {
                return Err(Error::Field {
                    file: pq.file.clone(),
                    line: i + 1,
                    field: "schema_version".into(),
                    msg: "missing".into(),
                });
            }
        }
        out.push(from_row(&pq.file, i + 1, row.into())?);
    }
    Ok(out)
}

fn read_wire_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    crate::cases::read_jsonl_records(path, Some(SCHEMA_VERSION))
}

fn check_samples(file: &str, samples: &[Sample]) -> Result<()> {
    check_versions(
        file,
        &samples
            .iter()
            .enumerate()
            .map(|(i, s)| (s.schema_version, i + 1))
            .collect::<Vec<_>>(),
    )?;
    for (i, s) in samples.iter().enumerate() {
        if let Err((field, msg)) = s.check() {
            return Err(Error::Field {
                file: file.into(),
                line: i + 1,
                field: field.into(),
                msg,
            });
        }
    }
    Ok(())
}

fn write_by_ext<T: Serialize>(path: &Path, rows: &[T], schema: SchemaRef) -> Result<()> {
    match Format::of(path)? {
        Format::Jsonl => write_jsonl(path, rows),
        Format::Parquet => write_parquet(path, schema, rows, &version_meta()),
    }
}

/// Writes samples as parquet ([`sample_schema`]), atomically; every sample must pass `Sample::check`.
pub fn write_samples_parquet(path: &Path, samples: &[Sample]) -> Result<()> {
    check_samples(&path.display().to_string(), samples)?;
    write_parquet(path, sample_schema(), samples, &version_meta())
}

/// Writes samples as JSONL or parquet by extension, atomically; every sample must pass `Sample::check`.
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    check_samples(&path.display().to_string(), samples)?;
    write_by_ext(path, samples, sample_schema())
}

/// Reads samples from `.parquet` or `.jsonl` (by extension); rejects other versions, missing fields and
/// samples failing `Sample::check`, naming file, row/line and field.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    spar_core::Error::must_exist(path)?;
    let samples: Vec<Sample> = match Format::of(path)? {
        Format::Jsonl => read_wire_jsonl(path)?,
        Format::Parquet => read_wire_parquet(path, &sample_schema())?,
    };
    check_samples(&path.display().to_string(), &samples)?;
    Ok(samples)
}

/// Writes scored records as parquet ([`scored_schema`]), atomically.
pub fn write_scored_parquet(path: &Path, scored: &[Scored]) -> Result<()> {
    check_versions(
        &path.display().to_string(),
        &scored
            .iter()
            .enumerate()
            .map(|(i, s)| (s.schema_version, i + 1))
            .collect::<Vec<_>>(),
    )?;
    write_parquet(path, scored_schema(), scored, &version_meta())
}

/// Writes scored records as JSONL or parquet by extension, atomically.
pub fn write_scored(path: &Path, scored: &[Scored]) -> Result<()> {
    check_versions(
        &path.display().to_string(),
        &scored
            .iter()
            .enumerate()
            .map(|(i, s)| (s.schema_version, i + 1))
            .collect::<Vec<_>>(),
    )?;
    write_by_ext(path, scored, scored_schema())
}

/// Reads scored records from `.parquet` or `.jsonl` (by extension); rejects other versions and missing fields,
/// naming file, row/line and field.
pub fn read_scored(path: &Path) -> Result<Vec<Scored>> {
    spar_core::Error::must_exist(path)?;
    match Format::of(path)? {
        Format::Jsonl => read_wire_jsonl(path),
        Format::Parquet => read_wire_parquet(path, &scored_schema()),
    }
}

/// Samples as one Arrow record batch of [`sample_schema`]: what actors send to learners over Arrow Flight
/// (`spar_dist::flight`). Every sample must pass `Sample::check`.
pub fn samples_to_batch(samples: &[Sample]) -> Result<arrow::record_batch::RecordBatch> {
    const WHAT: &str = "sample batch";
    check_samples(WHAT, samples)?;
    let schema = sample_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_strict_mode(true)
        .with_batch_size(samples.len().max(1))
        .build_decoder()
        .map_err(|e| Error::invalid(WHAT, format!("arrow decoder: {e}")))?;
    decoder
        .serialize(samples)
        .map_err(|e| Error::invalid(WHAT, format!("samples do not fit the schema: {e}")))?;
    Ok(decoder
        .flush()
        .map_err(|e| Error::invalid(WHAT, format!("arrow: {e}")))?
        .unwrap_or_else(|| arrow::record_batch::RecordBatch::new_empty(schema)))
}

/// The samples of a record batch that arrived from `from` (named in errors, e.g. an actor): each row's
/// `schema_version` and fields checked as when reading a file, and every sample checked.
pub fn samples_from_batch(
    batch: &arrow::record_batch::RecordBatch,
    from: &str,
) -> Result<Vec<Sample>> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    w.write(batch)
        .and_then(|_| w.finish())
        .map_err(|e| Error::invalid(from, format!("arrow -> json: {e}")))?;
    let buf = w.into_inner();
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&buf)
        .map_err(|e| Error::invalid(from, format!("arrow -> json: {e}")))?;
    let samples = rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            if row.get("schema_version").and_then(|v| v.as_u64()) != Some(SCHEMA_VERSION as u64) {
                return Err(Error::Field {
                    file: from.into(),
                    line: i + 1,
                    field: "schema_version".into(),
                    msg: format!(
                        "{} is not the supported version {SCHEMA_VERSION}",
                        row.get("schema_version")
                            .unwrap_or(&serde_json::Value::Null)
                    ),
                });
            }
            from_row(from, i + 1, row)
        })
        .collect::<Result<Vec<Sample>>>()?;
    check_samples(from, &samples)?;
    Ok(samples)
}
