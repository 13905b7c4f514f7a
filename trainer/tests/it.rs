//! spar-trainer integration tests (one binary; modules under tests/it/).
mod it {
    pub mod common;
    mod adamw;
    mod batch;
    mod gradcheck;
    mod loss;
    mod metrics;
    mod resume;
}
