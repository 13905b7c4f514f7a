//! `spar train --deterministic` on the CPU (issue 19): two RL runs of one recipe and seed write byte-identical
//! checkpoints, final weights and metrics (timings aside), and a run killed with SIGKILL twice and resumed each
//! time ends byte-identical to them too. A tiny run: SFT 2 steps, 3 RL rounds of 2 groups,
//! a checkpoint every round, the gate opened (tau 0) so that every round pools segments the resume must
//! restore, and an entropy bonus so that every round's update moves the weights.
use super::{ok, root, spar};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const SFT_STEPS: usize = 2;
const RL_STEPS: usize = 3;

fn det<'a>(cmd: &'a mut Command, out: &Path) -> &'a mut Command {
    cmd.args(["train", "--deterministic", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(out)
        .args([
            "--set",
            &format!("trainer.sft_steps={SFT_STEPS}"),
            "--set",
            &format!("trainer.steps={RL_STEPS}"),
            "--set",
            "trainer.sft_batch=4",
            "--set",
            "trainer.save_every=1",
            "--set",
            "trainer.keep_last=10",
            "--set",
            "trainer.entropy_coef=0.01",
            "--set",
            "rollout.groups_per_step=2",
            "--set",
            "rollout.group_size=2",
            "--set",
            "rollout.tau=0.0",
            "--set",
            "rollout.sampling.max_new_tokens=12",
            "--set",
            "rollout.turn_limits=[2, 1, 1, 1]",
            "--set",
            "eval.max_cases=1",
            "--set",
            "eval.max_new_tokens=8",
            "--set",
            "data.max_cases=4",
            "--set",
            "trainer.bpe_vocab_size=300",
        ])
}

/// Metric keys that measure time, not the run's numbers; and the engine's scheduling counts (`rollout/*`:
/// decode steps, batch sizes, prefix reuse), which depend on when each turn reached it, not on what it generated.
fn timing(key: &str) -> bool {
    key == "time"
        || key.starts_with("time/")
        || key.starts_with("rollout/")
        || key.ends_with("_seconds")
        || key.ends_with("_per_s")
}

/// Every metrics line, timings removed, as (step, key -> value) in file order.
fn metrics(run: &Path) -> Vec<BTreeMap<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(l).unwrap();
            v.into_iter().filter(|(k, _)| !timing(k)).collect()
        })
        .collect()
}

/// Every weight and optimizer file of every checkpoint, and the final weights: relative path -> bytes.
fn weight_files(run: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                out.insert(
                    p.strip_prefix(base).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(run, &run.join("checkpoints"), &mut out);
    walk(run, &run.join("final"), &mut out);
    out
}

#[track_caller]
fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (wa, wb) = (weight_files(a), weight_files(b));
    assert_eq!(
        wa.keys().collect::<Vec<_>>(),
        wb.keys().collect::<Vec<_>>(),
        "{what}: different checkpoint files"
    );
    for (name, bytes) in &wa {
        assert!(&wb[name] == bytes, "{what}: {} differs", name.display());
    }
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "{what}: metrics lines");
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x, y, "{what}: metrics differ");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn deterministic_runs_and_a_killed_and_resumed_run_are_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, killed) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("killed"),
    );
    ok(det(&mut spar(), &a));
    let rounds = metrics(&a)
        .into_iter()
        .filter(|m| m.contains_key("rl/loss"))
        .collect::<Vec<_>>();
    assert_eq!(rounds.len(), RL_STEPS);
    // Real updates: a run whose rounds were all skipped would be identical trivially.
    for row in &rounds {
        assert_eq!(row["rl/skipped"].as_f64(), Some(0.0), "{row:?}");
        assert!(row["rl/grad_norm"].as_f64().unwrap() > 0.0, "{row:?}");
    }
    assert!(
        weight_files(&a).len() > RL_STEPS,
        "{:?}",
        weight_files(&a).keys()
    );
    ok(det(&mut spar(), &b));
    assert_same_run(&a, &b, "a second run");

    // Killed (SIGKILL) twice: once its first RL round is logged (its checkpoint may not be written yet: the resume
    // then starts from the end of SFT, whose step also holds the evaluation before RL), and, resumed, once a
    // later RL checkpoint is written; resumed again to the end.
    let rl_rows = |run: &Path| {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"rl/loss\""))
            .count()
    };
    let latest_step = |run: &Path| {
        std::fs::read_to_string(run.join("checkpoints/latest"))
            .ok()
            .and_then(|l| l.trim().strip_prefix("step-")?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    kill_when(
        det(&mut spar(), &killed),
        &dir.path().join("kill1.log"),
        || rl_rows(&killed) >= 1,
    );
    kill_when(
        det(&mut spar(), &killed).arg("--resume"),
        &dir.path().join("kill2.log"),
        // The checkpoint of RL round 2 (global step SFT_STEPS + 2), before round 3 and the end.
        || latest_step(&killed) >= SFT_STEPS + 2,
    );
    assert!(
        !killed.join("final").exists(),
        "the run finished before the kill"
    );
    let out = det(&mut spar(), &killed).arg("--resume").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_same_run(&a, &killed, "the killed and resumed run");
}

/// Starts `cmd` (stderr to `log`) and kills it with SIGKILL once `ready()` holds; fails if it ends first.
fn kill_when(cmd: &mut Command, log: &Path, ready: impl Fn() -> bool) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(
            start.elapsed().as_secs() < 300,
            "not ready to kill in 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `--deterministic` promises bit-identity on the CPU only: a GPU device is refused before anything runs.
#[test]
fn deterministic_on_a_gpu_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = spar()
        .args(["train", "--deterministic", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(dir.path().join("run"))
        .args(["--set", "model.device=\"cuda:0\""])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--deterministic: bit-identical runs are built for the CPU"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists());
}
