//! Integration tests of spar-rollout (one binary; modules under `tests/it/`).
mod it {
    pub mod common;
    pub mod consult;
    pub mod engine;
    pub mod failures;
    pub mod serve;
    pub mod serve_errors;
    pub mod serve_fuzz;
    pub mod serve_limits;
    pub mod serve_routing;
}
