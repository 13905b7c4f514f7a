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

/// SGLang's payload for a prompt of 2 tokens that generated 2, on a model of 3 hidden layers (layer 1 dense)
/// and top-2: int32 rows `[3 tokens, 3 layers, 2]` written by hand (Python's `struct.pack('<6i', ...)`), the
/// dense layer's ids 0.
const SGLANG_ROUTING: &str = "AwAAAAEAAAAAAAAAAAAAAAIAAAAAAAAAAQAAAAIAAAAAAAAAAAAAAAMAAAABAAAAAAAAAAMAAAAAAAAAAAAAAAEAAAACAAAA";

fn routed_layout() -> spar_core::routed_wire::MoeLayout {
    spar_core::routed_wire::MoeLayout {
        num_hidden_layers: 3,
        moe_layers: vec![0, 2],
        top_k: 2,
    }
}

fn completion_with(extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "id": "cmpl-1", "object": "text_completion", "model": "fake-model",
        "choices": [{"index": 0, "text": "", "finish_reason": "length", "token_ids": [7, 8],
                     "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.5, -0.25]}}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn rollout_backend_decodes_sglang_routed_experts() {
    let s = server(FakeServerConfig::default()).await;
    let b = OpenAiRolloutBackend::new(client(&s.endpoint()))
        .unwrap()
        .with_routing(routed_layout());
    assert_eq!(b.routing(), Some((2, 2)));
    s.script([spar_testkit::Scripted::Json(completion_with(
        serde_json::json!({"sglext": {"routed_experts": SGLANG_ROUTING}}),
    ))]);
    let out = b
        .generate(vec![gen_req(vec![1, 2], 2, vec![])])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(s.requests()[0].body["return_routed_experts"], true);
    let prompt = out.prompt_routed_experts.expect("prompt routing");
    let generated = out.routed_experts.expect("generated routing");
    assert_eq!((prompt.layers, prompt.k), (2, 2));
    // MoE layers 0 and 2 of each prompt token, the dense layer dropped.
    assert_eq!(prompt.ids, vec![3, 1, 2, 0, 1, 2, 3, 1]);
    // The first generated token's row; the last generated token (never forwarded) repeats it.
    assert_eq!(generated.ids, vec![0, 3, 1, 2, 0, 3, 1, 2]);
}

#[tokio::test]
async fn rollout_backend_without_routing_in_the_reply_says_how_to_start_the_server() {
    let s = server(FakeServerConfig::default()).await;
    let mut ep = s.endpoint();
    ep.max_retries = 0;
    let b = OpenAiRolloutBackend::new(client(&ep))
        .unwrap()
        .with_routing(routed_layout());
    for (reply, says) in [
        (
            completion_with(serde_json::json!({})),
            "--enable-return-routed-experts",
        ),
        (
            completion_with(serde_json::json!({"sglext": {"routed_experts": "AAAAAA=="}})),
            "do not divide",
        ),
    ] {
        s.script([spar_testkit::Scripted::Json(reply)]);
        let e = b
            .generate(vec![gen_req(vec![1, 2], 2, vec![])])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && e.contains("/completions"), "{e}");
    }
    // Without routing asked for, nothing is asked and nothing is read.
    let plain = OpenAiRolloutBackend::new(client(&ep)).unwrap();
    assert_eq!(plain.routing(), None);
    let out = plain
        .generate(vec![gen_req(vec![1, 2], 2, vec![])])
        .await
        .unwrap();
    assert!(out[0].routed_experts.is_none() && out[0].prompt_routed_experts.is_none());
    assert!(
        s.requests()
            .last()
            .unwrap()
            .body
            .get("return_routed_experts")
            .is_none()
    );
}
