//! An evaluation report folder (`spar eval --out DIR`: `report.json` + `transcripts.jsonl`) as consultations
//! for review. Read as JSON here rather than through spar-eval's types: spar-eval links libtorch, and this crate
//! must not. Fields read (eval/src/report, `EpisodeRecord`): `schema_version`, and per episode `case_id`,
//! `department`, `sample_idx`, `end`, `stages` (stage -> `{score, parsed}`), `flagged_claims` (`{text, label,
//! source}`: the refuted and uncertain claims), `error`; transcripts join on `(case_id, sample_idx)`.
//!
//! An evaluation has no steps, rubric, advantages or R_fact: the consultation's record carries the composite
//! (mean stage score) as R and R_task, the flagged claims, and NaN where there is no value (the page shows "–").
use crate::run::Consultation;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use spar_core::Stage;
use spar_core::sample::{ClaimLabel, ClaimRecord, EpisodeMode, SCHEMA_VERSION, Scored, Turn};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The report version this reader knows (spar-eval's `REPORT_SCHEMA_VERSION`).
pub const REPORT_VERSION: u64 = 1;
pub const REPORT_FILE: &str = "report.json";
pub const TRANSCRIPTS_FILE: &str = "transcripts.jsonl";

#[derive(Deserialize)]
struct StageScore {
    score: f64,
    parsed: bool,
}

#[derive(Deserialize)]
struct Flagged {
    text: String,
    label: ClaimLabel,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Deserialize)]
struct Episode {
    case_id: String,
    department: String,
    sample_idx: u32,
    end: String,
    #[serde(default)]
    stages: BTreeMap<Stage, StageScore>,
    #[serde(default)]
    flagged_claims: Vec<Flagged>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct TranscriptLine {
    case_id: String,
    sample_idx: u32,
    turns: Vec<Turn>,
}

/// The consultations of the report in `dir`.
pub fn read(dir: &Path) -> Result<Vec<Consultation>> {
    let file = dir.join(REPORT_FILE);
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    match v.get("schema_version").and_then(|x| x.as_u64()) {
        Some(REPORT_VERSION) => {}
        Some(x) => bail!(
            "{}: field `schema_version`: {x} is not the supported version {REPORT_VERSION}",
            file.display()
        ),
        None => bail!("{}: field `schema_version` missing", file.display()),
    }
    let Some(episodes) = v.get("episodes").and_then(|e| e.as_array()) else {
        bail!(
            "{}: field `episodes` missing (a report without consultations)",
            file.display()
        );
    };
    let mut transcripts: HashMap<(String, u32), Vec<Turn>> = HashMap::new();
    let tfile = dir.join(TRANSCRIPTS_FILE);
    if tfile.is_file() {
        let t = std::fs::read_to_string(&tfile)
            .with_context(|| format!("reading {}", tfile.display()))?;
        for (i, line) in t.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let l: TranscriptLine = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", tfile.display(), i + 1))?;
            transcripts.insert((l.case_id, l.sample_idx), l.turns);
        }
    }
    episodes
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e: Episode = serde_json::from_value(e.clone()).map_err(|err| {
                anyhow::anyhow!("{}: field `episodes[{i}]`: {err}", file.display())
            })?;
            Ok(consultation(e, &mut transcripts))
        })
        .collect()
}

fn consultation(e: Episode, transcripts: &mut HashMap<(String, u32), Vec<Turn>>) -> Consultation {
    let turns = transcripts
        .remove(&(e.case_id.clone(), e.sample_idx))
        .unwrap_or_default();
    // A stage whose output did not parse scores 0 (method.md section 9), as the report's own means count it.
    let stage_scores: BTreeMap<Stage, f64> = e
        .stages
        .iter()
        .map(|(s, x)| (*s, if x.parsed { x.score } else { 0.0 }))
        .collect();
    let composite = if stage_scores.is_empty() {
        f64::NAN
    } else {
        stage_scores.values().sum::<f64>() / stage_scores.len() as f64
    };
    let group_id = format!("eval/{}", e.case_id);
    let scored = Scored {
        schema_version: SCHEMA_VERSION,
        run_id: "eval".into(),
        case_id: e.case_id.clone(),
        group_id: group_id.clone(),
        sample_idx: e.sample_idx,
        r_task: composite,
        rubric: vec![],
        stage_score: None,
        claims: e
            .flagged_claims
            .into_iter()
            .map(|c| ClaimRecord {
                text: c.text,
                label: c.label,
                saliency: 1.0,
                source: c.source,
            })
            .collect(),
        r_fact: f64::NAN,
        lambda: f64::NAN,
        reward: composite,
        steps: vec![],
        drop_reason: e.error,
        components: Default::default(),
    };
    Consultation {
        case_id: e.case_id,
        department: e.department,
        group_id,
        sample_idx: e.sample_idx,
        stages: stage_scores.keys().copied().collect(),
        mode: EpisodeMode::Fresh,
        end: e.end,
        turns,
        steps: vec![],
        scored: Some(scored),
        stage_scores,
        haystack: String::new(),
    }
    .indexed()
}
