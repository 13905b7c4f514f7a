//! A tiny language model for tests that need a real forward and backward without spar-model: embeddings, one
//! causal mixing layer (prefix mean) and an output projection.
use spar_trainer::policy::{Policy, PolicyInput, PolicyOutput};
use tch::{Device, Kind, Tensor, nn};

pub struct TinyLm {
    pub vs: nn::VarStore,
    emb: Tensor,
    w1: Tensor,
    w2: Tensor,
}

impl TinyLm {
    /// Weights drawn from a seeded ChaCha stream, not torch's global generator, so tests running in parallel
    /// cannot disturb each other's "same seed, same weights".
    pub fn new(vocab: i64, dim: i64, kind: Kind, seed: i64) -> Self {
        use rand::Rng;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed as u64);
        let mut randn = |shape: [i64; 2], std: f64| -> Tensor {
            let n = (shape[0] * shape[1]) as usize;
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    // Box-Muller.
                    let u1: f64 = rng.random::<f64>().max(1e-12);
                    let u2: f64 = rng.random();
                    (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                })
                .collect();
            Tensor::from_slice(&v).reshape(shape)
        };
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.var_copy("emb", &randn([vocab, dim], 0.5));
        let _ = root.var_copy("w1", &randn([dim, dim], 0.5));
        let _ = root.var_copy("w2", &randn([dim, vocab], 0.5));
        if kind == Kind::Double {
            vs.double();
        }
        let vars = vs.variables();
        TinyLm {
            emb: vars["emb"].shallow_clone(),
            w1: vars["w1"].shallow_clone(),
            w2: vars["w2"].shallow_clone(),
            vs,
        }
    }
}

/// A learner with AdamW (no weight decay), constant `lr`, grad clip 1.
pub fn learner(vs: &nn::VarStore, lr: f64) -> spar_trainer::learner::Learner {
    spar_trainer::learner::Learner {
        adamw: spar_trainer::adamw::AdamW::new(vs, Default::default()),
        schedule: spar_trainer::schedule::LrSchedule::new(
            lr,
            0,
            1000,
            spar_trainer::schedule::Decay::Constant,
        ),
        step: 0,
        grad_clip: 1.0,
        max_bad_steps: 3,
        bad_in_a_row: 0,
        bad_total: 0,
        aux_loss_coef: 0.0,
        group: std::sync::Arc::new(spar_dist::Local),
        sharded: None,
        grad_sum: None,
        expert_parallel: false,
        offload_optimizer: false,
        optimizer_parked: false,
        at_rest: spar_trainer::sharded::AtRest::Whole,
        cuda_graphs: None,
    }
}

impl Policy for TinyLm {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
    fn forward(&self, input: &PolicyInput) -> anyhow::Result<PolicyOutput> {
        let h = self
            .emb
            .f_index_select(0, &input.input_ids.reshape([-1]))?
            .reshape([input.input_ids.size()[0], input.input_ids.size()[1], -1]);
        // Causal prefix mean: position t sees tokens 0..=t of its row.
        let t = h.size()[1];
        let counts = Tensor::arange_start(1, t + 1, (h.kind(), Device::Cpu)).reshape([1, t, 1]);
        let mixed = h.cumsum(1, h.kind()) / counts;
        let logits = (mixed.matmul(&self.w1)).tanh().matmul(&self.w2);
        Ok(PolicyOutput::from_logits(logits))
    }
}

/// A random sample with `steps` doctor replies of `reply_len` tokens after `prompt_len` prompt tokens each.
pub fn sample_with_steps(
    group: &str,
    idx: u32,
    vocab: u32,
    prompt_len: usize,
    reply_len: usize,
    steps: usize,
    seed: u64,
) -> spar_core::Sample {
    use spar_core::sample::*;
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % vocab as u64) as u32
    };
    let mut token_ids = Vec::new();
    let mut loss_mask = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..steps {
        for _ in 0..prompt_len {
            token_ids.push(next());
            loss_mask.push(0);
        }
        let start = token_ids.len();
        for _ in 0..reply_len {
            token_ids.push(next());
            loss_mask.push(1);
        }
        spans.push(StepSpan {
            stage: spar_core::Stage::Inquiry,
            start,
            end: token_ids.len(),
        });
    }
    let rollout_logprobs = loss_mask
        .iter()
        .map(|&m| if m == 1 { -2.0 } else { 0.0 })
        .collect();
    Sample {
        schema_version: SCHEMA_VERSION,
        run_id: "test".into(),
        case_id: "c1".into(),
        group_id: group.into(),
        sample_idx: idx,
        stages: vec![spar_core::Stage::Inquiry],
        mode: EpisodeMode::Fresh,
        policy_version: 0,
        end_reason: EndReason::Done,
        token_ids,
        loss_mask,
        rollout_logprobs,
        routed_experts: None,
        steps: spans,
        turns: vec![],
    }
}

/// A score for `s` with the given per-step advantages.
pub fn scored_for(s: &spar_core::Sample, advantages: &[f64]) -> spar_core::Scored {
    use spar_core::sample::*;
    Scored {
        schema_version: SCHEMA_VERSION,
        run_id: s.run_id.clone(),
        case_id: s.case_id.clone(),
        group_id: s.group_id.clone(),
        sample_idx: s.sample_idx,
        r_task: 0.5,
        rubric: vec![],
        stage_score: None,
        claims: vec![],
        r_fact: 0.0,
        lambda: 0.0,
        reward: 0.5,
        steps: advantages
            .iter()
            .map(|&a| StepScore {
                violations: vec![],
                gamma: 1.0,
                advantage: a,
            })
            .collect(),
        drop_reason: None,
        components: Default::default(),
    }
}

/// Four sampled items of a `vocab`-token model (seeds from `seed`) as SFT items, and micro-batches of 2
/// (sequence mean of token means): the small batch the learner tests step on.
pub fn four_items(
    vocab: u32,
    seed: u64,
) -> (
    Vec<spar_trainer::batch::TrainItem>,
    spar_trainer::learner::BatchingConfig,
) {
    let samples: Vec<_> = (0..4)
        .map(|i| sample_with_steps("g", i, vocab, 5, 7, 2, seed + i as u64))
        .collect();
    let scored: Vec<_> = samples.iter().map(|s| scored_for(s, &[0.5, 0.3])).collect();
    let (items, _) = spar_trainer::batch::assemble(&samples, &scored, "test").unwrap();
    let batching = spar_trainer::learner::BatchingConfig {
        micro_batch: 2,
        token_budget: 0,
        pack: false,
        agg: spar_trainer::agg::AggMode::SeqMeanTokenMean,
        l_max: 64,
    };
    (items, batching)
}
