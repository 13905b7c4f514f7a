//! `[rollout]`: generation, the consultation environment, simulators, the segmented pipeline. Owner: rollout.
use super::check;
use crate::traits::SamplingParams;
use serde::{Deserialize, Serialize};

/// An OpenAI-compatible endpoint. The API key is read from the environment variable `api_key_env` at run time
/// and never written anywhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the bearer token (None: no auth).
    pub api_key_env: Option<String>,
    pub timeout_s: f64,
    pub max_retries: u32,
    pub concurrency: usize,
    /// Redact PHI from outgoing text when the endpoint is not on loopback (method.md section 9).
    pub redact_phi: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "default".into(),
            api_key_env: None,
            timeout_s: 60.0,
            max_retries: 3,
            concurrency: 64,
            redact_phi: true,
        }
    }
}

impl EndpointConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.base_url.starts_with("http://") || self.base_url.starts_with("https://"),
            "base_url",
            "must start with http:// or https://",
        )?;
        check(self.timeout_s > 0.0, "timeout_s", "must be > 0")?;
        check(self.concurrency >= 1, "concurrency", "must be >= 1")
    }
}

recipe_enum! {
    /// How an external rollout server (`backend = "openai"`) gets the learner's weights after each update.
    pub enum WeightSyncKind {
        /// It does not: every round after the first is off-policy (the truncated importance weight corrects).
        Off = "none",
        /// SGLang's `POST /update_weights_from_disk`: rank 0 writes the new policy as a transformers folder under
        /// `dir`, and every server loads it before the next round is played.
        Sglang = "sglang",
    }
}

/// `[rollout.weight_sync]`: the weight refresh of an external rollout server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightSyncConfig {
    pub kind: WeightSyncKind,
    /// The servers' roots, e.g. `http://rollout-0:30000` (empty: `endpoint.base_url` without its `/v1`).
    pub servers: Vec<String>,
    /// Where the policy folders are written; the servers must read the same path (empty: `OUT/policy-sync`).
    pub dir: Option<std::path::PathBuf>,
    /// Seconds one server may take to load a version.
    pub timeout_s: f64,
    /// Environment variable holding the servers' admin bearer token (None: no auth).
    pub api_key_env: Option<String>,
}

impl Default for WeightSyncConfig {
    fn default() -> Self {
        WeightSyncConfig {
            kind: WeightSyncKind::Off,
            servers: Vec::new(),
            dir: None,
            timeout_s: 600.0,
            api_key_env: None,
        }
    }
}

recipe_enum! {
    /// Which patient simulator plays the patient.
    pub enum SimulatorKind {
        /// Case-grounded and deterministic, offline.
        Scripted = "scripted",
        /// An OpenAI-compatible model (`endpoint`), guarded against leaks and contradictions.
        Llm = "llm",
        /// The policy's own engine plays the patient (rollout only: evaluation needs a patient apart from the
        /// policy).
        SelfPlay = "self",
    }
}

recipe_enum! {
    /// Where the policy generates during rollout.
    pub enum RolloutBackendKind {
        /// The built-in tch engine over `[model]`.
        Builtin = "builtin",
        /// An external OpenAI-compatible server (`endpoint`), token-in/token-out.
        Openai = "openai",
    }
}

/// Which patient simulator plays the patient.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    pub kind: SimulatorKind,
    /// The LLM simulator's endpoint (needed by `kind = "llm"`).
    pub endpoint: Option<EndpointConfig>,
    /// Check each LLM reply against the case (no leakage of the diagnosis, no contradiction).
    pub factual_check: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            kind: SimulatorKind::Scripted,
            endpoint: None,
            factual_check: true,
        }
    }
}

impl SimulatorConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.kind != SimulatorKind::Llm || self.endpoint.is_some(),
            "endpoint",
            "the llm simulator needs an endpoint",
        )?;
        if let Some(e) = &self.endpoint {
            e.validate()
                .map_err(|(k, m)| (format!("endpoint.{k}"), m))?;
        }
        Ok(())
    }
}

/// The doctor's default system prompt: it states the stage grammar so that a policy knows the markers.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a careful physician in a consultation with a patient. Ask one focused question at a time. When you have enough history, say <ready/>. Follow each instruction's output format exactly.";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSection {
    /// Where the policy generates.
    pub backend: RolloutBackendKind,
    /// The `openai` backend's server.
    pub endpoint: Option<EndpointConfig>,
    /// G: samples per group (method.md section 9).
    pub group_size: usize,
    /// Groups (prompts) per rollout round.
    pub groups_per_step: usize,
    pub sampling: SamplingParams,
    pub simulator: SimulatorConfig,
    /// Fraction of episodes started from an injected interruption snippet (method.md section 6).
    pub interruption_rate: f64,
    /// Segmented pipeline on (segments per stage, gated pools) or whole episodes.
    pub segmented: bool,
    /// Gate threshold tau on V_k.
    pub tau: f64,
    /// How many passing samples of a group enter the next stage's pool.
    pub top_m: usize,
    /// Turn limits per stage: inquiry, ddx, lab, diag.
    pub turn_limits: [u32; 4],
    /// Qwen3 thinking on (the template's `enable_thinking`).
    pub enable_thinking: bool,
    /// Maximum concurrent sequences in the engine.
    pub max_batch: usize,
    /// Write routed experts (MoE) for routing replay.
    pub record_routing: bool,
    /// Longest token stream (prompt + every turn) of one episode; the engine's KV cache holds this many per slot.
    /// An episode that would grow past it ends as `truncated`.
    pub max_seq_len: usize,
    /// KV-cache slots of the built-in engine (0: `max_batch`). Slots beyond `max_batch` keep finished
    /// conversations cached so their next turn reuses the prefix instead of re-reading it.
    pub kv_slots: usize,
    /// Fraction of a GPU's memory the built-in engine may fill (vLLM's `gpu_memory_utilization`): when its KV
    /// cache (`kv_slots x max_seq_len`) does not fit in what the GPU can allocate minus the rest, it takes fewer
    /// slots (and as many sequences at once) and says so, instead of failing. None: the cache as configured.
    /// Ignored on the CPU.
    pub gpu_memory_utilization: Option<f64>,
    /// The doctor's system prompt, the first turn of every episode (empty: none).
    pub system_prompt: String,
    /// Stage instructions p_k for ddx, lab, diag (empty: `Stage::default_instruction`).
    pub instructions: Vec<String>,
    /// Seed of episode modes, interruption snippets and per-request sampling seeds (None: the recipe seed, else 0).
    pub seed: Option<u64>,
    /// Batch-invariant generation in the built-in engine (`spar train --deterministic` sets it): one sequence
    /// per forward and no reused prefixes, so each reply depends on its prompt, seed and the weights alone, not
    /// on which episodes were generated beside it. With it two runs of one recipe and seed, or a run killed and
    /// resumed, are bit-identical on the CPU. Slower (sequences run one after another); CPU only.
    pub batch_invariant: bool,
    /// Decode steps a new turn may wait in the built-in engine's queue for others to share its prefill forward
    /// while sequences decode (0: none). On a GPU each prefill forward has a fixed host cost; see
    /// `EngineConfig::prefill_wait_steps`. Ignored with `batch_invariant`.
    pub prefill_wait_steps: usize,
    /// On a GPU with CUDA graphs, queue each decode step of the built-in engine before reading the previous
    /// step's tokens (vLLM's async scheduling; `EngineConfig::async_decode`). Same tokens; a sequence that ends
    /// has one dropped token decoded. Ignored with `batch_invariant` and on the CPU.
    pub async_decode: bool,
    /// On a GPU with CUDA graphs, keep the built-in engine's graphs from one round to the next: its KV cache
    /// lives at fixed virtual addresses whose memory goes back to the driver while the learner runs (CUDA
    /// virtual memory management, as vLLM's sleep mode), so a round replays the graphs the last one captured
    /// instead of capturing ~24 again. Ignored with `batch_invariant` and on the CPU. Off by default until its
    /// GPU tests and a round A/B have run on the GPU machine (none could be had when it was written).
    pub keep_graphs: bool,
    /// The weight refresh of the external server (`backend = "openai"`).
    pub weight_sync: WeightSyncConfig,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            backend: RolloutBackendKind::Builtin,
            endpoint: None,
            group_size: 8,
            groups_per_step: 4,
            sampling: SamplingParams::default(),
            simulator: SimulatorConfig::default(),
            interruption_rate: 0.25,
            segmented: true,
            tau: 0.6,
            top_m: 1,
            turn_limits: [12, 2, 2, 2],
            enable_thinking: false,
            max_batch: 64,
            record_routing: false,
            max_seq_len: 4096,
            kv_slots: 0,
            gpu_memory_utilization: None,
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            instructions: Vec::new(),
            seed: None,
            batch_invariant: false,
            prefill_wait_steps: 0,
            async_decode: true,
            keep_graphs: false,
            weight_sync: WeightSyncConfig::default(),
        }
    }
}

impl RolloutSection {
    /// The stage instruction p_k that opens `stage` (empty for Inquiry, which opens with the patient).
    pub fn instruction(&self, stage: crate::Stage) -> String {
        match stage.index() {
            0 => String::new(),
            i => self
                .instructions
                .get(i - 1)
                .cloned()
                .unwrap_or_else(|| stage.default_instruction().to_string()),
        }
    }

    /// Turn limit of `stage`.
    pub fn turn_limit(&self, stage: crate::Stage) -> u32 {
        self.turn_limits[stage.index()]
    }

    /// KV-cache slots of the built-in engine.
    pub fn kv_slot_count(&self) -> usize {
        if self.kv_slots == 0 {
            self.max_batch
        } else {
            self.kv_slots
        }
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.backend != RolloutBackendKind::Openai || self.endpoint.is_some(),
            "endpoint",
            "the openai backend needs an endpoint",
        )?;
        check(
            self.group_size >= 2,
            "group_size",
            "must be >= 2 (a group needs a baseline)",
        )?;
        check(self.groups_per_step >= 1, "groups_per_step", "must be >= 1")?;
        check(
            (0.0..=1.0).contains(&self.interruption_rate),
            "interruption_rate",
            "must be in [0, 1]",
        )?;
        check((0.0..=1.0).contains(&self.tau), "tau", "must be in [0, 1]")?;
        check(self.top_m >= 1, "top_m", "must be >= 1")?;
        check(
            self.turn_limits.iter().all(|&t| t >= 1),
            "turn_limits",
            "every limit must be >= 1",
        )?;
        check(
            self.sampling.temperature >= 0.0,
            "sampling.temperature",
            "must be >= 0",
        )?;
        check(
            self.sampling.top_p > 0.0 && self.sampling.top_p <= 1.0,
            "sampling.top_p",
            "must be in (0, 1]",
        )?;
        check(self.max_batch >= 1, "max_batch", "must be >= 1")?;
        check(self.max_seq_len >= 16, "max_seq_len", "must be >= 16")?;
        check(
            self.gpu_memory_utilization
                .is_none_or(|u| u > 0.0 && u <= 1.0),
            "gpu_memory_utilization",
            "must be in (0, 1]",
        )?;
        check(
            self.kv_slots == 0 || self.kv_slots >= self.max_batch,
            "kv_slots",
            "must be 0 or >= max_batch",
        )?;
        check(
            self.instructions.is_empty() || self.instructions.len() == 3,
            "instructions",
            "give three (ddx, lab, diag) or none",
        )?;
        // Zero new tokens would make every reply empty: episodes that end at once and train on nothing.
        check(
            self.sampling.max_new_tokens >= 1,
            "sampling.max_new_tokens",
            "must be >= 1",
        )?;
        check(
            (self.sampling.max_new_tokens as usize) < self.max_seq_len,
            "sampling.max_new_tokens",
            "must be < max_seq_len",
        )?;
        self.simulator
            .validate()
            .map_err(|(k, m)| (format!("simulator.{k}"), m))?;
        if self.weight_sync.kind != WeightSyncKind::Off {
            check(
                self.backend == RolloutBackendKind::Openai,
                "weight_sync.kind",
                "refreshes an external server: needs backend = \"openai\" (the built-in engine decodes with the \
                 learner's weights)",
            )?;
            check(
                self.weight_sync.timeout_s > 0.0,
                "weight_sync.timeout_s",
                "must be > 0",
            )?;
        }
        if let Some(e) = &self.endpoint {
            e.validate()
                .map_err(|(k, m)| (format!("endpoint.{k}"), m))?;
        }
        Ok(())
    }
}
