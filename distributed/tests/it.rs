//! spar-dist's integration tests (one binary; modules under tests/it/): real processes on loopback through
//! gloo (the `spar-dist-selftest` binary checks every collective against the one-process answer), the
//! rendezvous failures, torchrun compatibility, the sample inbox over Arrow Flight.
mod it {
    mod flight;
    mod launch;
    pub mod procs;
    mod rendezvous;
    mod store;
    mod world;
}
