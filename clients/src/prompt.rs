//! What the LLM-backed traits share: generation options, transcripts as JSON data (fenced by [`crate::fence`]),
//! and strict JSON replies with a bounded re-ask.
use crate::client::OpenAiClient;
use crate::wire::{ChatMessage, ChatRequest, ResponseFormat};
use serde_json::Value;
use spar_core::sample::{Role, Turn};
use spar_core::{Error, Result};

/// Generation knobs of an LLM-backed trait implementation.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmOptions {
    pub temperature: f32,
    pub max_tokens: u32,
    /// Base seed; a re-ask after an unparseable reply uses `seed + k`, else a greedy server repeats itself.
    pub seed: Option<u64>,
    /// Qwen3's `enable_thinking`, sent as `chat_template_kwargs` (vLLM / SGLang). `None` sends nothing: use it
    /// for servers that reject the field, such as OpenAI's own API.
    pub enable_thinking: Option<bool>,
    /// Ask for a JSON object (`response_format: {"type": "json_object"}`) where the reply is JSON.
    pub json_mode: bool,
    /// Extra asks after a reply that does not parse (each ask has the client's own transport retries).
    pub parse_retries: u32,
}

impl Default for LlmOptions {
    /// Deterministic grading: greedy, seeded, no thinking, JSON mode, two re-asks.
    fn default() -> Self {
        LlmOptions {
            temperature: 0.0,
            max_tokens: 512,
            seed: Some(0),
            enable_thinking: Some(false),
            json_mode: true,
            parse_retries: 2,
        }
    }
}

impl LlmOptions {
    pub(crate) fn request(&self, messages: Vec<ChatMessage>, json: bool, ask: u32) -> ChatRequest {
        let mut req = ChatRequest::new(messages);
        req.temperature = Some(self.temperature);
        req.max_tokens = Some(self.max_tokens);
        req.seed = self.seed.map(|s| s.wrapping_add(ask as u64));
        if json && self.json_mode {
            req.response_format = Some(ResponseFormat::JsonObject);
        }
        if let Some(on) = self.enable_thinking {
            req = req.enable_thinking(on);
        }
        req
    }
}

/// Who speaks a turn, in the words the prompts use. User turns are the patient (or, after inquiry, the
/// clinic's stage instruction); assistant turns are the doctor.
pub(crate) fn speaker(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "patient",
        Role::Assistant => "doctor",
    }
}

/// A dialogue as JSON data, `<think>` blocks removed (thinking is neither judged nor fact-checked).
pub(crate) fn transcript(turns: &[Turn]) -> Value {
    turns
        .iter()
        .map(|t| serde_json::json!({"speaker": speaker(t.role), "text": spar_core::grammar::strip_think(&t.text).trim()}))
        .collect()
}

/// The JSON text of a reply: trimmed, and unwrapped from one Markdown code fence if the model added one.
/// Nothing else is forgiven: prose around the JSON is a parse failure.
pub fn json_payload(content: &str) -> &str {
    let t = content.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        if let Some(inner) = rest.strip_suffix("```") {
            return inner.trim();
        }
    }
    t
}

/// Asks until the reply parses, at most `1 + parse_retries` times; transport failures are not re-asked here
/// (the client already retried them).
pub(crate) async fn ask_parsed<T>(
    client: &OpenAiClient,
    service: &str,
    opts: &LlmOptions,
    messages: &[ChatMessage],
    json: bool,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T> {
    let asks = opts.parse_retries + 1;
    let mut why = String::new();
    for ask in 0..asks {
        let resp = client
            .chat(&opts.request(messages.to_vec(), json, ask))
            .await?;
        match parse(&resp.content) {
            Ok(v) => return Ok(v),
            Err(e) => {
                why = if resp.finish_reason.as_deref() == Some("length") {
                    format!("{e} (the reply hit max_tokens = {})", opts.max_tokens)
                } else {
                    e
                };
                tracing::debug!(service, ask = ask + 1, "unparseable reply: {why}");
            }
        }
    }
    Err(Error::external(
        service,
        format!("no parseable reply in {asks} asks: {why}"),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payload_unwraps_one_fence_only() {
        assert_eq!(json_payload(" {\"a\":1} "), "{\"a\":1}");
        assert_eq!(json_payload("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(json_payload("```\n[1]\n```"), "[1]");
        assert_eq!(json_payload("Sure! {\"a\":1}"), "Sure! {\"a\":1}");
    }

    #[test]
    fn transcript_strips_thinking() {
        let t = transcript(&[
            Turn::new(Role::Assistant, "<think>secret</think>Hello"),
            Turn::new(Role::User, "Hi"),
        ]);
        assert_eq!(
            t,
            serde_json::json!([{"speaker": "doctor", "text": "Hello"}, {"speaker": "patient", "text": "Hi"}])
        );
    }
}
