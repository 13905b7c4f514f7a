//! `spar serve` answers the official `openai` Python client (skipped without $SPAR_PYTHON).
use super::common::tiny_model;
use spar_rollout::engine::EngineConfig;
use spar_rollout::serve::{ChatMlRenderer, ServeOptions, serve};
use spar_rollout::testing::CharCodec;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn serve_answers_the_openai_client() {
    let Ok(python) = std::env::var("SPAR_PYTHON") else {
        eprintln!("skipping: SPAR_PYTHON is not set (source scripts/bootstrap.sh)");
        return;
    };
    let model = tiny_model(false);
    let opts = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        model_name: "tiny".into(),
        api_key: Some("sekret".into()),
        engine: EngineConfig {
            max_batch: 4,
            kv_slots: 4,
            max_seq_len: 512,
            prefill_tokens: 512,
            seed: 0,
            record_routing: false,
        },
        default_max_tokens: 16,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_client.py");
    let (tx, rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    let driver = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}/v1"))
            .arg("sekret")
            .output()
            .unwrap();
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
    let out = driver.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("openai client OK"), "{text}");
}
