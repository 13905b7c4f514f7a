//! Actors apart from learners (`[distributed] actors`): `spar launch` places learners first and actors last; the
//! actors play and score every RL round with the weights learner rank 0 broadcasts, and send it over Arrow
//! Flight. With no staleness the learners take exactly the colocated steps (the same samples reach the same
//! sums: equal at 1e-6, bitwise in practice); with `max_policy_lag = 1` exactly those of the colocated one-step
//! off-policy schedule, and the learned samples lag one version.
use super::data_parallel::{KILLED_RUN, kill_mid_run, metric_rows, tiny, weights};
use super::{ok, ok_stderr, spar};
use std::path::Path;
use std::process::Command;

fn launch(n: usize) -> Command {
    let mut c = spar();
    c.args(["launch", "--nproc-per-node", &n.to_string(), "--"]);
    c
}

/// The colocated run the launched ones are compared with, on one intra-op thread as `spar launch` gives each
/// of its ranks (torchrun's `OMP_NUM_THREADS=1`): libtorch's CPU reductions (the embedding's gradient among them)
/// split their sums by thread, so runs on different thread counts differ in the last bits (~3e-6 after three
/// rounds on a 2-core machine).
fn colocated_reference() -> Command {
    let mut c = spar();
    c.env("OMP_NUM_THREADS", "1");
    c
}

const ROUNDS: usize = 3;

/// Metrics and final weights of two runs of `ROUNDS` rounds equal (1e-6), round by round.
fn same_steps(a: &Path, b: &Path, what: &str) {
    same_steps_of(a, b, ROUNDS, what)
}

fn same_steps_of(a: &Path, b: &Path, rounds: usize, what: &str) {
    let (ra, rb) = (metric_rows(a, "rl/loss"), metric_rows(b, "rl/loss"));
    assert_eq!(ra.len(), rounds, "{what}: {ra:?}");
    assert_eq!(rb.len(), rounds, "{what}: {rb:?}");
    for (x, y) in ra.iter().zip(&rb) {
        // Every round trains: the equalities compare real updates.
        assert_eq!(x["rl/skipped"].as_f64(), Some(0.0), "{x}");
        for k in ["rl/reward_mean", "rl/loss", "rl/grad_norm", "rl/policy_lag"] {
            let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                "{what}: {k} {x} vs {y}"
            );
        }
    }
    let (wa, wb) = (weights(&a.join("final")), weights(&b.join("final")));
    assert_eq!(wa.len(), wb.len());
    for ((n, x), (m, y)) in wa.iter().zip(&wb) {
        assert_eq!(n, m);
        let d = (x - y).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{what}: {n} differs by {d}");
    }
}

fn lags(run: &Path) -> Vec<f64> {
    metric_rows(run, "rl/loss")
        .iter()
        .map(|r| r["rl/policy_lag"].as_f64().unwrap())
        .collect()
}

#[test]
fn one_learner_and_one_actor_take_the_colocated_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (colocated, apart) = (dir.path().join("colocated"), dir.path().join("apart"));
    ok(tiny(&mut colocated_reference(), &colocated, ROUNDS).args(KILLED_RUN));
    let err = ok_stderr(
        tiny(&mut launch(2), &apart, ROUNDS)
            .args(KILLED_RUN)
            .args(["--set", "distributed.actors=1"])
            .args(["--set", "trainer.profile.rounds=[2]"]),
    );
    assert!(
        err.contains("actors apart: 1 learner(s), 1 actor(s)"),
        "{err}"
    );
    assert!(err.contains("[actor 0] done: every round sent"), "{err}");
    same_steps(&colocated, &apart, "1 learner + 1 actor vs colocated");
    // Round 2 profiled in both processes: the learner learns, the actor waits for weights, plays and sends.
    let profile = |who: &str| {
        std::fs::read_to_string(apart.join(format!("profile/rl-round-0002-{who}.md")))
            .unwrap_or_else(|e| panic!("{who}'s profile: {e}"))
    };
    let learner = profile("rank0");
    assert!(learner.contains("`rl/learn`"), "{learner}");
    let actor = profile("actor0");
    for span in [
        "`actor/wait_weights`",
        "`rl/generate`",
        "`engine/decode`",
        "`actor/send`",
    ] {
        assert!(
            actor.contains(span),
            "{span} missing from the actor's profile:\n{actor}"
        );
    }
    assert_eq!(lags(&apart), vec![0.0; ROUNDS]);
    // The learner's time line: waiting for the actors, learning, sending weights; the actors' busy seconds.
    for row in metric_rows(&apart, "rl/loss") {
        for k in [
            "time/learner_wait_s",
            "time/learn_s",
            "time/publish_s",
            "time/actor_busy_s",
        ] {
            assert!(row[k].as_f64().is_some_and(|v| v >= 0.0), "{k}: {row}");
        }
        assert_eq!(row["rl/samples_stale_dropped"].as_f64(), Some(0.0), "{row}");
    }
}

#[test]
fn with_lag_one_the_actors_play_ahead_and_take_the_one_step_off_policy_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (colocated, apart) = (dir.path().join("colocated"), dir.path().join("apart"));
    ok(tiny(&mut colocated_reference(), &colocated, ROUNDS)
        .args(KILLED_RUN)
        .args(["--set", "trainer.off_policy_one_step=true"]));
    ok(tiny(&mut launch(2), &apart, ROUNDS)
        .args(KILLED_RUN)
        .args(["--set", "distributed.actors=1"])
        .args(["--set", "distributed.max_policy_lag=1"]));
    same_steps(&colocated, &apart, "lag 1 vs one-step off-policy");
    // Round 0 is played with version 0; every later round one version behind the learner.
    assert_eq!(lags(&apart), vec![0.0, 1.0, 1.0]);
}

/// The cluster recipe's layout at small scale: learners fully sharded and expert parallel (the tiny MoE's 4
/// experts, 2 per learner), plus actors.
#[test]
fn two_sharded_expert_parallel_learners_and_two_actors_take_the_two_rank_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (colocated, apart) = (dir.path().join("colocated"), dir.path().join("apart"));
    let layout = [
        "--set",
        "distributed.sharding=\"full\"",
        "--set",
        "distributed.expert_parallel=2",
    ];
    ok(tiny(&mut launch(2), &colocated, ROUNDS)
        .args(KILLED_RUN)
        .args(layout));
    let err = ok_stderr(
        tiny(&mut launch(4), &apart, ROUNDS)
            .args(KILLED_RUN)
            .args(layout)
            .args(["--set", "distributed.actors=2"]),
    );
    assert!(
        err.contains("expert parallel: rank 0's MoE layers compute 1/2 of the experts"),
        "{err}"
    );
    same_steps(&colocated, &apart, "2 learners + 2 actors vs 2 ranks");
}

#[test]
fn actor_layouts_that_cannot_run_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |n: usize, extra: &[&str], expect: &str| {
        let mut cmd = launch(n);
        tiny(&mut cmd, &dir.path().join("x"), 1).args(extra);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} ran");
        assert!(err.contains(expect), "{extra:?}: {err}");
    };
    fails(2, &["--set", "distributed.actors=2"], "launch at least 3");
    fails(
        3,
        &["--set", "distributed.actors=1"],
        "distributed.actors = 1 is not a multiple of the 2 learner",
    );
    fails(
        3,
        &[
            "--set",
            "distributed.actors=2",
            "--set",
            "rollout.groups_per_step=3",
        ],
        "not divisible by distributed.actors = 2",
    );
    fails(
        2,
        &[
            "--set",
            "distributed.actors=1",
            "--set",
            "trainer.off_policy_one_step=true",
        ],
        "drop off_policy_one_step",
    );
}

/// Kill -9 the actor mid-run (lag 1, so a round played ahead is in flight): the launcher stops the learner and
/// exits non-zero naming the actor's rank; `--resume` goes on from the last checkpoint (which kept the round
/// received ahead and the actor's pools after it) and finishes with exactly the steps of the run left alone: no
/// round lost, none learned twice. Under `spar launch --max-restarts 1` the same kill restarts the job by
/// itself (every rank, from the last checkpoint), with the same result.
#[cfg(target_os = "linux")]
#[test]
fn an_actor_killed_mid_run_stops_the_job_and_resume_neither_loses_nor_repeats_a_round() {
    const LONG: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let (run, left_alone) = (dir.path().join("run"), dir.path().join("left-alone"));
    let apart = [
        "--set",
        "distributed.actors=1",
        "--set",
        "distributed.max_policy_lag=1",
    ];
    let mut cmd = launch(2);
    tiny(&mut cmd, &run, LONG).args(KILLED_RUN).args(apart);
    let (mut child, log) = kill_mid_run(&mut cmd, &run, dir.path(), 1);
    let killed = std::time::Instant::now();
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the launcher exited 0:\n{err}");
    assert!(err.contains("rank 1 failed"), "{err}");
    assert!(
        killed.elapsed().as_secs() < 60,
        "the job took {:?} to stop",
        killed.elapsed()
    );
    assert!(
        metric_rows(&run, "rl/loss").len() < LONG,
        "the run finished before the kill"
    );
    ok(tiny(&mut launch(2), &run, LONG)
        .args(KILLED_RUN)
        .args(apart)
        .arg("--resume"));
    ok(tiny(&mut launch(2), &left_alone, LONG)
        .args(KILLED_RUN)
        .args(apart));
    same_steps_of(
        &left_alone,
        &run,
        LONG,
        "killed actor, resumed, vs left alone",
    );

    // The launcher restarts the job itself.
    let restarted = dir.path().join("restarted");
    let sub = dir.path().join("restart-logs");
    std::fs::create_dir_all(&sub).unwrap();
    let mut cmd = spar();
    cmd.args([
        "launch",
        "--max-restarts",
        "1",
        "--nproc-per-node",
        "2",
        "--",
    ]);
    tiny(&mut cmd, &restarted, LONG)
        .args(KILLED_RUN)
        .args(apart)
        .arg("--resume");
    let (mut child, log) = kill_mid_run(&mut cmd, &restarted, &sub, 1);
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("restarting every rank (attempt 1 of --max-restarts 1)"),
        "{err}"
    );
    same_steps_of(
        &left_alone,
        &restarted,
        LONG,
        "killed actor, restarted by the launcher, vs left alone",
    );
}
