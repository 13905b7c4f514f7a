//! Fact-Aware RL (method.md section 4): claim extraction, verification through a two-level cache, denoising
//! (Eqs. 10-12), the gate (Eqs. 13-14) and the naive penalty (Eq. 9).
pub mod backend;
pub mod cache;
pub mod chain;
pub mod checker;
pub mod encoder;
pub mod extract;
pub mod guard;
pub mod reward;

pub use backend::{
    CacheBackend, CacheEntry, MemoryBackend, NoBackend, RedisBackend, SqliteBackend,
};
pub use cache::{CacheStats, ClaimCache, Hit, OVERRIDE_NAMESPACE, get_override, put_override};
pub use chain::ChainVerifier;
pub use checker::{FactChecker, FactMode, FactOutcome};
pub use encoder::{LexicalEncoder, cosine};
pub use extract::RuleClaimExtractor;
pub use guard::Signature;
pub use reward::{cluster, gate_lambda, naive_fact, r_fact, saliency};
