//! Sample / Scored IO: round trips in both formats, versions and missing fields rejected with file, row, field.
use super::common::*;
use spar_data::wire::{self, SCHEMA_VERSION_KEY, sample_schema, scored_schema};

#[test]
fn samples_round_trip_jsonl_and_parquet() {
    let d = tmp();
    let samples = vec![sample(0, true), sample(1, false), sample(2, true)];
    for name in ["s.jsonl", "s.parquet"] {
        let p = d.path().join(name);
        wire::write_samples(&p, &samples).unwrap();
        assert_eq!(wire::read_samples(&p).unwrap(), samples, "{name}");
    }
    let p = d.path().join("only.parquet");
    wire::write_samples_parquet(&p, &samples).unwrap();
    assert_eq!(wire::read_samples(&p).unwrap(), samples);
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(&p).unwrap(),
        )
        .unwrap(),
    )
    .file_metadata()
    .key_value_metadata()
    .cloned()
    .unwrap_or_default();
    assert!(
        meta.iter()
            .any(|kv| kv.key == SCHEMA_VERSION_KEY && kv.value.as_deref() == Some("1")),
        "{meta:?}"
    );
}

#[test]
fn scored_round_trip_jsonl_and_parquet() {
    let d = tmp();
    let scored = vec![scored(0), scored(1), scored(2)];
    for name in ["r.jsonl", "r.parquet"] {
        let p = d.path().join(name);
        wire::write_scored(&p, &scored).unwrap();
        assert_eq!(wire::read_scored(&p).unwrap(), scored, "{name}");
    }
    wire::write_scored_parquet(&d.path().join("o.parquet"), &scored).unwrap();
    assert_eq!(
        wire::read_scored(&d.path().join("o.parquet")).unwrap(),
        scored
    );
}

#[test]
fn writers_refuse_inconsistent_samples() {
    let d = tmp();
    let mut s = sample(0, false);
    s.loss_mask.pop();
    let p = d.path().join("bad.parquet");
    let e = wire::write_samples_parquet(&p, &[sample(1, false), s])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.parquet:2: field `loss_mask`"), "{e}");
    assert!(!p.exists());
}

#[test]
fn readers_reject_unknown_versions_and_missing_fields() {
    let d = tmp();
    let rows: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::to_value(sample(i, false)).unwrap())
        .collect();

    // Version 2 in the metadata.
    let p = d.path().join("meta2.parquet");
    write_raw_parquet(&p, sample_schema(), &rows, &[(SCHEMA_VERSION_KEY, "2")]);
    let e = wire::read_samples(&p).unwrap_err().to_string();
    assert!(
        e.contains("meta2.parquet") && e.contains("2 is not the supported version 1"),
        "{e}"
    );

    // Version 2 in row 3 only.
    let mut v = rows.clone();
    v[2]["schema_version"] = serde_json::json!(2);
    let p = d.path().join("row2.parquet");
    write_raw_parquet(&p, sample_schema(), &v, &[]);
    let e = wire::read_samples(&p).unwrap_err().to_string();
    assert!(e.contains("row2.parquet:3: field `schema_version`"), "{e}");

    // A missing column.
    let p = d.path().join("nomask.parquet");
    write_raw_parquet(
        &p,
        without_column(&sample_schema(), "loss_mask"),
        &rows,
        &[],
    );
    let e = wire::read_samples(&p).unwrap_err().to_string();
    assert!(e.contains("nomask.parquet:1: field `loss_mask`"), "{e}");

    // A nested field missing in one row of a scored file.
    let mut r: Vec<serde_json::Value> = (0..2)
        .map(|i| serde_json::to_value(scored(i)).unwrap())
        .collect();
    r[1]["steps"][0].as_object_mut().unwrap().remove("gamma");
    let p = d.path().join("gamma.parquet");
    let mut schema = (*scored_schema()).clone();
    // Let the file hold the gap: make `steps` items' fields nullable in this hand-made file.
    let steps = arrow::datatypes::Field::new(
        "steps",
        arrow::datatypes::DataType::List(std::sync::Arc::new(
            arrow::datatypes::Field::new_list_field(
                arrow::datatypes::DataType::Struct(arrow::datatypes::Fields::from(vec![
                    arrow::datatypes::Field::new(
                        "violations",
                        arrow::datatypes::DataType::List(std::sync::Arc::new(
                            arrow::datatypes::Field::new_list_field(
                                arrow::datatypes::DataType::Utf8,
                                false,
                            ),
                        )),
                        false,
                    ),
                    arrow::datatypes::Field::new(
                        "gamma",
                        arrow::datatypes::DataType::Float64,
                        true,
                    ),
                    arrow::datatypes::Field::new(
                        "advantage",
                        arrow::datatypes::DataType::Float64,
                        false,
                    ),
                ])),
                false,
            ),
        )),
        false,
    );
    let idx = schema.index_of("steps").unwrap();
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    fields[idx] = std::sync::Arc::new(steps);
    schema = arrow::datatypes::Schema::new(fields);
    write_raw_parquet(&p, std::sync::Arc::new(schema), &r, &[]);
    let e = wire::read_scored(&p).unwrap_err().to_string();
    assert!(e.contains("gamma.parquet:2: field `steps[0].gamma`"), "{e}");

    // JSONL: unknown version and a missing field, with line numbers.
    let p = d.path().join("s.jsonl");
    let mut lines: Vec<serde_json::Value> = rows.clone();
    lines[1]["schema_version"] = serde_json::json!(7);
    std::fs::write(
        &p,
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let e = wire::read_samples(&p).unwrap_err().to_string();
    assert!(e.contains("s.jsonl:2: field `schema_version`"), "{e}");
    lines[1] = rows[1].clone();
    lines[2].as_object_mut().unwrap().remove("token_ids");
    std::fs::write(
        &p,
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let e = wire::read_samples(&p).unwrap_err().to_string();
    assert!(e.contains("s.jsonl:3: field `token_ids`"), "{e}");
}

#[test]
fn pyarrow_reads_sample_parquet_as_typed_columns() {
    let Some(py) = python() else { return };
    let d = tmp();
    let p = d.path().join("s.parquet");
    wire::write_samples_parquet(&p, &[sample(0, true), sample(1, false)]).unwrap();
    let out = run_python(
        &py,
        "import sys, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1])\n\
         print(t.schema.field('token_ids').type, t.schema.field('loss_mask').type, t.schema.field('rollout_logprobs').type)\n\
         print(pq.read_metadata(sys.argv[1]).metadata[b'spar.schema_version'].decode(), t.column('schema_version').to_pylist())\n\
         print(t.column('routed_experts').to_pylist()[1], t.column('steps').to_pylist()[0])",
        &[p.to_str().unwrap()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "list<item: uint32 not null> list<item: uint8 not null> list<item: float not null>",
        "{out}"
    );
    assert_eq!(lines[1], "1 [1, 1]");
    assert_eq!(
        lines[2],
        "None [{'stage': 'inquiry', 'start': 3, 'end': 6}]"
    );
}

/// Samples as Arrow record batches (what actors send to learners over Flight): the round trip keeps every
/// field; a row of another schema version is refused naming the sender, the row and the field.
#[test]
fn samples_round_trip_as_record_batches() {
    let samples = vec![sample(0, true), sample(1, false), sample(2, true)];
    let batch = wire::samples_to_batch(&samples).unwrap();
    assert_eq!(batch.num_rows(), 3);
    assert_eq!(batch.schema(), sample_schema());
    assert_eq!(
        wire::samples_from_batch(&batch, "actor 1").unwrap(),
        samples
    );
    assert!(
        wire::samples_from_batch(&wire::samples_to_batch(&[]).unwrap(), "actor 1")
            .unwrap()
            .is_empty()
    );
    let mut future = samples.clone();
    future[1].schema_version = 99;
    assert!(wire::samples_to_batch(&future).is_err());
    // A sender on another version: its rows are refused on arrival, naming it.
    let cols: Vec<arrow::array::ArrayRef> = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if batch.schema().field(i).name() == "schema_version" {
                std::sync::Arc::new(arrow::array::UInt32Array::from(vec![1u32, 7, 1])) as _
            } else {
                c.clone()
            }
        })
        .collect();
    let other = arrow::record_batch::RecordBatch::try_new(batch.schema(), cols).unwrap();
    let e = wire::samples_from_batch(&other, "actor 1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("actor 1") && e.contains("schema_version") && e.contains('2'),
        "{e}"
    );
}
