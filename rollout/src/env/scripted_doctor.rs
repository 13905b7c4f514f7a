//! Scripted doctors in the rollout environment: the expert's gold consultations played through the same
//! environment, token stream and chat template as the model, so that SFT data cannot drift from what the policy
//! sees in rollouts (opening line, the simulator's answers, stage instructions, turn limits).
use super::TurnGenerator;
use crate::codec::TextCodec;
use crate::engine::EngineOutput;
use anyhow::Result;
use async_trait::async_trait;
use spar_core::case::Case;
use spar_core::sample::{Role, Turn};
use spar_core::traits::{FinishReason, GenerateOutput, GenerateRequest};
use spar_data::expert::{Expert, ExpertOptions, PartialExpert, PartialExpertOptions};
use std::sync::Arc;

/// A doctor that follows a script (the expert of `spar-data`, a test double): its replies are played in the same
/// environment, token stream and chat template as a model's, so SFT data made from them is exactly what the
/// policy later sees in rollouts.
pub trait ScriptedDoctor: Send + Sync {
    fn id(&self) -> String;
    /// The next doctor reply given the dialogue so far (the doctor's view: patient turns and stage instructions,
    /// no system turn).
    fn reply(&self, case: &Case, dialogue: &[Turn]) -> String;
}

/// A [`ScriptedDoctor`] as a turn generator: its text, encoded, then `<|im_end|>`; log-probs 0 (the script is
/// deterministic).
pub struct ScriptedTurns {
    pub doctor: Arc<dyn ScriptedDoctor>,
    pub codec: Arc<dyn TextCodec>,
    pub im_end: u32,
}

#[async_trait]
impl TurnGenerator for ScriptedTurns {
    fn id(&self) -> String {
        format!("scripted:{}", self.doctor.id())
    }
    async fn generate_turn(&self, _req: GenerateRequest) -> Result<EngineOutput> {
        anyhow::bail!(
            "the scripted doctor {} needs the consultation (generate_in_case)",
            self.doctor.id()
        )
    }
    async fn generate_in_case(
        &self,
        case: &Case,
        dialogue: &[Turn],
        req: GenerateRequest,
    ) -> Result<EngineOutput> {
        let view: Vec<Turn> = dialogue
            .iter()
            .filter(|t| t.role != Role::System)
            .cloned()
            .collect();
        let text = self.doctor.reply(case, &view);
        let mut token_ids = self.codec.encode(&text)?;
        let max = req.sampling.max_new_tokens as usize;
        let finish = if token_ids.len() + 1 > max {
            token_ids.truncate(max);
            FinishReason::Length
        } else {
            token_ids.push(self.im_end);
            FinishReason::Stop
        };
        Ok(EngineOutput {
            output: GenerateOutput {
                logprobs: vec![0.0; token_ids.len()],
                token_ids,
                finish,
                routed_experts: None,
                prompt_routed_experts: None,
                // A scripted reply has no distribution to rank.
                top_logprobs: Vec::new(),
            },
            prompt_routing: None,
        })
    }
}

/// The scripted expert of `spar-data` as a [`ScriptedDoctor`].
#[derive(Clone, Debug, Default)]
pub struct ExpertDoctor {
    pub opts: ExpertOptions,
}

impl ExpertDoctor {
    /// The expert with an Inquiry budget of `inquiry_turns` doctor turns (its `<ready/>` turn included): set it
    /// to the environment's Inquiry turn limit so the expert finishes inquiry inside it.
    pub fn with_inquiry_turns(inquiry_turns: usize) -> Self {
        ExpertDoctor {
            opts: ExpertOptions {
                inquiry_turns,
                ..ExpertOptions::default()
            },
        }
    }
}

impl ScriptedDoctor for ExpertDoctor {
    fn id(&self) -> String {
        "expert".into()
    }
    fn reply(&self, case: &Case, dialogue: &[Turn]) -> String {
        Expert::with_options(case, self.opts.clone())
            .next_utterance(dialogue)
            .1
    }
}

/// The partial expert of `spar-data` as a [`ScriptedDoctor`]: a good but imperfect SFT teacher whose omissions
/// are drawn per case from `partial.seed` and the case id (recipe `[trainer.sft_expert]`).
#[derive(Clone, Debug, Default)]
pub struct PartialExpertDoctor {
    pub opts: ExpertOptions,
    pub partial: PartialExpertOptions,
}

impl PartialExpertDoctor {
    /// The partial expert with an Inquiry budget of `inquiry_turns` doctor turns (as
    /// [`ExpertDoctor::with_inquiry_turns`]).
    pub fn with_inquiry_turns(inquiry_turns: usize, partial: PartialExpertOptions) -> Self {
        PartialExpertDoctor {
            opts: ExpertOptions {
                inquiry_turns,
                ..ExpertOptions::default()
            },
            partial,
        }
    }
}

impl ScriptedDoctor for PartialExpertDoctor {
    fn id(&self) -> String {
        format!("partial-expert:{}", self.partial.seed)
    }
    fn reply(&self, case: &Case, dialogue: &[Turn]) -> String {
        PartialExpert::new(case, self.opts.clone(), &self.partial)
            .next_utterance(dialogue)
            .1
    }
}
