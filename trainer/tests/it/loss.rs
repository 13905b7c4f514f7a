//! Loss functions against hand-computed values.
use spar_trainer::agg::{AggMode, Aggregator};
use spar_trainer::policy_loss::*;
use tch::{Kind, Tensor};

fn t2(v: &[f64], cols: i64) -> Tensor {
    Tensor::from_slice(v)
        .reshape([-1, cols])
        .to_kind(Kind::Double)
}
fn i2(v: &[i64], cols: i64) -> Tensor {
    Tensor::from_slice(v).reshape([-1, cols])
}
fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}
fn agg(mode: AggMode, l_max: usize, tokens: f64, seqs: f64) -> Aggregator {
    Aggregator {
        mode,
        l_max: l_max as f64,
        total_tokens: tokens,
        total_seqs: seqs,
    }
}

#[test]
fn aggregation_modes_by_hand() {
    let loss = t2(&[1., 2., 3., 4., 5., 0.], 3);
    let mask = t2(&[1., 1., 1., 1., 1., 0.], 3);
    let seq = i2(&[0, 0, 0, 1, 1, -1], 3);
    let v = |m, l| {
        agg(m, l, 5.0, 2.0)
            .apply(&loss, &mask, &seq, 2)
            .double_value(&[])
    };
    close(v(AggMode::TokenMean, 1), 3.0);
    close(v(AggMode::SeqMeanTokenSum, 1), 7.5);
    close(v(AggMode::SeqMeanTokenMean, 1), 3.25);
    close(v(AggMode::SeqMeanTokenSumNorm, 4), 1.875);
    // The same two sequences packed into one row aggregate per sequence, not per row.
    let loss_p = t2(&[1., 2., 3., 4., 5.], 5);
    let mask_p = t2(&[1.; 5], 5);
    let seq_p = i2(&[0, 0, 0, 1, 1], 5);
    close(
        agg(AggMode::SeqMeanTokenMean, 1, 5.0, 2.0)
            .apply(&loss_p, &mask_p, &seq_p, 2)
            .double_value(&[]),
        3.25,
    );
    // Micro-batches with the mini-batch's denominators add up to the whole.
    for mode in [
        AggMode::TokenMean,
        AggMode::SeqMeanTokenSum,
        AggMode::SeqMeanTokenMean,
        AggMode::SeqMeanTokenSumNorm,
    ] {
        let a = agg(mode, 4, 5.0, 2.0);
        let whole = a.apply(&loss, &mask, &seq, 2).double_value(&[]);
        let first = a
            .apply(
                &loss.narrow(0, 0, 1),
                &mask.narrow(0, 0, 1),
                &i2(&[0, 0, 0], 3),
                1,
            )
            .double_value(&[]);
        let second = a
            .apply(
                &loss.narrow(0, 1, 1),
                &mask.narrow(0, 1, 1),
                &i2(&[0, 0, -1], 3),
                1,
            )
            .double_value(&[]);
        close(first + second, whole);
    }
}

struct Case {
    logp: Tensor,
    old: Tensor,
    adv: Tensor,
    mask: Tensor,
    seq: Tensor,
    seg: Tensor,
    n_segs: usize,
}

fn run(c: &PolicyLossConfig, x: &Case, mode: AggMode) -> PolicyLossOutput {
    let a = Aggregator::local(mode, 1, &x.mask, &x.seq);
    policy_loss(
        c,
        &a,
        &PolicyLossInput {
            logp: &x.logp,
            old_logp: &x.old,
            rollout_logp: &x.old,
            ref_logp: None,
            entropy: None,
            advantages: &x.adv,
            mask: &x.mask,
            seq_ids: &x.seq,
            n_seqs: 1,
            seg_ids: &x.seg,
            n_segs: x.n_segs,
        },
    )
}

/// One sequence of 4 tokens with log-ratios `lr` and advantages `adv`, each token its own step.
fn tokens(lr: &[f64], adv: &[f64]) -> Case {
    let n = lr.len() as i64;
    Case {
        logp: t2(lr, n) - 1.0,
        old: t2(&vec![-1.0; lr.len()], n),
        adv: t2(adv, n),
        mask: t2(&vec![1.0; lr.len()], n),
        seq: i2(&vec![0; lr.len()], n),
        seg: i2(&(0..n).collect::<Vec<_>>(), n),
        n_segs: lr.len(),
    }
}

#[test]
fn ppo_clip_both_sides() {
    let (e, h) = (0.5f64.exp(), (-0.5f64).exp());
    // Token 0: ratio e^0.5, A = +1 -> clipped high: -1.2. Token 1: ratio e^-0.5, A = -1 -> clipped low: 0.8.
    // Token 2: ratio e^0.5, A = -1 -> not clipped (pessimistic side): e^0.5. Token 3: ratio e^-0.5, A = +1 -> -e^-0.5.
    let x = tokens(&[0.5, -0.5, 0.5, -0.5], &[1.0, -1.0, -1.0, 1.0]);
    let out = run(
        &PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.2),
        &x,
        AggMode::TokenMean,
    );
    close(out.loss.double_value(&[]), (-1.2 + 0.8 + e - h) / 4.0);
    close(out.stats.clipped_high, 1.0);
    close(out.stats.clipped_low, 1.0);
    // Asymmetric: eps_high = 0.7 no longer clips token 0.
    let out = run(
        &PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.7),
        &x,
        AggMode::TokenMean,
    );
    close(out.loss.double_value(&[]), (-e + 0.8 + e - h) / 4.0);
    close(out.stats.clipped_high, 0.0);
}

#[test]
fn dual_clip_caps_negative_advantage() {
    let x = tokens(&[2.0], &[-1.0]);
    let mut c = PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.2);
    close(
        run(&c, &x, AggMode::TokenMean).loss.double_value(&[]),
        2f64.exp(),
    );
    c.dual_clip = 3.0;
    close(run(&c, &x, AggMode::TokenMean).loss.double_value(&[]), 3.0);
}

#[test]
fn segment_ratio_is_one_per_step() {
    // Step 0: tokens with log-ratios 0.2, 0.4 (s_0 = e^0.3, A_0 = 1); step 1: one token -0.1 (s_1 = e^-0.1, A_1 = -2).
    let x = Case {
        logp: t2(&[0.2, 0.4, -0.1], 3) - 1.0,
        old: t2(&[-1.0, -1.0, -1.0], 3),
        adv: t2(&[1.0, 1.0, -2.0], 3),
        mask: t2(&[1.0, 1.0, 1.0], 3),
        seq: i2(&[0, 0, 0], 3),
        seg: i2(&[0, 0, 1], 3),
        n_segs: 2,
    };
    let (s0, s1) = (0.3f64.exp(), (-0.1f64).exp());
    let wide = PolicyLossConfig::clipped(RatioLevel::Segment, 10.0, 10.0);
    close(
        run(&wide, &x, AggMode::TokenMean).loss.double_value(&[]),
        (-2.0 * s0 + 2.0 * s1) / 3.0,
    );
    close(
        run(&wide, &x, AggMode::SeqMeanTokenSum)
            .loss
            .double_value(&[]),
        -2.0 * s0 + 2.0 * s1,
    );
    // GSPO's default ranges: s_0 = e^0.3 > 1 + 4e-4 with A > 0 -> clipped; s_1 = e^-0.1 < 1 - 3e-4 with A < 0 -> clipped.
    let gspo = PolicyLossConfig::clipped(RatioLevel::Segment, 3e-4, 4e-4);
    let out = run(&gspo, &x, AggMode::TokenMean);
    close(
        out.loss.double_value(&[]),
        (-2.0 * 1.0004 + 2.0 * (1.0 - 3e-4)) / 3.0,
    );
    close(out.stats.clipped_high, 2.0);
    close(out.stats.clipped_low, 1.0);
    // Sequence-level GSPO: one ratio for all three tokens.
    let s = (0.5f64 / 3.0).exp();
    close(
        run(
            &PolicyLossConfig::clipped(RatioLevel::Sequence, 10.0, 10.0),
            &x,
            AggMode::TokenMean,
        )
        .loss
        .double_value(&[]),
        (-2.0 * s + 2.0 * s) / 3.0,
    );
}

#[test]
fn truncated_importance_weight_and_mismatch() {
    let x = tokens(&[0.0, 0.0], &[1.0, 1.0]);
    let rollout = t2(&[-1.0 - 3f64.ln(), -1.0 - 0.5f64.ln()], 2);
    let mut c = PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.2);
    c.tis_cap = 2.0;
    let a = Aggregator::local(AggMode::TokenMean, 1, &x.mask, &x.seq);
    let out = policy_loss(
        &c,
        &a,
        &PolicyLossInput {
            logp: &x.logp,
            old_logp: &x.old,
            rollout_logp: &rollout,
            ref_logp: None,
            entropy: None,
            advantages: &x.adv,
            mask: &x.mask,
            seq_ids: &x.seq,
            n_seqs: 1,
            seg_ids: &x.seg,
            n_segs: 2,
        },
    );
    // Weights min(3, 2) = 2 and min(0.5, 2) = 0.5; ratio 1.
    close(out.loss.double_value(&[]), (-2.0 - 0.5) / 2.0);
    close(out.stats.mismatch_max, 3f64.ln());
    close(out.stats.mismatch_sum, 3f64.ln() + 2f64.ln());
    close(out.stats.tis_truncated, 1.0);
}

#[test]
fn kl_estimators_by_hand() {
    let logp = Tensor::from_slice(&[0.5f64]);
    let r = Tensor::from_slice(&[0.0f64]);
    close(KlEstimator::K1.estimate(&logp, &r).double_value(&[0]), 0.5);
    close(
        KlEstimator::K2.estimate(&logp, &r).double_value(&[0]),
        0.125,
    );
    close(
        KlEstimator::K3.estimate(&logp, &r).double_value(&[0]),
        (-0.5f64).exp() + 0.5 - 1.0,
    );
}

#[test]
fn kl_and_entropy_terms_enter_the_loss() {
    let x = tokens(&[0.0, 0.0], &[0.0, 0.0]);
    let reference = t2(&[-1.5, -1.5], 2);
    let ent = t2(&[2.0, 1.0], 2);
    let mut c = PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.2);
    c.kl_coef = 0.1;
    c.kl_estimator = KlEstimator::K1;
    c.entropy_coef = 0.01;
    let a = Aggregator::local(AggMode::TokenMean, 1, &x.mask, &x.seq);
    let out = policy_loss(
        &c,
        &a,
        &PolicyLossInput {
            logp: &x.logp,
            old_logp: &x.old,
            rollout_logp: &x.old,
            ref_logp: Some(&reference),
            entropy: Some(&ent),
            advantages: &x.adv,
            mask: &x.mask,
            seq_ids: &x.seq,
            n_seqs: 1,
            seg_ids: &x.seg,
            n_segs: 2,
        },
    );
    close(out.loss.double_value(&[]), 0.1 * 0.5 - 0.01 * 1.5);
}

#[test]
fn non_finite_logprobs_are_masked_and_counted() {
    let mut x = tokens(&[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0]);
    x.logp = t2(&[-1.0, f64::NEG_INFINITY, f64::NAN], 3);
    let out = run(
        &PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.2),
        &x,
        AggMode::SeqMeanTokenSum,
    );
    close(out.stats.non_finite, 2.0);
    let v = out.loss.double_value(&[]);
    assert!(v.is_finite(), "{v}");
    close(v, -1.0);
}

#[test]
fn clip_forward_kl_only_pulls_up() {
    use spar_trainer::distill::clip_forward_kl;
    let logp = t2(&[-2.0, -0.5], 2);
    let teacher = t2(&[-1.0, -1.0], 2);
    let mask = t2(&[1.0, 1.0], 2);
    let seq = i2(&[0, 0], 2);
    let a = Aggregator::local(AggMode::TokenMean, 1, &mask, &seq);
    close(
        clip_forward_kl(&logp, &teacher, &mask, &seq, 1, &a).double_value(&[]),
        2.0 / 2.0,
    );
}
