//! `trainer.learner_cuda_graphs` (GPU only; skips with a printed reason elsewhere): a learner whose supervised
//! micro-steps replay CUDA graphs takes the steps an eager learner takes, over micro-batches of two shapes, with
//! padded and packed rows and with activation checkpointing; a MoE model turns the graphs off after its first
//! (eager, correct) micro-step. Two model instances on one GPU already differ in the last float bits (atomic
//! adds in backward kernels), and the graph multiplies the loss by 1/n where the eager step divides by n, so the
//! comparison allows float noise; a micro-batch lost, counted twice or replayed with stale inputs would move
//! the loss and the weights by a whole step.
use spar_model::{Qwen3Config, Qwen3Model};
use spar_trainer::learner::{Learner, StepReport, sft_update};
use spar_trainer::learner_graphs::LearnerGraphs;
use tch::{Device, Kind};

const VOCAB: i64 = 61;

fn model(device: Device, moe: bool) -> Qwen3Model {
    let json = if moe {
        format!(
            r#"{{"model_type":"qwen3_moe","vocab_size":{VOCAB},"hidden_size":16,"intermediate_size":24,
            "moe_intermediate_size":8,"num_experts":4,"num_experts_per_tok":2,"decoder_sparse_step":1,
            "norm_topk_prob":true,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"router_aux_loss_coef":0.0}}"#
        )
    } else {
        format!(
            r#"{{"model_type":"qwen3","vocab_size":{VOCAB},"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8}}"#
        )
    };
    let c = Qwen3Config::from_json_str(&json, "test").unwrap();
    Qwen3Model::random(c, device, Kind::Float, 11).unwrap()
}

/// `x` and `y` within `rel` of the larger of them (and of `floor`).
fn close(x: f64, y: f64, rel: f64, floor: f64) -> bool {
    (x - y).abs() <= rel * x.abs().max(y.abs()).max(floor)
}

/// An eager and a graphed step's reports agree: loss, gradient norm and entropy sum within [`close`]'s tolerance,
/// the trained tokens exactly.
fn assert_reports_agree(at: &str, eager: &StepReport, graphed: &StepReport, rel: f64, floor: f64) {
    for (name, x, y) in [
        ("loss", eager.loss, graphed.loss),
        ("grad norm", eager.grad_norm, graphed.grad_norm),
        (
            "entropy sum",
            eager.stats.entropy_sum,
            graphed.stats.entropy_sum,
        ),
    ] {
        assert!(
            close(x, y, rel, floor),
            "{at}: {name} {x} eager, {y} graphed"
        );
    }
    assert_eq!(eager.stats.tokens, graphed.stats.tokens, "{at}");
}

fn learner(m: &Qwen3Model, graphs: bool) -> Learner {
    let mut l = super::common::learner(&m.vs, 1e-2);
    l.cuda_graphs = graphs.then(LearnerGraphs::default);
    l
}

#[test]
fn graphed_supervised_steps_match_eager_steps_on_gpu() {
    if !tch::Cuda::is_available() || !LearnerGraphs::supported(Device::Cuda(0)) {
        eprintln!(
            "skipped: no CUDA device or no CUDA-graph shim (the learner's graphs are CUDA graphs)"
        );
        return;
    }
    let device = Device::Cuda(0);
    // Micro-batches of two rows in two length buckets (the graphs pad lengths up to a multiple of
    // `LENGTH_BUCKET`): the last two samples get 70 more trained tokens.
    let (items, mut batching) = super::common::four_items(VOCAB as u32, 40);
    let mut items2 = items.clone();
    for it in &mut items2[2..] {
        for k in 0..70i64 {
            it.input_ids.push((k * 7 + 3) % VOCAB);
            it.targets.push((k * 7 + 10) % VOCAB);
            it.step_ids.push(-1);
            it.mask.push(1.0);
            it.advantages.push(0.0);
            it.rollout_logp.push(0.0);
        }
    }
    for (moe, pack, checkpointing) in [
        (false, false, false),
        (false, true, false),
        (false, false, true),
        (true, false, false),
    ] {
        let case = format!("moe {moe}, pack {pack}, checkpointing {checkpointing}");
        batching.pack = pack;
        let (mut eager, mut graphed) = (model(device, moe), model(device, moe));
        eager.set_activation_checkpointing(checkpointing);
        graphed.set_activation_checkpointing(checkpointing);
        let start = model(device, moe);
        let (mut le, mut lg) = (learner(&eager, false), learner(&graphed, true));
        for step in 0..4 {
            let re = sft_update(&eager, &mut le, &items2, &batching, device).unwrap();
            let rg = sft_update(&graphed, &mut lg, &items2, &batching, device).unwrap();
            assert_reports_agree(&format!("{case}, step {step}"), &re, &rg, 1e-5, 1e-6);
        }
        let g = lg
            .cuda_graphs
            .as_ref()
            .expect("the learner keeps its graphs");
        if moe {
            assert!(
                g.off_reason().is_some(),
                "{case}: a MoE forward must turn the graphs off"
            );
            assert_eq!(g.recorded(), 0, "{case}");
        } else {
            assert!(g.off_reason().is_none(), "{case}: {:?}", g.off_reason());
            assert_eq!(g.recorded(), 2, "{case}: one graph a length bucket");
        }
        let (a, b, s0) = (
            eager.vs.variables(),
            graphed.vs.variables(),
            start.vs.variables(),
        );
        for (name, x) in &a {
            let gap = (x - &b[name]).abs().max().double_value(&[]);
            let moved = (x - &s0[name]).abs().max().double_value(&[]);
            assert!(
                gap <= 1e-3 * moved,
                "{case}: {name} differs by {gap} after steps of {moved}"
            );
        }
    }
}

/// Weights scaled up so that distributions are peaked (at the 0.02 init every token is nearly uniform and the
/// ratio statistics say little).
fn peaked(device: Device) -> Qwen3Model {
    let m = model(device, false);
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.f_mul_scalar_(6.0).unwrap();
        }
    });
    m
}

#[test]
fn graphed_rl_updates_match_eager_updates_on_gpu() {
    use super::common::{sample_with_steps, scored_for};
    use spar_trainer::batch::assemble;
    use spar_trainer::learner::rl_update;
    use spar_trainer::policy_loss::{PolicyLossConfig, RatioLevel};
    if !tch::Cuda::is_available() || !LearnerGraphs::supported(Device::Cuda(0)) {
        eprintln!(
            "skipped: no CUDA device or no CUDA-graph shim (the learner's graphs are CUDA graphs)"
        );
        return;
    }
    let device = Device::Cuda(0);
    let samples: Vec<_> = (0..4)
        .map(|i| sample_with_steps("g", i, VOCAB as u32, 5, 7 + i as usize, 2, 40 + i as u64))
        .collect();
    let scored: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| scored_for(s, &[0.8 - 0.5 * i as f64, 0.3 - 0.2 * i as f64]))
        .collect();
    let (items, _) = assemble(&samples, &scored, "test").unwrap();
    let (_, batching) = super::common::four_items(VOCAB as u32, 40);
    // (ratio level, PPO epochs, reference): one epoch takes pi_old from the update's own forward, two run the
    // old pass first; the reference adds the KL term.
    for (level, epochs, with_ref) in [
        (RatioLevel::Segment, 1, false),
        (RatioLevel::Token, 2, true),
    ] {
        let case = format!("{level:?}, {epochs} epochs, reference {with_ref}");
        let cfg = PolicyLossConfig {
            temperature: 0.7,
            entropy_coef: 0.05,
            tis_cap: 2.0,
            kl_coef: if with_ref { 0.1 } else { 0.0 },
            ..PolicyLossConfig::clipped(level, 0.2, 0.28)
        };
        let (eager, graphed, start) = (peaked(device), peaked(device), peaked(device));
        let reference = peaked(device);
        let r: Option<&dyn spar_trainer::policy::Policy> = with_ref.then_some(&reference as _);
        let (mut le, mut lg) = (learner(&eager, false), learner(&graphed, true));
        let mut last_start = start.vs.variables();
        for update in 0..3 {
            // Each update starts from the eager learner's weights and optimizer state (copied in place, so the
            // graphs stay valid): PPO's clipping makes the gradient jump where a token's ratio crosses 1 +- eps,
            // so float noise carried over from an earlier update may move it by more than noise.
            tch::no_grad(|| {
                let from = eager.vs.variables();
                for (name, mut w) in graphed.vs.variables() {
                    w.copy_(&from[&name]);
                }
            });
            let state: std::collections::HashMap<_, _> =
                le.adamw.state_tensors().into_iter().collect();
            lg.adamw
                .load_named(&state, std::path::Path::new("the eager learner"))
                .unwrap();
            last_start = eager
                .vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.copy()))
                .collect();
            let re =
                rl_update(&eager, r, &mut le, &items, &cfg, &batching, epochs, device).unwrap();
            let rg = rl_update(
                &graphed, r, &mut lg, &items, &cfg, &batching, epochs, device,
            )
            .unwrap();
            assert_eq!(re.len(), rg.len(), "{case}");
            for (a, b) in re.iter().zip(&rg) {
                let at = format!("{case}, update {update}");
                assert_reports_agree(&at, a, b, 1e-4, 1e-3);
                let near = |x: f64, y: f64| close(x, y, 1e-4, 1e-3);
                for (name, x, y) in [
                    ("ratio sum", a.stats.ratio_sum, b.stats.ratio_sum),
                    ("kl", a.stats.kl_sum, b.stats.kl_sum),
                    ("mismatch max", a.stats.mismatch_max, b.stats.mismatch_max),
                    (
                        "ratio max",
                        a.stats.ratio_max.unwrap(),
                        b.stats.ratio_max.unwrap(),
                    ),
                    (
                        "ratio min",
                        a.stats.ratio_min.unwrap(),
                        b.stats.ratio_min.unwrap(),
                    ),
                ] {
                    assert!(near(x, y), "{at}: {name} {x} eager, {y} graphed");
                }
                for key in ["rl/greedy_token_frac", "rl/kl_old_new"] {
                    if let (Some(x), Some(y)) = (a.extra.get(key), b.extra.get(key)) {
                        assert!(near(*x, *y), "{at}: {key} {x} eager, {y} graphed");
                    }
                }
            }
        }
        let g = lg
            .cuda_graphs
            .as_ref()
            .expect("the learner keeps its graphs");
        assert!(g.off_reason().is_none(), "{case}: {:?}", g.off_reason());
        assert!(g.recorded() >= 1, "{case}: nothing recorded");
        let (a, b, s0) = (eager.vs.variables(), graphed.vs.variables(), last_start);
        // Adam divides each gradient by its own running scale, so an element whose gradient is near 0 moves by
        // up to lr whatever its sign's rounding: single elements may differ by a fraction of a step, the whole
        // tensor only by float noise.
        for (name, x) in &a {
            let diff = x - &b[name];
            let step = x - &s0[name];
            let (gap, moved) = (
                diff.abs().max().double_value(&[]),
                step.abs().max().double_value(&[]),
            );
            let (gap2, moved2) = (diff.norm().double_value(&[]), step.norm().double_value(&[]));
            assert!(
                gap <= 2e-2 * moved.max(1e-6) && gap2 <= 1e-3 * moved2.max(1e-6),
                "{case}: {name} differs by {gap} (max), {gap2} (norm) after updates of {moved}, {moved2}"
            );
        }
    }
}
