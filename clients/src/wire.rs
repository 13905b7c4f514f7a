//! Request and response bodies of the OpenAI-compatible endpoints spar talks to, and how replies are read.
//!
//! Requests leave out `model`: the client fills it from its endpoint. Responses are read leniently where servers
//! differ (vLLM, SGLang, OpenAI) and strictly where spar depends on a field (token ids, log-probs).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use spar_core::traits::{FinishReason, SamplingParams};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system" | "user" | "assistant".
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// `response_format` of a chat completion.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    /// Any JSON object (OpenAI "JSON mode"; vLLM and SGLang support it through guided decoding).
    JsonObject,
    /// JSON that follows `json_schema.schema`.
    JsonSchema {
        json_schema: JsonSchemaFormat,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub schema: Value,
    pub strict: bool,
}

/// A `/chat/completions` request (`model` is the endpoint's).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Return the log-prob of each sampled token (`ChatResponse::logprobs`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// Passed to the server's chat template (vLLM / SGLang), e.g. `{"enable_thinking": false}` for Qwen3.
    /// OpenAI's own API rejects the field: leave it `None` there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            messages,
            ..Default::default()
        }
    }

    /// Sets Qwen3's `enable_thinking` template switch.
    pub fn enable_thinking(mut self, on: bool) -> Self {
        self.chat_template_kwargs
            .get_or_insert_with(Map::new)
            .insert("enable_thinking".into(), Value::Bool(on));
        self
    }
}

/// Token usage the server reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// A sampled token and its log-prob, as a chat completion reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
}

/// The first choice of a chat completion.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    /// The answer, without any thinking.
    pub content: String,
    /// The thinking: `message.reasoning_content` (vLLM / SGLang "qwen3" reasoning parser), `message.reasoning`
    /// (newer vLLM), or, for a server without a reasoning parser, the `<think>...</think>` block cut out of
    /// `content`.
    pub reasoning_content: Option<String>,
    pub finish_reason: Option<String>,
    /// Empty unless the request asked for log-probs.
    pub logprobs: Vec<TokenLogprob>,
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct RawChat {
    choices: Vec<RawChatChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct RawChatChoice {
    message: RawMessage,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<RawChatLogprobs>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct RawChatLogprobs {
    #[serde(default)]
    content: Option<Vec<TokenLogprob>>,
}

/// Splits `<think>...</think>` off a reply when the server returned it inside `content`. Qwen3 templates that
/// open the think block in the prompt make the reply start inside it, so a lone `</think>` counts too.
fn split_think(content: &str) -> (Option<String>, String) {
    match content.find("</think>") {
        Some(end) => {
            let think = content[..end].trim_start();
            let think = think.strip_prefix("<think>").unwrap_or(think);
            (
                Some(think.trim().to_string()),
                content[end + "</think>".len()..].trim_start().to_string(),
            )
        }
        None => (None, content.to_string()),
    }
}

/// Reads a chat completion body.
pub(crate) fn parse_chat(body: &[u8]) -> Result<ChatResponse, String> {
    let raw: RawChat =
        serde_json::from_slice(body).map_err(|e| format!("chat completion body: {e}"))?;
    let choice = raw
        .choices
        .into_iter()
        .next()
        .ok_or("chat completion has no choices")?;
    let content = choice.message.content.unwrap_or_default();
    let parsed_reasoning = choice
        .message
        .reasoning_content
        .or(choice.message.reasoning);
    let (reasoning_content, content) = match parsed_reasoning {
        Some(r) => (Some(r), content),
        None => split_think(&content),
    };
    let logprobs = choice.logprobs.and_then(|l| l.content).unwrap_or_default();
    Ok(ChatResponse {
        content,
        reasoning_content,
        finish_reason: choice.finish_reason,
        logprobs,
        usage: raw.usage,
    })
}

/// A token-in / token-out `/completions` request.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    /// Ask for the sampled tokens' log-probs (and, when `sampling.top_logprobs` > 0, the most likely tokens').
    pub logprobs: bool,
    /// Ask for the MoE expert choices of every token (SGLang's `return_routed_experts`; the server must run with
    /// `--enable-return-routed-experts`).
    pub return_routed_experts: bool,
}

/// The first choice of a token-in / token-out completion.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionResponse {
    pub token_ids: Vec<u32>,
    /// One per token of `token_ids` when the request asked for log-probs.
    pub logprobs: Option<Vec<f32>>,
    /// Per token of `token_ids`, the `sampling.top_logprobs` most likely (token id, log-prob), most likely
    /// first, when the request asked for log-probs and alternatives; else empty.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub text: String,
    pub finish: FinishReason,
    pub usage: Option<Usage>,
    /// The expert choices as the server returned them, when it returned any (see [`RoutedPayload`]).
    pub routed_experts: Option<RoutedPayload>,
}

/// A completion's MoE expert choices, undecoded: their shape depends on the model (`spar_core::routed_wire`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutedPayload {
    /// SGLang's `sglext.routed_experts` (what `spar serve` writes too): base64 of int32 ids, `[prompt + generated
    /// - 1 tokens, layers, top_k]`.
    Sglang(String),
    /// vLLM's `choices[0].routed_experts`: base64 of a NumPy `.npy` file, which spar does not read.
    VllmNpy,
}

/// The JSON body of a token-in `/completions` request. vLLM extensions ask for the generated token ids
/// (`return_token_ids`, vLLM >= 0.10.2; `return_tokens_as_token_ids`, older vLLM) and keep special tokens, stop
/// strings and sampling knobs the OpenAI schema lacks; the knobs at their "off" value are left out so that a
/// stricter server is not handed fields it does not know.
pub(crate) fn completion_body(model: &str, req: &CompletionRequest) -> Value {
    let s = &req.sampling;
    let mut b = Map::new();
    b.insert("model".into(), model.into());
    b.insert("prompt".into(), req.prompt_ids.clone().into());
    b.insert("max_tokens".into(), s.max_new_tokens.into());
    b.insert("temperature".into(), s.temperature.into());
    b.insert("top_p".into(), s.top_p.into());
    if s.top_k > 0 {
        b.insert("top_k".into(), s.top_k.into());
    }
    if s.min_p > 0.0 {
        b.insert("min_p".into(), s.min_p.into());
    }
    if let Some(seed) = s.seed {
        b.insert("seed".into(), seed.into());
    }
    if !s.stop_token_ids.is_empty() {
        b.insert("stop_token_ids".into(), s.stop_token_ids.clone().into());
    }
    if !s.stop_strings.is_empty() {
        b.insert("stop".into(), s.stop_strings.clone().into());
        // The stop string's tokens were sampled; training must see them.
        b.insert("include_stop_str_in_output".into(), true.into());
    }
    if req.logprobs {
        // At least 1, not 0: some servers only return log-probs for a positive count.
        b.insert("logprobs".into(), s.top_logprobs.max(1).into());
    }
    b.insert("return_token_ids".into(), true.into());
    b.insert("return_tokens_as_token_ids".into(), true.into());
    b.insert("skip_special_tokens".into(), false.into());
    if req.return_routed_experts {
        b.insert("return_routed_experts".into(), true.into());
    }
    Value::Object(b)
}

#[derive(Deserialize)]
struct RawCompletion {
    choices: Vec<RawCompletionChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    /// SGLang's extensions of the OpenAI response, at the response level (its expert choices are the first
    /// choice's: spar sends one prompt and n = 1).
    #[serde(default)]
    sglext: Option<RawSglExt>,
}

#[derive(Deserialize)]
struct RawSglExt {
    #[serde(default)]
    routed_experts: Option<String>,
}

#[derive(Deserialize)]
struct RawCompletionChoice {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    token_ids: Option<Vec<u32>>,
    #[serde(default)]
    logprobs: Option<RawCompletionLogprobs>,
    /// vLLM's per-choice expert choices (`.npy` bytes in base64).
    #[serde(default)]
    routed_experts: Option<Value>,
}

/// `choices[0].logprobs.top_logprobs`: per token an object from token to log-prob (null where a server has
/// none for that token).
type RawTopLogprobs = Vec<Option<std::collections::HashMap<String, Option<f32>>>>;

#[derive(Deserialize)]
struct RawCompletionLogprobs {
    #[serde(default)]
    tokens: Option<Vec<String>>,
    #[serde(default)]
    token_logprobs: Option<Vec<Option<f32>>>,
    /// Per token, `{"token_id:<id>": logprob}` (the request sets `return_tokens_as_token_ids`).
    #[serde(default)]
    top_logprobs: Option<RawTopLogprobs>,
}

/// Reads a token-in / token-out completion body. Token ids come from `choices[0].token_ids` or, failing that,
/// from `choices[0].logprobs.tokens` written as `token_id:<id>`; anything else is an error, since decoding
/// text back to ids would not give the sampled tokens. `want_top` > 0 reads that many alternatives per token
/// from `choices[0].logprobs.top_logprobs` (keys `token_id:<id>`).
pub(crate) fn parse_completion(
    body: &[u8],
    want_logprobs: bool,
    want_top: u32,
) -> Result<CompletionResponse, String> {
    let raw: RawCompletion =
        serde_json::from_slice(body).map_err(|e| format!("completion body: {e}"))?;
    let routed_experts = match raw.sglext.and_then(|x| x.routed_experts) {
        Some(b64) => Some(RoutedPayload::Sglang(b64)),
        None => raw
            .choices
            .first()
            .and_then(|c| c.routed_experts.as_ref())
            .filter(|v| !v.is_null())
            .map(|_| RoutedPayload::VllmNpy),
    };
    let choice = raw
        .choices
        .into_iter()
        .next()
        .ok_or("completion has no choices")?;
    let (tokens, token_logprobs, top) = match choice.logprobs {
        Some(l) => (l.tokens, l.token_logprobs, l.top_logprobs),
        None => (None, None, None),
    };
    let token_ids = match (choice.token_ids, tokens) {
        (Some(ids), _) => ids,
        (None, Some(tokens)) => tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.strip_prefix("token_id:")
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| format!("choices[0].logprobs.tokens[{i}] is not `token_id:<id>`: serve with return_tokens_as_token_ids"))
            })
            .collect::<Result<_, _>>()?,
        (None, None) => {
            return Err("the server returned no token ids (neither choices[0].token_ids nor choices[0].logprobs.tokens); \
                        use vLLM (return_token_ids / return_tokens_as_token_ids) or `spar serve`"
                .into());
        }
    };
    let logprobs = if want_logprobs {
        let lp = token_logprobs.ok_or(
            "the request asked for log-probs and choices[0].logprobs.token_logprobs is missing",
        )?;
        if lp.len() != token_ids.len() {
            return Err(format!(
                "{} log-probs for {} generated tokens",
                lp.len(),
                token_ids.len()
            ));
        }
        let lp = lp
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| format!("choices[0].logprobs.token_logprobs[{i}] is null"))
            })
            .collect::<Result<Vec<f32>, _>>()?;
        Some(lp)
    } else {
        None
    };
    let top_logprobs = if want_logprobs && want_top > 0 {
        parse_top_logprobs(top, token_ids.len(), want_top as usize)?
    } else {
        Vec::new()
    };
    let finish = match choice.finish_reason.as_deref() {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        other => {
            return Err(format!(
                "finish_reason {other:?} is neither \"stop\" nor \"length\""
            ));
        }
    };
    Ok(CompletionResponse {
        token_ids,
        logprobs,
        top_logprobs,
        text: choice.text.unwrap_or_default(),
        finish,
        usage: raw.usage,
        routed_experts,
    })
}

/// The `k` most likely alternatives of each of `n` tokens, ranked here: vLLM's objects also hold the sampled
/// token, so they may have k + 1 entries, and JSON object order is not a ranking every server keeps.
fn parse_top_logprobs(
    raw: Option<RawTopLogprobs>,
    n: usize,
    k: usize,
) -> Result<Vec<Vec<(u32, f32)>>, String> {
    let raw = raw.ok_or(
        "the request asked for top log-probs and choices[0].logprobs.top_logprobs is missing",
    )?;
    if raw.len() != n {
        return Err(format!(
            "{} top log-prob entries for {n} generated tokens",
            raw.len()
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let m = m.ok_or_else(|| format!("choices[0].logprobs.top_logprobs[{i}] is null"))?;
            let mut alts = m
                .into_iter()
                .map(|(key, lp)| {
                    let id = key
                        .strip_prefix("token_id:")
                        .and_then(|n| n.parse::<u32>().ok())
                        .ok_or_else(|| format!("choices[0].logprobs.top_logprobs[{i}] has key {key:?}, not `token_id:<id>`: serve with return_tokens_as_token_ids"))?;
                    // JSON has no -inf: a null (or vLLM's -9999) log-prob is a token ruled out.
                    Ok((id, lp.unwrap_or(f32::NEG_INFINITY)))
                })
                .collect::<Result<Vec<(u32, f32)>, String>>()?;
            alts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            alts.truncate(k);
            Ok(alts)
        })
        .collect()
}

#[derive(Deserialize)]
struct RawEmbeddings {
    data: Vec<RawEmbedding>,
}

#[derive(Deserialize)]
struct RawEmbedding {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

/// Reads an `/embeddings` body into vectors in input order (`data[].index` when given, else list order).
pub(crate) fn parse_embeddings(body: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let raw: RawEmbeddings =
        serde_json::from_slice(body).map_err(|e| format!("embeddings body: {e}"))?;
    if raw.data.len() != expected {
        return Err(format!(
            "{} embeddings for {expected} inputs",
            raw.data.len()
        ));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (pos, e) in raw.data.into_iter().enumerate() {
        let i = e.index.unwrap_or(pos);
        let slot = out
            .get_mut(i)
            .ok_or_else(|| format!("data[{pos}].index {i} is out of range"))?;
        if slot.replace(e.embedding).is_some() {
            return Err(format!("data[{pos}].index {i} appears twice"));
        }
    }
    Ok(out
        .into_iter()
        .map(|v| v.expect("every index filled: counts match and none repeats"))
        .collect())
}

#[derive(Deserialize)]
struct RawModels {
    data: Vec<RawModel>,
}

#[derive(Deserialize)]
struct RawModel {
    id: String,
}

pub(crate) fn parse_models(body: &[u8]) -> Result<Vec<String>, String> {
    let raw: RawModels = serde_json::from_slice(body).map_err(|e| format!("models body: {e}"))?;
    Ok(raw.data.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_content_and_think_blocks() {
        let r = parse_chat(br#"{"choices":[{"message":{"content":"ok","reasoning_content":"hmm"},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(
            (r.content.as_str(), r.reasoning_content.as_deref()),
            ("ok", Some("hmm"))
        );
        let r =
            parse_chat(br#"{"choices":[{"message":{"content":"ok","reasoning":"hmm"}}]}"#).unwrap();
        assert_eq!(r.reasoning_content.as_deref(), Some("hmm"));
        let r =
            parse_chat(br#"{"choices":[{"message":{"content":"<think>\nhmm\n</think>\n\nok"}}]}"#)
                .unwrap();
        assert_eq!(
            (r.content.as_str(), r.reasoning_content.as_deref()),
            ("ok", Some("hmm"))
        );
        let r = parse_chat(br#"{"choices":[{"message":{"content":"hmm</think>ok"}}]}"#).unwrap();
        assert_eq!(
            (r.content.as_str(), r.reasoning_content.as_deref()),
            ("ok", Some("hmm"))
        );
        let r = parse_chat(br#"{"choices":[{"message":{"content":null}}]}"#).unwrap();
        assert_eq!((r.content.as_str(), r.reasoning_content), ("", None));
        assert!(parse_chat(br#"{"choices":[]}"#).is_err());
    }

    #[test]
    fn completion_token_ids_both_styles() {
        let a = parse_completion(br#"{"choices":[{"text":"x","token_ids":[5,6],"finish_reason":"length","logprobs":{"token_logprobs":[-0.5,-1.0]}}]}"#, true, 0).unwrap();
        assert_eq!(a.token_ids, vec![5, 6]);
        assert_eq!(a.logprobs, Some(vec![-0.5, -1.0]));
        assert_eq!(a.finish, FinishReason::Length);
        let b = parse_completion(br#"{"choices":[{"finish_reason":"stop","logprobs":{"tokens":["token_id:7","token_id:151645"],"token_logprobs":[-0.1,-0.2]}}]}"#, true, 0).unwrap();
        assert_eq!(b.token_ids, vec![7, 151645]);
        assert_eq!(b.finish, FinishReason::Stop);
        assert!(b.top_logprobs.is_empty());
    }

    #[test]
    fn completion_top_logprobs_ranked_by_id_key() {
        // vLLM adds the sampled token to the top-k object: 2 asked, 3 given for the first token.
        let body = br#"{"choices":[{"token_ids":[5,6],"finish_reason":"length","logprobs":{"token_logprobs":[-2.0,-0.1],
            "top_logprobs":[{"token_id:9":-0.5,"token_id:5":-2.0,"token_id:8":-1.0},{"token_id:6":-0.1,"token_id:1":-3.0}]}}]}"#;
        let r = parse_completion(body, true, 2).unwrap();
        assert_eq!(
            r.top_logprobs,
            vec![vec![(9, -0.5), (8, -1.0)], vec![(6, -0.1), (1, -3.0)]]
        );
        assert!(
            parse_completion(body, true, 0)
                .unwrap()
                .top_logprobs
                .is_empty()
        );
        let text_keys = br#"{"choices":[{"token_ids":[5],"finish_reason":"length","logprobs":{"token_logprobs":[-2.0],"top_logprobs":[{"a":-0.5}]}}]}"#;
        assert!(
            parse_completion(text_keys, true, 1)
                .unwrap_err()
                .contains("token_id:")
        );
        let missing = br#"{"choices":[{"token_ids":[5],"finish_reason":"length","logprobs":{"token_logprobs":[-2.0]}}]}"#;
        assert!(
            parse_completion(missing, true, 1)
                .unwrap_err()
                .contains("top_logprobs")
        );
        let s = SamplingParams {
            top_logprobs: 4,
            ..Default::default()
        };
        let req = CompletionRequest {
            prompt_ids: vec![1],
            sampling: s,
            logprobs: true,
            return_routed_experts: false,
        };
        assert_eq!(completion_body("m", &req)["logprobs"], 4);
    }

    #[test]
    fn completion_rejects_what_cannot_be_trained_on() {
        let no_ids = br#"{"choices":[{"text":"x","finish_reason":"stop"}]}"#;
        assert!(
            parse_completion(no_ids, false, 0)
                .unwrap_err()
                .contains("no token ids")
        );
        let short = br#"{"choices":[{"token_ids":[1,2],"finish_reason":"stop","logprobs":{"token_logprobs":[-0.5]}}]}"#;
        assert!(
            parse_completion(short, true, 0)
                .unwrap_err()
                .contains("1 log-probs for 2")
        );
        let null_lp = br#"{"choices":[{"token_ids":[1],"finish_reason":"stop","logprobs":{"token_logprobs":[null]}}]}"#;
        assert!(
            parse_completion(null_lp, true, 0)
                .unwrap_err()
                .contains("null")
        );
        let text_token =
            br#"{"choices":[{"finish_reason":"stop","logprobs":{"tokens":["hello"]}}]}"#;
        assert!(
            parse_completion(text_token, false, 0)
                .unwrap_err()
                .contains("token_id:")
        );
        let abort = br#"{"choices":[{"token_ids":[1],"finish_reason":"abort"}]}"#;
        assert!(
            parse_completion(abort, false, 0)
                .unwrap_err()
                .contains("abort")
        );
    }

    #[test]
    fn completion_reads_the_routing_where_servers_put_it() {
        let sglang = br#"{"choices":[{"token_ids":[5],"finish_reason":"length"}],"sglext":{"routed_experts":"AAAAAA=="}}"#;
        assert_eq!(
            parse_completion(sglang, false, 0).unwrap().routed_experts,
            Some(RoutedPayload::Sglang("AAAAAA==".into()))
        );
        let vllm = br#"{"choices":[{"token_ids":[5],"finish_reason":"length","routed_experts":"k05VTVBZ"}]}"#;
        assert_eq!(
            parse_completion(vllm, false, 0).unwrap().routed_experts,
            Some(RoutedPayload::VllmNpy)
        );
        let none =
            br#"{"choices":[{"token_ids":[5],"finish_reason":"length","routed_experts":null}]}"#;
        assert_eq!(
            parse_completion(none, false, 0).unwrap().routed_experts,
            None
        );
        let req = CompletionRequest {
            prompt_ids: vec![1],
            sampling: SamplingParams::default(),
            logprobs: true,
            return_routed_experts: true,
        };
        assert_eq!(completion_body("m", &req)["return_routed_experts"], true);
    }

    #[test]
    fn completion_body_leaves_off_knobs_that_are_off() {
        let req = CompletionRequest {
            prompt_ids: vec![1, 2],
            sampling: SamplingParams::default(),
            logprobs: true,
            return_routed_experts: false,
        };
        let b = completion_body("m", &req);
        assert_eq!(b["prompt"], serde_json::json!([1, 2]));
        assert!(b.get("top_k").is_none() && b.get("min_p").is_none() && b.get("stop").is_none());
        assert_eq!(b["logprobs"], 1);
        let mut s = SamplingParams {
            top_k: 20,
            stop_strings: vec!["</x>".into()],
            ..Default::default()
        };
        s.seed = Some(3);
        let b = completion_body(
            "m",
            &CompletionRequest {
                prompt_ids: vec![],
                sampling: s,
                logprobs: false,
                return_routed_experts: false,
            },
        );
        assert_eq!(
            (b["top_k"].as_u64(), b["seed"].as_u64()),
            (Some(20), Some(3))
        );
        assert_eq!(b["include_stop_str_in_output"], true);
        assert!(b.get("logprobs").is_none());
    }

    #[test]
    fn embeddings_follow_index() {
        let v = parse_embeddings(
            br#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#,
            2,
        )
        .unwrap();
        assert_eq!(v, vec![vec![1.0], vec![2.0]]);
        assert!(
            parse_embeddings(
                br#"{"data":[{"index":0,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#,
                2
            )
            .is_err()
        );
        assert!(parse_embeddings(br#"{"data":[]}"#, 1).is_err());
    }
}
