//! Claim extractor, fact verifier, encoder and rollout backend against the fake server.
use super::common::{client, server};
use spar_clients::{
    LlmClaimExtractor, LlmFactVerifier, OpenAiClient, OpenAiEncoder, OpenAiRolloutBackend,
};
use spar_core::sample::{ClaimLabel, Role, Turn};
use spar_core::traits::{
    ClaimExtractor, Encoder, FactVerifier, FinishReason, GenerateRequest, RolloutBackend,
    SamplingParams,
};
use spar_testkit::{FakeServerConfig, TokenIdStyle, responders};

#[tokio::test]
async fn extractor_dedups_and_skips_empty_responses() {
    let s = server(FakeServerConfig { chat: responders::fixed(r#"{"claims": ["Amoxicillin is a penicillin.", "amoxicillin is a penicillin", "Fever may follow vaccination."]}"#), ..FakeServerConfig::default() }).await;
    let x = LlmClaimExtractor::new(client(&s.endpoint()));
    let claims = x
        .extract(
            "<think>t</think>It is a penicillin.",
            &[Turn::new(Role::User, "Is amoxicillin safe?")],
        )
        .await
        .unwrap();
    assert_eq!(
        claims,
        vec![
            "Amoxicillin is a penicillin.",
            "Fever may follow vaccination."
        ]
    );
    let sent = s.requests()[0].body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        sent.contains("Is amoxicillin safe?") && !sent.contains("<think>"),
        "{sent}"
    );
    assert!(
        x.extract("<think>only thinking</think>", &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.request_count(), 1, "an empty response costs no call");
    assert!(x.id().starts_with("llm-extractor/fake-model/"));
}

#[tokio::test]
async fn verifier_labels_and_its_id_tracks_model_and_template() {
    let s = server(FakeServerConfig {
        chat: responders::fixed(
            r#"{"label": "Refuted", "evidence": "The usual adult dose is 500 mg."}"#,
        ),
        ..FakeServerConfig::default()
    })
    .await;
    let v = LlmFactVerifier::new(client(&s.endpoint()));
    let verdict = v
        .verify("The usual adult dose of amoxicillin is 5 g.")
        .await
        .unwrap();
    assert_eq!(verdict.label, ClaimLabel::Refuted);
    assert_eq!(verdict.source.as_deref(), Some("llm:fake-model"));
    assert_eq!(
        v.id(),
        format!(
            "llm-verifier/fake-model/{}",
            LlmFactVerifier::template_hash()
        )
    );
    let mut other = s.endpoint();
    other.model = "other-model".into();
    assert_ne!(LlmFactVerifier::new(client(&other)).id(), v.id());
}

#[tokio::test]
async fn encoder_normalises_and_batches() {
    let s = server(FakeServerConfig {
        embedding_dim: 12,
        ..FakeServerConfig::default()
    })
    .await;
    let e = OpenAiEncoder::probe(client(&s.endpoint())).await.unwrap();
    assert_eq!(e.dim(), 12);
    let texts: Vec<String> = (0..300).map(|i| format!("sentence {}", i % 150)).collect();
    let v = e.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 300);
    for x in &v {
        let n: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
    assert_eq!(
        v[3], v[153],
        "same text, same vector, order kept across batches"
    );
    assert_ne!(v[3], v[4]);
    assert_eq!(s.request_count(), 1 + 3, "probe + ceil(300 / 128) batches");
    let wrong = OpenAiEncoder::new(client(&s.endpoint()), 7);
    assert!(
        wrong
            .embed(&["x".to_string()])
            .await
            .unwrap_err()
            .to_string()
            .contains("expected 7")
    );
}

fn gen_req(prompt: Vec<u32>, max_new_tokens: u32, stop: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        sampling: SamplingParams {
            max_new_tokens,
            stop_token_ids: stop,
            seed: Some(1),
            ..SamplingParams::default()
        },
    }
}

#[tokio::test]
async fn rollout_backend_token_in_token_out_both_id_styles() {
    for style in [TokenIdStyle::TokenIdsField, TokenIdStyle::TokenStrings] {
        let s = server(FakeServerConfig {
            token_ids: style,
            ..FakeServerConfig::default()
        })
        .await;
        let b = OpenAiRolloutBackend::new(client(&s.endpoint())).unwrap();
        let out = b
            .generate(vec![
                gen_req(vec![1, 2, 10], 4, vec![]),
                gen_req(vec![5], 8, vec![8]),
            ])
            .await
            .unwrap();
        assert_eq!(out[0].token_ids, vec![11, 12, 13, 14], "{style:?}");
        assert_eq!(out[0].finish, FinishReason::Length);
        assert_eq!(out[0].logprobs.len(), 4);
        assert!((out[0].logprobs[0] - (-0.15)).abs() < 1e-6);
        assert_eq!(
            out[1].token_ids,
            vec![6, 7, 8],
            "stops on and keeps the stop token"
        );
        assert_eq!(out[1].finish, FinishReason::Stop);
        let body = &s.requests()[0].body;
        assert_eq!(body["prompt"], serde_json::json!([1, 2, 10]));
        assert_eq!(
            (
                body["return_token_ids"].as_bool(),
                body["skip_special_tokens"].as_bool()
            ),
            (Some(true), Some(false))
        );
    }
}

#[tokio::test]
async fn rollout_backend_keeps_successes_and_names_the_failed_request() {
    let s = server(FakeServerConfig::default()).await;
    let mut ep = s.endpoint();
    ep.max_retries = 0;
    ep.concurrency = 1;
    let b = OpenAiRolloutBackend::new(client(&ep)).unwrap();
    s.script([
        spar_testkit::Scripted::Delay(std::time::Duration::ZERO),
        spar_testkit::Scripted::Status(500),
    ]);
    let each = b
        .generate_each(vec![
            gen_req(vec![1], 2, vec![]),
            gen_req(vec![2], 2, vec![]),
            gen_req(vec![3], 2, vec![]),
        ])
        .await;
    assert_eq!(
        each.iter().map(Result::is_ok).collect::<Vec<_>>(),
        vec![true, false, true]
    );
    s.script([
        spar_testkit::Scripted::Delay(std::time::Duration::ZERO),
        spar_testkit::Scripted::Status(500),
    ]);
    let e = b
        .generate(vec![
            gen_req(vec![1], 2, vec![]),
            gen_req(vec![2], 2, vec![]),
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("request 1"), "{e}");
}

#[tokio::test]
async fn rollout_backend_refuses_unredactable_remote_prompts() {
    let s = server(FakeServerConfig::default()).await;
    let mut ep = s.endpoint();
    ep.base_url = "http://10.1.2.3:8000/v1".into();
    let e = OpenAiRolloutBackend::new(OpenAiClient::new(&ep).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("redact_phi"), "{e}");
    ep.redact_phi = false;
    assert!(OpenAiRolloutBackend::new(OpenAiClient::new(&ep).unwrap()).is_ok());
}
