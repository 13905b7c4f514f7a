//! Routing replay through `spar serve`: `return_routed_experts` gives the expert choices the built-in engine
//! makes for the same prompt and seed, spar's external rollout backend reads them back, and the samples of a
//! rollout over that backend carry the routing a rollout on the built-in engine records.
use super::common::{end_of_turn_ids, scripted_rollout, tiny_model};
use super::serve::{engine_config, options, post_json, with_model};
use spar_core::recipe::{EndpointConfig, RolloutSection};
use spar_core::traits::{GenerateRequest, RolloutBackend, SamplingParams};
use spar_model::{Qwen3Config, Qwen3Model};
use spar_rollout::engine::{Engine, EngineConfig};
use spar_rollout::testing::{CharCodec, tiny_case};
use spar_rollout::{Policy, Rollout, TextCodec};
use std::net::SocketAddr;
use std::sync::Arc;
use tch::{Device, Kind};

/// A tiny Qwen3-MoE whose middle layer is dense, so that SGLang's rows (every hidden layer) and spar's (MoE
/// layers only) differ.
fn moe_with_a_dense_layer() -> Qwen3Model {
    let vocab = CharCodec::vocab_size();
    let json = format!(
        r#"{{"model_type":"qwen3_moe","vocab_size":{vocab},"hidden_size":32,"intermediate_size":48,"num_hidden_layers":3,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"num_experts":4,"num_experts_per_tok":2,
        "moe_intermediate_size":16,"decoder_sparse_step":1,"mlp_only_layers":[1],"max_position_embeddings":4096}}"#
    );
    let c = Qwen3Config::from_json_str(&json, "test").unwrap();
    Qwen3Model::random(c, Device::Cpu, Kind::Float, 11).unwrap()
}

/// The serve fixture's engine, recording routing, one sequence per forward (so that a request's tokens do not
/// depend on what else runs, here or in the engine it is compared with).
fn recording() -> EngineConfig {
    EngineConfig {
        record_routing: true,
        batch_invariant: true,
        prefill_wait_steps: 0,
        ..engine_config()
    }
}

fn backend_on(addr: SocketAddr, model: &Qwen3Model) -> spar_clients::OpenAiRolloutBackend {
    spar_clients::OpenAiRolloutBackend::from_endpoint(&EndpointConfig {
        base_url: format!("http://{addr}/v1"),
        model: "tiny".into(),
        max_retries: 0,
        ..Default::default()
    })
    .unwrap()
    .with_routing(model.config.moe_layout().unwrap())
}

fn sampled_request() -> GenerateRequest {
    GenerateRequest {
        prompt_ids: CharCodec
            .encode("<|im_start|>user\nchest pain<|im_end|>\n")
            .unwrap(),
        sampling: SamplingParams {
            temperature: 1.0,
            max_new_tokens: 7,
            seed: Some(5),
            stop_token_ids: end_of_turn_ids(),
            ..Default::default()
        },
    }
}

#[test]
fn serve_returns_the_routing_the_built_in_engine_records() {
    let model = moe_with_a_dense_layer();
    let req = sampled_request();
    let sent = req.clone();
    let layout = model.config.moe_layout().unwrap();
    assert_eq!(layout.moe_layers, vec![0, 2]);
    let (over_http, raw) = with_model(&model, options(None, recording()), {
        let model = moe_with_a_dense_layer();
        move |addr| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let out = rt
                .block_on(backend_on(addr, &model).generate(vec![sent.clone()]))
                .unwrap()
                .remove(0);
            let raw = post_json(
                addr,
                "/v1/completions",
                None,
                &serde_json::json!({"prompt": sent.prompt_ids, "max_tokens": 7, "temperature": 1.0, "seed": 5,
                                    "return_routed_experts": true}),
            );
            (out, raw)
        }
    })
    .unwrap();
    let direct = Engine::new(&model, recording())
        .unwrap()
        .generate(vec![req.clone()])
        .unwrap()
        .remove(0);
    assert_eq!(over_http.token_ids, direct.output.token_ids);
    assert!(
        over_http.token_ids.len() > 1,
        "more than one token generated"
    );
    assert_eq!(
        over_http.routed_experts, direct.output.routed_experts,
        "generated tokens' routing"
    );
    let prompt = over_http.prompt_routed_experts.expect("prompt routing");
    let direct_prompt = direct.prompt_routing.expect("engine prompt routing");
    assert_eq!(prompt.ids, direct_prompt.ids, "prompt routing");
    assert_eq!((prompt.layers, prompt.k), (2, 2));
    // SGLang's encoding on the wire: int32 rows of every hidden layer for the prompt and all but the last
    // generated token, the dense layer 0.
    assert_eq!(raw.status, 200, "{}", raw.body);
    let b64 = raw.json()["sglext"]["routed_experts"]
        .as_str()
        .expect("sglext.routed_experts")
        .to_string();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let generated = raw.json()["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let rows = req.prompt_ids.len() + generated - 1;
    assert_eq!(bytes.len(), rows * 3 * 2 * 4);
    let ids: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(
        ids.chunks(6).all(|row| row[2..4] == [0, 0]),
        "dense layer rows are 0"
    );
    assert_eq!(
        ids.chunks(6)
            .take(req.prompt_ids.len())
            .flat_map(|row| [row[0], row[1], row[4], row[5]])
            .map(|e| e as u16)
            .collect::<Vec<_>>(),
        direct_prompt.ids
    );
}

#[test]
fn serve_refuses_routing_it_cannot_give() {
    let ask = |extra: serde_json::Value| {
        let mut b = serde_json::json!({"prompt": [300, 301], "max_tokens": 2, "return_routed_experts": true});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let error_of = |r: super::serve::Reply| {
        assert_eq!(r.status, 400, "{}", r.body);
        let e = r.json()["error"].clone();
        assert_eq!(e["param"], "return_routed_experts", "{e}");
        e["message"].as_str().unwrap().to_string()
    };
    // A dense model has no expert choices, recording or not.
    let dense = with_model(
        &tiny_model(false),
        options(None, recording()),
        move |addr| post_json(addr, "/v1/completions", None, &ask(serde_json::json!({}))),
    )
    .unwrap();
    assert!(error_of(dense).contains("no MoE layers"));
    // An MoE model served without --enable-return-routed-experts: the 400 says how to start it, and the
    // backend's error carries it.
    let model = tiny_model(true);
    let (plain, via_backend) = with_model(&model, options(None, engine_config()), {
        let model = tiny_model(true);
        move |addr| {
            let r = post_json(addr, "/v1/completions", None, &ask(serde_json::json!({})));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let e = rt
                .block_on(backend_on(addr, &model).generate(vec![sampled_request()]))
                .unwrap_err()
                .to_string();
            (r, e)
        }
    })
    .unwrap();
    assert!(error_of(plain).contains("--enable-return-routed-experts"));
    assert!(
        via_backend.contains("--enable-return-routed-experts"),
        "{via_backend}"
    );
    // Recording: one sequence per request, no stream, completions only.
    let replies = with_model(&model, options(None, recording()), move |addr| {
        [
            post_json(addr, "/v1/completions", None, &ask(serde_json::json!({"n": 2}))),
            post_json(addr, "/v1/completions", None, &ask(serde_json::json!({"prompt": [[300], [301]]}))),
            post_json(addr, "/v1/completions", None, &ask(serde_json::json!({"stream": true}))),
            post_json(
                addr,
                "/v1/chat/completions",
                None,
                &serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                    "return_routed_experts": true}),
            ),
            post_json(addr, "/v1/completions", None, &ask(serde_json::json!({}))),
        ]
    })
    .unwrap();
    let [n2, batch, stream, chat, ok] = replies;
    assert!(error_of(n2).contains("one sequence"));
    assert!(error_of(batch).contains("one sequence"));
    assert!(error_of(stream).contains("stream"));
    assert!(error_of(chat).contains("/v1/completions only"));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.json()["sglext"]["routed_experts"].is_string());
}

/// Whole episodes, routing recorded, one sequence per forward: a rollout's samples depend on the cases, seeds
/// and weights alone, whichever engine generates them.
fn replaying_section() -> RolloutSection {
    let mut s = RolloutSection {
        segmented: false,
        group_size: 2,
        groups_per_step: 1,
        max_batch: 4,
        kv_slots: 4,
        max_seq_len: 512,
        turn_limits: [2, 1, 1, 1],
        record_routing: true,
        batch_invariant: true,
        prefill_wait_steps: 0,
        ..Default::default()
    };
    s.sampling.max_new_tokens = 8;
    s.system_prompt = "Be brief.".into();
    s
}

fn rollout_of(cfg: RolloutSection) -> Rollout {
    scripted_rollout(cfg, vec![tiny_case()], "replay")
}

#[test]
fn samples_over_serve_carry_the_routing_of_the_built_in_engine() {
    let model = moe_with_a_dense_layer();
    let builtin = rollout_of(replaying_section())
        .collect_groups(Policy::Builtin(&model), 1)
        .unwrap();
    let external = with_model(&model, options(None, recording()), {
        let model = moe_with_a_dense_layer();
        move |addr| {
            let backend: Arc<dyn RolloutBackend> = Arc::new(backend_on(addr, &model));
            rollout_of(replaying_section())
                .with_backend(backend)
                .collect_groups(Policy::External, 1)
                .unwrap()
        }
    })
    .unwrap();
    let (b, e) = (&builtin[0].samples, &external[0].samples);
    assert_eq!(b.len(), 2);
    for (i, (b, e)) in b.iter().zip(e).enumerate() {
        assert_eq!(e.token_ids, b.token_ids, "sample {i}");
        assert!(
            b.loss_mask.iter().filter(|&&m| m == 1).count() > 0,
            "sample {i} has sampled tokens"
        );
        let (br, er) = (
            b.routed_experts.as_ref().expect("built-in routing"),
            e.routed_experts.as_ref().expect("routing over spar serve"),
        );
        assert_eq!((er.layers, er.k), (2, 2));
        assert_eq!(
            er.ids.len(),
            e.token_ids.len() * 4,
            "sample {i}: every position"
        );
        assert_eq!(er, br, "sample {i}");
    }
}
