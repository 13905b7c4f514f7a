//! AdamW against a hand-computed update; schedule values.
use spar_trainer::adamw::{AdamW, AdamWConfig};
use spar_trainer::schedule::{Decay, LrSchedule};
use tch::{Device, Kind, Tensor, nn};

#[test]
fn one_and_two_steps_by_hand() {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().var("p", &[1], nn::Init::Const(1.0));
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            compact_state: false,
        },
    );
    (&p * 0.5).sum(Kind::Float).backward();
    opt.step(0.1);
    // p = 1 * (1 - 0.1 * 0.01) - 0.1 * (0.05 / 0.1) / (sqrt(0.00025 / 0.001) + 1e-8) = 0.999 - 0.1
    assert!(
        (p.double_value(&[0]) - 0.899).abs() < 1e-6,
        "{}",
        p.double_value(&[0])
    );
    opt.zero_grad();
    (&p * 0.5).sum(Kind::Float).backward();
    opt.step(0.1);
    // Constant gradient: m_hat = 0.5, v_hat = 0.25 again, so the step is again 0.1 after decay.
    let want = 0.899 * (1.0 - 0.001) - 0.1;
    assert!((p.double_value(&[0]) - want).abs() < 1e-6);
}

#[test]
fn bf16_params_get_fp32_masters_and_state_round_trips() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _ = vs.root().var("w", &[4], nn::Init::Const(1.0));
    vs.bfloat16();
    let p = vs.variables()["w"].shallow_clone();
    let mut opt = AdamW::new(&vs, AdamWConfig::default());
    for _ in 0..3 {
        (p.to_kind(Kind::Float) * Tensor::from_slice(&[1.0f32, -1.0, 0.5, 2.0]))
            .sum(Kind::Float)
            .backward();
        opt.step(1e-3);
        opt.zero_grad();
    }
    let dir = tempfile::tempdir().unwrap();
    opt.save(&dir.path().join("o.safetensors")).unwrap();
    let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"master.w".to_string()), "{names:?}");
    let mut opt2 = AdamW::new(&vs, AdamWConfig::default());
    opt2.load(&dir.path().join("o.safetensors")).unwrap();
    assert_eq!(opt2.step, 3);
    for ((n1, a), (n2, b)) in opt.state_tensors().into_iter().zip(opt2.state_tensors()) {
        assert_eq!(n1, n2);
        assert!(a.equal(&b), "{n1}");
    }
}

#[test]
fn update_ratio_is_the_norm_of_the_change_over_the_norm_of_the_weights() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut p = vs.root().var("p", &[3], nn::Init::Const(0.0));
    let mut q = vs.root().var("q", &[2], nn::Init::Const(0.0));
    tch::no_grad(|| {
        p.copy_(&Tensor::from_slice(&[1.0f32, -2.0, 0.5]));
        q.copy_(&Tensor::from_slice(&[3.0f32, 0.25]));
    });
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
    );
    let before = Tensor::cat(&[p.copy(), q.copy()], 0);
    ((&p * Tensor::from_slice(&[1.0f32, 0.3, -2.0])).sum(Kind::Float)
        + (&q * Tensor::from_slice(&[-0.7f32, 4.0])).sum(Kind::Float))
    .backward();
    opt.step(0.05);
    let after = Tensor::cat(&[p.copy(), q.copy()], 0);
    let want = (&after - &before).norm().double_value(&[]) / before.norm().double_value(&[]);
    assert!(want > 0.0);
    assert!(
        (opt.last_update_ratio - want).abs() < 1e-6 * want.max(1.0),
        "{} vs {want}",
        opt.last_update_ratio
    );
}

#[test]
fn grad_clip_scales_to_max_norm() {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().var("p", &[2], nn::Init::Const(0.0));
    let mut opt = AdamW::new(&vs, AdamWConfig::default());
    (&p * Tensor::from_slice(&[3.0f32, 4.0]))
        .sum(Kind::Float)
        .backward();
    let before = opt.clip_grad_norm(1.0);
    assert!((before - 5.0).abs() < 1e-6);
    assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
}

#[test]
fn warmup_then_cosine() {
    let s = LrSchedule::new(1.0, 2, 12, Decay::Cosine);
    assert!((s.lr(0) - 0.5).abs() < 1e-12);
    assert!((s.lr(1) - 1.0).abs() < 1e-12);
    assert!((s.lr(2) - 1.0).abs() < 1e-12);
    assert!((s.lr(7) - 0.5).abs() < 1e-12);
    assert!(s.lr(12).abs() < 1e-12);
    let c = LrSchedule::new(0.3, 0, 10, Decay::Constant);
    assert_eq!(c.lr(9), 0.3);
}

/// The flat-update tests' parameters, in bf16: a scalar `a`, a matrix `b`, a vector `c` that never gets a
/// gradient (read back from the store: the bf16 casts replaced the variables).
fn three_bf16_params() -> (nn::VarStore, std::collections::HashMap<String, Tensor>) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let _ = root.var("a", &[], nn::Init::Const(0.75));
    let _ = root.var("b", &[3, 4], nn::Init::Uniform { lo: -1.0, up: 1.0 });
    let _ = root.var("c", &[5], nn::Init::Const(-0.5));
    vs.bfloat16();
    let vars = vs.variables();
    (vs, vars)
}

/// Step `step`'s loss over `a` and `b`, backwarded; each of a, b, c's gradients in fp32 (zeros for c).
fn backward_step(vars: &std::collections::HashMap<String, Tensor>, step: i32) -> Vec<Tensor> {
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25]).view([1, 4]);
    let loss = vars["a"].to_kind(Kind::Float) * (step as f64)
        + (vars["b"].to_kind(Kind::Float) * &w)
            .square()
            .sum(Kind::Float);
    loss.backward();
    ["a", "b", "c"]
        .iter()
        .map(|n| {
            let (p, g) = (&vars[*n], vars[*n].grad());
            if g.defined() {
                g.to_kind(Kind::Float)
            } else {
                p.zeros_like().to_kind(Kind::Float)
            }
        })
        .collect()
}

/// Saved and loaded into a fresh optimizer of `cfg`, the state lands back where it was.
fn assert_state_round_trips(opt: &AdamW, vs: &nn::VarStore, cfg: AdamWConfig) -> AdamW {
    let dir = tempfile::tempdir().unwrap();
    opt.save(&dir.path().join("o.safetensors")).unwrap();
    let mut again = AdamW::new(vs, cfg);
    again.load(&dir.path().join("o.safetensors")).unwrap();
    again.move_state(Device::Cpu).unwrap();
    for (x, y) in opt.state_tensors().into_iter().zip(again.state_tensors()) {
        assert!(x.1.equal(&y.1), "{}", x.0);
    }
    again
}

/// The flat update of bf16 parameters (masters and moments as views into flat buffers, updated in chunks that
/// cross parameter boundaries) gives the bits of the same formula applied parameter by parameter: a scalar,
/// a matrix, a vector that never gets a gradient, over three steps with weight decay; the gradient norm, the
/// update ratio and a save / load round trip agree too.
#[test]
fn flat_bf16_update_matches_the_per_parameter_formula_bit_for_bit() {
    let (vs, vars) = three_bf16_params();
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&vs, cfg);
    opt.set_flat_chunk(5);
    // The reference: fp32 masters and moments of each parameter, updated with tch ops one by one.
    let names = ["a", "b", "c"];
    let mut master: Vec<Tensor> = names
        .iter()
        .map(|n| vars[*n].to_kind(Kind::Float))
        .collect();
    let mut m: Vec<Tensor> = master.iter().map(|t| t.zeros_like()).collect();
    let mut v: Vec<Tensor> = master.iter().map(|t| t.zeros_like()).collect();
    let lr = 0.01;
    for step in 1..=3 {
        let grads = backward_step(&vars, step);
        let norm = opt.grad_norm();
        let want_norm = grads
            .iter()
            .map(|g| {
                g.to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum::<f64>()
            .sqrt();
        assert!(
            (norm - want_norm).abs() <= 1e-12 * want_norm,
            "{norm} vs {want_norm}"
        );
        opt.step(lr);
        opt.zero_grad();
        let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
        let (mut before, mut delta) = (0.0, 0.0);
        for i in 0..3 {
            let t = &mut master[i];
            before += t.square().sum(Kind::Double).double_value(&[]);
            let decay = &*t * (lr * 0.1);
            let _ = t.g_mul_scalar_(1.0 - lr * 0.1);
            let _ = m[i].g_mul_scalar_(0.9);
            let _ = m[i].g_add_(&(&grads[i] * (1.0 - 0.9)));
            let _ = v[i].g_mul_scalar_(0.999);
            let _ = v[i].g_add_(&(&grads[i] * &grads[i] * (1.0 - 0.999)));
            // Times the float reciprocal of sqrt(bc2), as `optimizer_ops::adamw_composition` does (the form its
            // GPU kernel can replay bit for bit).
            let inv = f64::from(1.0f32 / (bc2.sqrt() as f32));
            let upd = &m[i] / (v[i].sqrt() * inv + 1e-8) * (lr / bc1);
            delta += (decay + &upd).square().sum(Kind::Double).double_value(&[]);
            let _ = t.g_sub_(&upd);
        }
        let state: std::collections::HashMap<String, Tensor> =
            opt.state_tensors().into_iter().collect();
        for (i, n) in names.iter().enumerate() {
            assert!(
                state[&format!("master.{n}")].equal(&master[i]),
                "master {n} step {step}"
            );
            assert!(state[&format!("m.{n}")].equal(&m[i]), "m {n} step {step}");
            assert!(state[&format!("v.{n}")].equal(&v[i]), "v {n} step {step}");
            assert!(
                vars[*n].equal(&master[i].to_kind(Kind::BFloat16)),
                "param {n} step {step}"
            );
        }
        let want_ratio = (delta / before).sqrt();
        assert!(
            (opt.last_update_ratio - want_ratio).abs() <= 1e-9 * want_ratio,
            "{} vs {want_ratio}",
            opt.last_update_ratio
        );
    }
    // Saved and loaded into a fresh optimizer, the state lands back in its flat buffers.
    assert_state_round_trips(&opt, &vs, cfg);
}

/// Compact state: the flat update (chunks of 5 elements crossing parameter boundaries) is, bit for bit, this
/// formula per parameter: weight = bf16 param + bf16 compensation and the bf16 first moment, widened to fp32,
/// take the fp32 AdamW step with the fp32 second moment; the param is the weight rounded to bf16, the
/// compensation what that rounding lost, the first moment rounded to bf16. Over three steps with weight decay;
/// the state is 8 bytes a parameter (12 with fp32 masters), and survives a save / load round trip.
#[test]
fn compact_update_matches_its_formula_bit_for_bit() {
    let (vs, vars) = three_bf16_params();
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        compact_state: true,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&vs, cfg);
    opt.set_flat_chunk(5);
    assert_eq!(opt.state_bytes(), 18 * 8);
    let fp32_state = AdamW::new(
        &vs,
        AdamWConfig {
            compact_state: false,
            ..cfg
        },
    );
    assert_eq!(fp32_state.state_bytes(), 18 * 12);
    let names = ["a", "b", "c"];
    let mut param: Vec<Tensor> = names.iter().map(|n| vars[*n].copy()).collect();
    let mut comp: Vec<Tensor> = param.iter().map(|t| t.zeros_like()).collect();
    let mut m: Vec<Tensor> = param.iter().map(|t| t.zeros_like()).collect();
    let mut v: Vec<Tensor> = param
        .iter()
        .map(|t| t.zeros_like().to_kind(Kind::Float))
        .collect();
    let lr = 0.01;
    for step in 1..=3 {
        let grads = backward_step(&vars, step);
        opt.step(lr);
        opt.zero_grad();
        let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
        for i in 0..3 {
            let mut t = param[i].to_kind(Kind::Float) + comp[i].to_kind(Kind::Float);
            let _ = t.g_mul_scalar_(1.0 - lr * 0.1);
            let mut m32 = m[i].to_kind(Kind::Float);
            let _ = m32.g_mul_scalar_(0.9);
            let _ = m32.g_add_(&(&grads[i] * (1.0 - 0.9)));
            let _ = v[i].g_mul_scalar_(0.999);
            let _ = v[i].g_add_(&(&grads[i] * &grads[i] * (1.0 - 0.999)));
            let inv = f64::from(1.0f32 / (bc2.sqrt() as f32));
            let upd = &m32 / (v[i].sqrt() * inv + 1e-8) * (lr / bc1);
            let _ = t.g_sub_(&upd);
            m[i] = m32.to_kind(Kind::BFloat16);
            param[i] = t.to_kind(Kind::BFloat16);
            comp[i] = (&t - param[i].to_kind(Kind::Float)).to_kind(Kind::BFloat16);
        }
        let state: std::collections::HashMap<String, Tensor> =
            opt.state_tensors().into_iter().collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!state.contains_key(&format!("master.{n}")));
            assert!(
                state[&format!("comp.{n}")].equal(&comp[i]),
                "comp {n} step {step}"
            );
            assert!(state[&format!("m.{n}")].equal(&m[i]), "m {n} step {step}");
            assert!(state[&format!("v.{n}")].equal(&v[i]), "v {n} step {step}");
            assert!(vars[*n].equal(&param[i]), "param {n} step {step}");
        }
        // The compensation is not idle: steps of 0.01 on weights near 1 are below bf16's half ulp (2^-8).
        assert!(comp[1].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
    let mut again = assert_state_round_trips(&opt, &vs, cfg);
    // A state saved with fp32 masters resumes compact: the compensation is the master's distance to the weight.
    let master = vars["b"].to_kind(Kind::Float) + 1e-3;
    let mut saved: std::collections::HashMap<String, Tensor> =
        fp32_state.state_tensors().into_iter().collect();
    saved.insert("master.b".into(), master.copy());
    again
        .load_named(&saved, std::path::Path::new("fp32.safetensors"))
        .unwrap();
    let state: std::collections::HashMap<String, Tensor> =
        again.state_tensors().into_iter().collect();
    let want = (&master - vars["b"].to_kind(Kind::Float)).to_kind(Kind::BFloat16);
    assert!(state["comp.b"].equal(&want));
}

/// Where a step is smaller than half a bf16 ulp of the weight, plain bf16 weights never move; the compact
/// state's compensation carries the steps, and its weights stay with those of fp32 masters. 200 steps of lr
/// 1e-4 toward a target 0.05 away, on weights near 1 (half an ulp: 0.0039).
#[test]
fn compact_state_tracks_fp32_masters_where_plain_bf16_weights_stall() {
    // (the weight the optimizer steps at the end: fp32 master or bf16 param + compensation, the bf16 start)
    let run = |compact: bool| -> (Tensor, Tensor) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _ = vs.root().var_copy(
            "w",
            &Tensor::linspace(0.6, 1.4, 64, (Kind::Float, Device::Cpu)),
        );
        vs.bfloat16();
        let w = vs.variables()["w"].shallow_clone();
        let start = w.detach().to_kind(Kind::Float);
        let target = &start + 0.05;
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                compact_state: compact,
                ..AdamWConfig::default()
            },
        );
        for _ in 0..200 {
            (w.to_kind(Kind::Float) - &target)
                .square()
                .sum(Kind::Float)
                .backward();
            opt.step(1e-4);
            opt.zero_grad();
        }
        let state: std::collections::HashMap<String, Tensor> =
            opt.state_tensors().into_iter().collect();
        let weight = if compact {
            w.to_kind(Kind::Float) + state["comp.w"].to_kind(Kind::Float)
        } else {
            state["master.w"].shallow_clone()
        };
        (weight, start)
    };
    let ((compact, start), (master, start2)) = (run(true), run(false));
    assert!(
        start.equal(&start2),
        "both runs start from the same weights"
    );
    let max_diff = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
    // Plain bf16 weights stepped in place (Adam's step is lr here: the gradient's sign never changes): each
    // step rounds back to where it started.
    let mut plain = start.to_kind(Kind::BFloat16);
    for _ in 0..200 {
        plain = (plain.to_kind(Kind::Float) + 1e-4).to_kind(Kind::BFloat16);
    }
    let moved = max_diff(&master, &start);
    let plain_err = max_diff(&plain.to_kind(Kind::Float), &master);
    let compact_err = max_diff(&compact, &master);
    assert!(moved > 0.015, "the fp32 masters moved {moved}");
    assert!(plain_err > 0.015, "plain bf16 weights strayed {plain_err}");
    assert!(
        compact_err < 1e-3 && compact_err < 0.05 * plain_err,
        "compact weights {compact_err} from the fp32 masters (plain bf16: {plain_err})"
    );
    eprintln!(
        "after 200 steps: fp32 masters moved {moved:.4}, compact {compact_err:.2e} from them, plain bf16 {plain_err:.4}"
    );
}
