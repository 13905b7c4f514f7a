//! Consultations end to end: the tiny model over all four stages, and the segmented pipeline's pools and gate.
use super::common::{ScriptedDoctor, full_forward_logprobs, scripted_rollout, tiny_model};
use spar_core::Stage;
use spar_core::recipe::RolloutSection;
use spar_core::sample::EndReason;
use spar_rollout::testing::{CharCodec, tiny_case};
use spar_rollout::{Policy, Rollout, StagePools};
use std::sync::Arc;

fn section(segmented: bool) -> RolloutSection {
    let mut s = RolloutSection {
        segmented,
        group_size: 3,
        groups_per_step: 2,
        max_batch: 4,
        kv_slots: 8,
        max_seq_len: 2048,
        turn_limits: [2, 1, 1, 1],
        ..Default::default()
    };
    s.sampling.max_new_tokens = 12;
    s.interruption_rate = 0.5;
    s.system_prompt = "Be brief.".into();
    s
}

fn rollout(cfg: RolloutSection) -> Rollout {
    let mut second = tiny_case();
    second.id = "resp-0002".into();
    scripted_rollout(cfg, vec![tiny_case(), second], "test")
}

/// The group sink got each returned group once, in the returned order, with the same samples (its copies are
/// sent before promotion, so only `promoted` may differ).
fn assert_sunk_in_order(
    sink: &mut tokio::sync::mpsc::UnboundedReceiver<spar_rollout::Group>,
    groups: &[spar_rollout::Group],
) {
    let mut sunk = Vec::new();
    while let Ok(g) = sink.try_recv() {
        sunk.push(g);
    }
    let ids =
        |gs: &[spar_rollout::Group]| gs.iter().map(|g| g.group_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&sunk), ids(groups), "the group sink's order");
    for (a, b) in sunk.iter().zip(groups) {
        let json = |g: &spar_rollout::Group| serde_json::to_string(&g.samples).unwrap();
        assert_eq!(json(a), json(b), "group {}'s samples", b.group_id);
        assert!(a.promoted.is_empty());
    }
}

#[test]
fn tiny_model_plays_all_four_stages_and_logprobs_match_a_fresh_pass() {
    let model = tiny_model(false);
    let mut r = rollout(section(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    r.set_sample_sink(Some(tx));
    let (gtx, mut grx) = tokio::sync::mpsc::unbounded_channel();
    r.set_group_sink(Some(gtx));
    let groups = r.collect_groups(Policy::Builtin(&model), 2).unwrap();
    assert_eq!(groups.len(), 2);
    let mut streamed = 0;
    while rx.try_recv().is_ok() {
        streamed += 1;
    }
    assert_eq!(streamed, 6, "every sample reaches the sink");
    assert_sunk_in_order(&mut grx, &groups);
    let mut checked = 0;
    for g in &groups {
        assert_eq!(g.samples.len(), 3);
        // One opening per group.
        let openings: Vec<_> = g
            .samples
            .iter()
            .map(|s| {
                (
                    s.mode,
                    s.turns
                        .iter()
                        .take(3)
                        .map(|t| t.text.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert!(openings.windows(2).all(|w| w[0] == w[1]));
        for s in &g.samples {
            s.check().unwrap();
            if s.end_reason == EndReason::SimulatorEnded {
                continue;
            }
            checked += 1;
            // A random model reaches Diag through the turn limits.
            assert_eq!(
                s.stages,
                vec![Stage::Inquiry, Stage::Ddx, Stage::Lab, Stage::Diag],
                "{:?}",
                s.end_reason
            );
            let full = full_forward_logprobs(&model, &s.token_ids);
            let mut sampled = 0;
            for (i, (&m, &lp)) in s.loss_mask.iter().zip(&s.rollout_logprobs).enumerate() {
                if m == 1 {
                    sampled += 1;
                    assert!(
                        (lp - full[i]).abs() < 1e-4,
                        "token {i}: rollout {lp} vs fresh {}",
                        full[i]
                    );
                    assert!(s.steps.iter().any(|st| st.start <= i && i < st.end));
                } else {
                    assert_eq!(lp, 0.0);
                }
            }
            assert_eq!(
                sampled,
                s.steps.iter().map(|st| st.end - st.start).sum::<usize>()
            );
        }
    }
    assert!(
        checked >= 3,
        "most episodes of a random model reach Diag through the turn limits"
    );
    assert!(r.last_round().generated_tokens > 0);
}

#[test]
fn segmented_pipeline_gates_promotes_and_mixes_stages() {
    let mut r = rollout(section(true)).with_backend(Arc::new(ScriptedDoctor {
        codec: CharCodec,
        fail_odd_ddx: true,
    }));
    let mut all = Vec::new();
    let mut promoted_to: Vec<Stage> = Vec::new();
    let (gtx, mut grx) = tokio::sync::mpsc::unbounded_channel();
    r.set_group_sink(Some(gtx));
    for round in 0..4 {
        let groups = r.collect_groups(Policy::External, 2).unwrap();
        assert_sunk_in_order(&mut grx, &groups);
        // Pooled segments come first, latest stage first; fresh Inquiry cases fill the rest (stages mix).
        let mut want: Vec<Stage> = promoted_to.clone();
        want.sort_by_key(|s| std::cmp::Reverse(s.index()));
        want.truncate(2);
        while want.len() < 2 {
            want.push(Stage::Inquiry);
        }
        let got: Vec<Stage> = groups.iter().map(|g| g.stage.unwrap()).collect();
        assert_eq!(got, want, "round {round}");
        promoted_to = groups
            .iter()
            .filter(|g| !g.promoted.is_empty())
            .map(|g| g.stage.unwrap().next().unwrap())
            .collect();
        all.extend(groups);
    }
    assert!(
        all.iter().any(|g| g.stage == Some(Stage::Diag)),
        "some case reaches Diag"
    );
    for g in &all {
        let stage = g.stage.unwrap();
        for (s, v) in g.samples.iter().zip(&g.gate_scores) {
            assert_eq!(s.stages, vec![stage]);
            // Loss only on this stage's replies: the pooled prefix is context.
            assert!(s.steps.iter().all(|st| st.stage == stage));
            let first = s.steps[0].start;
            assert!(s.loss_mask[..first].iter().all(|&m| m == 0));
            if stage == Stage::Ddx {
                // Odd seeds answered without tags: V = 0 < tau, gated out.
                match s.end_reason {
                    EndReason::GatedOut => assert_eq!(*v, Some(0.0)),
                    EndReason::Done => assert_eq!(*v, Some(1.0)),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(g.promoted.len() <= 1, "top_m = 1");
        for p in &g.promoted {
            assert_eq!(g.samples[*p as usize].end_reason, EndReason::Done);
        }
    }
    assert!(
        all.iter().any(|g| g
            .samples
            .iter()
            .any(|s| s.end_reason == EndReason::GatedOut)),
        "some DDX samples fail the gate"
    );
    assert!(
        all.iter()
            .filter(|g| g.stage == Some(Stage::Diag))
            .all(|g| g.samples.iter().all(|s| s.end_reason == EndReason::Done))
    );
    // Pools are plain data: a checkpoint round trip restores them exactly.
    let saved = serde_json::to_string(r.pools()).unwrap();
    let back: StagePools = serde_json::from_str(&saved).unwrap();
    assert_eq!(&back, r.pools());
    // Round 5 opens fresh cases again.
    let g5 = r.collect_groups(Policy::External, 3).unwrap();
    assert!(g5.iter().all(|g| g.stage == Some(Stage::Inquiry)));
}
