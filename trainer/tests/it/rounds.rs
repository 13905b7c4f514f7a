//! RL rounds: the one-step off-policy schedule (trained samples lag the learner by one version) and the
//! routing replay switch (with it, the training forward uses the rollout's experts).
use super::common::{learner, sample_with_steps, scored_for};
use spar_core::sample::RoutedExperts;
use spar_model::{Qwen3Config, Qwen3Model};
use spar_trainer::agg::AggMode;
use spar_trainer::batch::{assemble, set_routing_replay};
use spar_trainer::learner::{BatchingConfig, fill_old_logprobs, micro_batches};
use spar_trainer::off_policy::RoundScheduler;
use spar_trainer::policy::{Policy, PolicyInput};
use spar_trainer::policy_loss::{PolicyLossConfig, RatioLevel};
use spar_trainer::rl_round::{LearnConfig, PlayedRound, learn_round};
use tch::{Device, Kind, Tensor};

/// Runs `total` rounds; the "learner" applies one update per round. Returns (versions generated, (learner
/// version, version of the batch learned) per round).
fn schedule(one_step: bool, total: usize) -> (Vec<u64>, Vec<(u64, u64)>) {
    let mut sched = RoundScheduler::new(one_step, None);
    let mut generated = Vec::new();
    let mut learned = Vec::new();
    for round in 0..total {
        // One update per round: the weights have had `round` updates when the round starts.
        let learner_version = round as u64;
        let batch = sched
            .next(round, total, |v| {
                // The generator sees the weights as they are now: before this round's update.
                assert_eq!(v, learner_version);
                generated.push(v);
                Ok(v)
            })
            .unwrap();
        learned.push((learner_version, batch));
    }
    (generated, learned)
}

#[test]
fn one_step_off_policy_learns_batches_one_version_behind() {
    let (generated, learned) = schedule(true, 5);
    // Round 0 has nothing generated ahead; after that every batch comes from the previous round's weights.
    assert_eq!(generated, vec![0, 0, 1, 2, 3]);
    let lags: Vec<u64> = learned.iter().map(|(l, b)| l - b).collect();
    assert_eq!(lags, vec![0, 1, 1, 1, 1]);
    let (generated, learned) = schedule(false, 5);
    assert_eq!(generated, vec![0, 1, 2, 3, 4]);
    assert!(learned.iter().all(|(l, b)| l == b));
    // A batch saved ahead by a checkpoint is learned first after resume.
    let mut sched = RoundScheduler::new(true, Some(41u64));
    assert_eq!(sched.next(3, 6, Ok).unwrap(), 41);
    assert_eq!(sched.pending(), Some(&3));
}

fn tiny_moe() -> Qwen3Model {
    let c = Qwen3Config::from_json_str(
        r#"{"model_type":"qwen3_moe","vocab_size":17,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"num_experts":4,"num_experts_per_tok":2,
            "moe_intermediate_size":8,"norm_topk_prob":true,"decoder_sparse_step":1,"tie_word_embeddings":true}"#,
        "test",
    )
    .unwrap();
    let m = Qwen3Model::random(c, Device::Cpu, Kind::Float, 5).unwrap();
    // Larger than the 0.02 default, so that the choice of experts visibly changes the log-probs.
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.f_mul_scalar_(4.0).unwrap();
        }
    });
    m
}

/// Log-probs of each target of `ids` ([1, T]) with the given forced experts ([1, T, layers, k]).
fn logprobs(m: &Qwen3Model, ids: &[i64], forced: Option<&Tensor>) -> Vec<f32> {
    let t = ids.len() as i64;
    let x = Tensor::from_slice(ids).reshape([1, t]);
    let out = tch::no_grad(|| {
        Policy::forward(
            m,
            &PolicyInput {
                input_ids: &x,
                attention_mask: &Tensor::ones([1, t], (Kind::Int64, Device::Cpu)),
                position_ids: &Tensor::arange(t, (Kind::Int64, Device::Cpu)).reshape([1, t]),
                packed_seq_ids: None,
                forced_experts: forced,
            },
        )
        .unwrap()
    });
    let tgt = Tensor::from_slice(&ids[1..]).reshape([1, t - 1, 1]);
    let lp = out
        .logits()
        .unwrap()
        .log_softmax(-1, Kind::Float)
        .narrow(1, 0, t - 1)
        .gather(-1, &tgt, false)
        .reshape([-1]);
    Vec::<f32>::try_from(lp).unwrap()
}

#[test]
fn routing_replay_trains_with_the_rollouts_experts_and_the_switch_drops_them() {
    let model = tiny_moe();
    // Samples whose "engine" routed every position to experts (3, 2) in both layers, which the router would
    // not choose everywhere, and recorded its log-probs under that routing. Policy version 2, learner at 3.
    let mut samples = Vec::new();
    let mut forced_lp = Vec::new();
    for i in 0..3u32 {
        let mut s = sample_with_steps("g", i, 17, 2, 3, 2, 70 + i as u64);
        let t = s.token_ids.len();
        let ids: Vec<u16> = (0..t * 2).flat_map(|_| [3u16, 2]).collect();
        s.routed_experts = Some(RoutedExperts {
            layers: 2,
            k: 2,
            ids: ids.clone(),
        });
        s.policy_version = 2;
        let forced = Tensor::from_slice(&ids.iter().map(|&x| x as i64).collect::<Vec<_>>())
            .reshape([1, t as i64, 2, 2]);
        let tok: Vec<i64> = s.token_ids.iter().map(|&x| x as i64).collect();
        let lp = logprobs(&model, &tok, Some(&forced));
        let free = logprobs(&model, &tok, None);
        let diff = lp
            .iter()
            .zip(&free)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff > 1e-3,
            "forced experts must change the log-probs ({diff})"
        );
        for p in 1..t {
            s.rollout_logprobs[p] = if s.loss_mask[p] == 1 { lp[p - 1] } else { 0.0 };
        }
        forced_lp.push(lp);
        samples.push(s);
    }
    let scored: Vec<_> = samples
        .iter()
        .map(|s| scored_for(s, &[0.5, -0.5]))
        .collect();
    let batching = BatchingConfig {
        micro_batch: 2,
        token_budget: 0,
        pack: false,
        agg: AggMode::TokenMean,
        l_max: 16,
    };

    // pi_old from the trainer's forward equals the forced forward with replay, the free one without.
    let (mut items, _) = assemble(&samples, &scored, "replay").unwrap();
    let mut mbs = micro_batches(&items, &batching, Device::Cpu).unwrap();
    fill_old_logprobs(&model, None, &mut mbs, 1.0).unwrap();
    let old = mbs[0].old_logp.as_ref().unwrap().get(0);
    let want = Tensor::from_slice(&forced_lp[0]);
    let n = want.size()[0];
    assert!(
        old.narrow(0, 0, n).allclose(&want, 1e-5, 1e-5, false),
        "with replay, pi_old must use the rollout's experts"
    );
    assert_eq!(set_routing_replay(&mut items, true), 0);
    items[1].routed = None;
    assert_eq!(
        set_routing_replay(&mut items, true),
        1,
        "an item without routing under replay is counted, not passed over"
    );
    set_routing_replay(&mut items, false);
    assert!(items.iter().all(|it| it.routed.is_none()));

    // Through a whole learn round: with replay the engine's log-probs (taken under those experts) match the
    // trainer's pi_old; without it they do not.
    let loss = PolicyLossConfig {
        tis_cap: 2.0,
        ..PolicyLossConfig::clipped(RatioLevel::Segment, 0.2, 0.28)
    };
    let round = PlayedRound {
        samples,
        scored,
        gen_seconds: 1.0,
        ..Default::default()
    };
    let mismatch = |replay: bool| {
        let m = tiny_moe();
        let mut l = learner(&m.vs, 1e-3);
        let cfg = LearnConfig {
            loss: &loss,
            batching: &batching,
            ppo_epochs: 1,
            update_kl: false,
            routing_replay: replay,
            distill_coef: 0.0,
            task_coef: 1.0,
            device: Device::Cpu,
            reference: None,
            placebo: None,
        };
        let out = learn_round(&m, &mut l, &round, 3, &cfg, &[], None).unwrap();
        let get = |k: &str| out.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("rl/policy_lag"), 1.0);
        if replay {
            // Every sample carries the engine's choices: none routes afresh.
            assert_eq!(get("rl/samples_without_routing"), 0.0);
        }
        get("rl/mismatch_mean")
    };
    let (on, off) = (mismatch(true), mismatch(false));
    eprintln!("mean |log pi_old - log pi_rollout|: replay {on:.2e}, no replay {off:.2e}");
    assert!(on < 1e-5, "{on}");
    assert!(off > 1e-3, "{off}");
}

/// The KL term against a frozen reference, as a loss and in the reward. At the first epoch pi = pi_old, so the
/// policy term is -mean(A) and both modes add kl_coef * mean(KL) to the loss: as an aggregated term, or by
/// lowering every token's advantage by kl_coef * KL_t. A reference equal to the policy costs nothing; without
/// a reference nothing is reported.
#[test]
fn kl_to_the_reference_costs_kl_coef_times_kl_as_a_loss_or_in_the_reward() {
    let samples: Vec<_> = (0..4u32)
        .map(|i| sample_with_steps("g", i, 17, 2, 3, 2, 90 + i as u64))
        .collect();
    let scored: Vec<_> = samples
        .iter()
        .map(|s| scored_for(s, &[0.5, -0.25]))
        .collect();
    let round = PlayedRound {
        samples,
        scored,
        gen_seconds: 1.0,
        ..Default::default()
    };
    let batching = BatchingConfig {
        micro_batch: 4,
        token_budget: 0,
        pack: false,
        agg: AggMode::TokenMean,
        l_max: 16,
    };
    let loss_cfg = |kl_coef: f64, kl_in_reward: bool| PolicyLossConfig {
        kl_coef,
        kl_in_reward,
        ..PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.28)
    };
    // A reference that differs from the policy: the same shape, another seed.
    let other = Qwen3Model::random(tiny_moe().config.clone(), Device::Cpu, Kind::Float, 9).unwrap();
    let run = |cfg: &PolicyLossConfig, reference: Option<&Qwen3Model>| {
        let m = tiny_moe();
        let mut l = learner(&m.vs, 1e-3);
        let lc = LearnConfig {
            loss: cfg,
            batching: &batching,
            ppo_epochs: 1,
            update_kl: false,
            routing_replay: false,
            distill_coef: 0.0,
            task_coef: 1.0,
            device: Device::Cpu,
            reference,
            placebo: None,
        };
        let out = learn_round(&m, &mut l, &round, 0, &lc, &[], None).unwrap();
        let get = |k: &str| out.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        (get("rl/loss").unwrap(), get("rl/kl"))
    };
    let (base, kl_none) = run(&loss_cfg(0.0, false), None);
    assert!(
        kl_none.is_none_or(|k| k == 0.0),
        "no reference, no KL: {kl_none:?}"
    );
    let beta = 0.5;
    let (as_loss, kl) = run(&loss_cfg(beta, false), Some(&other));
    let kl = kl.expect("rl/kl with a reference");
    let (in_reward, kl2) = run(&loss_cfg(beta, true), Some(&other));
    eprintln!(
        "loss {base:.5}, KL {kl:.5}; with KL as a loss {as_loss:.5}, in the reward {in_reward:.5}"
    );
    assert!(kl > 1e-3, "a different reference must show a KL: {kl}");
    assert!((kl2.unwrap() - kl).abs() < 1e-6);
    assert!(
        (as_loss - (base + beta * kl)).abs() < 1e-4,
        "{as_loss} vs {base} + {beta} * {kl}"
    );
    assert!(
        (in_reward - (base + beta * kl)).abs() < 1e-4,
        "{in_reward} vs {base} + {beta} * {kl}"
    );
    let same = tiny_moe();
    let (_, kl_same) = run(&loss_cfg(beta, false), Some(&same));
    assert!(kl_same.unwrap().abs() < 1e-6, "{kl_same:?}");

    // The update's own size: KL(pi_old || pi_new) and ||d theta|| / ||theta|| are positive after a step at
    // lr 1e-3 and 0 at lr 0; the share of sampled tokens that are pi_old's argmax is a share.
    let diagnostics = |lr: f64| {
        let m = tiny_moe();
        let mut l = learner(&m.vs, lr);
        let lc = LearnConfig {
            loss: &loss_cfg(0.0, false),
            batching: &batching,
            ppo_epochs: 1,
            update_kl: true,
            routing_replay: false,
            distill_coef: 0.0,
            task_coef: 1.0,
            device: Device::Cpu,
            reference: None,
            placebo: None,
        };
        let out = learn_round(&m, &mut l, &round, 0, &lc, &[], None).unwrap();
        let get = |k: &str| {
            out.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{k} missing from {out:?}"))
        };
        (
            get("rl/kl_old_new"),
            get("rl/update_to_weight_ratio"),
            get("rl/greedy_token_frac"),
        )
    };
    let (kl, ratio, greedy) = diagnostics(1e-3);
    eprintln!("kl_old_new {kl:.3e}, update/weight {ratio:.3e}, greedy tokens {greedy:.3}");
    assert!(kl > 1e-8 && ratio > 1e-6, "{kl} {ratio}");
    assert!((0.0..=1.0).contains(&greedy), "{greedy}");
    let (kl0, ratio0, greedy0) = diagnostics(0.0);
    assert!(kl0.abs() < 1e-9 && ratio0 == 0.0, "{kl0} {ratio0}");
    assert_eq!(
        greedy0, greedy,
        "pi_old is the same model before the update"
    );
}

/// The default KL reference is the policy as RL starts, written once to `OUT/reference`: a later call (a resumed
/// run, whose policy has moved on) loads that snapshot instead of taking a new one.
#[test]
fn the_kl_reference_is_snapshotted_once_and_reloaded_on_resume() {
    let out = tempfile::tempdir().unwrap();
    let policy = tiny_moe();
    let reference = spar_trainer::reference::load_or_snapshot(&policy, None, out.path()).unwrap();
    assert!(out.path().join("reference/config.json").exists());
    assert!(!out.path().join("reference.tmp").exists());
    let ids = [1i64, 4, 7, 2, 9];
    assert_eq!(
        logprobs(&reference, &ids, None),
        logprobs(&policy, &ids, None)
    );
    // The policy trains on; the reference must not follow.
    tch::no_grad(|| {
        for (_, mut v) in policy.vs.variables() {
            let _ = v.f_mul_scalar_(1.5).unwrap();
        }
    });
    let again = spar_trainer::reference::load_or_snapshot(&policy, None, out.path()).unwrap();
    assert_eq!(
        logprobs(&again, &ids, None),
        logprobs(&reference, &ids, None)
    );
    assert_ne!(logprobs(&again, &ids, None), logprobs(&policy, &ids, None));
    // A configured reference folder is used as it is.
    let configured = spar_trainer::reference::load_or_snapshot(
        &tiny_moe(),
        Some(&out.path().join("reference")),
        &out.path().join("elsewhere"),
    )
    .unwrap();
    assert_eq!(
        logprobs(&configured, &ids, None),
        logprobs(&reference, &ids, None)
    );
    assert!(!out.path().join("elsewhere/reference").exists());
}

/// The placebo control permutes step advantages across the batch: the same multiset of step values, every token
/// of a step still carries one value, reproducible per seed and round, and the assignment really changes.
#[test]
fn placebo_permutes_step_advantages_across_the_batch() {
    let samples: Vec<_> = (0..6u32)
        .map(|i| sample_with_steps("g", i, 17, 2, 3, 2, 40 + i as u64))
        .collect();
    let scored: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| scored_for(s, &[i as f64 * 0.1 - 0.2, 0.3 - i as f64 * 0.05]))
        .collect();
    let (items, _) = spar_trainer::batch::assemble(&samples, &scored, "test").unwrap();
    let steps = |items: &[spar_trainer::batch::TrainItem]| -> Vec<Vec<f32>> {
        items
            .iter()
            .map(|it| {
                let mut per: std::collections::BTreeMap<i64, Vec<f32>> = Default::default();
                for p in 0..it.len() {
                    if it.step_ids[p] >= 0 && it.mask[p] > 0.0 {
                        per.entry(it.step_ids[p])
                            .or_default()
                            .push(it.advantages[p]);
                    }
                }
                per.values()
                    .map(|v| {
                        assert!(v.iter().all(|a| *a == v[0]), "one value per step: {v:?}");
                        v[0]
                    })
                    .collect()
            })
            .collect()
    };
    let before = steps(&items);
    let mut a = items.clone();
    let n = spar_trainer::placebo::shuffle_step_advantages(&mut a, 5, 1);
    assert_eq!(n, before.iter().map(Vec::len).sum::<usize>());
    let after = steps(&a);
    let sorted = |v: &[Vec<f32>]| {
        let mut f: Vec<f32> = v.iter().flatten().copied().collect();
        f.sort_by(f32::total_cmp);
        f
    };
    assert_eq!(
        sorted(&before),
        sorted(&after),
        "same multiset of advantages"
    );
    assert_ne!(before, after, "the assignment changes");
    let mut b = items.clone();
    spar_trainer::placebo::shuffle_step_advantages(&mut b, 5, 1);
    assert_eq!(steps(&b), after, "reproducible");
    let mut c = items.clone();
    spar_trainer::placebo::shuffle_step_advantages(&mut c, 5, 2);
    assert_ne!(steps(&c), after, "another round, another permutation");
    // Tokens outside every step keep 0.
    for it in &a {
        for p in 0..it.len() {
            if it.step_ids[p] < 0 {
                assert_eq!(it.advantages[p], 0.0);
            }
        }
    }
}
