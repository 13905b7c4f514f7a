//! spar-rewards integration tests (one binary; modules under `tests/it/`).
mod it {
    pub mod expert;
    pub mod fact;
    pub mod factcheck_bench;
    pub mod fixtures;
    pub mod http_judge;
    pub mod overrides;
    pub mod pipeline;
    pub mod redis;
    pub mod score_file;
    pub mod stage;
    pub mod steps;
    pub mod teachers;
}
