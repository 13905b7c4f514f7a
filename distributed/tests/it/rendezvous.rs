//! Start-up failures: each is an error naming the rank(s) and world size, within the stated timeout.
use crate::it::procs::{Meet, collect, free_port, spawn_rank};
use spar_dist::Store;
use std::time::{Duration, Instant};

#[test]
fn a_rank_that_never_arrives_is_named() {
    let port = free_port();
    let start = Instant::now();
    // World of 3, rank 2 never started; 3 s timeout.
    let children = (0..2)
        .map(|r| spawn_rank(r, 3, Meet::RankZero(port), &["--timeout-secs", "3"]))
        .collect();
    let results = collect(children);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    for (rank, (code, _, err)) in results.iter().enumerate() {
        assert_ne!(*code, 0, "rank {rank} should fail");
        assert!(
            err.contains("rank(s) [2] of world size 3 never arrived"),
            "rank {rank}: {err}"
        );
        assert!(
            err.contains(&format!("rank {rank} of world size 3")),
            "rank {rank}: {err}"
        );
    }
}

#[test]
fn ranks_with_different_world_sizes_fail() {
    let store = Store::serve("127.0.0.1", 0, Duration::from_secs(30)).unwrap();
    let meet = Meet::Agent(store.port());
    let first = spawn_rank(0, 2, meet, &["--timeout-secs", "3"]);
    std::thread::sleep(Duration::from_millis(500));
    let second = spawn_rank(1, 3, meet, &["--timeout-secs", "3"]);
    let results = collect(vec![first, second]);
    assert!(results.iter().all(|r| r.0 != 0), "{results:?}");
    assert!(
        results[1]
            .2
            .contains("started with world size 3 but an earlier rank uses world size 2"),
        "{}",
        results[1].2
    );
}

#[test]
fn ranks_with_different_recipes_fail() {
    let store = Store::serve("127.0.0.1", 0, Duration::from_secs(30)).unwrap();
    let meet = Meet::Agent(store.port());
    let children = ["recipe A", "recipe B"]
        .iter()
        .enumerate()
        .map(|(r, id)| spawn_rank(r, 2, meet, &["--timeout-secs", "10", "--identity", id]))
        .collect();
    for (rank, (code, _, err)) in collect(children).into_iter().enumerate() {
        assert_ne!(code, 0);
        assert!(
            err.contains("rank(s) [1] run a different recipe than rank 0"),
            "rank {rank}: {err}"
        );
    }
}

#[test]
fn an_unreachable_master_is_a_clear_error() {
    let port = free_port();
    let start = Instant::now();
    let err = Store::connect("127.0.0.1", port, Duration::from_secs(2), "")
        .err()
        .expect("nobody listens");
    let msg = format!("{err:#}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        msg.contains(&format!(
            "could not reach the rendezvous store at 127.0.0.1:{port}"
        )),
        "{msg}"
    );
}
