//! The sample inbox over Arrow Flight on loopback (real gRPC): everything two senders put arrives, named by
//! sender, with the rows acknowledged; a full inbox holds a sender back until the learner takes batches.
use arrow::array::{Int64Array, RecordBatch};
use spar_dist::flight::{Inbox, send_batches};
use std::sync::Arc;
use std::time::Duration;

fn batch(from: i64, rows: usize) -> RecordBatch {
    let values: Vec<i64> = (0..rows as i64).map(|i| from * 1000 + i).collect();
    RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(values)) as _)]).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_senders_deliver_every_batch_named() {
    let rt = runtime();
    let mut inbox = Inbox::serve(&rt, "127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let addr = inbox.addr();
    let sends: Vec<_> = (1..=2)
        .map(|a| {
            rt.spawn(async move {
                let batches = (0..3).map(|k| batch(a * 10 + k, 5 + k as usize)).collect();
                send_batches(addr, &format!("actor-{a}"), batches).await
            })
        })
        .collect();
    let mut got = Vec::new();
    while got.len() < 6 {
        let d = inbox
            .recv_timeout(&rt, Duration::from_secs(20))
            .expect("a batch within 20 s");
        got.push(d);
    }
    for s in sends {
        assert_eq!(rt.block_on(s).unwrap().unwrap(), 5 + 6 + 7);
    }
    for a in 1..=2 {
        let mine: Vec<&RecordBatch> = got
            .iter()
            .filter(|d| d.sender == format!("actor-{a}"))
            .map(|d| &d.batch)
            .collect();
        // In order per sender, every row intact.
        let sizes: Vec<usize> = mine.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, vec![5, 6, 7], "actor-{a}");
        for (k, b) in mine.iter().enumerate() {
            assert_eq!(**b, batch(a * 10 + k as i64, 5 + k), "actor-{a} batch {k}");
        }
    }
}

#[test]
fn a_full_inbox_holds_the_sender_back() {
    let rt = runtime();
    let mut inbox = Inbox::serve(&rt, "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = inbox.addr();
    let send = rt.spawn(async move {
        send_batches(addr, "actor", (0..3).map(|k| batch(k, 4)).collect()).await
    });
    // One batch fits the queue; the put cannot finish while two more wait for room.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!send.is_finished(), "the sender finished with a full inbox");
    for _ in 0..3 {
        inbox
            .recv_timeout(&rt, Duration::from_secs(20))
            .expect("a batch");
    }
    assert_eq!(rt.block_on(send).unwrap().unwrap(), 12);
    // Nothing else arrives.
    assert!(
        inbox
            .recv_timeout(&rt, Duration::from_millis(200))
            .is_none()
    );
}
