//! HTTP handlers of `spar serve`.
use super::ServeState;
use super::api::{ChatRequest, CompletionRequest, Prompt, SamplingFields};
use super::auth::require_bearer;
use super::errors::{ApiError, bad, bad_param, internal, json_errors, not_found};
use super::limits::InFlightPermit;
use super::params;
use super::routed;
use crate::engine::{EngineOutput, StreamEvent};
use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use spar_core::traits::{FinishReason, GenerateRequest, SamplingParams};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type St = State<Arc<ServeState>>;

pub(crate) fn router(state: Arc<ServeState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/stats", get(stats))
        .route("/update_weights_from_disk", post(update_weights_from_disk))
        // Only matched routes ask for the token: an unknown route is a 404 either way.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{:x}{:04x}",
        now(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn models(State(st): St) -> Json<Value> {
    let limits = json!({
        "max_n": st.limits.max_n,
        "max_tokens": st.limits.max_tokens,
        "max_prompt_tokens": st.limits.max_prompt_tokens,
        "max_in_flight_sequences": st.limits.max_in_flight_sequences,
        "max_queue_wait_ms": st.limits.max_queue_wait_ms,
        "max_body_bytes": st.limits.max_body_bytes,
        "max_temperature": params::MAX_TEMPERATURE,
        "max_top_logprobs": params::MAX_TOP_LOGPROBS,
    });
    Json(
        json!({"object": "list", "data": [{"id": st.model_name, "object": "model", "created": 0, "owned_by": "spar",
                                           "max_model_len": st.max_seq_len, "spar_limits": limits}]}),
    )
}

/// `GET /stats`: the engine's counters (requests, tokens, `cancelled`), what it runs and queues now, and the
/// sequences in flight against the limit.
async fn stats(State(st): St) -> Json<Value> {
    let load = *st.load.lock().unwrap_or_else(|e| e.into_inner());
    let version = st
        .weight_version
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Json(
        json!({"engine": load.stats, "running": load.running, "queued": load.queued,
                "in_flight_sequences": st.in_flight.current(),
                "max_in_flight_sequences": st.limits.max_in_flight_sequences,
                "weight_version": version}),
    )
}

/// SGLang's weight refresh request (`sglang.srt.managers.io_struct.UpdateWeightFromDiskReqInput`).
#[derive(serde::Deserialize)]
struct UpdateWeightsFromDisk {
    model_path: String,
    #[serde(default)]
    weight_version: Option<String>,
    /// Every cached prefix is dropped whatever this says (they hold the old weights' keys).
    #[serde(default)]
    #[allow(dead_code)]
    flush_cache: Option<bool>,
    #[serde(default)]
    abort_all_requests: Option<bool>,
}

/// `POST /update_weights_from_disk`: loads a transformers folder of the served model's shape into the engine
/// in place, as SGLang does: sequences running now finish on the old weights, requests arriving meanwhile wait
/// for the new ones. Answers SGLang's `{"success", "message", "num_paused_requests"}`; a folder that cannot be
/// loaded (missing, another shape, damaged) answers 400 with `success: false` and the reason, and the engine
/// keeps its weights (every header is checked before anything is copied).
async fn update_weights_from_disk(
    State(st): St,
    Json(req): Json<UpdateWeightsFromDisk>,
) -> Response {
    let answer = |status: StatusCode, success: bool, message: String| {
        (
            status,
            Json(json!({"success": success, "message": message, "num_paused_requests": 0})),
        )
            .into_response()
    };
    if req.abort_all_requests == Some(true) {
        return answer(
            StatusCode::BAD_REQUEST,
            false,
            "abort_all_requests is not supported: running sequences finish on the old weights"
                .into(),
        );
    }
    let (done, rx) = tokio::sync::oneshot::channel();
    let load = crate::engine::WeightLoad {
        dir: std::path::PathBuf::from(&req.model_path),
        done,
    };
    let sent = st
        .weight_loads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(load);
    if sent.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            "the generation engine has stopped".into(),
        );
    }
    match rx.await {
        Ok(Ok(())) => {
            let version = req.weight_version.unwrap_or_default();
            *st.weight_version.lock().unwrap_or_else(|e| e.into_inner()) = version.clone();
            answer(
                StatusCode::OK,
                true,
                format!(
                    "Succeeded to update model weights (version {version:?} from {}).",
                    req.model_path
                ),
            )
        }
        Ok(Err(e)) => answer(
            StatusCode::BAD_REQUEST,
            false,
            format!("Failed to update weights from {}: {e:#}", req.model_path),
        ),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            "the generation engine dropped the weight load".into(),
        ),
    }
}

/// `n` of a request, checked against the limit (streaming allows only 1).
fn choices(st: &ServeState, f: &SamplingFields) -> Result<u32, ApiError> {
    let n = f.n.unwrap_or(1);
    if n == 0 || n > st.limits.max_n {
        return Err(bad_param(
            "n",
            format!("n must be in 1..={} (got {n})", st.limits.max_n),
        ));
    }
    if f.stream && n != 1 {
        return Err(bad_param("n", "streaming supports n = 1"));
    }
    Ok(n)
}

/// Checks one prompt's length against the limit; `field` is the request field it came from.
fn check_prompt_len(st: &ServeState, field: &str, len: usize) -> Result<(), ApiError> {
    if len > st.limits.max_prompt_tokens {
        return Err(bad_param(
            field,
            format!(
                "the prompt has {len} tokens; this server takes at most {}",
                st.limits.max_prompt_tokens
            ),
        ));
    }
    Ok(())
}

/// Takes `seqs` sequences of the in-flight limit for a request: a 400 when the request alone is larger than
/// the limit (it could never run), a 429 when it does not fit within the queue wait.
async fn admit(st: &ServeState, seqs: usize) -> Result<InFlightPermit, ApiError> {
    let max = st.limits.max_in_flight_sequences;
    if seqs > max {
        return Err(bad_param(
            "prompt",
            format!(
                "the request asks for {seqs} sequences (prompts x n); this server runs at most {max} at once"
            ),
        ));
    }
    let wait = std::time::Duration::from_millis(st.limits.max_queue_wait_ms);
    st.in_flight.take(seqs, wait).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the server is at its limit of {max} sequences in flight ({} now, waited {} ms); retry later",
                st.in_flight.current(),
                st.limits.max_queue_wait_ms
            ),
        )
    })
}

/// `max_tokens` of a request with the field it came from (chat: `max_completion_tokens` wins over the
/// deprecated `max_tokens`).
type MaxTokens = (Option<u32>, &'static str);

/// The engine's sampling parameters for one request, every field checked (a 400 naming it otherwise).
fn sampling(
    st: &ServeState,
    f: &SamplingFields,
    (max_tokens, max_field): MaxTokens,
    prompt_len: usize,
    top_logprobs: u32,
) -> Result<SamplingParams, ApiError> {
    let temperature = params::check_temperature(f.temperature.unwrap_or(1.0) as f64)
        .map_err(|m| bad_param("temperature", m))? as f32;
    let top_p = params::check_top_p(f.top_p.unwrap_or(1.0) as f64)
        .map_err(|m| bad_param("top_p", m))? as f32;
    let min_p = params::check_min_p(f.min_p.unwrap_or(0.0) as f64)
        .map_err(|m| bad_param("min_p", m))? as f32;
    let top_k = params::check_top_k(f.top_k.unwrap_or(0)).map_err(|m| bad_param("top_k", m))?;
    if prompt_len >= st.max_seq_len {
        return Err(bad(format!(
            "the prompt has {prompt_len} tokens; this server's context is {} tokens",
            st.max_seq_len
        )));
    }
    let room = (st.max_seq_len - prompt_len).min(u32::MAX as usize) as u32;
    let cap = st.limits.max_tokens.min(room);
    let max_new = max_tokens.unwrap_or(st.default_max_tokens.min(cap));
    if max_new == 0 || max_new > st.limits.max_tokens {
        return Err(bad_param(
            max_field,
            format!(
                "{max_field} must be in 1..={} (got {max_new})",
                st.limits.max_tokens
            ),
        ));
    }
    if max_new > room {
        return Err(bad_param(
            max_field,
            format!(
                "{max_field} {max_new} does not fit: a prompt of {prompt_len} tokens leaves {room} of the {}-token context",
                st.max_seq_len
            ),
        ));
    }
    let mut stop_token_ids = f.stop_token_ids.clone();
    if !f.ignore_eos {
        stop_token_ids.extend(st.eos.iter().copied());
    }
    if let Some(bad_id) = stop_token_ids.iter().find(|&&t| t as usize >= st.vocab) {
        return Err(bad_param(
            "stop_token_ids",
            format!(
                "stop_token_ids holds {bad_id}, outside the vocabulary ({})",
                st.vocab
            ),
        ));
    }
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k,
        min_p,
        max_new_tokens: max_new,
        seed: f.seed,
        stop_token_ids,
        stop_strings: f.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        top_logprobs,
        // OpenAI semantics: the model's own log-probs, whatever the temperature.
        logprobs_at_temperature: false,
    })
}

fn top_count(field: &'static str, n: u32) -> Result<u32, ApiError> {
    params::check_top_logprobs(field, n).map_err(|m| bad_param(field, m))
}

/// A log-prob as JSON can carry it: JSON has no infinity (a token the model rules out has log-prob -inf), so,
/// as vLLM does, -9999 stands for it.
fn finite(lp: f32) -> f32 {
    if lp.is_finite() { lp } else { -9999.0 }
}

/// The visible text of an output: the stop token dropped, cut before the first stop string.
fn output_text(
    st: &ServeState,
    out: &EngineOutput,
    params: &SamplingParams,
) -> Result<String, ApiError> {
    let ids = visible_ids(&out.output.token_ids, out.output.finish, params);
    let text = st.codec.decode(ids).map_err(internal)?;
    Ok(cut_at_stop(text, &params.stop_strings))
}

fn visible_ids<'a>(ids: &'a [u32], finish: FinishReason, params: &SamplingParams) -> &'a [u32] {
    match ids.last() {
        Some(t) if finish == FinishReason::Stop && params.stop_token_ids.contains(t) => {
            &ids[..ids.len() - 1]
        }
        _ => ids,
    }
}

fn cut_at_stop(mut text: String, stops: &[String]) -> String {
    if let Some(cut) = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        text.truncate(cut);
    }
    text
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Splits Qwen3 output into (reasoning, content), as vLLM's qwen3 reasoning parser does.
fn split_reasoning(text: &str, thinking: bool) -> (Option<String>, String) {
    if let Some(end) = text.find("</think>") {
        let reasoning = text[..end]
            .trim_start()
            .strip_prefix("<think>")
            .unwrap_or(&text[..end])
            .trim()
            .to_string();
        return (
            Some(reasoning),
            text[end + "</think>".len()..].trim_start().to_string(),
        );
    }
    match text.trim_start().strip_prefix("<think>") {
        Some(r) if thinking => (Some(r.to_string()), String::new()),
        _ => (None, text.to_string()),
    }
}

fn token_string(st: &ServeState, t: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{t}")
    } else {
        st.codec.decode(&[t]).unwrap_or_default()
    }
}

fn token_strings(st: &ServeState, ids: &[u32], as_ids: bool) -> Vec<String> {
    ids.iter().map(|&t| token_string(st, t, as_ids)).collect()
}

/// `choices[].logprobs` of `/v1/completions` (the legacy format). Typed rather than a `Value` because each
/// `top_logprobs` entry is a JSON object from token text to log-prob whose order carries the ranking, and
/// serde_json's `Map` sorts its keys.
#[derive(Serialize)]
struct LegacyLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    /// Null unless the request asked for `logprobs: N` with N > 0.
    top_logprobs: Option<Vec<RankedMap>>,
    text_offset: Vec<usize>,
}

/// A JSON object written in the order of its entries (most likely first).
struct RankedMap(Vec<(String, f32)>);

impl Serialize for RankedMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Legacy log-probs of `ids`. Two alternatives can decode to the same text (pieces of one UTF-8 character);
/// the object keeps the more likely one, so it may hold fewer than N keys (`return_tokens_as_token_ids`
/// keeps them all apart).
fn legacy_logprobs(
    st: &ServeState,
    ids: &[u32],
    lps: &[f32],
    tops: Option<&[Vec<(u32, f32)>]>,
    as_ids: bool,
) -> LegacyLogprobs {
    let top_logprobs = tops.map(|tops| {
        tops.iter()
            .map(|alts| {
                let mut seen = std::collections::HashSet::new();
                RankedMap(
                    alts.iter()
                        .map(|&(t, lp)| (token_string(st, t, as_ids), finite(lp)))
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .collect(),
                )
            })
            .collect()
    });
    LegacyLogprobs {
        tokens: token_strings(st, ids, as_ids),
        token_logprobs: lps.iter().map(|&l| finite(l)).collect(),
        top_logprobs,
        text_offset: vec![],
    }
}

/// `choices[]` of `/v1/completions` (typed: it carries [`LegacyLogprobs`]).
#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: usize,
    text: String,
    logprobs: Option<LegacyLogprobs>,
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_token_ids: Option<&'a [u32]>,
}

/// A `/v1/completions` response or stream chunk.
#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<CompletionChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
    /// SGLang's extensions at the response level: `routed_experts` when the request asked for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    sglext: Option<Value>,
}

fn to_json_string(body: &impl Serialize) -> String {
    serde_json::to_string(body).expect("response bodies are plain data")
}

async fn run_all(
    st: &ServeState,
    reqs: Vec<GenerateRequest>,
) -> Result<Vec<EngineOutput>, ApiError> {
    let outs = futures::future::join_all(reqs.into_iter().map(|r| st.client.generate_one(r))).await;
    outs.into_iter().map(|o| o.map_err(internal)).collect()
}

fn with_n(params: &SamplingParams, n: u32) -> Vec<SamplingParams> {
    (0..n)
        .map(|i| {
            let mut p = params.clone();
            p.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            p
        })
        .collect()
}

async fn completions(
    State(st): St,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    if req.echo {
        return Err(bad_param("echo", "echo is not supported"));
    }
    // `logprobs: N`: each sampled token's log-prob, and for N > 0 the N most likely tokens with theirs.
    let top = top_count("logprobs", req.logprobs.unwrap_or(0))?;
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(t) => vec![st.codec.encode(t).map_err(internal)?],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| st.codec.encode(t))
            .collect::<anyhow::Result<_>>()
            .map_err(internal)?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenBatch(b) => b.clone(),
    };
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(bad_param("prompt", "empty prompt"));
    }
    if let Some(t) = prompts.iter().flatten().find(|&&t| t as usize >= st.vocab) {
        return Err(bad_param(
            "prompt",
            format!(
                "prompt token id {t} is outside the vocabulary ({})",
                st.vocab
            ),
        ));
    }
    let n = choices(&st, &req.sampling)?;
    if req.sampling.stream && prompts.len() != 1 {
        return Err(bad_param("prompt", "streaming supports one prompt"));
    }
    for p in &prompts {
        check_prompt_len(&st, "prompt", p.len())?;
    }
    let routed_layout = req
        .return_routed_experts
        .then(|| routed::check(&st, prompts.len() * n as usize, req.sampling.stream))
        .transpose()?;
    let mut reqs = Vec::new();
    let mut params_of = Vec::new();
    for p in &prompts {
        let params = sampling(
            &st,
            &req.sampling,
            (req.max_tokens, "max_tokens"),
            p.len(),
            top,
        )?;
        for sp in with_n(&params, n) {
            params_of.push(sp.clone());
            reqs.push(GenerateRequest {
                prompt_ids: p.clone(),
                sampling: sp,
            });
        }
    }
    let id = request_id("cmpl");
    let model = req.model.clone().unwrap_or_else(|| st.model_name.clone());
    let want_lp = req.logprobs.is_some();
    let as_ids = req.return_tokens_as_token_ids;
    // Held until the response is complete (or the client has gone): dropping it frees the sequences.
    let permit = admit(&st, reqs.len()).await?;
    if req.sampling.stream {
        let params = params_of.remove(0);
        let rx = st.client.stream(reqs.remove(0)).map_err(internal)?;
        let st2 = st.clone();
        let return_ids = req.return_token_ids;
        let make = move |delta_ids: &[u32],
                         delta: String,
                         lps: &[f32],
                         tops: &[Vec<(u32, f32)>],
                         finish: Option<FinishReason>| {
            let logprobs = want_lp
                .then(|| legacy_logprobs(&st2, delta_ids, lps, (top > 0).then_some(tops), as_ids));
            to_json_string(&CompletionBody {
                id: &id,
                object: "text_completion",
                created: now(),
                model: &model,
                choices: vec![CompletionChoice {
                    index: 0,
                    text: delta,
                    logprobs,
                    finish_reason: finish.map(finish_name),
                    token_ids: return_ids.then_some(delta_ids),
                    prompt_token_ids: None,
                }],
                usage: None,
                sglext: None,
            })
        };
        return Ok(sse(st.clone(), rx, params, permit, move |ev| match ev {
            Delta::Text {
                ids,
                text,
                logprobs,
                top_logprobs,
                ..
            } => vec![make(&ids, text, &logprobs, &top_logprobs, None)],
            Delta::Finish(f) => vec![make(&[], String::new(), &[], &[], Some(f))],
        }));
    }
    let outs = run_all(&st, reqs).await?;
    drop(permit);
    let sglext = match &routed_layout {
        Some(layout) => Some(routed::sglext(layout, &outs[0])?),
        None => None,
    };
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0usize, 0usize);
    for (i, (out, params)) in outs.iter().zip(&params_of).enumerate() {
        let mut params = params.clone();
        if req.sampling.include_stop_str_in_output {
            params.stop_strings.clear();
        }
        let text = output_text(&st, out, &params)?;
        let o = &out.output;
        let prompt = &prompts[i / n as usize];
        prompt_tokens += prompt.len();
        completion_tokens += o.token_ids.len();
        let tops = (top > 0).then_some(o.top_logprobs.as_slice());
        choices.push(CompletionChoice {
            index: i,
            text,
            logprobs: want_lp
                .then(|| legacy_logprobs(&st, &o.token_ids, &o.logprobs, tops, as_ids)),
            finish_reason: Some(finish_name(o.finish)),
            token_ids: req.return_token_ids.then_some(o.token_ids.as_slice()),
            prompt_token_ids: req.return_token_ids.then_some(prompt.as_slice()),
        });
    }
    let body = CompletionBody {
        id: &id,
        object: "text_completion",
        created: now(),
        model: &model,
        choices,
        usage: Some(
            json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}),
        ),
        sglext,
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        to_json_string(&body),
    )
        .into_response())
}

fn enable_thinking(req: &ChatRequest) -> bool {
    req.chat_template_kwargs
        .as_ref()
        .and_then(|k| k.get("enable_thinking"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}

/// `choices[].logprobs` of a chat completion: per token its text, log-prob, UTF-8 bytes and `top_logprobs`
/// (the same fields for each alternative, most likely first; `[]` when not asked for).
fn chat_logprobs(st: &ServeState, ids: &[u32], lps: &[f32], tops: &[Vec<(u32, f32)>]) -> Value {
    let entry = |t: u32, lp: f32| {
        let s = st.codec.decode(&[t]).unwrap_or_default();
        json!({"token": s, "logprob": finite(lp), "bytes": s.as_bytes()})
    };
    let content: Vec<Value> = ids
        .iter()
        .zip(lps)
        .enumerate()
        .map(|(i, (&t, &lp))| {
            let mut e = entry(t, lp);
            let alts: Vec<Value> = tops
                .get(i)
                .map(|a| a.iter().map(|&(t, lp)| entry(t, lp)).collect())
                .unwrap_or_default();
            e["top_logprobs"] = Value::Array(alts);
            e
        })
        .collect();
    json!({"content": content})
}

/// `top_logprobs` of a chat request, checked as OpenAI does: at most 20, and only with `logprobs: true`.
fn chat_top_count(req: &ChatRequest) -> Result<u32, ApiError> {
    let n = req.top_logprobs.unwrap_or(0);
    if n > 0 && !req.logprobs {
        return Err(bad_param(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        ));
    }
    top_count("top_logprobs", n)
}

async fn chat(State(st): St, Json(req): Json<ChatRequest>) -> Result<Response, ApiError> {
    if req.return_routed_experts {
        return Err(routed::refuse_on_chat());
    }
    let top = chat_top_count(&req)?;
    let n = choices(&st, &req.sampling)?;
    let thinking = enable_thinking(&req);
    let text = st
        .renderer
        .render(&req.messages, req.tools.as_ref(), thinking)
        .map_err(|e| bad_param("messages", format!("rendering the chat template: {e:#}")))?;
    let prompt = st.codec.encode(&text).map_err(internal)?;
    check_prompt_len(&st, "messages", prompt.len())?;
    let max_tokens = match req.max_completion_tokens {
        Some(m) => (Some(m), "max_completion_tokens"),
        None => (req.max_tokens, "max_tokens"),
    };
    let params = sampling(&st, &req.sampling, max_tokens, prompt.len(), top)?;
    let id = request_id("chatcmpl");
    let model = req.model.clone().unwrap_or_else(|| st.model_name.clone());
    let permit = admit(&st, n as usize).await?;
    if req.sampling.stream {
        let rx = st
            .client
            .stream(GenerateRequest {
                prompt_ids: prompt.clone(),
                sampling: params.clone(),
            })
            .map_err(internal)?;
        let st2 = st.clone();
        let want_lp = req.logprobs;
        let chunk = move |delta: Value, lp: Option<Value>, finish: Option<FinishReason>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish.map(finish_name)}]})
            .to_string()
        };
        let mut started = false;
        let mut reasoning_sent = 0usize;
        let mut content_sent = 0usize;
        return Ok(sse(st.clone(), rx, params, permit, move |ev| {
            let mut out = Vec::new();
            if !started {
                started = true;
                out.push(chunk(
                    json!({"role": "assistant", "content": ""}),
                    None,
                    None,
                ));
            }
            match ev {
                Delta::Text {
                    ids,
                    logprobs,
                    top_logprobs,
                    full,
                    ..
                } => {
                    let (reasoning, content) = split_reasoning(&full, thinking);
                    let mut delta = serde_json::Map::new();
                    if let Some(r) = reasoning
                        && r.len() > reasoning_sent
                        && r.is_char_boundary(reasoning_sent)
                    {
                        delta.insert("reasoning_content".into(), json!(r[reasoning_sent..]));
                        reasoning_sent = r.len();
                    }
                    if content.len() > content_sent && content.is_char_boundary(content_sent) {
                        delta.insert("content".into(), json!(content[content_sent..]));
                        content_sent = content.len();
                    }
                    let lp = want_lp.then(|| chat_logprobs(&st2, &ids, &logprobs, &top_logprobs));
                    if !delta.is_empty() || lp.is_some() {
                        out.push(chunk(Value::Object(delta), lp, None));
                    }
                }
                Delta::Finish(f) => out.push(chunk(json!({}), None, Some(f))),
            }
            out
        }));
    }
    let reqs: Vec<GenerateRequest> = with_n(&params, n)
        .into_iter()
        .map(|sp| GenerateRequest {
            prompt_ids: prompt.clone(),
            sampling: sp,
        })
        .collect();
    let outs = run_all(&st, reqs).await?;
    drop(permit);
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (i, out) in outs.iter().enumerate() {
        let text = output_text(&st, out, &params)?;
        let (reasoning, content) = split_reasoning(&text, thinking);
        completion_tokens += out.output.token_ids.len();
        let mut message = json!({"role": "assistant", "content": content});
        if let Some(r) = reasoning {
            message["reasoning_content"] = json!(r);
        }
        let mut c = json!({"index": i, "message": message, "finish_reason": finish_name(out.output.finish),
                           "logprobs": req.logprobs.then(|| chat_logprobs(&st, &out.output.token_ids, &out.output.logprobs, &out.output.top_logprobs))});
        if req.return_token_ids {
            c["token_ids"] = json!(out.output.token_ids);
        }
        choices.push(c);
    }
    let mut body = json!({"id": id, "object": "chat.completion", "created": now(), "model": model, "choices": choices,
        "usage": {"prompt_tokens": prompt.len(), "completion_tokens": completion_tokens, "total_tokens": prompt.len() + completion_tokens}});
    if req.return_token_ids {
        body["prompt_token_ids"] = json!(prompt);
    }
    Ok(Json(body).into_response())
}

/// What a stream reports between events: new tokens (with the full visible text so far and its new part), or
/// the end.
enum Delta {
    Text {
        ids: Vec<u32>,
        logprobs: Vec<f32>,
        /// Per token of `ids`; empty lists when the request asked for no alternatives.
        top_logprobs: Vec<Vec<(u32, f32)>>,
        text: String,
        full: String,
    },
    Finish(FinishReason),
}

/// Server-sent events over a streamed request. Text is decoded from all tokens so far and only complete
/// characters are sent (a token may end inside a UTF-8 sequence); stop tokens and anything from a stop string
/// on are not shown. `to_json` turns each delta into the JSON text of its events. When the client disconnects,
/// hyper drops the stream, and with it `rx` (the engine then cancels the request) and the in-flight `permit`.
fn sse(
    st: Arc<ServeState>,
    rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    params: SamplingParams,
    permit: InFlightPermit,
    to_json: impl FnMut(Delta) -> Vec<String> + Send + 'static,
) -> Response {
    struct S {
        rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
        permit: Option<InFlightPermit>,
        ids: Vec<u32>,
        pending_ids: Vec<u32>,
        pending_lp: Vec<f32>,
        pending_top: Vec<Vec<(u32, f32)>>,
        sent: usize,
        done: bool,
        to_json: Box<dyn FnMut(Delta) -> Vec<String> + Send>,
    }
    let init = S {
        rx,
        permit: Some(permit),
        ids: vec![],
        pending_ids: vec![],
        pending_lp: vec![],
        pending_top: vec![],
        sent: 0,
        done: false,
        to_json: Box::new(to_json),
    };
    let stream = futures::stream::unfold(init, move |mut s| {
        let st = st.clone();
        let params = params.clone();
        async move {
            if s.done {
                return None;
            }
            let ev = s.rx.recv().await;
            let mut events: Vec<String> = Vec::new();
            let mut out_events = Vec::new();
            match ev {
                Some(StreamEvent::Token {
                    id,
                    logprob,
                    top_logprobs,
                }) => {
                    s.ids.push(id);
                    if !params.stop_token_ids.contains(&id) {
                        s.pending_ids.push(id);
                        s.pending_lp.push(logprob);
                        s.pending_top.push(top_logprobs);
                    }
                    let visible = visible_ids(&s.ids, FinishReason::Stop, &params);
                    let full = cut_at_stop(
                        st.codec.decode(visible).unwrap_or_default(),
                        &params.stop_strings,
                    );
                    let complete = full.trim_end_matches('\u{FFFD}');
                    if complete.len() > s.sent
                        || !s.pending_ids.is_empty() && !full.ends_with('\u{FFFD}')
                    {
                        let text = complete.get(s.sent..).unwrap_or("").to_string();
                        s.sent = complete.len();
                        events = (s.to_json)(Delta::Text {
                            ids: std::mem::take(&mut s.pending_ids),
                            logprobs: std::mem::take(&mut s.pending_lp),
                            top_logprobs: std::mem::take(&mut s.pending_top),
                            text,
                            full: complete.to_string(),
                        });
                    }
                }
                Some(StreamEvent::Done(Ok(out))) => {
                    // Whatever was held back (an incomplete character at the very end) goes out now.
                    let visible = visible_ids(&s.ids, out.output.finish, &params);
                    let full = cut_at_stop(
                        st.codec.decode(visible).unwrap_or_default(),
                        &params.stop_strings,
                    );
                    if full.len() > s.sent || !s.pending_ids.is_empty() {
                        let text = full.get(s.sent..).unwrap_or("").to_string();
                        s.sent = full.len();
                        events = (s.to_json)(Delta::Text {
                            ids: std::mem::take(&mut s.pending_ids),
                            logprobs: std::mem::take(&mut s.pending_lp),
                            top_logprobs: std::mem::take(&mut s.pending_top),
                            text,
                            full,
                        });
                    }
                    events.extend((s.to_json)(Delta::Finish(out.output.finish)));
                    s.done = true;
                }
                Some(StreamEvent::Done(Err(e))) => {
                    events = vec![
                        json!({"error": {"message": e, "type": "server_error", "param": null, "code": 500}})
                            .to_string(),
                    ];
                    s.done = true;
                }
                None => s.done = true,
            }
            for e in events {
                out_events.push(Ok::<Event, Infallible>(Event::default().data(e)));
            }
            if s.done {
                out_events.push(Ok(Event::default().data("[DONE]")));
                s.permit = None;
            }
            Some((futures::stream::iter(out_events), s))
        }
    });
    use futures::StreamExt;
    Sse::new(stream.flatten()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_split_follows_the_qwen3_parser() {
        assert_eq!(
            split_reasoning("<think>\nhmm\n</think>\n\nHello", true),
            (Some("hmm".into()), "Hello".into())
        );
        assert_eq!(
            split_reasoning("<think>\n\n</think>\n\nHi", false),
            (Some(String::new()), "Hi".into())
        );
        assert_eq!(
            split_reasoning("<think>still thinking", true),
            (Some("still thinking".into()), String::new())
        );
        assert_eq!(split_reasoning("plain", true), (None, "plain".into()));
        assert_eq!(cut_at_stop("abc STOP def".into(), &["STOP".into()]), "abc ");
    }
}
