//! The launcher, in-process, running `spar-dist-selftest` ranks: success, fail-fast naming the rank, signals.
use spar_dist::launch::{LaunchSpec, RankFailure, launch};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// Launches share the process's signal handlers: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn spec(n: usize, args: &[&str]) -> LaunchSpec {
    LaunchSpec {
        nproc_per_node: n,
        nnodes: 1,
        node_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: 0,
        program: env!("CARGO_BIN_EXE_spar-dist-selftest").into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        grace: Duration::from_secs(3),
        max_restarts: 0,
    }
}

#[test]
fn two_ranks_run_to_success() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    launch(&spec(2, &["--timeout-secs", "60"])).unwrap();
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    // Rank 1 fails right after joining; ranks 0 and 2 would sleep 60 s.
    let err = launch(&spec(3, &["--fail-rank", "1", "--sleep-secs", "60"])).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let failure = err.downcast_ref::<RankFailure>().expect("a rank failure");
    assert_eq!(failure.rank, 1, "{failure}");
    assert_eq!(failure.status, "exit code 1");
    assert!(
        failure.tail.iter().any(|l| l.contains("injected failure")),
        "{failure}"
    );
}

#[test]
fn with_max_restarts_a_failed_job_starts_again_until_the_limit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Rank 1 fails in the first attempt only: one restart, every rank again, and the job succeeds.
    let args = [
        "--fail-rank",
        "1",
        "--fail-attempts",
        "1",
        "--timeout-secs",
        "60",
    ];
    launch(&LaunchSpec {
        max_restarts: 1,
        ..spec(2, &args)
    })
    .unwrap();
    // Failing in the first two attempts exhausts one restart: the second failure is reported. (Rank 0 sleeps in
    // both attempts, so it cannot fail first on the connection rank 1 broke.)
    let args = [
        "--fail-rank",
        "1",
        "--fail-attempts",
        "2",
        "--sleep-secs",
        "60",
    ];
    let err = launch(&LaunchSpec {
        max_restarts: 1,
        ..spec(2, &args)
    })
    .unwrap_err();
    let failure = err.downcast_ref::<RankFailure>().expect("a rank failure");
    assert_eq!(failure.rank, 1, "{failure}");
}

#[test]
fn sigterm_is_forwarded_to_the_ranks() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let raise = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(3));
        // The launcher's handler is installed before it spawns anything, so this only sets its flag.
        unsafe { libc::raise(libc::SIGTERM) };
    });
    let err = launch(&spec(2, &["--sleep-secs", "60"])).unwrap_err();
    raise.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        err.to_string().contains("interrupted by signal 15"),
        "{err:#}"
    );
}
