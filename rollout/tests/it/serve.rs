//! `spar serve` answers the official `openai` Python client (skipped without $SPAR_PYTHON), and spar's own
//! external rollout backend gets the engine's tokens, log-probs and top log-probs through it.
use super::common::tiny_model;
use spar_core::recipe::EndpointConfig;
use spar_core::traits::{GenerateRequest, RolloutBackend, SamplingParams};
use spar_rollout::TextCodec;
use spar_rollout::engine::{Engine, EngineConfig};
use spar_rollout::serve::{ChatMlRenderer, ServeOptions, serve};
use spar_rollout::testing::CharCodec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn engine_config() -> EngineConfig {
    EngineConfig {
        max_batch: 4,
        kv_slots: 4,
        max_seq_len: 512,
        prefill_tokens: 512,
        seed: 0,
        record_routing: false,
    }
}

/// Serves the tiny model until `driver` (run on its own thread with the bound address) returns.
fn with_server<T: Send + 'static>(
    api_key: Option<&str>,
    driver: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> T {
    let model = tiny_model(false);
    let opts = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        model_name: "tiny".into(),
        api_key: api_key.map(String::from),
        engine: engine_config(),
        default_max_tokens: 16,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    let driver = std::thread::spawn(move || {
        let addr: SocketAddr = rx.recv().unwrap();
        // Stop the server even when the driver panics, so the test fails instead of hanging.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver(addr)));
        stop2.store(true, Ordering::Relaxed);
        out
    });
    serve(
        &model,
        Arc::new(CharCodec),
        Arc::new(ChatMlRenderer),
        opts,
        stop,
        move |addr| tx.send(addr).unwrap(),
    )
    .unwrap();
    match driver.join().unwrap() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[test]
fn serve_answers_the_openai_client() {
    let Ok(python) = std::env::var("SPAR_PYTHON") else {
        eprintln!("skipping: SPAR_PYTHON is not set (source scripts/bootstrap.sh)");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_client.py");
    let out = with_server(Some("sekret"), move |addr| {
        std::process::Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}/v1"))
            .arg("sekret")
            .output()
            .unwrap()
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("openai client OK"), "{text}");
}

#[test]
fn the_external_backend_gets_top_logprobs_through_serve() {
    let req = GenerateRequest {
        prompt_ids: (0..6).map(|i| 300 + i).collect(),
        sampling: SamplingParams {
            temperature: 0.0,
            max_new_tokens: 5,
            seed: Some(1),
            top_logprobs: 4,
            // What the server adds on its own (it stops at the end-of-turn tokens), for the direct run too.
            stop_token_ids: ["<|im_end|>", "<|endoftext|>"]
                .iter()
                .map(|t| CharCodec.token_id(t).unwrap())
                .collect(),
            ..Default::default()
        },
    };
    let sent = req.clone();
    let over_http = with_server(None, move |addr| {
        let backend = spar_clients::OpenAiRolloutBackend::from_endpoint(&EndpointConfig {
            base_url: format!("http://{addr}/v1"),
            model: "tiny".into(),
            ..Default::default()
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(backend.generate(vec![sent])).unwrap().remove(0)
    });
    let model = tiny_model(false);
    let direct = Engine::new(&model, engine_config())
        .unwrap()
        .generate(vec![req])
        .unwrap()
        .remove(0)
        .output;
    assert_eq!(over_http.token_ids, direct.token_ids);
    assert_eq!(over_http.top_logprobs.len(), direct.token_ids.len());
    for (i, (a, b)) in over_http
        .top_logprobs
        .iter()
        .zip(&direct.top_logprobs)
        .enumerate()
    {
        assert_eq!(a.len(), 4, "token {i}");
        assert_eq!(
            a.iter().map(|t| t.0).collect::<Vec<_>>(),
            b.iter().map(|t| t.0).collect::<Vec<_>>(),
            "token {i}"
        );
        assert!(
            a.iter().zip(b).all(|(x, y)| (x.1 - y.1).abs() < 1e-6),
            "token {i}: {a:?} vs {b:?}"
        );
        assert_eq!(
            a[0],
            (over_http.token_ids[i], over_http.logprobs[i]),
            "greedy leads"
        );
    }
}
