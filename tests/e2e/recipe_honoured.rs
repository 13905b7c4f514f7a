//! One recipe means the same thing to every command (issue 13): a recipe with a non-default patient simulator
//! (an LLM behind a loopback fake OpenAI server), rollout backend (that server's token-in/token-out completions)
//! and knowledge base is honoured by `spar train`, `rollout`, `score` and `eval`: each command's consultations
//! reach the server as the simulator and as the backend, and each loads the recipe's knowledge base (a missing
//! one is an error naming `data.knowledge_base`; a real one is in the run's audit manifest).
use crate::{ok, root, spar};
use spar_testkit::{FakeServer, FakeServerConfig, responders};
use std::path::Path;
use std::process::Command;

/// The tiny demo shrunk to seconds, generating and simulating through `url`.
fn overrides(url: &str, kb: &Path) -> Vec<String> {
    let ep =
        |model: &str| format!("{{ base_url = \"{url}\", model = \"{model}\", timeout_s = 30.0 }}");
    [
        "trainer.sft_steps=2".to_string(),
        "trainer.steps=1".into(),
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
        format!("rollout.endpoint={}", ep("fake-doctor")),
        "rollout.simulator.kind=\"llm\"".into(),
        "rollout.simulator.factual_check=false".into(),
        format!("rollout.simulator.endpoint={}", ep("fake-patient")),
        "eval.simulator.kind=\"llm\"".into(),
        "eval.simulator.factual_check=false".into(),
        format!("eval.simulator.endpoint={}", ep("fake-patient")),
        format!("data.knowledge_base=\"{}\"", kb.display()),
    ]
    .into_iter()
    .collect()
}

fn with_sets(cmd: &mut Command, sets: &[String]) {
    for s in sets {
        cmd.arg("--set").arg(s);
    }
}

/// Requests the fake server got as the patient simulator (chat) and as the rollout backend (completions).
fn traffic(server: &FakeServer) -> (usize, usize) {
    let reqs = server.requests();
    let as_model = |path: &str, model: &str| {
        reqs.iter()
            .filter(|r| r.path == path && r.body["model"] == model)
            .count()
    };
    (
        as_model("/v1/chat/completions", "fake-patient"),
        as_model("/v1/completions", "fake-doctor"),
    )
}

fn audit_names_kb(audit: &Path, kb: &Path) {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(audit).unwrap()).unwrap();
    let files = m["data_files"].as_array().cloned().unwrap_or_default();
    assert!(
        files.iter().any(|f| f["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&kb.display().to_string()))),
        "{} does not list the recipe's knowledge base {}: {files:?}",
        audit.display(),
        kb.display()
    );
}

#[test]
fn non_default_simulator_backend_and_knowledge_base_are_honoured_by_every_command() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(FakeServer::start(FakeServerConfig {
            // Generated ids stay inside the demo BPE's vocabulary.
            vocab_size: 300,
            chat: responders::fixed("It started two days ago and it is getting worse."),
            ..Default::default()
        }))
        .unwrap();
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    // The recipe's knowledge base: a copy of the shipped one in a folder of its own.
    let kb = dir.path().join("kb-copy");
    std::fs::create_dir_all(&kb).unwrap();
    for e in std::fs::read_dir(root().join("data/kb")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), kb.join(e.file_name())).unwrap();
    }
    let sets = overrides(&url, &kb);
    let recipe = root().join("recipes/tiny-cpu.toml");

    // train: SFT plays, held-out evaluations and RL rounds all go through the recipe's simulator and backend.
    let run = dir.path().join("run");
    let mut cmd = spar();
    cmd.arg("train")
        .arg("--recipe")
        .arg(&recipe)
        .arg("--out")
        .arg(&run);
    with_sets(&mut cmd, &sets);
    ok(&mut cmd);
    let after_train = traffic(&server);
    assert!(
        after_train.0 > 0 && after_train.1 > 0,
        "spar train: simulator / backend requests {after_train:?}"
    );
    assert!(run.join("comparison.json").is_file());
    audit_names_kb(&run.join("audit.json"), &kb);

    // rollout
    let ro = dir.path().join("rollout");
    let mut cmd = spar();
    cmd.arg("rollout")
        .arg("--recipe")
        .arg(&recipe)
        .arg("--model")
        .arg(run.join("final"))
        .arg("--out")
        .arg(&ro)
        .args(["--groups", "1"]);
    with_sets(&mut cmd, &sets);
    ok(&mut cmd);
    let after_rollout = traffic(&server);
    assert!(
        after_rollout.0 > after_train.0 && after_rollout.1 > after_train.1,
        "spar rollout: simulator / backend requests {after_train:?} -> {after_rollout:?}"
    );
    audit_names_kb(&ro.join("audit.json"), &kb);

    // score
    let scored = dir.path().join("scored.jsonl");
    let mut cmd = spar();
    cmd.arg("score")
        .arg("--recipe")
        .arg(&recipe)
        .arg("--in")
        .arg(ro.join("samples.parquet"))
        .arg("--out")
        .arg(&scored);
    with_sets(&mut cmd, &sets);
    ok(&mut cmd);
    audit_names_kb(&dir.path().join("scored.jsonl.audit.json"), &kb);

    // eval: the local model generates through the recipe's backend, the patient is the recipe's.
    let ev = dir.path().join("eval");
    let mut cmd = spar();
    cmd.arg("eval")
        .arg("--recipe")
        .arg(&recipe)
        .arg("--model")
        .arg(run.join("final"))
        .arg("--out")
        .arg(&ev);
    with_sets(&mut cmd, &sets);
    ok(&mut cmd);
    let after_eval = traffic(&server);
    assert!(
        after_eval.0 > after_rollout.0 && after_eval.1 > after_rollout.1,
        "spar eval: simulator / backend requests {after_rollout:?} -> {after_eval:?}"
    );
    audit_names_kb(&ev.join("audit.json"), &kb);

    // A knowledge base that is not there stops every command with the key named.
    let missing = dir.path().join("no-such-kb");
    let bad = overrides(&url, &missing);
    let runs: [(&str, Vec<String>); 4] = [
        (
            "train",
            vec![
                "--out".into(),
                dir.path().join("run2").display().to_string(),
            ],
        ),
        (
            "rollout",
            vec![
                "--model".into(),
                run.join("final").display().to_string(),
                "--out".into(),
                dir.path().join("ro2").display().to_string(),
            ],
        ),
        (
            "score",
            vec![
                "--in".into(),
                ro.join("samples.parquet").display().to_string(),
                "--out".into(),
                dir.path().join("s2.jsonl").display().to_string(),
            ],
        ),
        (
            "eval",
            vec![
                "--model".into(),
                run.join("final").display().to_string(),
                "--out".into(),
                dir.path().join("ev2").display().to_string(),
            ],
        ),
    ];
    for (command, args) in runs {
        let mut cmd = spar();
        cmd.arg(command).arg("--recipe").arg(&recipe).args(&args);
        with_sets(&mut cmd, &bad);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("data.knowledge_base"),
            "spar {command} with a missing knowledge base: rc {:?}\n{err}",
            out.status.code()
        );
    }
    drop(server);
}
