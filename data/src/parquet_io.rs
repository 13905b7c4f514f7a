//! Parquet of serde records through an explicit arrow schema.
//!
//! Records go serde -> arrow (`arrow_json`'s tape decoder, checked against the schema in strict mode) -> parquet,
//! and back parquet -> arrow -> JSON rows -> serde. Every column is a real nested arrow type (lists, structs),
//! never a JSON string, so pyarrow / pandas / verl read the files as ordinary tables. The JSON hop on the way back
//! is what lets every error name the row and the dotted field path (`inquiry_items[2].weight`) that serde found.
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spar_core::fsio::write_atomic_with;
use spar_core::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Rows per record batch (and per parquet row group chunk): bounds memory when converting large files.
const BATCH_ROWS: usize = 1024;

/// A non-null UTF-8 column / struct field.
pub(crate) fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// A non-null list of non-null `item`s.
pub(crate) fn list(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new_list_field(item, false))),
        false,
    )
}

/// A struct data type from its fields.
pub(crate) fn strukt(fields: Vec<Field>) -> DataType {
    DataType::Struct(Fields::from(fields))
}

/// Writes `rows` to `path` as zstd parquet with the given schema, atomically, with `metadata` as parquet
/// key-value metadata. Fails (naming the file) when a record does not fit the schema.
pub fn write_parquet<T: Serialize>(
    path: &Path,
    schema: SchemaRef,
    rows: &[T],
    metadata: &[(&str, String)],
) -> Result<()> {
    let file = path.display().to_string();
    let kv: Vec<KeyValue> = metadata
        .iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v.clone()))
        .collect();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("zstd level 3 is valid"),
        ))
        .set_key_value_metadata(Some(kv))
        .build();
    let mut batches = Vec::new();
    for (chunk_idx, chunk) in rows.chunks(BATCH_ROWS).enumerate() {
        let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
            .with_strict_mode(true)
            .with_batch_size(BATCH_ROWS)
            .build_decoder()
            .map_err(|e| Error::invalid(&file, format!("arrow decoder: {e}")))?;
        decoder.serialize(chunk).map_err(|e| {
            Error::invalid(
                &file,
                format!(
                    "records {}..{} do not fit the schema: {e}",
                    chunk_idx * BATCH_ROWS + 1,
                    chunk_idx * BATCH_ROWS + chunk.len()
                ),
            )
        })?;
        if let Some(b) = decoder
            .flush()
            .map_err(|e| Error::invalid(&file, format!("arrow: {e}")))?
        {
            batches.push(b);
        }
    }
    let mut failure = None;
    write_atomic_with(path, |f| {
        let res = (|| -> std::result::Result<(), parquet::errors::ParquetError> {
            let mut w = ArrowWriter::try_new(f.try_clone()?, schema.clone(), Some(props))?;
            for b in &batches {
                w.write(b)?;
            }
            w.close()?;
            Ok(())
        })();
        res.map_err(|e| {
            failure = Some(e.to_string());
            std::io::Error::other("parquet write failed")
        })
    })
    .map_err(|e| match failure.take() {
        Some(msg) => Error::invalid(&file, format!("parquet: {msg}")),
        None => e,
    })
}

/// A parquet file opened for reading: its key-value metadata and its rows as JSON objects.
pub struct ParquetRows {
    pub file: String,
    pub metadata: HashMap<String, String>,
    pub schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl ParquetRows {
    /// Opens and decodes a parquet file; a file that is not parquet (or is truncated) is an `Invalid` error.
    pub fn open(path: &Path) -> Result<ParquetRows> {
        let file = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| Error::invalid(&file, format!("not a readable parquet file: {e}")))?;
        let metadata = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| {
                kv.iter()
                    .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let schema = builder.schema().clone();
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| Error::invalid(&file, format!("parquet: {e}")))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid(&file, format!("corrupt parquet data: {e}")))?;
        Ok(ParquetRows {
            file,
            metadata,
            schema,
            batches,
        })
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Every row as a JSON object (null fields omitted), in file order.
    pub fn json_rows(&self) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for b in &self.batches {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write(b)
                .map_err(|e| Error::invalid(&self.file, format!("arrow -> json: {e}")))?;
            w.finish()
                .map_err(|e| Error::invalid(&self.file, format!("arrow -> json: {e}")))?;
            let buf = w.into_inner();
            if buf.is_empty() {
                continue;
            }
            let rows: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_slice(&buf)
                    .map_err(|e| Error::invalid(&self.file, format!("arrow -> json: {e}")))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Fails naming the first column of `expected` that the file lacks (a missing field, row 1 being the first
    /// row that lacks it). Nullable columns may be absent.
    pub fn require_columns(&self, expected: &Schema) -> Result<()> {
        for f in expected.fields() {
            if !f.is_nullable() && self.schema.field_with_name(f.name()).is_err() {
                return Err(Error::Field {
                    file: self.file.clone(),
                    line: 1,
                    field: f.name().clone(),
                    msg: "missing column".into(),
                });
            }
        }
        Ok(())
    }
}

/// Deserializes one JSON row into `T`, naming the 1-based `row` and the dotted field path on failure.
pub fn from_row<T: DeserializeOwned>(
    file: &str,
    row: usize,
    value: serde_json::Value,
) -> Result<T> {
    spar_core::fsio::from_value_at(file, row, value)
}

/// serde reports a missing field at its parent's path; lift the field's own name into the path.
pub(crate) fn field_of(path: &str, msg: &str) -> String {
    spar_core::fsio::field_path(path, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_field_names_its_path() {
        assert_eq!(field_of(".", "missing field `id`"), "id");
        assert_eq!(
            field_of("inquiry_items[2]", "missing field `weight`"),
            "inquiry_items[2].weight"
        );
        assert_eq!(
            field_of("demographics.age", "invalid type"),
            "demographics.age"
        );
    }
}
