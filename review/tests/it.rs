//! spar-review integration tests (one binary; modules under `tests/it/`).
mod it {
    pub mod api;
    pub mod fixtures;
    pub mod run_folder;
}
