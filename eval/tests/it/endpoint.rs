//! The policy under evaluation as an OpenAI-compatible chat endpoint, played through rollout's environment: a
//! fake server plays a scripted doctor (the scripted expert of `spar-data`, which recognises the case from the
//! patient's opening words), and the report is checked. An endpoint that fails (HTTP 500, a body that is not JSON)
//! fails that consultation with its reason; a reply that is merely nonsense is a bad answer and is scored, not
//! failed; the run goes on either way.
use super::common::eval_models;
use spar_clients::{ChatMessage, OpenAiChatBackend};
use spar_core::Case;
use spar_core::recipe::EvalSection;
use spar_core::sample::{Role, Turn};
use spar_data::expert::Expert;
use spar_eval::consultation::EpisodeEnd;
use spar_eval::run::{EvalPlan, run_eval};
use spar_eval::{ConsultationConfig, EvalPolicy, EvalReport, EvalSetup};
use spar_rollout::simulator::ScriptedPatient;
use spar_testkit::{FakeReply, FakeServer, FakeServerConfig, Scripted};
use std::sync::Arc;

/// A doctor behind HTTP: the scripted expert for the case whose opening the conversation starts with; nonsense
/// for `babble`; HTTP 500 for `down`, a body that is not JSON for `broken` (every time: the client's retry fails
/// too).
fn scripted_doctor(
    openings: Vec<(String, Case)>,
    babble: String,
    down: String,
    broken: String,
) -> FakeServerConfig {
    FakeServerConfig {
        model: "scripted-doctor".into(),
        chat: Arc::new(move |messages: &[ChatMessage]| {
            let dialogue: Vec<Turn> = messages
                .iter()
                .filter(|m| m.role != "system")
                .map(|m| {
                    let role = if m.role == "assistant" {
                        Role::Assistant
                    } else {
                        Role::User
                    };
                    Turn::new(role, m.content.clone())
                })
                .collect();
            let first = dialogue.first().map_or("", |t| t.text.as_str());
            let Some((_, case)) = openings.iter().find(|(o, _)| o == first) else {
                return FakeReply::from("I do not know this patient.");
            };
            if case.id == babble {
                return FakeReply::from("Purple elephants ✓✓ {{{ lorem ipsum ]] 42");
            }
            if case.id == down {
                return FakeReply::failing(Scripted::Status(500));
            }
            if case.id == broken {
                return FakeReply::failing(Scripted::Malformed);
            }
            FakeReply::from(Expert::new(case).next_utterance(&dialogue).1)
        }),
        ..Default::default()
    }
}

// `run_eval` runs from a plain thread (it drives rollout's runtime); the fake server runs on `rt`.
#[test]
fn endpoint_policy_is_evaluated_and_failures_stay_per_episode() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cases, seen) = super::consultation::validation_cases();
    let cases: Vec<Case> = cases.into_iter().take(5).collect();
    assert_eq!(cases.len(), 5, "need five shipped validation cases");
    // The system prompt is the first message; the patient's opening (the scripted patient's) the first user turn.
    let openings = cases
        .iter()
        .map(|c| (ScriptedPatient::opening_line(c), c.clone()))
        .collect();
    let srv = rt
        .block_on(FakeServer::start(scripted_doctor(
            openings,
            cases[2].id.clone(),
            cases[0].id.clone(),
            cases[1].id.clone(),
        )))
        .unwrap();
    let mut ep = srv.endpoint();
    ep.max_retries = 1;
    let policy = EvalPolicy::chat(Arc::new(OpenAiChatBackend::from_endpoint(&ep).unwrap()));

    let eval = EvalSection::default();
    let models = eval_models(&eval, false);
    let plan = EvalPlan {
        cases: cases.clone(),
        seen: Some(seen),
        consultation: ConsultationConfig::default(),
        healthbench: vec![],
        healthbench_cfg: EvalPlan::healthbench_config(&eval),
        setup: EvalSetup {
            split: Some("validation".into()),
            ..Default::default()
        },
    };
    let report = run_eval(&policy, &plan, &models).unwrap();
    assert!(
        report
            .policy
            .starts_with("scripted-doctor @ http://127.0.0.1:"),
        "{}",
        report.policy
    );

    let ep = &report.episodes;
    assert_eq!(ep.len(), 5);
    assert_eq!(ep[0].end, EpisodeEnd::PolicyFailed);
    assert_eq!(ep[1].end, EpisodeEnd::PolicyFailed);
    let (e0, e1) = (ep[0].error.clone().unwrap(), ep[1].error.clone().unwrap());
    assert!(e0.contains("500"), "{e0}");
    assert_ne!(e0, e1);
    assert!(
        ep[0].stages.is_empty(),
        "a failed consultation is not scored"
    );
    // Nonsense is a bad answer, not an outage: history taking runs to the limit and every stage scores 0.
    assert_eq!(ep[2].end, EpisodeEnd::InquiryLimit);
    assert!(ep[2].error.is_none());
    assert!(
        ep[2].stages.values().all(|s| s.score == 0.0),
        "{:?}",
        ep[2].stages
    );
    for e in &ep[3..] {
        assert_eq!(e.end, EpisodeEnd::Done, "{}: {:?}", e.case_id, e.error);
        assert!(e.stage(spar_core::Stage::Inquiry).unwrap() > 0.5);
        assert!(e.stage(spar_core::Stage::Lab).unwrap() > 0.5);
        assert_eq!(e.stage(spar_core::Stage::Diag), Some(1.0));
    }

    let c = report.consultation.as_ref().unwrap();
    let g = &c.overall;
    assert_eq!((g.episodes, g.failed), (5, 2));
    // Means over the three scored consultations: the two expert ones and the nonsense one.
    for (name, v) in [
        ("inquiry", g.stages.inquiry),
        ("lab", g.stages.lab),
        ("diagnosis", g.stages.diag),
    ] {
        let v = v.unwrap();
        assert!(v > 0.3 && v < 1.0, "{name} {v}");
    }
    assert!((g.stages.diag.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(c.end_reasons["policy_failed"], 2);
    // One department per case; the failed ones are counted there, not scored.
    assert_eq!(c.by_department.len(), 5);
    let d0 = &c.by_department[&cases[0].department];
    assert_eq!((d0.episodes, d0.failed, d0.composite), (1, 1, None));
    let d3 = &c.by_department[&cases[3].department];
    assert!(d3.composite.unwrap() > 0.8);

    let dir = tempfile::tempdir().unwrap();
    let files = report.write(dir.path()).unwrap();
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("### By department"), "{md}");
    assert!(md.contains("### Failed consultations"), "{md}");
    assert!(
        md.contains(&format!("| {} | policy_failed |", cases[0].id)),
        "{md}"
    );
    let back = EvalReport::read(dir.path()).unwrap();
    assert_eq!(back.episodes[0].error.as_deref(), Some(e0.as_str()));
    // report.json keeps numbers as decimal text; compare them to the last bit or two.
    let (a, b) = (back.consultation.unwrap().overall, g);
    assert_eq!((a.episodes, a.failed), (b.episodes, b.failed));
    assert!((a.composite.unwrap() - b.composite.unwrap()).abs() < 1e-12);
    eprintln!("recorded reasons:\n  {e0}\n  {e1}");
}
