//! `spar serve --model DIR`: the built-in engine as an OpenAI-compatible HTTP API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`), on loopback unless `--host` says otherwise, with a bearer token read from
//! an environment variable (required off loopback unless `--insecure-no-auth`) and limits on what a request
//! may ask for.
use super::common::{DeviceArgs, RecipeArgs};
use anyhow::{Result, bail};
use spar_model::{ChatTemplate, Qwen3Model, Tokenizer};
use spar_rollout::engine::EngineConfig;
use spar_rollout::serve::{
    ChatMlRenderer, ChatRenderer, ServeLimits, ServeOptions, check_auth, listen_address, serve,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args)]
pub struct Args {
    /// `--model DIR` (an HF folder: config.json, safetensors, tokenizer.json, chat template), or the recipe's
    /// `[model]`; `--recipe`'s `[model]` also gives the device and dtype.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model id reported by /v1/models (default: the directory name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Environment variable holding the bearer token clients must send (set and non-empty). Default: no auth,
    /// which only loopback allows.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Serve off loopback without a bearer token, on purpose (anyone who can reach the port can use it).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Most sequences decoded at once.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Context length per sequence (KV cache per slot).
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: usize,
    /// KV-cache slots (default 2 x max_batch: idle slots keep conversations cached for prefix reuse).
    #[arg(long)]
    pub kv_slots: Option<usize>,
    /// Fraction of the GPU's memory the engine may fill, as vLLM's flag: fewer KV slots (and sequences at once)
    /// when --kv-slots x --max-model-len does not fit, instead of failing. Default: the cache as configured.
    #[arg(long)]
    pub gpu_memory_utilization: Option<f64>,
    /// max_tokens for requests that give none.
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most choices (`n`) per request (default 16, at most --limit-in-flight).
    #[arg(long)]
    pub limit_n: Option<u32>,
    /// Most `max_tokens` per request (default: the context, --max-model-len - 1).
    #[arg(long)]
    pub limit_max_tokens: Option<u32>,
    /// Longest prompt in tokens (default: the context, --max-model-len - 1).
    #[arg(long)]
    pub limit_prompt_tokens: Option<usize>,
    /// Most sequences (prompts x n) in flight over all requests (default 4 x --max-batch); a request that
    /// does not fit waits up to --limit-queue-wait-ms, then gets a 429.
    #[arg(long)]
    pub limit_in_flight: Option<usize>,
    /// How long a request waits for room under --limit-in-flight before its 429 (default 30000; 0: none).
    #[arg(long)]
    pub limit_queue_wait_ms: Option<u64>,
    /// Largest request body in bytes (default 4 MiB).
    #[arg(long)]
    pub limit_body_bytes: Option<usize>,
    /// Record the MoE expert choices of every token, so that `/v1/completions` requests with
    /// `"return_routed_experts": true` get them (SGLang's flag and encoding; routing replay with
    /// `[rollout] backend = "openai"`). Costs a device-to-host copy per forward.
    #[arg(long)]
    pub enable_return_routed_experts: bool,
    /// Decode steps a new request may wait for others to share its prefill forward while sequences decode
    /// (`rollout.prefill_wait_steps`; 0: prefilled at the next step).
    #[arg(long, default_value_t = 0)]
    pub prefill_wait_steps: usize,
}

/// The bearer token in `var`: an unset or empty variable is an error naming it (an empty token would leave the
/// server open while the flag reads as if auth were on). Surrounding whitespace is dropped: HTTP strips it from
/// header values, so a token that kept it could never match.
fn api_key_from_env(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => bail!("--api-key-env {var}: the variable is empty; set it to the bearer token"),
        Err(std::env::VarError::NotPresent) => {
            bail!("--api-key-env {var}: the variable is not set; set it to the bearer token")
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("--api-key-env {var}: the variable is not valid UTF-8")
        }
    }
}

impl Args {
    fn engine(&self) -> EngineConfig {
        EngineConfig {
            max_batch: self.max_batch,
            kv_slots: self.kv_slots.unwrap_or(2 * self.max_batch),
            max_seq_len: self.max_model_len,
            prefill_tokens: 8192,
            seed: self.seed,
            record_routing: self.enable_return_routed_experts,
            batch_invariant: false,
            prefill_wait_steps: self.prefill_wait_steps,
            overlap_prefill: false,
            async_decode: true,
        }
    }

    /// The defaults for the engine, with the `--limit-*` flags over them.
    fn limits(&self, engine: &EngineConfig) -> ServeLimits {
        let d = ServeLimits::for_engine(engine);
        ServeLimits {
            max_n: self.limit_n.unwrap_or(d.max_n),
            max_tokens: self.limit_max_tokens.unwrap_or(d.max_tokens),
            max_prompt_tokens: self.limit_prompt_tokens.unwrap_or(d.max_prompt_tokens),
            max_in_flight_sequences: self.limit_in_flight.unwrap_or(d.max_in_flight_sequences),
            max_queue_wait_ms: self.limit_queue_wait_ms.unwrap_or(d.max_queue_wait_ms),
            max_body_bytes: self.limit_body_bytes.unwrap_or(d.max_body_bytes),
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    // Settings first: a refused token, address or limit must not wait for a model to load.
    let api_key = args
        .api_key_env
        .as_deref()
        .map(api_key_from_env)
        .transpose()?;
    check_auth(
        listen_address(&args.host, args.port)?,
        api_key.as_deref(),
        args.insecure_no_auth,
    )?;
    let engine = args.engine();
    let limits = args.limits(&engine);
    limits.validate(&engine)?;
    let choice = args.recipe.model_choice(&args.device)?;
    let dir = &choice.dir;
    if let Some(u) = args.gpu_memory_utilization
        && !(u > 0.0 && u <= 1.0)
    {
        anyhow::bail!("--gpu-memory-utilization {u}: must be in (0, 1]");
    }
    let model = Qwen3Model::load(dir, choice.device, choice.kind)?;
    let (engine, lowered) = engine.fit_gpu_memory(&model, args.gpu_memory_utilization)?;
    if let Some(line) = lowered {
        tracing::warn!("{line}");
    }
    if args.enable_return_routed_experts && model.config.moe_layout().is_none() {
        // Not an error: requests asking for routing get a 400 that says the model is dense.
        tracing::warn!(
            "--enable-return-routed-experts: {} has no MoE layers, so there are no expert choices to return",
            dir.display()
        );
    }
    let tokenizer = Arc::new(Tokenizer::from_dir(dir)?);
    spar_app::check_vocabulary(&tokenizer, &model, dir)?;
    let renderer: Arc<dyn ChatRenderer> = match ChatTemplate::from_dir(dir) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::warn!(
                "no chat template in {} ({e:#}); rendering plain ChatML",
                dir.display()
            );
            Arc::new(ChatMlRenderer)
        }
    };
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "spar".into())
    });
    let opts = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        model_name: name,
        api_key,
        insecure_no_auth: args.insecure_no_auth,
        engine,
        default_max_tokens: args.default_max_tokens,
        limits,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    // Ctrl-C stops the engine loop; the HTTP server shuts down gracefully after it.
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let _ = rt.block_on(tokio::signal::ctrl_c());
        }
        on_signal.store(true, Ordering::Relaxed);
    });
    serve(&model, tokenizer, renderer, opts, stop, |addr| {
        eprintln!("spar serve: http://{addr}/v1")
    })
}
