//! The learner on a Qwen3 policy (final hidden states, fused chunked log-probs) against the same model returning
//! whole logits (the naive log-softmax): one RL step with an entropy bonus at a sampling temperature != 1, and an
//! SFT step, leave the same weights.
use super::common::{sample_with_steps, scored_for};
use spar_model::{ForwardInput, LmHead, Qwen3Config, Qwen3Model};
use spar_trainer::agg::AggMode;
use spar_trainer::batch::assemble;
use spar_trainer::learner::{BatchingConfig, Learner, rl_update, sft_update};
use spar_trainer::policy::{Policy, PolicyInput, PolicyOutput};
use spar_trainer::policy_loss::{PolicyLossConfig, RatioLevel};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 61;

fn model(tied: bool) -> Qwen3Model {
    let c = Qwen3Config::from_json_str(
        &format!(
            r#"{{"model_type":"qwen3","vocab_size":{VOCAB},"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"tie_word_embeddings":{tied}}}"#
        ),
        "test",
    )
    .unwrap();
    let m = Qwen3Model::random(c, Device::Cpu, Kind::Float, 11).unwrap();
    // Peaked distributions (at the 0.02 init every token is nearly uniform).
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.f_mul_scalar_(6.0).unwrap();
        }
    });
    m
}

/// The same model through the plain head: whole `[B, T, V]` logits, log-probs by one log-softmax.
struct WholeLogits(Qwen3Model);

impl Policy for WholeLogits {
    fn var_store(&self) -> &VarStore {
        &self.0.vs
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.0.vs
    }
    fn forward(&self, input: &PolicyInput) -> anyhow::Result<PolicyOutput> {
        let out = self.0.forward(
            ForwardInput::new(input.input_ids)
                .positions(input.position_ids)
                .mask(input.attention_mask),
        )?;
        Ok(PolicyOutput::from_logits(out.logits))
    }
}

/// AdamW with eps = 1: the first step is lr * g / (|g| + 1), smooth in the gradient (with the usual tiny eps
/// it is lr * sign(g), which turns float rounding of near-zero gradients into whole-lr differences).
fn learner(vs: &VarStore) -> Learner {
    let mut l = super::common::learner(vs, 1e-2);
    l.adamw = spar_trainer::adamw::AdamW::new(
        vs,
        spar_trainer::adamw::AdamWConfig {
            eps: 1.0,
            ..Default::default()
        },
    );
    l
}

fn batching() -> BatchingConfig {
    BatchingConfig {
        micro_batch: 2,
        token_budget: 0,
        pack: false,
        agg: AggMode::SeqMeanTokenMean,
        l_max: 64,
    }
}

/// max |a - b| over every weight, and max |b - start| (the size of the step).
fn weight_gap(a: &VarStore, b: &VarStore, start: &VarStore) -> (f64, f64) {
    let (va, vb, v0) = (a.variables(), b.variables(), start.variables());
    let mut gap: f64 = 0.0;
    let mut step: f64 = 0.0;
    for (name, x) in &va {
        let y = &vb[name];
        gap = gap.max((x - y).abs().max().double_value(&[]));
        step = step.max((y - &v0[name]).abs().max().double_value(&[]));
    }
    (gap, step)
}

#[test]
fn one_learner_step_gives_the_same_weights_fused_or_naive() {
    if !spar_model::token_logprobs::fused_available() {
        eprintln!("skipped: no fused log-prob op in this build (or SPAR_KERNELS=off)");
        return;
    }
    for tied in [true, false] {
        let samples: Vec<_> = (0..3)
            .map(|i| sample_with_steps("g", i, VOCAB as u32, 5, 7, 2, 40 + i as u64))
            .collect();
        let scored: Vec<_> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| scored_for(s, &[0.8 - 0.6 * i as f64, 0.3]))
            .collect();
        let (items, _) = assemble(&samples, &scored, "test").unwrap();
        let cfg = PolicyLossConfig {
            temperature: 0.7,
            entropy_coef: 0.05,
            ..PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.28)
        };
        // The fused path: the Qwen3 policy returns its final hidden states.
        let fused = model(tied);
        let check = fused
            .forward(ForwardInput::new(&Tensor::from_slice(&[1i64, 2]).view([1, 2])).hidden_only());
        assert!(matches!(check.unwrap().head, Some(LmHead::Hidden { .. })));
        let naive = WholeLogits(model(tied));
        let start = model(tied);
        let (mut lf, mut ln) = (learner(&fused.vs), learner(&naive.0.vs));
        let rf = rl_update(
            &fused,
            None,
            &mut lf,
            &items,
            &cfg,
            &batching(),
            1,
            Device::Cpu,
        )
        .unwrap();
        let rn = rl_update(
            &naive,
            None,
            &mut ln,
            &items,
            &cfg,
            &batching(),
            1,
            Device::Cpu,
        )
        .unwrap();
        let (gap, step) = weight_gap(&fused.vs, &naive.0.vs, &start.vs);
        eprintln!(
            "tied={tied}: RL step: weights differ by {gap:.3e} (step size {step:.3e}); loss {} vs {}, entropy {} vs {}",
            rf[0].loss, rn[0].loss, rf[0].stats.entropy_sum, rn[0].stats.entropy_sum
        );
        assert!(step > 1e-4, "the step must move the weights ({step})");
        assert!(
            gap <= 1e-6,
            "tied={tied}: fused and naive RL steps differ by {gap:e}"
        );
        assert!((rf[0].loss - rn[0].loss).abs() <= 1e-5 * rn[0].loss.abs().max(1.0));
        assert!((rf[0].stats.entropy_sum - rn[0].stats.entropy_sum).abs() <= 1e-4);
        // SFT (temperature 1, no advantage) on the updated weights.
        let sf = sft_update(&fused, &mut lf, &items, &batching(), Device::Cpu).unwrap();
        let sn = sft_update(&naive, &mut ln, &items, &batching(), Device::Cpu).unwrap();
        let (gap, _) = weight_gap(&fused.vs, &naive.0.vs, &start.vs);
        eprintln!(
            "tied={tied}: after SFT: weights differ by {gap:.3e}; loss {} vs {}",
            sf.loss, sn.loss
        );
        assert!(
            gap <= 2e-6,
            "tied={tied}: fused and naive SFT steps differ by {gap:e}"
        );
    }
}
