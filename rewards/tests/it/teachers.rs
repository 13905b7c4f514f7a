//! The ablation teachers of `[trainer.sft_expert]` as the reward pipeline sees them: the Fact-Aware teacher's
//! differential claim is one the rule extractor finds and the knowledge base decides as intended, and the
//! SPAR-vs-GRPO teacher's re-asks are what the redundant-question detector flags and the stage score does not
//! charge for.
use spar_core::sample::{ClaimLabel, Role, Turn};
use spar_core::traits::StageScorer;
use spar_core::{Case, Stage};
use spar_data::expert::{DdxClaims, ExpertOptions, PartialExpert, PartialExpertOptions};
use spar_data::kb::KnowledgeBase;
use spar_rewards::ClinicalStageScorer;
use spar_rewards::fact::extract::{ClaimOrigin, extract_claim_spans};
use spar_rewards::steps::detectors::{StepView, redundant_question};
use std::sync::Arc;

fn all_cases() -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/cases/cases.jsonl");
    spar_data::load_cases(&path).unwrap()
}

fn replies(turns: &[Turn], stage: Stage) -> Vec<String> {
    turns
        .iter()
        .filter(|t| t.role == Role::Assistant && t.stage == Some(stage))
        .map(|t| t.text.clone())
        .collect()
}

#[test]
fn the_fact_teachers_claims_are_extracted_and_decided_by_the_knowledge_base() {
    let kb = Arc::new(KnowledgeBase::load_default().unwrap());
    let cases = all_cases();
    let scorer = ClinicalStageScorer::new(Default::default());
    let (mut made, mut false_ones) = (0usize, 0usize);
    for c in &cases {
        let plain = PartialExpertOptions::default();
        let with = PartialExpertOptions {
            claims: Some(DdxClaims {
                kb: kb.clone(),
                false_rate: 0.3,
            }),
            ..PartialExpertOptions::default()
        };
        let e = PartialExpert::new(c, ExpertOptions::default(), &with);
        let Some((claim, truthful)) = e.ddx_claim() else {
            continue;
        };
        made += 1;
        false_ones += !truthful as usize;
        let turns = e.transcript();
        let ddx = replies(&turns, Stage::Ddx);
        assert!(ddx[0].ends_with(&claim), "{}: {}", c.id, ddx[0]);
        // The prose claim; the differential's coded items are claims of their own (checked elsewhere).
        let found: Vec<String> = extract_claim_spans(&ddx[0])
            .into_iter()
            .filter(|c| c.origin != ClaimOrigin::StageBlock)
            .map(|c| c.text)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: extracted {found:?} from {}",
            c.id,
            ddx[0]
        );
        let label = kb.verify_claim(&found[0]).label;
        let want = if truthful {
            ClaimLabel::Supported
        } else {
            ClaimLabel::Refuted
        };
        assert_eq!(label, want, "{}: {}", c.id, found[0]);
        // The claim costs nothing in the differential's stage score.
        let base = PartialExpert::new(c, ExpertOptions::default(), &plain).transcript();
        let s_with = scorer.score(c, Stage::Ddx, &ddx, &turns).score;
        let s_without = scorer
            .score(c, Stage::Ddx, &replies(&base, Stage::Ddx), &base)
            .score;
        assert!(
            (s_with - s_without).abs() < 1e-9,
            "{}: {s_with} vs {s_without}",
            c.id
        );
    }
    let share = false_ones as f64 / made.max(1) as f64;
    eprintln!(
        "{made} of {} cases carry a claim; {false_ones} false ({share:.2})",
        cases.len()
    );
    assert!(
        made as f64 >= 0.9 * cases.len() as f64,
        "{made} of {}",
        cases.len()
    );
    assert!((0.2..=0.4).contains(&share), "false share {share}");
}

#[test]
fn the_spar_teachers_reasks_are_redundant_questions_that_cost_no_coverage() {
    let cases = all_cases();
    let scorer = ClinicalStageScorer::new(Default::default());
    let (mut reasks, mut flagged, mut questions, mut flagged_other) = (0, 0, 0, 0);
    for c in cases.iter().take(120) {
        let opts = |reask_rate| PartialExpertOptions {
            seed: 4,
            reask_rate,
            ..PartialExpertOptions::default()
        };
        let base = PartialExpert::new(c, ExpertOptions::default(), &opts(0.0));
        let e = PartialExpert::new(c, ExpertOptions::default(), &opts(0.3));
        assert_eq!(e.questions(), base.questions(), "{}: the same plan", c.id);
        let turns = e.transcript();
        let asked = replies(&turns, Stage::Inquiry);
        reasks += e.choices().reasked_questions.len();
        let mut earlier: Vec<String> = Vec::new();
        for r in &asked {
            let v = StepView {
                user: "",
                reply: r,
                earlier_replies: &earlier,
                earlier_user: &[],
            };
            let is_reask = r.starts_with(spar_data::expert::REASK_PREFIX);
            if redundant_question(&v, c) {
                if is_reask {
                    flagged += 1;
                } else {
                    flagged_other += 1;
                }
            }
            questions += !is_reask as usize;
            earlier.push(r.clone());
        }
        let b = base.transcript();
        let with = scorer.score(c, Stage::Inquiry, &asked, &turns).score;
        let without = scorer
            .score(c, Stage::Inquiry, &replies(&b, Stage::Inquiry), &b)
            .score;
        assert!(
            (with - without).abs() < 1e-9,
            "{}: inquiry {with} vs {without}",
            c.id
        );
    }
    eprintln!(
        "{reasks} re-asks, {flagged} flagged; {flagged_other} of {questions} other questions flagged"
    );
    assert!(reasks >= 100, "{reasks} re-asks over 120 cases");
    assert_eq!(flagged, reasks, "every re-ask is a redundant question");
    assert!(
        flagged_other * 20 <= questions,
        "{flagged_other} of {questions}"
    );
}
