//! Gradient of the SPAR (segment-level GSPO) loss against central finite differences, on a tiny model in
//! float64, through the real batch assembly and forward.
use super::common::{TinyLm, sample_with_steps, scored_for};
use spar_trainer::agg::{AggMode, Aggregator};
use spar_trainer::batch::{assemble, collate, totals};
use spar_trainer::learner::logprobs_and_entropy;
use spar_trainer::policy::{Policy, PolicyInput};
use spar_trainer::policy_loss::*;
use tch::{Device, Kind, Tensor};

fn loss_of(
    model: &TinyLm,
    mb: &spar_trainer::batch::MicroBatch,
    old: &Tensor,
    agg: &Aggregator,
    c: &PolicyLossConfig,
) -> Tensor {
    let out = model
        .forward(&PolicyInput {
            input_ids: &mb.input_ids,
            attention_mask: &mb.attention_mask,
            position_ids: &mb.position_ids,
            packed_seq_ids: None,
            forced_experts: None,
        })
        .unwrap();
    let (logp, entropy) = logprobs_and_entropy(&out.logits().unwrap(), &mb.targets, 1.0);
    let rollout = mb.rollout_logp.to_kind(Kind::Double);
    policy_loss(
        c,
        agg,
        &PolicyLossInput {
            logp: &logp,
            old_logp: old,
            rollout_logp: &rollout,
            ref_logp: None,
            entropy: Some(&entropy),
            advantages: &mb.advantages.to_kind(Kind::Double),
            mask: &mb.mask.to_kind(Kind::Double),
            seq_ids: &mb.seq_ids,
            n_seqs: mb.n_seqs,
            seg_ids: &mb.seg_ids,
            n_segs: mb.n_segs,
        },
    )
    .loss
}

#[test]
fn spar_loss_gradient_matches_finite_differences() {
    let model = TinyLm::new(13, 6, Kind::Double, 7);
    let samples = vec![
        sample_with_steps("g", 0, 13, 3, 4, 3, 1),
        sample_with_steps("g", 1, 13, 2, 3, 2, 2),
    ];
    let scored = vec![
        scored_for(&samples[0], &[0.7, -1.3, 0.4]),
        scored_for(&samples[1], &[-0.5, 1.1]),
    ];
    let (items, _) = assemble(&samples, &scored, "test").unwrap();
    let refs: Vec<_> = items.iter().collect();
    let mb = collate(&refs, false, Device::Cpu).unwrap();
    // pi_old from a perturbed copy, so ratios are away from 1 (but inside the wide clip range: no kinks).
    let old = {
        let other = TinyLm::new(13, 6, Kind::Double, 7);
        tch::no_grad(|| {
            for (_, v) in other.vs.variables() {
                let _ = v.shallow_clone().g_add_(&(v.randn_like() * 0.05));
            }
        });
        let out = tch::no_grad(|| {
            other
                .forward(&PolicyInput {
                    input_ids: &mb.input_ids,
                    attention_mask: &mb.attention_mask,
                    position_ids: &mb.position_ids,
                    packed_seq_ids: None,
                    forced_experts: None,
                })
                .unwrap()
        });
        logprobs_and_entropy(&out.logits().unwrap(), &mb.targets, 1.0).0
    };
    let (tok, seqs) = totals(&items);
    let c = PolicyLossConfig {
        tis_cap: 2.0,
        entropy_coef: 0.01,
        ..PolicyLossConfig::clipped(RatioLevel::Segment, 5.0, 5.0)
    };
    for mode in [
        AggMode::TokenMean,
        AggMode::SeqMeanTokenMean,
        AggMode::SeqMeanTokenSumNorm,
    ] {
        let agg = Aggregator {
            mode,
            l_max: 16.0,
            total_tokens: tok,
            total_seqs: seqs,
        };
        for (_, v) in model.vs.variables() {
            let mut v = v;
            v.zero_grad();
        }
        loss_of(&model, &mb, &old, &agg, &c).backward();
        let mut checked = 0;
        for (name, var) in model.vs.variables() {
            let grad = var.grad();
            let flat = var.reshape([-1]);
            let n = flat.size()[0];
            for i in [0, n / 3, n / 2, n - 1] {
                let orig = flat.double_value(&[i]);
                let h = 1e-6;
                let at = |x: f64| {
                    tch::no_grad(|| {
                        let _ = flat.get(i).fill_(x);
                    });
                    tch::no_grad(|| loss_of(&model, &mb, &old, &agg, &c).double_value(&[]))
                };
                let fd = (at(orig + h) - at(orig - h)) / (2.0 * h);
                at(orig);
                let g = grad.reshape([-1]).double_value(&[i]);
                let tol = 1e-6 + 1e-5 * fd.abs().max(g.abs());
                assert!(
                    (fd - g).abs() <= tol,
                    "{mode:?} {name}[{i}]: autograd {g} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 12);
    }
}
