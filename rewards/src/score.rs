//! Offline scoring of finished trajectories (`spar score`): read samples, group them by `group_id`, score each
//! group against its case with a [`RewardPipeline`], and report. Bad input records are reported with their
//! line (or row) number and skipped; a sample that cannot be scored still gets a `Scored` record carrying its
//! drop reason, so nothing disappears between the input and the output.
use crate::fact::CacheStats;
use crate::pipeline::{PipelineMetrics, RewardPipeline};
use serde::{Deserialize, Serialize};
use spar_core::sample::{SCHEMA_VERSION, Sample};
use spar_core::{Case, Error, Result, Scored};
use std::collections::HashMap;
use std::path::Path;

/// An input record that could not be read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BadRecord {
    /// 1-based line (JSONL) or row (parquet).
    pub line: usize,
    pub error: String,
}

/// Reads samples from `.jsonl` (line by line: bad lines are returned, the rest read on) or `.parquet`.
pub fn read_samples(path: &Path) -> Result<(Vec<Sample>, Vec<BadRecord>)> {
    Error::must_exist(path)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "json" => {
            let (ok, bad) = spar_core::fsio::read_jsonl::<Sample>(path, Some(SCHEMA_VERSION))?;
            Ok((
                ok,
                bad.into_iter()
                    .map(|b| BadRecord {
                        line: b.line,
                        error: b.error.to_string(),
                    })
                    .collect(),
            ))
        }
        // Parquet is written by spar's own writers, which check every record; a bad row fails the whole file
        // with its row number and field.
        "parquet" => Ok((spar_data::wire::read_samples(path)?, vec![])),
        _ => Err(Error::invalid(
            path.display(),
            "expected a .jsonl or .parquet file of samples",
        )),
    }
}

/// What one scoring run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScoreReport {
    pub samples: usize,
    pub groups: usize,
    pub bad_records: Vec<BadRecord>,
    /// Samples whose `Scored` carries a drop reason.
    pub dropped: usize,
    pub mean_reward: f64,
    pub cache: CacheStats,
    pub cache_hit_rate: f64,
    pub cache_backend: String,
    /// Rubric verdicts answered by a reviewer's override (`spar review`) instead of the judge.
    #[serde(default)]
    pub rubric_overrides: u64,
    pub metrics: PipelineMetrics,
}

/// Groups samples by `group_id`, in order of first appearance (samples keep their order inside a group).
pub fn group_samples(samples: Vec<Sample>) -> Vec<Vec<Sample>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<Sample>> = HashMap::new();
    for s in samples {
        if !groups.contains_key(&s.group_id) {
            order.push(s.group_id.clone());
        }
        groups.entry(s.group_id.clone()).or_default().push(s);
    }
    order
        .into_iter()
        .map(|g| groups.remove(&g).unwrap_or_default())
        .collect()
}

/// A `Scored` for a sample that could not be scored at all (unknown case, mixed group), so that it is not lost.
pub fn unscorable(s: &Sample, reason: String) -> Scored {
    Scored {
        schema_version: SCHEMA_VERSION,
        run_id: s.run_id.clone(),
        case_id: s.case_id.clone(),
        group_id: s.group_id.clone(),
        sample_idx: s.sample_idx,
        r_task: 0.0,
        rubric: vec![],
        stage_score: None,
        claims: vec![],
        r_fact: 0.0,
        lambda: 0.0,
        reward: 0.0,
        steps: s
            .steps
            .iter()
            .map(|_| spar_core::sample::StepScore {
                violations: vec![],
                gamma: 1.0,
                advantage: 0.0,
            })
            .collect(),
        drop_reason: Some(reason),
        components: Default::default(),
    }
}

/// Scores every group; `progress(n)` is called after each group with the samples it held. Groups are scored
/// `parallel` at a time (judge calls inside are bounded by the pipeline's own limit).
pub async fn score_groups(
    pipeline: &RewardPipeline,
    cases: &HashMap<String, Case>,
    groups: Vec<Vec<Sample>>,
    parallel: usize,
    progress: impl Fn(usize),
) -> Vec<Scored> {
    use futures::StreamExt;
    let jobs = groups.into_iter().map(|g| async move {
        let case_id = g.first().map(|s| s.case_id.clone()).unwrap_or_default();
        let out = if let Some(s) = g.iter().find(|s| s.case_id != case_id) {
            let why = format!(
                "mixed_group: group `{}` holds cases `{case_id}` and `{}`",
                s.group_id, s.case_id
            );
            g.iter().map(|s| unscorable(s, why.clone())).collect()
        } else {
            match cases.get(&case_id) {
                Some(case) => pipeline.score_group(case, &g).await,
                None => g
                    .iter()
                    .map(|s| {
                        unscorable(
                            s,
                            format!("unknown_case: `{case_id}` is not in the cases file"),
                        )
                    })
                    .collect(),
            }
        };
        (g.len(), out)
    });
    let mut stream = futures::stream::iter(jobs).buffered(parallel.max(1));
    let mut all = Vec::new();
    while let Some((n, out)) = stream.next().await {
        progress(n);
        all.extend(out);
    }
    all
}

/// Summarises a run.
pub fn report(
    pipeline: &RewardPipeline,
    scored: &[Scored],
    groups: usize,
    bad: Vec<BadRecord>,
) -> ScoreReport {
    let kept: Vec<f64> = scored
        .iter()
        .filter(|s| s.drop_reason.is_none())
        .map(|s| s.reward)
        .collect();
    let cache = pipeline.cache_stats();
    ScoreReport {
        samples: scored.len(),
        groups,
        bad_records: bad,
        dropped: scored.len() - kept.len(),
        mean_reward: if kept.is_empty() {
            0.0
        } else {
            kept.iter().sum::<f64>() / kept.len() as f64
        },
        cache_hit_rate: cache.hit_rate(),
        cache,
        cache_backend: pipeline.cache_backend().to_string(),
        rubric_overrides: pipeline.rubric_override_hits(),
        metrics: pipeline.metrics(),
    }
}
