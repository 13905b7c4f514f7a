//! The evaluation report: `report.json` (for machines; read back by `spar eval --compare`), `report.md` (for
//! people), charts (`charts/*.png` + `*.svg`), and the raw material (`transcripts.jsonl`,
//! `healthbench_results.jsonl`).
mod charts;
mod compare;
mod markdown;

pub use compare::{Comparison, MetricDelta, compare};

use crate::consultation::{ConsultationSummary, EpisodeRecord, summarize};
use crate::healthbench::{ExampleResult, HealthBenchSummary};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use spar_core::fsio::{write_atomic, write_jsonl};
use spar_core::sample::Turn;
use std::path::{Path, PathBuf};

/// `runs/<kind>/<UTC time>`: where `spar eval` writes when no `--out` is given.
pub fn default_out_dir(kind: &str) -> PathBuf {
    PathBuf::from("runs")
        .join(kind)
        .join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
}

/// Version of `report.json`; `read` rejects any other.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// What was evaluated with what (ids of the models and files involved).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSetup {
    /// Data split of the cases (train / validation / test).
    pub split: Option<String>,
    /// Where the cases came from.
    pub cases: Option<String>,
    pub simulator: Option<String>,
    pub scorer: Option<String>,
    pub judge: Option<String>,
    pub extractor: Option<String>,
    pub verifier: Option<String>,
    pub healthbench_file: Option<String>,
    /// The consultation / HealthBench knobs used, as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// An evaluation of one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub schema_version: u32,
    /// When the report was made (RFC 3339, UTC).
    pub created: String,
    /// Id of the policy under evaluation.
    pub policy: String,
    pub setup: EvalSetup,
    pub consultation: Option<ConsultationSummary>,
    /// Per-consultation records (transcripts are in `transcripts.jsonl`).
    #[serde(default)]
    pub episodes: Vec<EpisodeRecord>,
    pub healthbench: Option<HealthBenchSummary>,
    /// Per-example HealthBench results; written to `healthbench_results.jsonl`, not to `report.json`.
    #[serde(skip)]
    pub healthbench_results: Vec<ExampleResult>,
}

/// Paths written by [`EvalReport::write`].
#[derive(Clone, Debug, Default)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub charts: Vec<PathBuf>,
    pub transcripts: Option<PathBuf>,
    pub healthbench_results: Option<PathBuf>,
}

#[derive(Serialize)]
struct TranscriptLine<'a> {
    case_id: &'a str,
    sample_idx: u32,
    end: &'a str,
    turns: &'a [Turn],
}

impl EvalReport {
    /// An empty report for `policy`.
    pub fn new(policy: impl Into<String>, setup: EvalSetup) -> Self {
        EvalReport {
            schema_version: REPORT_SCHEMA_VERSION,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            policy: policy.into(),
            setup,
            consultation: None,
            episodes: vec![],
            healthbench: None,
            healthbench_results: vec![],
        }
    }

    /// Adds consultation records and their summary.
    pub fn with_consultations(mut self, episodes: Vec<EpisodeRecord>) -> Self {
        let extractor = self.setup.extractor.clone().unwrap_or_default();
        let verifier = self.setup.verifier.clone().unwrap_or_default();
        self.consultation = Some(summarize(&episodes, &extractor, &verifier));
        self.episodes = episodes;
        self
    }

    /// Why the report scored nothing, when it did not: every consultation failed (policy or simulator), or every
    /// HealthBench answer did. `spar eval` then exits non-zero, since a report of failures only is no result.
    pub fn nothing_scored(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Some(c) = &self.consultation
            && c.overall.episodes > 0
            && c.overall.failed == c.overall.episodes
        {
            let reasons: Vec<String> = c
                .end_reasons
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            why.push(format!(
                "all {} consultations failed ({})",
                c.overall.episodes,
                reasons.join(", ")
            ));
        }
        if let Some(h) = &self.healthbench
            && h.examples > 0
            && h.failed == h.examples
        {
            why.push(format!("all {} HealthBench answers failed", h.examples));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Adds HealthBench results.
    pub fn with_healthbench(
        mut self,
        summary: HealthBenchSummary,
        results: Vec<ExampleResult>,
    ) -> Self {
        self.healthbench = Some(summary);
        self.healthbench_results = results;
        self
    }

    /// Writes `report.json`, `report.md`, the charts and the transcripts into `dir` (created if missing); every
    /// file is written atomically.
    pub fn write(&self, dir: &Path) -> Result<ReportFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = ReportFiles {
            json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            ..Default::default()
        };
        files.charts = charts::report_charts(self, &dir.join("charts"))?;
        let json = serde_json::to_vec_pretty(self)?;
        write_atomic(&files.json, &json)?;
        write_atomic(
            &files.markdown,
            markdown::report(self, dir, &files.charts).as_bytes(),
        )?;
        if self.episodes.iter().any(|e| !e.transcript.is_empty()) {
            let path = dir.join("transcripts.jsonl");
            let lines: Vec<TranscriptLine> = self
                .episodes
                .iter()
                .map(|e| TranscriptLine {
                    case_id: &e.case_id,
                    sample_idx: e.sample_idx,
                    end: e.end.name(),
                    turns: &e.transcript,
                })
                .collect();
            write_jsonl(&path, &lines)?;
            files.transcripts = Some(path);
        }
        if !self.healthbench_results.is_empty() {
            let path = dir.join("healthbench_results.jsonl");
            write_jsonl(&path, &self.healthbench_results)?;
            files.healthbench_results = Some(path);
        }
        Ok(files)
    }

    /// Reads a `report.json` (or the directory holding one).
    pub fn read(path: &Path) -> Result<EvalReport> {
        let file = if path.is_dir() {
            path.join("report.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(REPORT_SCHEMA_VERSION) => {}
            Some(v) => bail!(
                "{}: field `schema_version`: {v} is not the supported version {REPORT_SCHEMA_VERSION}",
                file.display()
            ),
            None => bail!(
                "{}: field `schema_version`: missing (is this a spar eval report.json?)",
                file.display()
            ),
        }
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    }
}
