//! The `spar` command line: argument parsing and wiring only. Each subcommand lives in `src/cmd/<name>.rs`
//! with its own `Args` and `run`.
use clap::{Parser, Subcommand};

mod cmd;
mod recipe_arg;

#[derive(Parser)]
#[command(
    name = "spar",
    version,
    about = "Post-training RL for clinical consultation (Baichuan-M3: SPAR + Fact-Aware RL) on Qwen3 / Qwen3-MoE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Per-token log-probs of given token sequences (reference-policy pre-computation).
    Logprobs(cmd::logprobs::Args),
    /// Chat-templated generation (greedy or sampled).
    Generate(cmd::generate::Args),
    /// Play consultations and write trajectories (parquet + transcripts).
    Rollout(cmd::rollout::Args),
    /// OpenAI-compatible HTTP API over the built-in engine.
    Serve(cmd::serve::Args),
    /// Score finished trajectories offline (rubrics, SPAR, Fact-Aware).
    Score(cmd::score::Args),
    /// Check the medical claims of a text (or a samples / transcripts JSONL file): every claim with its span,
    /// label, evidence and source, and the hallucination rate H. Exit 1 with `--fail-on` met, 2 on errors.
    Factcheck(cmd::factcheck::Args),
    /// RL training (SPAR + Fact-Aware GRPO/GSPO/PPO) from a recipe.
    Train(cmd::train::Args),
    /// Supervised fine-tuning.
    Sft(cmd::sft::Args),
    /// Export a checkpoint to HF format (safetensors + config.json).
    Export(cmd::export::Args),
    /// Plot a run's metrics (PNG/SVG).
    Plot(cmd::plot::Args),
    /// Evaluate a policy (consultation eval, HealthBench runner, hallucination rate).
    Eval(cmd::eval::Args),
    /// Cases and knowledge base: generate, validate, import, export.
    Data(cmd::data::Args),
    /// Print a text file (or `-`: standard input) with PHI replaced by placeholders, as ingest redacts cases.
    Redact(cmd::redact::Args),
    /// A run's consultations on a local web page for review; overrides of claim labels and rubric verdicts.
    Review(cmd::review::Args),
    /// Benchmarks (speed and memory; GPU figures come from the GPU machine).
    Bench(cmd::bench::Args),
    /// Run N ranks of a command on this node (torchrun's contract, no Python): `spar launch --nproc-per-node 2 -- train --recipe R`.
    Launch(cmd::launch::Args),
    /// Reward-design ablation: arms x seeds of `spar train` runs, a table with CIs and paired tests, curves.
    Ablate(cmd::ablate::Args),
}

/// Makes every file and folder this process creates owner-only (0600 / 0700, docs/privacy.md). spar's own writers
/// set modes explicitly (`spar_core::fsio`), but libtorch's checkpoint save, TensorBoard events, plots and SQLite
/// create files with the process umask, and a run killed before its audit manifest seals the folder would leave
/// them readable by everyone.
fn owner_only_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's creation mask; it cannot fail and touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() {
    owner_only_umask();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SPAR_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logprobs(a) => cmd::logprobs::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Rollout(a) => cmd::rollout::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Factcheck(a) => std::process::exit(cmd::factcheck::run(a)),
        Command::Train(a) => cmd::train::run(a),
        Command::Sft(a) => cmd::sft::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Plot(a) => cmd::plot::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Data(a) => cmd::data::run(a),
        Command::Redact(a) => cmd::redact::run(a),
        Command::Review(a) => cmd::review::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Launch(a) => cmd::launch::run(a),
        Command::Ablate(a) => cmd::ablate::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", without_torch_backtraces(&format!("{e:#}")));
        std::process::exit(1);
    }
}

/// The message without libtorch's C++ backtraces: a torch error (a CUDA out-of-memory, say) carries its message
/// and then "Exception raised from ... (most recent call first):" with dozens of "frame #N" lines, which bury the
/// message and mean nothing to a user.
fn without_torch_backtraces(msg: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut in_trace = false;
    for line in msg.lines() {
        if let Some(at) = line.find("Exception raised from ") {
            in_trace = true;
            let before = line[..at].trim_end();
            if !before.is_empty() {
                out.push(before);
            }
            continue;
        }
        if in_trace && (line.starts_with("frame #") || line.trim().is_empty()) {
            continue;
        }
        in_trace = false;
        out.push(line);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::without_torch_backtraces;

    #[test]
    fn torch_backtraces_are_cut_from_errors() {
        let msg = "allocating the engine's KV cache (128 slots x 8192 tokens): Internal torch error: CUDA out of \
                   memory. Tried to allocate 2.00 GiB.\nException raised from malloc at /pytorch/c10/cuda/\
                   CUDACachingAllocator.cpp:1574 (most recent call first):\nframe #0: c10::Error::Error() + 0x1\n\
                   frame #1: <unknown function> + 0x2 (0x7f in /lib/libc.so.6)\n\nnext line";
        assert_eq!(
            without_torch_backtraces(msg),
            "allocating the engine's KV cache (128 slots x 8192 tokens): Internal torch error: CUDA out of \
             memory. Tried to allocate 2.00 GiB.\nnext line"
        );
        assert_eq!(without_torch_backtraces("plain: message"), "plain: message");
    }
}
