//! Verifier composition: the knowledge base first, an LLM verifier for what it cannot settle ("kb+llm").
use async_trait::async_trait;
use spar_core::Result;
use spar_core::sample::ClaimLabel;
use spar_core::traits::{ClaimVerdict, FactVerifier};
use std::sync::Arc;

/// Asks `first`; when it answers Uncertain (or fails), asks `then`.
pub struct ChainVerifier {
    first: Arc<dyn FactVerifier>,
    then: Arc<dyn FactVerifier>,
}

impl ChainVerifier {
    pub fn new(first: Arc<dyn FactVerifier>, then: Arc<dyn FactVerifier>) -> Self {
        ChainVerifier { first, then }
    }
}

#[async_trait]
impl FactVerifier for ChainVerifier {
    fn id(&self) -> String {
        format!("{}+{}", self.first.id(), self.then.id())
    }

    async fn verify(&self, claim: &str) -> Result<ClaimVerdict> {
        match self.first.verify(claim).await {
            Ok(v) if v.label != ClaimLabel::Uncertain => Ok(v),
            _ => self.then.verify(claim).await,
        }
    }
}
