//! The `spar` binary finds its shipped data (cases, knowledge base, recipes) from anywhere: a copy of it in an
//! empty folder, run from another empty folder with an environment that names no source path, sees the 480
//! shipped cases and the knowledge base and trains the shipped `tiny-cpu` recipe by name.
use std::path::Path;
use std::process::{Command, Output};

/// The built binary copied into `bin_dir`, to be run from `cwd` with a bare environment: PATH, HOME and
/// XDG_CACHE_HOME inside `home`, the library path (libtorch) and nothing that points at the source tree.
fn relocated(bin_dir: &Path, cwd: &Path, home: &Path) -> impl Fn(&[&str]) -> Output {
    let exe = bin_dir.join("spar");
    std::fs::copy(env!("CARGO_BIN_EXE_spar"), &exe).expect("copying the spar binary");
    let cwd = cwd.to_path_buf();
    let home = home.to_path_buf();
    move |args: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("SPAR_LOG", "warn");
        if let Some(lib) = std::env::var_os("LD_LIBRARY_PATH") {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        let out = cmd.output().expect("the copied spar runs");
        assert!(
            out.status.success(),
            "spar {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

#[test]
fn a_copied_binary_finds_its_data_and_trains_a_shipped_recipe_by_name() {
    let bin_dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let spar = relocated(bin_dir.path(), cwd.path(), home.path());

    let stats = String::from_utf8(spar(&["data", "stats"]).stdout).unwrap();
    let total = stats
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total line in:\n{stats}"));
    let cells: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cells[1], "480", "{stats}");
    let kb = stats
        .lines()
        .find(|l| l.starts_with("knowledge base"))
        .unwrap_or_else(|| panic!("no knowledge-base line in:\n{stats}"));
    assert!(
        kb.contains("version") && kb.contains("ICD-10 codes"),
        "{kb}"
    );
    // The data came from the binary, not from the source tree.
    assert!(kb.contains(&home.path().display().to_string()), "{kb}");

    let names = String::from_utf8(spar(&["data", "recipes"]).stdout).unwrap();
    assert!(names.lines().any(|n| n == "tiny-cpu"), "{names}");
    let text = String::from_utf8(spar(&["data", "recipes", "tiny-cpu"]).stdout).unwrap();
    assert!(text.contains("name = \"tiny-cpu\""), "{text}");

    spar(&[
        "train",
        "--recipe",
        "tiny-cpu",
        "--set",
        "trainer.sft_steps=2",
        "--set",
        "trainer.steps=1",
        "--set",
        "trainer.sft_batch=4",
        "--set",
        "rollout.groups_per_step=1",
        "--set",
        "rollout.group_size=2",
        "--set",
        "rollout.sampling.max_new_tokens=8",
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
    ]);
    // `../runs/tiny-cpu` of the shipped recipe lands in the current folder, as it does from a checkout.
    let run = cwd.path().join("runs/tiny-cpu");
    let audit: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.join("audit.json"))
            .unwrap_or_else(|e| panic!("no run folder at {}: {e}", run.display())),
    )
    .unwrap();
    assert_eq!(audit["outcome"], "ok", "{audit}");
    for f in [
        "metrics.jsonl",
        "comparison.json",
        "final/model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing from {}", run.display());
    }
}
