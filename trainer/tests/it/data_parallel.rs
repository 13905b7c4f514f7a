//! The data-parallel learner on real processes (gloo on loopback, launched like `spar launch`): 2, 3 and 4 ranks,
//! each on its share of the same global batches, against one process on the whole batches (`spar-dp-check`);
//! plain and fully sharded, and sharded checkpoints resumed on other world sizes and in the other mode.
//!
//! Tolerance: the ranks compute the same float32 terms as the one process, only summed in another order (per-rank
//! partial sums, then the all-reduce), so each reduced quantity differs by a few float32 ulps (relative ~1e-7 per
//! sum, amplified by at most a few steps). Losses and grad norms are compared at 1e-5 relative, weights after 5
//! AdamW steps at 1e-5 absolute (lr 1e-3: Adam's update m / sqrt(v) is O(1) per step, so a weight carries at
//! most ~lr x relative gradient error per step).
use spar_dist::launch::{LaunchSpec, launch};
use std::path::Path;
use std::time::Duration;

fn check(out: &Path, n: usize) {
    run(out, n, &[]);
}

fn run(out: &Path, n: usize, extra: &[&str]) {
    let program = env!("CARGO_BIN_EXE_spar-dp-check");
    let mut args = vec!["--out".to_string(), out.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    if n == 1 {
        let st = std::process::Command::new(program)
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "one-process dp-check {extra:?} failed");
        return;
    }
    launch(&LaunchSpec {
        nproc_per_node: n,
        nnodes: 1,
        node_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: 0,
        program: program.into(),
        args,
        grace: Duration::from_secs(3),
        max_restarts: 0,
    })
    .unwrap();
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(dir.join("weights.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn two_three_and_four_ranks_take_the_one_process_steps() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("1");
    check(&one, 1);
    let r1 = report(&one);
    let steps1 = r1["steps"].as_array().unwrap();
    assert_eq!(steps1.len(), 5);
    // The batch with advantages only in rank 0's share still trains; the all-zero one skips.
    assert_eq!(steps1[2]["skipped"], false);
    assert_eq!(steps1[3]["skipped_empty_advantage"], true);
    for n in [2, 3, 4] {
        let d = dir.path().join(n.to_string());
        check(&d, n);
        assert_eq!(report(&d)["world"], n);
        assert_same_as_one(&format!("{n} ranks"), &one, &d, 0);
        assert_sum_overlapped(&d);
    }
    // Activation-checkpointed (backward recomputes each layer) on 2 ranks: the same steps.
    let d = dir.path().join("2-checkpointed");
    run(&d, 2, &["--checkpointing"]);
    assert_same_as_one("2 ranks, checkpointed", &one, &d, 0);
    assert_sum_overlapped(&d);
    // The steps had a gradient (the comparison is not between two untouched models).
    assert!(steps1[0]["grad_norm"].as_f64().unwrap() > 0.0);
}

/// Expert parallelism (the MoE layers' experts divided among groups of ranks, rows exchanged all-to-all) takes
/// the one-process steps: EP 2 on 2 ranks, EP 4 on 4 (one expert per rank), EP 2 x DP 2 on 4 ranks (two
/// expert-parallel subgroups), EP 2 activation-checkpointed (the exchanges run again in the recomputation) and
/// fully sharded; and with every token routed to experts 0 and 1 (the ranks owning the others receive no rows),
/// against one process on the same routing. Same tolerances as data parallelism: the experts compute the same
/// rows, only the sums over ranks change order.
#[test]
fn expert_parallel_layouts_take_the_one_process_steps() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("1");
    check(&one, 1);
    for (label, n, extra) in [
        ("EP 2", 2, &["--expert-parallel", "2"][..]),
        ("EP 4", 4, &["--expert-parallel", "4"][..]),
        ("EP 2 x DP 2", 4, &["--expert-parallel", "2"][..]),
        (
            "EP 2, checkpointed",
            2,
            &["--expert-parallel", "2", "--checkpointing"][..],
        ),
        (
            "EP 2, sharded",
            2,
            &["--expert-parallel", "2", "--sharded"][..],
        ),
    ] {
        let d = dir.path().join(label.replace([' ', ','], "_"));
        run(&d, n, extra);
        assert_same_as_one(label, &one, &d, 0);
    }
    let one_expert = dir.path().join("1-one-expert");
    run(&one_expert, 1, &["--one-expert"]);
    let d = dir.path().join("ep4-one-expert");
    run(&d, 4, &["--expert-parallel", "4", "--one-expert"]);
    assert_same_as_one("EP 4, all tokens to experts 0 and 1", &one_expert, &d, 0);
    // The forced routing changed the run: the comparison is not between two identical defaults.
    let (a, b) = (report(&one), report(&one_expert));
    assert_ne!(a["steps"][0]["loss"], b["steps"][0]["loss"]);
}

/// The MoE load-balancing loss counts every rank's tokens at each micro-batch step (`spar_trainer::aux_loss`):
/// 2 ranks (plain, expert parallel, fully sharded) with 2 items per micro-batch, and 4 ranks with 1, take the
/// steps of one process whose micro-batches of 4 are the unions of theirs. Same tolerance as above: the counts
/// are integers, and the probability sums are float32 sums in another order.
#[test]
fn the_load_balancing_loss_over_every_ranks_tokens_equals_one_process_on_the_union_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("1-aux");
    run(&one, 1, &["--aux", "--micro-batch", "4"]);
    for (label, n, extra) in [
        ("2 ranks, aux", 2, &["--aux"][..]),
        ("EP 2, aux", 2, &["--aux", "--expert-parallel", "2"][..]),
        ("2 ranks sharded, aux", 2, &["--aux", "--sharded"][..]),
        ("4 ranks, aux", 4, &["--aux", "--micro-batch", "1"][..]),
    ] {
        let d = dir.path().join(label.replace([' ', ','], "_"));
        run(&d, n, extra);
        assert_same_as_one(label, &one, &d, 0);
    }
    // The loss is on and depends on how the tokens are grouped: without it, or with one process counting
    // micro-batches of 2 (what each rank would count alone), step 0's loss differs.
    let (off, small) = (dir.path().join("1-off"), dir.path().join("1-aux-mb2"));
    run(&off, 1, &["--micro-batch", "4"]);
    run(&small, 1, &["--aux"]);
    let loss = |d: &Path| report(d)["steps"][0]["loss"].as_f64().unwrap();
    assert!(
        (loss(&one) - loss(&off)).abs() > 1e-4,
        "{} vs {}",
        loss(&one),
        loss(&off)
    );
    assert!(
        (loss(&one) - loss(&small)).abs() > 1e-6,
        "{} vs {}",
        loss(&one),
        loss(&small)
    );
}

/// Every step's gradient sum was started unit by unit during the last backward: 4 stepping updates (one of
/// them with two PPO epochs) x 3 units (root and two layers), none left for after backward.
fn assert_sum_overlapped(dir: &Path) {
    let r = report(dir);
    let (overlapped, reduced) = (&r["overlapped_units"], &r["reduced_units"]);
    assert_eq!(reduced, 4 * 3, "{}", dir.display());
    assert_eq!(overlapped, reduced, "{}", dir.display());
}

/// Compares `dir`'s reported steps (from `first` on in the one-process run) and final weights with the
/// one-process run's, at the tolerances of the module documentation. Returns the largest weight difference.
fn assert_same_as_one(label: &str, one: &Path, dir: &Path, first: usize) -> f64 {
    let (r1, w1) = (report(one), weights(one));
    let (rn, wn) = (report(dir), weights(dir));
    let steps1 = &r1["steps"].as_array().unwrap()[first..];
    let stepsn = rn["steps"].as_array().unwrap();
    assert_eq!(steps1.len(), stepsn.len(), "{label}: step count");
    for (i, (a, b)) in steps1.iter().zip(stepsn).enumerate() {
        for k in ["skipped", "skipped_empty_advantage", "tokens"] {
            assert_eq!(a[k], b[k], "{label}, step {i}: {k}");
        }
        for k in ["loss", "grad_norm", "entropy", "stat_tokens", "clipped"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{label}, step {i}: {k} {y} vs one process {x}"
            );
        }
    }
    assert_eq!(w1.len(), wn.len());
    let mut worst = 0.0f64;
    for ((name, a), (name_n, b)) in w1.iter().zip(&wn) {
        assert_eq!(name, name_n);
        let d = (a - b).abs().max().double_value(&[]);
        worst = worst.max(d);
        assert!(d <= 1e-5, "{label}: {name} differs by {d}");
    }
    eprintln!("{label}: largest weight difference {worst:e}");
    worst
}

/// Fully sharded (FSDP / ZeRO-3) on 1 to 4 ranks takes the one plain process's steps: the reduce-scatter sums
/// the same terms as the all-reduce, and AdamW is elementwise, so each rank's chunk moves as the same slice of
/// the whole model would. Three ranks get 2, 1 and 1 micro-batches, so two of them run padding micro-batches.
#[test]
fn fully_sharded_on_one_to_four_ranks_takes_the_one_process_steps() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("plain-1");
    check(&one, 1);
    for n in [1, 2, 3, 4] {
        let d = dir.path().join(format!("sharded-{n}"));
        run(&d, n, &["--sharded"]);
        assert_eq!(report(&d)["world"], n);
        assert_same_as_one(&format!("sharded on {n} ranks"), &one, &d, 0);
    }
}

/// A 2-rank sharded checkpoint (every rank's optimizer chunks plus the manifest) resumes on 1 rank sharded, on
/// 4 ranks sharded and in one plain process, each then taking the steps the uninterrupted one-process run took.
/// Were the moments or masters cut wrongly, Adam's next updates would differ by ~lr = 1e-3, far above 1e-5.
#[test]
fn sharded_checkpoint_resumes_on_other_world_sizes_and_unsharded() {
    let dir = tempfile::tempdir().unwrap();
    let (one, saved, ckpt) = one_process_and_two_rank_checkpoint(dir.path(), &["--sharded"]);
    let opt = ckpt.join("optimizer");
    for f in ["manifest.json", "rank-0.safetensors", "rank-1.safetensors"] {
        assert!(opt.join(f).exists(), "{f} missing in {}", opt.display());
    }
    assert!(!ckpt.join("optimizer.safetensors").exists());
    assert_weights_are_the_masters(&ckpt);
    for (label, n, sharded) in [
        ("1 rank sharded", 1, true),
        ("4 ranks sharded", 4, true),
        ("1 plain process", 1, false),
    ] {
        let d = dir.path().join(label.replace(' ', "-"));
        copy_dir(&saved, &d);
        let mut args = vec!["--resume"];
        if sharded {
            args.push("--sharded");
        }
        run(&d, n, &args);
        // Updates 0 and 1 took 3 steps; the resumed run reports the rest.
        assert_same_as_one(&format!("resumed on {label}"), &one, &d, 3);
    }
}

/// The same with the weights sharded at rest: the 2-rank checkpoint's weights are written a unit at a time, and
/// resuming on 2 ranks reads each rank's own shard while 1 and 4 ranks re-cut the chunks reading only their
/// slices of the old ranks' files; every resumed run takes the one plain process's remaining steps.
#[test]
fn a_checkpoint_sharded_at_rest_resumes_on_other_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (one, saved, ckpt) =
        one_process_and_two_rank_checkpoint(dir.path(), &["--sharded", "--at-rest-sharded"]);
    assert!(ckpt.join("model/model.safetensors.index.json").exists());
    assert_weights_are_the_masters(&ckpt);
    for n in [2, 1, 4] {
        let d = dir.path().join(format!("on-{n}"));
        copy_dir(&saved, &d);
        run(&d, n, &["--resume", "--sharded", "--at-rest-sharded"]);
        assert_same_as_one(&format!("sharded at rest, resumed on {n}"), &one, &d, 3);
    }
}

/// The one plain process's run, and a 2-rank run (`extra` flags) stopped with a checkpoint after 2 updates
/// (3 steps): (one, saved run, its checkpoint).
fn one_process_and_two_rank_checkpoint(
    dir: &Path,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let one = dir.join("plain-1");
    check(&one, 1);
    let saved = dir.join("saved");
    let mut args = extra.to_vec();
    args.extend(["--stop-after", "2"]);
    run(&saved, 2, &args);
    let ckpt = saved.join("checkpoints").join("step-00000003");
    (one, saved, ckpt)
}

/// The checkpoint's weights (`model/`, what `spar export` reads) are the ranks' fp32 master chunks joined, bit
/// for bit (the model is fp32 here).
fn assert_weights_are_the_masters(ckpt: &Path) {
    let merged =
        spar_model::Qwen3Model::load(&ckpt.join("model"), tch::Device::Cpu, tch::Kind::Float)
            .unwrap()
            .vs
            .variables();
    let whole = spar_trainer::sharded::read_whole_state(ckpt).unwrap();
    assert!(!merged.is_empty());
    for (name, w) in &merged {
        let master = &whole[&format!("master.{name}")];
        assert_eq!(w.size(), master.size(), "{name}");
        assert!(
            w.equal(master),
            "{name}: merged weights differ from the joined masters"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}
