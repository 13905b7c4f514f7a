//! RL that measurably works: the sign of an update follows the advantage, a round without signal takes no
//! optimizer step, and a positive control (reward 1 for a marker token the untrained model emits ~25% of the
//! time) is learned through the real advantage estimator of spar-rewards, batch assembly and `rl_update`.
use super::common::{TinyLm, learner, sample_with_steps, scored_for};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spar_core::Sample;
use spar_rewards::advantage::{AdvantageParams, estimate};
use spar_trainer::agg::AggMode;
use spar_trainer::batch::assemble;
use spar_trainer::learner::{BatchingConfig, micro_batches, rl_update};
use spar_trainer::policy::{Policy, PolicyInput, PolicyOutput};
use spar_trainer::policy_loss::{PolicyLossConfig, RatioLevel, gather_logprobs};
use tch::{Device, Kind, Tensor, nn};

fn batching() -> BatchingConfig {
    BatchingConfig {
        micro_batch: 8,
        token_budget: 0,
        pack: false,
        agg: AggMode::SeqMeanTokenMean,
        l_max: 64,
    }
}

fn segment_loss() -> PolicyLossConfig {
    PolicyLossConfig::clipped(RatioLevel::Segment, 3e-4, 4e-4)
}

/// Sum of the log-probs of `s`'s trained tokens under `policy`.
fn sequence_logprob(policy: &dyn Policy, s: &Sample) -> f64 {
    let zeros = vec![0.0; s.steps.len()];
    let (items, _) = assemble(std::slice::from_ref(s), &[scored_for(s, &zeros)], "test").unwrap();
    let mbs = micro_batches(&items, &batching(), Device::Cpu).unwrap();
    let mb = &mbs[0];
    let out = tch::no_grad(|| {
        policy.forward(&PolicyInput {
            input_ids: &mb.input_ids,
            attention_mask: &mb.attention_mask,
            position_ids: &mb.position_ids,
            packed_seq_ids: mb.packed_seq_ids.as_ref(),
            forced_experts: None,
        })
    })
    .unwrap();
    (gather_logprobs(&out.logits().unwrap(), &mb.targets, 1.0) * &mb.mask)
        .sum(Kind::Double)
        .double_value(&[])
}

#[test]
fn one_step_with_a_positive_advantage_raises_the_sequence_logprob_and_a_negative_one_lowers_it() {
    for (adv, rises) in [(1.0, true), (-1.0, false)] {
        let model = TinyLm::new(20, 8, Kind::Float, 4);
        let mut l = learner(&model.vs, 1e-2);
        let s = sample_with_steps("g", 0, 20, 3, 4, 2, 7);
        let before = sequence_logprob(&model, &s);
        let (items, _) = assemble(
            std::slice::from_ref(&s),
            &[scored_for(&s, &[adv, adv])],
            "test",
        )
        .unwrap();
        let rep = rl_update(
            &model,
            None,
            &mut l,
            &items,
            &segment_loss(),
            &batching(),
            1,
            Device::Cpu,
        )
        .unwrap();
        assert!(!rep[0].skipped);
        let after = sequence_logprob(&model, &s);
        assert_eq!(
            after > before,
            rises,
            "A = {adv}: log-prob {before} -> {after}"
        );
        assert!((after - before).abs() > 1e-3, "{before} -> {after}");
    }
}

fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, ta), (kb, tb))| ka == kb && ta.equal(tb))
}

#[test]
fn a_round_whose_advantages_are_all_zero_takes_no_optimizer_step() {
    let model = TinyLm::new(20, 8, Kind::Float, 5);
    let mut l = learner(&model.vs, 1e-2);
    let samples: Vec<Sample> = (0..4)
        .map(|i| sample_with_steps("g", i, 20, 3, 4, 2, 10 + i as u64))
        .collect();
    let train = |l: &mut spar_trainer::learner::Learner, adv: f64| {
        let scored: Vec<_> = samples
            .iter()
            .map(|s| scored_for(s, &[adv, -adv]))
            .collect();
        let (items, _) = assemble(&samples, &scored, "test").unwrap();
        rl_update(
            &model,
            None,
            l,
            &items,
            &segment_loss(),
            &batching(),
            2,
            Device::Cpu,
        )
        .unwrap()
    };
    // A round with signal first, so Adam has momentum that a skipped round must not replay.
    let rep = train(&mut l, 1.0);
    assert!(rep.iter().all(|r| !r.skipped && !r.skipped_empty_advantage));
    let (weights, adam, steps) = (snapshot(&model.vs), l.adamw.state_tensors(), l.step);
    let adam_step = l.adamw.step;
    let rep = train(&mut l, 0.0);
    assert_eq!(rep.len(), 1);
    assert!(rep[0].skipped && rep[0].skipped_empty_advantage);
    assert!(same(&weights, &snapshot(&model.vs)), "weights moved");
    let adam_after = l.adamw.state_tensors();
    assert!(same(&adam, &adam_after), "Adam state moved");
    assert_eq!((l.step, l.adamw.step), (steps, adam_step));
    // With an entropy bonus the loss trains on its own: the round is not skipped.
    let scored: Vec<_> = samples.iter().map(|s| scored_for(s, &[0.0, 0.0])).collect();
    let (items, _) = assemble(&samples, &scored, "test").unwrap();
    let cfg = PolicyLossConfig {
        entropy_coef: 0.01,
        ..segment_loss()
    };
    let rep = rl_update(
        &model,
        None,
        &mut l,
        &items,
        &cfg,
        &batching(),
        1,
        Device::Cpu,
    )
    .unwrap();
    assert!(!rep[0].skipped_empty_advantage);
    assert!(!same(&weights, &snapshot(&model.vs)));
}

/// [`TinyLm`] plus a learned output bias, set so that after the toy prompt the marker token has probability
/// 0.25 and another token (the greedy reply) 0.45.
struct MarkerLm {
    lm: TinyLm,
    bias: Tensor,
}

const VOCAB: i64 = 8;
const MARKER: i64 = 5;
const GREEDY: i64 = 2;
const PROMPT: [u32; 3] = [1, 3, 4];

impl MarkerLm {
    fn new() -> MarkerLm {
        let lm = TinyLm::new(VOCAB, 8, Kind::Float, 11);
        let z = tch::no_grad(|| next_logits(&lm));
        let mut p = vec![0.3 / (VOCAB - 2) as f64; VOCAB as usize];
        p[MARKER as usize] = 0.25;
        p[GREEDY as usize] = 0.45;
        let want = Tensor::from_slice(&p).to_kind(Kind::Float).log();
        let bias = lm.vs.root().var_copy("bias", &(want - z));
        MarkerLm { lm, bias }
    }

    /// The next-token distribution after the prompt.
    fn next_probs(&self) -> Vec<f64> {
        let z = tch::no_grad(|| next_logits(self));
        Vec::<f64>::try_from(z.softmax(-1, Kind::Double)).unwrap()
    }
}

/// Logits of the token after [`PROMPT`] (`[V]`).
fn next_logits(p: &dyn Policy) -> Tensor {
    let ids = Tensor::from_slice(&PROMPT.map(|x| x as i64)).unsqueeze(0);
    let n = PROMPT.len() as i64;
    let out = p
        .forward(&PolicyInput {
            input_ids: &ids,
            attention_mask: &Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
            position_ids: &Tensor::arange(n, (Kind::Int64, Device::Cpu)).unsqueeze(0),
            packed_seq_ids: None,
            forced_experts: None,
        })
        .unwrap();
    out.logits().unwrap().get(0).get(n - 1)
}

impl Policy for MarkerLm {
    fn var_store(&self) -> &nn::VarStore {
        &self.lm.vs
    }
    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.lm.vs
    }
    fn forward(&self, input: &PolicyInput) -> anyhow::Result<PolicyOutput> {
        let out = self.lm.forward(input)?;
        // Out of place on purpose: tch's `+=` is the in-place `add_`, which autograd may refuse here.
        Ok(PolicyOutput::from_logits(out.logits()? + &self.bias))
    }
}

/// A one-token reply to the prompt, sampled from `probs` with `u` uniform in [0, 1).
fn draw(probs: &[f64], u: f64) -> (u32, f32) {
    let mut acc = 0.0;
    for (t, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return (t as u32, p.ln() as f32);
        }
    }
    let t = probs.len() - 1;
    (t as u32, probs[t].ln() as f32)
}

/// Trains [`MarkerLm`] on groups of 8 sampled replies, reward 1 for the marker, advantages from spar-rewards'
/// estimator (negated when `placebo`), for at most `max_rounds` rounds or until the marker is the greedy reply
/// with p > 0.8. Returns (p(marker) after training, the round the greedy reply flipped, sampled rewards).
fn train_marker(placebo: bool, max_rounds: usize) -> (f64, Option<usize>, Vec<f64>) {
    let model = MarkerLm::new();
    let start = model.next_probs();
    assert!((start[MARKER as usize] - 0.25).abs() < 1e-4, "{start:?}");
    assert_eq!(argmax(&start), GREEDY as usize);
    let mut l = learner(&model.lm.vs, 3e-2);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let params = AdvantageParams::default();
    let group = 8usize;
    let mut flipped_at = None;
    let mut sampled_reward = Vec::new();
    for round in 0..max_rounds {
        let probs = model.next_probs();
        if probs[MARKER as usize] > 0.8 && argmax(&probs) == MARKER as usize {
            flipped_at = Some(round);
            break;
        }
        let mut samples = Vec::new();
        let mut rewards = Vec::new();
        for i in 0..group {
            let (tok, lp) = draw(&probs, rng.random::<f64>());
            let mut s = sample_with_steps(&format!("r{round}"), i as u32, VOCAB as u32, 3, 1, 1, 0);
            s.token_ids = PROMPT.iter().copied().chain([tok]).collect();
            s.rollout_logprobs = vec![0.0, 0.0, 0.0, lp];
            rewards.push(if tok as i64 == MARKER { 1.0 } else { 0.0 });
            samples.push(s);
        }
        sampled_reward.push(rewards.iter().sum::<f64>() / group as f64);
        // The real estimator (SPAR's default: group baseline, sigma floor, clip), one step per reply.
        let mut advantages = estimate(&rewards, &vec![vec![1.0]; group], &params);
        if placebo {
            for a in advantages.iter_mut().flatten() {
                *a = -*a;
            }
        }
        let scored: Vec<_> = samples
            .iter()
            .zip(&advantages)
            .map(|(s, a)| scored_for(s, a))
            .collect();
        let (items, _) = assemble(&samples, &scored, "positive control").unwrap();
        rl_update(
            &model,
            None,
            &mut l,
            &items,
            &segment_loss(),
            &batching(),
            1,
            Device::Cpu,
        )
        .unwrap();
    }
    (
        model.next_probs()[MARKER as usize],
        flipped_at,
        sampled_reward,
    )
}

fn argmax(p: &[f64]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}

#[test]
fn positive_control_a_rewarded_marker_token_is_learned_and_becomes_the_greedy_reply() {
    let max_rounds = 25;
    let (p, flipped_at, rewards) = train_marker(false, max_rounds);
    let Some(rounds) = flipped_at else {
        panic!(
            "after {max_rounds} rounds p(marker) = {p:.3} (start 0.25), not the greedy reply; sampled rewards \
             {rewards:?}"
        )
    };
    assert!(p > 0.8);
    eprintln!(
        "positive control: p(marker) 0.25 -> {p:.3}, greedy reply flipped after {rounds} rounds"
    );
    // The same rounds with the advantages' sign flipped push the marker away: the rise is the signal's.
    let (p_placebo, flipped, _) = train_marker(true, rounds.max(1));
    assert!(flipped.is_none());
    assert!(
        p_placebo < 0.2,
        "negated advantages: p(marker) 0.25 -> {p_placebo:.3}"
    );
}

/// A one-epoch update takes pi_old from its own forward (detached) instead of a no-grad pass before it: its
/// report (loss, grad norm, clipping, ratio, greedy share) is the first epoch of a two-epoch update, which
/// still runs the separate pass, on the same weights and batch. Tolerance: the same float32 ops in the same
/// order on the CPU, so 1e-6 relative.
#[test]
fn a_one_epoch_update_takes_pi_old_from_its_own_forward() {
    let samples: Vec<Sample> = (0..4)
        .map(|i| sample_with_steps("g", i, 20, 3, 4, 2, 11 + i as u64))
        .collect();
    let scored: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| scored_for(s, &[0.5 - i as f64 * 0.3, 0.2 * i as f64 - 0.4]))
        .collect();
    let (items, _) = assemble(&samples, &scored, "test").unwrap();
    let mut reports = Vec::new();
    for epochs in [1, 2] {
        let model = TinyLm::new(20, 8, Kind::Float, 4);
        let mut l = learner(&model.vs, 1e-2);
        let loss = PolicyLossConfig {
            entropy_coef: 0.01,
            ..PolicyLossConfig::clipped(RatioLevel::Token, 0.2, 0.28)
        };
        let rep = rl_update(
            &model,
            None,
            &mut l,
            &items,
            &loss,
            &batching(),
            epochs,
            Device::Cpu,
        )
        .unwrap();
        reports.push(rep[0].clone());
    }
    let (one, two) = (&reports[0], &reports[1]);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    assert!(close(one.loss, two.loss), "{} vs {}", one.loss, two.loss);
    assert!(one.grad_norm > 0.0 && close(one.grad_norm, two.grad_norm));
    assert_eq!(one.stats.tokens, two.stats.tokens);
    assert!(close(one.stats.ratio_sum, two.stats.ratio_sum));
    assert_eq!(
        one.stats.ratio_sum, one.stats.tokens,
        "pi_old = pi_theta: every ratio 1"
    );
    let greedy = |r: &spar_trainer::learner::StepReport| r.extra["rl/greedy_token_frac"];
    assert!(
        close(greedy(one), greedy(two)),
        "{} vs {}",
        greedy(one),
        greedy(two)
    );
}
