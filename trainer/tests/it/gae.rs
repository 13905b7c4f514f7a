//! PPO with a value head: GAE against hand-computed values, token rewards at step ends, the masked GAE of a
//! micro-batch against the plain one, the value loss falling on a fixed batch, and exact resume with a critic.
use super::common::{TinyLm, learner, sample_with_steps, scored_for};
use spar_core::recipe::GaeConfig;
use spar_trainer::agg::AggMode;
use spar_trainer::batch::{TrainItem, assemble};
use spar_trainer::checkpoint::{self, TrainerState};
use spar_trainer::critic::Critic;
use spar_trainer::gae::{gae, gae_masked, token_rewards, token_rewards_for_items};
use spar_trainer::learner::{BatchingConfig, Learner, RlExtras, rl_update_with};
use spar_trainer::policy::Policy;
use spar_trainer::policy_loss::{PolicyLossConfig, RatioLevel};
use tch::{Device, Kind, Tensor};

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

#[test]
fn gae_matches_hand_computed_values() {
    // gamma 1, lambda 0.5: deltas 0.9, -0.1, -0.3 from the end.
    let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 0.5);
    assert!(close(&adv, &[-0.125, 0.35, 0.9]), "{adv:?}");
    assert!(close(&ret, &[0.375, 0.55, 1.0]), "{ret:?}");
    // gamma 0.9, lambda 1: Monte-Carlo discounted returns whatever the values.
    let (_, ret) = gae(&[1.0, 0.0, 2.0], &[0.3, -0.7, 5.0], 0.9, 1.0);
    assert!(close(&ret, &[1.0 + 0.81 * 2.0, 0.9 * 2.0, 2.0]), "{ret:?}");
}

#[test]
fn token_rewards_sit_at_step_ends() {
    // Steps: prompt tokens 0-1, reply 2-4; prompt 5-6, reply 7-9. Target-aligned: token k is entry k-1.
    let s = sample_with_steps("g", 0, 17, 2, 3, 2, 1);
    let mut sc = scored_for(&s, &[0.0, 0.0]);
    sc.steps[0].gamma = 0.1;
    sc.reward = 0.5;
    let r = token_rewards(&s, &sc).unwrap();
    let mut want = vec![0f32; 10];
    want[3] = -0.9 * 0.5;
    want[8] = 0.5;
    assert_eq!(r, want);
    // A negative reward is penalised further, never raised: -(1 - gamma)|R|.
    sc.reward = -0.4;
    let r = token_rewards(&s, &sc).unwrap();
    assert!((r[3] - (-0.9 * 0.4)).abs() < 1e-7 && (r[8] + 0.4).abs() < 1e-7);
}

#[test]
fn masked_gae_skips_untrained_positions_and_restarts_per_packed_sample() {
    let mask = [0., 1., 0., 1., 0., 1., 1., 0.];
    let seq = [0i64, 0, 0, 0, 1, 1, 1, -1];
    let rew = [0., 0.1, 9., 1.0, 9., 0., 2., 9.];
    let val = [9., 0.5, 9., 0.1, 9., 0.2, 0.3, 9.];
    let t = |v: &[f64]| Tensor::from_slice(v).reshape([1, 8]);
    let (adv, ret) = gae_masked(
        &t(&rew),
        &t(&val),
        &t(&mask),
        &Tensor::from_slice(&seq).reshape([1, 8]),
        0.9,
        0.8,
    )
    .unwrap();
    let adv = Vec::<f64>::try_from(adv.reshape([-1]).to_kind(Kind::Double)).unwrap();
    let ret = Vec::<f64>::try_from(ret.reshape([-1]).to_kind(Kind::Double)).unwrap();
    let (a0, r0) = gae(&[0.1, 1.0], &[0.5, 0.1], 0.9, 0.8);
    let (a1, r1) = gae(&[0.0, 2.0], &[0.2, 0.3], 0.9, 0.8);
    let mut want_a = vec![0.0; 8];
    let mut want_r = vec![0.0; 8];
    for (k, p) in [1usize, 3].iter().enumerate() {
        want_a[*p] = a0[k];
        want_r[*p] = r0[k];
    }
    for (k, p) in [5usize, 6].iter().enumerate() {
        want_a[*p] = a1[k];
        want_r[*p] = r1[k];
    }
    assert!(close(&adv, &want_a), "{adv:?} vs {want_a:?}");
    assert!(close(&ret, &want_r), "{ret:?} vs {want_r:?}");
}

fn batch() -> (Vec<TrainItem>, Vec<Vec<f32>>) {
    let samples: Vec<_> = (0..6)
        .map(|i| sample_with_steps("g", i, 17, 2, 3, 2, i as u64 + 40))
        .collect();
    let scored: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut sc = scored_for(s, &[0.0, 0.0]);
            sc.reward = 0.2 * i as f64 - 0.4;
            sc.steps[0].gamma = if i % 2 == 0 { 1.0 } else { 0.3 };
            sc
        })
        .collect();
    let (items, _) = assemble(&samples, &scored, "gae batch").unwrap();
    let rewards = token_rewards_for_items(&items, &samples, &scored).unwrap();
    (items, rewards)
}

fn gae_cfg() -> GaeConfig {
    GaeConfig {
        gamma: 1.0,
        lambda: 1.0,
        vf_coef: 0.5,
        value_clip: 0.2,
        critic_lr: 1e-2,
        whiten: true,
        shared_trunk: false,
    }
}

fn ppo() -> (PolicyLossConfig, BatchingConfig) {
    (
        PolicyLossConfig {
            tis_cap: 2.0,
            ..PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.28)
        },
        BatchingConfig {
            micro_batch: 4,
            token_budget: 0,
            pack: false,
            agg: AggMode::TokenMean,
            l_max: 16,
        },
    )
}

/// `n` PPO steps with the critic on the fixed batch; returns (losses, value losses).
fn steps(
    model: &TinyLm,
    l: &mut Learner,
    critic: &mut Critic,
    items: &[TrainItem],
    rewards: &[Vec<f32>],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (cfg, batching) = ppo();
    let (mut losses, mut vlosses) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut extras = RlExtras::none();
        extras.critic = Some((&mut *critic, rewards));
        for rep in rl_update_with(
            model,
            None,
            l,
            items,
            &cfg,
            &batching,
            1,
            Device::Cpu,
            &mut extras,
        )
        .unwrap()
        {
            assert!(!rep.skipped);
            losses.push(rep.loss);
            vlosses.push(rep.extra["critic/value_loss"]);
        }
    }
    (losses, vlosses)
}

#[test]
fn value_loss_falls_on_a_fixed_batch() {
    let (items, rewards) = batch();
    let model = TinyLm::new(17, 8, Kind::Float, 3);
    let mut l = learner(&model.vs, 1e-3);
    let mut critic = Critic::new(17, Device::Cpu, gae_cfg(), 1.0);
    let (losses, v) = steps(&model, &mut l, &mut critic, &items, &rewards, 8);
    eprintln!("value loss over 8 PPO steps on one batch: {v:?}");
    assert!(losses.iter().chain(&v).all(|x| x.is_finite()));
    // A linear head cannot fit every return exactly; it must fall steadily to a clearly lower plateau.
    assert!(v.windows(2).take(5).all(|w| w[1] < w[0]), "{v:?}");
    assert!(v[7] < 0.7 * v[0], "{v:?}");
}

#[test]
fn resumed_run_with_a_critic_matches_uninterrupted() {
    let (items, rewards) = batch();
    let full_model = TinyLm::new(17, 8, Kind::Float, 4);
    let mut l = learner(&full_model.vs, 1e-2);
    let mut full_critic = Critic::new(17, Device::Cpu, gae_cfg(), 1.0);
    let (full, full_v) = steps(&full_model, &mut l, &mut full_critic, &items, &rewards, 4);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = {
        let model = TinyLm::new(17, 8, Kind::Float, 4);
        let mut l = learner(&model.vs, 1e-2);
        let mut critic = Critic::new(17, Device::Cpu, gae_cfg(), 1.0);
        let (first, _) = steps(&model, &mut l, &mut critic, &items, &rewards, 2);
        assert_eq!(first, full[..2].to_vec());
        let st = TrainerState {
            step: l.step,
            phase: "rl".into(),
            phase_step: 2,
            ..Default::default()
        };
        checkpoint::save_with(dir.path(), &model, &l.adamw, &st, 2, &|d| critic.save(d)).unwrap()
    };
    assert!(ckpt.join("critic/value_head.safetensors").exists());
    let mut model = TinyLm::new(17, 8, Kind::Float, 99);
    let mut l = learner(&model.vs, 1e-2);
    let mut critic = Critic::new(17, Device::Cpu, gae_cfg(), 1.0);
    let st = checkpoint::load(&ckpt, &mut model, &mut l.adamw).unwrap();
    critic.load(&ckpt).unwrap();
    l.step = st.step;
    let (rest, rest_v) = steps(&model, &mut l, &mut critic, &items, &rewards, 2);
    assert_eq!(rest, full[2..].to_vec(), "losses after resume");
    assert_eq!(rest_v, full_v[2..].to_vec(), "value losses after resume");
    for (name, w) in full_model.var_store().variables() {
        assert!(w.equal(&model.var_store().variables()[&name]), "{name}");
    }
    for (name, w) in full_critic.head.vs.variables() {
        assert!(w.equal(&critic.head.vs.variables()[&name]), "critic {name}");
    }
}
