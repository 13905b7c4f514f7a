//! The torch profiler over chosen RL rounds (`[trainer.profile]`), and over any closure for the benches.
//!
//! A recorded round leaves `profile/rl-round-NNNN-rankR.md` (an actor's: `-actorA.md`) (the [`TraceSummary`] tables: spar's phases,
//! host ops, GPU kernels, CUDA runtime calls) and, when asked, the gzipped Chrome trace beside it. The phases
//! are the spans spar opens with [`spar_model::torch_profiler::range`]: `rl/play`, `rl/learn`, the
//! engine's `engine/prefill`, `engine/decode`, `engine/sample`, the learner's `learn/*`.

use crate::trace_summary::TraceSummary;
use anyhow::{Context, Result};
use spar_core::recipe::ProfileConfig;
use spar_model::torch_profiler::{ProfileOptions, Recording};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Rows of each table in a summary.
const TOP_ROWS: usize = 30;

/// Starts and stops the profiler around the rounds `[trainer.profile] rounds` names.
pub struct RoundProfiler {
    cfg: ProfileConfig,
    dir: PathBuf,
    /// Who records, in the file names: `rank0`, `actor1`.
    who: String,
    cuda: bool,
    active: Option<(usize, Recording)>,
}

impl RoundProfiler {
    /// `out`: the run folder; `who`: the process in the file names (`rank0` for a learner rank, `actor1` for an
    /// actor); `cuda`: the policy is on a GPU (record its kernels too). Fails at once when rounds are asked of a
    /// build without the profiler, not at the first recorded round.
    pub fn new(cfg: &ProfileConfig, out: &Path, who: &str, cuda: bool) -> Result<RoundProfiler> {
        if !cfg.rounds.is_empty() && !spar_model::torch_profiler::available() {
            anyhow::bail!(
                "trainer.profile.rounds is set but this spar has no torch profiler (built without libtorch's C++ \
                 headers)"
            );
        }
        Ok(RoundProfiler {
            cfg: cfg.clone(),
            dir: out.join("profile"),
            who: who.to_string(),
            cuda,
            active: None,
        })
    }

    /// Starts recording if `round` (1-based) is one to record.
    pub fn begin(&mut self, round: usize) -> Result<()> {
        if self.active.is_none() && self.cfg.rounds.contains(&round) {
            let options = ProfileOptions {
                cuda: self.cuda,
                record_shapes: self.cfg.record_shapes,
                profile_memory: self.cfg.memory,
                with_stack: self.cfg.with_stack,
            };
            self.active = Some((round, Recording::start(options)?));
        }
        Ok(())
    }

    /// Stops a recording begun for `round` and writes its summary (and trace); returns the summary's path.
    pub fn end(&mut self, round: usize) -> Result<Option<PathBuf>> {
        match self.active.take() {
            Some((r, rec)) if r == round => {
                let stem = format!("rl-round-{round:04}-{}", self.who);
                let title = format!("RL round {round}, {}", self.who);
                let md = save(rec, &self.dir, &stem, &title, self.cfg.trace)?;
                tracing::info!("profile of RL round {round}: {}", md.display());
                Ok(Some(md))
            }
            other => {
                self.active = other;
                Ok(None)
            }
        }
    }
}

/// Stops `rec`, summarises its trace into `<dir>/<stem>.md` (titled `title`), keeps the trace gzipped as
/// `<dir>/<stem>.trace.json.gz` when `trace`; returns the summary's path.
pub fn save(rec: Recording, dir: &Path, stem: &str, title: &str, trace: bool) -> Result<PathBuf> {
    spar_core::fsio::create_private_dirs(dir)?;
    // Kineto writes the JSON itself; it is summarised (and compressed) from there and then removed.
    let raw = dir.join(format!(".{stem}.{}.json", std::process::id()));
    let out = (|| {
        rec.finish(&raw)?;
        let summary = TraceSummary::from_file(&raw)?;
        let md = dir.join(format!("{stem}.md"));
        spar_core::fsio::write_atomic(&md, summary.to_markdown(title, TOP_ROWS).as_bytes())?;
        if trace {
            let gz = dir.join(format!("{stem}.trace.json.gz"));
            let mut input = std::fs::File::open(&raw)?;
            spar_core::fsio::write_atomic_with(&gz, |f| {
                let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                std::io::copy(&mut input, &mut enc)?;
                enc.finish()?.flush()
            })?;
        }
        Ok::<_, anyhow::Error>(md)
    })();
    let _ = std::fs::remove_file(&raw);
    out.with_context(|| format!("writing the profile {stem} under {}", dir.display()))
}
