//! Import of verl-style RL parquet (`data_source`, `prompt` = list of chat messages, `ability`, `reward_model` =
//! {style, ground_truth}, `extra_info`): rows that carry a spar case become `Case`s; the others become
//! [`RlPrompt`] records (a prompt with its reference answer: not a consultation, so no case can be made up).
//!
//! A row carries a case when `extra_info.case` is a case object (or a JSON string of one), or when
//! `reward_model.ground_truth` is a JSON string of a case object (spar's own verl export does this).
use crate::parquet_io::{ParquetRows, from_row};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spar_core::{Case, Error, Result};
use std::path::Path;

/// One chat message of a verl `prompt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A verl row that is not a consultation case: an RL prompt with its reward reference, as written by
/// `spar data import-verl` (JSONL, one per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlPrompt {
    /// `<data_source>-<extra_info.index>` when the row has an index, else `<data_source>-<row>`.
    pub id: String,
    pub data_source: String,
    pub prompt: Vec<ChatMessage>,
    /// `reward_model.style` ("rule", "model", ...).
    pub reward_style: String,
    /// `reward_model.ground_truth`, as found (string, list or object).
    pub ground_truth: Value,
    #[serde(default)]
    pub ability: Option<String>,
    #[serde(default)]
    pub extra_info: Value,
}

/// What a verl file held.
#[derive(Clone, Debug, Default)]
pub struct VerlImport {
    pub cases: Vec<Case>,
    pub prompts: Vec<RlPrompt>,
}

#[derive(Deserialize)]
struct RewardModel {
    style: String,
    ground_truth: Value,
}

#[derive(Deserialize)]
struct Row {
    data_source: String,
    prompt: Vec<ChatMessage>,
    reward_model: RewardModel,
    #[serde(default)]
    ability: Option<String>,
    #[serde(default)]
    extra_info: Value,
}

const REQUIRED: [&str; 3] = ["data_source", "prompt", "reward_model"];

fn embedded_case(row: &Row) -> Option<(&'static str, Value)> {
    let as_obj = |v: &Value| -> Option<Value> {
        match v {
            Value::Object(_) => Some(v.clone()),
            Value::String(s) if s.trim_start().starts_with('{') => serde_json::from_str::<Value>(s)
                .ok()
                .filter(|v| v.get("diagnosis").is_some()),
            _ => None,
        }
    };
    if let Some(c) = row.extra_info.get("case").and_then(as_obj) {
        return Some(("extra_info.case", c));
    }
    as_obj(&row.reward_model.ground_truth)
        .filter(|v| v.get("diagnosis").is_some())
        .map(|v| ("reward_model.ground_truth", v))
}

/// Reads a verl parquet file; errors name the file, the 1-based row and the field (`prompt[1].role`,
/// `extra_info.case.diagnosis.icd10`, ...). Cases are validated.
pub fn import_verl(path: &Path) -> Result<VerlImport> {
    let pq = ParquetRows::open(path)?;
    for col in REQUIRED {
        if pq.schema.field_with_name(col).is_err() {
            return Err(Error::Field {
                file: pq.file.clone(),
                line: 1,
                field: col.into(),
                msg: "missing column (verl needs data_source, prompt, reward_model)".into(),
            });
        }
    }
    let mut out = VerlImport::default();
    for (i, json) in pq.json_rows()?.into_iter().enumerate() {
        let r = i + 1;
        let row: Row = from_row(&pq.file, r, json.into())?;
        if row.prompt.is_empty() {
            return Err(Error::Field {
                file: pq.file.clone(),
                line: r,
                field: "prompt".into(),
                msg: "no messages".into(),
            });
        }
        if let Some((at, value)) = embedded_case(&row) {
            let case: Case = from_row(&pq.file, r, value).map_err(|e| prefix(e, at))?;
            if let Some(p) = case.validate().into_iter().next() {
                return Err(Error::Field {
                    file: pq.file.clone(),
                    line: r,
                    field: format!("{at}.{}", p.field),
                    msg: p.msg,
                });
            }
            out.cases.push(case);
        } else {
            let index = row
                .extra_info
                .get("index")
                .map(|v| v.to_string().trim_matches('"').to_string());
            out.prompts.push(RlPrompt {
                id: format!(
                    "{}-{}",
                    row.data_source,
                    index.unwrap_or_else(|| r.to_string())
                ),
                data_source: row.data_source,
                prompt: row.prompt,
                reward_style: row.reward_model.style,
                ground_truth: row.reward_model.ground_truth,
                ability: row.ability,
                extra_info: row.extra_info,
            });
        }
    }
    Ok(out)
}

fn prefix(e: Error, at: &str) -> Error {
    match e {
        Error::Field {
            file,
            line,
            field,
            msg,
        } => Error::Field {
            file,
            line,
            field: format!("{at}.{field}"),
            msg,
        },
        other => other,
    }
}

#[derive(Serialize)]
struct OutRewardModel {
    style: &'static str,
    ground_truth: String,
}

#[derive(Serialize)]
struct OutExtra<'a> {
    index: i64,
    case_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<&'static str>,
}

#[derive(Serialize)]
struct OutRow<'a> {
    data_source: &'static str,
    prompt: Vec<ChatMessage>,
    ability: &'static str,
    reward_model: OutRewardModel,
    extra_info: OutExtra<'a>,
}

/// `data_source` of rows written by [`export_verl`].
pub const SPAR_DATA_SOURCE: &str = "spar/consultation";

fn verl_schema() -> arrow::datatypes::SchemaRef {
    use crate::parquet_io::{list, strukt, utf8};
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        utf8("data_source"),
        list("prompt", strukt(vec![utf8("role"), utf8("content")])),
        utf8("ability"),
        Field::new(
            "reward_model",
            strukt(vec![utf8("style"), utf8("ground_truth")]),
            false,
        ),
        Field::new(
            "extra_info",
            strukt(vec![
                Field::new("index", DataType::Int64, false),
                utf8("case_id"),
                Field::new("split", DataType::Utf8, true),
            ]),
            false,
        ),
    ]))
}

/// Writes cases as a verl RL parquet: the prompt is the patient's opening line, `reward_model.ground_truth` the
/// whole case as JSON (so [`import_verl`] gets the cases back), `extra_info` the index, case id and split.
pub fn export_verl(
    path: &Path,
    cases: &[Case],
    splits: Option<&crate::splits::Splits>,
) -> Result<()> {
    crate::cases::validate_cases(&path.display().to_string(), cases)?;
    let rows: Vec<OutRow> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| OutRow {
            data_source: SPAR_DATA_SOURCE,
            prompt: vec![ChatMessage {
                role: "user".into(),
                content: crate::expert::opening(c),
            }],
            ability: "medicine",
            reward_model: OutRewardModel {
                style: "rule",
                ground_truth: serde_json::to_string(c).expect("a Case always serializes"),
            },
            extra_info: OutExtra {
                index: i as i64,
                case_id: &c.id,
                split: splits.and_then(|s| s.split_of(&c.id)).map(|s| s.name()),
            },
        })
        .collect();
    crate::parquet_io::write_parquet(path, verl_schema(), &rows, &[])
}
