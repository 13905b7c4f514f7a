//! AdamW against a hand-computed update; schedule values.
use spar_model::optimizer_ops;
use spar_trainer::adamw::{AdamW, AdamWConfig, OptimizerState};
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
            state: OptimizerState::Fp32,
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
        state: OptimizerState::Compact,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&vs, cfg);
    opt.set_flat_chunk(5);
    assert_eq!(opt.state_bytes(), 18 * 8);
    let fp32_state = AdamW::new(
        &vs,
        AdamWConfig {
            state: OptimizerState::Fp32,
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

/// The packed state: 6 bytes a parameter; the same bits whatever the chunk of the flat update; saved, it reads
/// as the compact state it stands for and loads back to the same bits; it resumes from a compact or an fp32
/// state (their compensations kept to 1/512 of an ulp, their second moments to 2^-17), and a compact optimizer
/// resumes from it.
#[test]
fn packed_state_is_six_bytes_and_saves_as_a_compact_one() {
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        state: OptimizerState::Packed,
        ..AdamWConfig::default()
    };
    // Two runs from the same weights, chunks of 5 elements (crossing parameters) and whole.
    let run = |chunk: Option<i64>| {
        tch::manual_seed(21);
        let (vs, vars) = three_bf16_params();
        let mut opt = AdamW::new(&vs, cfg);
        if let Some(c) = chunk {
            opt.set_flat_chunk(c);
        }
        for step in 1..=3 {
            backward_step(&vars, step);
            opt.step(0.01);
            opt.zero_grad();
        }
        (vs, vars, opt)
    };
    let (vs, vars, opt) = run(Some(5));
    let (_, vars2, opt2) = run(None);
    assert_eq!(opt.state_bytes(), 18 * 6);
    for n in ["a", "b", "c"] {
        assert!(vars[n].equal(&vars2[n]), "param {n}");
    }
    for (x, y) in opt.state_tensors().into_iter().zip(opt2.state_tensors()) {
        assert!(x.1.equal(&y.1), "{}", x.0);
    }
    let state: std::collections::HashMap<String, Tensor> =
        opt.state_tensors().into_iter().collect();
    assert_eq!(state["comp.b"].kind(), Kind::BFloat16);
    assert_eq!(state["v.b"].kind(), Kind::Float);
    assert!(state["comp.b"].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert_state_round_trips(&opt, &vs, cfg);
    let compact = AdamWConfig {
        state: OptimizerState::Compact,
        ..cfg
    };
    assert_state_round_trips(&opt, &vs, compact);
    // A compact state with compensations finer than the packed unit, and an fp32 one, resume packed.
    let w32 = vars["b"].to_kind(Kind::Float);
    let (unit, _) = optimizer_ops::comp_scales(&w32);
    let fine = (&unit * 0.3 + &unit * 100.0).to_kind(Kind::BFloat16);
    let v = Tensor::rand([3, 4], (Kind::Float, Device::Cpu)) * 1e-3 + 1e-9;
    let copy = |m: &std::collections::HashMap<String, Tensor>| {
        m.iter()
            .map(|(k, t)| (k.clone(), t.copy()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let mut saved = copy(&state);
    saved.insert("comp.b".into(), fine.copy());
    saved.insert("v.b".into(), v.copy());
    let mut fp32_saved = copy(&saved);
    fp32_saved.remove("comp.b");
    for key in ["comp.a", "comp.c"] {
        fp32_saved.remove(key);
    }
    for n in ["a", "b", "c"] {
        let comp = saved[&format!("comp.{n}")].to_kind(Kind::Float);
        fp32_saved.insert(format!("master.{n}"), vars[n].to_kind(Kind::Float) + comp);
    }
    for (what, named) in [("compact", &saved), ("fp32", &fp32_saved)] {
        let mut again = AdamW::new(&vs, cfg);
        again
            .load_named(named, std::path::Path::new("o.safetensors"))
            .unwrap();
        let got: std::collections::HashMap<String, Tensor> =
            again.state_tensors().into_iter().collect();
        let comp_err = ((&got["comp.b"].to_kind(Kind::Float) - fine.to_kind(Kind::Float)) / &unit)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            comp_err <= 0.5 + 1e-6,
            "{what}: compensation {comp_err} units off"
        );
        let v_err = ((&got["v.b"] - &v) / &v).abs().max().double_value(&[]);
        assert!(v_err <= 2f64.powi(-17), "{what}: second moment {v_err} off");
    }
}

/// Where a step is smaller than half a bf16 ulp of the weight, plain bf16 weights never move; the compact
/// state's compensation carries the steps, and its weights stay with those of fp32 masters. 200 steps of lr
/// 1e-4 toward a target 0.05 away, on weights near 1 (half an ulp: 0.0039). The packed state (an int8
/// compensation, a 24-bit second moment) tracks them as closely.
#[test]
fn compact_state_tracks_fp32_masters_where_plain_bf16_weights_stall() {
    // (the weight the optimizer steps at the end: fp32 master or bf16 param + compensation, the bf16 start)
    let run = |format: OptimizerState| -> (Tensor, Tensor) {
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
                state: format,
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
        let weight = if format != OptimizerState::Fp32 {
            w.to_kind(Kind::Float) + state["comp.w"].to_kind(Kind::Float)
        } else {
            state["master.w"].shallow_clone()
        };
        (weight, start)
    };
    let (compact, start) = run(OptimizerState::Compact);
    let (master, start2) = run(OptimizerState::Fp32);
    let (packed, start3) = run(OptimizerState::Packed);
    assert!(
        start.equal(&start2) && start.equal(&start3),
        "the runs start from the same weights"
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
    let packed_err = max_diff(&packed, &master);
    assert!(
        packed_err < 1e-3 && packed_err < 0.05 * plain_err,
        "packed weights {packed_err} from the fp32 masters (plain bf16: {plain_err})"
    );
    eprintln!(
        "after 200 steps: fp32 masters moved {moved:.4}, compact {compact_err:.2e} from them, packed \
         {packed_err:.2e}, plain bf16 {plain_err:.4}"
    );
}

/// A second moment kept in 24 bits comes back within 2^-17 of itself (relative), zero stays zero, and what is
/// packed from an unpacked value is the same bits.
#[test]
fn second_moments_round_trip_through_24_bits() {
    tch::manual_seed(3);
    let exps = Tensor::rand([100_000], (Kind::Float, Device::Cpu)) * 140.0 - 120.0;
    let v = Tensor::cat(
        &[
            exps.exp2(),
            Tensor::from_slice(&[0.0f32, 1.0, f32::MIN_POSITIVE, 3.0e38]),
        ],
        0,
    );
    let (hi, lo) = optimizer_ops::pack_v(&v);
    assert_eq!((hi.kind(), lo.kind()), (Kind::Int16, Kind::Uint8));
    let back = optimizer_ops::unpack_v(&hi, &lo);
    let rel = ((&back - &v).abs() / v.clamp_min(f64::from(f32::MIN_POSITIVE)))
        .max()
        .double_value(&[]);
    assert!(rel <= 2f64.powi(-17), "relative error {rel}");
    assert_eq!(back.double_value(&[100_000]), 0.0);
    assert_eq!(back.double_value(&[100_001]), 1.0);
    let (hi2, lo2) = optimizer_ops::pack_v(&back);
    assert!(hi2.equal(&hi) && lo2.equal(&lo), "packing is idempotent");
}

/// A packed compensation keeps what a weight lost in rounding to bf16 to 1/512 of its ulp: the fp32 weight
/// minus (bf16 weight + unpacked compensation) is within half a unit of 1/256 ulp (one unit next to a tie), for
/// weights of every size and sign; the unpacked compensation is exactly a bf16 value (so a packed state saves as a compact one).
#[test]
fn compensations_keep_a_weights_rounding_to_a_512th_of_its_ulp() {
    tch::manual_seed(4);
    let n = 200_000;
    let magnitude = (Tensor::rand([n], (Kind::Float, Device::Cpu)) * 60.0 - 40.0).exp2();
    let weight = Tensor::randn([n], (Kind::Float, Device::Cpu)) * magnitude;
    let rounded32 = weight.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    let q = optimizer_ops::pack_comp(&(&weight - &rounded32), &rounded32);
    assert_eq!(q.kind(), Kind::Int8);
    let comp = optimizer_ops::unpack_comp(&q, &rounded32);
    let (unit, _) = optimizer_ops::comp_scales(&rounded32);
    let err = (&weight - (&rounded32 + &comp)).abs() / &unit;
    // Within half a unit of a tie (the weight halfway between two bf16 values) the residual rounds to 128
    // units, one more than int8 holds.
    let tie = ((&weight - &rounded32).abs() / &unit).gt(127.5);
    let off_tie = err.masked_fill(&tie, 0.0).max().double_value(&[]);
    assert!(off_tie <= 0.5 + 1e-6, "error {off_tie} units of 1/256 ulp");
    let at_tie = err.max().double_value(&[]);
    assert!(at_tie <= 1.0 + 1e-6, "error {at_tie} units at a tie");
    let plain = ((&weight - &rounded32).abs() / &unit)
        .max()
        .double_value(&[]);
    assert!(
        plain > 100.0,
        "rounding alone loses up to 128 units ({plain})"
    );
    assert!(
        comp.to_kind(Kind::BFloat16)
            .to_kind(Kind::Float)
            .equal(&comp),
        "an unpacked compensation is a bf16 value"
    );
}
