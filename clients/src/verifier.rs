//! `LlmFactVerifier`: labels one claim Supported / Refuted / Uncertain against established medical knowledge
//! (method.md section 4) over an OpenAI-compatible chat endpoint.
use crate::client::OpenAiClient;
use crate::fence::{data_block, data_rule, fence_id, hash12};
use crate::prompt::{LlmOptions, ask_parsed, json_payload};
use crate::wire::ChatMessage;
use async_trait::async_trait;
use serde::Deserialize;
use spar_core::Result;
use spar_core::recipe::EndpointConfig;
use spar_core::sample::ClaimLabel;
use spar_core::traits::{ClaimVerdict, FactVerifier};

const SYSTEM: &str = "You are a medical fact-checker. Label one claim against established medical knowledge \
(current clinical guidelines, drug labels, standard textbooks):\n\
- \"supported\": the claim is correct as stated.\n\
- \"refuted\": the claim is wrong, or wrong in a detail that matters (a dose, a number, a contraindication).\n\
- \"uncertain\": the evidence is mixed or insufficient, or the claim is too vague to check.\n\
Give the decisive evidence in one or two sentences. Reply with exactly one JSON object and nothing else:\n\
{\"label\": \"supported\" | \"refuted\" | \"uncertain\", \"evidence\": \"...\"}";

const USER: &str = "{data}\n{rule}\nLabel the claim in \"claim\".";

/// A fact verifier: one chat call per claim.
#[derive(Clone, Debug)]
pub struct LlmFactVerifier {
    client: OpenAiClient,
    opts: LlmOptions,
}

impl LlmFactVerifier {
    pub fn new(client: OpenAiClient) -> Self {
        LlmFactVerifier {
            client,
            opts: LlmOptions::default(),
        }
    }

    pub fn from_endpoint(cfg: &EndpointConfig) -> Result<Self> {
        Ok(Self::new(OpenAiClient::new(cfg)?))
    }

    pub fn with_options(mut self, opts: LlmOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Hash of the prompt templates (part of `id()`).
    pub fn template_hash() -> String {
        hash12(&[SYSTEM, USER])
    }

    /// The messages sent for a claim (public for audit and tests).
    pub fn messages(claim: &str) -> Vec<ChatMessage> {
        let data = serde_json::json!({"claim": claim.trim()});
        let id = fence_id(&data);
        let user = USER
            .replace("{rule}", &data_rule(&id))
            .replace("{data}", &data_block(&id, &data));
        vec![ChatMessage::system(SYSTEM), ChatMessage::user(user)]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictReply {
    label: String,
    evidence: String,
}

/// Parses `{"label": "supported" | "refuted" | "uncertain", "evidence": str}` (label case-insensitive).
pub fn parse_claim_verdict(content: &str) -> std::result::Result<(ClaimLabel, String), String> {
    let r: VerdictReply = serde_json::from_str(json_payload(content))
        .map_err(|e| format!("verdict is not {{\"label\": str, \"evidence\": str}}: {e}"))?;
    let label = match r.label.trim().to_ascii_lowercase().as_str() {
        "supported" => ClaimLabel::Supported,
        "refuted" => ClaimLabel::Refuted,
        "uncertain" => ClaimLabel::Uncertain,
        other => {
            return Err(format!(
                "label {other:?} is not supported, refuted or uncertain"
            ));
        }
    };
    Ok((label, r.evidence))
}

#[async_trait]
impl FactVerifier for LlmFactVerifier {
    /// Model and template hash: a change of either gives a new id, so claim-cache entries keyed by it die.
    fn id(&self) -> String {
        format!(
            "llm-verifier/{}/{}",
            self.client.model(),
            Self::template_hash()
        )
    }

    async fn verify(&self, claim: &str) -> Result<ClaimVerdict> {
        let (label, evidence) = ask_parsed(
            &self.client,
            "llm-verifier",
            &self.opts,
            &Self::messages(claim),
            true,
            parse_claim_verdict,
        )
        .await?;
        Ok(ClaimVerdict {
            label,
            evidence,
            source: Some(format!("llm:{}", self.client.model())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_strictly() {
        assert_eq!(
            parse_claim_verdict(r#"{"label": "Refuted", "evidence": "dose is 5 mg"}"#)
                .unwrap()
                .0,
            ClaimLabel::Refuted
        );
        assert!(parse_claim_verdict(r#"{"label": "true", "evidence": ""}"#).is_err());
        assert!(parse_claim_verdict(r#"{"label": "supported"}"#).is_err());
    }
}
