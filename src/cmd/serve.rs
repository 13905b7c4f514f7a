//! `spar serve --model DIR`: the built-in engine as an OpenAI-compatible HTTP API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`), on loopback unless `--host` says otherwise, with an optional bearer token
//! read from an environment variable.
use super::common::{DeviceArgs, RecipeArgs};
use anyhow::{Context, Result};
use spar_model::{ChatTemplate, Qwen3Model, Tokenizer};
use spar_rollout::engine::EngineConfig;
use spar_rollout::serve::{ChatMlRenderer, ChatRenderer, ServeOptions, serve};
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
    /// Environment variable holding the bearer token clients must send (default: none, no auth).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Most sequences decoded at once.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Context length per sequence (KV cache per slot).
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: usize,
    /// KV-cache slots (default 2 x max_batch: idle slots keep conversations cached for prefix reuse).
    #[arg(long)]
    pub kv_slots: Option<usize>,
    /// max_tokens for requests that give none.
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let choice = args.recipe.model_choice(&args.device)?;
    let dir = &choice.dir;
    let model = Qwen3Model::load(dir, choice.device, choice.kind)?;
    let tokenizer = Arc::new(Tokenizer::from_dir(dir)?);
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
    let api_key = match &args.api_key_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--api-key-env {var}: the variable is not set"))?,
        ),
        None => None,
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
        engine: EngineConfig {
            max_batch: args.max_batch,
            kv_slots: args.kv_slots.unwrap_or(2 * args.max_batch),
            max_seq_len: args.max_model_len,
            prefill_tokens: 8192,
            seed: args.seed,
            record_routing: false,
        },
        default_max_tokens: args.default_max_tokens,
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
