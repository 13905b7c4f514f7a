//! The TCPStore wrapper in one process: values round-trip, counters count, waits time out.
use spar_dist::Store;
use std::time::{Duration, Instant};

#[test]
fn store_operations_round_trip() {
    let server = Store::serve("127.0.0.1", 0, Duration::from_secs(10)).unwrap();
    assert_ne!(server.port(), 0);
    let client = Store::connect("127.0.0.1", server.port(), Duration::from_secs(10), "/p").unwrap();
    client.set("k", b"v1").unwrap();
    assert_eq!(client.get("k", Duration::from_secs(1)).unwrap(), b"v1");
    // The prefix keeps the client's keys apart from the server's view.
    assert!(!server.check("k").unwrap());
    assert!(server.check("/p/k").unwrap());
    assert_eq!(client.add("n", 2).unwrap(), 2);
    assert_eq!(client.add("n", 3).unwrap(), 5);
    assert_eq!(client.compare_set("c", b"", b"first").unwrap(), b"first");
    assert_eq!(client.compare_set("c", b"", b"second").unwrap(), b"first");
    assert_eq!(
        client.compare_set("c", b"first", b"third").unwrap(),
        b"third"
    );
}

#[test]
fn a_missing_key_times_out() {
    let server = Store::serve("127.0.0.1", 0, Duration::from_secs(10)).unwrap();
    let start = Instant::now();
    let err = server.get("never", Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(format!("{err:#}").contains("store get never"), "{err:#}");
}
