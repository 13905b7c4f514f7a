//! End-to-end tests of the spar binary: a few-step run of the demo recipe, the contract path
//! rollout fixture -> `spar score` -> one trainer step, from files, one recipe honoured by every command,
//! `spar ablate` on a tiny grid (`ablate.rs`), data-parallel runs (`data_parallel.rs`) and the settings
//! `spar serve` and `spar generate` refuse at start (`serve_flags.rs`), and PHI planted in a case kept out of
//! every file a run writes (`phi.rs`).
mod ablate;
mod data_parallel;
mod phi;
mod recipe_honoured;
mod serve_flags;

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn spar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spar"))
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn ok(cmd: &mut Command) {
    let out = cmd.output().expect("spar runs");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A few-step run of the tiny demo: tokenizer, SFT, one RL round (with a KL term to the SFT policy), evaluation,
/// plots, checkpoints.
fn tiny_run(out: &Path) {
    ok(spar()
        .args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(out)
        .args([
            "--set",
            "trainer.sft_steps=3",
            "--set",
            "trainer.steps=1",
            "--set",
            "trainer.sft_batch=4",
            "--set",
            "rollout.groups_per_step=1",
            "--set",
            "rollout.group_size=2",
            "--set",
            "rollout.sampling.max_new_tokens=16",
            "--set",
            "rollout.turn_limits=[2, 1, 1, 1]",
            "--set",
            "eval.max_cases=1",
            "--set",
            "eval.max_new_tokens=16",
            "--set",
            "data.max_cases=4",
            "--set",
            "trainer.bpe_vocab_size=400",
            "--set",
            "trainer.kl_coef=0.05",
        ]));
}

#[test]
fn few_step_demo_run_then_contract_path_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_run(&run);
    let audit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("audit.json")).expect("audit.json missing"))
            .unwrap();
    assert_eq!(audit["outcome"], "ok", "{audit}");
    for f in [
        "metrics.jsonl",
        "comparison.json",
        "transcripts/initial.md",
        "transcripts/before.md",
        "transcripts/after.md",
        "final/config.json",
        "final/model.safetensors",
        "tokenizer/tokenizer.json",
        "checkpoints/latest",
        // The KL reference: the policy as RL started, kept for a resume.
        "reference/config.json",
        "reference/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }

    assert!(std::fs::read_dir(run.join("plots")).unwrap().count() >= 2);
    let cmp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("comparison.json")).unwrap()).unwrap();
    for phase in ["initial", "before_rl", "after_rl", "expert"] {
        assert!(
            cmp[phase]["reward_mean"].as_f64().is_some(),
            "{phase}: {cmp}"
        );
    }

    // Contract: samples written by `spar rollout`, scored by `spar score`, one trainer step, all from files.
    let rollout_dir = dir.path().join("rollout");
    let samples = rollout_dir.join("samples.parquet");
    let scored = dir.path().join("scored.jsonl");
    ok(spar()
        .args(["rollout", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--model")
        .arg(run.join("final"))
        .arg("--out")
        .arg(&rollout_dir)
        .args([
            "--groups",
            "1",
            "--set",
            "rollout.group_size=2",
            "--set",
            "rollout.sampling.max_new_tokens=16",
            "--set",
            "data.max_cases=4",
        ]));
    ok(spar()
        .args(["score", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--in")
        .arg(&samples)
        .arg("--out")
        .arg(&scored));
    let step = dir.path().join("step");
    ok(spar()
        .args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--in")
        .arg(&samples)
        .arg("--scored")
        .arg(&scored)
        .arg("--model")
        .arg(run.join("final"))
        .arg("--out")
        .arg(&step));
    assert!(step.join("checkpoints/latest").exists());
    let line = std::fs::read_to_string(step.join("metrics.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(v["rl/loss"].as_f64().is_some_and(f64::is_finite), "{v}");

    // Export round trip: the exported folder loads back in spar with identical weights.
    let exported = dir.path().join("export");
    ok(spar()
        .args(["export", "--checkpoint"])
        .arg(&step)
        .arg("--out")
        .arg(&exported));
    let a = std::fs::read(
        step.join("checkpoints")
            .join(
                std::fs::read_to_string(step.join("checkpoints/latest"))
                    .unwrap()
                    .trim(),
            )
            .join("model/model.safetensors"),
    )
    .unwrap();
    let b = std::fs::read(exported.join("model.safetensors")).unwrap();
    assert_eq!(a, b, "exported weights differ from the checkpoint's");

    // Last: it damages and then deletes the run.
    run_folder_is_not_written_over(&run, dir.path());
}

/// A finished run's folder: a second fresh `spar train` is refused naming it; any run is refused while another
/// process holds its lock; its checkpoints carry checksums and `spar export` of the folder names the checkpoint
/// it exports and exports exactly its weights.
fn run_folder_is_not_written_over(run: &Path, scratch: &Path) {
    let train = |extra: &[&str]| {
        let out = spar()
            .args(["train", "--recipe"])
            .arg(root().join("recipes/tiny-cpu.toml"))
            .arg("--out")
            .arg(run)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was not refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = train(&[]);
    assert!(
        err.contains(&format!(
            "run folder {} holds a finished run",
            run.display()
        )) && err.contains("--overwrite"),
        "{err}"
    );
    std::fs::write(
        run.join(".lock"),
        r#"{"pid": 1, "host": "elsewhere", "started": 1}"#,
    )
    .unwrap();
    let err = train(&["--resume"]);
    assert!(err.contains("is in use by pid 1 on elsewhere"), "{err}");
    std::fs::remove_file(run.join(".lock")).unwrap();
    assert!(
        std::fs::read_dir(run).unwrap().count() > 3,
        "nothing was removed"
    );

    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let ckpt = run.join("checkpoints").join(latest.trim());
    assert!(ckpt.join("checksums.sha256").is_file());
    let exported = scratch.join("export-run");
    let out = spar()
        .args(["export", "--checkpoint"])
        .arg(run)
        .arg("--out")
        .arg(&exported)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("checkpoint {}", ckpt.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read(ckpt.join("model/model.safetensors")).unwrap(),
        std::fs::read(exported.join("model.safetensors")).unwrap()
    );

    // A damaged newest checkpoint (one byte of its weights changed) is named and passed over: the export is the
    // checkpoint before it, and says so.
    let mut all: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    all.sort();
    assert!(all.len() >= 2, "{all:?}");
    let (older, newest) = (&all[all.len() - 2], &all[all.len() - 1]);
    assert_eq!(newest, &ckpt);
    let w = newest.join("model/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x55;
    std::fs::write(&w, &bytes).unwrap();
    let exported = scratch.join("export-fallback");
    let out = spar()
        .args(["export", "--checkpoint"])
        .arg(run)
        .arg("--out")
        .arg(&exported)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("checkpoint {} is damaged", newest.display()))
            && err.contains("model.safetensors does not match its checksum")
            && err.contains(&format!("checkpoint {} (phase", older.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read(older.join("model/model.safetensors")).unwrap(),
        std::fs::read(exported.join("model.safetensors")).unwrap()
    );

    // --overwrite deletes the earlier run before anything else (this run then stops at its missing cases file,
    // said as such).
    let out = spar()
        .args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(run)
        .args([
            "--overwrite",
            "--set",
            "data.cases=/nonexistent/cases.jsonl",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("deleting the earlier run")
            && err.contains("not found: /nonexistent/cases.jsonl"),
        "{err}"
    );
    for gone in [
        "checkpoints",
        "final",
        "metrics.jsonl",
        "comparison.json",
        "tb",
        "plots",
    ] {
        assert!(!run.join(gone).exists(), "{gone} survived --overwrite");
    }
    // That failed run (no checkpoint) is replaced by the next fresh run without a flag, which says so.
    let out = spar()
        .args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(run)
        .args(["--set", "data.cases=/nonexistent/again.jsonl"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds a run that failed before its first checkpoint")
            && err.contains("not found: /nonexistent/again.jsonl"),
        "{err}"
    );
}
