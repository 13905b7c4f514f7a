//! The LLM patient: persona, leak and contradiction checks, regenerate once then fail, end of consultation.
use super::common::{client, server};
use spar_clients::{ChatMessage, LlmPatientSimulator, SimulatorOptions};
use spar_core::Case;
use spar_core::sample::{Role, Turn};
use spar_core::traits::PatientSimulator;
use spar_testkit::{FakeReply, FakeServerConfig, responders};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn case() -> Case {
    serde_json::from_value(serde_json::json!({
        "id": "resp-0001", "department": "respiratory", "demographics": {"age": 54, "sex": "male"},
        "chief_complaint": "cough and fever for 3 days", "hpi": "Productive cough with yellow sputum, fever up to 39 C.",
        "allergies": ["penicillin"], "social_history": ["smokes 10 cigarettes a day"],
        "inquiry_items": [{"id": "fever", "topic": "fever", "keywords": ["fever"], "answer": "Yes, up to 39 degrees.", "weight": 2.0}],
        "diagnosis": {"name": "Pneumonia, unspecified organism", "icd10": "J18.9"},
        "differential": [{"name": "Acute bronchitis", "icd10": "J20.9"}],
        "tests": {"essential": [{"name": "Chest X-ray"}]}
    }))
    .unwrap()
}

fn opts(factual_check: bool) -> SimulatorOptions {
    SimulatorOptions {
        factual_check,
        ..SimulatorOptions::default()
    }
}

/// A patient model that answers `replies` in turn, and a consistency checker that answers `consistent`.
fn patient(
    replies: Vec<&'static str>,
    consistent: bool,
    patient_calls: Arc<AtomicUsize>,
) -> spar_testkit::ChatResponder {
    Arc::new(move |m: &[ChatMessage]| {
        if m[0]
            .content
            .contains("You check a simulated patient's reply")
        {
            let problem = if consistent {
                ""
            } else {
                "says the fever started a month ago"
            };
            return FakeReply::from(
                serde_json::json!({"consistent": consistent, "problem": problem}).to_string(),
            );
        }
        let i = patient_calls.fetch_add(1, Ordering::SeqCst);
        FakeReply::from(replies[i.min(replies.len() - 1)])
    })
}

#[tokio::test]
async fn opening_and_persona_never_hold_the_diagnosis() {
    let s = server(FakeServerConfig {
        chat: responders::fixed("I've had a cough and fever for three days."),
        ..FakeServerConfig::default()
    })
    .await;
    let sim = LlmPatientSimulator::new(client(&s.endpoint())).with_options(opts(false));
    assert_eq!(
        sim.opening(&case()).await.unwrap(),
        "I've had a cough and fever for three days."
    );
    let system = s.requests()[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        !system.contains("pneumonia")
            && !system.contains("j18")
            && !system.contains("bronchitis")
            && !system.contains("chest x-ray")
    );
    assert!(system.contains("penicillin") && system.contains("passive"));
}

#[tokio::test]
async fn a_leaking_reply_is_regenerated_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let s = server(FakeServerConfig {
        chat: patient(
            vec!["Honestly I think it's pneumonia.", "It started on Monday."],
            true,
            calls.clone(),
        ),
        ..FakeServerConfig::default()
    })
    .await;
    let sim = LlmPatientSimulator::new(client(&s.endpoint())).with_options(opts(true));
    let r = sim
        .reply(
            &case(),
            &[Turn::new(Role::User, "I have a cough.")],
            "When did it start?",
        )
        .await
        .unwrap();
    assert_eq!(r.text, "It started on Monday.");
    assert!(!r.end);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.request_count(),
        3,
        "leak (rule check, no LLM check) + regenerated reply + its LLM check"
    );
    let retry_system = s.requests()[1].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(retry_system.contains("previous answer was rejected"));
}

#[tokio::test]
async fn two_violations_fail_the_reply() {
    let calls = Arc::new(AtomicUsize::new(0));
    let s = server(FakeServerConfig {
        chat: patient(
            vec!["It's J18.9, my GP said.", "I'm 30 years old."],
            true,
            calls.clone(),
        ),
        ..FakeServerConfig::default()
    })
    .await;
    let sim = LlmPatientSimulator::new(client(&s.endpoint())).with_options(opts(false));
    let e = sim
        .reply(&case(), &[], "How old are you?")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("failed the factual check twice") && e.contains("age"),
        "{e}"
    );
    assert_eq!(s.request_count(), 2);
}

#[tokio::test]
async fn the_llm_check_rejects_contradictions() {
    let calls = Arc::new(AtomicUsize::new(0));
    let s = server(FakeServerConfig {
        chat: patient(vec!["The fever began a month ago."], false, calls.clone()),
        ..FakeServerConfig::default()
    })
    .await;
    let sim = LlmPatientSimulator::new(client(&s.endpoint())).with_options(opts(true));
    let e = sim
        .reply(&case(), &[], "When did the fever start?")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("inconsistent with the case"), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn echoing_the_doctor_is_not_a_leak_and_a_diagnosis_ends_the_consultation() {
    let calls = Arc::new(AtomicUsize::new(0));
    let s = server(FakeServerConfig {
        chat: patient(
            vec!["Pneumonia? Okay, thank you doctor. <end/>"],
            true,
            calls,
        ),
        ..FakeServerConfig::default()
    })
    .await;
    let sim = LlmPatientSimulator::new(client(&s.endpoint())).with_options(opts(false));
    let doctor = "<diagnosis>Pneumonia (J18.9)</diagnosis> You have pneumonia; we will treat it with a non-penicillin antibiotic.";
    let r = sim.reply(&case(), &[], doctor).await.unwrap();
    assert_eq!(r.text, "Pneumonia? Okay, thank you doctor.");
    assert!(r.end);
}

#[tokio::test]
async fn from_config_needs_an_endpoint() {
    let mut cfg = spar_core::recipe::SimulatorConfig {
        kind: spar_core::recipe::SimulatorKind::Llm,
        ..Default::default()
    };
    assert!(
        LlmPatientSimulator::from_config(&cfg)
            .unwrap_err()
            .to_string()
            .contains("endpoint")
    );
    let s = server(FakeServerConfig::default()).await;
    cfg.endpoint = Some(s.endpoint());
    let sim = LlmPatientSimulator::from_config(&cfg).unwrap();
    assert!(spar_core::traits::PatientSimulator::id(&sim).starts_with("llm-simulator/fake-model/"));
}
