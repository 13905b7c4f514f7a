//! The shipped cases and the scripted expert's gold consultations through the default pipeline (rule judge on
//! the cases' rule rubrics, knowledge-base verifier, lexical encoder): gold beats degraded consultations.
use spar_core::grammar::{NamedDx, render_diagnosis};
use spar_core::recipe::{ClaimCacheKind, RewardsSection};
use spar_core::sample::*;
use spar_core::{Case, Sample, Stage};
use spar_data::expert::Expert;
use spar_rewards::{Injected, RewardPipeline};

/// A whole-episode sample of `turns`: every assistant turn is a sampled step (one fake token per word).
pub fn episode(case: &Case, group: &str, idx: u32, turns: Vec<Turn>) -> Sample {
    let (mut ids, mut mask, mut lp, mut steps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in &turns {
        ids.extend([1, 2, 3]);
        mask.extend([0, 0, 0]);
        lp.extend([0.0, 0.0, 0.0]);
        let start = ids.len();
        let n = t.text.split_whitespace().count() + 1;
        let sampled = t.role == Role::Assistant;
        for k in 0..n {
            ids.push(100 + k as u32);
            mask.push(u8::from(sampled));
            lp.push(if sampled { -1.0 } else { 0.0 });
        }
        if sampled {
            steps.push(StepSpan {
                stage: t.stage.unwrap_or(Stage::Inquiry),
                start,
                end: ids.len(),
            });
        }
    }
    Sample {
        schema_version: SCHEMA_VERSION,
        run_id: "expert".into(),
        case_id: case.id.clone(),
        group_id: group.into(),
        sample_idx: idx,
        stages: Stage::ALL.to_vec(),
        mode: EpisodeMode::Fresh,
        policy_version: 0,
        end_reason: EndReason::Done,
        token_ids: ids,
        loss_mask: mask,
        rollout_logprobs: lp,
        routed_experts: None,
        steps,
        turns,
    }
}

/// The gold consultation with its first question asked twice and a wrong final diagnosis.
pub fn degraded(gold: &[Turn]) -> Vec<Turn> {
    let mut t = gold.to_vec();
    if let Some(q) = t.iter().position(|x| x.role == Role::Assistant) {
        let (ask, answer) = (t[q].clone(), t[q + 1].clone());
        t.insert(q + 2, ask);
        t.insert(q + 3, answer);
    }
    let last = t.len() - 1;
    t[last].text = render_diagnosis(&NamedDx {
        name: "Tension-type headache".into(),
        icd10: Some("G44.209".into()),
    });
    t
}

pub fn shipped_cases(n: usize) -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/cases/cases.jsonl");
    spar_data::load_cases(&path)
        .unwrap()
        .into_iter()
        .filter(|c| !c.diagnosis.icd10.starts_with('G'))
        .take(n)
        .collect()
}

#[tokio::test]
async fn gold_consultations_beat_degraded_ones() {
    let mut cfg = RewardsSection::default();
    cfg.fact.cache = ClaimCacheKind::Memory;
    let p = RewardPipeline::new(&cfg, Injected::default())
        .await
        .unwrap();
    for case in shipped_cases(3) {
        let gold = Expert::new(&case).transcript();
        let g = vec![
            episode(&case, &case.id, 0, gold.clone()),
            episode(&case, &case.id, 1, degraded(&gold)),
        ];
        let out = p.score_group(&case, &g).await;
        assert!(
            out.iter().all(|s| s.drop_reason.is_none()),
            "{:?}",
            out.iter().map(|s| &s.drop_reason).collect::<Vec<_>>()
        );
        assert!(
            out[0].r_task > out[1].r_task,
            "{}: gold {} vs degraded {}",
            case.id,
            out[0].r_task,
            out[1].r_task
        );
        assert!(out[0].reward > out[1].reward);
        assert!(
            out[0].components["g_diag"] == 1.0 && out[1].components["g_diag"] == 0.0,
            "{:?}",
            out[0].components
        );
        assert!(
            out[1].steps[1]
                .violations
                .contains(&"repetition".to_string()),
            "{:?}",
            out[1].steps[1]
        );
        assert!(out[1].steps[1].gamma < 1.0);
        assert!(out[0].steps.iter().all(|s| s.advantage > 0.0));
    }
}
