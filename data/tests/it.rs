//! The one integration-test binary of spar-data; one module per area under `tests/it/`.
mod it {
    mod audit;
    mod bad_inputs;
    mod case_io;
    pub mod common;
    mod expert;
    mod fuzz;
    mod generate;
    mod import;
    mod kb;
    mod partial_expert;
    mod phi;
    mod recipe;
    mod shipped;
    mod verl;
    mod wire_io;
}
