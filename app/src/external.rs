//! The external models a recipe names over an OpenAI-compatible endpoint, built from `spar-clients` and handed
//! to the libraries as `spar-core` trait objects. Offline implementations (rule judge, rule extractor,
//! knowledge-base verifier, lexical encoder, scripted patient) are the libraries' own; only what talks HTTP is
//! built here.
use anyhow::{Context, Result};
use spar_clients::{
    LlmClaimExtractor, LlmFactVerifier, LlmJudge, LlmPatientSimulator, OpenAiClient, OpenAiEncoder,
    OpenAiRolloutBackend,
};
use spar_core::recipe::{
    EncoderKind, EndpointConfig, ExtractorKind, FactConfig, FactMode, JudgeKind, RewardsSection,
    RolloutBackendKind, RolloutSection, SimulatorConfig, SimulatorKind, VerifierKind,
};
use spar_core::routed_wire::MoeLayout;
use spar_core::traits::{
    ClaimExtractor, Encoder, FactVerifier, Judge, PatientSimulator, RolloutBackend,
};
use spar_data::kb::KnowledgeBase;
use spar_rewards::Injected;
use spar_rollout::SimulatorChoice;
use std::sync::Arc;

fn client(ep: &EndpointConfig, what: &str) -> Result<OpenAiClient> {
    OpenAiClient::new(ep).with_context(|| format!("{what}: endpoint {}", ep.base_url))
}

/// An LLM judge on `ep` (rubric items, step detectors, HealthBench criteria).
pub fn llm_judge(ep: &EndpointConfig, what: &str) -> Result<Arc<dyn Judge>> {
    Ok(Arc::new(LlmJudge::new(client(ep, what)?)))
}

/// The external models of `[rewards]` that need an endpoint, as the reward pipeline's injections; the offline
/// ones stay `None` and the pipeline builds them itself. `kb` is the recipe's knowledge base (`[data]
/// knowledge_base`; None: the shipped one) for the "kb" verifiers and the stage scorer's ICD-10 hierarchy.
pub async fn reward_models(
    rewards: &RewardsSection,
    kb: Option<Arc<KnowledgeBase>>,
) -> Result<Injected> {
    let mut inj = Injected {
        knowledge_base: kb.clone(),
        ..Default::default()
    };
    if rewards.judge.kind == JudgeKind::Llm {
        let ep = rewards
            .judge
            .endpoint
            .as_ref()
            .context("recipe: rewards.judge.kind = \"llm\" needs rewards.judge.endpoint")?;
        inj.judge = Some(llm_judge(ep, "rewards.judge")?);
    }
    if let Some(ep) = &rewards.spar.judge_endpoint {
        inj.step_judge = Some(llm_judge(ep, "rewards.spar.judge_endpoint")?);
    }
    let fact = &rewards.fact;
    if fact.mode != FactMode::Off {
        inj.extractor = claim_extractor(fact)?;
        inj.verifier = fact_verifier(fact, kb)?;
        inj.encoder = encoder(fact).await?;
    }
    Ok(inj)
}

/// The LLM claim extractor when `[.. fact] extractor = "llm"` (None: the rule extractor, built by rewards).
pub fn claim_extractor(fact: &FactConfig) -> Result<Option<Arc<dyn ClaimExtractor>>> {
    if fact.extractor != ExtractorKind::Llm {
        return Ok(None);
    }
    let ep = fact
        .endpoint
        .as_ref()
        .context("recipe: fact.extractor = \"llm\" needs fact.endpoint")?;
    Ok(Some(Arc::new(LlmClaimExtractor::new(client(
        ep,
        "fact.extractor",
    )?))))
}

/// The fact verifier `[.. fact] verifier` names when it needs an endpoint ("llm", or "kb+llm" chained after the
/// knowledge base); None for "kb", which rewards builds over `kb`.
pub fn fact_verifier(
    fact: &FactConfig,
    kb: Option<Arc<KnowledgeBase>>,
) -> Result<Option<Arc<dyn FactVerifier>>> {
    let llm = || -> Result<Arc<dyn FactVerifier>> {
        let ep = fact
            .endpoint
            .as_ref()
            .context("recipe: an llm fact verifier needs fact.endpoint")?;
        Ok(Arc::new(LlmFactVerifier::new(client(ep, "fact.verifier")?)))
    };
    let kb_verifier = || -> Result<Arc<dyn FactVerifier>> {
        Ok(match &kb {
            Some(kb) => Arc::new(spar_rewards::kb::KbVerifier::new(kb.clone())),
            None => spar_rewards::kb::shipped_verifier()?,
        })
    };
    Ok(match fact.verifier {
        VerifierKind::Llm => Some(llm()?),
        VerifierKind::KbLlm => Some(Arc::new(spar_rewards::fact::ChainVerifier::new(
            kb_verifier()?,
            llm()?,
        ))),
        VerifierKind::Kb => None,
    })
}

/// The embeddings encoder when `[.. fact] encoder = "openai"` (probes the server once for its dimension).
pub async fn encoder(fact: &FactConfig) -> Result<Option<Arc<dyn Encoder>>> {
    if fact.encoder != EncoderKind::Openai {
        return Ok(None);
    }
    let ep = fact
        .encoder_endpoint
        .as_ref()
        .or(fact.endpoint.as_ref())
        .context(
            "recipe: fact.encoder = \"openai\" needs fact.encoder_endpoint (or fact.endpoint)",
        )?;
    Ok(Some(Arc::new(
        OpenAiEncoder::from_endpoint(ep)
            .await
            .with_context(|| format!("fact.encoder: endpoint {}", ep.base_url))?,
    )))
}

/// The patient simulator a `[rollout.simulator]` / `[eval.simulator]` section names.
pub fn simulator(cfg: &SimulatorConfig, key: &str) -> Result<SimulatorChoice> {
    Ok(match cfg.kind {
        SimulatorKind::Llm => SimulatorChoice::Fixed(Arc::new(
            LlmPatientSimulator::from_config(cfg)
                .with_context(|| format!("{key}: llm simulator"))?,
        ) as Arc<dyn PatientSimulator>),
        SimulatorKind::SelfPlay => SimulatorChoice::SelfPlay,
        SimulatorKind::Scripted => {
            SimulatorChoice::Fixed(Arc::new(spar_rollout::simulator::ScriptedPatient))
        }
    })
}

/// The external rollout backend of `[rollout] backend = "openai"` (None: the built-in engine). With
/// `rollout.record_routing` and an MoE policy (`moe`: the served model's layout) it asks the server for every
/// token's expert choices (SGLang's `return_routed_experts`), as the built-in engine records them; a dense
/// policy records none with either.
pub fn rollout_backend(
    rollout: &RolloutSection,
    moe: Option<MoeLayout>,
) -> Result<Option<Arc<dyn RolloutBackend>>> {
    if rollout.backend != RolloutBackendKind::Openai {
        return Ok(None);
    }
    let ep = rollout
        .endpoint
        .as_ref()
        .context("recipe: rollout.backend = \"openai\" needs rollout.endpoint")?;
    let mut backend = OpenAiRolloutBackend::from_endpoint(ep)
        .with_context(|| format!("rollout.endpoint {}", ep.base_url))?;
    if let (true, Some(layout)) = (rollout.record_routing, moe) {
        backend = backend.with_routing(layout);
    }
    Ok(Some(Arc::new(backend)))
}

/// The weight refresh of `[rollout.weight_sync]` (None when it is off): the receiver its `kind` names, over the
/// `servers` (default: the rollout endpoint's root, its base URL without `/v1`), writing into `dir` (the
/// section's `dir` resolved, or `OUT/policy-sync`; the servers must read it at the same path).
pub fn server_weights(
    rollout: &RolloutSection,
    dir: std::path::PathBuf,
) -> Result<Option<spar_trainer::server_weights::ServerWeights>> {
    let mut cfg = rollout.weight_sync.clone();
    if cfg.kind == spar_core::recipe::WeightSyncKind::Off {
        return Ok(None);
    }
    if cfg.servers.is_empty() {
        let ep = rollout
            .endpoint
            .as_ref()
            .context("recipe: rollout.weight_sync needs weight_sync.servers or rollout.endpoint")?;
        let base = ep.base_url.trim_end_matches('/');
        cfg.servers = vec![base.strip_suffix("/v1").unwrap_or(base).to_string()];
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("rollout.weight_sync.dir: creating {}", dir.display()))?;
    let receiver = spar_clients::SglangWeightReceiver::new(&cfg).context("rollout.weight_sync")?;
    Ok(Some(spar_trainer::server_weights::ServerWeights::new(
        Arc::new(receiver),
        dir,
    )))
}

/// A policy served by an OpenAI-compatible chat endpoint (`spar eval --endpoint`, `[eval.policy_endpoint]`).
pub fn chat_policy(ep: &EndpointConfig) -> Result<Arc<dyn spar_core::traits::ChatBackend>> {
    Ok(Arc::new(
        spar_clients::OpenAiChatBackend::from_endpoint(ep)
            .with_context(|| format!("eval.policy_endpoint {}", ep.base_url))?,
    ))
}
