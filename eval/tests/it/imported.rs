//! Cases imported from the field's formats (`spar data import`: AgentClinic's OSCE and NEJM layouts, SCAN-style
//! cases) play like the shipped ones: the scripted expert consults the scripted patient through rollout's
//! environment, every stage output parses and scores, and the expert's final diagnosis is right, as it is on the
//! shipped cases (`held_out.rs`).
use spar_core::Stage;
use spar_core::recipe::{EvalSection, RolloutSection};
use spar_data::import::{ImportFormat, import};
use spar_data::kb::KnowledgeBase;
use spar_eval::HeldOutEval;
use spar_rollout::Policy;
use spar_rollout::env::ExpertDoctor;
use spar_rollout::testing::CharCodec;
use std::path::PathBuf;
use std::sync::Arc;

#[test]
fn imported_cases_play_with_the_scripted_expert_and_patient_like_shipped_ones() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/tests/fixtures/import");
    let kb = KnowledgeBase::load_default().unwrap();
    let mut cases = Vec::new();
    for (file, format) in [
        ("agentclinic_medqa.jsonl", ImportFormat::AgentClinic),
        ("agentclinic_nejm.jsonl", ImportFormat::AgentClinic),
        ("scan_cases.json", ImportFormat::Scan),
    ] {
        cases.extend(import(&fixtures.join(file), format, &kb).unwrap().cases);
    }
    spar_data::redact::redact_cases(&mut cases);
    assert_eq!(cases.len(), 6);
    let (rt, pipeline) = super::common::runtime_and_pipeline();
    let rollout = RolloutSection {
        turn_limits: [8, 2, 2, 2],
        ..Default::default()
    };
    let eval = EvalSection {
        max_new_tokens: 1024,
        concurrency: 3,
        ..Default::default()
    };
    let held_out = HeldOutEval {
        cases: &cases,
        rollout: &rollout,
        eval: &eval,
        codec: Arc::new(CharCodec),
        scorer: pipeline.stage_scorer(),
        pipeline: &pipeline,
        rt: &rt,
        seed: 3,
        samples_per_case: 1,
        simulator: Arc::new(spar_rollout::simulator::ScriptedPatient),
        backend: None,
    };
    let (got, transcripts) = held_out
        .run(Policy::Scripted(Arc::new(
            ExpertDoctor::with_inquiry_turns(8),
        )))
        .unwrap();
    assert_eq!(got.episodes, 6);
    assert_eq!(got.parsed_rate, 1.0, "{got:?}\n{transcripts}");
    assert_eq!(got.stage_means[Stage::Diag.index()], 1.0, "{got:?}");
    assert!(got.stage_means[Stage::Inquiry.index()] > 0.0, "{got:?}");
    assert!(got.reward_mean > 0.0, "{got:?}");
    // The patient answered from the imported record (the expert's questions hit its items).
    assert!(
        transcripts.contains("Double vision in the evening"),
        "{transcripts}"
    );
}
