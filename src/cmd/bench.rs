//! `spar bench <what>`: each benchmark lives in its own module `bench_<what>.rs`.

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// LLM-judge throughput against a loopback fake server with fixed latency (feature `bench-judge`).
    #[cfg(feature = "bench-judge")]
    Judge(super::bench_judge::BenchJudgeArgs),
    /// Forward tokens/s of a random Qwen3 / Qwen3-MoE model of a real shape.
    Forward(super::bench_forward::Args),
    /// Decode tokens/s of the built-in engine at several batch sizes.
    Decode(super::bench_decode::Args),
    /// The learner's training step (plain or fully sharded): tokens/s and peak GPU memory.
    Train(super::bench_train::Args),
    /// One GRPO iteration (generate, score, learn) on TRL's GRPO workload, phase by phase.
    Grpo(super::bench_grpo::Args),
    /// Per-token log-probs + entropy of the LM head, fused chunked op vs whole logits: time and peak GPU memory.
    Logprob(super::bench_logprob::Args),
    /// Where a torch profiler trace's time went (the tables of `[trainer.profile]`), for any Chrome trace.
    Trace(super::bench_trace::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        #[cfg(feature = "bench-judge")]
        Bench::Judge(a) => super::bench_judge::run(a),
        Bench::Forward(a) => super::bench_forward::run(a),
        Bench::Decode(a) => super::bench_decode::run(a),
        Bench::Train(a) => super::bench_train::run(a),
        Bench::Grpo(a) => super::bench_grpo::run(a),
        Bench::Logprob(a) => super::bench_logprob::run(a),
        Bench::Trace(a) => super::bench_trace::run(a),
    }
}
