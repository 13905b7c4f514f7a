//! The benchmark commands run end to end on a tiny config on the CPU (their figures come from the GPU; here only
//! that they run and report what they claim).
use crate::spar;

const TINY: &str = r#"{"model_type": "qwen3", "vocab_size": 1200, "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
  "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}"#;

/// `spar bench ARGS --profile DIR/prof` (ARGS: the subcommand and its flags, space-separated) on the tiny config in
/// fp32 on the CPU (written into `dir`); its stdout, after checking that it succeeded.
fn bench_profiled(dir: &std::path::Path, args: &str) -> String {
    bench_tiny(dir, &format!("{args} --dtype fp32"), true)
}

/// `spar bench ARGS --device cpu --config TINY` (written into `dir`; with `profile`, `--profile DIR/prof`); its
/// stdout, after checking that it succeeded.
fn bench_tiny(dir: &std::path::Path, args: &str, profile: bool) -> String {
    let config = dir.join("config.json");
    std::fs::write(&config, TINY).unwrap();
    let mut cmd = spar();
    cmd.arg("bench")
        .args(args.split_whitespace())
        .args(["--device", "cpu", "--config"])
        .arg(&config);
    if profile {
        cmd.arg("--profile").arg(dir.join("prof"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `spar bench grpo`: every iteration generates P x G full completions, trains on all of them and takes a step;
/// `--profile` records the last iteration.
#[test]
fn bench_grpo_runs_an_iteration_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench_profiled(
        dir.path(),
        "grpo --prompts 2 --group 3 --prompt-len 5 --new 7 --micro-batch 4 --warmup 1 --iters 1",
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["iteration"], i, "{l}");
        assert_eq!(l["warmup"], i == 0, "{l}");
        assert_eq!(l["generated_tokens"], 2 * 3 * 7, "{l}");
        assert_eq!(l["trained_tokens"], 2 * 3 * (5 + 7), "{l}");
        assert!(l["grad_norm"].as_f64().is_some_and(|g| g > 0.0), "{l}");
        let parts = ["generate_s", "score_s", "learn_s"].map(|k| l[k].as_f64().unwrap());
        let total = l["seconds"].as_f64().unwrap();
        assert!((parts.iter().sum::<f64>() - total).abs() < 1e-9, "{l}");
    }
    let md = std::fs::read_to_string(dir.path().join("prof/grpo.md")).unwrap();
    for span in [
        "`bench/generate`",
        "`engine/decode`",
        "`bench/learn`",
        "`learn/backward`",
    ] {
        assert!(md.contains(span), "{span} missing:\n{md}");
    }
    // The same tables from the trace itself, as for a trace of another framework.
    let out = spar()
        .args(["bench", "trace", "--top", "5"])
        .arg(dir.path().join("prof/grpo.trace.json.gz"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("| `bench/generate` | 1 |"), "{table}");
    assert!(table.contains("more) |"), "cut to 5 rows: {table}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[]").unwrap();
    let out = spar().args(["bench", "trace"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.json"), "{err}");
}

/// `spar bench train`: one line for the timed steps with the model FLOPs behind its MFU (no MFU on the CPU), and
/// `--profile` records one more step.
#[test]
fn bench_train_reports_model_flops_and_profiles_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench_profiled(
        dir.path(),
        "train --batch 2 --micro-batch 1 --seq 16 --warmup 1 --iters 1",
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // A token at the mean causal context of 8.5 positions, per layer: q, k, v, o (2,048 + 1,024 MACs), the MLP
    // (6,144) and attention (2 x 2 heads x 16 x 8.5); two layers and the 32 x 1,200 head make 57,920 MACs,
    // x 2 FLOPs x 3 (forward and backward) = 347,520 FLOPs.
    let per_token = line["model_tflops_per_s"].as_f64().unwrap() * 1e12
        / line["tokens_per_s"].as_f64().unwrap();
    assert!((per_token - 347_520.0).abs() < 1e-6 * 347_520.0, "{line}");
    assert!(line["mfu"].is_null(), "{line}");
    let md = std::fs::read_to_string(dir.path().join("prof/train.md")).unwrap();
    for span in ["`bench/train_step`", "aten::mm"] {
        assert!(md.contains(span), "{span} missing:\n{md}");
    }
}

/// `--optimizer-state compact` on a bf16 model: two thirds of the fp32 state (8 bytes a parameter for 12), and
/// the same first step's loss (the state does not enter the forward).
#[test]
fn bench_train_compact_optimizer_state_is_two_thirds_of_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let line = |state: &str| -> serde_json::Value {
        let args = format!(
            "train --batch 2 --micro-batch 1 --seq 16 --warmup 0 --iters 1 --dtype bf16 --optimizer-state {state}"
        );
        serde_json::from_str(bench_tiny(dir.path(), &args, false).trim()).unwrap()
    };
    let (fp32, compact) = (line("fp32"), line("compact"));
    assert_eq!(compact["optimizer_state"], "compact", "{compact}");
    let gib = |l: &serde_json::Value| l["optimizer_state_gib"].as_f64().unwrap();
    assert!(gib(&fp32) > 0.0, "{fp32}");
    assert!(
        (gib(&compact) / gib(&fp32) - 2.0 / 3.0).abs() < 1e-9,
        "{fp32}\n{compact}"
    );
    assert_eq!(fp32["loss"], compact["loss"], "{fp32}\n{compact}");
}
