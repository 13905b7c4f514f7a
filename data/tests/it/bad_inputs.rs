//! The bad-input corpus (`tests/bad_inputs/`, written by its `make.py`): malformed recipes, case files and sample
//! files, each with the substring its error must contain (`expected.tsv`). Every file is read with spar's own
//! reader and must give an error, not a panic and not a silent success, whose message names the file and the
//! key or field at fault.
use spar_core::recipe::Recipe;
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad_inputs")
}

/// Reads `path` with the reader of its kind (the folder it is in); the error's text, or None on success.
fn read(kind: &str, path: &Path) -> Option<String> {
    match kind {
        "recipes" => Recipe::load(path, &[]).err().map(|e| e.to_string()),
        "cases" => spar_data::cases::read_cases(path)
            .err()
            .map(|e| e.to_string()),
        "samples" => spar_data::wire::read_samples(path)
            .err()
            .map(|e| e.to_string()),
        other => panic!("unknown corpus folder {other}"),
    }
}

#[test]
fn every_bad_input_is_an_error_naming_the_file_and_the_field() {
    let list = std::fs::read_to_string(corpus().join("expected.tsv")).unwrap();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (file, want) = line.split_once('\t').expect("file<TAB>substring");
        let path = corpus().join(file);
        let kind = file.split('/').next().unwrap_or_default();
        n += 1;
        match std::panic::catch_unwind(|| read(kind, &path)) {
            Err(_) => failures.push(format!("{file}: panicked")),
            Ok(None) => failures.push(format!("{file}: read without an error")),
            Ok(Some(e)) => {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if !e.contains(&name) || !e.contains(want) {
                    failures.push(format!("{file}: wanted `{name}` and `{want}` in: {e}"));
                }
            }
        }
    }
    assert!(n >= 150, "the corpus has {n} inputs, fewer than 150");
    assert!(
        failures.is_empty(),
        "{} of {n} bad inputs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
