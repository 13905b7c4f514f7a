//! Test doubles shared by the integration tests.
use async_trait::async_trait;
use spar_core::sample::Turn;
use spar_core::traits::{
    ChatBackend, ChatReply, Judge, JudgeRequest, JudgeVerdict, SamplingParams,
};

/// A chat model that always answers the same text.
pub struct FixedPolicy {
    text: String,
}

impl FixedPolicy {
    pub fn new(text: &str) -> Self {
        FixedPolicy { text: text.into() }
    }
}

#[async_trait]
impl ChatBackend for FixedPolicy {
    fn id(&self) -> String {
        "fixed".into()
    }
    async fn chat(&self, _: &[Turn], _: &SamplingParams) -> spar_core::Result<ChatReply> {
        Ok(ChatReply {
            text: self.text.clone(),
            truncated: false,
        })
    }
}

/// Marks a criterion met when the criterion contains `key` and the response contains the paired phrase.
pub struct KeywordJudge {
    rules: Vec<(String, String)>,
    fail_on: Option<String>,
}

impl KeywordJudge {
    pub fn new(rules: &[(&str, &str)]) -> Self {
        KeywordJudge {
            rules: rules
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            fail_on: None,
        }
    }

    /// Fails (as an endpoint would after retries) on criteria containing `key`.
    pub fn failing_on(mut self, key: &str) -> Self {
        self.fail_on = Some(key.into());
        self
    }
}

#[async_trait]
impl Judge for KeywordJudge {
    fn id(&self) -> String {
        "keyword-judge".into()
    }
    async fn judge(&self, req: &JudgeRequest) -> spar_core::Result<JudgeVerdict> {
        let criterion = req.item.criterion.to_lowercase();
        if self
            .fail_on
            .as_ref()
            .is_some_and(|k| criterion.contains(k.as_str()))
        {
            return Err(spar_core::Error::external(
                "keyword-judge",
                "gave up after retries",
                true,
            ));
        }
        let response = req.response.to_lowercase();
        let met = self.rules.iter().any(|(k, phrase)| {
            criterion.contains(k.as_str()) && response.contains(phrase.as_str())
        });
        Ok(JudgeVerdict {
            met,
            explanation: String::new(),
        })
    }
}

/// The evaluation models `spar eval` would build for `eval` (spar-app's `Builder::eval_models`): the scripted
/// patient, the default stage scorer, no fact checking, and the LLM judge of `eval.judge` when `judge`.
pub fn eval_models(
    eval: &spar_core::recipe::EvalSection,
    judge: bool,
) -> spar_eval::run::EvalModels {
    let judge = judge.then(|| {
        let ep = eval
            .judge
            .as_ref()
            .and_then(|j| j.endpoint.clone())
            .expect("the test recipe's [eval.judge] has an endpoint");
        std::sync::Arc::new(spar_clients::LlmJudge::new(
            spar_clients::OpenAiClient::new(&ep).unwrap(),
        )) as std::sync::Arc<dyn spar_core::traits::Judge>
    });
    spar_eval::run::EvalModels {
        simulator: std::sync::Arc::new(spar_rollout::simulator::ScriptedPatient),
        scorer: std::sync::Arc::new(spar_rewards::ClinicalStageScorer::new(Default::default())),
        scorer_id: "clinical(default)".into(),
        facts: None,
        judge,
    }
}

/// A current-thread runtime and the default reward pipeline with an in-memory claim cache (no file written).
pub fn runtime_and_pipeline() -> (tokio::runtime::Runtime, spar_rewards::RewardPipeline) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rewards = spar_core::recipe::RewardsSection::default();
    rewards.fact.cache = spar_core::recipe::ClaimCacheKind::Memory;
    let pipeline = rt
        .block_on(spar_rewards::RewardPipeline::new(
            &rewards,
            spar_rewards::Injected::default(),
        ))
        .unwrap();
    (rt, pipeline)
}
