//! Shared fixtures: a tiny random Qwen3 over the byte-level test codec, and a scripted doctor backend.
use async_trait::async_trait;
use spar_core::case::Case;
use spar_core::recipe::RolloutSection;
use spar_core::traits::{FinishReason, GenerateOutput, GenerateRequest, RolloutBackend};
use spar_model::{ForwardInput, Qwen3Config, Qwen3Model};
use spar_rollout::simulator::ScriptedPatient;
use spar_rollout::testing::{CharCodec, ParseScorer};
use spar_rollout::{Rollout, SimulatorChoice, TextCodec};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A rollout of `cases` over the byte-level test codec, the parse scorer and the scripted patient.
pub fn scripted_rollout(cfg: RolloutSection, cases: Vec<Case>, run_id: &str) -> Rollout {
    Rollout::new(
        cfg,
        cases,
        Arc::new(CharCodec),
        Arc::new(ParseScorer),
        SimulatorChoice::Fixed(Arc::new(ScriptedPatient)),
        run_id,
    )
    .unwrap()
}

/// The end-of-turn token ids of the test codec: what `spar serve` stops at on its own.
pub fn end_of_turn_ids() -> Vec<u32> {
    ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .map(|t| CharCodec.token_id(t).unwrap())
        .collect()
}

pub fn tiny_model(moe: bool) -> Qwen3Model {
    let vocab = CharCodec::vocab_size();
    let json = if moe {
        format!(
            r#"{{"model_type":"qwen3_moe","vocab_size":{vocab},"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"num_experts":4,"num_experts_per_tok":2,
            "moe_intermediate_size":16,"decoder_sparse_step":1,"max_position_embeddings":4096}}"#
        )
    } else {
        format!(
            r#"{{"model_type":"qwen3","vocab_size":{vocab},"hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"max_position_embeddings":4096}}"#
        )
    };
    let c = Qwen3Config::from_json_str(&json, "test").unwrap();
    Qwen3Model::random(c, Device::Cpu, Kind::Float, 11).unwrap()
}

/// Log-probs of `ids[1..]` from one full forward of `ids` (what `spar logprobs` computes): entry t is the
/// log-prob of token t (entry 0 is 0).
/// On the model's device; the logits go to fp32 first (a bf16 model's log-probs are taken at full precision).
pub fn full_forward_logprobs(model: &Qwen3Model, ids: &[u32]) -> Vec<f32> {
    let _g = tch::no_grad_guard();
    let t = Tensor::from_slice(&ids.iter().map(|&x| x as i64).collect::<Vec<_>>())
        .unsqueeze(0)
        .to_device(model.device());
    let logits = model
        .forward(ForwardInput::new(&t))
        .unwrap()
        .logits
        .to_kind(Kind::Float);
    let n = ids.len() as i64;
    let lp = spar_model::token_logprobs(&logits.narrow(1, 0, n - 1), &t.narrow(1, 1, n - 1));
    let mut v = vec![0.0f32];
    v.extend(Vec::<f32>::try_from(lp.reshape([-1]).to_device(Device::Cpu)).unwrap());
    v
}

/// A doctor that follows the stage grammar, played from text: asks one question, then says it is ready;
/// answers each stage instruction with the tagged output. With `fail_odd_ddx`, samples whose request seed is
/// odd answer the differential without tags (the gate must drop them).
pub struct ScriptedDoctor {
    pub codec: CharCodec,
    pub fail_odd_ddx: bool,
}

impl ScriptedDoctor {
    fn reply(&self, prompt: &str, seed: u64) -> String {
        let last_user = prompt.rsplit("<|im_start|>user\n").next().unwrap_or("");
        if last_user.contains("differential") {
            if self.fail_odd_ddx && seed % 2 == 1 {
                return "Probably an infection.".into();
            }
            return "<ddx>\n1. Pneumonia (J18.9)\n2. Acute bronchitis (J20.9)\n</ddx>".into();
        }
        if last_user.contains("examinations") {
            return "<tests>\n- Chest X-ray\n</tests>".into();
        }
        if last_user.contains("final diagnosis") {
            return "<diagnosis>Pneumonia (J18.9)</diagnosis>".into();
        }
        if prompt.matches("<|im_start|>assistant\n").count() >= 2 {
            "Thank you. <ready/>".into()
        } else {
            "Do you have a fever?".into()
        }
    }
}

#[async_trait]
impl RolloutBackend for ScriptedDoctor {
    fn id(&self) -> String {
        "scripted-doctor".into()
    }
    async fn generate(&self, reqs: Vec<GenerateRequest>) -> spar_core::Result<Vec<GenerateOutput>> {
        Ok(reqs
            .into_iter()
            .map(|r| {
                let prompt = self.codec.decode(&r.prompt_ids).unwrap();
                let mut ids = self
                    .codec
                    .encode(&self.reply(&prompt, r.sampling.seed.unwrap_or(0)))
                    .unwrap();
                ids.push(self.codec.token_id("<|im_end|>").unwrap());
                GenerateOutput {
                    logprobs: vec![-0.5; ids.len()],
                    token_ids: ids,
                    finish: FinishReason::Stop,
                    routed_experts: None,
                    prompt_routed_experts: None,
                    top_logprobs: Vec::new(),
                }
            })
            .collect())
    }
}
