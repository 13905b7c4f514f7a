//! spar-eval integration tests (one binary; modules under tests/it/).
mod it {
    mod common;
    mod consultation;
    mod hallucination;
    mod healthbench;
    mod report;
}
