//! spar-clients integration tests: the client and every trait implementation against the loopback fake server.
mod it {
    mod bench;
    mod client;
    mod common;
    mod judge;
    mod models;
    mod simulator;
    mod weight_sync;
}
