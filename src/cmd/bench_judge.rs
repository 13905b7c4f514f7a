//! `spar bench judge`: throughput of the LLM judge through spar-clients. A loopback fake OpenAI server answers
//! every call after a fixed latency; N trajectories x M rubric items go through `LlmJudge` at a concurrency
//! limit, and the wall time is compared with the ideal `latency x ceil(calls / concurrency)` of a client that
//! keeps every permit busy. Failures and retries are reported (`--error-rate` makes the server fail some).
//!
//! Built only with the binary's non-default `bench-judge` feature: the fake server is test support
//! (`spar-testkit`) and stays out of the production binary.
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spar_testkit::bench::{JudgeBenchOptions, run_judge_bench};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct BenchJudgeArgs {
    /// Trajectories judged.
    #[arg(long, default_value_t = 1000)]
    pub trajectories: usize,
    /// Rubric items per trajectory (a quarter of them negative).
    #[arg(long, default_value_t = 20)]
    pub items: usize,
    /// The client's concurrency limit.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The fake server's latency per request, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub latency_ms: u64,
    /// Fraction of requests the fake server answers 503 (retried by the client).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Per-attempt timeout, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_s: f64,
    #[arg(long, default_value_t = 3)]
    pub max_retries: u32,
    /// Seed of the fake server's random errors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: BenchJudgeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be >= 1");
    anyhow::ensure!(
        (0.0..1.0).contains(&args.error_rate),
        "--error-rate must be in [0, 1)"
    );
    anyhow::ensure!(args.timeout_s > 0.0, "--timeout-s must be > 0");
    let opts = JudgeBenchOptions {
        trajectories: args.trajectories,
        items: args.items,
        concurrency: args.concurrency,
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        timeout_s: args.timeout_s,
        max_retries: args.max_retries,
        seed: args.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let bar = ProgressBar::new((args.trajectories * args.items) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} judge calls {elapsed}/{eta}")
            .expect("static template"),
    );
    let ticker = bar.clone();
    let report = runtime.block_on(run_judge_bench(&opts, move || ticker.inc(1)))?;
    bar.finish_and_clear();
    println!("{report}");
    if let Some(out) = &args.out {
        let json = serde_json::to_vec_pretty(&report)?;
        spar_core::fsio::write_atomic(out, &json)?;
        println!("report written to {}", out.display());
    }
    Ok(())
}
