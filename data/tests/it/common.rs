//! Fixtures shared by the data tests.
use spar_core::sample::{
    ClaimLabel, ClaimRecord, EndReason, EpisodeMode, ItemVerdict, Role, RoutedExperts,
    SCHEMA_VERSION, StepScore, StepSpan, Turn,
};
use spar_core::{Case, Sample, Scored, Stage};
use std::path::{Path, PathBuf};

/// The shipped cases as checked in (`data/cases/`), not the copy embedded in the binary.
pub fn source_cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases")
}

/// A few generated cases covering several departments.
pub fn some_cases(n: usize) -> Vec<Case> {
    spar_data::generate::generate(n, 11).expect("the disease table generates")
}

pub fn sample(idx: u32, with_experts: bool) -> Sample {
    let t = 6;
    Sample {
        schema_version: SCHEMA_VERSION,
        run_id: "run-1".into(),
        case_id: "nstemi-7-0000".into(),
        group_id: "g-0".into(),
        sample_idx: idx,
        stages: vec![Stage::Inquiry, Stage::Ddx],
        mode: EpisodeMode::Interrupted,
        policy_version: 3,
        end_reason: EndReason::Truncated,
        token_ids: vec![151644, 77091, 198, 40, 1079, 151645],
        loss_mask: vec![0, 0, 0, 1, 1, 1],
        rollout_logprobs: vec![0.0, 0.0, 0.0, -0.125, -1.5e-7, -3.25],
        routed_experts: with_experts.then(|| RoutedExperts {
            layers: 2,
            k: 2,
            ids: (0..(t * 4) as u16).collect(),
        }),
        steps: vec![StepSpan {
            stage: Stage::Inquiry,
            start: 3,
            end: 6,
        }],
        turns: vec![
            Turn::new(Role::User, "Hello doctor. Chest pain."),
            Turn {
                role: Role::Assistant,
                text: "When did it start?".into(),
                stage: Some(Stage::Inquiry),
            },
        ],
    }
}

pub fn scored(idx: u32) -> Scored {
    Scored {
        schema_version: SCHEMA_VERSION,
        run_id: "run-1".into(),
        case_id: "nstemi-7-0000".into(),
        group_id: "g-0".into(),
        sample_idx: idx,
        r_task: 0.625,
        rubric: vec![
            ItemVerdict {
                criterion: "Asks about allergies".into(),
                points: 3,
                met: Some(true),
                explanation: String::new(),
            },
            ItemVerdict {
                criterion: "Judge failed".into(),
                points: -5,
                met: None,
                explanation: "timeout".into(),
            },
        ],
        stage_score: if idx.is_multiple_of(2) {
            Some(0.75)
        } else {
            None
        },
        claims: vec![ClaimRecord {
            text: "Troponin rises within hours.".into(),
            label: ClaimLabel::Supported,
            saliency: 0.3,
            source: Some("kb:troponin".into()),
        }],
        r_fact: -0.1,
        lambda: 0.5,
        reward: 0.575,
        steps: vec![StepScore {
            violations: vec!["repeated_question".into()],
            gamma: 0.9,
            advantage: -1.2345678901234567,
        }],
        drop_reason: if idx == 1 {
            Some("simulator_failed".into())
        } else {
            None
        },
        components: if idx == 1 {
            Default::default()
        } else {
            [
                ("fact_term".to_string(), -0.05),
                ("mu_raw".to_string(), 0.4),
            ]
            .into_iter()
            .collect()
        },
    }
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn python() -> Option<PathBuf> {
    match std::env::var_os("SPAR_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!("skipping: SPAR_PYTHON is not set (source scripts/bootstrap.sh)");
            None
        }
    }
}

/// Runs a Python snippet with `SPAR_PYTHON`; panics with its stderr when it fails.
pub fn run_python(py: &PathBuf, code: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes JSON rows to parquet with the given schema and key-value metadata, bypassing spar's writers: for
/// files that spar itself would refuse to write (wrong version, missing column, bad value).
pub fn write_raw_parquet(
    path: &std::path::Path,
    schema: arrow::datatypes::SchemaRef,
    rows: &[serde_json::Value],
    kv: &[(&str, &str)],
) {
    use parquet::file::metadata::KeyValue;
    let mut dec = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .unwrap();
    dec.serialize(rows).unwrap();
    let batch = dec.flush().unwrap().unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(
            kv.iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
                .collect(),
        ))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// `schema` without the named top-level column.
pub fn without_column(
    schema: &arrow::datatypes::Schema,
    name: &str,
) -> arrow::datatypes::SchemaRef {
    std::sync::Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != name)
            .cloned()
            .collect::<Vec<_>>(),
    ))
}
