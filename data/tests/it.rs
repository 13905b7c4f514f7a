//! The one integration-test binary of spar-data; one module per area under `tests/it/`.
mod it {
    mod audit;
    mod kb;
    mod phi;
    mod case_io;
    pub mod common;
    mod expert;
    mod generate;
    mod recipe;
    mod shipped;
    mod verl;
    mod wire_io;
}
