//! Fact checking for the hallucination rate: claims are extracted from each response (thinking stripped) and
//! verified. Verdicts are memoised for the run, keyed by the claim text, so a claim repeated across episodes is
//! verified once; verifier failures are counted, never turned into a label (that would move H).
use crate::hallucination::{CheckedClaim, ClaimCounts};
use spar_core::grammar::strip_think;
use spar_core::sample::Turn;
use spar_core::traits::{ClaimExtractor, ClaimVerdict, FactVerifier};
use std::collections::HashMap;
use std::sync::Mutex;

/// Claims of one response.
#[derive(Clone, Debug, Default)]
pub struct FactCheck {
    pub claims: Vec<CheckedClaim>,
    /// Extraction or verification calls that failed after the client's retries.
    pub failures: usize,
}

impl FactCheck {
    pub fn counts(&self) -> ClaimCounts {
        ClaimCounts::of(self.claims.iter().map(|c| &c.label))
    }

    pub fn merge(&mut self, other: FactCheck) {
        self.claims.extend(other.claims);
        self.failures += other.failures;
    }
}

/// A claim extractor and a fact verifier, with a per-run verdict memo.
pub struct FactChecker<'a> {
    extractor: &'a dyn ClaimExtractor,
    verifier: &'a dyn FactVerifier,
    memo: Mutex<HashMap<String, ClaimVerdict>>,
}

impl<'a> FactChecker<'a> {
    pub fn new(extractor: &'a dyn ClaimExtractor, verifier: &'a dyn FactVerifier) -> Self {
        FactChecker {
            extractor,
            verifier,
            memo: Mutex::new(HashMap::new()),
        }
    }

    pub fn extractor_id(&self) -> String {
        self.extractor.id()
    }

    pub fn verifier_id(&self) -> String {
        self.verifier.id()
    }

    /// Extracts and verifies the claims of `response` (its `<think>` block is neither judged nor fact-checked).
    pub async fn check(&self, response: &str, context: &[Turn]) -> FactCheck {
        let visible = strip_think(response);
        if visible.trim().is_empty() {
            return FactCheck::default();
        }
        let claims = match self.extractor.extract(&visible, context).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(extractor = %self.extractor.id(), error = %e, "claim extraction failed");
                return FactCheck {
                    claims: vec![],
                    failures: 1,
                };
            }
        };
        let mut out = FactCheck::default();
        for text in claims {
            let memo = self
                .memo
                .lock()
                .expect("fact memo poisoned")
                .get(&text)
                .cloned();
            let verdict = match memo {
                Some(v) => v,
                None => match self.verifier.verify(&text).await {
                    Ok(v) => {
                        self.memo
                            .lock()
                            .expect("fact memo poisoned")
                            .insert(text.clone(), v.clone());
                        v
                    }
                    Err(e) => {
                        tracing::warn!(verifier = %self.verifier.id(), error = %e, "claim verification failed");
                        out.failures += 1;
                        continue;
                    }
                },
            };
            out.claims.push(CheckedClaim {
                text,
                label: verdict.label,
                source: verdict.source,
            });
        }
        out
    }
}
