//! The external models a recipe names, built from their config: built-in offline ones here, OpenAI-compatible
//! ones from `spar-clients`. The binary injects what needs libtorch (the MiniLM encoder) through `Injected`.
use crate::fact::{
    CacheBackend, ChainVerifier, LexicalEncoder, MemoryBackend, NoBackend, RedisBackend,
    RuleClaimExtractor, SqliteBackend,
};
use crate::rubric::RuleJudge;
use async_trait::async_trait;
use spar_core::recipe::{
    ClaimCacheKind, EncoderKind, EndpointConfig, ExtractorKind, FactConfig, JudgeConfig, JudgeKind,
    VerifierKind,
};
use spar_core::traits::{ClaimExtractor, ClaimVerdict, Encoder, FactVerifier, Judge};
use spar_core::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

fn recipe_err(key: &str, msg: impl Into<String>) -> Error {
    Error::Recipe {
        file: "[rewards]".into(),
        key: key.into(),
        msg: msg.into(),
    }
}

fn client(ep: &EndpointConfig) -> Result<spar_clients::OpenAiClient> {
    spar_clients::OpenAiClient::new(ep)
}

/// An OpenAI-compatible judge on `ep`.
pub fn llm_judge(ep: &EndpointConfig) -> Result<Arc<dyn Judge>> {
    Ok(Arc::new(spar_clients::LlmJudge::new(client(ep)?)))
}

/// The rubric judge `[rewards.judge]` names.
pub fn judge(cfg: &JudgeConfig) -> Result<Arc<dyn Judge>> {
    match cfg.kind {
        JudgeKind::Rule => Ok(Arc::new(RuleJudge)),
        JudgeKind::Llm => llm_judge(
            cfg.endpoint
                .as_ref()
                .ok_or_else(|| recipe_err("judge.endpoint", "the llm judge needs an endpoint"))?,
        ),
    }
}

/// The claim extractor `[rewards.fact] extractor` names.
pub fn extractor(cfg: &FactConfig) -> Result<Arc<dyn ClaimExtractor>> {
    match cfg.extractor {
        ExtractorKind::Rule => Ok(Arc::new(RuleClaimExtractor)),
        ExtractorKind::Llm => {
            let ep = cfg.endpoint.as_ref().ok_or_else(|| {
                recipe_err("fact.endpoint", "the llm extractor needs an endpoint")
            })?;
            Ok(Arc::new(spar_clients::LlmClaimExtractor::new(client(ep)?)))
        }
    }
}

/// The fact verifier `[rewards.fact] verifier` names; `kb` is the knowledge base to use (None: the shipped one).
pub fn verifier(
    cfg: &FactConfig,
    kb: Option<Arc<spar_data::kb::KnowledgeBase>>,
) -> Result<Arc<dyn FactVerifier>> {
    let kb_verifier = || -> Result<Arc<dyn FactVerifier>> {
        match &kb {
            Some(kb) => Ok(Arc::new(crate::kb::KbVerifier::new(kb.clone()))),
            None => crate::kb::shipped_verifier(),
        }
    };
    let llm = || -> Result<Arc<dyn FactVerifier>> {
        let ep = cfg
            .endpoint
            .as_ref()
            .ok_or_else(|| recipe_err("fact.endpoint", "the llm verifier needs an endpoint"))?;
        Ok(Arc::new(spar_clients::LlmFactVerifier::new(client(ep)?)))
    };
    match cfg.verifier {
        VerifierKind::Kb => kb_verifier(),
        VerifierKind::Llm => llm(),
        VerifierKind::KbLlm => Ok(Arc::new(ChainVerifier::new(kb_verifier()?, llm()?))),
    }
}

/// The encoder `[rewards.fact] encoder` names ("minilm" needs libtorch: the binary injects it).
pub async fn encoder(cfg: &FactConfig) -> Result<Arc<dyn Encoder>> {
    match cfg.encoder {
        EncoderKind::Lexical => Ok(Arc::new(LexicalEncoder::default())),
        EncoderKind::Openai => {
            let ep = cfg
                .encoder_endpoint
                .as_ref()
                .or(cfg.endpoint.as_ref())
                .ok_or_else(|| {
                    recipe_err(
                        "fact.encoder_endpoint",
                        "the openai encoder needs an endpoint",
                    )
                })?;
            // Probes the server once for the embedding dimension.
            Ok(Arc::new(
                spar_clients::OpenAiEncoder::from_endpoint(ep).await?,
            ))
        }
        EncoderKind::Minilm => Err(recipe_err(
            "fact.encoder",
            "the minilm encoder needs libtorch: it is provided by the `spar` binary, not by spar-rewards alone",
        )),
    }
}

/// Default location of the SQLite claim cache: `$SPAR_CACHE_DIR`, else `$XDG_CACHE_HOME/spar`, else
/// `~/.cache/spar`, file `claims.sqlite`.
pub fn default_cache_path() -> PathBuf {
    let dir = std::env::var_os("SPAR_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("spar")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/spar")))
        .unwrap_or_else(|| PathBuf::from(".spar-cache"));
    dir.join("claims.sqlite")
}

/// The claim-cache store `[rewards.fact] cache` names.
pub async fn cache_backend(cfg: &FactConfig) -> Result<Arc<dyn CacheBackend>> {
    Ok(match cfg.cache {
        ClaimCacheKind::Sqlite => Arc::new(SqliteBackend::open(
            &cfg.cache_path.clone().unwrap_or_else(default_cache_path),
        )?),
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
