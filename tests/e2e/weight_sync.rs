//! `[rollout.weight_sync]`: an external rollout server gets the learner's weights. `spar train` with the rollout
//! backend on a loopback fake OpenAI server that also answers SGLang's `/update_weights_from_disk`: before the
//! first RL round and after each update rank 0 writes the policy folder, the server loads it (the fake checks it
//! is a transformers folder), the older folders go, and the next round's samples carry the new version. A server
//! that cannot be reached stops the run with an error naming it.
use crate::{root, spar};
use spar_testkit::{FakeServer, FakeServerConfig, responders};
use std::path::Path;
use std::process::Command;

fn train(run: &Path, url: &str, servers: &str) -> Command {
    let mut cmd = spar();
    cmd.arg("train")
        .arg("--recipe")
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(run);
    for s in [
        "trainer.sft_steps=1".to_string(),
        "trainer.steps=2".into(),
        "trainer.sft_batch=2".into(),
        "rollout.groups_per_step=1".into(),
        "rollout.group_size=2".into(),
        "rollout.sampling.max_new_tokens=8".into(),
        "rollout.turn_limits=[2, 1, 1, 1]".into(),
        "eval.max_cases=1".into(),
        "eval.max_new_tokens=8".into(),
        "data.max_cases=2".into(),
        "trainer.bpe_vocab_size=400".into(),
        "rollout.backend=\"openai\"".into(),
        format!(
            "rollout.endpoint={{ base_url = \"{url}\", model = \"fake-doctor\", timeout_s = 30.0 }}"
        ),
        "rollout.weight_sync.kind=\"sglang\"".into(),
        format!("rollout.weight_sync.servers=[\"{servers}\"]"),
    ] {
        cmd.arg("--set").arg(s);
    }
    cmd
}

/// A loopback rollout server answering every doctor turn with one line, ids inside the demo BPE's vocabulary.
pub(crate) fn rollout_server(rt: &tokio::runtime::Runtime) -> FakeServer {
    rt.block_on(FakeServer::start(FakeServerConfig {
        vocab_size: 300,
        chat: responders::fixed("It started two days ago."),
        ..Default::default()
    }))
    .unwrap()
}

#[test]
fn the_external_server_loads_each_policy_version_before_it_plays() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rollout_server(&rt);
    let root_url = format!("http://{}", server.addr());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = train(&run, &server.base_url(), &root_url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("does not refresh that server's weights"),
        "{stderr}"
    );

    // Version 0 before the first round (the policy after SFT), then one per update; every request is answered
    // only after the fake found a complete transformers folder at model_path.
    let updates: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/update_weights_from_disk")
        .collect();
    let versions: Vec<&str> = updates
        .iter()
        .map(|r| r.body["weight_version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0", "1", "2"]);
    let sync = run.join("policy-sync");
    for (r, v) in updates.iter().zip(0..) {
        assert_eq!(
            Path::new(r.body["model_path"].as_str().unwrap()),
            sync.join(format!("v{v:06}"))
        );
        assert_eq!(r.body["flush_cache"], true);
    }
    // Only the version the server holds is kept.
    let left: Vec<String> = std::fs::read_dir(&sync)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["v000002"]);
    // Generation requests of the RL rounds came after the first refresh.
    let first_update = server
        .requests()
        .iter()
        .position(|r| r.path == "/update_weights_from_disk")
        .unwrap();
    assert!(
        server.requests()[first_update..]
            .iter()
            .any(|r| r.path == "/v1/completions"),
        "no round was played after the refresh"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("time/weight_sync_s"), "{metrics}");
    // Each RL round's samples were played by the version the learner had (no lag).
    let lags: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["rl/policy_lag"].as_f64())
        .collect();
    assert!(
        !lags.is_empty() && lags.iter().all(|&l| l == 0.0),
        "{lags:?}"
    );
}

#[test]
fn a_server_that_cannot_load_the_weights_stops_the_run_naming_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(FakeServer::start(FakeServerConfig {
            vocab_size: 300,
            ..Default::default()
        }))
        .unwrap();
    // Nothing listens on the weight server's port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = train(
        &dir.path().join("run"),
        &server.base_url(),
        &format!("http://{closed}"),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("http://{closed}/update_weights_from_disk"))
            && stderr.contains("policy version 0"),
        "{stderr}"
    );
}
