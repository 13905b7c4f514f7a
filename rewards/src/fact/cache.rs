//! The two-level claim cache (method.md section 4): an exact match on the normalised claim, then a semantic
//! nearest neighbour over embeddings whose negations and numbers-with-units match (section 9). Entries live in
//! a namespace derived from the verifier id, which carries model id, prompt-template hash and knowledge-base
//! version: changing any of them starts an empty namespace instead of reusing stale verdicts.
//!
//! No raw patient text is stored: a claim is PHI-redacted (`spar_core::phi`) before it becomes a key or an entry,
//! in memory and in every backend, because a cache file outlives the run and may be shared between runs. Lookups
//! redact the same way, so a claim that differs from a cached one only in an identifier ("born 03/14/1962" /
//! "born 05/01/1970") shares its verdict: a knowledge-base verdict never depends on who the patient is.
//!
//! Reviewer overrides (`spar review`) live in their own namespace, [`OVERRIDE_NAMESPACE`], which does not depend
//! on the verifier id: a human's label stands whatever model or knowledge-base version would otherwise be asked,
//! so it must survive the namespace change a new verifier brings. A lookup asks that namespace first.
use super::backend::{CacheBackend, CacheEntry};
use super::encoder::cosine;
use super::guard::Signature;
use crate::text::{normalize, sha256_hex};
use serde::{Deserialize, Serialize};
use spar_core::traits::ClaimVerdict;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    Exact,
    Semantic,
    /// A reviewer's override ([`put_override`]).
    Override,
}

/// Namespace of reviewer overrides, shared by every verifier (see the module doc).
pub const OVERRIDE_NAMESPACE: &str = "review-overrides";
/// Encoder id of override entries: they carry no embedding and take part in exact lookups only.
const OVERRIDE_ENCODER: &str = "review-override";

/// Counters of one cache; `hit_rate` is the share of lookups answered without the verifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub lookups: u64,
    pub exact_hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    /// Backend errors (the lookup then counts as a miss; rewards never fail because the cache did).
    pub errors: u64,
    /// Lookups answered by a reviewer's override.
    #[serde(default)]
    pub override_hits: u64,
}

impl CacheStats {
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            (self.exact_hits + self.semantic_hits + self.override_hits) as f64 / self.lookups as f64
        }
    }
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    exact: AtomicU64,
    semantic: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    overrides: AtomicU64,
}

struct Indexed {
    signature: Signature,
    embedding: Vec<f32>,
    verdict: ClaimVerdict,
}

/// The claim cache of one (verifier, encoder) pair.
pub struct ClaimCache {
    backend: Arc<dyn CacheBackend>,
    namespace: String,
    encoder_id: String,
    threshold: f64,
    /// Semantic index over the entries this process knows (loaded at open, grown on insert). A linear scan:
    /// claim caches of a training run hold 1e4-1e5 entries, a few ms per lookup at 1024 dims.
    index: RwLock<Vec<Indexed>>,
    counters: Counters,
}

impl ClaimCache {
    /// Opens the cache for `verifier_id`; semantic hits compare only entries embedded by `encoder_id`.
    pub async fn open(
        backend: Arc<dyn CacheBackend>,
        verifier_id: &str,
        encoder_id: &str,
        threshold: f64,
    ) -> spar_core::Result<ClaimCache> {
        let namespace = sha256_hex(verifier_id)[..16].to_string();
        let entries = backend.load_all(&namespace).await?;
        let index = entries
            .into_iter()
            .filter(|(_, e)| e.encoder == encoder_id)
            .map(|(_, e)| Indexed {
                signature: Signature::of(&e.claim),
                embedding: e.embedding,
                verdict: e.verdict,
            })
            .collect();
        Ok(ClaimCache {
            backend,
            namespace,
            encoder_id: encoder_id.to_string(),
            threshold,
            index: RwLock::new(index),
            counters: Counters::default(),
        })
    }

    /// The store under the cache (reviewers' rubric verdicts share it: `crate::rubric::reviewed`).
    pub fn backend(&self) -> Arc<dyn CacheBackend> {
        self.backend.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Looks `claim` up: a reviewer's override first, then exact, then the nearest guarded neighbour at cosine
    /// >= threshold.
    pub async fn lookup(&self, claim: &str, embedding: &[f32]) -> Option<(ClaimVerdict, Hit)> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let claim = &spar_core::phi::redact(claim);
        match get_override(self.backend.as_ref(), claim).await {
            Ok(Some(v)) => {
                self.counters.overrides.fetch_add(1, Ordering::Relaxed);
                return Some((v, Hit::Override));
            }
            Ok(None) => {}
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "claim cache ({}) override read failed: {e}",
                    self.backend.name()
                );
            }
        }
        match self.backend.get(&self.namespace, &normalize(claim)).await {
            Ok(Some(e)) => {
                self.counters.exact.fetch_add(1, Ordering::Relaxed);
                return Some((e.verdict, Hit::Exact));
            }
            Ok(None) => {}
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("claim cache ({}) read failed: {e}", self.backend.name());
            }
        }
        let sig = Signature::of(claim);
        let best = {
            let index = self.index.read().expect("cache index lock");
            index
                .iter()
                .filter(|e| e.signature == sig)
                .map(|e| (cosine(&e.embedding, embedding), &e.verdict))
                .filter(|(c, _)| *c >= self.threshold)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, v)| v.clone())
        };
        match best {
            Some(v) => {
                self.counters.semantic.fetch_add(1, Ordering::Relaxed);
                Some((v, Hit::Semantic))
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a fresh verdict under the redacted claim (backend errors are logged and counted, not raised).
    pub async fn insert(&self, claim: &str, embedding: &[f32], verdict: &ClaimVerdict) {
        let claim = &spar_core::phi::redact(claim);
        let entry = CacheEntry {
            claim: claim.to_string(),
            verdict: verdict.clone(),
            encoder: self.encoder_id.clone(),
            embedding: embedding.to_vec(),
        };
        if let Err(e) = self
            .backend
            .put(&self.namespace, &normalize(claim), &entry)
            .await
        {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("claim cache ({}) write failed: {e}", self.backend.name());
        }
        self.index.write().expect("cache index lock").push(Indexed {
            signature: Signature::of(claim),
            embedding: embedding.to_vec(),
            verdict: verdict.clone(),
        });
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            lookups: c.lookups.load(Ordering::Relaxed),
            exact_hits: c.exact.load(Ordering::Relaxed),
            semantic_hits: c.semantic.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            override_hits: c.overrides.load(Ordering::Relaxed),
        }
    }
}

/// Records a reviewer's verdict for `claim` (PHI-redacted and normalised like every key): from now on every
/// [`ClaimCache::lookup`] of that claim, under any verifier, returns it. Unlike [`ClaimCache::insert`] an error
/// is returned: a reviewer must know that the override was not stored.
pub async fn put_override(
    backend: &dyn CacheBackend,
    claim: &str,
    verdict: &ClaimVerdict,
) -> spar_core::Result<()> {
    let claim = spar_core::phi::redact(claim);
    let entry = CacheEntry {
        claim: claim.clone(),
        verdict: verdict.clone(),
        encoder: OVERRIDE_ENCODER.to_string(),
        embedding: vec![],
    };
    backend
        .put(OVERRIDE_NAMESPACE, &normalize(&claim), &entry)
        .await
}

/// The reviewer's verdict for `claim`, if one was recorded with [`put_override`].
pub async fn get_override(
    backend: &dyn CacheBackend,
    claim: &str,
) -> spar_core::Result<Option<ClaimVerdict>> {
    let claim = spar_core::phi::redact(claim);
    Ok(backend
        .get(OVERRIDE_NAMESPACE, &normalize(&claim))
        .await?
        .map(|e| e.verdict))
}
