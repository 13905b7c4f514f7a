//! The hallucination rate H (method.md section 4, HealthBench-Hallu style): every claim the policy makes is
//! verified, and H = sum of w_i / |claims| with w = 1 for Refuted, 0.5 for Uncertain, 0 for Supported.
//!
//! H is pooled over every claim of the evaluation (`rate`): a response that makes many claims weighs more, as in
//! the published metric. The mean of per-response rates (`per_response_mean`, over responses with at least one
//! claim) is reported next to it, since a policy can lower the pooled rate by padding a few responses with many
//! safe claims.
use serde::{Deserialize, Serialize};
use spar_core::sample::ClaimLabel;

/// A verified claim as the report keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckedClaim {
    pub text: String,
    pub label: ClaimLabel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Claim counts of one response (or of a whole evaluation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimCounts {
    pub supported: usize,
    pub refuted: usize,
    pub uncertain: usize,
}

impl ClaimCounts {
    pub fn of<'a>(labels: impl IntoIterator<Item = &'a ClaimLabel>) -> Self {
        let mut c = ClaimCounts::default();
        for l in labels {
            c.add(*l);
        }
        c
    }

    pub fn add(&mut self, label: ClaimLabel) {
        match label {
            ClaimLabel::Supported => self.supported += 1,
            ClaimLabel::Refuted => self.refuted += 1,
            ClaimLabel::Uncertain => self.uncertain += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.supported + self.refuted + self.uncertain
    }

    /// Sum of hallucination weights.
    pub fn weight(&self) -> f64 {
        self.refuted as f64 * ClaimLabel::Refuted.hallucination_weight()
            + self.uncertain as f64 * ClaimLabel::Uncertain.hallucination_weight()
            + self.supported as f64 * ClaimLabel::Supported.hallucination_weight()
    }

    /// H of these claims; None without claims.
    pub fn rate(&self) -> Option<f64> {
        (self.total() > 0).then(|| self.weight() / self.total() as f64)
    }
}

/// H over an evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HallucinationSummary {
    pub counts: ClaimCounts,
    /// Pooled H over every claim; None when no response made a claim.
    pub rate: Option<f64>,
    /// Mean of per-response H over responses with at least one claim.
    pub per_response_mean: Option<f64>,
    pub responses: usize,
    pub responses_without_claims: usize,
    /// Which extractor and verifier produced the labels (their ids).
    pub extractor: String,
    pub verifier: String,
}

/// Summarises per-response claim counts.
pub fn summarize(
    per_response: &[ClaimCounts],
    extractor: &str,
    verifier: &str,
) -> HallucinationSummary {
    let mut counts = ClaimCounts::default();
    for c in per_response {
        counts.supported += c.supported;
        counts.refuted += c.refuted;
        counts.uncertain += c.uncertain;
    }
    let rates: Vec<f64> = per_response.iter().filter_map(ClaimCounts::rate).collect();
    HallucinationSummary {
        counts,
        rate: counts.rate(),
        per_response_mean: (!rates.is_empty())
            .then(|| rates.iter().sum::<f64>() / rates.len() as f64),
        responses: per_response.len(),
        responses_without_claims: per_response.len() - rates.len(),
        extractor: extractor.into(),
        verifier: verifier.into(),
    }
}
