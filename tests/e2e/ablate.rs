//! `spar ablate` end to end on a tiny grid: an SFT-only arm and two RL arms over two seeds, at the few-step sizes
//! of the demo test. Checks the run folders, the shared SFT (every arm of a seed reports the same before-RL
//! evaluation and records where its SFT came from), the table, a second invocation that re-runs nothing, a run
//! whose results were lost being resumed from its checkpoint, and the refusal of an arm that changes SFT.
use super::{root, spar};
use std::path::Path;

/// The demo test's tiny sizes, for every run of the grid.
const TINY: &[&str] = &[
    "trainer.sft_steps=3",
    "trainer.steps=1",
    "trainer.sft_batch=4",
    "trainer.eval_every=0",
    "rollout.groups_per_step=1",
    "rollout.group_size=2",
    "rollout.sampling.max_new_tokens=16",
    "rollout.turn_limits=[2, 1, 1, 1]",
    "eval.max_cases=1",
    "eval.max_new_tokens=16",
    "data.max_cases=4",
    "trainer.bpe_vocab_size=400",
];

fn write_spec(dir: &Path, extra_arm: &str) -> std::path::PathBuf {
    let base = root().join("recipes/tiny-cpu-partial.toml");
    let text = format!(
        "base = {:?}\nseeds = [0, 1]\nbaseline = \"sft\"\n\
         [[arm]]\nname = \"sft\"\nsft_only = true\n\
         [[arm]]\nname = \"spar\"\nset = [\"rewards.spar.estimator=\\\"spar\\\"\"]\n\
         [[arm]]\nname = \"grpo\"\nset = [\"rewards.spar.estimator=\\\"grpo\\\"\", \"trainer.lr=1e-3\"]\n{extra_arm}",
        base.display().to_string()
    );
    let p = dir.join("spec.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn ablate(spec: &Path, out: &Path, more: &[&str]) -> std::process::Output {
    let mut cmd = spar();
    cmd.arg("ablate").arg(spec).arg("--out").arg(out);
    cmd.args(["--jobs", "2"]);
    for s in TINY {
        cmd.args(["--set", s]);
    }
    cmd.args(more);
    cmd.output().expect("spar runs")
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn ablate_runs_a_tiny_grid_on_a_shared_sft_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("abl");
    let spec = write_spec(tmp.path(), "");
    let o = ablate(&spec, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "spar ablate failed:\n{stderr}");

    // One folder per (RL arm, seed), one shared SFT run per seed (the sft_only arm's results), each with a log.
    for run in [
        "sft-s0", "sft-s1", "spar-s0", "spar-s1", "grpo-s0", "grpo-s1",
    ] {
        assert!(
            out.join(run).join("comparison.json").is_file(),
            "{run}: no comparison.json\n{stderr}"
        );
        assert!(out.join(format!("{run}.log")).is_file(), "{run}.log");
    }
    // Shared SFT: every arm of a seed has the same before-RL row, and the RL arms record where it came from.
    for seed in [0, 1] {
        let before = |arm: &str| {
            json(&out.join(format!("{arm}-s{seed}/comparison.json")))["before_rl"].clone()
        };
        assert_eq!(before("sft"), before("spar"), "seed {seed}");
        assert_eq!(before("sft"), before("grpo"), "seed {seed}");
        let latest =
            std::fs::read_to_string(out.join(format!("spar-s{seed}/checkpoints/latest"))).unwrap();
        let state = json(&out.join(format!(
            "spar-s{seed}/checkpoints/{}/trainer_state.json",
            latest.trim()
        )));
        let from = state["extra"]["shared_sft"]["from"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(from.ends_with(&format!("sft-s{seed}")), "{from}");
        assert_eq!(state["phase"], "done");
    }
    let log = std::fs::read_to_string(out.join("grpo-s0.log")).unwrap();
    assert!(log.contains("RL from the shared SFT"), "{log}");
    assert!(log.contains("rewards.spar.estimator, trainer.lr"), "{log}");

    // The table.
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(md.contains("## held-out stage mean"), "{md}");
    assert!(
        md.contains("| spar | 2 |") && md.contains("| grpo | 2 |"),
        "{md}"
    );
    assert!(md.contains("Δ vs sft"), "{md}");
    assert!(md.contains("Runs: 6 of 6 finished"), "{md}");
    assert!(
        md.contains("Every arm of a seed reports the same held-out evaluation before RL"),
        "{md}"
    );
    let report = json(&out.join("ablation.json"));
    assert_eq!(report["min_p_all_seeds"], 0.5);
    let stage = &report["metrics"][0];
    assert_eq!(stage["key"], "stage_mean");
    for arm in stage["arms"].as_array().unwrap() {
        assert_eq!(arm["estimate"]["n"], 2, "{arm}");
        if arm["arm"] != "sft" {
            let d = &arm["diff"];
            assert_eq!(d["n"], 2, "{arm}");
            let p = d["test"]["p"].as_f64().unwrap();
            assert!(p == 0.5 || p == 1.0, "{arm}");
        }
    }
    // The SFT-only arm's values are the shared SFT runs' before-RL stage means.
    let sft_vals = stage["arms"][0]["values"].as_array().unwrap();
    for v in sft_vals {
        let seed = v[0].as_u64().unwrap();
        let b = json(&out.join(format!("sft-s{seed}/comparison.json")))["before_rl"]["stage_means"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum::<f64>()
            / 4.0;
        assert!((v[1].as_f64().unwrap() - b).abs() < 1e-12);
    }
    assert!(out.join("plots").is_dir());
    // Every RL arm's held-out curve starts at round 0, at the SFT arm's point (the shared checkpoint's evaluation).
    let report = json(&out.join("ablation.json"));
    let curve = report["curves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "eval/stage_mean")
        .unwrap();
    let first = |arm: &str| {
        let arms = curve["arms"].as_array().unwrap();
        let a = arms
            .iter()
            .find(|a| a[0] == arm)
            .unwrap_or_else(|| panic!("{arm}: {curve}"));
        a[1][0].clone()
    };
    for arm in ["spar", "grpo"] {
        let (p, sft) = (first(arm), first("sft"));
        assert_eq!(
            (p["x"].as_f64(), p["n"].as_u64()),
            (Some(0.0), Some(2)),
            "{arm}: {p}"
        );
        assert!(
            (p["mean"].as_f64().unwrap() - sft["mean"].as_f64().unwrap()).abs() < 1e-12,
            "{arm}: {p} vs {sft}"
        );
    }

    // Again: every run is kept, nothing re-runs.
    let stamps: Vec<_> = ["sft-s0", "spar-s1", "grpo-s1"]
        .iter()
        .map(|r| mtime(&out.join(r).join("comparison.json")))
        .collect();
    let o = ablate(&spec, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("(6 finished already)"), "{stderr}");
    for (r, t) in ["sft-s0", "spar-s1", "grpo-s1"].iter().zip(&stamps) {
        assert_eq!(
            mtime(&out.join(r).join("comparison.json")),
            *t,
            "{r} re-ran"
        );
    }

    // A run that lost its results (as if killed after its last checkpoint) resumes from its checkpoint.
    std::fs::remove_file(out.join("grpo-s1/comparison.json")).unwrap();
    let o = ablate(&spec, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("(5 finished already)"), "{stderr}");
    let log = std::fs::read_to_string(out.join("grpo-s1.log")).unwrap();
    assert!(
        log.contains("--resume") && log.contains("resuming from"),
        "{log}"
    );
    assert_eq!(
        json(&out.join("grpo-s1/comparison.json"))["before_rl"],
        json(&out.join("sft-s1/comparison.json"))["before_rl"]
    );

    // --report-only aggregates without running.
    let o = spar()
        .arg("ablate")
        .arg(&spec)
        .arg("--out")
        .arg(&out)
        .arg("--report-only")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // An arm that changes what SFT depends on is refused before anything runs; so is `spar train --from-sft` with
    // such a change.
    let bad = write_spec(
        tmp.path(),
        "[[arm]]\nname = \"hot\"\nset = [\"trainer.sft_lr=1e-2\"]\n",
    );
    let o = ablate(&bad, &tmp.path().join("bad"), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(
        stderr.contains("arm hot changes trainer.sft_lr"),
        "{stderr}"
    );
    assert!(!tmp.path().join("bad").join("sft-s0").exists());
    let o = spar()
        .args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu-partial.toml"))
        .args(TINY.iter().flat_map(|s| ["--set", s]))
        .args(["--set", "trainer.sft_steps=5"])
        .arg("--out")
        .arg(tmp.path().join("bad-arm"))
        .arg("--from-sft")
        .arg(out.join("sft-s0"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(stderr.contains("trainer.sft_steps"), "{stderr}");
}

#[test]
fn report_only_on_a_folder_without_finished_runs_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "");
    let empty = tmp.path().join("nothing-here");
    let o = spar()
        .arg("ablate")
        .arg(&spec)
        .arg("--out")
        .arg(&empty)
        .arg("--report-only")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("none of the 6 runs"), "{stderr}");
    assert!(stderr.contains("nothing-here"), "{stderr}");
}
