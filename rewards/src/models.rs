//! The offline models a recipe names (rule judge, rule claim extractor, knowledge-base verifier, lexical encoder,
//! claim-cache stores). Models behind an endpoint are built by spar-app from `spar-clients` and reach the
//! pipeline through `Injected`: spar-rewards builds no HTTP client.
use crate::fact::{
    CacheBackend, LexicalEncoder, MemoryBackend, NoBackend, RedisBackend, RuleClaimExtractor,
    SqliteBackend,
};
use crate::rubric::RuleJudge;
use async_trait::async_trait;
use spar_core::recipe::{
    ClaimCacheKind, EncoderKind, ExtractorKind, FactConfig, JudgeConfig, JudgeKind, VerifierKind,
};
use spar_core::traits::{ClaimExtractor, ClaimVerdict, Encoder, FactVerifier, Judge};
use spar_core::{Error, Result};
use std::sync::Arc;

fn recipe_err(key: &str, msg: impl Into<String>) -> Error {
    Error::Recipe {
        file: "[rewards]".into(),
        key: key.into(),
        msg: msg.into(),
    }
}

/// The error for a model the recipe names over an endpoint that was not injected: spar-rewards builds no HTTP
/// client (docs/architecture.md); spar-app's builder makes it from `spar-clients` and injects it.
fn not_injected(key: &str, what: &str) -> Error {
    recipe_err(
        key,
        format!(
            "the {what} talks to an endpoint and must be injected (`Injected`); spar-app's Builder does that for \
             every spar command"
        ),
    )
}

/// The rubric judge `[rewards.judge]` names, when it is an offline one.
pub fn judge(cfg: &JudgeConfig) -> Result<Arc<dyn Judge>> {
    match cfg.kind {
        JudgeKind::Rule => Ok(Arc::new(RuleJudge)),
        JudgeKind::Llm => Err(not_injected("judge.kind", "llm judge")),
    }
}

/// The judge of the judge-based step detector (`[rewards.spar] judge_endpoint`): always injected.
pub fn step_judge() -> Error {
    not_injected("spar.judge_endpoint", "step-detector judge")
}

/// The claim extractor `[rewards.fact] extractor` names, when it is an offline one.
pub fn extractor(cfg: &FactConfig) -> Result<Arc<dyn ClaimExtractor>> {
    match cfg.extractor {
        ExtractorKind::Rule => Ok(Arc::new(RuleClaimExtractor)),
        ExtractorKind::Llm => Err(not_injected("fact.extractor", "llm claim extractor")),
    }
}

/// The knowledge-base verifier over `kb` (None: the shipped knowledge base).
pub fn kb_verifier(kb: Option<Arc<spar_data::kb::KnowledgeBase>>) -> Result<Arc<dyn FactVerifier>> {
    match kb {
        Some(kb) => Ok(Arc::new(crate::kb::KbVerifier::new(kb))),
        None => crate::kb::shipped_verifier(),
    }
}

/// The fact verifier `[rewards.fact] verifier` names, when it is the offline one ("kb"); `kb` is the knowledge
/// base to use (None: the shipped one).
pub fn verifier(
    cfg: &FactConfig,
    kb: Option<Arc<spar_data::kb::KnowledgeBase>>,
) -> Result<Arc<dyn FactVerifier>> {
    match cfg.verifier {
        VerifierKind::Kb => kb_verifier(kb),
        VerifierKind::Llm | VerifierKind::KbLlm => {
            Err(not_injected("fact.verifier", "llm fact verifier"))
        }
    }
}

/// The encoder `[rewards.fact] encoder` names, when it is the offline one ("lexical").
pub fn encoder(cfg: &FactConfig) -> Result<Arc<dyn Encoder>> {
    match cfg.encoder {
        EncoderKind::Lexical => Ok(Arc::new(LexicalEncoder::default())),
        EncoderKind::Openai => Err(not_injected("fact.encoder", "openai embeddings encoder")),
        EncoderKind::Minilm => Err(recipe_err(
            "fact.encoder",
            "the minilm encoder is not built yet (it needs libtorch, which spar-rewards does not link); use \
             lexical or openai",
        )),
    }
}

/// The claim-cache store `[rewards.fact] cache` names.
pub async fn cache_backend(cfg: &FactConfig) -> Result<Arc<dyn CacheBackend>> {
    Ok(match cfg.cache {
        // No path: in memory. The file's home is the run's folder, which only the caller knows (spar-app's
        // Builder fills `cache_path` in); a shared default such as ~/.cache would collect claims of every run
        // outside any folder the user chose for them.
        ClaimCacheKind::Sqlite => match &cfg.cache_path {
            Some(p) => Arc::new(SqliteBackend::open(p)?),
            None => Arc::new(MemoryBackend::default()),
        },
        ClaimCacheKind::Redis => {
            Arc::new(
                RedisBackend::connect(cfg.redis_url.as_deref().ok_or_else(|| {
                    recipe_err("fact.redis_url", "the redis cache needs redis_url")
                })?)
                .await?,
            )
        }
        ClaimCacheKind::Memory => Arc::new(MemoryBackend::default()),
        ClaimCacheKind::Off => Arc::new(NoBackend),
    })
}

/// A verifier that is never called (fact mode off); any call is an error naming why.
pub struct Unavailable(pub String);

#[async_trait]
impl FactVerifier for Unavailable {
    fn id(&self) -> String {
        "unavailable".into()
    }
    async fn verify(&self, _claim: &str) -> Result<ClaimVerdict> {
        Err(Error::Other(format!("no fact verifier: {}", self.0)))
    }
}
