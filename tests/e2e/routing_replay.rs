//! Routing replay with `spar serve` as the rollout server: started with `--enable-return-routed-experts`, it
//! returns every token's expert choices and `spar rollout` / `spar train` with `rollout.record_routing` and
//! `trainer.routing_replay` get them into the samples and the learner; started without it, the run stops at
//! its first generation with an error saying how to start the server (never samples without routing).
//! (That the choices equal the built-in engine's is `rollout/tests/it/serve_routing.rs`.)
use super::{ok, root, spar, spar_serve as serve};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tiny MoE demo after a few SFT steps, as an HF folder with its tokenizer.
fn starting_model(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    ok(super::data_parallel::tiny(&mut spar(), &base, 0));
    base.join("final")
}

/// `spar rollout` of the tiny recipe on the server at `url`, recording routing.
fn rollout(model: &Path, url: &str, out: &Path) -> Command {
    let mut cmd = spar();
    cmd.arg("rollout")
        .arg("--recipe")
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--groups", "1"]);
    for s in [
        "trainer.bpe_vocab_size=0".to_string(),
        "rollout.group_size=2".into(),
        "rollout.sampling.max_new_tokens=8".into(),
        "rollout.turn_limits=[2, 1, 1, 1]".into(),
        "rollout.record_routing=true".into(),
        "rollout.backend=\"openai\"".into(),
        format!(
            "rollout.endpoint={{ base_url = \"{url}\", model = \"policy\", timeout_s = 60.0, max_retries = 0 }}"
        ),
    ] {
        cmd.arg("--set").arg(s);
    }
    cmd
}

#[test]
fn spar_serve_gives_routing_replay_its_expert_choices() {
    let dir = tempfile::tempdir().unwrap();
    let model = starting_model(dir.path());
    let config = spar_model::Qwen3Config::from_file(&model.join("config.json")).unwrap();
    let layout = config.moe_layout().expect("the demo model is MoE");

    // Without the flag: the first generation fails, naming the flag, in `spar rollout` and in `spar train`.
    let plain = serve(&model, &[]);
    for (name, mut cmd) in [
        (
            "rollout",
            rollout(&model, &plain.url, &dir.path().join("r0")),
        ),
        ("train", train(&model, &plain.url, &dir.path().join("t0"))),
    ] {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name} ran without routing:\n{stderr}"
        );
        assert!(
            stderr.contains("--enable-return-routed-experts"),
            "{name}: {stderr}"
        );
    }
    drop(plain);

    // With it: every sample carries the routing of every position.
    let served = serve(&model, &["--enable-return-routed-experts"]);
    let ro = dir.path().join("r1");
    ok(&mut rollout(&model, &served.url, &ro));
    let samples = spar_data::wire::read_samples(&ro.join("samples.parquet")).unwrap();
    assert!(!samples.is_empty());
    for s in &samples {
        let r = s
            .routed_experts
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no routing", s.case_id));
        assert_eq!((r.layers, r.k), (layout.moe_layers.len(), layout.top_k));
        assert_eq!(r.ids.len(), s.token_ids.len() * r.layers * r.k);
    }

    // And a training run replays them: one RL round on the same server.
    ok(&mut train(&model, &served.url, &dir.path().join("t1")));
    drop(served);
}

/// `spar train` of one RL round with routing replay on the server at `url` (no SFT, from the demo model).
fn train(model: &Path, url: &str, out: &Path) -> Command {
    let mut cmd = spar();
    cmd.args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(out);
    for s in [
        format!("model.path=\"{}\"", model.display()),
        "trainer.bpe_vocab_size=0".into(),
        "trainer.sft_steps=0".into(),
        "trainer.steps=1".into(),
        "trainer.routing_replay=true".into(),
        "rollout.record_routing=true".into(),
        "rollout.groups_per_step=1".into(),
        "rollout.group_size=2".into(),
        "rollout.sampling.max_new_tokens=8".into(),
        "rollout.turn_limits=[2, 1, 1, 1]".into(),
        "eval.max_cases=1".into(),
        "eval.max_new_tokens=8".into(),
        "data.max_cases=4".into(),
        "rollout.backend=\"openai\"".into(),
        format!(
            "rollout.endpoint={{ base_url = \"{url}\", model = \"policy\", timeout_s = 60.0, max_retries = 0 }}"
        ),
    ] {
        cmd.arg("--set").arg(s);
    }
    cmd
}
