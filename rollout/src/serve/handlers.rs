//! HTTP handlers of `spar serve`.
use super::ServeState;
use super::api::{ChatRequest, CompletionRequest, Prompt, SamplingFields};
use crate::engine::{EngineOutput, StreamEvent};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use spar_core::traits::{FinishReason, GenerateRequest, SamplingParams};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type St = State<Arc<ServeState>>;

pub(crate) fn router(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// An OpenAI-style error response.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.0 == StatusCode::UNAUTHORIZED {
            "authentication_error"
        } else if self.0.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        (
            self.0,
            Json(json!({"error": {"message": self.1, "type": kind, "param": null, "code": self.0.as_u16()}})),
        )
            .into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

fn authorize(st: &ServeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: the token must not leak through response timing.
    let ok = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ))
    }
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

async fn models(State(st): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    Ok(Json(
        json!({"object": "list", "data": [{"id": st.model_name, "object": "model", "created": 0, "owned_by": "spar", "max_model_len": st.max_seq_len}]}),
    ))
}

/// The engine's sampling parameters for one request.
fn sampling(
    st: &ServeState,
    f: &SamplingFields,
    max_tokens: Option<u32>,
    prompt_len: usize,
) -> Result<SamplingParams, ApiError> {
    let temperature = f.temperature.unwrap_or(1.0);
    if !(0.0..=100.0).contains(&temperature) {
        return Err(bad("temperature must be in [0, 100]"));
    }
    let top_p = f.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("top_p must be in (0, 1]"));
    }
    let min_p = f.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(bad("min_p must be in [0, 1]"));
    }
    if prompt_len >= st.max_seq_len {
        return Err(bad(format!(
            "the prompt has {prompt_len} tokens; this server's context is {} tokens",
            st.max_seq_len
        )));
    }
    let room = (st.max_seq_len - prompt_len) as u32;
    let max_new = max_tokens.unwrap_or(st.default_max_tokens.min(room));
    if max_new == 0 || max_new > room {
        return Err(bad(format!(
            "max_tokens {max_new} must be in 1..={room} for a prompt of {prompt_len} tokens (context {})",
            st.max_seq_len
        )));
    }
    let mut stop_token_ids = f.stop_token_ids.clone();
    if !f.ignore_eos {
        stop_token_ids.extend(st.eos.iter().copied());
    }
    if let Some(bad_id) = stop_token_ids.iter().find(|&&t| t as usize >= st.vocab) {
        return Err(bad(format!(
            "stop_token_ids holds {bad_id}, outside the vocabulary ({})",
            st.vocab
        )));
    }
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k: f.top_k.filter(|&k| k > 0).map(|k| k as u32).unwrap_or(0),
        min_p,
        max_new_tokens: max_new,
        seed: f.seed,
        stop_token_ids,
        stop_strings: f.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
    })
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

fn token_strings(st: &ServeState, ids: &[u32], as_ids: bool) -> Vec<String> {
    ids.iter()
        .map(|&t| {
            if as_ids {
                format!("token_id:{t}")
            } else {
                st.codec.decode(&[t]).unwrap_or_default()
            }
        })
        .collect()
}

async fn run_all(
    st: &ServeState,
    reqs: Vec<GenerateRequest>,
) -> Result<Vec<EngineOutput>, ApiError> {
    let outs = futures::future::join_all(reqs.into_iter().map(|r| st.client.generate_one(r))).await;
    outs.into_iter().map(|o| o.map_err(internal)).collect()
}

fn with_n(params: &SamplingParams, n: u32) -> Vec<SamplingParams> {
    (0..n.max(1))
        .map(|i| {
            let mut p = params.clone();
            p.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            p
        })
        .collect()
}

async fn completions(
    State(st): St,
    headers: HeaderMap,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    if req.echo {
        return Err(bad("echo is not supported"));
    }
    // `logprobs: N` returns each sampled token's log-prob; alternatives (`top_logprobs`) are not computed.
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
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty prompt"));
    }
    if let Some(t) = prompts.iter().flatten().find(|&&t| t as usize >= st.vocab) {
        return Err(bad(format!(
            "prompt token id {t} is outside the vocabulary ({})",
            st.vocab
        )));
    }
    let n = req.sampling.n.unwrap_or(1);
    let mut reqs = Vec::new();
    let mut params_of = Vec::new();
    for p in &prompts {
        let params = sampling(&st, &req.sampling, req.max_tokens, p.len())?;
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
    if req.sampling.stream {
        if reqs.len() != 1 {
            return Err(bad("streaming supports one prompt and n = 1"));
        }
        let params = params_of.remove(0);
        let rx = st.client.stream(reqs.remove(0)).map_err(internal)?;
        let st2 = st.clone();
        let make = move |delta_ids: &[u32],
                         delta: String,
                         lps: &[f32],
                         finish: Option<FinishReason>| {
            let logprobs = want_lp.then(|| json!({"tokens": token_strings(&st2, delta_ids, req.return_tokens_as_token_ids), "token_logprobs": lps, "top_logprobs": null, "text_offset": []}));
            json!({"id": id, "object": "text_completion", "created": now(), "model": model,
                   "choices": [{"index": 0, "text": delta, "logprobs": logprobs, "finish_reason": finish.map(finish_name), "token_ids": req.return_token_ids.then_some(delta_ids)}]})
        };
        return Ok(sse(st.clone(), rx, params, move |ev| match ev {
            Delta::Text {
                ids,
                text,
                logprobs,
                ..
            } => vec![make(&ids, text, &logprobs, None)],
            Delta::Finish(f) => vec![make(&[], String::new(), &[], Some(f))],
        }));
    }
    let outs = run_all(&st, reqs).await?;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0usize, 0usize);
    for (i, (out, params)) in outs.iter().zip(&params_of).enumerate() {
        let mut params = params.clone();
        if req.sampling.include_stop_str_in_output {
            params.stop_strings.clear();
        }
        let text = output_text(&st, out, &params)?;
        let ids = &out.output.token_ids;
        prompt_tokens += prompts[i / n.max(1) as usize].len();
        completion_tokens += ids.len();
        let logprobs = want_lp.then(|| json!({"tokens": token_strings(&st, ids, req.return_tokens_as_token_ids), "token_logprobs": out.output.logprobs, "top_logprobs": null, "text_offset": []}));
        let mut c = json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish_name(out.output.finish)});
        if req.return_token_ids {
            c["token_ids"] = json!(ids);
            c["prompt_token_ids"] = json!(prompts[i / n.max(1) as usize]);
        }
        choices.push(c);
    }
    Ok(Json(json!({"id": id, "object": "text_completion", "created": now(), "model": model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}}))
    .into_response())
}

fn enable_thinking(req: &ChatRequest) -> bool {
    req.chat_template_kwargs
        .as_ref()
        .and_then(|k| k.get("enable_thinking"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}

fn chat_logprobs(st: &ServeState, ids: &[u32], lps: &[f32]) -> Value {
    let content: Vec<Value> = ids
        .iter()
        .zip(lps)
        .map(|(&t, &lp)| {
            let s = st.codec.decode(&[t]).unwrap_or_default();
            json!({"token": s, "logprob": lp, "bytes": s.as_bytes(), "top_logprobs": []})
        })
        .collect();
    json!({"content": content})
}

async fn chat(
    State(st): St,
    headers: HeaderMap,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    let thinking = enable_thinking(&req);
    let text = st
        .renderer
        .render(&req.messages, req.tools.as_ref(), thinking)
        .map_err(|e| bad(format!("rendering the chat template: {e:#}")))?;
    let prompt = st.codec.encode(&text).map_err(internal)?;
    let params = sampling(
        &st,
        &req.sampling,
        req.max_completion_tokens.or(req.max_tokens),
        prompt.len(),
    )?;
    let id = request_id("chatcmpl");
    let model = req.model.clone().unwrap_or_else(|| st.model_name.clone());
    let n = req.sampling.n.unwrap_or(1);
    if req.sampling.stream {
        if n != 1 {
            return Err(bad("streaming supports n = 1"));
        }
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
        };
        let mut started = false;
        let mut reasoning_sent = 0usize;
        let mut content_sent = 0usize;
        return Ok(sse(st.clone(), rx, params, move |ev| {
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
                    let lp = want_lp.then(|| chat_logprobs(&st2, &ids, &logprobs));
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
                           "logprobs": req.logprobs.then(|| chat_logprobs(&st, &out.output.token_ids, &out.output.logprobs))});
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
        text: String,
        full: String,
    },
    Finish(FinishReason),
}

/// Server-sent events over a streamed request. Text is decoded from all tokens so far and only complete
/// characters are sent (a token may end inside a UTF-8 sequence); stop tokens and anything from a stop string
/// on are not shown.
fn sse(
    st: Arc<ServeState>,
    rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    params: SamplingParams,
    to_json: impl FnMut(Delta) -> Vec<Value> + Send + 'static,
) -> Response {
    struct S {
        rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
        ids: Vec<u32>,
        pending_ids: Vec<u32>,
        pending_lp: Vec<f32>,
        sent: usize,
        done: bool,
        to_json: Box<dyn FnMut(Delta) -> Vec<Value> + Send>,
    }
    let init = S {
        rx,
        ids: vec![],
        pending_ids: vec![],
        pending_lp: vec![],
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
            let mut events: Vec<Value> = Vec::new();
            let mut out_events = Vec::new();
            match ev {
                Some(StreamEvent::Token { id, logprob }) => {
                    s.ids.push(id);
                    if !params.stop_token_ids.contains(&id) {
                        s.pending_ids.push(id);
                        s.pending_lp.push(logprob);
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
                            text,
                            full,
                        });
                    }
                    events.extend((s.to_json)(Delta::Finish(out.output.finish)));
                    s.done = true;
                }
                Some(StreamEvent::Done(Err(e))) => {
                    events = vec![json!({"error": {"message": e, "type": "server_error"}})];
                    s.done = true;
                }
                None => s.done = true,
            }
            for e in events {
                out_events.push(Ok::<Event, Infallible>(
                    Event::default().data(e.to_string()),
                ));
            }
            if s.done {
                out_events.push(Ok(Event::default().data("[DONE]")));
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
