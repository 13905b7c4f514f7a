//! The Fact-Aware pipeline for one response: extract claims, embed, cluster, verify the representatives
//! through the two-level cache, weigh by saliency, and compute the fact term.
use super::cache::ClaimCache;
use super::guard::Signature;
use super::reward::{cluster, naive_fact, r_fact, saliency};
use crate::text::sentences;
use futures::StreamExt;
use spar_core::Result;
use spar_core::sample::{ClaimLabel, ClaimRecord, Turn};
use spar_core::traits::{ClaimExtractor, ClaimVerdict, Encoder, FactVerifier};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// How the fact term is formed (`[rewards.fact] mode`): Gate is Eqs. 10-12 (denoised, saliency-weighted),
/// gated by Eqs. 13-14 in the pipeline; Naive is Eq. 9 (share of flawed claims, every claim counted).
pub use spar_core::recipe::FactMode;

/// The fact side of one response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FactOutcome {
    pub claims: Vec<ClaimRecord>,
    /// The verifier's evidence for each claim of `claims` (same order; a clustered claim carries its
    /// representative's).
    pub evidence: Vec<String>,
    /// Eq. 12 in gate mode, Eq. 9's -N_flawed/N_total in naive mode, 0 when off.
    pub r_fact: f64,
    /// Verifier calls made, cache answers (exact + semantic), verifications that failed.
    pub verified: usize,
    pub cache_hits: usize,
    pub failures: usize,
    /// The first verification failure's message.
    pub first_failure: Option<String>,
}

/// Extractor + encoder + cached verifier.
pub struct FactChecker {
    pub extractor: Arc<dyn ClaimExtractor>,
    pub verifier: Arc<dyn FactVerifier>,
    pub encoder: Arc<dyn Encoder>,
    pub cache: Arc<ClaimCache>,
    pub mode: FactMode,
    pub cluster_threshold: f64,
    pub eps: f64,
    /// Bounds verifier calls in flight.
    pub limit: Arc<Semaphore>,
}

impl FactChecker {
    /// Checks `text` (the doctor's sampled replies, thinking already removed). Errors only when the extractor
    /// or the encoder fails; a failed verification is counted and the claim left out of the fact term.
    pub async fn check(&self, text: &str, context: &[Turn]) -> Result<FactOutcome> {
        if self.mode == FactMode::Off {
            return Ok(FactOutcome::default());
        }
        let claims = self.extractor.extract(text, context).await?;
        if claims.is_empty() {
            return Ok(FactOutcome::default());
        }
        let sents = sentences(&super::extract::prose(text));
        let mut all: Vec<String> = claims.clone();
        all.extend(sents.iter().cloned());
        let emb = self.encoder.embed(&all).await?;
        let (claim_emb, sent_emb) = emb.split_at(claims.len());
        let sigs: Vec<Signature> = claims.iter().map(|c| Signature::of(c)).collect();
        let rep = match self.mode {
            FactMode::Gate => cluster(claim_emb, &sigs, self.cluster_threshold),
            _ => (0..claims.len()).collect(),
        };
        let reps: Vec<usize> = (0..claims.len()).filter(|&i| rep[i] == i).collect();
        let jobs = reps.iter().map(|&i| {
            let (claim, e) = (claims[i].clone(), claim_emb[i].clone());
            async move { (i, self.label(&claim, &e).await) }
        });
        let results: Vec<(usize, Labelled)> = futures::stream::iter(jobs)
            .buffered(reps.len().max(1))
            .collect()
            .await;
        let mut out = FactOutcome::default();
        let mut verdict: Vec<Option<ClaimVerdict>> = vec![None; claims.len()];
        let mut failure: Vec<Option<String>> = vec![None; claims.len()];
        for (i, l) in results {
            match l {
                Labelled::Cached(v) => {
                    out.cache_hits += 1;
                    verdict[i] = Some(v);
                }
                Labelled::Verified(v) => {
                    out.verified += 1;
                    verdict[i] = Some(v);
                }
                Labelled::Failed(msg) => {
                    out.failures += 1;
                    out.first_failure.get_or_insert_with(|| msg.clone());
                    failure[i] = Some(msg);
                }
            }
        }
        let flawed = |v: &ClaimVerdict| v.label != ClaimLabel::Supported;
        let (mut weights, mut flags) = (Vec::new(), Vec::new());
        for (i, claim) in claims.iter().enumerate() {
            let r = rep[i];
            let w = if r == i {
                saliency(&claim_emb[i], sent_emb)
            } else {
                0.0
            };
            out.evidence.push(match (&verdict[r], &failure[r]) {
                (Some(v), _) => v.evidence.clone(),
                (None, msg) => msg.clone().unwrap_or_default(),
            });
            let record = match (&verdict[r], &failure[r]) {
                (Some(v), _) => {
                    if r == i {
                        weights.push(w);
                        flags.push(flawed(v));
                    }
                    ClaimRecord {
                        text: claim.clone(),
                        label: v.label,
                        saliency: w,
                        source: v.source.clone(),
                    }
                }
                (None, msg) => ClaimRecord {
                    text: claim.clone(),
                    label: ClaimLabel::Uncertain,
                    saliency: 0.0,
                    source: Some(format!(
                        "verification failed (not counted): {}",
                        msg.as_deref().unwrap_or("-")
                    )),
                },
            };
            out.claims.push(record);
        }
        out.r_fact = match self.mode {
            FactMode::Gate => r_fact(&weights, &flags, self.eps),
            FactMode::Naive => naive_fact(&flags),
            FactMode::Off => 0.0,
        };
        Ok(out)
    }

    async fn label(&self, claim: &str, embedding: &[f32]) -> Labelled {
        if let Some((v, _)) = self.cache.lookup(claim, embedding).await {
            return Labelled::Cached(v);
        }
        let _permit = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("verifier semaphore is never closed");
        match self.verifier.verify(claim).await {
            Ok(v) => {
                self.cache.insert(claim, embedding, &v).await;
                Labelled::Verified(v)
            }
            Err(e) => Labelled::Failed(e.to_string()),
        }
    }
}

enum Labelled {
    Cached(ClaimVerdict),
    Verified(ClaimVerdict),
    Failed(String),
}
