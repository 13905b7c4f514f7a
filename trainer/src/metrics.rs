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
}

impl MetricsLogger {
    /// Opens `run_dir/metrics.jsonl` and a new event file in `run_dir/tb/`. With `resume_step`, lines and events
    /// past that step (written after the checkpoint the run resumes from) are dropped, so the logs match what the
    /// resumed run will write again; without, the old ones are removed.
    pub fn open(run_dir: &Path, resume_step: Option<usize>) -> Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let path = run_dir.join("metrics.jsonl");
        let tb = run_dir.join("tb");
        match resume_step {
            Some(step) => {
                if path.exists() {
                    let text = std::fs::read_to_string(&path)?;
                    let kept: String = text
                        .lines()
                        .filter(|l| {
                            serde_json::from_str::<serde_json::Value>(l)
                                .ok()
                                .and_then(|v| v.get("step")?.as_u64())
                                .is_some_and(|s| s as usize <= step)
                        })
                        .map(|l| format!("{l}\n"))
                        .collect();
                    spar_core::fsio::write_atomic(&path, kept.as_bytes())?;
                }
                crate::tfevent::cut_back(&tb, step)?;
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
        Ok(MetricsLogger { jsonl, tb, path })
    }

    pub fn log(&mut self, step: usize, scalars: &[(String, f64)]) -> Result<()> {
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
        writeln!(self.jsonl, "{}", serde_json::Value::Object(obj))?;
        self.jsonl.flush()?;
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
