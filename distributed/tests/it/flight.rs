//! The sample inbox over Arrow Flight on loopback (real gRPC): every put two senders make arrives whole, named
//! by sender, with its metadata and the rows acknowledged; a put of no rows still arrives; a full inbox holds a
//! sender back until the learner takes a put.
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use spar_dist::flight::{Inbox, send_batches};
use std::sync::Arc;
use std::time::Duration;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

fn batch(from: i64, rows: usize) -> RecordBatch {
    let values: Vec<i64> = (0..rows as i64).map(|i| from * 1000 + i).collect();
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))]).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_senders_deliver_every_put_named_with_its_metadata() {
    let rt = runtime();
    let mut inbox = Inbox::serve(&rt, "127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let addr = inbox.addr();
    let sends: Vec<_> = (1..=2)
        .map(|a| {
            rt.spawn(async move {
                let mut rows = 0;
                for put in 0..2 {
                    let batches = (0..3)
                        .map(|k| batch(a * 100 + put * 10 + k, 5 + k as usize))
                        .collect();
                    let meta = format!("actor {a} round {put}");
                    rows +=
                        send_batches(addr, &format!("actor-{a}"), meta.into(), schema(), batches)
                            .await?;
                }
                anyhow::Ok(rows)
            })
        })
        .collect();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(
            inbox
                .recv_timeout(&rt, Duration::from_secs(20))
                .expect("a put within 20 s"),
        );
    }
    for s in sends {
        assert_eq!(rt.block_on(s).unwrap().unwrap(), 2 * (5 + 6 + 7));
    }
    for a in 1..=2i64 {
        let mine: Vec<_> = got
            .iter()
            .filter(|d| d.sender == format!("actor-{a}"))
            .collect();
        assert_eq!(mine.len(), 2, "actor-{a}");
        // In order per sender, every row intact, the metadata its own.
        for (put, d) in mine.iter().enumerate() {
            assert_eq!(&d.metadata[..], format!("actor {a} round {put}").as_bytes());
            let sizes: Vec<usize> = d.batches.iter().map(|b| b.num_rows()).collect();
            assert_eq!(sizes, vec![5, 6, 7], "actor-{a} put {put}");
            for (k, b) in d.batches.iter().enumerate() {
                assert_eq!(*b, batch(a * 100 + put as i64 * 10 + k as i64, 5 + k));
            }
        }
    }
}

#[test]
fn a_put_of_no_rows_still_arrives_with_its_metadata() {
    let rt = runtime();
    let mut inbox = Inbox::serve(&rt, "127.0.0.1:0".parse().unwrap(), 4).unwrap();
    let addr = inbox.addr();
    let rows = rt
        .block_on(send_batches(
            addr,
            "actor",
            "empty round".into(),
            schema(),
            vec![],
        ))
        .unwrap();
    assert_eq!(rows, 0);
    let d = inbox
        .recv_timeout(&rt, Duration::from_secs(20))
        .expect("the empty put");
    assert_eq!(
        (d.sender.as_str(), &d.metadata[..]),
        ("actor", &b"empty round"[..])
    );
    assert!(d.batches.iter().all(|b| b.num_rows() == 0));
}

#[test]
fn a_full_inbox_holds_the_sender_back() {
    let rt = runtime();
    let mut inbox = Inbox::serve(&rt, "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = inbox.addr();
    let send = rt.spawn(async move {
        let mut rows = 0;
        for k in 0..3 {
            rows += send_batches(
                addr,
                "actor",
                Default::default(),
                schema(),
                vec![batch(k, 4)],
            )
            .await?;
        }
        anyhow::Ok(rows)
    });
    // One put fits the queue, the second waits in its DoPut; the third cannot start.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!send.is_finished(), "the sender finished with a full inbox");
    for _ in 0..3 {
        inbox
            .recv_timeout(&rt, Duration::from_secs(20))
            .expect("a put");
    }
    assert_eq!(rt.block_on(send).unwrap().unwrap(), 12);
    // Nothing else arrives.
    assert!(
        inbox
            .recv_timeout(&rt, Duration::from_millis(200))
            .is_none()
    );
}
