//! spar-eval integration tests (one binary; modules under tests/it/).
mod it {
    mod common;
    mod consultation;
    mod endpoint;
    mod hallucination;
    mod healthbench;
    mod healthbench_e2e;
    mod held_out;
    mod imported;
    mod report;
}
