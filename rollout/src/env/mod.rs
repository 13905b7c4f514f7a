//! The consultation environment: stages Inquiry -> DDX -> Lab -> Diag played step by step (one user turn, the
//! patient's or the stage instruction, plus one doctor reply) on one append-only token stream.
mod chat_turns;
pub mod opening;
mod scripted_doctor;

pub use chat_turns::ChatTurns;
pub use scripted_doctor::{ExpertDoctor, PartialExpertDoctor, ScriptedDoctor, ScriptedTurns};

use crate::codec::TextCodec;
use crate::engine::{EngineClient, EngineOutput};
use crate::simulator::guarded::Guarded;
use crate::stream::{ChatMl, TokenStream};
use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use spar_core::case::Case;
use spar_core::grammar;
use spar_core::recipe::RolloutSection;
use spar_core::sample::{EndReason, EpisodeMode, Role, Turn};
use spar_core::traits::{FinishReason, GenerateRequest, RolloutBackend, SamplingParams};
use std::sync::Arc;

/// Generates one doctor turn. The built-in engine also reports the prompt's expert choices (routing replay);
/// an external backend does not.
#[async_trait]
pub trait TurnGenerator: Send + Sync {
    fn id(&self) -> String;
    async fn generate_turn(&self, req: GenerateRequest) -> Result<EngineOutput>;

    /// The same, for a generator that reads the consultation itself (a scripted doctor needs the case and the
    /// dialogue, not token ids). Models ignore both.
    async fn generate_in_case(
        &self,
        case: &Case,
        dialogue: &[Turn],
        req: GenerateRequest,
    ) -> Result<EngineOutput> {
        let _ = (case, dialogue);
        self.generate_turn(req).await
    }
}

#[async_trait]
impl TurnGenerator for EngineClient {
    fn id(&self) -> String {
        RolloutBackend::id(self)
    }
    async fn generate_turn(&self, req: GenerateRequest) -> Result<EngineOutput> {
        self.generate_one(req).await
    }
}

/// Any [`RolloutBackend`] (e.g. an external vLLM / SGLang / `spar serve` over HTTP) as a turn generator.
pub struct BackendTurns(pub Arc<dyn RolloutBackend>);

#[async_trait]
impl TurnGenerator for BackendTurns {
    fn id(&self) -> String {
        self.0.id()
    }
    async fn generate_turn(&self, req: GenerateRequest) -> Result<EngineOutput> {
        let out = self.0.generate(vec![req]).await?;
        let mut output = out
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("backend {} returned no output", self.0.id()))?;
        // The prompt's expert choices feed the environment as the built-in engine's do.
        let prompt_routing = output
            .prompt_routed_experts
            .take()
            .map(|r| crate::stream::Routing {
                layers: r.layers,
                k: r.k,
                ids: r.ids,
            });
        Ok(EngineOutput {
            output,
            prompt_routing,
        })
    }
}

/// The environment's knobs (from `[rollout]`).
#[derive(Clone, Debug)]
pub struct EnvConfig {
    pub sampling: SamplingParams,
    pub turn_limits: [u32; 4],
    /// p_k per stage (Inquiry's is empty).
    pub instructions: [String; 4],
    pub system_prompt: String,
    pub max_seq_len: usize,
    pub enable_thinking: bool,
    pub track_routing: Option<(usize, usize)>,
    /// A failed generator call (an endpoint error after the client's retries) ends that episode with
    /// `EndReason::PolicyFailed` instead of failing the round: evaluation, where one endpoint outage must not stop
    /// the run. Off in training, where a failing policy is a broken run.
    pub keep_policy_failures: bool,
}

impl EnvConfig {
    pub fn from_section(s: &RolloutSection) -> Self {
        EnvConfig {
            sampling: s.sampling.clone(),
            turn_limits: s.turn_limits,
            instructions: Stage::ALL.map(|st| s.instruction(st)),
            system_prompt: s.system_prompt.clone(),
            max_seq_len: s.max_seq_len,
            enable_thinking: s.enable_thinking,
            track_routing: None,
            keep_policy_failures: false,
        }
    }
}

/// Everything an episode talks to.
#[derive(Clone)]
pub struct Env {
    pub codec: Arc<dyn TextCodec>,
    pub chat: ChatMl,
    pub generator: Arc<dyn TurnGenerator>,
    pub simulator: Guarded,
    pub cfg: EnvConfig,
}

/// A consultation between steps: what a pooled segment carries and a checkpoint saves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consultation {
    pub case_id: String,
    pub mode: EpisodeMode,
    pub stream: TokenStream,
    /// The doctor's view of the dialogue (injected snippet and stage instructions included).
    pub turns: Vec<Turn>,
    /// The simulator's view: the patient's own utterances and the doctor's Inquiry replies.
    pub sim_dialogue: Vec<Turn>,
    /// What the user says to open the next step, when it is not the stage instruction.
    pub next_user: Option<String>,
    /// `next_user` came from the simulator (so it joins the simulator's dialogue); false for an injected
    /// snippet's closing question, which the simulator never saw.
    pub next_user_from_simulator: bool,
    /// The stage played next.
    pub stage: Stage,
    /// Replies cut at `max_new_tokens` so far: the consultation goes on (the reply is closed by the template and
    /// scored as it stands); the sample is flagged `truncated`.
    #[serde(default)]
    pub truncated_replies: u32,
}

/// What one step produced.
enum StepResult {
    /// The doctor replied: its visible text and how generation finished.
    Replied(String, FinishReason),
    /// No room left in `max_seq_len` for a reply.
    StreamFull,
    /// The generator failed (kept per episode, see [`EnvConfig::keep_policy_failures`]).
    PolicyFailed(String),
}

/// How a stage ended.
#[derive(Clone, Debug, PartialEq)]
pub enum StageEnd {
    /// The doctor produced the stage's tagged output.
    Completed,
    /// The stage's turn limit was reached without it.
    Limit,
    /// The consultation is over (diagnosis given, simulator ended or failed, truncated).
    Ended {
        reason: EndReason,
        detail: Option<String>,
    },
}

/// Deterministic 64-bit mix of a string and numbers (FNV-1a then splitmix): per-request seeds.
pub fn mix_seed(base: u64, key: &str, n: u64) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ base;
    for b in key.bytes().chain(n.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h = h.wrapping_add(0x9e3779b97f4a7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

impl Env {
    /// One step: the user turn, then one sampled doctor reply.
    async fn step(
        &self,
        case: &Case,
        c: &mut Consultation,
        stage: Stage,
        user: &str,
        from_patient: bool,
        seed: u64,
    ) -> Result<StepResult> {
        let codec = self.codec.as_ref();
        let prompt = self.chat.user_then_prompt(codec, user)?;
        c.stream.push_context(&prompt);
        c.turns.push(Turn {
            role: Role::User,
            text: user.to_string(),
            stage: Some(stage),
        });
        if from_patient {
            c.sim_dialogue.push(Turn {
                role: Role::User,
                text: user.to_string(),
                stage: Some(stage),
            });
        }
        // Room for at least one token and the template's closing `<|im_end|>`.
        let room = self.cfg.max_seq_len.saturating_sub(c.stream.len() + 1);
        if room < 1 {
            return Ok(StepResult::StreamFull);
        }
        let mut sampling = self.cfg.sampling.clone();
        sampling.max_new_tokens = (sampling.max_new_tokens as usize).min(room) as u32;
        sampling.seed = Some(seed);
        // The sample's log-probs are those of the distribution its tokens were drawn from (softmax(z / T)): the
        // trainer recomputes pi_old at the same temperature (method.md section 9).
        sampling.logprobs_at_temperature = true;
        for s in self.chat.stop_ids() {
            if !sampling.stop_token_ids.contains(&s) {
                sampling.stop_token_ids.push(s);
            }
        }
        let generated = match self
            .generator
            .generate_in_case(
                case,
                &c.turns,
                GenerateRequest {
                    prompt_ids: c.stream.ids.clone(),
                    sampling,
                },
            )
            .await
        {
            Ok(g) => g,
            Err(e) if self.cfg.keep_policy_failures => {
                return Ok(StepResult::PolicyFailed(format!(
                    "{}: {e:#}",
                    self.generator.id()
                )));
            }
            Err(e) => return Err(e),
        };
        let out = generated.output;
        if let Some(r) = &generated.prompt_routing {
            c.stream.set_prompt_routing(r);
        }
        let routing = out.routed_experts.as_ref().map(|r| crate::stream::Routing {
            layers: r.layers,
            k: r.k,
            ids: r.ids.clone(),
        });
        c.stream
            .push_sampled(stage, &out.token_ids, &out.logprobs, routing.as_ref())?;
        c.stream
            .push_context(&self.chat.close_reply(&out.token_ids));
        let text = self.chat.reply_text(codec, &out.token_ids)?;
        c.turns.push(Turn {
            role: Role::Assistant,
            text: text.clone(),
            stage: Some(stage),
        });
        if stage == Stage::Inquiry {
            c.sim_dialogue.push(Turn {
                role: Role::Assistant,
                text: text.clone(),
                stage: Some(stage),
            });
        }
        Ok(StepResult::Replied(text, out.finish))
    }

    /// Plays `c.stage` to its end: the tagged output, the turn limit, or the end of the consultation. On return
    /// `c.stage` is the next stage to play (unchanged when the consultation ended or the last stage finished).
    /// `seed_key` makes every request's sampling seed distinct and reproducible.
    pub async fn play_stage(
        &self,
        case: &Case,
        c: &mut Consultation,
        seed: u64,
        seed_key: &str,
    ) -> Result<StageEnd> {
        let stage = c.stage;
        let limit = self.cfg.turn_limits[stage.index()].max(1);
        for turn in 0..limit {
            let (user, from_patient) = match c.next_user.take() {
                Some(u) if stage == Stage::Inquiry => (u, c.next_user_from_simulator),
                _ if stage == Stage::Inquiry => {
                    return Ok(StageEnd::Ended {
                        reason: EndReason::SimulatorFailed,
                        detail: Some("inquiry step without a patient utterance".into()),
                    });
                }
                _ => (self.cfg.instructions[stage.index()].clone(), false),
            };
            let seed = mix_seed(seed, seed_key, c.turns.len() as u64);
            let (text, finish) = match self.step(case, c, stage, &user, from_patient, seed).await? {
                StepResult::Replied(text, finish) => (text, finish),
                StepResult::StreamFull => {
                    return Ok(StageEnd::Ended {
                        reason: EndReason::Truncated,
                        detail: Some("the token stream reached max_seq_len".into()),
                    });
                }
                StepResult::PolicyFailed(error) => {
                    return Ok(StageEnd::Ended {
                        reason: EndReason::PolicyFailed,
                        detail: Some(error),
                    });
                }
            };
            if finish == FinishReason::Length {
                c.truncated_replies += 1;
            }
            // A final diagnosis ends the consultation in any stage (the grammar's rule).
            if grammar::ends_consultation(&text) && stage != Stage::Diag {
                return Ok(StageEnd::Ended {
                    reason: EndReason::Done,
                    detail: Some(format!("diagnosis given during {stage}")),
                });
            }
            if grammar::completes(stage, &text) {
                self.advance(c);
                return Ok(StageEnd::Completed);
            }
            if stage == Stage::Inquiry && turn + 1 < limit {
                match self.simulator.reply(case, &c.sim_dialogue, &text).await {
                    Err(reason) => {
                        return Ok(StageEnd::Ended {
                            reason: EndReason::SimulatorFailed,
                            detail: Some(reason),
                        });
                    }
                    Ok(r) if r.end => {
                        if !r.text.is_empty() {
                            c.turns.push(Turn {
                                role: Role::User,
                                text: r.text.clone(),
                                stage: Some(stage),
                            });
                        }
                        return Ok(StageEnd::Ended {
                            reason: EndReason::SimulatorEnded,
                            detail: None,
                        });
                    }
                    Ok(r) => {
                        c.next_user = Some(r.text);
                        c.next_user_from_simulator = true;
                    }
                }
            }
        }
        self.advance(c);
        Ok(StageEnd::Limit)
    }

    fn advance(&self, c: &mut Consultation) {
        c.next_user = None;
        c.next_user_from_simulator = false;
        if let Some(n) = c.stage.next() {
            c.stage = n;
        }
    }

    /// Plays every remaining stage (whole-episode mode). Returns the end reason and its detail.
    pub async fn play_episode(
        &self,
        case: &Case,
        c: &mut Consultation,
        seed: u64,
        seed_key: &str,
    ) -> Result<(EndReason, Option<String>)> {
        loop {
            let stage = c.stage;
            match self.play_stage(case, c, seed, seed_key).await? {
                StageEnd::Ended { reason, detail } => return Ok((reason, detail)),
                StageEnd::Completed if stage == Stage::Diag => return Ok((EndReason::Done, None)),
                StageEnd::Limit if stage == Stage::Diag => return Ok((EndReason::MaxTurns, None)),
                _ => {}
            }
        }
    }
}

/// The doctor's replies of one stage, in order (what the stage scorer reads).
pub fn stage_replies(turns: &[Turn], stage: Stage) -> Vec<String> {
    turns
        .iter()
        .filter(|t| t.role == Role::Assistant && t.stage == Some(stage))
        .map(|t| t.text.clone())
        .collect()
}
