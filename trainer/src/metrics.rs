//! Run metrics: one JSON object per line in `metrics.jsonl` (`{"step": n, "time": t, "<key>": value, ...}`)
//! and the same scalars in TensorBoard event files under `tb/`.
use crate::tfevent::EventWriter;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLogger {
    jsonl: std::fs::File,
    tb: EventWriter,
    pub path: PathBuf,
    /// The step of the last [`MetricsLogger::log`] and how many logs that step has had ([`MetricsLogger::logged_at`]).
    last: (usize, usize),
}

/// Where a resumed run's logs are cut back to: what was logged before its checkpoint. Several logs can share a
/// step (the last SFT step's losses, then the held-out evaluation before RL, both at the step SFT ended), so a
/// step alone cannot tell the logs before a checkpoint from those after it: `at_step` counts the logs of `step`
/// the checkpoint had seen (None, for checkpoints that did not record it: every log of `step` is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutBack {
    pub step: usize,
    pub at_step: Option<usize>,
}

impl CutBack {
    /// Keeps every log of the steps before `self.step` and the first `at_step` logs of `self.step`; `seen` counts
    /// the logs of `self.step` met so far (lines of `metrics.jsonl`, or TensorBoard events: one per log).
    pub(crate) fn keeps(&self, step: usize, seen: &mut usize) -> bool {
        match step.cmp(&self.step) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                *seen += 1;
                self.at_step.is_none_or(|n| *seen <= n)
            }
        }
    }
}

impl MetricsLogger {
    /// Opens `run_dir/metrics.jsonl` and a new event file in `run_dir/tb/`. With `resume`, lines and events
    /// written after the checkpoint the run resumes from are dropped ([`CutBack`]), so the logs match what the
    /// resumed run will write again and nothing shows twice; without, the old ones are removed.
    pub fn open(run_dir: &Path, resume: Option<CutBack>) -> Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let path = run_dir.join("metrics.jsonl");
        let tb = run_dir.join("tb");
        let mut last = (0, 0);
        match resume {
            Some(cut) => {
                if path.exists() {
                    let text = std::fs::read_to_string(&path)?;
                    let mut seen = 0;
                    let kept: String = text
                        .lines()
                        .filter(|l| {
                            serde_json::from_str::<serde_json::Value>(l)
                                .ok()
                                .and_then(|v| v.get("step")?.as_u64())
                                .is_some_and(|s| cut.keeps(s as usize, &mut seen))
                        })
                        .map(|l| format!("{l}\n"))
                        .collect();
                    spar_core::fsio::write_atomic(&path, kept.as_bytes())?;
                    last = (cut.step, seen.min(cut.at_step.unwrap_or(usize::MAX)));
                }
                crate::tfevent::cut_back(&tb, cut)?;
            }
            None => {
                let _ = std::fs::remove_file(&path);
                crate::tfevent::remove_events(&tb)?;
            }
        }
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let tb = EventWriter::create(&tb)?;
        Ok(MetricsLogger {
            jsonl,
            tb,
            path,
            last,
        })
    }

    /// How many logs `step` has had (its lines in `metrics.jsonl`, its events): a checkpoint records it for
    /// [`CutBack::at_step`].
    pub fn logged_at(&self, step: usize) -> usize {
        if self.last.0 == step { self.last.1 } else { 0 }
    }

    pub fn log(&mut self, step: usize, scalars: &[(String, f64)]) -> Result<()> {
        self.last = match self.last {
            (s, n) if s == step => (s, n + 1),
            _ => (step, 1),
        };
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        obj.insert("time".into(), t.into());
        for (k, v) in scalars {
            // JSON has no NaN: non-finite values are written as null and still reach TensorBoard.
            obj.insert(
                k.clone(),
                serde_json::Number::from_f64(*v)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        // One write of the whole line: `writeln!` on the file wrote each piece of the JSON as its own system call,
        // so a reader polling the file (a dashboard, a test waiting for a round) could read half a line.
        let line = format!("{}\n", serde_json::Value::Object(obj));
        self.jsonl.write_all(line.as_bytes())?;
        let refs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.tb.scalars(step as i64, &refs)
    }
}

/// Reads `metrics.jsonl` into (key -> [(step, value)]), skipping nulls.
pub fn read_series(path: &Path) -> Result<std::collections::BTreeMap<String, Vec<(f64, f64)>>> {
    let text = std::fs::read_to_string(path).map_err(|e| spar_core::Error::io(path, e))?;
    let mut out: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(obj) = v.as_object() {
            for (k, x) in obj {
                if k == "step" || k == "time" {
                    continue;
                }
                if let Some(x) = x.as_f64() {
                    out.entry(k.clone()).or_default().push((step, x));
                }
            }
        }
    }
    Ok(out)
}
