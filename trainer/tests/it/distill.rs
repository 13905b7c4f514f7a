//! Distillation: the Clip-Forward-KL mask against hand-computed values, and students that move toward their
//! teachers, offline (Clip-Forward-KL on teacher samples) and on-policy (reverse-KL advantage on the student's
//! own samples).
use super::common::{TinyLm, learner};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use spar_trainer::agg::{AggMode, Aggregator};
use spar_trainer::batch::TrainItem;
use spar_trainer::distill::clip_forward_kl;
use spar_trainer::distill_loop::distill_update;
use spar_trainer::learner::{BatchingConfig, RlExtras, rl_update_with};
use spar_trainer::policy::{Policy, PolicyInput};
use spar_trainer::policy_loss::{KlEstimator, PolicyLossConfig, RatioLevel};
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 13;
const PROMPT: usize = 2;
const LEN: usize = 10;

#[test]
fn clip_forward_kl_matches_hand_computed_mask_value_and_gradient() {
    // Token 0: student below teacher (active). Token 1: above (clipped). Token 2: equal (clipped: the student
    // already matches). Token 3: below but masked out.
    let logp = Tensor::from_slice(&[-1.0f64, -2.0, -0.5, -3.0])
        .reshape([1, 4])
        .set_requires_grad(true);
    let teacher = Tensor::from_slice(&[-0.5f64, -3.0, -0.5, -1.0]).reshape([1, 4]);
    let mask = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 0.0]).reshape([1, 4]);
    let seq = Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu));
    let agg = Aggregator {
        mode: AggMode::TokenMean,
        l_max: 1.0,
        total_tokens: 3.0,
        total_seqs: 1.0,
    };
    let loss = clip_forward_kl(&logp, &teacher, &mask, &seq, 1, &agg);
    assert!((loss.double_value(&[]) - 1.0 / 3.0).abs() < 1e-12);
    loss.backward();
    let g = Vec::<f64>::try_from(logp.grad().reshape([-1])).unwrap();
    assert_eq!(g, vec![-1.0 / 3.0, 0.0, 0.0, 0.0]);
    // Sequence-mean aggregation over two sequences: seq 0 has one active token of 2, seq 1 one of 1.
    let seq2 = Tensor::from_slice(&[0i64, 0, 1, -1]).reshape([1, 4]);
    let logp2 = Tensor::from_slice(&[-1.0f64, -2.0, -4.0, -3.0]).reshape([1, 4]);
    let agg2 = Aggregator {
        mode: AggMode::SeqMeanTokenMean,
        l_max: 1.0,
        total_tokens: 3.0,
        total_seqs: 2.0,
    };
    let l2 = clip_forward_kl(&logp2, &teacher, &mask, &seq2, 2, &agg2);
    // seq 0: (1.0 + 0) / 2 = 0.5; seq 1: 4.0 / 1 = 4.0; mean 2.25.
    assert!((l2.double_value(&[]) - 2.25).abs() < 1e-12);
}

fn forward(m: &dyn Policy, ids: &Tensor) -> Tensor {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand([b, t], true)
        .contiguous();
    let attn = Tensor::ones([b, t], (Kind::Int64, Device::Cpu));
    m.forward(&PolicyInput {
        input_ids: ids,
        attention_mask: &attn,
        position_ids: &pos,
        packed_seq_ids: None,
        forced_experts: None,
    })
    .unwrap()
    .logits()
    .unwrap()
    .log_softmax(-1, Kind::Float)
}

/// `n` sequences: `PROMPT` uniform tokens, then `LEN - PROMPT` tokens sampled from `m`.
fn sample(m: &dyn Policy, n: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<i64>> {
    let mut seqs: Vec<Vec<i64>> = (0..n)
        .map(|_| (0..PROMPT).map(|_| rng.random_range(0..VOCAB)).collect())
        .collect();
    tch::no_grad(|| {
        for _ in PROMPT..LEN {
            let ids = Tensor::from_slice2(&seqs);
            let logp = forward(m, &ids).select(1, -1);
            let p = Vec::<Vec<f32>>::try_from(logp.exp()).unwrap();
            for (s, probs) in seqs.iter_mut().zip(p) {
                let u: f32 = rng.random();
                let mut acc = 0.0;
                let mut tok = VOCAB - 1;
                for (v, q) in probs.iter().enumerate() {
                    acc += q;
                    if u < acc {
                        tok = v as i64;
                        break;
                    }
                }
                s.push(tok);
            }
        }
    });
    seqs
}

/// Training items over `seqs` (loss on the sampled tokens); `rollout_logp` = log-probs under `behaviour`.
fn items(seqs: &[Vec<i64>], behaviour: &dyn Policy) -> Vec<TrainItem> {
    let ids = Tensor::from_slice2(seqs);
    let lp = tch::no_grad(|| forward(behaviour, &ids));
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let t = s.len();
            let mut targets = vec![0i64; t];
            let mut mask = vec![0f32; t];
            let mut rlp = vec![0f32; t];
            let mut step_ids = vec![-1i64; t];
            for p in 0..t - 1 {
                targets[p] = s[p + 1];
                if p + 1 >= PROMPT {
                    mask[p] = 1.0;
                    step_ids[p] = 0;
                    rlp[p] = lp.double_value(&[i as i64, p as i64, s[p + 1]]) as f32;
                }
            }
            TrainItem {
                group_id: "g".into(),
                sample_idx: i as u32,
                input_ids: s.clone(),
                targets,
                mask,
                advantages: vec![0.0; t],
                step_ids,
                n_steps: 1,
                rollout_logp: rlp,
                routed: None,
                reward: 0.0,
            }
        })
        .collect()
}

/// Exact mean over the sampled positions of `seqs` of KL(student || teacher), summed over the vocabulary.
fn reverse_kl(student: &dyn Policy, teacher: &dyn Policy, seqs: &[Vec<i64>]) -> f64 {
    tch::no_grad(|| {
        let ids = Tensor::from_slice2(seqs);
        let ls = forward(student, &ids);
        let lt = forward(teacher, &ids);
        let kl = (ls.exp() * (&ls - &lt)).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        kl.narrow(1, PROMPT as i64 - 1, (LEN - PROMPT) as i64)
            .mean(Kind::Double)
            .double_value(&[])
    })
}

fn batching() -> BatchingConfig {
    BatchingConfig {
        micro_batch: 16,
        token_budget: 0,
        pack: false,
        agg: AggMode::TokenMean,
        l_max: 16,
    }
}

#[test]
fn offline_clip_forward_kl_moves_the_student_toward_the_teacher() {
    let teacher = TinyLm::new(VOCAB, 16, Kind::Float, 1);
    let student = TinyLm::new(VOCAB, 16, Kind::Float, 2);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let train = items(&sample(&teacher, 64, &mut rng), &teacher);
    let held_out = sample(&teacher, 32, &mut rng);
    let before = reverse_kl(&student, &teacher, &held_out);
    let mut l = learner(&student.vs, 3e-2);
    let mut fkl = Vec::new();
    for _ in 0..40 {
        let rep = distill_update(&student, &mut l, &train, &batching(), Device::Cpu).unwrap();
        assert!(!rep.skipped);
        fkl.push(rep.extra["distill/forward_kl"]);
    }
    let after = reverse_kl(&student, &teacher, &held_out);
    eprintln!(
        "offline distillation: held-out KL(student||teacher) {before:.4} -> {after:.4}; train forward KL {:.4} -> {:.4}",
        fkl[0],
        fkl[fkl.len() - 1]
    );
    assert!(after < 0.5 * before, "KL {before} -> {after}");
    assert!(fkl[fkl.len() - 1] < 0.5 * fkl[0]);
}

#[test]
fn on_policy_reverse_kl_moves_the_student_toward_the_teacher() {
    let teacher = TinyLm::new(VOCAB, 16, Kind::Float, 11);
    let student = TinyLm::new(VOCAB, 16, Kind::Float, 12);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(6);
    let held_out = sample(&teacher, 32, &mut rng);
    let before = reverse_kl(&student, &teacher, &held_out);
    let mut l = learner(&student.vs, 3e-2);
    let cfg = PolicyLossConfig {
        tis_cap: 2.0,
        ..PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.28)
    };
    let mut seen = Vec::new();
    for _ in 0..40 {
        // The student's own samples; the task advantage is 0, so the teacher's reverse KL is the only signal.
        let batch = items(&sample(&student, 64, &mut rng), &student);
        let mut extras = RlExtras {
            teachers: vec![("t".into(), &teacher as &dyn Policy)],
            distill_coef: 1.0,
            task_coef: 1.0,
            critic: None,
            update_kl: false,
        };
        let rep = rl_update_with(
            &student,
            None,
            &mut l,
            &batch,
            &cfg,
            &batching(),
            1,
            Device::Cpu,
            &mut extras,
        )
        .unwrap()
        .remove(0);
        seen.push(rep.extra["distill/reverse_kl/t"]);
    }
    let after = reverse_kl(&student, &teacher, &held_out);
    let n = seen.len();
    eprintln!(
        "on-policy distillation: held-out KL(student||teacher) {before:.4} -> {after:.4}; sampled reverse KL {:.4} -> {:.4}",
        seen[0],
        seen[n - 1]
    );
    assert!(after < 0.6 * before, "KL {before} -> {after}");
    let first: f64 = seen[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = seen[n - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.6 * first, "sampled reverse KL {first} -> {last}");
}

#[test]
fn on_policy_distillation_advantage_is_the_mean_teacher_log_ratio() {
    // Two teachers, task advantage 0.5 everywhere, task_coef 2, coef 0.5: every trained token's advantage is
    // 2 * 0.5 + 0.5 * mean_t(log pi_t - log pi_old); checked through the logged per-teacher KLs, which must
    // equal the hand-computed means of log pi_old - log pi_t.
    let s = TinyLm::new(VOCAB, 8, Kind::Float, 21);
    let t1 = TinyLm::new(VOCAB, 8, Kind::Float, 22);
    let t2 = TinyLm::new(VOCAB, 8, Kind::Float, 23);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let seqs = sample(&s, 4, &mut rng);
    let batch = items(&seqs, &s);
    let ids = Tensor::from_slice2(&seqs);
    let tgt = ids.narrow(1, 1, LEN as i64 - 1).unsqueeze(-1);
    let lp = |m: &dyn Policy| {
        tch::no_grad(|| forward(m, &ids))
            .narrow(1, 0, LEN as i64 - 1)
            .gather(-1, &tgt, false)
            .squeeze_dim(-1)
            .narrow(1, PROMPT as i64 - 1, (LEN - PROMPT) as i64)
    };
    let (ls, l1, l2) = (lp(&s), lp(&t1), lp(&t2));
    let want1 = (&ls - &l1).mean(Kind::Double).double_value(&[]);
    let want2 = (&ls - &l2).mean(Kind::Double).double_value(&[]);
    let mut l = learner(&s.vs, 1e-3);
    let cfg = PolicyLossConfig {
        kl_estimator: KlEstimator::K1,
        ..PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.2)
    };
    let mut with_adv = batch.clone();
    for it in &mut with_adv {
        for (a, m) in it.advantages.iter_mut().zip(&it.mask) {
            *a = 0.5 * m;
        }
    }
    let mut extras = RlExtras {
        teachers: vec![("a".into(), &t1 as &dyn Policy), ("b".into(), &t2)],
        distill_coef: 0.5,
        task_coef: 2.0,
        critic: None,
        update_kl: false,
    };
    let rep = rl_update_with(
        &s,
        None,
        &mut l,
        &with_adv,
        &cfg,
        &batching(),
        1,
        Device::Cpu,
        &mut extras,
    )
    .unwrap()
    .remove(0);
    assert!((rep.extra["distill/reverse_kl/a"] - want1).abs() < 1e-5);
    assert!((rep.extra["distill/reverse_kl/b"] - want2).abs() < 1e-5);
    // At ratio 1 the token-mean PPO loss is -mean(advantage) = -(1 + 0.5 * mean_t(l_t - l_s)).
    let want_loss = -(1.0 - 0.5 * (want1 + want2) / 2.0);
    assert!(
        (rep.loss - want_loss).abs() < 1e-5,
        "loss {} want {want_loss}",
        rep.loss
    );
}

#[test]
fn offline_distillation_from_a_teacher_samples_file() {
    // Teacher samples written as the Sample wire format (what `spar rollout --model TEACHER` writes), read back
    // by the trainer and learned in rounds drawn from the file with the run's RNG.
    use spar_core::sample::*;
    let teacher = TinyLm::new(VOCAB, 16, Kind::Float, 31);
    let student = TinyLm::new(VOCAB, 16, Kind::Float, 32);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(8);
    let seqs = sample(&teacher, 48, &mut rng);
    let held_out = sample(&teacher, 32, &mut rng);
    let samples: Vec<Sample> = items(&seqs, &teacher)
        .into_iter()
        .zip(&seqs)
        .map(|(it, s)| {
            let t = s.len();
            let mut lp = vec![0f32; t];
            lp[1..t].copy_from_slice(&it.rollout_logp[..t - 1]);
            Sample {
                schema_version: SCHEMA_VERSION,
                run_id: "teacher".into(),
                case_id: "c".into(),
                group_id: "g".into(),
                sample_idx: it.sample_idx,
                stages: vec![spar_core::Stage::Inquiry],
                mode: EpisodeMode::Fresh,
                policy_version: 0,
                end_reason: EndReason::Done,
                token_ids: s.iter().map(|&x| x as u32).collect(),
                loss_mask: (0..t).map(|p| (p >= PROMPT) as u8).collect(),
                rollout_logprobs: lp,
                routed_experts: None,
                steps: vec![StepSpan {
                    stage: spar_core::Stage::Inquiry,
                    start: PROMPT,
                    end: t,
                }],
                turns: vec![],
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("teacher.jsonl");
    spar_data::write_samples(&path, &samples).unwrap();
    let read = spar_data::read_samples(&path).unwrap();
    let origin = path.display().to_string();
    let pool =
        spar_trainer::distill_loop::teacher_sample_items(&read, &origin, VOCAB as usize).unwrap();
    assert_eq!(pool.len(), 48);
    // The file's log-probs are the teacher's, position-aligned like the items built in memory.
    assert_eq!(
        pool[3].rollout_logp,
        items(&seqs[3..4], &teacher)[0].rollout_logp
    );
    let err = spar_trainer::distill_loop::teacher_sample_items(&read, &origin, 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token_ids") && err.contains("teacher.jsonl"),
        "{err}"
    );

    let before = reverse_kl(&student, &teacher, &held_out);
    let mut l = learner(&student.vs, 3e-2);
    let mut draw = spar_trainer::rng::new_rng(0);
    for _ in 0..40 {
        let m = spar_trainer::distill_loop::offline_round_from_pool(
            &student,
            &mut l,
            &pool,
            &mut draw,
            16,
            &batching(),
            Device::Cpu,
        )
        .unwrap();
        assert!(m.iter().any(|(k, _)| k == "distill/forward_kl"));
    }
    let after = reverse_kl(&student, &teacher, &held_out);
    eprintln!(
        "offline distillation from a file: held-out KL(student||teacher) {before:.4} -> {after:.4}"
    );
    assert!(after < 0.5 * before, "KL {before} -> {after}");
}
