//! `spar launch --nproc-per-node 2 -- train`: two gloo ranks on loopback. SFT on 2 and 4 ranks, plain and fully
//! sharded, equals SFT in one process (every rank draws the same batch and learns its half, with global counts
//! and summed gradients); a fully sharded run with RL rounds finishes with rank 0's outputs and a sharded
//! checkpoint; layouts that cannot run are refused with the reason.
use super::{ok, ok_stderr, root, spar};
use std::path::Path;
use std::process::Command;

/// The tiny demo at a few steps; the MoE load-balancing loss is off because it is counted per micro-batch step
/// (over every rank's tokens of the step), so its value depends on how the batch is cut, and one process cuts
/// it otherwise (the trainer's data_parallel test compares it on matching micro-batches).
pub(crate) fn tiny<'a>(cmd: &'a mut Command, out: &Path, rl_steps: usize) -> &'a mut Command {
    cmd.args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(out)
        .args([
            "--set",
            "trainer.sft_steps=3",
            "--set",
            &format!("trainer.steps={rl_steps}"),
            "--set",
            "trainer.sft_batch=4",
            "--set",
            "trainer.aux_loss_coef=0.0",
            "--set",
            "rollout.groups_per_step=2",
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
        ])
}

pub(crate) fn launch2() -> Command {
    let mut c = spar();
    c.args(["launch", "--nproc-per-node", "2", "--"]);
    c
}

pub(crate) fn metric_rows(run: &Path, key: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get(key).is_some())
        .collect()
}

pub(crate) fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Float32 sums in another order (per-rank partial sums, then the all-reduce): losses at 1e-5 relative, weights
/// after 3 AdamW steps (lr 3e-3) at 2e-5 absolute on 2 ranks (see below).
#[test]
fn sft_on_two_and_four_ranks_equals_one_process_sft() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    ok(tiny(&mut spar(), &one, 0));
    ok(tiny(&mut launch2(), &two, 0));
    let four = dir.path().join("four");
    let mut launch4 = spar();
    launch4.args(["launch", "--nproc-per-node", "4", "--"]);
    ok(tiny(&mut launch4, &four, 0));
    let sharded = dir.path().join("two-sharded");
    ok(tiny(&mut launch2(), &sharded, 0).args(["--set", "distributed.sharding=\"full\""]));
    let a = metric_rows(&one, "sft/loss");
    assert_eq!(a.len(), 3);
    for (ranks, run) in [(2, &two), (4, &four), (2, &sharded)] {
        let b = metric_rows(run, "sft/loss");
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            for k in ["sft/loss", "sft/grad_norm", "sft/entropy"] {
                let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{k}: {ranks} ranks {y}, one process {x}"
                );
            }
        }
    }
    // Weights: at 2e-5 on 2 ranks. On 4 ranks the sums are cut once more, and Adam divides each coordinate's
    // gradient by its own running RMS, so a coordinate whose gradient nearly cancels (a rare token's embedding
    // row) turns a float32-ulp difference into a visible one. Measured over the 544,512 weights with the
    // whole-logits log-softmax (`SPAR_KERNELS=off`): 2 ranks, 19 beyond 1e-6 and none beyond 1e-5 (max 8.1e-6);
    // 4 ranks, 82 beyond 1e-6 and one beyond 1e-5 (1.5e-5). With the fused chunked log-probs (the default; its
    // rounding differs at the float32 ulp): 2 ranks, 19 beyond 1e-6, max 1.27e-5 (the same layer-0 k_proj
    // coordinate as the 8.1e-6 above); 4 ranks, 99 beyond 1e-6, max 1.7e-5. Asserted: on 2 ranks every weight
    // within 2e-5; on 4 every weight within 1e-4 (3 steps at lr 3e-3 bound a coordinate's drift by 9e-3); on both
    // at most 1 in 1,000 beyond 1e-6.
    let wa = weights(&one.join("final"));
    for (ranks, run) in [(2, &two), (4, &four), (2, &sharded)] {
        let wb = weights(&run.join("final"));
        assert_eq!(wa.len(), wb.len());
        let (mut beyond, mut total) = (0i64, 0i64);
        for ((n, x), (m, y)) in wa.iter().zip(&wb) {
            assert_eq!(n, m);
            let diff = (x - y).abs();
            let d = diff.max().double_value(&[]);
            let limit = if ranks == 2 { 2e-5 } else { 1e-4 };
            assert!(
                d <= limit,
                "{n}: {ranks} ranks differ from one process by {d}"
            );
            beyond += diff.gt(1e-6).sum(tch::Kind::Int64).int64_value(&[]);
            total += diff.numel() as i64;
        }
        assert!(
            beyond * 1_000 <= total,
            "{ranks} ranks: {beyond} of {total} weights differ by more than 1e-6"
        );
    }
}

/// `spar train` on two ranks, fully sharded and expert parallel (the tiny MoE's 4 experts, 2 per rank):
/// the recipe's layout reaches the learner, and the run finishes with rank 0's outputs. (That these layouts take
/// the one-process steps is the trainer's `data_parallel` tests.)
#[test]
fn two_rank_fully_sharded_expert_parallel_rl_run_finishes_with_rank_zeros_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let err = ok_stderr(
        tiny(&mut launch2(), &run, 2)
            .args(["--set", "distributed.sharding=\"full\""])
            .args(["--set", "distributed.expert_parallel=2"]),
    );
    assert!(
        err.contains("expert parallel: rank 0's MoE layers compute 1/2 of the experts"),
        "{err}"
    );
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let ckpt = run.join("checkpoints").join(latest.trim());
    for f in [
        "optimizer/manifest.json",
        "optimizer/rank-0.safetensors",
        "optimizer/rank-1.safetensors",
        "model/model.safetensors",
    ] {
        assert!(ckpt.join(f).exists(), "{f} missing in {}", ckpt.display());
    }
    for f in [
        "audit.json",
        "metrics.jsonl",
        "comparison.json",
        "transcripts/initial.md",
        "transcripts/after.md",
        "final/model.safetensors",
        "final/tokenizer.json",
        "checkpoints/latest",
        "reference/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let audit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("audit.json")).unwrap()).unwrap();
    assert_eq!(audit["outcome"], "ok", "{audit}");
    // One writer: one metrics row per RL round (not one per rank), with the union round's reward and loss.
    let rl = metric_rows(&run, "rl/loss");
    assert_eq!(rl.len(), 2, "{rl:?}");
    for row in &rl {
        assert!(row["rl/loss"].as_f64().is_some_and(f64::is_finite), "{row}");
        assert!(
            row["rl/grad_norm"].as_f64().is_some_and(f64::is_finite),
            "{row}"
        );
        assert!(row.get("rl/reward_mean").is_some(), "{row}");
        // The round's diagnostics are the union's (every rank's scores gathered): shares within [0, 1].
        for k in ["rl/zero_variance_groups", "rl/informative_samples"] {
            assert!(
                row[k].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)),
                "{k}: {row}"
            );
        }
        assert!(
            row["rl/adv_min"].as_f64() <= row["rl/adv_max"].as_f64(),
            "{row}"
        );
        // The round's time line: playing (generation + scoring), the old log-prob pass, learning, the rest.
        let t = |k: &str| {
            row[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} missing: {row}"))
        };
        for k in [
            "time/generate_s",
            "time/score_s",
            "time/old_logprob_s",
            "time/other_s",
        ] {
            assert!(t(k) >= 0.0, "{k}: {row}");
        }
        assert!(
            t("time/generate_s") + t("time/score_s") <= t("time/play_s") + 1e-6,
            "{row}"
        );
        assert!(t("time/old_logprob_s") <= t("time/learn_s"), "{row}");
        let parts = t("time/play_s") + t("time/learn_s") + t("time/other_s");
        assert!((parts - t("rl/step_seconds")).abs() < 1e-6, "{row}");
    }
}

#[test]
fn layouts_that_cannot_run_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |extra: &[&str], expect: &str| {
        let mut cmd = launch2();
        tiny(&mut cmd, &dir.path().join("x"), 1).args(extra);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} ran");
        assert!(err.contains(expect), "{extra:?}: {err}");
    };
    fails(
        &["--set", "rollout.groups_per_step=3"],
        "not divisible by the 2 data-parallel ranks",
    );
    fails(
        &["--set", "distributed.data_parallel=4"],
        "distributed.data_parallel = 4, but the launcher started 2 rank(s)",
    );
    fails(
        &["--set", "distributed.tensor_parallel=2"],
        "tensor and pipeline parallelism are not",
    );
    fails(
        &["--set", "distributed.expert_parallel=4"],
        "distributed.expert_parallel = 4 does not divide the 2 learner rank(s)",
    );
}

/// torchrun itself (`python -m torch.distributed.run --no-python`, the venv of scripts/bootstrap.sh or
/// `SPAR_PYTHON`) launches two ranks of `spar train`: its agent hosts the store, the ranks connect to it.
#[test]
fn torchrun_launches_two_ranks_of_spar_train() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(std::env::var("SPAR_PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.args([
        "-m",
        "torch.distributed.run",
        "--no-python",
        "--nproc-per-node",
        "2",
    ])
    .args([
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        &port.to_string(),
    ])
    .arg(env!("CARGO_BIN_EXE_spar"))
    .env("OMP_NUM_THREADS", "1");
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut probe = spar();
    tiny(&mut probe, &run, 1);
    args.extend(probe.get_args().map(|a| a.to_os_string()));
    cmd.args(args);
    ok(&mut cmd);
    assert_eq!(metric_rows(&run, "rl/loss").len(), 1);
    assert!(run.join("final/model.safetensors").exists());
}

/// The launcher's child with `RANK=<rank>` in its environment.
pub(crate) fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the comm may hold spaces, so read after its closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(launcher) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env
            .split(|&b| b == 0)
            .any(|kv| kv == format!("RANK={rank}").as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// Spawns `cmd` with its output in `dir`, waits for its first RL round, kill -9s rank `rank` (found among the
/// launcher's children). Returns the launcher's child and its stderr log.
#[cfg(target_os = "linux")]
pub(crate) fn kill_mid_run(
    cmd: &mut Command,
    run: &Path,
    dir: &Path,
    rank: usize,
) -> (std::process::Child, std::path::PathBuf) {
    let log = dir.join("launch.log");
    let mut child = cmd
        .stdout(std::fs::File::create(dir.join("launch.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !run.join("metrics.jsonl").is_file() || metric_rows(run, "rl/loss").is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(start.elapsed().as_secs() < 600, "no RL round in 600 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = rank_pid(child.id(), rank).expect("the rank among the launcher's children");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    (child, log)
}

/// The killed run's settings (and every resume's): a checkpoint every round; the gate opened (tau 0) so that every
/// round pools segments and the ranks' pools differ (each holds its own cases); 4 groups per round so that 4 ranks
/// can share them; an entropy bonus so that every round trains (the tiny model's rewards are all 0 this early, so
/// without it every update would be skipped and the weights could not tell a right resume from a wrong one).
pub(crate) const KILLED_RUN: [&str; 8] = [
    "--set",
    "trainer.save_every=1",
    "--set",
    "rollout.tau=0.0",
    "--set",
    "rollout.groups_per_step=4",
    "--set",
    "trainer.entropy_coef=0.01",
];

/// Kill -9 one rank mid-run: the launcher stops the other rank (SIGTERM, SIGKILL after `--grace-secs`, 10 s)
/// and exits non-zero naming the killed rank, well within 60 s. `--resume` on 2 ranks continues exactly: its
/// losses and final weights equal those of the same run left alone (each rank resumes its own stage pools and
/// RNG; gloo sums in a fixed order, so equal means bitwise here, asserted at 1e-6). A copy of the killed run
/// resumed in one process (resharded: one rank takes both ranks' pooled segments) finishes too. The gate is
/// opened (tau 0) so that every round pools segments and the ranks' pools differ (each holds its own cases).
#[cfg(target_os = "linux")]
#[test]
fn a_rank_killed_mid_run_stops_the_job_naming_it_and_resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cmd = launch2();
    tiny(&mut cmd, &run, 6).args(KILLED_RUN);
    // Mid-run: once the first RL round is logged (and checkpointed), before the last.
    let (mut child, log) = kill_mid_run(&mut cmd, &run, dir.path(), 1);
    let killed = std::time::Instant::now();
    let status = child.wait().unwrap();
    let took = killed.elapsed();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "the launcher exited 0 after a rank was killed:\n{err}"
    );
    assert!(err.contains("rank 1 failed"), "{err}");
    assert!(took.as_secs() < 60, "the job took {took:?} to stop");
    assert!(
        metric_rows(&run, "rl/loss").len() < 6,
        "the run finished before the kill"
    );
    // Resuming on 2 ranks is refused with the reason (checkpoints hold rank 0's state only); one process
    // resumes rank 0's checkpoint and finishes the run.
    let left_alone = dir.path().join("left-alone");
    let mut full = launch2();
    tiny(&mut full, &left_alone, 6).args(KILLED_RUN);
    ok(&mut full);
    // Every round trains: the equalities below compare real updates.
    for row in metric_rows(&left_alone, "rl/loss") {
        assert_eq!(row["rl/skipped"].as_f64(), Some(0.0), "{row}");
        assert!(row["rl/grad_norm"].as_f64().unwrap() > 0.0, "{row}");
    }
    let copy = |name: &str| {
        let to = dir.path().join(name);
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(&run)
                .arg(&to)
                .status()
                .unwrap()
                .success()
        );
        to
    };
    let (resharded, on_four) = (copy("resharded"), copy("on-four"));
    let mut two = launch2();
    tiny(&mut two, &run, 6).args(KILLED_RUN).arg("--resume");
    ok(&mut two);
    let (a, b) = (
        metric_rows(&left_alone, "rl/loss"),
        metric_rows(&run, "rl/loss"),
    );
    assert_eq!(b.len(), 6, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        let step = &y["step"];
        for k in ["rl/loss", "rl/reward_mean", "rl/grad_norm"] {
            let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                "step {step}: {k} resumed {y}, left alone {x}"
            );
        }
    }
    let (wa, wb) = (
        weights(&left_alone.join("final")),
        weights(&run.join("final")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((n, x), (m, y)) in wa.iter().zip(&wb) {
        assert_eq!(n, m);
        let d = (x - y).abs().max().double_value(&[]);
        assert!(
            d <= 1e-6,
            "{n}: the resumed run differs from the one left alone by {d}"
        );
    }
    let mut one = spar();
    tiny(&mut one, &resharded, 6)
        .args(KILLED_RUN)
        .arg("--resume");
    let out = one.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("from 2 rank(s) to 1"), "{err}");
    assert_eq!(metric_rows(&resharded, "rl/loss").len(), 6);
    assert!(resharded.join("final/model.safetensors").exists());
    let mut four = spar();
    four.args(["launch", "--nproc-per-node", "4", "--"]);
    tiny(&mut four, &on_four, 6)
        .args(KILLED_RUN)
        .arg("--resume");
    let out = four.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("from 2 rank(s) to 4"), "{err}");
    assert_eq!(metric_rows(&on_four, "rl/loss").len(), 6);
}
