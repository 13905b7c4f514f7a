//! spar-trainer integration tests (one binary; modules under tests/it/).
mod it {
    mod adamw;
    mod batch;
    pub mod common;
    mod data_parallel;
    mod distill;
    mod fused_logprobs;
    mod gae;
    mod gradcheck;
    mod learner_graphs;
    mod loss;
    mod metrics;
    mod offload;
    mod padding;
    mod profiled_collectives;
    mod resume;
    mod rounds;
    mod sft_subset;
    mod sharded_at_rest;
    mod signal;
    mod temperature;
}
