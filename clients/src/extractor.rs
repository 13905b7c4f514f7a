//! `LlmClaimExtractor`: splits a doctor's reply into atomic medical claims (method.md section 4) over an
//! OpenAI-compatible chat endpoint.
use crate::client::OpenAiClient;
use crate::fence::{data_block, data_rule, fence_id, hash12};
use crate::prompt::{LlmOptions, ask_parsed, json_payload, transcript};
use crate::wire::ChatMessage;
use async_trait::async_trait;
use serde::Deserialize;
use spar_core::Result;
use spar_core::recipe::EndpointConfig;
use spar_core::sample::Turn;
use spar_core::traits::ClaimExtractor;
use std::collections::HashSet;

const SYSTEM: &str = "You extract the medical claims a doctor's reply makes, for fact-checking. Rules:\n\
1. Atomic: one checkable statement per claim (split \"X causes A and B\" into two).\n\
2. Self-contained: resolve pronouns and references using the conversation (\"it\" -> the drug or condition \
named earlier), so that each claim can be checked without the conversation.\n\
3. Only medical facts that can be true or false (about diseases, drugs, doses, tests, risks, anatomy). Drop \
questions, greetings, empathy, advice to see a doctor, statements about this patient's own history, and \
fragments that mean nothing out of context.\n\
4. No duplicates; keep the order in which the reply makes them.\n\
Reply with exactly one JSON object and nothing else: {\"claims\": [\"claim\", ...]} (an empty list if there are none).";

const USER: &str = "{data}\n{rule}\nExtract the claims of \"response\" (the doctor's reply); \"conversation\" is the dialogue \
before it, only for resolving references.";

/// A claim extractor: one chat call per response.
#[derive(Clone, Debug)]
pub struct LlmClaimExtractor {
    client: OpenAiClient,
    opts: LlmOptions,
}

impl LlmClaimExtractor {
    pub fn new(client: OpenAiClient) -> Self {
        LlmClaimExtractor {
            client,
            opts: LlmOptions {
                max_tokens: 1024,
                ..LlmOptions::default()
            },
        }
    }

    pub fn from_endpoint(cfg: &EndpointConfig) -> Result<Self> {
        Ok(Self::new(OpenAiClient::new(cfg)?))
    }

    pub fn with_options(mut self, opts: LlmOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The messages sent for a response (public for audit and tests).
    pub fn messages(response: &str, context: &[Turn]) -> Vec<ChatMessage> {
        let data = serde_json::json!({
            "conversation": transcript(context),
            "response": spar_core::grammar::strip_think(response).trim(),
        });
        let id = fence_id(&data);
        let user = USER
            .replace("{rule}", &data_rule(&id))
            .replace("{data}", &data_block(&id, &data));
        vec![ChatMessage::system(SYSTEM), ChatMessage::user(user)]
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClaimsReply {
    Object(ClaimsObject),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimsObject {
    claims: Vec<String>,
}

/// Parses `{"claims": [...]}` or a bare list of strings; trims, drops empty claims and duplicates (same words
/// ignoring case, spacing and a final period), keeping first occurrences in order.
pub fn parse_claims(content: &str) -> std::result::Result<Vec<String>, String> {
    let reply: ClaimsReply = serde_json::from_str(json_payload(content))
        .map_err(|_| "claims are not {\"claims\": [string, ...]} or [string, ...]".to_string())?;
    let claims = match reply {
        ClaimsReply::Object(o) => o.claims,
        ClaimsReply::List(l) => l,
    };
    let mut seen = HashSet::new();
    Ok(claims
        .into_iter()
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|c| !c.is_empty())
        .filter(|c| seen.insert(c.trim_end_matches('.').to_lowercase()))
        .collect())
}

#[async_trait]
impl ClaimExtractor for LlmClaimExtractor {
    fn id(&self) -> String {
        format!(
            "llm-extractor/{}/{}",
            self.client.model(),
            hash12(&[SYSTEM, USER])
        )
    }

    async fn extract(&self, response: &str, context: &[Turn]) -> Result<Vec<String>> {
        if spar_core::grammar::strip_think(response).trim().is_empty() {
            return Ok(vec![]);
        }
        ask_parsed(
            &self.client,
            "llm-extractor",
            &self.opts,
            &Self::messages(response, context),
            true,
            parse_claims,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_dedup_in_order() {
        let c = parse_claims(r#"{"claims": ["Amoxicillin is a penicillin.", " amoxicillin  is a penicillin", "", "Fever can follow vaccination."]}"#).unwrap();
        assert_eq!(
            c,
            vec![
                "Amoxicillin is a penicillin.",
                "Fever can follow vaccination."
            ]
        );
        assert_eq!(parse_claims(r#"["a", "b", "a"]"#).unwrap(), vec!["a", "b"]);
        assert!(parse_claims(r#"{"claims": "a"}"#).is_err());
        assert!(parse_claims(r#"{"claims": [], "note": 1}"#).is_err());
        assert!(parse_claims("Claims: a, b").is_err());
    }
}
