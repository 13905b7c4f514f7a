//! Case IO: JSONL and parquet round trips, errors that name file, line/row and field, folders.
use super::common::*;
use spar_data::cases::{self, case_schema};

#[test]
fn jsonl_and_parquet_round_trip() {
    let d = tmp();
    let cs = some_cases(60);
    for name in ["c.jsonl", "c.parquet"] {
        let p = d.path().join(name);
        cases::write_cases(&p, &cs).unwrap();
        assert_eq!(cases::read_cases(&p).unwrap(), cs, "{name}");
    }
    // Convert parquet -> jsonl -> parquet: still the same cases.
    let back = d.path().join("back.jsonl");
    cases::write_cases(
        &back,
        &cases::read_cases(&d.path().join("c.parquet")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases::read_cases(&back).unwrap(), cs);
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp")),
        "temp files left: {names:?}"
    );
}

#[test]
fn bad_jsonl_lines_name_line_and_field() {
    let d = tmp();
    let p = d.path().join("bad.jsonl");
    let cs = some_cases(3);
    let mut lines: Vec<serde_json::Value> = cs
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    lines[1]["inquiry_items"][2]["weight"] = serde_json::json!("heavy");
    std::fs::write(
        &p,
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:2: field `inquiry_items[2].weight`"),
        "{e}"
    );

    lines[1] = serde_json::to_value(&cs[1]).unwrap();
    lines[2].as_object_mut().unwrap().remove("chief_complaint");
    std::fs::write(
        &p,
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(e.contains(":3: field `chief_complaint`"), "{e}");

    // A value that parses but fails Case::validate.
    let mut bad = cs.clone();
    bad[2].diagnosis.icd10 = "i21.4".into();
    let lines: Vec<String> = bad
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(e.contains(":3: field `diagnosis.icd10`"), "{e}");
    // Writers refuse invalid cases too, naming the record.
    let e = cases::write_cases(&d.path().join("x.parquet"), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":3: field `diagnosis.icd10`"), "{e}");
    assert!(!d.path().join("x.parquet").exists());
}

#[test]
fn parquet_errors_name_row_and_field() {
    let d = tmp();
    let cs = some_cases(3);
    let mut rows: Vec<serde_json::Value> = cs
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();

    // A bad enum value in row 2.
    rows[1]["demographics"]["sex"] = serde_json::json!("unknown");
    let p = d.path().join("sex.parquet");
    write_raw_parquet(&p, case_schema(), &rows, &[]);
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(e.contains("sex.parquet:2: field `demographics.sex`"), "{e}");

    // A missing column.
    rows[1] = serde_json::to_value(&cs[1]).unwrap();
    let p = d.path().join("nohpi.parquet");
    write_raw_parquet(&p, without_column(&case_schema(), "hpi"), &rows, &[]);
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(e.contains("nohpi.parquet:1: field `hpi`"), "{e}");

    // An unknown layout version.
    let p = d.path().join("v9.parquet");
    write_raw_parquet(&p, case_schema(), &rows, &[(cases::CASE_SCHEMA_KEY, "9")]);
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(
        e.contains("v9.parquet") && e.contains("9 is not the supported version"),
        "{e}"
    );

    // Not parquet at all, and a truncated file.
    let p = d.path().join("junk.parquet");
    std::fs::write(&p, b"PAR1 this is not parquet").unwrap();
    let e = cases::read_cases(&p).unwrap_err().to_string();
    assert!(e.contains("junk.parquet") && e.contains("parquet"), "{e}");
    let good = d.path().join("good.parquet");
    cases::write_cases(&good, &cs).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = cases::read_cases(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.parquet"), "{e}");
}

#[test]
fn load_cases_reads_folders_and_rejects_duplicates() {
    let d = tmp();
    let cs = some_cases(10);
    cases::write_cases(&d.path().join("a.jsonl"), &cs[..6]).unwrap();
    cases::write_cases(&d.path().join("b.parquet"), &cs[6..]).unwrap();
    std::fs::write(d.path().join("splits.json"), "{}").unwrap();
    let got = cases::load_cases(d.path()).unwrap();
    assert_eq!(got, cs);
    cases::write_cases(&d.path().join("c.jsonl"), &cs[..1]).unwrap();
    let e = cases::load_cases(d.path()).unwrap_err().to_string();
    assert!(e.contains("also appears in"), "{e}");
    let e = cases::load_cases(&d.path().join("nope.txt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.txt"), "{e}");
}

#[test]
fn parquet_columns_are_nested_types_for_pyarrow() {
    let Some(py) = python() else { return };
    let d = tmp();
    let p = d.path().join("c.parquet");
    cases::write_cases(&p, &some_cases(5)).unwrap();
    let out = run_python(
        &py,
        "import sys, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1])\n\
         s = t.schema\n\
         print(s.field('inquiry_items').type)\n\
         print(s.field('tests').type)\n\
         print(pq.read_metadata(sys.argv[1]).metadata[b'spar.case_schema_version'].decode())\n\
         print(t.num_rows, t.column('inquiry_items')[0][0]['weight'].as_py())",
        &[p.to_str().unwrap()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("list<")
            && lines[0].contains("struct<")
            && lines[0].contains("weight: float"),
        "{out}"
    );
    assert!(lines[1].starts_with("struct<essential: list<"), "{out}");
    assert_eq!(lines[2], "1");
    assert!(lines[3].starts_with("5 "), "{out}");
}

/// A path that does not exist is reported as such, whatever its extension (not as an unknown format).
#[test]
fn a_missing_case_path_is_not_found_not_an_unknown_extension() {
    let d = tempfile::tempdir().unwrap();
    for name in ["cases", "cases.txt", "cases.jsonl", "folder/"] {
        let p = d.path().join(name);
        for e in [
            spar_data::cases::load_cases(&p).unwrap_err().to_string(),
            spar_data::cases::read_cases(&p).unwrap_err().to_string(),
        ] {
            assert_eq!(e, format!("not found: {}", p.display()));
        }
    }
}
