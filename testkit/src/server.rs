//! A loopback fake OpenAI-compatible server: `/v1/chat/completions`, `/v1/completions` (token-id prompts),
//! `/v1/embeddings`, `/v1/models`, and SGLang's `/update_weights_from_disk` (checks the folder is a transformers
//! model folder), with configurable latency, a random error rate, and scripted misbehaviour
//! (HTTP errors, malformed JSON, hangs, fixed bodies) for the next requests. It records what it was sent and
//! the most requests it had in flight at once.
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use spar_clients::ChatMessage;
use spar_core::recipe::EndpointConfig;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the fake chat model answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FakeReply {
    pub content: String,
    /// Sent as `message.reasoning_content`, as vLLM's qwen3 reasoning parser does.
    pub reasoning_content: Option<String>,
    /// Answer with this scripted behaviour instead (e.g. `Status(500)`): a failure that depends on the
    /// conversation, not on the order requests arrive in.
    pub failure: Option<Scripted>,
}

impl FakeReply {
    /// A reply that is this scripted behaviour (every time the responder returns it).
    pub fn failing(failure: Scripted) -> Self {
        FakeReply {
            failure: Some(failure),
            ..Default::default()
        }
    }
}

impl From<String> for FakeReply {
    fn from(content: String) -> Self {
        FakeReply {
            content,
            ..Default::default()
        }
    }
}

impl From<&str> for FakeReply {
    fn from(content: &str) -> Self {
        content.to_string().into()
    }
}

/// The fake chat model: the request's messages in, the reply out.
pub type ChatResponder = Arc<dyn Fn(&[ChatMessage]) -> FakeReply + Send + Sync>;

/// One scripted behaviour, used by the next request (any endpoint) in place of, or before, the normal answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Scripted {
    /// Answer with this HTTP status and a JSON error body.
    Status(u16),
    /// 429 with a `Retry-After` header (seconds).
    RateLimited { retry_after_s: u32 },
    /// 200 with a body that is not JSON.
    Malformed,
    /// Never answer (until the server is dropped).
    Hang,
    /// 200 with this body.
    Json(Value),
    /// Wait this long on top of the configured latency, then answer normally.
    Delay(Duration),
}

/// How `/v1/completions` reports generated token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenIdStyle {
    /// `choices[0].token_ids` (vLLM >= 0.10.2 `return_token_ids`).
    TokenIdsField,
    /// `choices[0].logprobs.tokens` as `token_id:<id>` (vLLM `return_tokens_as_token_ids`), no `token_ids`.
    TokenStrings,
}

#[derive(Clone)]
pub struct FakeServerConfig {
    /// Served model name (`/v1/models`, `model` of replies).
    pub model: String,
    /// Added to every request before it is answered.
    pub latency: Duration,
    /// Fraction of unscripted requests answered `503`, drawn from `seed`.
    pub error_rate: f64,
    pub seed: u64,
    pub embedding_dim: usize,
    pub vocab_size: u32,
    pub token_ids: TokenIdStyle,
    /// Keep request bodies in `requests()` (off for long benchmarks).
    pub record_bodies: bool,
    pub chat: ChatResponder,
}

impl Default for FakeServerConfig {
    fn default() -> Self {
        FakeServerConfig {
            model: "fake-model".into(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            seed: 0,
            embedding_dim: 8,
            vocab_size: 1000,
            token_ids: TokenIdStyle::TokenIdsField,
            record_bodies: true,
            chat: super::responders::echo(),
        }
    }
}

impl std::fmt::Debug for FakeServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServerConfig")
            .field("model", &self.model)
            .field("latency", &self.latency)
            .field("error_rate", &self.error_rate)
            .finish_non_exhaustive()
    }
}

/// A request the server received.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    /// e.g. `/v1/chat/completions`.
    pub path: String,
    pub authorization: Option<String>,
    /// The JSON body (`Null` for GET, a body that is not JSON, or when `record_bodies` is off).
    pub body: Value,
}

struct ServerState {
    cfg: FakeServerConfig,
    script: Mutex<VecDeque<Scripted>>,
    log: Mutex<Vec<RecordedRequest>>,
    count: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    rng: Mutex<StdRng>,
    shutdown: watch::Receiver<bool>,
}

/// Counts a request in flight for as long as its handler runs.
struct InFlight<'a>(&'a ServerState);

impl<'a> InFlight<'a> {
    fn enter(s: &'a ServerState) -> Self {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running fake server on 127.0.0.1; it stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Binds an ephemeral port on 127.0.0.1 and serves in the current tokio runtime.
    pub async fn start(cfg: FakeServerConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let state = Arc::new(ServerState {
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            cfg,
            script: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            shutdown: rx.clone(),
        });
        let app = Router::new()
            .route(
                "/v1/chat/completions",
                post(|s: State<Arc<ServerState>>, h: HeaderMap, b: Bytes| {
                    handle(s, "/v1/chat/completions", h, b)
                }),
            )
            .route(
                "/v1/completions",
                post(|s: State<Arc<ServerState>>, h: HeaderMap, b: Bytes| {
                    handle(s, "/v1/completions", h, b)
                }),
            )
            .route(
                "/v1/embeddings",
                post(|s: State<Arc<ServerState>>, h: HeaderMap, b: Bytes| {
                    handle(s, "/v1/embeddings", h, b)
                }),
            )
            .route(
                "/update_weights_from_disk",
                post(|s: State<Arc<ServerState>>, h: HeaderMap, b: Bytes| {
                    handle(s, "/update_weights_from_disk", h, b)
                }),
            )
            .route(
                "/v1/models",
                get(|s: State<Arc<ServerState>>, h: HeaderMap| {
                    handle(s, "/v1/models", h, Bytes::new())
                }),
            )
            .with_state(state.clone());
        let mut stop = rx;
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!("fake OpenAI server stopped: {e}");
            }
        });
        Ok(FakeServer {
            addr,
            state,
            shutdown: tx,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// An endpoint for this server: its model, 10 s timeout, 3 retries, concurrency 64.
    pub fn endpoint(&self) -> EndpointConfig {
        EndpointConfig {
            base_url: self.base_url(),
            model: self.state.cfg.model.clone(),
            api_key_env: None,
            timeout_s: 10.0,
            max_retries: 3,
            concurrency: 64,
            redact_phi: true,
        }
    }

    /// Queues behaviours for the next requests, in order.
    pub fn script(&self, items: impl IntoIterator<Item = Scripted>) {
        self.state
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(items);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// The most requests the server was handling at one time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"object": "error", "message": msg, "code": status.as_u16()})),
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    path: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.count.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&state);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    state
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(RecordedRequest {
            path: path.to_string(),
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: if state.cfg.record_bodies {
                parsed.clone().unwrap_or(Value::Null)
            } else {
                Value::Null
            },
        });
    let scripted = state
        .script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front();
    tokio::time::sleep(state.cfg.latency).await;
    if let Some(s) = scripted
        && let Some(response) = play_scripted(&state, s).await
    {
        return response;
    }
    if state.cfg.error_rate > 0.0
        && state
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random::<f64>()
            < state.cfg.error_rate
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "random fake error");
    }
    if path == "/v1/models" {
        return axum::Json(
            json!({"object": "list", "data": [{"id": state.cfg.model, "object": "model"}]}),
        )
        .into_response();
    }
    let Some(req) = parsed else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let result = match path {
        "/v1/chat/completions" => match chat(&state.cfg, &req) {
            Ok((v, Some(failure))) => match play_scripted(&state, failure).await {
                Some(response) => return response,
                None => Ok(v),
            },
            Ok((v, None)) => Ok(v),
            Err(e) => Err(e),
        },
        "/v1/completions" => completion(&state.cfg, &req),
        "/update_weights_from_disk" => return weights_from_disk(&req),
        _ => embeddings(&state.cfg, &req),
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(msg) => error(StatusCode::BAD_REQUEST, &msg),
    }
}

/// SGLang's weight refresh (`POST /update_weights_from_disk`): like the server, it reads the folder; here it
/// checks that it is a transformers folder (config.json and safetensors weights) and answers as SGLang does.
fn weights_from_disk(req: &Value) -> Response {
    let answer = |ok: bool, msg: String| {
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        (
            status,
            axum::Json(json!({"success": ok, "message": msg, "num_paused_requests": 0})),
        )
            .into_response()
    };
    let Some(path) = req.get("model_path").and_then(Value::as_str) else {
        return answer(false, "model_path is required".into());
    };
    let dir = std::path::Path::new(path);
    let has_weights = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
    });
    if !dir.join("config.json").is_file() || !has_weights {
        return answer(
            false,
            format!("{path}: not a model folder (config.json and *.safetensors)"),
        );
    }
    answer(true, "Succeeded to update model weights.".into())
}

/// Plays a scripted behaviour; None when the request is to be answered normally after it (a delay).
async fn play_scripted(state: &ServerState, scripted: Scripted) -> Option<Response> {
    Some(match scripted {
        Scripted::Status(code) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "scripted error",
        ),
        Scripted::RateLimited { retry_after_s } => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            r
        }
        Scripted::Malformed => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"choices\": [{\"message\": ",
        )
            .into_response(),
        Scripted::Hang => {
            let mut stop = state.shutdown.clone();
            let _ = stop.wait_for(|v| *v).await;
            error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
        Scripted::Json(v) => axum::Json(v).into_response(),
        Scripted::Delay(d) => {
            tokio::time::sleep(d).await;
            return None;
        }
    })
}

/// The chat completion of the responder's reply, and the failure it asks for instead (if any).
fn chat(cfg: &FakeServerConfig, req: &Value) -> Result<(Value, Option<Scripted>), String> {
    let messages: Vec<ChatMessage> =
        serde_json::from_value(req.get("messages").cloned().unwrap_or(Value::Null))
            .map_err(|e| format!("messages: {e}"))?;
    let reply = (cfg.chat)(&messages);
    let prompt_tokens: usize = messages
        .iter()
        .map(|m| m.content.split_whitespace().count())
        .sum();
    let words: Vec<&str> = reply.content.split_whitespace().collect();
    let mut choice = json!({
        "index": 0,
        "message": {"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning_content},
        "finish_reason": "stop",
    });
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        choice["logprobs"] = json!({"content": words.iter().map(|w| json!({"token": w, "logprob": -0.1})).collect::<Vec<_>>()});
    }
    Ok((
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": cfg.model,
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": words.len(), "total_tokens": prompt_tokens + words.len()},
        }),
        reply.failure,
    ))
}

/// Deterministic generation: token i is `last prompt token + 1 + i` (mod vocab), so a test knows what comes
/// and can stop it with `stop_token_ids`; log-probs depend on the token only.
fn completion(cfg: &FakeServerConfig, req: &Value) -> Result<Value, String> {
    let prompt: Vec<u32> =
        serde_json::from_value(req.get("prompt").cloned().unwrap_or(Value::Null))
            .map_err(|_| "the fake server takes token-id prompts only".to_string())?;
    let max_tokens = req.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as u32;
    let stops: Vec<u32> = req
        .get("stop_token_ids")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let last = prompt.last().copied().unwrap_or(0);
    let mut ids = Vec::new();
    let mut finish = "length";
    for i in 0..max_tokens {
        let t = (last + 1 + i) % cfg.vocab_size.max(1);
        ids.push(t);
        if stops.contains(&t) {
            finish = "stop";
            break;
        }
    }
    let logprobs: Vec<f32> = ids.iter().map(|t| -0.05 - (t % 10) as f32 * 0.1).collect();
    let text = ids.iter().map(|t| format!("<{t}>")).collect::<String>();
    let mut choice = json!({"index": 0, "text": text, "finish_reason": finish});
    let want_logprobs = req.get("logprobs").is_some_and(|v| !v.is_null());
    match cfg.token_ids {
        TokenIdStyle::TokenIdsField => {
            choice["token_ids"] = json!(ids);
            if want_logprobs {
                choice["logprobs"] = json!({"tokens": ids.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>(), "token_logprobs": logprobs});
            }
        }
        TokenIdStyle::TokenStrings => {
            if want_logprobs {
                choice["logprobs"] = json!({"tokens": ids.iter().map(|t| format!("token_id:{t}")).collect::<Vec<_>>(), "token_logprobs": logprobs});
            }
        }
    }
    Ok(json!({
        "id": "cmpl-fake", "object": "text_completion", "model": cfg.model, "choices": [choice],
        "usage": {"prompt_tokens": prompt.len(), "completion_tokens": ids.len(), "total_tokens": prompt.len() + ids.len()},
    }))
}

/// FNV-1a: a stable hash (std's may change between Rust versions).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Deterministic, deliberately unnormalised vectors: the same text always gets the same one.
fn embeddings(cfg: &FakeServerConfig, req: &Value) -> Result<Value, String> {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "input must be a string or a list of strings".to_string())?,
        None => return Err("input is missing".into()),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v: Vec<f32> = (0..cfg.embedding_dim)
                .map(|j| (fnv1a(format!("{j}:{text}").as_bytes()) % 2001) as f32 / 100.0 - 10.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Ok(
        json!({"object": "list", "model": cfg.model, "data": data, "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}),
    )
}
