//! A collective that outlives a torch profiler recording (the weight refresh a learner starts in a profiled round
//! and its actors take later) must not touch the recording after it has stopped.
//!
//! c10d's works record themselves in a running profiler: the record opens at enqueue and closes on gloo's
//! thread when the work completes. When that is after the recording stopped, gloo's thread writes into a trace
//! torch is finalizing (heap corruption: "malloc(): unsorted double linked list corrupted", once in a CI run of
//! the actors e2e test). spar's shim enqueues collectives with record functions off and records the wait on the
//! caller's thread instead. Two ranks of a real gloo group run here on two threads of one process: rank 0
//! records, starts the broadcast, stops recording, and only then does rank 1 join.
use spar_dist::{Backend, ProcessGroup, Store};
use spar_model::torch_profiler::{ProfileOptions, Recording, range};
use std::sync::mpsc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Bucket bytes: several buckets, each too big for the socket buffers, so that no send completes before its
/// receiver joins.
const BUCKET: usize = 4 << 20;

fn gloo(store: &Store, rank: usize) -> ProcessGroup {
    let backend = Backend::Gloo {
        interface: None,
        host: Some("127.0.0.1".into()),
    };
    ProcessGroup::new(store, rank, 2, &backend, TIMEOUT).unwrap()
}

fn weights() -> Vec<Tensor> {
    [&[1024, 2048][..], &[256], &[2048, 1024]]
        .iter()
        .map(|s| Tensor::zeros(*s, (Kind::Float, Device::Cpu)))
        .collect()
}

/// The trace's spans as (name, thread id).
fn events(trace: &std::path::Path) -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(trace).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", trace.display()));
    json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        // Spans (not the trace's own "PyTorch Profiler" marker).
        .filter(|e| e["ph"] == "X" && e["cat"] != "Trace")
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            (name, e["tid"].as_i64().unwrap_or(-1))
        })
        .collect()
}

#[test]
fn a_broadcast_finished_after_the_recording_stopped_is_not_recorded_by_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::serve("127.0.0.1", 0, TIMEOUT).unwrap();
    let port = store.port();
    const REFRESHES: u64 = 3;
    let (go, wait_go) = mpsc::channel::<()>();
    let receiver = std::thread::spawn(move || {
        let store = Store::connect("127.0.0.1", port, TIMEOUT, "").unwrap();
        let group = gloo(&store, 1);
        let theirs = weights();
        for version in 1..=REFRESHES {
            // Joins each refresh only once rank 0 has stopped its recording.
            wait_go.recv().unwrap();
            spar_dist::start_broadcast_weights(&group, &theirs, 0, version, BUCKET)
                .unwrap()
                .finish()
                .unwrap();
            let got = theirs[2].mean(Kind::Double).double_value(&[]);
            assert_eq!(got, version as f64, "refresh {version}");
        }
        let sum = spar_dist::sum_over_ranks(&group, &[2.0]).unwrap();
        assert_eq!(sum, vec![3.0]);
    });
    let group = gloo(&store, 0);
    let mine = weights();
    for version in 1..=REFRESHES {
        for t in &mine {
            let _ = t.shallow_clone().fill_(version as f64);
        }
        let rec = Recording::start(ProfileOptions::default()).unwrap();
        let pending = {
            let _span = range("refresh");
            spar_dist::start_broadcast_weights(&group, &mine, 0, version, BUCKET).unwrap()
        };
        let trace = dir.path().join(format!("refresh-{version}.json"));
        rec.finish(&trace).unwrap();
        go.send(()).unwrap();
        pending.finish().unwrap();
        let events = events(&trace);
        let main_tid = events
            .iter()
            .find(|(n, _)| n == "refresh")
            .unwrap_or_else(|| panic!("the span is in the trace: {events:?}"))
            .1;
        // Before the fix: `gloo:broadcast` records from gloo's threads, still open when the recording stopped.
        let elsewhere: Vec<_> = events.iter().filter(|(_, t)| *t != main_tid).collect();
        assert!(
            elsewhere.is_empty(),
            "records from threads other than the recording one: {elsewhere:?}"
        );
    }

    // A collective waited for under a recording shows up as its wait, on the waiting thread.
    let rec = Recording::start(ProfileOptions::default()).unwrap();
    let sum = {
        let _span = range("sum");
        spar_dist::sum_over_ranks(&group, &[1.0]).unwrap()
    };
    let trace = dir.path().join("sum.json");
    rec.finish(&trace).unwrap();
    assert_eq!(sum, vec![3.0]);
    receiver.join().unwrap();
    let events = events(&trace);
    let tid_of = |name: &str| {
        events
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not in the trace: {events:?}"))
            .1
    };
    assert_eq!(tid_of("c10d::wait ALLREDUCE"), tid_of("sum"));
}
