//! The trainer boundary: a scored sample's per-step advantages spread over its tokens.
use spar_core::{Sample, Scored};

/// Per-token advantage and step id of one sample, ready for segment-level importance ratios: every token of
/// step j (its half-open span) gets A_j and id j; tokens outside every step get 0 and -1. A dropped sample
/// (`drop_reason` set) gets 0 and -1 everywhere: it carries no signal and is not trained on.
pub fn token_advantages(sample: &Sample, scored: &Scored) -> Result<(Vec<f32>, Vec<i32>), String> {
    if (sample.group_id.as_str(), sample.sample_idx)
        != (scored.group_id.as_str(), scored.sample_idx)
    {
        return Err(format!(
            "scored record is for {}#{}, sample is {}#{}",
            scored.group_id, scored.sample_idx, sample.group_id, sample.sample_idx
        ));
    }
    let t = sample.token_ids.len();
    let mut adv = vec![0f32; t];
    let mut ids = vec![-1i32; t];
    if scored.drop_reason.is_some() {
        return Ok((adv, ids));
    }
    if scored.steps.len() != sample.steps.len() {
        return Err(format!(
            "{} scored steps for {} sample steps",
            scored.steps.len(),
            sample.steps.len()
        ));
    }
    for (j, (span, step)) in sample.steps.iter().zip(&scored.steps).enumerate() {
        if span.start > span.end || span.end > t {
            return Err(format!(
                "step {j} [{}, {}) is outside the {t} tokens",
                span.start, span.end
            ));
        }
        adv[span.start..span.end].fill(step.advantage as f32);
        ids[span.start..span.end].fill(j as i32);
    }
    Ok((adv, ids))
}
