//! A run folder as the review page sees it: the samples `spar rollout` wrote, joined with the records
//! `spar score` wrote for them, each sample one [`Consultation`].
//!
//! Layout read (docs/review.md): `RUN_DIR/samples.parquet` or `RUN_DIR/samples.jsonl` (required) and
//! `RUN_DIR/scored.jsonl` or `RUN_DIR/scored.parquet` (optional: without it the page shows dialogues without
//! rewards); a folder with neither sample file but an evaluation's `report.json` is read as that report
//! (`eval_report.rs`). A scored record belongs to the sample with the same `(group_id, sample_idx)`. Every problem is an
//! error naming the file, and the line or row and field where the readers know them.
use anyhow::{Result, bail};
use spar_core::sample::{EndReason, EpisodeMode, Role, Scored, StepSpan, Turn};
use spar_core::{Sample, Stage};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Sample files looked for, in order.
pub const SAMPLE_FILES: [&str; 2] = ["samples.parquet", "samples.jsonl"];
/// Scored files looked for, in order.
pub const SCORED_FILES: [&str; 2] = ["scored.jsonl", "scored.parquet"];
/// Department of a consultation whose case is not among the cases handed in.
pub const UNKNOWN_DEPARTMENT: &str = "unknown";

/// One consultation (one sample) with its scores, as loaded; overrides change `scored` in place.
#[derive(Clone, Debug)]
pub struct Consultation {
    pub case_id: String,
    pub department: String,
    pub group_id: String,
    pub sample_idx: u32,
    pub stages: Vec<Stage>,
    pub mode: EpisodeMode,
    /// How the episode ended: a rollout `EndReason`, or an evaluation's episode end, as its files spell it.
    pub end: String,
    pub turns: Vec<Turn>,
    /// Token ranges of the doctor's replies; only their stages and count are used here.
    pub steps: Vec<StepSpan>,
    pub scored: Option<Scored>,
    /// Stage scores G_k by stage, where the source gives one per stage (an evaluation report); a run's
    /// segments carry theirs in `scored.stage_score`.
    pub stage_scores: BTreeMap<Stage, f64>,
    /// Lower-cased dialogue and ids, built once so that a search over 10k consultations is one scan.
    pub(crate) haystack: String,
}

impl Consultation {
    fn new(s: Sample, department: String, scored: Option<Scored>) -> Consultation {
        Consultation {
            end: end_name(s.end_reason),
            case_id: s.case_id,
            department,
            group_id: s.group_id,
            sample_idx: s.sample_idx,
            stages: s.stages,
            mode: s.mode,
            turns: s.turns,
            steps: s.steps,
            scored,
            stage_scores: BTreeMap::new(),
            haystack: String::new(),
        }
        .indexed()
    }

    /// Builds the search text; call after the fields are final.
    pub(crate) fn indexed(mut self) -> Consultation {
        let mut haystack = format!("{} {} {} ", self.case_id, self.group_id, self.department);
        for t in &self.turns {
            haystack.push_str(&t.text);
            haystack.push('\n');
        }
        self.haystack = haystack.to_lowercase();
        self
    }

    /// The doctor text the rubric judge read when the run was scored (`Dialogue::sampled_text`), which keys a
    /// reviewer's rubric verdict for the next scoring run; None where the source holds no steps (an evaluation
    /// report) or the steps do not pair with the turns.
    pub fn judged_text(&self) -> Option<String> {
        if self.steps.is_empty() {
            return None;
        }
        spar_rewards::dialogue::Dialogue::from_turns(&self.turns, &self.steps)
            .ok()
            .map(|d| d.sampled_text())
    }

    /// Indices into `turns` of the doctor replies that are steps, in step order. A step is a sampled reply, so
    /// the steps are the last `steps.len()` assistant turns: an interrupted episode's snippet may hold earlier
    /// assistant turns that were injected, not sampled.
    pub fn step_turns(&self) -> Vec<usize> {
        let replies: Vec<usize> = self
            .turns
            .iter()
            .enumerate()
            .filter(|(_, t)| t.role == Role::Assistant)
            .map(|(i, _)| i)
            .collect();
        let skip = replies.len().saturating_sub(self.steps.len());
        replies[skip..].to_vec()
    }
}

/// An end reason as the sample files spell it (`max_turns`, ...).
fn end_name(e: EndReason) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Everything `spar review` serves from one run folder.
#[derive(Debug)]
pub struct RunFolder {
    pub dir: PathBuf,
    pub samples_file: PathBuf,
    pub scored_file: Option<PathBuf>,
    pub consultations: Vec<Consultation>,
}

/// The first of `names` that exists in `dir`.
fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

impl RunFolder {
    /// Loads `dir`; `departments` maps case ids to their department (cases missing there are
    /// [`UNKNOWN_DEPARTMENT`]).
    pub fn open(dir: &Path, departments: &HashMap<String, String>) -> Result<RunFolder> {
        if !dir.is_dir() {
            bail!(
                "{}: not a run folder (expected a folder holding {} or {})",
                dir.display(),
                SAMPLE_FILES[0],
                SAMPLE_FILES[1]
            );
        }
        let Some(samples_file) = first_existing(dir, &SAMPLE_FILES) else {
            let report = dir.join(crate::eval_report::REPORT_FILE);
            if report.is_file() {
                return Ok(RunFolder {
                    dir: dir.to_path_buf(),
                    consultations: crate::eval_report::read(dir)?,
                    samples_file: report,
                    scored_file: None,
                });
            }
            bail!(
                "{}: no {} or {} (the samples `spar rollout --out {}` writes), nor an evaluation's {}",
                dir.display(),
                SAMPLE_FILES[0],
                SAMPLE_FILES[1],
                dir.display(),
                crate::eval_report::REPORT_FILE
            );
        };
        let samples = spar_data::wire::read_samples(&samples_file)?;
        let scored_file = first_existing(dir, &SCORED_FILES);
        let mut scored: HashMap<(String, u32), Scored> = HashMap::new();
        if let Some(f) = &scored_file {
            for (i, s) in spar_data::wire::read_scored(f)?.into_iter().enumerate() {
                let key = (s.group_id.clone(), s.sample_idx);
                if scored.insert(key, s).is_some() {
                    bail!(
                        "{}: record {}: field `sample_idx`: a second record for the same group_id and \
                         sample_idx",
                        f.display(),
                        i + 1
                    );
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut consultations = Vec::with_capacity(samples.len());
        for (i, s) in samples.into_iter().enumerate() {
            let key = (s.group_id.clone(), s.sample_idx);
            if !seen.insert(key.clone()) {
                bail!(
                    "{}: record {}: field `sample_idx`: a second sample with group_id and sample_idx of an \
                     earlier one",
                    samples_file.display(),
                    i + 1
                );
            }
            let sc = scored.remove(&key);
            if let (Some(sc), Some(f)) = (&sc, &scored_file)
                && sc.drop_reason.is_none()
                && sc.steps.len() != s.steps.len()
            {
                bail!(
                    "{}: the record of group_id {:?} sample_idx {}: field `steps`: {} steps, but its sample \
                     in {} has {}",
                    f.display(),
                    s.group_id,
                    s.sample_idx,
                    sc.steps.len(),
                    samples_file.display(),
                    s.steps.len()
                );
            }
            let department = departments
                .get(&s.case_id)
                .cloned()
                .unwrap_or_else(|| UNKNOWN_DEPARTMENT.to_string());
            consultations.push(Consultation::new(s, department, sc));
        }
        if let (Some(f), Some(((g, i), _))) = (&scored_file, scored.into_iter().next()) {
            bail!(
                "{}: a record (group_id {g:?}, sample_idx {i}) has no sample in {}: is this the scored file \
                 of these samples?",
                f.display(),
                samples_file.display()
            );
        }
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            samples_file,
            scored_file,
            consultations,
        })
    }
}
