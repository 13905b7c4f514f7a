//! Every collective on 1, 2 and 3 real processes, both ways of meeting, and under torchrun itself.
use crate::it::procs::{Meet, collect, free_port, selftest, spawn_rank};
use spar_dist::Store;
use std::time::Duration;

fn assert_all_pass(world: usize, meet: Meet) {
    let children = (0..world)
        .map(|r| spawn_rank(r, world, meet, &["--timeout-secs", "60"]))
        .collect();
    for (rank, (code, out, err)) in collect(children).into_iter().enumerate() {
        assert_eq!(code, 0, "rank {rank} of {world} failed:\n{out}\n{err}");
        assert!(
            out.contains(&format!("selftest ok: rank {rank} of {world}")),
            "{out}"
        );
    }
}

#[test]
fn two_ranks_rank_zero_hosts_the_store() {
    assert_all_pass(2, Meet::RankZero(free_port()));
}

#[test]
fn three_ranks_through_an_agent_store() {
    // The test plays torchrun's agent: it hosts the store (an ephemeral port, no race) and the ranks connect
    // as clients under the agent's key prefix.
    let store = Store::serve("127.0.0.1", 0, Duration::from_secs(30)).unwrap();
    assert_all_pass(3, Meet::Agent(store.port()));
}

#[test]
fn one_process_without_a_launcher_is_the_local_world() {
    let out = selftest().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("selftest ok: rank 0 of 1"), "{stdout}");
}

#[test]
fn torchrun_launches_two_ranks() {
    let python = std::env::var("SPAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
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
            &free_port().to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_spar-dist-selftest"))
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("python with torch (the venv of scripts/bootstrap.sh) runs torchrun");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "torchrun failed:\n{text}");
    for r in 0..2 {
        assert!(
            text.contains(&format!("selftest ok: rank {r} of 2")),
            "{text}"
        );
    }
}
