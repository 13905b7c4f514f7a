//! `[distributed] weights_at_rest = "sharded"`: learners that never hold the whole model (the layout of a model
//! too large for one GPU). Two gloo ranks start from an HF folder (each reads only its chunks), learn SFT steps
//! and RL rounds played by an external server that gets every policy version, and must take exactly the steps
//! of the same two ranks keeping the weights whole between updates: same losses, same final weights. Held-out
//! evaluations play through the server; checkpoints, the final model and the policy versions are written one
//! unit at a time (and export to the same weights as the whole run's); a run killed mid-way resumes from each rank's own optimizer shard and finishes as the run
//! left alone.
use super::data_parallel::{KILLED_RUN, launch2, metric_rows};
use super::weight_sync::rollout_server;
use super::{ok, root, spar};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command, out: &Path, model: &Path, url: &str, server: &str, rl_steps: usize) {
    cmd.args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(out);
    for s in [
        format!("model.path=\"{}\"", model.display()),
        "trainer.bpe_vocab_size=0".into(),
        "trainer.sft_steps=2".into(),
        format!("trainer.steps={rl_steps}"),
        "trainer.sft_batch=4".into(),
        "trainer.aux_loss_coef=0.0".into(),
        "trainer.kl_coef=0.0".into(),
        "rollout.groups_per_step=2".into(),
        "rollout.group_size=2".into(),
        "rollout.sampling.max_new_tokens=8".into(),
        "rollout.turn_limits=[2, 1, 1, 1]".into(),
        "eval.max_cases=1".into(),
        "eval.max_new_tokens=8".into(),
        "data.max_cases=4".into(),
        "rollout.backend=\"openai\"".into(),
        format!(
            "rollout.endpoint={{ base_url = \"{url}\", model = \"fake-doctor\", timeout_s = 30.0 }}"
        ),
        "rollout.weight_sync.kind=\"sglang\"".into(),
        format!("rollout.weight_sync.servers=[\"{server}\"]"),
        "distributed.sharding=\"full\"".into(),
        // The 235B cluster recipe's layout at small scale: experts divided among the two ranks too.
        "distributed.expert_parallel=2".into(),
    ] {
        cmd.arg("--set").arg(s);
    }
}

/// The starting model: the tiny demo after a few SFT steps, as an HF folder with its tokenizer.
fn starting_model(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    ok(super::data_parallel::tiny(&mut spar(), &base, 0));
    base.join("final")
}

fn variables(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let m = spar_model::Qwen3Model::load(dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let mut v: Vec<_> = m.vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn weights_sharded_at_rest_take_the_steps_of_whole_ones() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rollout_server(&rt);
    let (url, root_url) = (server.base_url(), format!("http://{}", server.addr()));
    let dir = tempfile::tempdir().unwrap();
    let model = starting_model(dir.path());

    let whole = dir.path().join("whole");
    let mut cmd = launch2();
    run(&mut cmd, &whole, &model, &url, &root_url, 2);
    ok(&mut cmd);
    let before = server.requests().len();
    let sharded = dir.path().join("sharded");
    let mut cmd = launch2();
    run(&mut cmd, &sharded, &model, &url, &root_url, 2);
    let err = super::ok_stderr(cmd.args(["--set", "distributed.weights_at_rest=\"sharded\""]));
    assert!(err.contains("weights sharded at rest"), "{err}");

    // Same steps: every SFT and RL loss and grad norm, and the final weights, bit for bit (the same fp32
    // masters, gathered the same way; only where the weights wait between updates differs).
    for key in ["sft/loss", "rl/loss"] {
        let (a, b) = (metric_rows(&whole, key), metric_rows(&sharded, key));
        assert_eq!(a.len(), 2, "{key}: {a:?}");
        assert_eq!(a.len(), b.len(), "{key}");
        for (x, y) in a.iter().zip(&b) {
            for k in [key, &key.replace("loss", "grad_norm")] {
                assert_eq!(x[k], y[k], "{k}: whole {x}, sharded at rest {y}");
            }
        }
    }
    let (wa, wb) = (
        variables(&whole.join("final")),
        variables(&sharded.join("final")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((n, x), (m, y)) in wa.iter().zip(&wb) {
        assert_eq!(n, m);
        assert!(x.equal(y), "{n} differs");
    }
    // Written one unit at a time: the root and each of the tiny model's layers, one file each.
    let latest = std::fs::read_to_string(sharded.join("checkpoints/latest")).unwrap();
    let ckpt = sharded.join("checkpoints").join(latest.trim());
    for d in [ckpt.join("model"), sharded.join("final")] {
        assert!(
            d.join("model.safetensors.index.json").exists(),
            "{}",
            d.display()
        );
        assert!(
            d.join("model-00001-of-00003.safetensors").exists(),
            "{}",
            d.display()
        );
    }
    assert!(ckpt.join("optimizer/rank-1.safetensors").exists());
    // `spar export` of either run's last checkpoint: the checkpoint's files as they are (one per unit here),
    // holding the same weights as the whole run's export.
    let export = |run: &Path| {
        let to = run.with_extension("export");
        ok(spar()
            .args(["export", "--checkpoint"])
            .arg(run)
            .arg("--out")
            .arg(&to));
        to
    };
    let (ew, es) = (export(&whole), export(&sharded));
    let unit = "model-00002-of-00003.safetensors";
    assert!(
        std::fs::read(es.join(unit)).unwrap()
            == std::fs::read(ckpt.join("model").join(unit)).unwrap()
    );
    for ((n, x), (_, y)) in variables(&ew).iter().zip(&variables(&es)) {
        assert!(x.equal(y), "{n}: the exports differ");
    }

    // The server got the starting folder itself first (the initial evaluation), then the policy after SFT
    // (the evaluation before RL and the first round: written once), then one version per round.
    let updates: Vec<serde_json::Value> = server.requests()[before..]
        .iter()
        .filter(|r| r.path == "/update_weights_from_disk")
        .map(|r| r.body.clone())
        .collect();
    let versions: Vec<&str> = updates
        .iter()
        .map(|b| b["weight_version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0", "0", "1", "2"], "{updates:?}");
    assert_eq!(
        Path::new(updates[0]["model_path"].as_str().unwrap()),
        model.as_path()
    );
    // Held-out evaluations played through the server: the transcripts are there.
    for name in ["initial", "before", "after"] {
        assert!(
            sharded.join(format!("transcripts/{name}.md")).exists(),
            "{name}"
        );
    }
    let comparison: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sharded.join("comparison.json")).unwrap()).unwrap();
    assert!(
        comparison["after_rl"]["episodes"].as_u64() == Some(1),
        "{comparison}"
    );
}

/// Kill -9 rank 1 after the first RL round (a checkpoint every round): `--resume` reads each rank's optimizer
/// shard (the weights are its fp32 masters) and finishes with the losses and final weights of the run left
/// alone, bit for bit.
#[cfg(target_os = "linux")]
#[test]
fn a_run_sharded_at_rest_killed_mid_way_resumes_exactly() {
    const ROUNDS: usize = 4;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rollout_server(&rt);
    let (url, root_url) = (server.base_url(), format!("http://{}", server.addr()));
    let dir = tempfile::tempdir().unwrap();
    let model = starting_model(dir.path());
    let at_rest = ["--set", "distributed.weights_at_rest=\"sharded\""];
    let cmd = |out: &Path| {
        let mut c = launch2();
        run(&mut c, out, &model, &url, &root_url, ROUNDS);
        c.args(KILLED_RUN).args(at_rest);
        c
    };
    let (killed, left_alone) = (dir.path().join("killed"), dir.path().join("left-alone"));
    ok(&mut cmd(&left_alone));
    let (mut child, log) =
        super::data_parallel::kill_mid_run(&mut cmd(&killed), &killed, dir.path(), 1);
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        metric_rows(&killed, "rl/loss").len() < ROUNDS,
        "finished before the kill"
    );
    ok(cmd(&killed).arg("--resume"));
    let (a, b) = (
        metric_rows(&left_alone, "rl/loss"),
        metric_rows(&killed, "rl/loss"),
    );
    assert_eq!(b.len(), ROUNDS, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(y["rl/grad_norm"].as_f64().unwrap() > 0.0, "{y}");
        for k in ["rl/loss", "rl/grad_norm"] {
            assert_eq!(x[k], y[k], "{k}: left alone {x}, resumed {y}");
        }
    }
    for ((n, x), (_, y)) in variables(&left_alone.join("final"))
        .iter()
        .zip(&variables(&killed.join("final")))
    {
        assert!(x.equal(y), "{n}: the resumed run differs");
    }
}

/// `spar serve` as the rollout server (no SGLang): it plays the rounds and the held-out evaluations and loads
/// every policy version the two ranks write (SGLang's `/update_weights_from_disk`), ending on the last one.
#[test]
fn spar_serve_is_the_rollout_server_of_a_run_sharded_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let model = starting_model(dir.path());
    let server = super::spar_serve(&model, &[]);
    let url = server.url.clone();
    let root_url = url.trim_end_matches("/v1").to_string();
    let run_dir = dir.path().join("run");
    let mut cmd = launch2();
    run(&mut cmd, &run_dir, &model, &url, &root_url, 2);
    let out = cmd
        .args(["--set", "distributed.weights_at_rest=\"sharded\""])
        .output()
        .unwrap();
    let stats = get_json(&root_url, "/stats");
    drop(server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = stats.expect("the server's /stats");
    assert_eq!(stats["weight_version"], "2", "{stats}");
    assert!(
        stats["engine"]["requests"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert_eq!(metric_rows(&run_dir, "rl/loss").len(), 2);
    for name in ["initial", "before", "after"] {
        assert!(
            run_dir.join(format!("transcripts/{name}.md")).exists(),
            "{name}"
        );
    }
}

/// `GET path` of the server at `root` (`http://ADDR`), its JSON body (None when it does not answer).
fn get_json(root: &str, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let addr = root.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}
