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
