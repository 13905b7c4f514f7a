//! HealthBench's score, as openai/simple-evals computes it (`healthbench_eval.py`), which is not Eq. 1:
//!
//! - per example: (sum of the points of the criteria met, negative ones included) / (sum of the positive points).
//!   It is at most 1 and may be negative.
//! - per rubric tag (`axis:accuracy`, `level:cluster`, ...): the same ratio over the example's criteria carrying
//!   that tag; an example whose tagged criteria have no positive points has no value for the tag.
//! - per example tag (`theme:emergency_referrals`, ...): the example's overall score, grouped by tag.
//! - aggregate: the mean over examples, clipped to [0, 1] ([`ClipMode::Mean`], simple-evals), with a bootstrap
//!   standard deviation of that clipped mean (1000 resamples).
//!
//! [`ClipMode::Example`] clips each example's score to [0, 1] before averaging instead (the reading of
//! method.md section 5); it can only raise the score, and is offered for comparison with tools that do so.
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the [0, 1] clip is applied: recipe key `eval.healthbench_clip` (Mean, as HealthBench / simple-evals and
/// the published numbers; or Example, each example's score clipped before the mean).
pub use spar_core::recipe::HealthBenchClip as ClipMode;

/// One graded criterion: its points, its tags and the judge's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradedCriterion {
    pub points: f64,
    #[serde(default)]
    pub tags: Vec<String>,
    pub met: bool,
}

/// Points met / positive points; None when no criterion has positive points.
pub fn ratio<'a>(items: impl IntoIterator<Item = &'a GradedCriterion> + Clone) -> Option<f64> {
    let possible: f64 = items
        .clone()
        .into_iter()
        .filter(|c| c.points > 0.0)
        .map(|c| c.points)
        .sum();
    if possible <= 0.0 {
        return None;
    }
    // Summing no items gives -0.0 (Rust's float sum starts there), which reports print as "-0.000".
    let achieved: f64 = items
        .into_iter()
        .filter(|c| c.met)
        .map(|c| c.points)
        .fold(0.0, |a, b| a + b);
    Some(achieved / possible)
}

/// The metrics of one graded example, before aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleScore {
    /// Unclipped: at most 1, possibly negative.
    pub overall: f64,
    /// Score per rubric tag present with positive points.
    pub rubric_tags: BTreeMap<String, f64>,
    pub example_tags: Vec<String>,
}

/// Scores one example; None when it has no positive criterion (HealthBench files have none such).
pub fn score_example(
    example_tags: &[String],
    criteria: &[GradedCriterion],
) -> Option<ExampleScore> {
    let overall = ratio(criteria)?;
    let mut by_tag: BTreeMap<&str, Vec<&GradedCriterion>> = BTreeMap::new();
    for c in criteria {
        // A tag repeated within one criterion counts once (simple-evals asserts there are no repeats).
        let mut tags: Vec<&str> = c.tags.iter().map(String::as_str).collect();
        tags.sort_unstable();
        tags.dedup();
        for t in tags {
            by_tag.entry(t).or_default().push(c);
        }
    }
    let rubric_tags = by_tag
        .into_iter()
        .filter_map(|(t, cs)| ratio(cs.iter().copied()).map(|s| (t.to_string(), s)))
        .collect();
    let mut tags = example_tags.to_vec();
    tags.sort();
    tags.dedup();
    Some(ExampleScore {
        overall,
        rubric_tags,
        example_tags: tags,
    })
}

/// A clipped mean with its bootstrap standard deviation and sample count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub bootstrap_std: f64,
    pub n: usize,
}

/// Aggregated HealthBench scores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthBenchScores {
    pub clip: ClipMode,
    /// None when no example was scored.
    pub overall: Option<Stat>,
    /// Per theme (`theme:` example tags, prefix removed).
    pub themes: BTreeMap<String, Stat>,
    /// Per axis (`axis:` rubric tags, prefix removed).
    pub axes: BTreeMap<String, Stat>,
    /// Every example tag and every rubric tag, as simple-evals reports them (prefix kept).
    pub example_tags: BTreeMap<String, Stat>,
    pub rubric_tags: BTreeMap<String, Stat>,
}

/// Aggregation knobs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregateOptions {
    pub clip: ClipMode,
    /// Bootstrap resamples for the standard deviation (simple-evals: 1000; 0 = skip).
    pub bootstrap: usize,
    pub seed: u64,
}

impl Default for AggregateOptions {
    fn default() -> Self {
        AggregateOptions {
            clip: ClipMode::Mean,
            bootstrap: 1000,
            seed: 0,
        }
    }
}

fn stat(values: &[f64], opts: &AggregateOptions, rng: &mut rand_chacha::ChaCha8Rng) -> Stat {
    let mean = |v: &mut dyn Iterator<Item = f64>, n: usize| -> f64 {
        let m = match opts.clip {
            ClipMode::Mean => v.sum::<f64>() / n as f64,
            ClipMode::Example => v.map(|x| x.clamp(0.0, 1.0)).sum::<f64>() / n as f64,
        };
        m.clamp(0.0, 1.0)
    };
    let n = values.len();
    let m = mean(&mut values.iter().copied(), n);
    let bootstrap_std = if opts.bootstrap == 0 || n == 0 {
        0.0
    } else {
        let means: Vec<f64> = (0..opts.bootstrap)
            .map(|_| mean(&mut (0..n).map(|_| values[rng.random_range(0..n)]), n))
            .collect();
        let mu = means.iter().sum::<f64>() / means.len() as f64;
        // numpy's std: population (ddof = 0).
        (means.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / means.len() as f64).sqrt()
    };
    Stat {
        mean: m,
        bootstrap_std,
        n,
    }
}

/// Aggregates example scores into overall, per-tag, per-theme and per-axis scores.
pub fn aggregate(examples: &[ExampleScore], opts: &AggregateOptions) -> HealthBenchScores {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let overall_values: Vec<f64> = examples.iter().map(|e| e.overall).collect();
    let overall = (!overall_values.is_empty()).then(|| stat(&overall_values, opts, &mut rng));
    let mut ex_tags: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rb_tags: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for e in examples {
        for t in &e.example_tags {
            ex_tags.entry(t.clone()).or_default().push(e.overall);
        }
        for (t, s) in &e.rubric_tags {
            rb_tags.entry(t.clone()).or_default().push(*s);
        }
    }
    let example_tags: BTreeMap<String, Stat> = ex_tags
        .iter()
        .map(|(t, v)| (t.clone(), stat(v, opts, &mut rng)))
        .collect();
    let rubric_tags: BTreeMap<String, Stat> = rb_tags
        .iter()
        .map(|(t, v)| (t.clone(), stat(v, opts, &mut rng)))
        .collect();
    let strip = |m: &BTreeMap<String, Stat>, prefix: &str| -> BTreeMap<String, Stat> {
        m.iter()
            .filter_map(|(t, s)| t.strip_prefix(prefix).map(|k| (k.to_string(), *s)))
            .collect()
    };
    HealthBenchScores {
        clip: opts.clip,
        overall,
        themes: strip(&example_tags, "theme:"),
        axes: strip(&rubric_tags, "axis:"),
        example_tags,
        rubric_tags,
    }
}
