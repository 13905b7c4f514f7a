//! The shipped medical knowledge base (`spar_data::kb`) as a [`FactVerifier`], and the ICD-10 hierarchy the
//! stage rewards use when a knowledge base is at hand.
use async_trait::async_trait;
use spar_core::Result;
use spar_core::traits::{ClaimVerdict, FactVerifier};
use spar_data::kb::KnowledgeBase;
use std::path::Path;
use std::sync::Arc;

/// Verifies claims against a loaded knowledge base. Its id carries the knowledge-base version, so the claim
/// cache never serves a verdict made against another edition.
#[derive(Clone)]
pub struct KbVerifier {
    kb: Arc<KnowledgeBase>,
}

impl KbVerifier {
    pub fn new(kb: Arc<KnowledgeBase>) -> Self {
        KbVerifier { kb }
    }

    /// Loads the knowledge base at `path` (a directory or a file inside one).
    pub fn load(path: &Path) -> Result<Self> {
        Ok(KbVerifier::new(Arc::new(KnowledgeBase::load(path)?)))
    }

    pub fn knowledge_base(&self) -> &Arc<KnowledgeBase> {
        &self.kb
    }
}

#[async_trait]
impl FactVerifier for KbVerifier {
    fn id(&self) -> String {
        format!("kb-verifier/v1|{}", self.kb.version())
    }

    async fn verify(&self, claim: &str) -> Result<ClaimVerdict> {
        Ok(self.kb.verify_claim(claim))
    }
}

/// The verifier over the shipped knowledge base (`$SPAR_KB_DIR`, else spar-data's `kb/`).
pub fn shipped_verifier() -> Result<Arc<dyn FactVerifier>> {
    Ok(Arc::new(KbVerifier::new(Arc::new(
        KnowledgeBase::load_default()?,
    ))))
}
