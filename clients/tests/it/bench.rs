//! The judge benchmark's logic, small; the full size runs with `--ignored` (or `spar bench judge`).
use spar_testkit::bench::{JudgeBenchOptions, run_judge_bench};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bench_accounts_for_every_call() {
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let opts = JudgeBenchOptions {
        trajectories: 12,
        items: 5,
        concurrency: 8,
        latency: Duration::from_millis(1),
        error_rate: 0.2,
        seed: 7,
        max_retries: 10,
        ..JudgeBenchOptions::default()
    };
    let r = run_judge_bench(&opts, move || {
        d.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .unwrap();
    assert_eq!(r.calls, 60);
    assert_eq!(done.load(Ordering::SeqCst), 60);
    assert_eq!(r.met + r.unmet + r.failures, 60, "nothing lost");
    assert!(r.retries > 0, "a 20% error rate causes retries");
    assert!(r.server_max_in_flight <= 8);
    assert!(r.met > 0 && r.unmet > 0);
}

/// The full benchmark: 1,000 trajectories x 20 items at concurrency 64, 200 ms latency.
/// `cargo test -p spar-clients --release -- --ignored full_judge_bench --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes about a minute; a benchmark, not a test"]
async fn full_judge_bench() {
    let r = run_judge_bench(&JudgeBenchOptions::default(), || {})
        .await
        .unwrap();
    println!("{r}");
    println!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!(r.met + r.unmet + r.failures, r.calls);
}
