//! Reviewers' rubric verdicts (`spar review`) in the claim cache's store, and the judge that answers from them.
//!
//! A rubric verdict belongs to one criterion judged against one reply text, so an override is keyed by both
//! (PHI-redacted and normalised like claim keys, then hashed: reply texts are long). The next scoring run of
//! the same samples with the same store (`spar score`, an evaluation) gets the reviewer's verdict for that pair
//! without calling the judge; any other reply is judged as before. The store is the claim cache's backend
//! (SQLite in the run folder, or Redis), in its own namespace, [`RUBRIC_OVERRIDE_NAMESPACE`].
//!
//! The entries reuse the claim cache's [`CacheEntry`]: `claim` holds the criterion, and the verdict's label
//! says met (`supported`), unmet (`refuted`) or "no verdict, ask the judge" (`uncertain`: a reviewer cleared
//! an earlier override).
use crate::fact::{CacheBackend, CacheEntry};
use crate::text::normalize;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use spar_core::sample::ClaimLabel;
use spar_core::traits::{ClaimVerdict, Judge, JudgeRequest, JudgeVerdict};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Namespace of reviewers' rubric verdicts in the cache store.
pub const RUBRIC_OVERRIDE_NAMESPACE: &str = "review-rubric-overrides";
const RUBRIC_OVERRIDE_ENCODER: &str = "review-rubric-override";

/// One reviewer's rubric verdict as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RubricOverride {
    /// The verdict (None: the reviewer cleared the item's verdict; the judge decides again).
    pub met: Option<bool>,
    /// The reviewer's note, or who decided when there is none.
    pub note: String,
    /// `review:<reviewer>`.
    pub source: Option<String>,
}

fn key(criterion: &str, response: &str) -> String {
    let mut h = Sha256::new();
    h.update(normalize(&spar_core::phi::redact(criterion)).as_bytes());
    h.update([0u8]);
    h.update(normalize(&spar_core::phi::redact(response)).as_bytes());
    format!("{:x}", h.finalize())
}

/// Records a reviewer's verdict on `criterion` for the reply `response` (the text the judge read). An error is
/// returned, unlike a cache insert: the reviewer must know the override was not stored.
pub async fn put_rubric_override(
    backend: &dyn CacheBackend,
    criterion: &str,
    response: &str,
    o: &RubricOverride,
) -> spar_core::Result<()> {
    let label = match o.met {
        Some(true) => ClaimLabel::Supported,
        Some(false) => ClaimLabel::Refuted,
        None => ClaimLabel::Uncertain,
    };
    let entry = CacheEntry {
        claim: spar_core::phi::redact(criterion),
        verdict: ClaimVerdict {
            label,
            evidence: o.note.clone(),
            source: o.source.clone(),
        },
        encoder: RUBRIC_OVERRIDE_ENCODER.to_string(),
        embedding: vec![],
    };
    backend
        .put(RUBRIC_OVERRIDE_NAMESPACE, &key(criterion, response), &entry)
        .await
}

/// The reviewer's verdict on `criterion` for `response`, if one was recorded.
pub async fn get_rubric_override(
    backend: &dyn CacheBackend,
    criterion: &str,
    response: &str,
) -> spar_core::Result<Option<RubricOverride>> {
    Ok(backend
        .get(RUBRIC_OVERRIDE_NAMESPACE, &key(criterion, response))
        .await?
        .map(|e| RubricOverride {
            met: match e.verdict.label {
                ClaimLabel::Supported => Some(true),
                ClaimLabel::Refuted => Some(false),
                ClaimLabel::Uncertain => None,
            },
            note: e.verdict.evidence,
            source: e.verdict.source,
        }))
}

/// A judge that answers from reviewers' overrides first and asks `inner` for everything else.
pub struct ReviewedJudge {
    inner: Arc<dyn Judge>,
    store: Arc<dyn CacheBackend>,
    hits: AtomicU64,
}

impl ReviewedJudge {
    pub fn new(inner: Arc<dyn Judge>, store: Arc<dyn CacheBackend>) -> ReviewedJudge {
        ReviewedJudge {
            inner,
            store,
            hits: AtomicU64::new(0),
        }
    }

    /// Verdicts answered by an override so far.
    pub fn override_hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Judge for ReviewedJudge {
    /// The inner judge's id: overrides answer only the pairs a reviewer decided, so they do not make the
    /// judge another one.
    fn id(&self) -> String {
        self.inner.id()
    }

    async fn judge(&self, req: &JudgeRequest) -> spar_core::Result<JudgeVerdict> {
        match get_rubric_override(self.store.as_ref(), &req.item.criterion, &req.response).await {
            Ok(Some(RubricOverride {
                met: Some(met),
                note,
                source,
            })) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let who = source.unwrap_or_else(|| "review".into());
                Ok(JudgeVerdict {
                    met,
                    explanation: if note.is_empty() {
                        format!("reviewer override ({who})")
                    } else {
                        format!("reviewer override ({who}): {note}")
                    },
                })
            }
            Ok(_) => self.inner.judge(req).await,
            Err(e) => {
                // The store is a cache: when it cannot be read the judge still answers, and the log says why.
                tracing::warn!(
                    "rubric override store ({}) read failed: {e}",
                    self.store.name()
                );
                self.inner.judge(req).await
            }
        }
    }
}
