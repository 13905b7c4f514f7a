//! What `spar rollout` writes: the samples as parquet (the wire format of `docs/trajectories.md`, written by
//! `spar_data::write_samples_parquet`), one markdown transcript per group, and a summary.
use crate::actor::Group;
use anyhow::{Context, Result};
use serde::Serialize;
use spar_core::fsio::write_atomic;
use spar_core::sample::{Role, Sample};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Counts written to `summary.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub groups: usize,
    pub samples: usize,
    pub generated_tokens: u64,
    pub seconds: f64,
    pub episodes_per_s: f64,
    pub tokens_per_s: f64,
    /// Samples per end reason.
    pub end_reasons: BTreeMap<String, usize>,
    /// Samples per stage (segmented mode) or "episode".
    pub stages: BTreeMap<String, usize>,
    pub pool_sizes: [usize; 4],
}

/// Writes `dir/samples.parquet`, `dir/transcripts/<n>.md` and `dir/summary.json` (each atomically).
pub fn write_run(dir: &Path, groups: &[Group], summary: &Summary) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("transcripts"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let samples: Vec<Sample> = groups
        .iter()
        .flat_map(|g| g.samples.iter().cloned())
        .collect();
    let path = dir.join("samples.parquet");
    spar_data::write_samples_parquet(&path, &samples)?;
    for (i, g) in groups.iter().enumerate() {
        let p = dir
            .join("transcripts")
            .join(format!("{i:05}-{}.md", sanitize(&g.case_id)));
        write_atomic(&p, transcript(g).as_bytes())?;
    }
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    Ok(path)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A human-readable view of one group: every sample's dialogue, stage by stage, with its end reason.
pub fn transcript(g: &Group) -> String {
    let mut s = String::new();
    let stage = g
        .stage
        .map_or("whole episode".to_string(), |st| format!("stage {st}"));
    let _ = writeln!(
        s,
        "# {} — case `{}`, {stage}, {:?} opening\n",
        g.group_id, g.case_id, g.mode
    );
    for (i, sample) in g.samples.iter().enumerate() {
        let gate = g
            .gate_scores
            .get(i)
            .copied()
            .flatten()
            .map(|v| format!(", gate V = {v:.3}"))
            .unwrap_or_default();
        let promoted = if g.promoted.contains(&sample.sample_idx) {
            ", promoted"
        } else {
            ""
        };
        let generated: usize = sample.loss_mask.iter().filter(|&&m| m == 1).count();
        let _ = writeln!(
            s,
            "## sample {} — {:?}{gate}{promoted} ({} tokens, {generated} sampled)\n",
            sample.sample_idx,
            sample.end_reason,
            sample.token_ids.len()
        );
        if let Some((_, note)) = g.notes.iter().find(|(idx, _)| *idx == sample.sample_idx) {
            let _ = writeln!(s, "> ended early: {note}\n");
        }
        for t in &sample.turns {
            let who = match t.role {
                Role::System => "system",
                Role::User => "patient / instruction",
                Role::Assistant => "doctor",
            };
            let st = t.stage.map(|x| format!(" [{x}]")).unwrap_or_default();
            let _ = writeln!(s, "**{who}**{st}: {}\n", t.text.trim());
        }
    }
    s
}
