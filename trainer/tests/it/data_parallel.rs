//! The data-parallel learner on real processes (gloo on loopback, launched like `spar launch`): 2, 3 and 4 ranks,
//! each on its share of the same global batches, against one process on the whole batches (`spar-dp-check`).
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
    let program = env!("CARGO_BIN_EXE_spar-dp-check");
    let args = vec!["--out".to_string(), out.display().to_string()];
    if n == 1 {
        let st = std::process::Command::new(program)
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "one-process dp-check failed");
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
    let (r1, w1) = (report(&one), weights(&one));
    let steps1 = r1["steps"].as_array().unwrap();
    assert_eq!(steps1.len(), 5);
    // The batch with advantages only in rank 0's share still trains; the all-zero one skips.
    assert_eq!(steps1[2]["skipped"], false);
    assert_eq!(steps1[3]["skipped_empty_advantage"], true);
    for n in [2, 3, 4] {
        let d = dir.path().join(n.to_string());
        check(&d, n);
        let (rn, wn) = (report(&d), weights(&d));
        assert_eq!(rn["world"], n);
        for (i, (a, b)) in steps1
            .iter()
            .zip(rn["steps"].as_array().unwrap())
            .enumerate()
        {
            for k in ["skipped", "skipped_empty_advantage", "tokens"] {
                assert_eq!(a[k], b[k], "{n} ranks, step {i}: {k}");
            }
            for k in ["loss", "grad_norm", "entropy", "stat_tokens", "clipped"] {
                let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{n} ranks, step {i}: {k} {y} vs one process {x}"
                );
            }
        }
        assert_eq!(w1.len(), wn.len());
        let mut worst = 0.0f64;
        for ((name, a), (name_n, b)) in w1.iter().zip(&wn) {
            assert_eq!(name, name_n);
            let d = (a - b).abs().max().double_value(&[]);
            worst = worst.max(d);
            assert!(d <= 1e-5, "{n} ranks: {name} differs by {d}");
        }
        eprintln!("{n} ranks: largest weight difference {worst:e}");
    }
    // The steps had a gradient (the comparison is not between two untouched models).
    assert!(steps1[0]["grad_norm"].as_f64().unwrap() > 0.0);
}
