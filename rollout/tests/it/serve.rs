//! `spar serve` answers the official `openai` Python client (skipped without $SPAR_PYTHON), and spar's own
//! external rollout backend gets the engine's tokens, log-probs and top log-probs through it. The server
//! fixture and a raw HTTP helper here serve the hardening tests too (`serve_errors.rs`, `serve_limits.rs`).
use super::common::{end_of_turn_ids, tiny_model};
use spar_core::recipe::EndpointConfig;
use spar_core::traits::{GenerateRequest, RolloutBackend, SamplingParams, WeightReceiver};
use spar_rollout::engine::{Engine, EngineConfig};
use spar_rollout::serve::{ChatMlRenderer, ServeLimits, ServeOptions, serve};
use spar_rollout::testing::CharCodec;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The tiny engine every serve test runs.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        max_batch: 4,
        kv_slots: 4,
        max_seq_len: 512,
        prefill_tokens: 512,
        seed: 0,
        record_routing: false,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    }
}

/// The fixture's server settings: loopback, the tiny engine, default limits.
pub fn options(api_key: Option<&str>, engine: EngineConfig) -> ServeOptions {
    ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        model_name: "tiny".into(),
        api_key: api_key.map(String::from),
        insecure_no_auth: false,
        limits: ServeLimits::for_engine(&engine),
        engine,
        default_max_tokens: 16,
    }
}

/// Serves the tiny model until `driver` (run on its own thread with the bound address) returns.
fn with_server<T: Send + 'static>(
    api_key: Option<&str>,
    driver: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> T {
    with_options(options(api_key, engine_config()), driver).unwrap()
}

/// Serves the tiny model with `opts` until `driver` returns; Err when the server refuses to start (the
/// driver then never runs).
pub fn with_options<T: Send + 'static>(
    opts: ServeOptions,
    driver: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> anyhow::Result<T> {
    with_model(&tiny_model(false), opts, driver)
}

/// [`with_options`] serving `model`.
pub fn with_model<T: Send + 'static>(
    model: &spar_model::Qwen3Model,
    opts: ServeOptions,
    driver: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    let driver = std::thread::spawn(move || {
        // No address: the server refused to start.
        let addr: SocketAddr = rx.recv().ok()?;
        // Stop the server even when the driver panics, so the test fails instead of hanging.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver(addr)));
        stop2.store(true, Ordering::Relaxed);
        Some(out)
    });
    let served = serve(
        model,
        Arc::new(CharCodec),
        Arc::new(ChatMlRenderer),
        opts,
        stop,
        move |addr| tx.send(addr).unwrap(),
    );
    // A refused start drops `tx`: the driver thread's recv fails and it ends without running the driver.
    served?;
    match driver.join() {
        Ok(Some(Ok(v))) => Ok(v),
        Ok(None) => anyhow::bail!("the server stopped before it was ready"),
        Ok(Some(Err(panic))) | Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A response read by [`http`]: status, raw header block (names as sent) and body.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Opens a connection to `addr` and sends one HTTP/1.1 request (`Connection: close`) without reading.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// One plain HTTP/1.1 exchange, so that tests control every header and byte (and see axum's own answers).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = send(addr, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// POSTs `body` as JSON with the bearer token `key` (when given).
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &serde_json::Value,
) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http(addr, "POST", path, &headers, body.to_string().as_bytes())
}

/// `GET /stats` of the server at `addr` (no token).
pub fn stats(addr: SocketAddr) -> serde_json::Value {
    http(addr, "GET", "/stats", &[], b"").json()
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

/// spar's external rollout backend on the server at `addr`, with a runtime to drive it.
fn backend_of(addr: SocketAddr) -> (spar_clients::OpenAiRolloutBackend, tokio::runtime::Runtime) {
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
    (backend, rt)
}

/// A greedy request of six prompt tokens with `top` alternatives per token.
fn greedy_request(max_new_tokens: u32, top: u32) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: (0..6).map(|i| 300 + i).collect(),
        sampling: SamplingParams {
            temperature: 0.0,
            max_new_tokens,
            seed: Some(1),
            top_logprobs: top,
            // What the server adds on its own (it stops at the end-of-turn tokens), for the direct run too.
            stop_token_ids: end_of_turn_ids(),
            ..Default::default()
        },
    }
}

#[test]
fn the_external_backend_gets_top_logprobs_through_serve() {
    let req = greedy_request(5, 4);
    let sent = req.clone();
    let over_http = with_server(None, move |addr| {
        let (backend, rt) = backend_of(addr);
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

/// `POST /update_weights_from_disk`, driven by spar's own SGLang weight receiver (what `[rollout.weight_sync]`
/// sends): after a load the server generates exactly what an engine over the new weights generates, its
/// `/stats` report the version, and a folder it cannot load is refused with the reason while the weights it
/// serves stay the last good ones.
#[test]
fn serve_loads_a_new_policy_version_as_sglang_does() {
    let dir = tempfile::tempdir().unwrap();
    let newer = tiny_model(false);
    tch::no_grad(|| {
        for (_, mut v) in newer.vs.variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    newer.save_hf(&dir.path().join("v1")).unwrap();
    let req = greedy_request(6, 0);
    let (sent, folder) = (req.clone(), dir.path().to_path_buf());
    let (before, after, refused, kept, version) = with_server(None, move |addr| {
        let (backend, rt) = backend_of(addr);
        let receiver =
            spar_clients::SglangWeightReceiver::new(&spar_core::recipe::WeightSyncConfig {
                kind: spar_core::recipe::WeightSyncKind::Sglang,
                servers: vec![format!("http://{addr}")],
                ..Default::default()
            })
            .unwrap();
        let generate = || {
            rt.block_on(backend.generate(vec![sent.clone()]))
                .unwrap()
                .remove(0)
        };
        let before = generate();
        rt.block_on(receiver.load(&folder.join("v1"), 1)).unwrap();
        let after = generate();
        let refused = rt
            .block_on(receiver.load(&folder.join("missing"), 2))
            .unwrap_err()
            .to_string();
        let kept = generate();
        (
            before,
            after,
            refused,
            kept,
            stats(addr)["weight_version"].clone(),
        )
    });
    let direct = |m: &spar_model::Qwen3Model| {
        Engine::new(m, engine_config())
            .unwrap()
            .generate(vec![req.clone()])
            .unwrap()
            .remove(0)
            .output
    };
    let (old, new) = (direct(&tiny_model(false)), direct(&newer));
    assert_ne!(old.logprobs, new.logprobs, "the two models must differ");
    for (label, got, want) in [
        ("before", &before, &old),
        ("after", &after, &new),
        ("after a refused load", &kept, &new),
    ] {
        assert_eq!(got.token_ids, want.token_ids, "{label}");
        for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
            assert!(
                (a - b).abs() < 1e-5,
                "{label}: {:?} vs {:?}",
                got.logprobs,
                want.logprobs
            );
        }
    }
    assert!(refused.contains("missing"), "{refused}");
    assert_eq!(version, "1");
}
