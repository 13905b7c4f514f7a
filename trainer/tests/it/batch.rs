//! Batch assembly from Sample + Scored: per-step advantages spread over the step's sampled tokens.
use super::common::{sample_with_steps, scored_for};
use spar_trainer::batch::*;
use tch::Device;

#[test]
fn advantages_spread_over_each_steps_tokens() {
    let s = sample_with_steps("g", 0, 50, 2, 3, 2, 9);
    let sc = scored_for(&s, &[1.5, -0.25]);
    let it = item_from(&s, &sc).unwrap();
    // Tokens: [p p r r r p p r r r]; position-aligned arrays predict token p+1.
    assert_eq!(it.mask, vec![0., 1., 1., 1., 0., 0., 1., 1., 1., 0.]);
    assert_eq!(
        it.advantages,
        vec![0., 1.5, 1.5, 1.5, 0., 0., -0.25, -0.25, -0.25, 0.]
    );
    assert_eq!(it.step_ids, vec![-1, 0, 0, 0, -1, -1, 1, 1, 1, -1]);
    assert_eq!(it.targets[..9], it.input_ids[1..]);
    assert_eq!(it.rollout_logp[1], -2.0);
}

#[test]
fn dropped_and_unscored_samples_are_counted() {
    let a = sample_with_steps("g", 0, 50, 2, 3, 1, 1);
    let b = sample_with_steps("g", 1, 50, 2, 3, 1, 2);
    let c = sample_with_steps("g", 2, 50, 2, 3, 1, 3);
    let mut sb = scored_for(&b, &[0.3]);
    sb.drop_reason = Some("simulator_failed".into());
    let (items, rep) = assemble(&[a.clone(), b, c], &[scored_for(&a, &[1.0]), sb], "x").unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(rep.dropped_by_rewards, 1);
    assert_eq!(rep.missing_scored, 1);
    // A score with another number of steps than its sample is an error naming the field.
    let e = format!(
        "{:#}",
        assemble(
            std::slice::from_ref(&a),
            &[scored_for(&a, &[1.0, 2.0])],
            "in.jsonl"
        )
        .unwrap_err()
    );
    assert!(e.contains("in.jsonl") && e.contains("steps"), "{e}");
}

#[test]
fn token_budget_and_packing() {
    let items: Vec<TrainItem> = (0..5)
        .map(|i| {
            let s = sample_with_steps("g", i, 50, 2, 2 + i as usize, 1, i as u64);
            item_from(&s, &scored_for(&s, &[1.0])).unwrap()
        })
        .collect();
    // Lengths 4..8; padded cost = max_len * count.
    let plan = plan_micro_batches(&items, 1, 16, false);
    for mb in &plan {
        let max = mb.iter().map(|&i| items[i].len()).max().unwrap();
        assert!(max * mb.len() <= 16 || mb.len() == 1, "{plan:?}");
    }
    assert_eq!(plan.iter().map(|m| m.len()).sum::<usize>(), 5);
    let packed = plan_micro_batches(&items, 1, 13, true);
    for mb in &packed {
        assert!(mb.iter().map(|&i| items[i].len()).sum::<usize>() <= 13 || mb.len() == 1);
    }
    let refs: Vec<&TrainItem> = items.iter().collect();
    let mb = collate(&refs, true, Device::Cpu).unwrap();
    assert_eq!(
        mb.input_ids.size(),
        vec![1, items.iter().map(|i| i.len() as i64).sum::<i64>()]
    );
    assert_eq!(mb.n_segs, 5);
    // Positions restart per packed sample.
    assert_eq!(mb.position_ids.int64_value(&[0, 4]), 0);
    assert_eq!(mb.position_ids.int64_value(&[0, 3]), 3);
}
