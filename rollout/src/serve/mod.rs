//! `spar serve`: the built-in engine behind an OpenAI-compatible HTTP API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`), with log-probs (and the most likely alternatives: chat `top_logprobs`,
//! legacy `logprobs: N`), streaming (server-sent events), Qwen3's reasoning split
//! (`reasoning_content`, as vLLM's qwen3 parser returns it), loopback binding by default and an optional
//! bearer token (required off loopback, `auth.rs`), limits on the work a request asks for (`limits.rs`),
//! OpenAI-style errors for every failure (`errors.rs`), and requests whose client disconnects cancelled in the
//! engine. Token ids in and out (`prompt` as ids, `return_token_ids`) serve the rollout backend switch, and
//! SGLang's `POST /update_weights_from_disk` loads a trainer's new policy version in place, so `spar serve`
//! is a rollout server `[rollout.weight_sync]` can refresh.
pub mod api;
mod auth;
mod errors;
mod handlers;
mod limits;
pub mod params;
mod routed;

pub use auth::check_auth;
pub use limits::ServeLimits;

use crate::codec::TextCodec;
use crate::engine::{self, Engine, EngineClient, EngineConfig, LoadSink};
use anyhow::{Context, Result};
use spar_model::Qwen3Model;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Renders chat messages to the prompt text (the model's own chat template).
pub trait ChatRenderer: Send + Sync {
    fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        enable_thinking: bool,
    ) -> Result<String>;
}

impl ChatRenderer for spar_model::ChatTemplate {
    fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        enable_thinking: bool,
    ) -> Result<String> {
        spar_model::ChatTemplate::render(self, messages, tools, true, enable_thinking)
    }
}

/// Plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n` + generation prompt), Qwen3's thinking switch
/// included: for tokenizers that ship no template (the tiny CPU-demo tokenizer, tests).
pub struct ChatMlRenderer;

impl ChatRenderer for ChatMlRenderer {
    fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        enable_thinking: bool,
    ) -> Result<String> {
        if tools.is_some_and(|t| !t.as_array().is_some_and(|a| a.is_empty())) {
            anyhow::bail!("this model has no chat template with tool support");
        }
        let list = messages.as_array().context("`messages` must be an array")?;
        let mut s = String::new();
        for (i, m) in list.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(|r| r.as_str())
                .with_context(|| format!("messages[{i}].role is missing"))?;
            let content = match m.get("content") {
                Some(serde_json::Value::String(c)) => c.clone(),
                Some(serde_json::Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                    .collect::<Vec<_>>()
                    .join(""),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(_) => {
                    anyhow::bail!("messages[{i}].content must be a string or a list of text parts")
                }
            };
            s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        s.push_str("<|im_start|>assistant\n");
        if !enable_thinking {
            s.push_str("<think>\n\n</think>\n\n");
        }
        Ok(s)
    }
}

/// Server settings. `Debug` shows whether a bearer token is set, never the token.
#[derive(Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// The id `/v1/models` lists (requests naming another model are still served: one model per server).
    pub model_name: String,
    /// Bearer token every request must carry (None: no auth; refused off loopback unless
    /// `insecure_no_auth`, see [`check_auth`]).
    pub api_key: Option<String>,
    /// Serve beyond loopback without a token, on purpose.
    pub insecure_no_auth: bool,
    pub engine: EngineConfig,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: u32,
    pub limits: ServeLimits,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("model_name", &self.model_name)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("engine", &self.engine)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("limits", &self.limits)
            .finish()
    }
}

pub(crate) struct ServeState {
    pub client: EngineClient,
    pub codec: Arc<dyn TextCodec>,
    pub renderer: Arc<dyn ChatRenderer>,
    pub model_name: String,
    pub api_key: Option<String>,
    pub max_seq_len: usize,
    pub default_max_tokens: u32,
    pub eos: Vec<u32>,
    pub vocab: usize,
    pub limits: ServeLimits,
    /// Sequences of the requests being served, against `limits.max_in_flight_sequences`.
    pub in_flight: limits::InFlight,
    /// The engine's counters and load, published by the engine thread after every step (`GET /stats`).
    pub load: LoadSink,
    /// Weight loads to the engine thread (`POST /update_weights_from_disk`).
    pub weight_loads: std::sync::Mutex<std::sync::mpsc::Sender<engine::WeightLoad>>,
    /// The `weight_version` of the last load (`"initial"` before any), shown by `/stats` and `/v1/models`.
    pub weight_version: std::sync::Mutex<String>,
    /// Whether `return_routed_experts` can be answered (an MoE model whose engine records routing).
    pub routed_experts: routed::RoutedExpertsSupport,
}

/// Serves until `stop` is set (or the listener fails). `ready` receives the bound address (port 0 picks a free
/// one). The engine runs on the calling thread; HTTP on a small tokio runtime. Fails before binding when the
/// auth settings or the limits are refused ([`check_auth`], [`ServeLimits::validate`]).
pub fn serve(
    model: &Qwen3Model,
    codec: Arc<dyn TextCodec>,
    renderer: Arc<dyn ChatRenderer>,
    opts: ServeOptions,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let addr = listen_address(&opts.host, opts.port)?;
    check_auth(addr, opts.api_key.as_deref(), opts.insecure_no_auth)?;
    opts.limits.validate(&opts.engine)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("spar-serve")
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let (client, inbox) = engine::channel(opts.model_name.clone());
    let (weight_loads, loads) = std::sync::mpsc::channel();
    let inbox = inbox.with_weight_loads(loads);
    let load = LoadSink::default();
    let mut eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| codec.token_id(t))
        .collect();
    eos.dedup();
    let state = Arc::new(ServeState {
        client,
        codec: codec.clone(),
        renderer,
        model_name: opts.model_name.clone(),
        api_key: opts.api_key.clone(),
        max_seq_len: opts.engine.max_seq_len,
        default_max_tokens: opts.default_max_tokens,
        eos,
        vocab: model.config.vocab_size,
        in_flight: limits::InFlight::new(opts.limits.max_in_flight_sequences),
        limits: opts.limits.clone(),
        load: load.clone(),
        weight_loads: std::sync::Mutex::new(weight_loads),
        weight_version: std::sync::Mutex::new("initial".into()),
        routed_experts: routed::RoutedExpertsSupport::new(
            model.config.moe_layout(),
            opts.engine.record_routing,
        ),
    });
    let app = handlers::router(state);
    let stop_http = stop.clone();
    let server = rt.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                while !stop_http.load(Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
            .await
    });
    let mut engine = Engine::new(model, opts.engine)?
        .with_codec(codec)
        .with_load_sink(load);
    tracing::info!(
        "spar serve: listening on http://{bound}/v1 (model {})",
        opts.model_name
    );
    // Off loopback this is a warning whichever way auth is: the operator should know the model is exposed.
    let auth_line = check_auth(bound, opts.api_key.as_deref(), opts.insecure_no_auth)?;
    if bound.ip().is_loopback() {
        tracing::info!("{auth_line}");
    } else {
        tracing::warn!("{auth_line}");
    }
    ready(bound);
    // A failed forward fails the requests in it; the server goes on.
    loop {
        match engine.run_until(&inbox, || stop.load(Ordering::Relaxed)) {
            Ok(()) => break,
            Err(e) => tracing::error!("engine step failed: {e:#}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(server)
        .context("HTTP server task")?
        .context("HTTP server")?;
    Ok(())
}

/// The socket address of `--host` and `--port` (an IP address: a name would hide which interface is bound).
pub fn listen_address(host: &str, port: u16) -> Result<SocketAddr> {
    let ip: std::net::IpAddr = host.parse().with_context(|| {
        format!("--host {host}: not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)")
    })?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_prints_the_bearer_token() {
        let o = super::ServeOptions {
            host: "127.0.0.1".into(),
            port: 0,
            model_name: "m".into(),
            api_key: Some("sk-very-secret".into()),
            insecure_no_auth: false,
            engine: Default::default(),
            default_max_tokens: 16,
            limits: super::ServeLimits::for_engine(&Default::default()),
        };
        let d = format!("{o:?}");
        assert!(
            !d.contains("sk-very-secret") && d.contains("<redacted>"),
            "{d}"
        );
    }
}
